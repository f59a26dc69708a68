//! Ingest: one dedicated thread reads every partition of the topic from the beginning (or from the
//! restored checkpoint's offsets) and decodes each record; a second one applies the decoded
//! batches to the projection.
//!
//! - No consumer group: partitions are assigned by hand, so every replica holds the whole
//!   projection and a restart always rebuilds it from the topic, or from a checkpoint and the
//!   records after it (`group.id` is set only because librdkafka's `assign` wants one; nothing is
//!   ever committed).
//! - History: a partition whose low watermark lies past what the state covers has lost records
//!   the state never saw. Its count goes to `permit_stats_history_missing_records` and the latch
//!   does not flip (`waiting_for` names the offsets lost) unless `--allow-missing-history`.
//! - Checkpoints: every `CheckpointSink::every`, and at shutdown, when the offsets moved, the
//!   ingest thread waits for the batch in flight and copies the write side ([`Cut`]), its only
//!   pause, and hands the copy to the writer (`crate::checkpoint`, wired by `app`).
//! - A `BaseConsumer` polled on the ingest thread, drained in batches: the first `poll` waits, the
//!   rest take what is already fetched. A batch is decoded there (protobuf without copying a
//!   string until the kept ones go into the batch's one buffer) and handed to the `apply` thread,
//!   which applies and publishes it as one step. While a full batch is applied, the next is polled
//!   and decoded; one batch is in flight at most, and any batch that is not full is waited for.
//! - Readiness is a one-way latch: the high watermarks noted at start are the target, and the
//!   latch flips once every partition has been applied up to its mark (or reached its end). A
//!   partition's offset moves when the apply thread reports its batch applied, never earlier.
//!   The latch, the lag and the broker's last contact live in [`crate::status`]; ingest writes
//!   them through its methods only.
//! - A bad record is counted by reason and skipped; nothing a record contains can stop or crash
//!   the loop. Each one is logged at DEBUG with its coordinates and reason (never its payload);
//!   at WARN the first of a reason is told at once and the rest are summed up, at most one line
//!   per reason every `WARN_SUMMARY_EVERY`. With a dead-letter topic it is also copied there
//!   (original key, value and headers, plus [`DEAD_LETTER_HEADERS`]) by a producer the ingest
//!   thread owns and polls; a copy that fails is counted, never retried by blocking, so the
//!   dead-letter topic can never stop consumption. At start the dead-letter topic is read once
//!   so that a restart does not copy the same bad record again.
//! - A cluster that refuses the service (wrong credentials, an untrusted certificate, a client
//!   certificate it rejects) is told only through librdkafka's error callback: the consumer's
//!   context keeps the last refusal, and `waiting_for` and the log name it (never a secret)
//!   while the broker does not answer. librdkafka keeps retrying, and so does ingest.
//! - While the broker is unreachable the last state keeps being served and librdkafka keeps
//!   reconnecting. The lag cannot be measured then (no new high watermark arrives), so it keeps
//!   its last known value, and the outage is told separately: `waiting_for` says since when the
//!   broker has not answered, `lag_age_seconds` grows, and so does the age of
//!   `permit_stats_broker_last_contact_timestamp_seconds`. While records flow, their arrival is
//!   the proof of contact; when the topic is idle a metadata request (every `CHECK_EVERY`)
//!   is.
//!
//! # Files
//!
//! - this file: [`spawn`], [`IngestConfig`], the header names and the stage's timings.
//! - `consumer.rs`: the librdkafka client context, the consumer's settings, assignment from the
//!   beginning, the poll loop and the contact probe: the ingest thread itself.
//! - `apply.rs`: the apply thread and the decoded batch it is handed.
//! - `tracker.rs`: per-partition offsets, the readiness latch, lag, outages, progress logs, the
//!   metric handles, and the decoding of each record (a bad one goes to the two files below).
//! - `summary.rs`: the rate-limited WARN summaries of bad records and failed copies.
//! - `dead_letter.rs`: the dead-letter producer, the scan of the copies already there, and the
//!   header helpers.
//! - `error.rs`: [`IngestError`].
//! - `embedded.rs`: the in-process broker (librdkafka's mock cluster) for `serve` without
//!   `--brokers`.

