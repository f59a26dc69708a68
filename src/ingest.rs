//! Ingest: one dedicated thread reads every partition of the topic from the beginning and decodes
//! each record; a second one applies the decoded batches to the projection.
//!
//! - No consumer group: partitions are assigned by hand, so every replica holds the whole
//!   projection and a restart always rebuilds it from the topic (`group.id` is set only because
//!   librdkafka's `assign` wants one; nothing is ever committed).
//! - A `BaseConsumer` polled on the ingest thread, drained in batches: the first `poll` waits, the
//!   rest take what is already fetched. A batch is decoded there (protobuf without copying a
//!   string until the kept ones go into the batch's one buffer) and handed to the `apply` thread,
//!   which applies and publishes it as one step. While a full batch is applied, the next is polled
//!   and decoded; one batch is in flight at most, and any batch that is not full is waited for.
//! - Readiness is a one-way latch: the high watermarks noted at start are the target, and the
//!   latch flips once every partition has been applied up to its mark (or reached its end). A
//!   partition's offset moves when the apply thread reports its batch applied, never earlier.
//! - A bad record is counted by reason, logged with its coordinates (never its payload) and
//!   skipped; nothing a record contains can stop or crash the loop. With a dead-letter topic it
//!   is also copied there (original key, value and headers, plus [`DEAD_LETTER_HEADERS`]) by a
//!   producer this thread owns and polls; a copy that fails is counted, never retried by
//!   blocking, so the dead-letter topic can never stop consumption. At start the dead-letter
//!   topic is read once so that a restart does not copy the same bad record again.
//! - While the broker is unreachable the last state keeps being served and librdkafka keeps
//!   reconnecting. The lag cannot be measured then (no new high watermark arrives), so it keeps
//!   its last known value, and the outage is told separately: `waiting_for` says since when the
//!   broker has not answered, `lag_age_seconds` grows, and so does the age of
//!   `permit_stats_broker_last_contact_timestamp_seconds`. While records flow, their arrival is
//!   the proof of contact; when the topic is idle a metadata request (every `CHECK_EVERY`)
//!   is.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    ops::Range,
    sync::{Arc, Mutex, PoisonError, mpsc},
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use metrics::{Counter, Gauge, counter, gauge};
use rdkafka::{
    ClientConfig, ClientContext, Message, Offset, Statistics, TopicPartitionList,
    config::RDKafkaLogLevel,
    consumer::{BaseConsumer, Consumer, ConsumerContext},
    error::KafkaError,
    message::{BorrowedMessage, Header, Headers, OwnedHeaders},
    producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext},
};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    events::{self, Encoding, EventRef, InvalidEvent, PermitEvent},
    projection::{Kind, Projection, SkipReason, Tally},
    status::IngestStatus,
    telemetry,
};

/// Most records applied as one batch (and so published as one step).
const MAX_BATCH: usize = 4096;
/// How long the first poll of a batch waits; also bounds how late a shutdown is noticed.
const POLL_WAIT: Duration = Duration::from_millis(100);
/// How often lag is recomputed and, while replaying, progress is logged.
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
    /// Bootstrap servers.
    pub brokers: String,
    /// The permit-event topic.
    pub topic: String,
    /// Where bad records are copied, if anywhere (never the permit-event topic itself).
    pub dead_letter_topic: Option<String>,
    /// How often the topic's metadata is read again, to pick up added partitions.
    pub metadata_every: Duration,
}

/// Starts the ingest thread. It runs until `cancel` fires; its outcome arrives on the returned
/// channel (closed without a value if the thread panicked). An `Err` means it could not run at
/// all (e.g. an invalid client configuration), never a bad record or an unreachable broker.
///
/// A channel rather than a join handle, so that shutdown can wait for the thread with a
/// deadline and exit anyway when a blocking broker request outlives it.
pub fn spawn(
    config: IngestConfig,
    projection: Arc<Projection>,
    status: Arc<IngestStatus>,
    cancel: CancellationToken,
) -> std::io::Result<oneshot::Receiver<anyhow::Result<()>>> {
    let (done, outcome) = oneshot::channel();
    thread::Builder::new()
        .name("ingest".into())
        .spawn(move || {
            let result = Ingest::new(&config, projection, status).and_then(|i| i.run(&cancel));
            let _ = done.send(result);
        })?;
    Ok(outcome)
}

/// librdkafka's callbacks: logs into `tracing`, statistics into the high watermarks used for lag.
struct IngestContext {
    topic: String,
    high_watermarks: HighWatermarks,
}

