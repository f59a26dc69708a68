//! The topic's retention, read at start: `cleanup.policy`, `retention.ms` and `retention.bytes`
//! (DescribeConfigs), with the warnings an operator must read before the topic loses history.
//!
//! The projection is rebuilt from the topic, so what the topic forgets the service cannot count:
//! a topic that deletes records (Kafka's default: after 7 days) gives wrong counts after a
//! restart unless a checkpoint store holds what was deleted; a compacted topic keeps only the
//! newest record of each key, and when that is a partial update the permit cannot be rebuilt at
//! all. Telling the operator at start, in plain words, is cheaper than finding out a week later
//! (spec/operations.md, "History").
//!
//! [`check`] never stops the service: a broker that refuses DescribeConfigs (an ACL) or a topic
//! that does not exist yet is logged, and the service goes on. A missing topic, or a broker that
//! did not answer, is checked again every [`RETRY_EVERY`] until the check succeeds, since ingest
//! waits for the topic too. The check runs once: a retention changed later is seen at the next
//! start.

use std::{fmt, time::Duration};

use rdkafka::{
    ClientContext,
    admin::{AdminClient, AdminOptions, ResourceSpecifier},
    config::RDKafkaLogLevel,
    error::{KafkaError, RDKafkaErrorCode},
};
use tracing::{info, warn};

use super::KafkaSettings;
use crate::telemetry;

/// How long one DescribeConfigs request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the metadata call that explains an empty DescribeConfigs answer may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// Between two attempts when the topic does not exist yet or the broker did not answer.
pub const RETRY_EVERY: Duration = Duration::from_secs(10);

/// Kafka's spelling of "no limit" for `retention.ms` and `retention.bytes`.
const UNLIMITED: i64 = -1;

/// What Kafka does to old records of the topic (`cleanup.policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CleanupPolicy {
    /// `delete`: whole segments are deleted past `retention.ms` or `retention.bytes`.
    Delete,
    /// `compact`: only the newest record of each key is kept.
    Compact,
    /// `compact,delete`: compacted, and deleted past the retention as well.
    CompactDelete,
}

impl CleanupPolicy {
    /// The policy of a `cleanup.policy` value (a comma-separated list of `delete` and
    /// `compact`, in any order); `None` for anything else.
    pub fn parse(value: &str) -> Option<Self> {
        let (mut delete, mut compact) = (false, false);
        for item in value.split(',').map(str::trim) {
            match item {
                "delete" => delete = true,
                "compact" => compact = true,
                _ => return None,
            }
        }
        match (delete, compact) {
            (true, false) => Some(Self::Delete),
            (false, true) => Some(Self::Compact),
            (true, true) => Some(Self::CompactDelete),
            (false, false) => None,
        }
    }

    /// Kafka's spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Delete => "delete",
            Self::Compact => "compact",
            Self::CompactDelete => "compact,delete",
        }
    }

    /// True when old records are deleted past the retention.
    pub const fn deletes(self) -> bool {
        matches!(self, Self::Delete | Self::CompactDelete)
    }

    /// True when the topic is compacted.
    pub const fn compacts(self) -> bool {
        matches!(self, Self::Compact | Self::CompactDelete)
    }
}

impl fmt::Display for CleanupPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The topic's retention settings, as the broker answered them (topic overrides or the
/// broker's defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicRetention {
    /// `cleanup.policy`.
    pub cleanup_policy: CleanupPolicy,
    /// `retention.ms`; `None` for -1 (kept forever).
    pub retention_ms: Option<i64>,
    /// `retention.bytes` (per partition); `None` for -1 (unlimited).
    pub retention_bytes: Option<i64>,
}

