//! Logs and metrics: the `tracing` subscriber, the Prometheus recorder, the metric names of
//! spec/operations.md, and the scrape-time rendering of the per-(client, zone, type) gauges.

use std::{fmt::Write as _, sync::OnceLock};

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::{config::LogFormat, projection::Projection};

/// Live permits per client, zone and type (rendered at scrape time from the projection).
pub const PERMITS: &str = "permit_stats_permits";
/// Events that changed or confirmed state, by kind.
pub const EVENTS_APPLIED: &str = "permit_stats_events_applied_total";
/// Valid events that changed nothing, by reason.
pub const EVENTS_SKIPPED: &str = "permit_stats_events_skipped_total";
/// Bad records, by reason.
pub const RECORDS_REJECTED: &str = "permit_stats_records_rejected_total";
/// High watermark minus the next offset to apply, per partition.
pub const CONSUMER_LAG: &str = "permit_stats_consumer_lag_records";
/// Newest applied event time.
pub const LAST_EVENT_TIMESTAMP: &str = "permit_stats_last_event_timestamp_seconds";
/// 1 once caught up.
pub const READY: &str = "permit_stats_ready";
/// HTTP requests answered, by route and status.
pub const HTTP_REQUESTS: &str = "permit_stats_http_requests_total";
/// Time to answer an HTTP request, by route.
pub const HTTP_DURATION: &str = "permit_stats_http_request_duration_seconds";

/// Buckets for answers that take well under a millisecond, with room for slow outliers.
const HTTP_BUCKETS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 1.0,
];

/// Starts logging to stderr; `RUST_LOG` filters (default `info`, librdkafka's chatter at `warn`).
pub fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,librdkafka=warn"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Text => registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .try_init(),
        LogFormat::Json => registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .try_init(),
    };
    // A second init (several apps in one test process) keeps the first subscriber.
    let _ = result;
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(HTTP_DURATION.into()), HTTP_BUCKETS)
                .expect("bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Only fails if another recorder was installed first; ours then stays unused but
            // harmless, and the handle still renders what it saw.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

fn describe() {
    describe_counter!(
        EVENTS_APPLIED,
        "Permit events that changed or confirmed a permit's state, by kind"
    );
    describe_counter!(
        EVENTS_SKIPPED,
        "Valid permit events that changed nothing, by reason"
    );
    describe_counter!(
        RECORDS_REJECTED,
        "Kafka records rejected as bad (undecodable or breaking a rule), by reason"
    );
    describe_gauge!(
        CONSUMER_LAG,
        "Records between the next offset to apply and the partition's high watermark"
    );
    describe_gauge!(
        LAST_EVENT_TIMESTAMP,
        Unit::Seconds,
        "Unix time of the newest applied permit event"
    );
    describe_gauge!(
        READY,
        "1 once the projection has caught up with the topic since start, else 0"
    );
    describe_counter!(HTTP_REQUESTS, "HTTP requests answered, by route and status");
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "Time to answer an HTTP request, by route"
    );
}

/// The `/metrics` page: the recorder's metrics, then the live-permit gauges read from the
/// projection now, so that ingest pays nothing for them. A counter that emptied stays, at 0.
pub fn render(handle: &PrometheusHandle, projection: &Projection) -> String {
    let mut out = handle.render();
    let views = projection.views();
    let _ = writeln!(
        out,
        "# HELP {PERMITS} Live permits per client, zone and type (the numbers the stats API serves)"
    );
    let _ = writeln!(out, "# TYPE {PERMITS} gauge");
    for (client, view) in &views {
        for row in view.counters() {
            let _ = writeln!(
                out,
                "{PERMITS}{{client=\"{}\",zone=\"{}\",type=\"{}\"}} {}",
                LabelValue(client),
                LabelValue(&row.zone),
                LabelValue(&row.permit_type),
                row.total
            );
        }
    }
    out
}

/// A label value escaped for the Prometheus text format.
struct LabelValue<'a>(&'a str);

impl std::fmt::Display for LabelValue<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in self.0.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '"' => f.write_str("\\\"")?,
                '\n' => f.write_str("\\n")?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Change, PermitEvent};

    #[test]
    fn permit_gauges_escape_labels_and_fall_to_zero() {
        let projection = Projection::new();
        let mut event = PermitEvent {
            client: "OC-TOMA".into(),
            reference_id: "a".into(),
            revision: None,
            occurred_at_ms: None,
            change: Change::Created {
                zone: "Lot \"1\"\\".into(),
                permit_type: "temp".into(),
            },
        };
        projection.apply(&event);
        let page = render(&metrics(), &projection);
        assert!(page.contains(
            r#"permit_stats_permits{client="OC-TOMA",zone="Lot \"1\"\\",type="temp"} 1"#
        ));
        event.change = Change::Deleted;
        projection.apply(&event);
        let page = render(&metrics(), &projection);
        assert!(page.contains(
            r#"permit_stats_permits{client="OC-TOMA",zone="Lot \"1\"\\",type="temp"} 0"#
        ));
    }
}
