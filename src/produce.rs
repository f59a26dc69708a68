//! The workload generator behind `permit-stats produce` and `serve --demo`, and its Kafka writer.
//!
//! Demos, load tests and benchmarks need a topic that looks like the push APIs' real output and
//! that can be produced again, byte for byte, from a seed: the same seed must give the same stats,
//! so a benchmark run or a failing test can be repeated exactly. The generator is therefore split
//! in two:
//!
//! - [`Workload`] (in `produce/workload.rs`), a pure, endless iterator of [`Record`]s: no clock, no
//!   I/O, only a seeded random generator. Every record carries the domain event it should decode
//!   to, so tests can check the projection against it.
//! - [`stream`] (this file), which writes any iterator of records to Kafka with a [`BaseProducer`]
//!   on the calling thread, optionally paced to a rate and stoppable through a flag, so that the
//!   demo can run it on its own thread and `produce` can run it in the foreground.

use std::{
    fmt,
    sync::{
        OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use rdkafka::{
    ClientContext,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    error::{KafkaError, RDKafkaErrorCode},
    message::{Header, OwnedHeaders},
    producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext},
};

use crate::kafka::KafkaSettings;

mod workload;

pub use workload::{BadKind, Clock, Format, Record, RecordKind, SpecError, Workload, WorkloadSpec};

/// What [`stream`] wrote.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Records handed to the producer.
    pub records: u64,
    /// Of those, bad records.
    pub bad: u64,
    /// Of those, duplicates.
    pub duplicates: u64,
    /// Of those, records the broker did not acknowledge.
    pub failed: u64,
    /// The first delivery failure, if any.
    pub first_failure: Option<KafkaError>,
    /// From the first send to the end of the flush.
    pub elapsed: Duration,
}

impl Summary {
    /// Records acknowledged per second.
    pub fn rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            (self.records - self.failed) as f64 / secs
        } else {
            0.0
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "wrote {} records ({} bad, {} duplicates, {} failed) in {:.2} s: {:.0} records/s",
            self.records - self.failed,
            self.bad,
            self.duplicates,
            self.failed,
            self.elapsed.as_secs_f64(),
            self.rate()
        )
    }
}

/// `compression.type` of the producer: the codec of the record batches on the wire and in the
/// topic. Consumers get the same record bytes whichever it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Uncompressed (librdkafka's default).
    None,
    /// gzip.
    Gzip,
    /// Snappy.
    Snappy,
    /// LZ4.
    Lz4,
    /// Zstandard.
    Zstd,
}

impl Compression {
    /// librdkafka's name of the codec.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Gzip => "gzip",
            Self::Snappy => "snappy",
            Self::Lz4 => "lz4",
            Self::Zstd => "zstd",
        }
    }
}

/// Counts delivery failures; librdkafka reports them only through this callback.
#[derive(Default)]
struct Deliveries {
    failed: AtomicU64,
    first_failure: OnceLock<KafkaError>,
}

impl ClientContext for Deliveries {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        crate::telemetry::kafka_log(level, fac, message);
    }
}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, _)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            let _ = self.first_failure.set(error.clone());
        }
    }
}

