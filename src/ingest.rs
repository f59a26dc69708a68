//! Ingest: one dedicated thread reads every partition of the topic from the beginning and applies
//! each record to the projection.
//!
//! - No consumer group: partitions are assigned by hand, so every replica holds the whole
//!   projection and a restart always rebuilds it from the topic (`group.id` is set only because
//!   librdkafka's `assign` wants one; nothing is ever committed).
//! - A `BaseConsumer` polled on this thread, drained in batches: the first `poll` waits, the rest
//!   take what is already fetched, and the projection publishes once per batch.
//! - Readiness is a one-way latch: the high watermarks noted at start are the target, and the
//!   latch flips once every partition has been applied up to its mark (or reached its end).
//! - A bad record is counted by reason, logged with its coordinates (never its payload) and
//!   skipped; nothing a record contains can stop or crash the loop. While the broker is
//!   unreachable the last state keeps being served and librdkafka keeps reconnecting.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
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
    message::{BorrowedMessage, Headers},
};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::{
    events::{self, Encoding, InvalidEvent, PermitEvent},
    projection::{Kind, Projection, SkipReason},
    telemetry,
};

/// Most records applied as one batch (and so published as one step).
const MAX_BATCH: usize = 4096;
/// How long the first poll of a batch waits; also bounds how late a shutdown is noticed.
const POLL_WAIT: Duration = Duration::from_millis(100);
/// How often lag is recomputed and, while replaying, progress is logged.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How often the topic's metadata is read again, to pick up added partitions.
const METADATA_EVERY: Duration = Duration::from_secs(10);
/// Timeout of one metadata or watermark request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Where ingest reads from.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// Bootstrap servers.
    pub brokers: String,
    /// The permit-event topic.
    pub topic: String,
}

/// Replay progress and freshness, written by ingest and read by the API.
#[derive(Debug)]
pub struct IngestStatus {
    ready: AtomicBool,
    lag: AtomicU64,
    target: AtomicU64,
    replayed: AtomicU64,
    started: Instant,
    ready_after_ms: AtomicU64,
    waiting_for: Mutex<Option<String>>,
}

/// What `/health/ready` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    /// Whether the projection has caught up since start.
    pub ready: bool,
    /// Records applied of those below the start watermarks.
    pub replayed: u64,
    /// Records below the start watermarks.
    pub target: u64,
    /// `replayed` as a percentage of `target` (100 when there is nothing to replay).
    pub percent: f64,
    /// Records not yet applied, at the last check.
    pub lag: u64,
    /// Seconds the replay took, once ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay_seconds: Option<f64>,
    /// Why ingest is waiting, when it is (e.g. the broker is unreachable).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
}

impl Default for IngestStatus {
    fn default() -> Self {
        Self {
            ready: AtomicBool::new(false),
            lag: AtomicU64::new(0),
            target: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
            started: Instant::now(),
            ready_after_ms: AtomicU64::new(0),
            waiting_for: Mutex::new(Some("the broker's metadata".into())),
        }
    }
}

impl IngestStatus {
    /// A status that is not ready yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the projection has caught up since start (a one-way latch).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Records between what is applied and the high watermarks, at the last check.
    pub fn lag(&self) -> u64 {
        self.lag.load(Ordering::Relaxed)
    }

    /// Flips the readiness latch.
    pub fn mark_ready(&self) {
        if !self.ready.swap(true, Ordering::AcqRel) {
            let took = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.ready_after_ms.store(took, Ordering::Relaxed);
        }
    }

    /// The replay's progress.
    pub fn progress(&self) -> Progress {
        let ready = self.is_ready();
        let target = self.target.load(Ordering::Relaxed);
        let replayed = self.replayed.load(Ordering::Relaxed).min(target);
        Progress {
            ready,
            replayed,
            target,
            percent: if ready {
                100.0
            } else if target == 0 {
                0.0
            } else {
                (replayed as f64 * 1000.0 / target as f64).floor() / 10.0
            },
            lag: self.lag(),
            replay_seconds: ready
                .then(|| self.ready_after_ms.load(Ordering::Relaxed) as f64 / 1000.0),
            waiting_for: self
                .waiting_for
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }

    fn set_waiting_for(&self, why: Option<String>) {
        *self
            .waiting_for
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = why;
    }
}

/// Starts the ingest thread. It runs until `cancel` fires; an `Err` means it could not run at all
/// (e.g. an invalid client configuration), never a bad record or an unreachable broker.
pub fn spawn(
    config: IngestConfig,
    projection: Arc<Projection>,
    status: Arc<IngestStatus>,
    cancel: CancellationToken,
) -> std::io::Result<thread::JoinHandle<anyhow::Result<()>>> {
    thread::Builder::new()
        .name("ingest".into())
        .spawn(move || Ingest::new(&config, projection, status)?.run(&cancel))
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
        use RDKafkaLogLevel::*;
        match level {
            Emerg | Alert | Critical | Error => error!(target: "librdkafka", fac, "{message}"),
            Warning => warn!(target: "librdkafka", fac, "{message}"),
            Notice | Info => info!(target: "librdkafka", fac, "{message}"),
            Debug => debug!(target: "librdkafka", fac, "{message}"),
        }
    }

    fn stats(&self, statistics: Statistics) {
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
        }
    }
}

struct Ingest {
    consumer: BaseConsumer<IngestContext>,
    tracker: Tracker,
}