/// The newest high watermark per partition, from librdkafka's statistics.
type HighWatermarks = Arc<Mutex<HashMap<i32, i64>>>;

impl ClientContext for IngestContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        telemetry::kafka_log(level, fac, message);
    }

    fn stats(&self, statistics: Statistics) {
        telemetry::record_kafka_statistics(&statistics, &self.topic);
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        let mut marks = self
            .high_watermarks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (&partition, stats) in &topic.partitions {
            if partition >= 0 && stats.hi_offset >= 0 {
                marks.insert(partition, stats.hi_offset);
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        warn!(target: "librdkafka", %error, reason, "kafka client error");
    }
}

impl ConsumerContext for IngestContext {}

/// One assigned partition.
#[derive(Debug)]
struct PartitionState {
    low: i64,
    /// The next offset to apply.
    next: i64,
    /// The high watermark noted when the partition was assigned.
    start_high: i64,
    caught_up: bool,
    lag: Gauge,
}

/// Metric handles, held so the hot path does not look them up per record.
struct IngestMetrics {
    applied: [Counter; 3],
    skipped: [Counter; 3],
    rejected: HashMap<InvalidEvent, Counter>,
    last_event: Gauge,
    ready: Gauge,
    last_contact: Gauge,
}

impl IngestMetrics {
    fn new() -> Self {
        Self {
            applied: Kind::ALL.map(|k| counter!(telemetry::EVENTS_APPLIED, "kind" => k.label())),
            skipped: SkipReason::ALL
                .map(|r| counter!(telemetry::EVENTS_SKIPPED, "reason" => r.label())),
            rejected: InvalidEvent::ALL
                .into_iter()
                .map(|r| {
                    let handle = counter!(telemetry::RECORDS_REJECTED, "reason" => r.reason());
                    handle.absolute(0);
                    (r, handle)
                })
                .collect(),
            last_event: gauge!(telemetry::LAST_EVENT_TIMESTAMP),
            ready: gauge!(telemetry::READY),
            last_contact: gauge!(telemetry::BROKER_LAST_CONTACT),
        }
    }
}

struct Ingest {
    consumer: BaseConsumer<IngestContext>,
    tracker: Tracker,
    applier: Applier,
    metadata_every: Duration,
}

/// Everything but the consumer, so that a message borrowed from the consumer can be applied.
struct Tracker {
    topic: String,
    high_watermarks: HighWatermarks,
    projection: Arc<Projection>,
    status: Arc<IngestStatus>,
    partitions: BTreeMap<i32, PartitionState>,
    metrics: IngestMetrics,
    newest_event_ms: Option<i64>,
    last_error: Option<String>,
    dead_letter: Option<DeadLetter>,
    /// Last sign of the broker: a record, or a metadata answer.
    last_contact: Instant,
    /// The broker's current outage, while there is one.
    outage: Option<Outage>,
}

/// A stretch of time without an answer from the broker.
struct Outage {
    /// RFC 3339 time of the last answer before it.
    since: String,
    /// The last answer before it.
    started: Instant,
    /// When it was last logged.
    told: Instant,
}

/// The consumer settings ingest reads with: no group offsets (every partition is assigned from the
/// beginning) and the prefetch tuned for replay. Public so that the benchmarks' bare consumer, the
/// raw limit a replay is compared with, reads with exactly the same settings.
pub fn consumer_config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", "permit-stats")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // Prefetch per partition; the default 64 MiB is more than a replay needs to run at full
        // speed and is held in memory on top of the projection.
        .set("queued.max.messages.kbytes", "16384")
        // Fetch again as soon as a full prefetch queue drains, not after librdkafka's default of
        // one second, which left the consumer idle most of a replay (BENCHMARKS.md: 125k -> 724k
        // records/s).
        .set("fetch.queue.backoff.ms", "10");
    config
}

impl Ingest {
    fn new(
        config: &IngestConfig,
        projection: Arc<Projection>,
        status: Arc<IngestStatus>,
    ) -> anyhow::Result<Self> {
        let high_watermarks = HighWatermarks::default();
        let context = IngestContext {
            topic: config.topic.clone(),
            high_watermarks: Arc::clone(&high_watermarks),
        };
        let consumer: BaseConsumer<IngestContext> = consumer_config(&config.brokers)
            .set("statistics.interval.ms", "1000")
            .set("client.id", "permit-stats")
            .create_with_context(context)
            .context("cannot create the Kafka consumer")?;
        let dead_letter = match &config.dead_letter_topic {
            Some(topic) => Some(DeadLetter::new(&config.brokers, topic, &config.topic)?),
            None => None,
        };
        Ok(Self {
            consumer,
            applier: Applier::start(Arc::clone(&projection))
                .context("cannot start the apply thread")?,
            tracker: Tracker {
                topic: config.topic.clone(),
                high_watermarks,
                projection,
                status,
                partitions: BTreeMap::new(),
                metrics: IngestMetrics::new(),
                newest_event_ms: None,
                last_error: None,
                dead_letter,
                last_contact: Instant::now(),
                outage: None,
            },
            metadata_every: config.metadata_every,
        })
    }