/// How long the final flush may take after all records were enqueued.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);
/// After a stop request the caller is shutting down; don't hold it up for long.
const STOP_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest single wait, so that a stop request is seen promptly even at a low rate.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// Writes `records` (at most `limit` of them) to `topic` on the calling thread, then flushes. It
/// blocks: run it on its own thread or in `spawn_blocking`.
///
/// `rate` in records per second paces the writes on a fixed schedule (0: as fast as the producer
/// takes them); after a stall the schedule catches up at full speed. Setting `stop` ends the
/// stream early: records already enqueued get a brief flush and the summary is returned.
/// Delivery failures do not stop the stream; they are counted in the summary.
///
/// The producer takes the user's Kafka settings over its own defaults; `compression`, when
/// given, wins over a `compression.type` among them.
pub fn stream(
    kafka: &KafkaSettings,
    topic: &str,
    records: impl IntoIterator<Item = Record>,
    rate: f64,
    limit: Option<u64>,
    compression: Option<Compression>,
    stop: &AtomicBool,
) -> anyhow::Result<Summary> {
    let mut config = kafka.client_config(&[
        ("linger.ms", "5"),
        ("batch.num.messages", "10000"),
        // Idempotence keeps each permit's events in order (and single) across retries.
        ("acks", "all"),
        ("enable.idempotence", "true"),
    ]);
    if let Some(compression) = compression {
        config.set("compression.type", compression.as_str());
    }
    let producer: BaseProducer<Deliveries> = config
        .create_with_context(Deliveries::default())
        .map_err(|e| kafka.redact(e))
        .context("cannot create the Kafka producer")?;

    let interval = (rate.is_finite() && rate > 0.0)
        .then(|| Duration::try_from_secs_f64(1.0 / rate).unwrap_or(Duration::MAX));
    let limit = limit.unwrap_or(u64::MAX);
    let started = Instant::now();
    // `None` once the schedule runs past what `Instant` can hold: wait for the stop flag.
    let mut next_due = Some(started);
    let mut summary = Summary {
        records: 0,
        bad: 0,
        duplicates: 0,
        failed: 0,
        first_failure: None,
        elapsed: Duration::ZERO,
    };

    'records: for record in records {
        if summary.records >= limit || stop.load(Ordering::Relaxed) {
            break;
        }
        if let Some(interval) = interval {
            // Waiting inside poll serves delivery reports instead of sleeping idle.
            loop {
                let now = Instant::now();
                let wait = match next_due {
                    Some(due) if due <= now => break,
                    Some(due) => (due - now).min(STOP_CHECK),
                    None => STOP_CHECK,
                };
                producer.poll(wait);
                if stop.load(Ordering::Relaxed) {
                    break 'records;
                }
            }
            next_due = next_due.and_then(|due| due.checked_add(interval));
        } else if summary.records % 1024 == 0 {
            producer.poll(Duration::ZERO);
        }

        let headers = OwnedHeaders::new().insert(Header {
            key: "content-type",
            value: Some(record.content_type),
        });
        let mut pending = BaseRecord::to(topic)
            .key(&record.key[..])
            .payload(&record.value[..])
            .headers(headers);
        loop {
            match producer.send(pending) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    pending = back;
                    producer.poll(Duration::from_millis(10));
                    if stop.load(Ordering::Relaxed) {
                        break 'records;
                    }
                }
                Err((error, _)) => {
                    return Err(error)
                        .with_context(|| format!("cannot enqueue a record for {topic}"));
                }
            }
        }
        summary.records += 1;
        match record.kind {
            RecordKind::Fresh => {}
            RecordKind::Duplicate => summary.duplicates += 1,
            RecordKind::Bad(_) => summary.bad += 1,
        }
    }

    let timeout = if stop.load(Ordering::Relaxed) {
        STOP_FLUSH_TIMEOUT
    } else {
        FLUSH_TIMEOUT
    };
    producer.flush(timeout).with_context(|| {
        format!(
            "{} records to {topic} still unacknowledged after {timeout:?}",
            producer.in_flight_count()
        )
    })?;
    let deliveries = producer.context();
    summary.failed = deliveries.failed.load(Ordering::Relaxed);
    summary.first_failure = deliveries.first_failure.get().cloned();
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// Creates `topic` unless it exists. The admin API is async only, so a small runtime drives this
/// one call rather than making all of `run` async.
pub fn create_topic(kafka: &KafkaSettings, topic: &str, partitions: i32) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime for the admin client")?;
    let admin: AdminClient<DefaultClientContext> = kafka
        .client_config(&[])
        .create()
        .map_err(|e| kafka.redact(e))
        .context("cannot create the Kafka admin client")?;
    // -1: the broker's default replication factor, so a real cluster gets its usual redundancy.
    let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(-1));
    let options = AdminOptions::new()
        .request_timeout(Some(Duration::from_secs(30)))
        .operation_timeout(Some(Duration::from_secs(30)));
    let results = runtime
        .block_on(admin.create_topics([&new_topic], &options))
        .with_context(|| format!("cannot create topic {topic}"))?;
    for result in results {
        match result {
            Ok(name) => tracing::info!(topic = %name, partitions, "created topic"),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::info!(topic = %name, "topic exists already; left as it is");
            }
            Err((name, code)) => anyhow::bail!("cannot create topic {name}: {code}"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use rdkafka::{
        ClientConfig, Offset, TopicPartitionList,
        consumer::{BaseConsumer, Consumer},
        message::{Headers, Message},
        mocking::MockCluster,
    };

    use super::*;

    fn workload(spec: WorkloadSpec) -> Workload {
        Workload::new(spec)
    }

    /// Reads `topic` partition 0 from the beginning until `count` records or a deadline.
    fn consume(brokers: &str, topic: &str, count: usize) -> Vec<(Vec<u8>, String)> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", "produce-test")
            .create()
            .expect("consumer");
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(topic, 0, Offset::Beginning)
            .expect("partition");
        consumer.assign(&assignment).expect("assign");
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut got = Vec::new();
        while got.len() < count && Instant::now() < deadline {
            if let Some(message) = consumer.poll(Duration::from_millis(100)) {
                let message = message.expect("message");
                let content_type = message
                    .headers()
                    .and_then(|h| h.iter().find(|h| h.key == "content-type"))
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default();
                got.push((message.payload().unwrap_or_default().to_vec(), content_type));
            }
        }
        got
    }

    #[test]
    fn streams_to_the_mock_cluster_and_reads_back_the_same_records() {
        let cluster = MockCluster::new(1).expect("mock cluster");
        cluster.create_topic("permits", 1, 1).expect("topic");
        let brokers = cluster.bootstrap_servers();
        let spec = WorkloadSpec {
            format: Format::Mixed,
            bad_records: 0.05,
            duplicates: 0.05,
            ..WorkloadSpec::default()
        };
        let stop = AtomicBool::new(false);
        let summary = stream(
            &KafkaSettings::plain(&brokers),
            "permits",
            workload(spec.clone()),
            0.0,
            Some(1000),
            Some(Compression::Zstd),
            &stop,
        )
        .expect("stream");
        assert_eq!(summary.records, 1000);
        assert_eq!(summary.failed, 0);
        assert!(summary.bad > 20 && summary.duplicates > 20, "{summary}");

        let got = consume(&brokers, "permits", 1000);
        assert_eq!(got.len(), 1000);
        let expected: Vec<(Vec<u8>, String)> = workload(spec)
            .take(1000)
            .map(|r| (r.value, r.content_type.to_owned()))
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn rate_paces_and_stop_ends_the_stream() {
        let cluster = MockCluster::new(1).expect("mock cluster");
        cluster.create_topic("paced", 1, 1).expect("topic");
        let stop = AtomicBool::new(false);
        let kafka = KafkaSettings::plain(&cluster.bootstrap_servers());
        let summary = stream(
            &kafka,
            "paced",
            workload(WorkloadSpec::default()),
            200.0,
            Some(50),
            None,
            &stop,
        )
        .expect("stream");
        // 50 records at 200/s: the last is due after 245 ms.
        assert!(summary.elapsed >= Duration::from_millis(240), "{summary}");
        assert_eq!(summary.records, 50);

        stop.store(true, Ordering::Relaxed);
        let stopped = stream(
            &kafka,
            "paced",
            workload(WorkloadSpec::default()),
            1.0,
            None,
            None,
            &stop,
        )
        .expect("stream");
        assert_eq!(stopped.records, 0);
    }

    /// `cargo test --release --lib produce::tests::rate_to_mock_cluster -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement, not a check"]
    fn rate_to_mock_cluster() {
        let cluster = MockCluster::new(1).expect("mock cluster");
        cluster.create_topic("bench", 4, 1).expect("topic");
        let n = 500_000;
        let started = Instant::now();
        let generated = workload(WorkloadSpec::default()).take(n).count();
        let generate = started.elapsed();
        let stop = AtomicBool::new(false);
        let summary = stream(
            &KafkaSettings::plain(&cluster.bootstrap_servers()),
            "bench",
            workload(WorkloadSpec::default()),
            0.0,
            Some(n as u64),
            None,
            &stop,
        )
        .expect("stream");
        eprintln!(
            "generate only: {:.0} records/s; {summary}",
            generated as f64 / generate.as_secs_f64()
        );
    }
}
