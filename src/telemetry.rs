//! Logs and metrics: the `tracing` subscriber, librdkafka's log lines into it, and the metrics of
//! spec/operations.md from their one catalogue to the `/metrics` page.
//!
//! - `catalogue.rs`: every metric family's name, type and help, and the HTTP `route` labels.
//! - `recorder.rs`: the Prometheus recorder, installed once by the wiring ([`install`]), and the
//!   [`Metrics`] handle that renders it and runs its upkeep.
//! - `page.rs`: the `/metrics` page ([`Metrics::render`]).
//! - `kafka.rs`: librdkafka's statistics, kept for the next scrape.
//!
//! Three sources make up the page, so that each costs its producer as little as possible:
//! - the `metrics` recorder: counters, gauges and the latency histogram that ingest and the API
//!   update through handles they hold (a cached handle costs far less than a macro lookup);
//! - the projection, read when scraped: the per-(client, zone, type) permit gauges, so that
//!   ingest pays nothing for them;
//! - the newest librdkafka statistics (broker connection state, librdkafka's own view of lag),
//!   kept as one snapshot and rendered when scraped, so that a broker that left the cluster
//!   leaves the page too.
//!
//! Every family is on the page from the first scrape, with its `# HELP` and `# TYPE` (one that
//! cannot have a series yet, such as lag before any partition is assigned, with its two header
//! lines alone).

mod catalogue;
mod kafka;
mod page;
mod recorder;

use std::io::IsTerminal as _;

use rdkafka::config::RDKafkaLogLevel;
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

pub use catalogue::{
    BROKER_LAST_CONTACT, CHECKPOINT_DURATION, CHECKPOINT_FAILURES, CHECKPOINT_LAST_SUCCESS,
    CHECKPOINT_PAUSE, CHECKPOINT_SIZE, CONSUMER_LAG, DEAD_LETTER_FAILURES, DEAD_LETTERED,
    EVENTS_APPLIED, EVENTS_SKIPPED, HISTORY_MISSING, HTTP_DURATION, HTTP_REQUESTS,
    KAFKA_BROKER_DISCONNECTS, KAFKA_BROKER_UP, KAFKA_CONSUMER_LAG, KAFKA_FETCH_QUEUE,
    KAFKA_RECEIVED_BYTES, LAST_EVENT_TIMESTAMP, PERMITS, READY, RECORDS_REJECTED, Route,
    TOPIC_RETENTION,
};
pub use kafka::record_kafka_statistics;
pub use recorder::{InstallError, Metrics, install};

/// The recorder of the library's unit tests, installed by whichever test asks first (one per
/// process).
#[cfg(test)]
pub(crate) fn test_metrics() -> Metrics {
    static METRICS: std::sync::OnceLock<Metrics> = std::sync::OnceLock::new();
    METRICS
        .get_or_init(|| install().expect("the only install in this test process"))
        .clone()
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

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