    fn run(mut self, cancel: &CancellationToken) -> anyhow::Result<()> {
        self.tracker.metrics.ready.set(0.0);
        info!(topic = %self.tracker.topic, "replay starting: reading every partition from the beginning");
        // Said once per distinct reason (and again every REMIND_EVERY), not once per attempt.
        let mut said: Option<(String, Instant)> = None;
        while self.tracker.partitions.is_empty() {
            if cancel.is_cancelled() {
                return Ok(());
            }
            if let Err(why) = self.assign_new_partitions() {
                if said
                    .as_ref()
                    .is_none_or(|(before, at)| *before != why || at.elapsed() >= REMIND_EVERY)
                {
                    warn!(topic = %self.tracker.topic, reason = %why, "waiting for the topic");
                    said = Some((why.clone(), Instant::now()));
                }
                self.tracker.status.set_waiting_for(Some(why));
                sleep_unless_cancelled(Duration::from_secs(1), cancel);
            }
        }
        if said.is_some() {
            info!(topic = %self.tracker.topic, "the topic is reachable: replaying");
        }
        self.tracker.status.set_waiting_for(None);
        self.tracker.check_ready();
        if let Some(dead_letter) = &mut self.tracker.dead_letter {
            dead_letter.load_existing(cancel);
        }

        let mut last_check = Instant::now();
        let mut last_metadata = Instant::now();
        let mut last_progress = (Instant::now(), 0u64);
        while !cancel.is_cancelled() {
            if self.poll_batch()? {
                self.tracker.contact();
            }
            if let Some(dead_letter) = &self.tracker.dead_letter {
                dead_letter.producer.poll(Duration::ZERO);
            }
            if last_check.elapsed() >= CHECK_EVERY {
                if self.tracker.last_contact.elapsed() >= CHECK_EVERY {
                    self.probe();
                }
                last_check = Instant::now();
                // The consumer's position counts a batch still being applied: not while one is.
                if !self.tracker.status.is_ready() && !self.applier.in_flight {
                    self.tracker.advance_to_positions(&self.consumer);
                    if !self.tracker.check_ready() {
                        last_progress = self.tracker.log_progress(last_progress);
                    }
                }
                self.tracker.update_lag();
            }
            // Not during an outage: the probe already asks, and this would block longer.
            if last_metadata.elapsed() >= self.metadata_every && self.tracker.outage.is_none() {
                last_metadata = Instant::now();
                if let Err(why) = self.assign_new_partitions() {
                    debug!(reason = %why, "metadata refresh failed");
                }
            }
        }
        if let Some(dead_letter) = &self.tracker.dead_letter {
            dead_letter.flush();
        }
        info!("ingest stopped");
        Ok(())
    }

    /// Asks the broker for the topic's metadata, as proof of contact while no record arrives;
    /// declares (and later lifts) an outage in `waiting_for`.
    fn probe(&mut self) {
        match self
            .consumer
            .fetch_metadata(Some(&self.tracker.topic), PROBE_TIMEOUT)
        {
            Ok(_) => self.tracker.contact(),
            Err(e) => self.tracker.no_contact(&e.to_string()),
        }
    }