impl TopicRetention {
    /// The retention of the three settings' values as the broker gives them (`None`: not in
    /// its answer).
    pub fn from_values(
        cleanup_policy: Option<&str>,
        retention_ms: Option<&str>,
        retention_bytes: Option<&str>,
    ) -> Result<Self, RetentionError> {
        let unusable = |key: &'static str, value: Option<&str>| RetentionError::Setting {
            key,
            value: value.map(str::to_owned),
        };
        let policy = cleanup_policy
            .and_then(CleanupPolicy::parse)
            .ok_or_else(|| unusable("cleanup.policy", cleanup_policy))?;
        let limit =
            |key: &'static str, value: Option<&str>| match value.map(|v| v.trim().parse::<i64>()) {
                Some(Ok(UNLIMITED)) => Ok(None),
                Some(Ok(n)) if n >= 0 => Ok(Some(n)),
                _ => Err(unusable(key, value)),
            };
        Ok(Self {
            cleanup_policy: policy,
            retention_ms: limit("retention.ms", retention_ms)?,
            retention_bytes: limit("retention.bytes", retention_bytes)?,
        })
    }

    /// True when Kafka will delete records of the topic: the `delete` policy (alone or with
    /// `compact`) and a finite `retention.ms` or `retention.bytes`.
    pub fn deletes_records(&self) -> bool {
        self.cleanup_policy.deletes()
            && (self.retention_ms.is_some() || self.retention_bytes.is_some())
    }

    /// Seconds of history the topic keeps by time, -1 when forever (the value of the gauge
    /// `permit_stats_topic_retention_seconds`). A topic that is only compacted deletes nothing
    /// by time: -1. A size limit does not show here (see [`TopicRetention::warnings`]).
    pub fn retention_seconds(&self) -> f64 {
        match (self.cleanup_policy.deletes(), self.retention_ms) {
            (true, Some(ms)) => ms as f64 / 1000.0,
            _ => -1.0,
        }
    }

    /// The warnings an operator must read, in plain words, each with its consequence and what
    /// to do, given whether a checkpoint store is set (`checkpoint_store`):
    ///
    /// - the topic deletes records and no checkpoint store is set: once the oldest records are
    ///   gone, a restart cannot rebuild exact counts;
    /// - the topic is compacted, whatever the store: a permit whose newest record is a partial
    ///   update cannot be rebuilt on replay.
    pub fn warnings(&self, checkpoint_store: bool) -> Vec<String> {
        let mut out = Vec::new();
        if self.deletes_records() && !checkpoint_store {
            let by_time = self
                .retention_ms
                .map(|ms| format!("records older than {}", duration_text(ms)));
            let by_size = self.retention_bytes.map(|bytes| {
                format!(
                    "the oldest records of a partition once it holds more than {}",
                    bytes_text(bytes)
                )
            });
            let what = match (by_time, by_size) {
                (Some(time), Some(size)) => format!("{time}, and {size},"),
                (Some(one), None) | (None, Some(one)) => one,
                (None, None) => String::from("records"),
            };
            out.push(format!(
                "the topic deletes {what} ({}): after that a restart cannot rebuild exact \
                 counts (the service then reports the missing history and is not ready). Set \
                 --checkpoint-store (see README, History), or retention.ms=-1 and \
                 retention.bytes=-1 on the topic",
                self.settings_text()
            ));
        }
        if self.cleanup_policy.compacts() {
            out.push(format!(
                "the topic is compacted ({}): compaction keeps only the newest record of each \
                 key, and when that is a partial update (an update with only the zone) the \
                 fields a permit needs are gone: such permits are lost on replay, with or \
                 without a checkpoint store. Use cleanup.policy=delete, with a checkpoint store \
                 or retention.ms=-1 (see README, History)",
                self.settings_text()
            ));
        }
        out
    }

    /// `cleanup.policy=…, retention.ms=…, retention.bytes=…` as Kafka spells them.
    fn settings_text(&self) -> String {
        format!(
            "cleanup.policy={}, retention.ms={}, retention.bytes={}",
            self.cleanup_policy,
            self.retention_ms.unwrap_or(UNLIMITED),
            self.retention_bytes.unwrap_or(UNLIMITED)
        )
    }
}

/// Why the retention could not be read. No message carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    /// The admin client could not be created from the settings.
    #[error("cannot create a Kafka admin client: {0}")]
    Client(#[source] KafkaError),
    /// The DescribeConfigs request failed as a whole (no broker answered in time, or the
    /// cluster refused the connection).
    #[error("the DescribeConfigs request failed: {0}")]
    Request(#[source] KafkaError),
    /// The topic does not exist (yet).
    #[error("topic {topic} does not exist")]
    NoTopic {
        /// The topic.
        topic: String,
    },
    /// The broker refused to describe the topic, e.g. for lack of the DescribeConfigs
    /// permission.
    #[error("the broker refused to describe topic {topic}: {code}{}", hint(*.code))]
    Refused {
        /// The topic.
        topic: String,
        /// The broker's error.
        code: RDKafkaErrorCode,
    },
    /// The topic exists, yet the broker described none of its settings: a refusal whose reason
    /// the client library does not pass on, most likely a missing DescribeConfigs permission.
    #[error(
        "the broker described none of topic {topic}'s settings (most likely a refusal: grant \
         the service's principal DescribeConfigs on the topic)"
    )]
    NothingDescribed {
        /// The topic.
        topic: String,
    },
    /// The broker's answer held no result for the topic.
    #[error("the broker's answer did not describe topic {topic}")]
    NoAnswer {
        /// The topic.
        topic: String,
    },
    /// A setting is missing from the answer, or has a value this service does not know.
    #[error("the topic's {key} is {}", .value.as_deref().map_or("missing".to_owned(), |v| format!("{v:?}, not a value this service knows")))]
    Setting {
        /// The setting.
        key: &'static str,
        /// Its value, if any.
        value: Option<String>,
    },
}

