//! The one catalogue of metric families: every name `/metrics` serves, with its Prometheus type,
//! help text and where its series come from, plus the fixed `route` labels of the HTTP metrics.
//!
//! Code that records a metric names it by the constant here, and the recorder's install, the
//! scrape-time renderers and the HELP/TYPE test all read [`FAMILIES`], so that a family cannot be
//! exported without being described.

use std::fmt::Write as _;

use metrics_exporter_prometheus::formatting::{write_help_line, write_type_line};

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
/// Records a partition lost before the state saw them (deleted by the topic's retention).
pub const HISTORY_MISSING: &str = "permit_stats_history_missing_records";
/// Unix time of the last checkpoint written.
pub const CHECKPOINT_LAST_SUCCESS: &str = "permit_stats_checkpoint_last_success_timestamp_seconds";
/// Time the last checkpoint took to encode and write.
pub const CHECKPOINT_DURATION: &str = "permit_stats_checkpoint_duration_seconds";
/// Time ingest waited while the last checkpoint copied the state.
pub const CHECKPOINT_PAUSE: &str = "permit_stats_checkpoint_ingest_pause_seconds";
/// Size of the last checkpoint written.
pub const CHECKPOINT_SIZE: &str = "permit_stats_checkpoint_size_bytes";
/// Checkpoints that could not be written.
pub const CHECKPOINT_FAILURES: &str = "permit_stats_checkpoint_failures_total";
/// Seconds of history the topic keeps by time (`retention.ms`), -1 when forever; read at start.
pub const TOPIC_RETENTION: &str = "permit_stats_topic_retention_seconds";

/// The `route` label of the HTTP metrics: a fixed name per route of the API's router, so that no
/// client can grow the label set. The API maps each matched path to one of these; the recorder's
/// install registers a latency series for every one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// The stats request (with or without a client code in the path).
    Stats,
    /// `/health/live`.
    Live,
    /// `/health/ready`.
    Ready,
    /// `/metrics`.
    Metrics,
    /// Any path the router does not know.
    Unmatched,
}

impl Route {
    /// Every route, in label order.
    pub const ALL: [Self; 5] = [
        Self::Stats,
        Self::Live,
        Self::Ready,
        Self::Metrics,
        Self::Unmatched,
    ];

    /// The value of the `route` label.
    pub const fn label(self) -> &'static str {
        match self {
            Self::Stats => "stats",
            Self::Live => "live",
            Self::Ready => "ready",
            Self::Metrics => "metrics",
            Self::Unmatched => "unmatched",
        }
    }
}

/// The (route, status) pairs whose request counters exist from the start, at 0: the answers each
/// route normally gives, so that `rate()` sees their first request.
pub(super) const HTTP_PRESET: &[(Route, &str)] = &[
    (Route::Stats, "200"),
    (Route::Stats, "400"),
    (Route::Stats, "401"),
    (Route::Stats, "403"),
    (Route::Stats, "413"),
    (Route::Stats, "503"),
    (Route::Live, "200"),
    (Route::Ready, "200"),
    (Route::Ready, "503"),
    (Route::Metrics, "200"),
    (Route::Unmatched, "404"),
];

/// Buckets for answers that take well under a millisecond (the stats request is a map lookup
/// and a copy of bytes), with room above for slow outliers and a stalled runtime.
pub(super) const HTTP_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.1, 0.5, 2.5,
];

/// A metric family's Prometheus type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FamilyKind {
    Counter,
    Gauge,
    Histogram,
}

impl FamilyKind {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
        }
    }
}

/// Where a family's series come from, and so who writes its `# HELP` and `# TYPE` lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    /// The `metrics` recorder, through handles that ingest and the API hold. The recorder writes
    /// the header with the first series; until a series is registered (no partition assigned
    /// yet, no dead-letter topic) the page writes the header alone.
    Recorder,
    /// Read from the projection when scraped.
    Projection,
    /// Read from the newest librdkafka statistics when scraped.
    Kafka,
}

/// One metric family: its name, type and help text.
#[derive(Debug)]
pub(super) struct Family {
    pub(super) name: &'static str,
    pub(super) kind: FamilyKind,
    pub(super) help: &'static str,
    pub(super) source: Source,
}

