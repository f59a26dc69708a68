//! Logs and metrics: the `tracing` subscriber, the Prometheus recorder, the metric names of
//! spec/operations.md, and what `/metrics` renders at scrape time.
//!
//! Three sources make up the `/metrics` page, so that each costs its producer as little as
//! possible:
//! - the `metrics` recorder: counters, gauges and the latency histogram that ingest and the API
//!   update through handles they hold (a cached handle costs ~6 ns, a macro lookup ~150 ns);
//! - the projection, read when scraped: the per-(client, zone, type) permit gauges, so that
//!   ingest pays nothing for them;
//! - the newest librdkafka statistics (broker connection state, librdkafka's own view of lag),
//!   kept as one snapshot and rendered when scraped, so that a broker that left the cluster
//!   leaves the page too.
//!
//! Every family is described up front and every known label set registered at install, so that
//! the first scrape already carries every promised name with its `# HELP` and `# TYPE` (a family
//! that cannot have a series yet, such as lag before any partition is assigned, renders its two
//! header lines alone). Rates then start from a real zero instead of missing the first increment.

use std::{
    fmt::Write as _,
    io::IsTerminal as _,
    sync::{Mutex, OnceLock, PoisonError},
    thread,
    time::Duration,
};

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use rdkafka::{Statistics, config::RDKafkaLogLevel};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::{
    config::LogFormat,
    events::InvalidEvent,
    projection::{Kind, Projection, SkipReason},
};

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
/// 1 while librdkafka's connection to a broker is up, by broker.
pub const KAFKA_BROKER_UP: &str = "permit_stats_kafka_broker_up";
/// Connections to a broker that were lost, by broker.
pub const KAFKA_BROKER_DISCONNECTS: &str = "permit_stats_kafka_broker_disconnects_total";
/// Per partition, from librdkafka's statistics: high watermark minus the next offset it hands to
/// ingest.
pub const KAFKA_CONSUMER_LAG: &str = "permit_stats_kafka_consumer_lag_records";
/// Records fetched by librdkafka and not yet polled by ingest, per partition.
pub const KAFKA_FETCH_QUEUE: &str = "permit_stats_kafka_fetch_queue_records";
/// Bytes received from the brokers by the consumer.
pub const KAFKA_RECEIVED_BYTES: &str = "permit_stats_kafka_received_bytes_total";

/// Bad records copied to the dead-letter topic and acknowledged by the broker.
pub const DEAD_LETTERED: &str = "permit_stats_dead_letter_records_total";
/// Bad records that could not be copied to the dead-letter topic.
pub const DEAD_LETTER_FAILURES: &str = "permit_stats_dead_letter_failures_total";
/// Unix time ingest last heard from the broker (a record, or a metadata answer).
pub const BROKER_LAST_CONTACT: &str = "permit_stats_broker_last_contact_timestamp_seconds";

/// The prefix of the families read from librdkafka's statistics.
const KAFKA_PREFIX: &str = "permit_stats_kafka_";

/// The `route` label values of the HTTP metrics. They mirror the fixed route names of the API's
/// router (`api::route_label`); they are listed here only to pre-register the series, and a
/// route missing here still gets its series on its first request.
pub const HTTP_ROUTES: [&str; 5] = ["stats", "live", "ready", "metrics", "unmatched"];

/// The (route, status) pairs whose request counters exist from the start, at 0: the answers each
/// route normally gives, so that `rate()` sees their first request.
const HTTP_PRESET: &[(&str, &str)] = &[
    ("stats", "200"),
    ("stats", "400"),
    ("stats", "401"),
    ("stats", "403"),
    ("stats", "413"),
    ("stats", "503"),
    ("live", "200"),
    ("ready", "200"),
    ("ready", "503"),
    ("metrics", "200"),
    ("unmatched", "404"),
];

/// Buckets for answers that take well under a millisecond (the stats request is a map lookup
/// and a copy of bytes), with room above for slow outliers and a stalled runtime.
const HTTP_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.1, 0.5, 2.5,
];

/// How often histogram samples are folded into their buckets when nobody scrapes, so that they
/// do not pile up in memory.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// A metric family's Prometheus type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FamilyKind {
    Counter,
    Gauge,
    Histogram,
}

impl FamilyKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
        }
    }
}