use std::{collections::BTreeMap, sync::Arc, thread, time::Duration};

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::{
    kafka::{KafkaSettings, PartitionMark},
    projection::{Projection, StateCopy},
    status::IngestStatus,
};

mod apply;
mod consumer;
mod dead_letter;
pub(crate) mod embedded;
mod error;
mod summary;
mod tracker;

pub use consumer::consumer_config;
pub use error::IngestError;

/// Most records applied as one batch (and so published as one step).
const MAX_BATCH: usize = 4096;
/// How long the first poll of a batch waits; also bounds how late a shutdown is noticed.
const POLL_WAIT: Duration = Duration::from_millis(100);
/// How often lag is recomputed, due WARN summaries are written and, while replaying, progress is
/// logged.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How often the topic's metadata is read again by default, to pick up added partitions.
pub const DEFAULT_METADATA_EVERY: Duration = Duration::from_secs(10);
/// Timeout of one metadata or watermark request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Timeout of the contact probe: short, since it blocks the loop (and shutdown) while the
/// broker is down.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Silence after which the broker counts as unreachable (`waiting_for` says so).
const OUTAGE_AFTER: Duration = Duration::from_secs(3);
/// How often a continuing outage, or a continuing wait for the topic, is logged again.
const REMIND_EVERY: Duration = Duration::from_secs(30);
/// At most one WARN per bad-record reason (and per kind of failed dead-letter copy) in this
/// time. Short enough that the size of a burst is known within seconds, long enough that a topic
/// full of bad records writes a few lines a second at most (twelve reasons), not one per record.
const WARN_SUMMARY_EVERY: Duration = Duration::from_secs(10);
/// How long reading the dead-letter topic at start may take before ingest goes on without it.
const DEAD_LETTER_SCAN_DEADLINE: Duration = Duration::from_secs(30);
/// How long pending dead-letter copies get at shutdown.
const DEAD_LETTER_FLUSH: Duration = Duration::from_secs(2);

/// Header of a dead-letter copy: why the record was rejected (the `reason` label of
/// `permit_stats_records_rejected_total`, e.g. `malformed_json`).
pub const HEADER_REASON: &str = "permit-stats-reason";
/// Header of a dead-letter copy: the topic the record was read from.
pub const HEADER_SOURCE_TOPIC: &str = "permit-stats-source-topic";
/// Header of a dead-letter copy: the partition it was read from (decimal).
pub const HEADER_SOURCE_PARTITION: &str = "permit-stats-source-partition";
/// Header of a dead-letter copy: its offset in that partition (decimal).
pub const HEADER_SOURCE_OFFSET: &str = "permit-stats-source-offset";
/// Every header a dead-letter copy carries on top of the original record's headers.
pub const DEAD_LETTER_HEADERS: [&str; 4] = [
    HEADER_REASON,
    HEADER_SOURCE_TOPIC,
    HEADER_SOURCE_PARTITION,
    HEADER_SOURCE_OFFSET,
];

/// Where ingest reads from.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// The Kafka client settings (bootstrap servers, security, tuning) of every client ingest
    /// creates.
    pub kafka: KafkaSettings,
    /// The permit-event topic.
    pub topic: String,
    /// Where bad records are copied, if anywhere (never the permit-event topic itself).
    pub dead_letter_topic: Option<String>,
    /// How often the topic's metadata is read again, to pick up added partitions.
    pub metadata_every: Duration,
    /// Where the projection already stands (restored from a checkpoint): per partition, the
    /// next offset to apply; a partition not listed is read from its beginning.
    pub start: Vec<PartitionMark>,
    /// Records the restored state had already missed (its checkpoint's count).
    pub history_missing_before: u64,
    /// Serve even when records the state never saw are gone (`--allow-missing-history`).
    pub allow_missing_history: bool,
    /// `replay --until`: per partition, the first offset not to apply. The replay target is
    /// then these offsets, not the high watermarks.
    pub until: Option<BTreeMap<i32, i64>>,
    /// Where to hand checkpoint cuts, and how often.
    pub checkpoints: Option<CheckpointSink>,
}