    /// Assigns, from the beginning, every partition of the topic not assigned yet, noting its
    /// high watermark as the replay target.
    fn assign_new_partitions(&mut self) -> Result<(), String> {
        let metadata = self
            .consumer
            .fetch_metadata(Some(&self.tracker.topic), REQUEST_TIMEOUT)
            .map_err(|e| format!("broker unreachable or metadata failed: {e}"))?;
        self.tracker.contact();
        let topic = metadata
            .topics()
            .iter()
            .find(|t| t.name() == self.tracker.topic)
            .ok_or_else(|| format!("topic {} is not in the metadata", self.tracker.topic))?;
        if let Some(e) = topic.error() {
            return Err(format!(
                "topic {}: {}",
                self.tracker.topic,
                rdkafka::error::RDKafkaErrorCode::from(e)
            ));
        }
        let mut added = TopicPartitionList::new();
        let mut new_states = Vec::new();
        for partition in topic.partitions() {
            let id = partition.id();
            if self.tracker.partitions.contains_key(&id) {
                continue;
            }
            let (low, high) = self
                .consumer
                .fetch_watermarks(&self.tracker.topic, id, REQUEST_TIMEOUT)
                .map_err(|e| format!("cannot read the watermarks of partition {id}: {e}"))?;
            added
                .add_partition_offset(&self.tracker.topic, id, Offset::Beginning)
                .map_err(|e| e.to_string())?;
            new_states.push((
                id,
                PartitionState {
                    low,
                    next: low,
                    start_high: high,
                    caught_up: high <= low,
                    lag: gauge!(telemetry::CONSUMER_LAG, "partition" => id.to_string()),
                },
            ));
        }
        if new_states.is_empty() {
            return Ok(());
        }
        self.consumer
            .incremental_assign(&added)
            .map_err(|e| format!("cannot assign partitions: {e}"))?;
        let target: u64 = new_states
            .iter()
            .map(|(_, s)| (s.start_high - s.low).max(0) as u64)
            .sum();
        self.tracker.status.add_to_target(target);
        info!(
            topic = %self.tracker.topic,
            partitions = new_states.len(),
            records = target,
            "assigned partitions from the beginning"
        );
        self.tracker.partitions.extend(new_states);
        Ok(())
    }

    /// Waits for one record, then drains what is already fetched, up to [`MAX_BATCH`], decodes it
    /// here and has the apply thread apply it. A full batch means more is waiting, so this thread
    /// goes on to poll and decode the next one while the apply thread works; any other batch is
    /// waited for, so that the live tail is counted and checked for readiness at once.
    /// True when a record arrived (which proves the broker was reachable moments ago).
    fn poll_batch(&mut self) -> anyhow::Result<bool> {
        let messages = drain(&self.consumer, &mut self.tracker.last_error, POLL_WAIT);
        if messages.is_empty() {
            return Ok(false);
        }
        let full = messages.len() >= MAX_BATCH;
        let mut batch = self.applier.spare();
        for message in &messages {
            self.tracker.take(message, &mut batch);
        }
        drop(messages);
        // One batch in flight at most: the previous one is counted before this one is handed on.
        if let Some(applied) = self.applier.wait()? {
            self.tracker.applied(applied);
        }
        self.applier.send(batch)?;
        if !full && let Some(applied) = self.applier.wait()? {
            self.tracker.applied(applied);
        }
        Ok(true)
    }
}

/// Polls what is already fetched (after waiting up to `wait` for the first record), up to
/// [`MAX_BATCH`] records.
fn drain<'c>(
    consumer: &'c BaseConsumer<IngestContext>,
    last_error: &mut Option<String>,
    wait: Duration,
) -> Vec<BorrowedMessage<'c>> {
    let mut messages = Vec::with_capacity(MAX_BATCH);
    let mut next = consumer.poll(wait);
    while let Some(result) = next {
        match result {
            Ok(message) => {
                *last_error = None;
                messages.push(message);
            }
            Err(e) => {
                let text = e.to_string();
                if last_error.as_deref() != Some(&text) {
                    warn!(error = %text, "consumer error; retrying");
                    *last_error = Some(text);
                }
            }
        }
        if messages.len() >= MAX_BATCH {
            break;
        }
        next = consumer.poll(Duration::ZERO);
    }
    messages
}

/// One batch's events, decoded, with their strings copied into one buffer so that the batch can
/// go to the apply thread (the records cannot leave the thread that polled them), and the offsets
/// it takes each partition to once applied.
#[derive(Default)]
struct DecodedBatch {
    text: String,
    events: Vec<PermitEvent<Range<u32>>>,
    next_offsets: Vec<(i32, i64)>,
}

impl DecodedBatch {
    fn push(&mut self, event: EventRef<'_>) {
        let text = &mut self.text;
        self.events.push(event.map_strings(|s| {
            let start = text.len() as u32;
            text.push_str(s);
            start..text.len() as u32
        }));
    }

    fn taken(&mut self, partition: i32, offset: i64) {
        match self.next_offsets.iter_mut().find(|(p, _)| *p == partition) {
            Some((_, next)) => *next = (*next).max(offset + 1),
            None => self.next_offsets.push((partition, offset + 1)),
        }
    }

    /// The events, borrowing their strings from the batch.
    fn borrowed(&self) -> Vec<EventRef<'_>> {
        let text = |range: &Range<u32>| &self.text[range.start as usize..range.end as usize];
        self.events
            .iter()
            .map(|event| event.map_strings(text))
            .collect()
    }

    fn clear(&mut self) {
        self.text.clear();
        self.events.clear();
        self.next_offsets.clear();
    }
}