/// Everything but the consumer, so that a message borrowed from the consumer can be applied.
struct Tracker {
    topic: String,
    high_watermarks: HighWatermarks,
    projection: Arc<Projection>,
    status: Arc<IngestStatus>,
    partitions: BTreeMap<i32, PartitionState>,
    events: Vec<PermitEvent>,
    metrics: IngestMetrics,
    newest_event_ms: Option<i64>,
    last_error: Option<String>,
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
        let consumer: BaseConsumer<IngestContext> = ClientConfig::new()
            .set("bootstrap.servers", &config.brokers)
            .set("group.id", "permit-stats")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("statistics.interval.ms", "1000")
            // Prefetch per partition; the default 64 MiB is more than a replay needs to run at
            // full speed and is held in memory on top of the projection.
            .set("queued.max.messages.kbytes", "16384")
            .set("client.id", "permit-stats")
            .create_with_context(context)
            .context("cannot create the Kafka consumer")?;
        Ok(Self {
            consumer,
            tracker: Tracker {
                topic: config.topic.clone(),
                high_watermarks,
                projection,
                status,
                partitions: BTreeMap::new(),
                events: Vec::with_capacity(MAX_BATCH),
                metrics: IngestMetrics::new(),
                newest_event_ms: None,
                last_error: None,
            },
        })
    }

    fn run(mut self, cancel: &CancellationToken) -> anyhow::Result<()> {
        self.tracker.metrics.ready.set(0.0);
        info!(topic = %self.tracker.topic, "replay starting: reading every partition from the beginning");
        while self.tracker.partitions.is_empty() {
            if cancel.is_cancelled() {
                return Ok(());
            }
            if let Err(why) = self.assign_new_partitions() {
                warn!(topic = %self.tracker.topic, reason = %why, "waiting for the topic");
                self.tracker.status.set_waiting_for(Some(why));
                sleep_unless_cancelled(Duration::from_secs(1), cancel);
            }
        }
        self.tracker.status.set_waiting_for(None);
        self.tracker.check_ready();

        let mut last_check = Instant::now();
        let mut last_metadata = Instant::now();
        let mut last_progress = (Instant::now(), 0u64);
        while !cancel.is_cancelled() {
            self.poll_batch();
            if last_check.elapsed() >= CHECK_EVERY {
                last_check = Instant::now();
                if !self.tracker.status.is_ready() {
                    self.tracker.advance_to_positions(&self.consumer);
                    if !self.tracker.check_ready() {
                        last_progress = self.tracker.log_progress(last_progress);
                    }
                }
                self.tracker.update_lag();
            }
            if last_metadata.elapsed() >= METADATA_EVERY {
                last_metadata = Instant::now();
                if let Err(why) = self.assign_new_partitions() {
                    debug!(reason = %why, "metadata refresh failed");
                }
            }
        }
        info!("ingest stopped");
        Ok(())
    }

    /// Assigns, from the beginning, every partition of the topic not assigned yet, noting its
    /// high watermark as the replay target.
    fn assign_new_partitions(&mut self) -> Result<(), String> {
        let metadata = self
            .consumer
            .fetch_metadata(Some(&self.tracker.topic), REQUEST_TIMEOUT)
            .map_err(|e| format!("broker unreachable or metadata failed: {e}"))?;
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
        self.tracker
            .status
            .target
            .fetch_add(target, Ordering::Relaxed);
        info!(
            topic = %self.tracker.topic,
            partitions = new_states.len(),
            records = target,
            "assigned partitions from the beginning"
        );
        self.tracker.partitions.extend(new_states);
        Ok(())
    }

    /// Waits for one record, then drains what is already fetched, applies it all as one batch.
    fn poll_batch(&mut self) {
        let tracker = &mut self.tracker;
        let Some(first) = self.consumer.poll(POLL_WAIT) else {
            return;
        };
        let mut taken = 1;
        let mut next = Some(first);
        while let Some(result) = next {
            match result {
                Ok(message) => {
                    tracker.take(&message);
                    tracker.last_error = None;
                }
                Err(e) => {
                    let text = e.to_string();
                    if tracker.last_error.as_deref() != Some(&text) {
                        warn!(error = %text, "consumer error; retrying");
                        tracker.last_error = Some(text);
                    }
                }
            }
            if taken >= MAX_BATCH {
                break;
            }
            taken += 1;
            next = self.consumer.poll(Duration::ZERO);
        }
        tracker.apply_batch();
    }
}

impl Tracker {
    fn take(&mut self, message: &BorrowedMessage<'_>) {
        let partition = message.partition();
        let offset = message.offset();
        if let Some(state) = self.partitions.get_mut(&partition) {
            state.next = state.next.max(offset + 1);
        }
        let decoded = Encoding::from_content_type(content_type(message))
            .and_then(|encoding| events::decode(message.payload().unwrap_or_default(), encoding));
        match decoded {
            Ok(mut event) => {
                if event.occurred_at_ms.is_none() {
                    event.occurred_at_ms = message.timestamp().to_millis();
                }
                self.events.push(event);
            }
            Err(reason) => {
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
            }
        }
    }

    fn apply_batch(&mut self) {
        if !self.events.is_empty() {
            let tally = self.projection.apply_batch(&self.events);
            self.events.clear();
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
        self.status.replayed.store(replayed, Ordering::Relaxed);
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
        self.status.lag.store(total, Ordering::Relaxed);
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