/// What to do about a refusal, when there is something to say.
fn hint(code: RDKafkaErrorCode) -> &'static str {
    match code {
        RDKafkaErrorCode::TopicAuthorizationFailed
        | RDKafkaErrorCode::ClusterAuthorizationFailed => {
            " (grant the service's principal DescribeConfigs on the topic)"
        }
        _ => "",
    }
}

impl RetentionError {
    /// True when trying again later may succeed: the topic may be created, the broker may
    /// come back. A refusal or an unknown setting stays as it is until someone acts.
    pub fn is_temporary(&self) -> bool {
        matches!(self, Self::NoTopic { .. } | Self::Request(_))
    }
}

/// The admin client's context: librdkafka's log lines into `tracing`, and its errors at DEBUG
/// (the check reports its own outcome; a broker that is down is ingest's to report).
struct AdminContext {
    settings: KafkaSettings,
}

impl ClientContext for AdminContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        telemetry::kafka_log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(
            target: "librdkafka",
            "retention check: {}: {}",
            self.settings.scrub(&error.to_string()),
            self.settings.scrub(reason)
        );
    }
}

/// Reads the topic's `cleanup.policy`, `retention.ms` and `retention.bytes` with one
/// DescribeConfigs request (the client takes the user's settings: TLS, SASL), waiting at most
/// `timeout` for the answer.
pub async fn read(
    settings: &KafkaSettings,
    topic: &str,
    timeout: Duration,
) -> Result<TopicRetention, RetentionError> {
    let admin: AdminClient<AdminContext> = settings
        .client_config(&[
            ("client.id", "permit-stats-retention-check"),
            // The metadata call below must never create the topic (the default of librdkafka's
            // producer-type clients, which an admin client is, and of the broker).
            ("allow.auto.create.topics", "false"),
        ])
        .create_with_context(AdminContext {
            settings: settings.clone(),
        })
        .map_err(|e| RetentionError::Client(settings.redact(e)))?;
    let options = AdminOptions::new().request_timeout(Some(timeout));
    let answer = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &options)
        .await
        .map_err(|e| RetentionError::Request(settings.redact(e)))?;
    let resource = match answer.into_iter().next() {
        Some(Ok(resource)) if !resource.entries.is_empty() => resource,
        // rdkafka 0.39 drops the per-resource error (a topic that does not exist, a refusal) and
        // answers no settings: the topic's metadata tells which it was.
        Some(Ok(_)) => return Err(why_nothing(admin, settings, topic, timeout).await),
        Some(Err(code)) => return Err(refusal(topic, code)),
        None => {
            return Err(RetentionError::NoAnswer {
                topic: topic.to_owned(),
            });
        }
    };
    let value = |name: &str| resource.get(name).and_then(|e| e.value.as_deref());
    TopicRetention::from_values(
        value("cleanup.policy"),
        value("retention.ms"),
        value("retention.bytes"),
    )
}

/// The error of a DescribeConfigs answer without settings, from the topic's metadata (a
/// blocking call, so on a blocking thread).
async fn why_nothing(
    admin: AdminClient<AdminContext>,
    settings: &KafkaSettings,
    topic: &str,
    timeout: Duration,
) -> RetentionError {
    let name = topic.to_owned();
    // Bounded tighter than the request: a blocking thread still waiting delays the process's
    // exit, and a broker that just answered DescribeConfigs answers metadata at once.
    let timeout = timeout.min(METADATA_TIMEOUT);
    let metadata = tokio::task::spawn_blocking(move || {
        let metadata = admin.inner().fetch_metadata(Some(&name), timeout)?;
        Ok(metadata
            .topics()
            .iter()
            .find(|t| t.name() == name)
            .map(|t| t.error().map(RDKafkaErrorCode::from)))
    })
    .await;
    match metadata {
        Ok(Ok(Some(Some(code)))) => refusal(topic, code),
        Ok(Ok(None)) => RetentionError::NoTopic {
            topic: topic.to_owned(),
        },
        // The topic is there and readable, yet none of its settings were described.
        Ok(Ok(Some(None))) => RetentionError::NothingDescribed {
            topic: topic.to_owned(),
        },
        Ok(Err(e)) => RetentionError::Request(settings.redact(e)),
        Err(_) => RetentionError::NoAnswer {
            topic: topic.to_owned(),
        },
    }
}