/// What the apply thread did with a batch.
struct Applied {
    tally: Tally,
    next_offsets: Vec<(i32, i64)>,
}

/// The apply thread: applies and publishes the batches ingest decodes, so that applying one
/// overlaps with polling and decoding the next (BENCHMARKS.md). Buffers go back and forth, so a
/// steady replay allocates nothing per batch.
struct Applier {
    batches: Option<mpsc::SyncSender<DecodedBatch>>,
    results: mpsc::Receiver<(Tally, DecodedBatch)>,
    thread: Option<thread::JoinHandle<()>>,
    in_flight: bool,
    spare: Option<DecodedBatch>,
}

impl Applier {
    fn start(projection: Arc<Projection>) -> std::io::Result<Self> {
        let (batches, jobs) = mpsc::sync_channel::<DecodedBatch>(1);
        let (done, results) = mpsc::sync_channel(1);
        let thread = thread::Builder::new().name("apply".into()).spawn(move || {
            for decoded in jobs {
                let mut batch = projection.batch();
                batch.apply_all(&decoded.borrowed());
                let tally = batch.finish();
                if done.send((tally, decoded)).is_err() {
                    break;
                }
            }
        })?;
        Ok(Self {
            batches: Some(batches),
            results,
            thread: Some(thread),
            in_flight: false,
            spare: None,
        })
    }

    /// An empty batch, reusing the buffers of one already applied.
    fn spare(&mut self) -> DecodedBatch {
        let mut batch = self.spare.take().unwrap_or_default();
        batch.clear();
        batch
    }

    fn send(&mut self, batch: DecodedBatch) -> anyhow::Result<()> {
        self.batches
            .as_ref()
            .and_then(|batches| batches.send(batch).ok())
            .context("the apply thread stopped")?;
        self.in_flight = true;
        Ok(())
    }

    /// Waits for the batch in flight, if there is one.
    fn wait(&mut self) -> anyhow::Result<Option<Applied>> {
        if !self.in_flight {
            return Ok(None);
        }
        let (tally, mut batch) = self.results.recv().context("the apply thread stopped")?;
        self.in_flight = false;
        let next_offsets = std::mem::take(&mut batch.next_offsets);
        self.spare = Some(batch);
        Ok(Some(Applied {
            tally,
            next_offsets,
        }))
    }
}