/// One metric family: its name, type and help text.
struct Family {
    name: &'static str,
    kind: FamilyKind,
    help: &'static str,
    /// Whether the `metrics` recorder holds its series (else it is rendered here at scrape time).
    recorded: bool,
}

/// Every family `/metrics` serves, in page order of the scrape-time ones.
const FAMILIES: &[Family] = &[
    Family {
        name: PERMITS,
        kind: FamilyKind::Gauge,
        help: "Live permits per client, zone and type (the numbers the stats API serves)",
        recorded: false,
    },
    Family {
        name: EVENTS_APPLIED,
        kind: FamilyKind::Counter,
        help: "Permit events that changed or confirmed a permit's state, by kind",
        recorded: true,
    },
    Family {
        name: EVENTS_SKIPPED,
        kind: FamilyKind::Counter,
        help: "Valid permit events that changed nothing, by reason",
        recorded: true,
    },
    Family {
        name: RECORDS_REJECTED,
        kind: FamilyKind::Counter,
        help: "Kafka records rejected as bad (undecodable or breaking a rule), by reason",
        recorded: true,
    },
    Family {
        name: CONSUMER_LAG,
        kind: FamilyKind::Gauge,
        help: "Records between the next offset to apply and the partition's high watermark",
        recorded: true,
    },
    Family {
        name: LAST_EVENT_TIMESTAMP,
        kind: FamilyKind::Gauge,
        help: "Unix time of the newest applied permit event (0 before the first)",
        recorded: true,
    },
    Family {
        name: READY,
        kind: FamilyKind::Gauge,
        help: "1 once the projection has caught up with the topic since start, else 0",
        recorded: true,
    },
    Family {
        name: HTTP_REQUESTS,
        kind: FamilyKind::Counter,
        help: "HTTP requests answered, by route and status",
        recorded: true,
    },
    Family {
        name: HTTP_DURATION,
        kind: FamilyKind::Histogram,
        help: "Time to answer an HTTP request, by route",
        recorded: true,
    },
    Family {
        name: BROKER_LAST_CONTACT,
        kind: FamilyKind::Gauge,
        help: "Unix time ingest last heard from the broker (a record or a metadata answer)",
        recorded: true,
    },
    Family {
        name: DEAD_LETTERED,
        kind: FamilyKind::Counter,
        help: "Bad records copied to the dead-letter topic and acknowledged by the broker",
        recorded: true,
    },
    Family {
        name: DEAD_LETTER_FAILURES,
        kind: FamilyKind::Counter,
        help: "Bad records that could not be copied to the dead-letter topic",
        recorded: true,
    },
    Family {
        name: KAFKA_BROKER_UP,
        kind: FamilyKind::Gauge,
        help: "1 while the consumer's connection to the broker is up, else 0 (librdkafka statistics)",
        recorded: false,
    },
    Family {
        name: KAFKA_BROKER_DISCONNECTS,
        kind: FamilyKind::Counter,
        help: "Connections to the broker that were lost since the consumer started",
        recorded: false,
    },
    Family {
        name: KAFKA_CONSUMER_LAG,
        kind: FamilyKind::Gauge,
        help: "Records between the offset librdkafka hands to ingest next and the high watermark",
        recorded: false,
    },
    Family {
        name: KAFKA_FETCH_QUEUE,
        kind: FamilyKind::Gauge,
        help: "Records fetched by librdkafka and not yet taken by ingest",
        recorded: false,
    },
    Family {
        name: KAFKA_RECEIVED_BYTES,
        kind: FamilyKind::Counter,
        help: "Bytes the consumer received from the brokers since it started",
        recorded: false,
    },
];

/// Starts logging to stderr; `RUST_LOG` filters (default `info`, librdkafka's chatter at `warn`).
/// Text lines are coloured only on a terminal, so that files and container logs stay plain.
pub fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,librdkafka=warn"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal()),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .try_init(),
    };
    // A second init (several apps in one test process) keeps the first subscriber.
    let _ = result;
}

/// The process-wide Prometheus recorder, installed on first use with every family described and
/// every known label set registered.
pub fn metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(HTTP_DURATION.into()), HTTP_BUCKETS)
                .expect("bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Registered on this recorder itself, so that they land here even if another
            // recorder was installed globally first.
            metrics::with_local_recorder(&recorder, preregister);
            // Only fails if another recorder was installed first; ours then stays unused but
            // harmless, and the handle still renders what it saw.
            let _ = metrics::set_global_recorder(recorder);
            spawn_upkeep(handle.clone());
            handle
        })
        .clone()
}