/// The error of a broker's `code` about `topic`.
fn refusal(topic: &str, code: RDKafkaErrorCode) -> RetentionError {
    match code {
        RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic => {
            RetentionError::NoTopic {
                topic: topic.to_owned(),
            }
        }
        code => RetentionError::Refused {
            topic: topic.to_owned(),
            code,
        },
    }
}

/// Reads the topic's retention, logs each of its warnings at WARN (with the topic and the three
/// settings as fields), and sets the gauge `permit_stats_topic_retention_seconds`. Never fatal:
/// a failure is logged at WARN saying the retention could not be checked and why. A topic that
/// does not exist yet, or a broker that did not answer, is tried again every [`RETRY_EVERY`]
/// (logged once) until it succeeds: the caller cancels it at shutdown.
pub async fn check(settings: &KafkaSettings, topic: &str, checkpoint_store: bool) {
    let mut told = false;
    let retention = loop {
        match read(settings, topic, REQUEST_TIMEOUT).await {
            Ok(retention) => break retention,
            Err(e) if e.is_temporary() => {
                if !told {
                    warn!(
                        topic,
                        "the topic's retention could not be checked yet: {e}; trying again \
                         every {} s",
                        RETRY_EVERY.as_secs()
                    );
                    told = true;
                }
                tokio::time::sleep(RETRY_EVERY).await;
            }
            Err(e) => {
                warn!(
                    topic,
                    "the topic's retention could not be checked: {e}; whether it keeps the \
                     history the counts need is unknown (see README, History)"
                );
                return;
            }
        }
    };
    metrics::gauge!(telemetry::TOPIC_RETENTION).set(retention.retention_seconds());
    let policy = retention.cleanup_policy.as_str();
    let retention_ms = retention.retention_ms.unwrap_or(UNLIMITED);
    let retention_bytes = retention.retention_bytes.unwrap_or(UNLIMITED);
    let warnings = retention.warnings(checkpoint_store);
    if warnings.is_empty() {
        info!(
            topic,
            cleanup_policy = policy,
            retention_ms,
            retention_bytes,
            "topic retention checked: the topic keeps the history the counts need"
        );
    }
    for warning in warnings {
        warn!(
            topic,
            cleanup_policy = policy,
            retention_ms,
            retention_bytes,
            "{warning}"
        );
    }
}

/// A duration in milliseconds in the largest whole unit: `7 days`, `36 hours`, `90 seconds`.
fn duration_text(ms: i64) -> String {
    const UNITS: [(i64, &str); 4] = [
        (86_400_000, "day"),
        (3_600_000, "hour"),
        (60_000, "minute"),
        (1_000, "second"),
    ];
    whole_units(ms, &UNITS, "millisecond")
}

/// A size in bytes in the largest whole binary unit: `1 GiB`, `500 MiB`, `1000 bytes`.
fn bytes_text(bytes: i64) -> String {
    const UNITS: [(i64, &str); 4] = [
        (1 << 40, "TiB"),
        (1 << 30, "GiB"),
        (1 << 20, "MiB"),
        (1 << 10, "KiB"),
    ];
    match UNITS
        .iter()
        .find(|(size, _)| bytes > 0 && bytes % size == 0)
    {
        Some((size, unit)) => format!("{} {unit}", bytes / size),
        None => format!("{bytes} bytes"),
    }
}