impl Drop for Applier {
    fn drop(&mut self) {
        // Closing the channel ends the thread once the batch in flight (if any) is applied.
        self.batches = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Tracker {
    /// Decodes one record into `batch`; a bad one is counted, logged and dead-lettered here.
    fn take(&mut self, message: &BorrowedMessage<'_>, batch: &mut DecodedBatch) {
        let partition = message.partition();
        let offset = message.offset();
        if self.partitions.contains_key(&partition) {
            batch.taken(partition, offset);
        }
        let payload = message.payload().unwrap_or_default();
        let record_ms = || message.timestamp().to_millis();
        let decoded = match Encoding::from_content_type(content_type(message)) {
            Ok(Encoding::Protobuf) => events::decode_protobuf(payload).map(|mut event| {
                event.occurred_at_ms = event.occurred_at_ms.or_else(record_ms);
                batch.push(event);
            }),
            Ok(Encoding::Json) => events::decode(payload, Encoding::Json).map(|mut event| {
                event.occurred_at_ms = event.occurred_at_ms.or_else(record_ms);
                batch.push(event.borrowed());
            }),
            Err(reason) => Err(reason),
        };
        if let Err(reason) = decoded {
            if let Some(counter) = self.metrics.rejected.get(&reason) {
                counter.increment(1);
            }
            warn!(
                topic = %self.topic,
                partition,
                offset,
                reason = reason.reason(),
                "rejected a bad record: {reason}"
            );
            if let Some(dead_letter) = &mut self.dead_letter {
                dead_letter.copy(message, reason);
            }
        }
    }

    /// The broker answered just now: lifts an outage, if one was declared.
    fn contact(&mut self) {
        self.last_contact = Instant::now();
        self.status.note_contact();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        self.metrics.last_contact.set(now.as_secs_f64());
        if let Some(outage) = self.outage.take() {
            info!(
                seconds = outage.started.elapsed().as_secs(),
                "the broker answers again: catching up"
            );
            self.status.set_waiting_for(None);
        }
    }

    /// A probe went unanswered: once the silence is long enough, says so in `waiting_for` and
    /// the log (again every [`REMIND_EVERY`]), while the last state keeps being served.
    fn no_contact(&mut self, error: &str) {
        let silent = self.last_contact.elapsed();
        if silent < OUTAGE_AFTER {
            return;
        }
        let outage = match &mut self.outage {
            None => {
                warn!(seconds = silent.as_secs(), %error, lag = self.status.lag(),
                    "the broker is unreachable: serving the last state, lag as last measured");
                // A fixed point in time rather than a count of seconds: it stays true between
                // probes.
                let since = OffsetDateTime::now_utc() - silent;
                let since = since
                    .replace_nanosecond(0)
                    .unwrap_or(since)
                    .format(&Rfc3339)
                    .unwrap_or_else(|_| "an unknown time".into());
                self.outage.insert(Outage {
                    since,
                    started: self.last_contact,
                    told: Instant::now(),
                })
            }
            Some(outage) => {
                if outage.told.elapsed() >= REMIND_EVERY {
                    warn!(seconds = silent.as_secs(), %error, "the broker is still unreachable");
                    outage.told = Instant::now();
                }
                outage
            }
        };
        self.status.set_waiting_for(Some(format!(
            "the broker: no answer since {} ({error}); serving the state as of then",
            outage.since
        )));
    }

    /// Counts what an applied (and published) batch did, moves the partitions' applied offsets,
    /// and checks readiness.
    fn applied(
        &mut self,
        Applied {
            tally,
            next_offsets,
        }: Applied,
    ) {
        for (partition, next) in next_offsets {
            if let Some(state) = self.partitions.get_mut(&partition) {
                state.next = state.next.max(next);
            }
        }
        for (counter, n) in self.metrics.applied.iter().zip(tally.applied) {
            counter.increment(n);
        }
        for (counter, n) in self.metrics.skipped.iter().zip(tally.skipped) {
            counter.increment(n);
        }
        if let Some(newest) = tally.newest_ms
            && self.newest_event_ms.is_none_or(|seen| newest > seen)
        {
            self.newest_event_ms = Some(newest);
            self.metrics.last_event.set(newest as f64 / 1000.0);
        }
        if !self.status.is_ready() {
            self.check_ready();
        }
    }

    /// Flips the latch once every partition is applied up to its start watermark.
    /// Moves each partition's next offset up to the consumer's position, which also steps over
    /// offsets that carry no record for us (transaction markers, compacted gaps).
    fn advance_to_positions(&mut self, consumer: &BaseConsumer<IngestContext>) {
        let Ok(positions) = consumer.position() else {
            return;
        };
        for element in positions.elements_for_topic(&self.topic) {
            if let (Some(state), Offset::Offset(position)) = (
                self.partitions.get_mut(&element.partition()),
                element.offset(),
            ) {
                state.next = state.next.max(position);
            }
        }
    }

    /// True when the latch flipped now.
    fn check_ready(&mut self) -> bool {
        let mut replayed = 0u64;
        let mut all_caught_up = true;
        for state in self.partitions.values_mut() {
            if state.next >= state.start_high {
                state.caught_up = true;
            }
            all_caught_up &= state.caught_up;
            replayed += if state.caught_up {
                (state.start_high - state.low).max(0) as u64
            } else {
                (state.next - state.low).max(0) as u64
            };
        }
        self.status.set_replayed(replayed);
        // Lag first, so that the first answer after the latch flips carries a current one.
        self.update_lag();
        if !all_caught_up || self.partitions.is_empty() {
            return false;
        }
        {
            self.status.mark_ready();
            self.metrics.ready.set(1.0);
            let progress = self.status.progress();
            info!(
                records = progress.target,
                seconds = progress.replay_seconds.unwrap_or_default(),
                permits = self.projection.tracked_permits(),
                "replay done: ready"
            );
        }
        true
    }

    /// Lag per partition: the newest high watermark (from librdkafka's statistics, or the one
    /// noted at assignment) minus the next offset to apply.
    fn update_lag(&self) {
        let marks = self
            .high_watermarks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut total = 0u64;
        for (partition, state) in &self.partitions {
            let high = marks
                .get(partition)
                .copied()
                .unwrap_or(state.start_high)
                .max(state.start_high);
            let lag = (high - state.next).max(0) as u64;
            state.lag.set(lag as f64);
            total += lag;
        }
        self.status.set_lag(total);
    }

    fn log_progress(&self, (since, before): (Instant, u64)) -> (Instant, u64) {
        let progress = self.status.progress();
        let seconds = since.elapsed().as_secs_f64().max(1e-3);
        info!(
            records = progress.replayed,
            of = progress.target,
            percent = progress.percent,
            rate = ((progress.replayed.saturating_sub(before)) as f64 / seconds).round(),
            "replaying"
        );
        (Instant::now(), progress.replayed)
    }
}

/// The dead-letter copy of bad records: one producer, created once, polled by the ingest thread.
struct DeadLetter {
    producer: BaseProducer<DeadLetterContext>,
    topic: String,
    source_topic: String,
    brokers: String,
    /// Source (partition, offset) of the copies found in the dead-letter topic at start; each is
    /// removed when its record comes by again, so the set only shrinks.
    already: HashSet<(i32, i64)>,
    failures: Counter,
}

/// Counts the broker's verdict on every copy.
struct DeadLetterContext {
    delivered: Counter,
    failures: Counter,
}

impl ClientContext for DeadLetterContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        telemetry::kafka_log(level, fac, message);
    }
}