/// Where ingest hands the state for checkpoints.
#[derive(Debug, Clone)]
pub struct CheckpointSink {
    /// How often a cut is taken (only when something was applied since the last one).
    pub every: Duration,
    /// The writer's queue. A cut is dropped while the writer is still busy with the previous
    /// one; the last one, at shutdown, waits for room.
    pub cuts: tokio::sync::mpsc::Sender<Cut>,
}

/// The state at a batch boundary, with where it stands in the topic: what a checkpoint holds.
#[derive(Debug)]
pub struct Cut {
    /// The write side, copied.
    pub state: StateCopy,
    /// Per partition, where the state stands.
    pub partitions: Vec<PartitionMark>,
    /// Records the state never saw (deleted before it read them).
    pub history_missing_records: u64,
}

impl IngestConfig {
    /// Reads `topic` from its beginning, with no checkpoint, stop or dead-letter topic.
    pub fn new(kafka: KafkaSettings, topic: impl Into<String>) -> Self {
        Self {
            kafka,
            topic: topic.into(),
            dead_letter_topic: None,
            metadata_every: DEFAULT_METADATA_EVERY,
            start: Vec::new(),
            history_missing_before: 0,
            allow_missing_history: false,
            until: None,
            checkpoints: None,
        }
    }
}

/// Starts the ingest thread. It runs until `cancel` fires; its outcome arrives on the returned
/// channel (closed without a value if the thread panicked). An `Err` means it could not run at
/// all (e.g. an invalid client configuration), never a bad record or an unreachable broker.
///
/// A channel rather than a join handle, so that shutdown can wait for the thread with a
/// deadline and exit anyway when a blocking broker request outlives it. The thread owns the
/// apply thread and joins it before it sends its outcome.
pub fn spawn(
    config: IngestConfig,
    projection: Arc<Projection>,
    status: Arc<IngestStatus>,
    cancel: CancellationToken,
) -> Result<oneshot::Receiver<Result<(), IngestError>>, IngestError> {
    let (done, outcome) = oneshot::channel();
    thread::Builder::new()
        .name("ingest".into())
        .spawn(move || {
            let result = consumer::Ingest::new(&config, projection, status)
                .and_then(|ingest| ingest.run(&cancel));
            let _ = done.send(result);
        })
        .map_err(|source| IngestError::Spawn {
            thread: "ingest",
            source,
        })?;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use rdkafka::{
        ClientConfig,
        consumer::{BaseConsumer, Consumer},
        message::{Header, OwnedHeaders},
        producer::{BaseProducer, BaseRecord, Producer},
    };

    use super::*;

    const TOPIC: &str = "permits";
    const GOOD: u64 = 40;
    const BAD: u64 = 3;

    /// A mock cluster whose topic holds `GOOD` good records and `BAD` bad ones over two
    /// partitions.
    fn broker_with_records() -> embedded::EmbeddedBroker {
        let broker = embedded::EmbeddedBroker::start(TOPIC, 2).expect("mock cluster starts");
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", broker.bootstrap_servers())
            .create()
            .expect("producer");
        let typed = |content_type| {
            OwnedHeaders::new().insert(Header {
                key: "content-type",
                value: Some(content_type),
            })
        };
        for n in 0..GOOD {
            let value = format!(
                concat!(
                    r#"{{"client":"OC-TOMA","referenceId":"r-{}","revision":1,"#,
                    r#""created":{{"zone":"Lot {}","permitType":"temp"}}}}"#
                ),
                n,
                n % 3
            );
            let key = n.to_string();
            let record = BaseRecord::to(TOPIC)
                .key(&key)
                .payload(&value)
                .headers(typed("application/json"));
            producer.send(record).expect("queued");
        }
        let bad: [(&[u8], Option<&str>); BAD as usize] = [
            (b"not json", Some("application/json")),
            (b"{}", Some("text/plain")),
            (b"\xff\xff\xff", None),
        ];
        for (value, content_type) in bad {
            let mut record = BaseRecord::<[u8], [u8]>::to(TOPIC).payload(value);
            if let Some(content_type) = content_type {
                record = record.headers(typed(content_type));
            }
            producer.send(record).expect("queued");
        }
        producer
            .flush(Duration::from_secs(10))
            .expect("records delivered");
        broker
    }

    /// Runs the stage until the latch flips, then stops it; returns what it built.
    fn replay(
        broker: &embedded::EmbeddedBroker,
        dead_letter_topic: Option<&str>,
    ) -> (Arc<Projection>, Arc<IngestStatus>) {
        let projection = Arc::new(Projection::new());
        let status = Arc::new(IngestStatus::new());
        let cancel = CancellationToken::new();
        let outcome = spawn(
            IngestConfig {
                dead_letter_topic: dead_letter_topic.map(str::to_owned),
                ..IngestConfig::new(KafkaSettings::plain(broker.bootstrap_servers()), TOPIC)
            },
            Arc::clone(&projection),
            Arc::clone(&status),
            cancel.clone(),
        )
        .expect("ingest thread starts");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !status.is_ready() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        assert!(
            status.is_ready(),
            "not ready in time: {:?}",
            status.progress()
        );
        cancel.cancel();
        let result = outcome
            .blocking_recv()
            .expect("the thread sends its outcome");
        assert!(result.is_ok(), "{result:?}");
        (projection, status)
    }

    /// Records in `topic` (the sum of its partitions' high watermarks).
    fn records_in(broker: &embedded::EmbeddedBroker, topic: &str) -> i64 {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", broker.bootstrap_servers())
            .create()
            .expect("consumer");
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .expect("metadata");
        metadata.topics()[0]
            .partitions()
            .iter()
            .map(|p| {
                consumer
                    .fetch_watermarks(topic, p.id(), Duration::from_secs(5))
                    .expect("watermarks")
                    .1
            })
            .sum()
    }

    /// The whole stage against librdkafka's mock cluster: good records are applied, bad ones
    /// skipped, the latch flips once both partitions are replayed, and shutdown joins cleanly.
    #[test]
    fn replays_the_topic_skips_bad_records_and_flips_the_latch() {
        let broker = broker_with_records();
        let (projection, status) = replay(&broker, None);
        let progress = status.progress();
        assert_eq!(progress.target, GOOD + BAD, "{progress:?}");
        assert_eq!(progress.replayed, progress.target, "{progress:?}");
        assert_eq!(progress.lag, 0, "{progress:?}");
        assert_eq!(progress.waiting_for, None, "{progress:?}");
        assert_eq!(projection.tracked_permits(), GOOD as usize);
    }

    /// Each bad record is copied once; a restart reads the copies back and copies none again.
    #[test]
    fn bad_records_are_dead_lettered_once_across_a_restart() {
        let broker = broker_with_records();
        let dead = "permits.dead";
        replay(&broker, Some(dead));
        assert_eq!(
            records_in(&broker, dead),
            BAD as i64,
            "one copy per bad record"
        );
        let (projection, _) = replay(&broker, Some(dead));
        assert_eq!(projection.tracked_permits(), GOOD as usize);
        assert_eq!(
            records_in(&broker, dead),
            BAD as i64,
            "no copy again after a restart"
        );
    }
}