/// Describes every recorded family and creates each series whose labels are known up front.
fn preregister() {
    for family in FAMILIES.iter().filter(|f| f.recorded) {
        match family.kind {
            FamilyKind::Counter => describe_counter!(family.name, family.help),
            FamilyKind::Gauge => describe_gauge!(family.name, family.help),
            FamilyKind::Histogram => describe_histogram!(family.name, family.help),
        }
    }
    // Registering a handle creates the series at zero; dropping it leaves the series in place.
    for kind in Kind::ALL {
        let _ = counter!(EVENTS_APPLIED, "kind" => kind.label());
    }
    for reason in SkipReason::ALL {
        let _ = counter!(EVENTS_SKIPPED, "reason" => reason.label());
    }
    for reason in InvalidEvent::ALL {
        let _ = counter!(RECORDS_REJECTED, "reason" => reason.reason());
    }
    let _ = gauge!(READY);
    let _ = gauge!(LAST_EVENT_TIMESTAMP);
    for &(route, status) in HTTP_PRESET {
        let _ = counter!(HTTP_REQUESTS, "route" => route, "status" => status);
    }
    for route in HTTP_ROUTES {
        let _ = histogram!(HTTP_DURATION, "route" => route);
    }
}

/// Folds histogram samples into buckets now and then, whether or not anyone scrapes.
fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                thread::sleep(UPKEEP_EVERY);
                handle.run_upkeep();
            }
        });
    if let Err(e) = spawned {
        // Scrapes still fold the samples; only an unscraped process grows.
        tracing::warn!("cannot start the metrics upkeep thread: {e}");
    }
}

/// What the newest librdkafka statistics said, kept for the next scrape.
#[derive(Debug, Default, Clone, PartialEq)]
struct KafkaStats {
    /// Sorted by name.
    brokers: Vec<BrokerStats>,
    /// Sorted by partition.
    partitions: Vec<PartitionStats>,
    received_bytes: u64,
}

#[derive(Debug, Clone, PartialEq)]
struct BrokerStats {
    name: String,
    up: bool,
    disconnects: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
struct PartitionStats {
    partition: i32,
    /// `None` while librdkafka does not know it yet.
    lag: Option<u64>,
    fetch_queue: u64,
}

/// The newest statistics of the (one) ingest consumer.
static KAFKA_STATS: Mutex<Option<KafkaStats>> = Mutex::new(None);

/// Keeps what librdkafka's statistics say about the broker connections and the partitions of
/// `topic`, for the next scrape. Called from the consumer's statistics callback (once per
/// `statistics.interval.ms`), so a scrape shows state at most that old.
pub fn record_kafka_statistics(statistics: &Statistics, topic: &str) {
    let stats = KafkaStats::from_statistics(statistics, topic);
    *KAFKA_STATS.lock().unwrap_or_else(PoisonError::into_inner) = Some(stats);
}

impl KafkaStats {
    fn from_statistics(statistics: &Statistics, topic: &str) -> Self {
        let mut brokers: Vec<BrokerStats> = statistics
            .brokers
            .values()
            // Only connections to real brokers: "internal" and "logical" handles (such as the
            // group coordinator) are librdkafka's own bookkeeping.
            .filter(|b| b.source == "learned" || b.source == "configured")
            .map(|b| BrokerStats {
                name: b.name.clone(),
                // UPDATE is the brief state librdkafka passes through while up.
                up: b.state == "UP" || b.state == "UPDATE",
                disconnects: b.disconnects.and_then(|n| u64::try_from(n).ok()),
            })
            .collect();
        brokers.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        let mut partitions: Vec<PartitionStats> = statistics
            .topics
            .get(topic)
            .map(|t| {
                t.partitions
                    .values()
                    // Partition -1 is librdkafka's "unassigned" bucket, not a real partition.
                    .filter(|p| p.partition >= 0)
                    .map(|p| PartitionStats {
                        partition: p.partition,
                        lag: handed_over_lag(p),
                        fetch_queue: u64::try_from(p.fetchq_cnt).unwrap_or(0),
                    })
                    .collect()
            })
            .unwrap_or_default();
        partitions.sort_unstable_by_key(|p| p.partition);
        Self {
            brokers,
            partitions,
            received_bytes: u64::try_from(statistics.rx_bytes).unwrap_or(0),
        }
    }