/// `value` in the largest unit that divides it, pluralized; `smallest` when none does.
fn whole_units(value: i64, units: &[(i64, &str)], smallest: &str) -> String {
    let (count, unit) = units
        .iter()
        .find(|(size, _)| value > 0 && value % size == 0)
        .map_or((value, smallest), |(size, unit)| (value / size, *unit));
    let plural = if count == 1 { "" } else { "s" };
    format!("{count} {unit}{plural}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retention(policy: &str, ms: &str, bytes: &str) -> TopicRetention {
        TopicRetention::from_values(Some(policy), Some(ms), Some(bytes)).expect("valid")
    }

    #[test]
    fn policies_parse_in_any_order_and_nothing_else_does() {
        assert_eq!(CleanupPolicy::parse("delete"), Some(CleanupPolicy::Delete));
        assert_eq!(
            CleanupPolicy::parse("compact"),
            Some(CleanupPolicy::Compact)
        );
        for both in ["compact,delete", "delete,compact", "delete, compact"] {
            assert_eq!(
                CleanupPolicy::parse(both),
                Some(CleanupPolicy::CompactDelete)
            );
        }
        for other in ["", "Delete", "delete,", "keep", "delete,forever"] {
            assert_eq!(CleanupPolicy::parse(other), None, "{other:?}");
        }
    }

    #[test]
    fn minus_one_is_forever_and_other_values_are_refused() {
        let forever = retention("delete", "-1", "-1");
        assert_eq!(
            (forever.retention_ms, forever.retention_bytes),
            (None, None)
        );
        assert!(!forever.deletes_records());
        assert_eq!(forever.retention_seconds(), -1.0);
        for (ms, bytes) in [("-2", "-1"), ("7d", "-1"), ("-1", ""), ("-1", "1e9")] {
            assert!(
                TopicRetention::from_values(Some("delete"), Some(ms), Some(bytes)).is_err(),
                "{ms} {bytes}"
            );
        }
        let missing = TopicRetention::from_values(Some("delete"), None, Some("-1"))
            .expect_err("no retention.ms");
        assert_eq!(missing.to_string(), "the topic's retention.ms is missing");
    }

    #[test]
    fn kafkas_default_warns_in_days_without_a_store_and_not_with_one() {
        let default = retention("delete", "604800000", "-1");
        assert_eq!(default.retention_seconds(), 604_800.0);
        let warnings = default.warnings(false);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("the topic deletes records older than 7 days ("),
            "{}",
            warnings[0]
        );
        assert!(warnings[0].contains("retention.ms=604800000"));
        assert!(warnings[0].contains("--checkpoint-store"));
        assert!(default.warnings(true).is_empty());
    }

    #[test]
    fn a_size_limit_alone_warns_though_the_time_gauge_says_forever() {
        let sized = retention("delete", "-1", "1073741824");
        assert_eq!(sized.retention_seconds(), -1.0);
        let warnings = sized.warnings(false);
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].contains("once it holds more than 1 GiB"),
            "{}",
            warnings[0]
        );
        let both = retention("delete", "129600000", "1000");
        assert!(
            both.warnings(false)[0]
                .contains("older than 36 hours, and the oldest records of a partition once it holds more than 1000 bytes,"),
            "{}",
            both.warnings(false)[0]
        );
    }

    #[test]
    fn compaction_warns_whatever_the_store() {
        let compacted = retention("compact", "604800000", "-1");
        assert_eq!(
            compacted.retention_seconds(),
            -1.0,
            "compaction deletes nothing by time"
        );
        for store in [false, true] {
            let warnings = compacted.warnings(store);
            assert_eq!(warnings.len(), 1, "{warnings:?}");
            assert!(warnings[0].contains("partial update"), "{}", warnings[0]);
        }
        let both = retention("compact,delete", "86400000", "-1");
        assert_eq!(both.retention_seconds(), 86_400.0);
        assert_eq!(both.warnings(false).len(), 2);
        assert!(both.warnings(false)[0].contains("older than 1 day ("));
        assert_eq!(both.warnings(true).len(), 1);
    }

    #[test]
    fn units_are_the_largest_whole_one() {
        assert_eq!(duration_text(604_800_000), "7 days");
        assert_eq!(duration_text(3_600_000), "1 hour");
        assert_eq!(duration_text(90_000), "90 seconds");
        assert_eq!(duration_text(1_500), "1500 milliseconds");
        assert_eq!(duration_text(0), "0 milliseconds");
        assert_eq!(bytes_text(512 << 20), "512 MiB");
        assert_eq!(bytes_text(1 << 40), "1 TiB");
        assert_eq!(bytes_text(0), "0 bytes");
    }

    #[test]
    fn a_refusal_for_lack_of_permission_says_what_to_grant() {
        let refused = RetentionError::Refused {
            topic: "t".into(),
            code: RDKafkaErrorCode::TopicAuthorizationFailed,
        };
        assert!(
            refused
                .to_string()
                .contains("grant the service's principal DescribeConfigs")
        );
        assert!(!refused.is_temporary());
        assert!(RetentionError::NoTopic { topic: "t".into() }.is_temporary());
    }
}