impl ProducerContext for DeadLetterContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, (): ()) {
        match result {
            Ok(_) => self.delivered.increment(1),
            Err((error, message)) => {
                self.failures.increment(1);
                warn!(
                    %error,
                    source_partition = header_number(message, HEADER_SOURCE_PARTITION),
                    source_offset = header_number(message, HEADER_SOURCE_OFFSET),
                    "could not copy a bad record to the dead-letter topic"
                );
            }
        }
    }
}

impl DeadLetter {
    fn new(brokers: &str, topic: &str, source_topic: &str) -> anyhow::Result<Self> {
        let failures = counter!(telemetry::DEAD_LETTER_FAILURES);
        failures.absolute(0);
        let delivered = counter!(telemetry::DEAD_LETTERED);
        delivered.absolute(0);
        let producer: BaseProducer<DeadLetterContext> = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("client.id", "permit-stats-dead-letter")
            // Copies in source order per key, once per send even across retries.
            .set("enable.idempotence", "true")
            .set("linger.ms", "20")
            .create_with_context(DeadLetterContext {
                delivered,
                failures: failures.clone(),
            })
            .context("cannot create the dead-letter producer")?;
        Ok(Self {
            producer,
            topic: topic.to_owned(),
            source_topic: source_topic.to_owned(),
            brokers: brokers.to_owned(),
            already: HashSet::new(),
            failures,
        })
    }

    /// Copies one bad record: its key, value and headers as they were, plus ours. Never waits:
    /// a full queue is a counted failure, not a stall of consumption.
    fn copy(&mut self, message: &BorrowedMessage<'_>, reason: InvalidEvent) {
        let (partition, offset) = (message.partition(), message.offset());
        if self.already.remove(&(partition, offset)) {
            debug!(
                partition,
                offset, "bad record already in the dead-letter topic"
            );
            return;
        }
        let mut headers = OwnedHeaders::new();
        if let Some(original) = message.headers() {
            for header in original.iter() {
                headers = headers.insert(Header {
                    key: header.key,
                    value: header.value,
                });
            }
        }
        let (partition_text, offset_text) = (partition.to_string(), offset.to_string());
        for (key, value) in [
            (HEADER_REASON, reason.reason()),
            (HEADER_SOURCE_TOPIC, self.source_topic.as_str()),
            (HEADER_SOURCE_PARTITION, partition_text.as_str()),
            (HEADER_SOURCE_OFFSET, offset_text.as_str()),
        ] {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&self.topic).headers(headers);
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        if let Some(value) = message.payload() {
            record = record.payload(value);
        }
        if let Err((error, _)) = self.producer.send(record) {
            self.failures.increment(1);
            warn!(%error, partition, offset, "could not copy a bad record to the dead-letter topic");
        }
    }

    /// Reads the dead-letter topic once, noting which records of the source topic are already
    /// there, so that the replay of a restart does not copy them again. Best effort: when it
    /// cannot finish, copies may repeat (consumers of the dead-letter topic can tell them apart
    /// by the source headers).
    fn load_existing(&mut self, cancel: &CancellationToken) {
        let started = Instant::now();
        match self.scan(cancel) {
            Ok(found) => {
                info!(
                    topic = %self.topic,
                    already = found,
                    seconds = started.elapsed().as_secs_f64(),
                    "read the dead-letter topic"
                );
            }
            Err(why) => warn!(
                topic = %self.topic,
                reason = %why,
                "could not read the dead-letter topic; bad records already there may be copied again"
            ),
        }
    }