    fn render(&self, out: &mut String) {
        header(out, KAFKA_BROKER_UP);
        for b in &self.brokers {
            let _ = writeln!(
                out,
                "{KAFKA_BROKER_UP}{{broker=\"{}\"}} {}",
                LabelValue(&b.name),
                u8::from(b.up)
            );
        }
        header(out, KAFKA_BROKER_DISCONNECTS);
        for b in &self.brokers {
            if let Some(n) = b.disconnects {
                let _ = writeln!(
                    out,
                    "{KAFKA_BROKER_DISCONNECTS}{{broker=\"{}\"}} {n}",
                    LabelValue(&b.name)
                );
            }
        }
        header(out, KAFKA_CONSUMER_LAG);
        for p in &self.partitions {
            if let Some(lag) = p.lag {
                let _ = writeln!(
                    out,
                    "{KAFKA_CONSUMER_LAG}{{partition=\"{}\"}} {lag}",
                    p.partition
                );
            }
        }
        header(out, KAFKA_FETCH_QUEUE);
        for p in &self.partitions {
            let _ = writeln!(
                out,
                "{KAFKA_FETCH_QUEUE}{{partition=\"{}\"}} {}",
                p.partition, p.fetch_queue
            );
        }
        header(out, KAFKA_RECEIVED_BYTES);
        let _ = writeln!(out, "{KAFKA_RECEIVED_BYTES} {}", self.received_bytes);
    }
}

/// High watermark minus the next offset librdkafka hands to ingest. librdkafka's own
/// `consumer_lag` is measured from the committed offset, and ingest never commits (it replays
/// from the beginning on every start), so it is always -1 here. Before the first record is handed
/// over, everything from the low watermark on is still to come. `None` while the watermarks are
/// unknown.
fn handed_over_lag(p: &rdkafka::statistics::Partition) -> Option<u64> {
    let high = u64::try_from(p.hi_offset).ok()?;
    let next = u64::try_from(p.app_offset)
        .or_else(|_| u64::try_from(p.lo_offset))
        .ok()?;
    Some(high.saturating_sub(next))
}

/// Writes a family's `# HELP` and `# TYPE` lines (after a blank line, as the recorder does).
fn header(out: &mut String, name: &str) {
    if let Some(family) = FAMILIES.iter().find(|f| f.name == name) {
        if !out.is_empty() && !out.ends_with("\n\n") {
            out.push('\n');
        }
        let _ = writeln!(out, "# HELP {} {}", family.name, family.help);
        let _ = writeln!(out, "# TYPE {} {}", family.name, family.kind.as_str());
    }
}

/// The `/metrics` page: the recorder's metrics, the live-permit gauges read from the projection
/// now (a counter that emptied stays, at 0), librdkafka's newest statistics, and the header lines
/// of any recorded family that has no series yet.
pub fn render(handle: &PrometheusHandle, projection: &Projection) -> String {
    let mut out = handle.render();
    for family in FAMILIES.iter().filter(|f| f.recorded) {
        if !out.contains(&format!("# TYPE {} ", family.name)) {
            header(&mut out, family.name);
        }
    }
    header(&mut out, PERMITS);
    for (client, view) in &projection.views() {
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
    let kafka = KAFKA_STATS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    match kafka {
        Some(kafka) => kafka.render(&mut out),
        // No statistics yet (they arrive while ingest polls): the families, without series.
        None => {
            for family in FAMILIES.iter().filter(|f| f.name.starts_with(KAFKA_PREFIX)) {
                header(&mut out, family.name);
            }
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

/// A librdkafka log line, into `tracing` under the `librdkafka` target at the matching level (the
/// `ClientContext::log` of every client the service creates).
pub fn kafka_log(level: RDKafkaLogLevel, fac: &str, message: &str) {
    use RDKafkaLogLevel::*;
    match level {
        Emerg | Alert | Critical | Error => tracing::error!(target: "librdkafka", fac, "{message}"),
        Warning => tracing::warn!(target: "librdkafka", fac, "{message}"),
        Notice | Info => tracing::info!(target: "librdkafka", fac, "{message}"),
        Debug => tracing::debug!(target: "librdkafka", fac, "{message}"),
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

    #[test]
    fn every_family_has_help_and_type_before_anything_happened() {
        let page = render(&metrics(), &Projection::new());
        for family in FAMILIES {
            assert!(
                page.contains(&format!("# HELP {} ", family.name)),
                "{} has no HELP",
                family.name
            );
            assert!(
                page.contains(&format!(
                    "# TYPE {} {}\n",
                    family.name,
                    family.kind.as_str()
                )),
                "{} has no TYPE",
                family.name
            );
        }
        assert!(page.contains("permit_stats_ready 0\n") || page.contains("permit_stats_ready 1\n"));
        assert!(page.contains(r#"permit_stats_http_requests_total{route="stats",status="200"}"#));
        assert!(page.contains(
            r#"permit_stats_http_request_duration_seconds_bucket{route="stats",le="0.0001"}"#
        ));
    }

    #[test]
    fn librdkafka_statistics_become_broker_and_partition_gauges() {
        let json = r#"{
            "name": "c", "client_id": "permit-stats", "type": "consumer", "ts": 1, "time": 1,
            "age": 1, "replyq": 0, "msg_cnt": 0, "msg_size": 0, "msg_max": 0, "msg_size_max": 0,
            "tx": 0, "tx_bytes": 0, "rx": 0, "rx_bytes": 4096, "txmsgs": 0, "txmsg_bytes": 0,
            "rxmsgs": 0, "rxmsg_bytes": 0, "simple_cnt": 0, "metadata_cache_cnt": 1,
            "brokers": {
                "kafka:9092/1": {"name": "kafka:9092/1", "nodeid": 1, "nodename": "kafka:9092",
                    "source": "learned", "state": "UP", "stateage": 1, "outbuf_cnt": 0,
                    "outbuf_msg_cnt": 0, "waitresp_cnt": 0, "waitresp_msg_cnt": 0, "tx": 1,
                    "txbytes": 1, "txerrs": 0, "txretries": 0, "txidle": 0, "req_timeouts": 0,
                    "rx": 1, "rxbytes": 1, "rxerrs": 0, "rxcorriderrs": 0, "rxpartial": 0,
                    "rxidle": 0, "req": {}, "zbuf_grow": 0, "buf_grow": 0, "disconnects": 2,
                    "rtt": {"min": 100, "max": 300, "avg": 250, "sum": 500, "cnt": 2,
                        "stddev": 0, "hdrsize": 0, "p50": 0, "p75": 0, "p90": 0, "p95": 0,
                        "p99": 0, "p99_99": 0, "outofrange": 0},
                    "toppars": {}},
                "GroupCoordinator": {"name": "GroupCoordinator", "nodeid": -1, "nodename": "",
                    "source": "logical", "state": "UP", "stateage": 1, "outbuf_cnt": 0,
                    "outbuf_msg_cnt": 0, "waitresp_cnt": 0, "waitresp_msg_cnt": 0, "tx": 0,
                    "txbytes": 0, "txerrs": 0, "txretries": 0, "txidle": 0, "req_timeouts": 0,
                    "rx": 0, "rxbytes": 0, "rxerrs": 0, "rxcorriderrs": 0, "rxpartial": 0,
                    "rxidle": 0, "req": {}, "zbuf_grow": 0, "buf_grow": 0, "toppars": {}},
                "kafka:9092/bootstrap": {"name": "kafka:9092/bootstrap", "nodeid": -1,
                    "nodename": "kafka:9092", "source": "configured", "state": "DOWN",
                    "stateage": 1, "outbuf_cnt": 0, "outbuf_msg_cnt": 0, "waitresp_cnt": 0,
                    "waitresp_msg_cnt": 0, "tx": 0, "txbytes": 0, "txerrs": 0, "txretries": 0,
                    "txidle": 0, "req_timeouts": 0, "rx": 0, "rxbytes": 0, "rxerrs": 0,
                    "rxcorriderrs": 0, "rxpartial": 0, "rxidle": 0, "req": {}, "zbuf_grow": 0,
                    "buf_grow": 0, "toppars": {}}
            },
            "topics": {"t": {"topic": "t", "age": 1, "metadata_age": 1,
                "batchsize": {"min": 0, "max": 0, "avg": 0, "sum": 0, "cnt": 0, "stddev": 0,
                    "hdrsize": 0, "p50": 0, "p75": 0, "p90": 0, "p95": 0, "p99": 0,
                    "p99_99": 0, "outofrange": 0},
                "batchcnt": {"min": 0, "max": 0, "avg": 0, "sum": 0, "cnt": 0, "stddev": 0,
                    "hdrsize": 0, "p50": 0, "p75": 0, "p90": 0, "p95": 0, "p99": 0,
                    "p99_99": 0, "outofrange": 0},
                "partitions": {
                    "0": {"partition": 0, "broker": 1, "leader": 1, "desired": true,
                        "unknown": false, "msgq_cnt": 0, "msgq_bytes": 0, "xmit_msgq_cnt": 0,
                        "xmit_msgq_bytes": 0, "fetchq_cnt": 7, "fetchq_size": 70,
                        "fetch_state": "active", "query_offset": 0, "next_offset": 10,
                        "app_offset": 3, "stored_offset": -1001, "committed_offset": -1001,
                        "eof_offset": -1001, "lo_offset": 0, "hi_offset": 10, "ls_offset": 10,
                        "consumer_lag": -1, "consumer_lag_stored": -1, "txmsgs": 0,
                        "txbytes": 0, "rxmsgs": 10, "rxbytes": 100, "msgs": 10,
                        "rx_ver_drops": 0, "msgs_inflight": 0, "next_ack_seq": 0,
                        "next_err_seq": 0, "acked_msgid": 0},
                    "1": {"partition": 1, "broker": 1, "leader": 1, "desired": true,
                        "unknown": false, "msgq_cnt": 0, "msgq_bytes": 0, "xmit_msgq_cnt": 0,
                        "xmit_msgq_bytes": 0, "fetchq_cnt": 0, "fetchq_size": 0,
                        "fetch_state": "active", "query_offset": 0, "next_offset": 5,
                        "app_offset": -1001, "stored_offset": -1001, "committed_offset": -1001,
                        "eof_offset": -1001, "lo_offset": 5, "hi_offset": 9, "ls_offset": 9,
                        "consumer_lag": -1, "consumer_lag_stored": -1, "txmsgs": 0,
                        "txbytes": 0, "rxmsgs": 0, "rxbytes": 0, "msgs": 0,
                        "rx_ver_drops": 0, "msgs_inflight": 0, "next_ack_seq": 0,
                        "next_err_seq": 0, "acked_msgid": 0},
                    "-1": {"partition": -1, "broker": -1, "leader": -1, "desired": false,
                        "unknown": false, "msgq_cnt": 0, "msgq_bytes": 0, "xmit_msgq_cnt": 0,
                        "xmit_msgq_bytes": 0, "fetchq_cnt": 0, "fetchq_size": 0,
                        "fetch_state": "none", "query_offset": -1001, "next_offset": 0,
                        "app_offset": -1001, "stored_offset": -1001,
                        "committed_offset": -1001, "eof_offset": -1001, "lo_offset": -1001,
                        "hi_offset": -1001, "ls_offset": -1001, "consumer_lag": -1,
                        "consumer_lag_stored": -1, "txmsgs": 0, "txbytes": 0, "rxmsgs": 0,
                        "rxbytes": 0, "msgs": 0, "rx_ver_drops": 0, "msgs_inflight": 0,
                        "next_ack_seq": 0, "next_err_seq": 0, "acked_msgid": 0}
                }}}
        }"#;
        let statistics: Statistics = serde_json::from_str(json).expect("valid statistics JSON");
        let stats = KafkaStats::from_statistics(&statistics, "t");
        let mut page = String::new();
        stats.render(&mut page);
        for line in [
            "permit_stats_kafka_broker_up{broker=\"kafka:9092/1\"} 1\n",
            "permit_stats_kafka_broker_up{broker=\"kafka:9092/bootstrap\"} 0\n",
            "permit_stats_kafka_broker_disconnects_total{broker=\"kafka:9092/1\"} 2\n",
            "permit_stats_kafka_consumer_lag_records{partition=\"0\"} 7\n",
            "permit_stats_kafka_consumer_lag_records{partition=\"1\"} 4\n",
            "permit_stats_kafka_fetch_queue_records{partition=\"0\"} 7\n",
            "permit_stats_kafka_received_bytes_total 4096\n",
        ] {
            assert!(page.contains(line), "missing {line:?} in\n{page}");
        }
        assert!(!page.contains("GroupCoordinator"));
        assert!(!page.contains("partition=\"-1\""));
        // Another topic's partitions are not ours.
        assert!(
            KafkaStats::from_statistics(&statistics, "other")
                .partitions
                .is_empty()
        );
    }
}