/// Every family `/metrics` serves, in page order of those rendered at scrape time.
pub(super) const FAMILIES: &[Family] = &[
    Family {
        name: PERMITS,
        kind: FamilyKind::Gauge,
        help: "Live permits per client, zone and type (the numbers the stats API serves)",
        source: Source::Projection,
    },
    Family {
        name: EVENTS_APPLIED,
        kind: FamilyKind::Counter,
        help: "Permit events that changed or confirmed a permit's state, by kind",
        source: Source::Recorder,
    },
    Family {
        name: EVENTS_SKIPPED,
        kind: FamilyKind::Counter,
        help: "Valid permit events that changed nothing, by reason",
        source: Source::Recorder,
    },
    Family {
        name: RECORDS_REJECTED,
        kind: FamilyKind::Counter,
        help: "Kafka records rejected as bad (undecodable or breaking a rule), by reason",
        source: Source::Recorder,
    },
    Family {
        name: CONSUMER_LAG,
        kind: FamilyKind::Gauge,
        help: "Records between the next offset to apply and the partition's high watermark",
        source: Source::Recorder,
    },
    Family {
        name: LAST_EVENT_TIMESTAMP,
        kind: FamilyKind::Gauge,
        help: "Unix time of the newest applied permit event (0 before the first)",
        source: Source::Recorder,
    },
    Family {
        name: READY,
        kind: FamilyKind::Gauge,
        help: "1 once the projection has caught up with the topic since start, else 0",
        source: Source::Recorder,
    },
    Family {
        name: HTTP_REQUESTS,
        kind: FamilyKind::Counter,
        help: "HTTP requests answered, by route and status",
        source: Source::Recorder,
    },
    Family {
        name: HTTP_DURATION,
        kind: FamilyKind::Histogram,
        help: "Time to answer an HTTP request, by route",
        source: Source::Recorder,
    },
    Family {
        name: BROKER_LAST_CONTACT,
        kind: FamilyKind::Gauge,
        help: "Unix time ingest last heard from the broker (a record or a metadata answer)",
        source: Source::Recorder,
    },
    Family {
        name: TOPIC_RETENTION,
        kind: FamilyKind::Gauge,
        help: "Seconds of history the topic keeps by time (retention.ms; -1: forever), read at start",
        source: Source::Recorder,
    },
    Family {
        name: DEAD_LETTERED,
        kind: FamilyKind::Counter,
        help: "Bad records copied to the dead-letter topic and acknowledged by the broker",
        source: Source::Recorder,
    },
    Family {
        name: DEAD_LETTER_FAILURES,
        kind: FamilyKind::Counter,
        help: "Bad records that could not be copied to the dead-letter topic",
        source: Source::Recorder,
    },
    Family {
        name: KAFKA_BROKER_UP,
        kind: FamilyKind::Gauge,
        help: "1 while the consumer's connection to the broker is up, else 0 (librdkafka statistics)",
        source: Source::Kafka,
    },
    Family {
        name: KAFKA_BROKER_DISCONNECTS,
        kind: FamilyKind::Counter,
        help: "Connections to the broker that were lost since the consumer started",
        source: Source::Kafka,
    },
    Family {
        name: KAFKA_CONSUMER_LAG,
        kind: FamilyKind::Gauge,
        help: "Records between the offset librdkafka hands to ingest next and the high watermark",
        source: Source::Kafka,
    },
    Family {
        name: KAFKA_FETCH_QUEUE,
        kind: FamilyKind::Gauge,
        help: "Records fetched by librdkafka and not yet taken by ingest",
        source: Source::Kafka,
    },
    Family {
        name: KAFKA_RECEIVED_BYTES,
        kind: FamilyKind::Counter,
        help: "Bytes the consumer received from the brokers since it started",
        source: Source::Kafka,
    },
    Family {
        name: HISTORY_MISSING,
        kind: FamilyKind::Gauge,
        help: "Records of a partition deleted before the state saw them (not ready unless --allow-missing-history)",
        source: Source::Recorder,
    },
    Family {
        name: CHECKPOINT_LAST_SUCCESS,
        kind: FamilyKind::Gauge,
        help: "Unix time the last checkpoint was written (0: none since start)",
        source: Source::Recorder,
    },
    Family {
        name: CHECKPOINT_DURATION,
        kind: FamilyKind::Gauge,
        help: "Seconds the last checkpoint took to encode and write",
        source: Source::Recorder,
    },
    Family {
        name: CHECKPOINT_PAUSE,
        kind: FamilyKind::Gauge,
        help: "Seconds ingest waited while the last checkpoint copied the state",
        source: Source::Recorder,
    },
    Family {
        name: CHECKPOINT_SIZE,
        kind: FamilyKind::Gauge,
        help: "Bytes of the last checkpoint written",
        source: Source::Recorder,
    },
    Family {
        name: CHECKPOINT_FAILURES,
        kind: FamilyKind::Counter,
        help: "Checkpoints that could not be written",
        source: Source::Recorder,
    },
];

/// The position of family `name` in [`FAMILIES`].
pub(super) fn index_of(name: &str) -> Option<usize> {
    FAMILIES.iter().position(|family| family.name == name)
}

/// Writes a family's `# HELP` and `# TYPE` lines (after a blank line, as the recorder does).
pub(super) fn header(out: &mut String, name: &str) {
    if let Some(family) = FAMILIES.iter().find(|f| f.name == name) {
        if !out.is_empty() && !out.ends_with("\n\n") {
            out.push('\n');
        }
        write_help_line(out, family.name, None, None, family.help);
        write_type_line(out, family.name, None, None, family.kind.as_str());
    }
}

/// A label value escaped for the Prometheus text format. The exporter's own sanitiser is not used
/// here: it takes a backslash before `"` or `\` as an escape already made, so a zone named `a\"b`
/// would come out as `a"b`.
pub(super) struct LabelValue<'a>(pub(super) &'a str);

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

    #[test]
    fn family_names_are_unique_and_typed_by_their_suffix() {
        for (i, family) in FAMILIES.iter().enumerate() {
            assert_eq!(index_of(family.name), Some(i), "{} twice", family.name);
            assert_eq!(
                family.name.ends_with("_total"),
                family.kind == FamilyKind::Counter,
                "{}: counters, and only counters, end in _total",
                family.name
            );
        }
    }

    #[test]
    fn headers_are_the_exporters_lines_with_the_catalogue_help() {
        let mut out = String::new();
        header(&mut out, READY);
        assert_eq!(
            out,
            "# HELP permit_stats_ready 1 once the projection has caught up with the topic since \
             start, else 0\n# TYPE permit_stats_ready gauge\n"
        );
        header(&mut out, "no_such_family");
        assert!(!out.contains("no_such_family"));
    }

    #[test]
    fn label_values_escape_backslash_quote_and_newline_each_on_its_own() {
        assert_eq!(
            LabelValue("a\\\"b\\\\c\nd").to_string(),
            "a\\\\\\\"b\\\\\\\\c\\nd"
        );
    }
}