    fn scan(&mut self, cancel: &CancellationToken) -> Result<usize, String> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .set("group.id", "permit-stats-dead-letter-scan")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("client.id", "permit-stats-dead-letter-scan")
            .create()
            .map_err(|e| e.to_string())?;
        let metadata = consumer
            .fetch_metadata(Some(&self.topic), REQUEST_TIMEOUT)
            .map_err(|e| e.to_string())?;
        let Some(topic) = metadata.topics().iter().find(|t| t.name() == self.topic) else {
            return Ok(0);
        };
        if topic.error().is_some() {
            // Not created yet: nothing copied so far.
            return Ok(0);
        }
        let mut ends = HashMap::new();
        let mut assignment = TopicPartitionList::new();
        for partition in topic.partitions() {
            let (low, high) = consumer
                .fetch_watermarks(&self.topic, partition.id(), REQUEST_TIMEOUT)
                .map_err(|e| e.to_string())?;
            if high > low {
                ends.insert(partition.id(), high);
                assignment
                    .add_partition_offset(&self.topic, partition.id(), Offset::Beginning)
                    .map_err(|e| e.to_string())?;
            }
        }
        if ends.is_empty() {
            return Ok(0);
        }
        consumer.assign(&assignment).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + DEAD_LETTER_SCAN_DEADLINE;
        while !ends.is_empty() {
            if cancel.is_cancelled() || Instant::now() >= deadline {
                return Err(format!(
                    "not done within {} s",
                    DEAD_LETTER_SCAN_DEADLINE.as_secs()
                ));
            }
            match consumer.poll(POLL_WAIT) {
                Some(Ok(message)) => {
                    if header_text(&message, HEADER_SOURCE_TOPIC) == Some(&self.source_topic)
                        && let (Some(partition), Some(offset)) = (
                            header_number(&message, HEADER_SOURCE_PARTITION),
                            header_number(&message, HEADER_SOURCE_OFFSET),
                        )
                        && let Ok(partition) = i32::try_from(partition)
                    {
                        self.already.insert((partition, offset));
                    }
                    if ends
                        .get(&message.partition())
                        .is_some_and(|&end| message.offset() + 1 >= end)
                    {
                        ends.remove(&message.partition());
                    }
                }
                Some(Err(e)) => debug!(error = %e, "reading the dead-letter topic"),
                None => {}
            }
        }
        Ok(self.already.len())
    }

    /// Gives pending copies a moment at shutdown; what is still pending then counts as failed.
    fn flush(&self) {
        if self.producer.flush(DEAD_LETTER_FLUSH).is_err() {
            let pending = self.producer.in_flight_count();
            self.failures
                .increment(u64::try_from(pending).unwrap_or_default());
            warn!(
                pending,
                "dead-letter copies still pending at shutdown; counted as failed"
            );
        }
    }
}

/// A header's value as text.
fn header_text<'a, M: Message>(message: &'a M, name: &str) -> Option<&'a str> {
    message
        .headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// A header's value as a decimal number.
fn header_number<M: Message>(message: &M, name: &str) -> Option<i64> {
    header_text(message, name)?.parse().ok()
}

/// The record's `content-type` header, if any (header names compare case-insensitively).
fn content_type<'a>(message: &'a BorrowedMessage<'_>) -> Option<&'a [u8]> {
    let headers = message.headers()?;
    headers
        .iter()
        .find(|h| h.key.eq_ignore_ascii_case("content-type"))
        .and_then(|h| h.value)
}

fn sleep_unless_cancelled(total: Duration, cancel: &CancellationToken) {
    let deadline = Instant::now() + total;
    while !cancel.is_cancelled() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::{Timestamp, message::OwnedMessage};

    use super::*;

    #[test]
    fn dead_letter_headers_are_read_back_as_written() {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: HEADER_SOURCE_TOPIC,
                value: Some("opscom.permits.v1"),
            })
            .insert(Header {
                key: HEADER_SOURCE_OFFSET,
                value: Some("1234567890123"),
            })
            .insert(Header {
                key: HEADER_SOURCE_PARTITION,
                value: Some("not a number"),
            });
        let message = OwnedMessage::new(
            None,
            None,
            "dead".into(),
            Timestamp::NotAvailable,
            0,
            0,
            Some(headers),
        );
        assert_eq!(
            header_text(&message, HEADER_SOURCE_TOPIC),
            Some("opscom.permits.v1")
        );
        assert_eq!(
            header_number(&message, HEADER_SOURCE_OFFSET),
            Some(1_234_567_890_123)
        );
        assert_eq!(header_number(&message, HEADER_SOURCE_PARTITION), None);
        assert_eq!(header_text(&message, HEADER_REASON), None);
    }
}
