//! The ingest thread: the consumer, its librdkafka callbacks, assignment of every partition from
//! the beginning, and the poll loop that decodes batches for the apply thread and probes the
//! broker when the topic is idle.
//!
//! No consumer group: partitions are assigned by hand, and the topic's metadata is read again
//! now and then so that added partitions are assigned too. [`Ingest`] owns the apply thread
//! ([`Applier`], which joins it when dropped, whichever way `run` returns) and the dead-letter
//! producer (flushed when `run` is cancelled).

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, PoisonError},
    thread,
    time::{Duration, Instant},
};

use metrics::gauge;
use rdkafka::{
    ClientConfig, ClientContext, Offset, Statistics, TopicPartitionList,
    config::RDKafkaLogLevel,
    consumer::{BaseConsumer, Consumer, ConsumerContext},
    error::{KafkaError, RDKafkaErrorCode},
    message::BorrowedMessage,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    kafka::{KafkaSettings, PartitionMark, Refusal},
    projection::Projection,
    status::IngestStatus,
    telemetry,
};

use super::{
    CHECK_EVERY, CheckpointSink, Cut, IngestConfig, IngestError, MAX_BATCH, POLL_WAIT,
    PROBE_TIMEOUT, REMIND_EVERY, REQUEST_TIMEOUT,
    apply::Applier,
    dead_letter::DeadLetter,
    tracker::{HighWatermarks, PartitionState, Tracker},
};

/// librdkafka's callbacks: logs into `tracing`, statistics into the high watermarks used for lag,
/// and the cluster's last refusal (wrong credentials, TLS), which only the error callback tells.
struct IngestContext {
    topic: String,
    high_watermarks: HighWatermarks,
    /// For taking secrets out of what librdkafka says.
    kafka: KafkaSettings,
    /// The last refusal and librdkafka's reason for it, until the broker answers again.
    refusal: Mutex<Option<(Refusal, String)>>,
}

impl IngestContext {
    /// The last refusal since the broker last answered, as `waiting_for` and the log tell it.
    fn refusal(&self) -> Option<(Refusal, String)> {
        self.refusal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|(refusal, reason)| {
                (
                    *refusal,
                    format!(
                        "the cluster refused the service: {}: {reason}",
                        refusal.describe()
                    ),
                )
            })
    }

    /// The broker answered: whatever it refused before is over.
    fn forget_refusal(&self) {
        self.refusal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }
}

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
        let reason = self.kafka.scrub(reason);
        warn!(target: "librdkafka", %error, reason, "kafka client error");
        if let Some(refusal) = Refusal::classify(error.rdkafka_error_code(), &reason) {
            let mut last = self.refusal.lock().unwrap_or_else(PoisonError::into_inner);
            if last.as_ref().is_none_or(|(before, _)| *before != refusal) {
                warn!(
                    reason = %reason,
                    "the cluster refused the service: {}; retrying",
                    refusal.describe()
                );
            }
            *last = Some((refusal, reason));
        }
    }
}

impl ConsumerContext for IngestContext {}

/// The ingest thread's state: the consumer, and what it feeds.
pub(super) struct Ingest {
    consumer: BaseConsumer<IngestContext>,
    tracker: Tracker,
    applier: Applier,
    metadata_every: Duration,
    /// Per partition, where the restored state stands.
    start: BTreeMap<i32, PartitionMark>,
    until: Option<BTreeMap<i32, i64>>,
    checkpoints: Option<CheckpointSink>,
    /// The marks of the last cut handed over (or of the restored checkpoint): a cut is taken
    /// only when they moved.
    last_cut: Vec<PartitionMark>,
}

/// The consumer settings ingest reads with: the user's Kafka settings over the prefetch tuned for
/// replay, and no group offsets (every partition is assigned from the beginning; the settings
/// that say so are the service's own, [`crate::kafka::OWNED`]). Public so that the benchmarks'
/// bare consumer, the raw limit a replay is compared with, reads with exactly the same settings.
pub fn consumer_config(kafka: &KafkaSettings) -> ClientConfig {
    let mut config = kafka.client_config(&[
        // Prefetch per partition; the default 64 MiB is more than a replay needs to run at full
        // speed and is held in memory on top of the projection.
        ("queued.max.messages.kbytes", "16384"),
        // Fetch again as soon as a full prefetch queue drains, not after librdkafka's default of
        // one second, which left the consumer idle most of a replay (BENCHMARKS.md, "What each
        // change bought").
        ("fetch.queue.backoff.ms", "10"),
        ("client.id", "permit-stats"),
    ]);
    config
        .set("group.id", "permit-stats")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest");
    config
}

impl Ingest {
    /// Creates the clients and starts the apply thread; nothing is read yet.
    pub(super) fn new(
        config: &IngestConfig,
        projection: Arc<Projection>,
        status: Arc<IngestStatus>,
    ) -> Result<Self, IngestError> {
        let high_watermarks = HighWatermarks::default();
        let context = IngestContext {
            topic: config.topic.clone(),
            high_watermarks: Arc::clone(&high_watermarks),
            kafka: config.kafka.clone(),
            refusal: Mutex::new(None),
        };
        let consumer: BaseConsumer<IngestContext> = consumer_config(&config.kafka)
            .set("statistics.interval.ms", "1000")
            .create_with_context(context)
            .map_err(|e| IngestError::Consumer(config.kafka.redact(e)))?;
        let dead_letter = match &config.dead_letter_topic {
            Some(topic) => Some(DeadLetter::new(&config.kafka, topic, &config.topic)?),
            None => None,
        };
        Ok(Self {
            consumer,
            applier: Applier::start(Arc::clone(&projection))?,
            tracker: Tracker::new(
                config.topic.clone(),
                high_watermarks,
                projection,
                status,
                dead_letter,
                config.history_missing_before,
                config.allow_missing_history,
            ),
            metadata_every: config.metadata_every,
            start: config
                .start
                .iter()
                .map(|mark| (mark.partition, mark.clone()))
                .collect(),
            until: config.until.clone(),
            checkpoints: config.checkpoints.clone(),
            last_cut: config.start.clone(),
        })
    }

    /// Assigns the topic's partitions (waiting for the topic as long as it takes), then polls
    /// until `cancel` fires. An `Err` only when the apply thread is gone.
    pub(super) fn run(mut self, cancel: &CancellationToken) -> Result<(), IngestError> {
        self.tracker.replay_starting();
        if self.start.is_empty() {
            info!(topic = %self.tracker.topic, "replay starting: reading every partition from the beginning");
        } else {
            info!(topic = %self.tracker.topic, "replay starting: reading each partition from the restored state's offset");
        }
        // Said once per distinct reason (and again every REMIND_EVERY), not once per attempt.
        let mut said: Option<(String, Instant)> = None;
        while self.tracker.partitions.is_empty() {
            if cancel.is_cancelled() {
                return Ok(());
            }
            if let Err(why) = self.assign_new_partitions() {
                // Nothing is assigned yet: a poll only serves the error callback, which is
                // where a refusal (credentials, TLS) is told.
                self.serve_callbacks();
                // Said once per distinct reason, or kind of refusal (whose text changes with
                // every attempt).
                let (why, kind) = match self.consumer.context().refusal() {
                    Some((refusal, text)) => (text, refusal.describe().to_owned()),
                    None => {
                        let why = why.to_string();
                        (why.clone(), why)
                    }
                };
                if said
                    .as_ref()
                    .is_none_or(|(before, at)| *before != kind || at.elapsed() >= REMIND_EVERY)
                {
                    warn!(topic = %self.tracker.topic, reason = %why, "waiting for the topic");
                    said = Some((kind, Instant::now()));
                }
                self.tracker.status.set_waiting_for(Some(why));
                // The same one second between attempts as before, the poll's wait included.
                sleep_unless_cancelled(Duration::from_secs(1) - POLL_WAIT, cancel);
            }
        }
        self.consumer.context().forget_refusal();
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
        let mut last_cut = Instant::now();
        while !cancel.is_cancelled() {
            if let Some(every) = self.checkpoints.as_ref().map(|sink| sink.every)
                && last_cut.elapsed() >= every
            {
                last_cut = Instant::now();
                self.cut(false)?;
            }
            if self.poll_batch()? {
                self.tracker.contact();
                self.consumer.context().forget_refusal();
            }
            if let Some(dead_letter) = &self.tracker.dead_letter {
                dead_letter.poll();
            }
            if last_check.elapsed() >= CHECK_EVERY {
                if self.tracker.last_contact.elapsed() >= CHECK_EVERY {
                    self.probe();
                }
                last_check = Instant::now();
                self.tracker.tell_summaries(false);
                // The consumer's position counts a batch still being applied: not while one is.
                if !self.tracker.status.is_ready() && !self.applier.in_flight {
                    if let Ok(positions) = self.consumer.position() {
                        self.tracker.advance_to_positions(&positions);
                    }
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
        self.tracker.tell_summaries(true);
        if self.checkpoints.is_some() {
            self.cut(true)?;
        }
        info!("ingest stopped");
        Ok(())
    }

    /// Hands the state to the checkpoint writer, if anything was applied since the last cut:
    /// waits for the batch in flight, then copies the write side (the only pause ingest takes
    /// for a checkpoint). While the writer is busy a cut is skipped, unless it is the `last`.
    fn cut(&mut self, last: bool) -> Result<(), IngestError> {
        let Some(sink) = &self.checkpoints else {
            return Ok(());
        };
        if !last && sink.cuts.capacity() == 0 {
            debug!("checkpoint writer still busy: no cut this interval");
            return Ok(());
        }
        if let Some(applied) = self.applier.wait()? {
            self.tracker.applied(applied);
        }
        if let Ok(positions) = self.consumer.position() {
            self.tracker.advance_to_positions(&positions);
        }
        let partitions = self.tracker.marks();
        if partitions.is_empty() || partitions == self.last_cut {
            return Ok(());
        }
        let started = Instant::now();
        let state = self.tracker.projection().copy_state();
        let pause = started.elapsed();
        gauge!(telemetry::CHECKPOINT_PAUSE).set(pause.as_secs_f64());
        debug!(
            ms = pause.as_secs_f64() * 1e3,
            "state copied for a checkpoint"
        );
        let cut = Cut {
            state,
            partitions: partitions.clone(),
            history_missing_records: self.tracker.history_missing(),
        };
        let sent = if last {
            sink.cuts.blocking_send(cut).is_ok()
        } else {
            sink.cuts.try_send(cut).is_ok()
        };
        if sent {
            self.last_cut = partitions;
        }
        Ok(())
    }

    /// Asks the broker for the topic's metadata, as proof of contact while no record arrives;
    /// declares (and later lifts) an outage in `waiting_for`.
    fn probe(&mut self) {
        match self
            .consumer
            .fetch_metadata(Some(&self.tracker.topic), PROBE_TIMEOUT)
        {
            Ok(_) => {
                self.tracker.contact();
                self.consumer.context().forget_refusal();
            }
            // A refusal is the reason the broker does not answer: say that instead.
            Err(e) => match self.consumer.context().refusal() {
                Some((_, refusal)) => self.tracker.no_contact(&refusal),
                None => self.tracker.no_contact(&e.to_string()),
            },
        }
    }

    /// Serves the consumer's queue without taking records (none are assigned yet), so that
    /// librdkafka's error callback runs.
    ///
    /// The first poll waits a little: with no wait at all, the error events that librdkafka's
    /// main queue forwards to the consumer's were not seen (tried against a refusing broker).
    fn serve_callbacks(&self) {
        let mut wait = POLL_WAIT;
        for _ in 0..1000 {
            if self.consumer.poll(wait).is_none() {
                break;
            }
            wait = Duration::ZERO;
        }
    }

    /// Assigns, from the beginning, every partition of the topic not assigned yet, noting its
    /// high watermark as the replay target.
    fn assign_new_partitions(&mut self) -> Result<(), IngestError> {
        let metadata = self
            .consumer
            .fetch_metadata(Some(&self.tracker.topic), REQUEST_TIMEOUT)
            .map_err(IngestError::Metadata)?;
        self.tracker.contact();
        let topic = metadata
            .topics()
            .iter()
            .find(|t| t.name() == self.tracker.topic)
            .ok_or_else(|| IngestError::TopicMissing {
                topic: self.tracker.topic.clone(),
            })?;
        if let Some(e) = topic.error() {
            return Err(IngestError::Topic {
                topic: self.tracker.topic.clone(),
                code: RDKafkaErrorCode::from(e),
            });
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
                .map_err(|error| IngestError::Watermarks {
                    partition: id,
                    error,
                })?;
            // What the state already covers; records between it and the low watermark are gone.
            let restored = self.start.get(&id);
            let covered = restored.map_or(0, |mark| mark.next_offset);
            let missing = (low - covered).max(0) as u64;
            let from = covered.max(low);
            let until = self
                .until
                .as_ref()
                .map(|until| until.get(&id).copied().unwrap_or(from));
            let target = until.map_or(high, |until| until.min(high));
            gauge!(telemetry::HISTORY_MISSING, "partition" => id.to_string()).set(missing as f64);
            if missing > 0 {
                warn!(topic = %self.tracker.topic, partition = id, first_lost = covered, low_watermark = low,
                    records = missing,
                    "history missing: the topic deleted these records before this state saw them, so \
                     the counts cannot be exact; the service is not ready unless \
                     --allow-missing-history. Restore from a checkpoint that covers them (set \
                     --checkpoint-store so that this cannot happen again), or rebuild: see the \
                     README, 'History'");
            }
            added
                .add_partition_offset(&self.tracker.topic, id, Offset::Offset(from))
                .map_err(|error| IngestError::AddPartition {
                    partition: id,
                    error,
                })?;
            new_states.push((
                id,
                PartitionState {
                    low: from,
                    next: from,
                    last_record: restored.and_then(|mark| mark.last_record),
                    missing,
                    until,
                    start_high: target,
                    caught_up: target <= from,
                    lag: gauge!(telemetry::CONSUMER_LAG, "partition" => id.to_string()),
                },
            ));
        }
        if new_states.is_empty() {
            return Ok(());
        }
        self.consumer
            .incremental_assign(&added)
            .map_err(IngestError::Assign)?;
        let target: u64 = new_states
            .iter()
            .map(|(_, s)| (s.start_high - s.low).max(0) as u64)
            .sum();
        self.tracker.status.add_to_target(target);
        info!(
            topic = %self.tracker.topic,
            partitions = new_states.len(),
            records = target,
            "assigned partitions"
        );
        self.tracker.partitions.extend(new_states);
        Ok(())
    }

    /// Waits for one record, then drains what is already fetched, up to [`MAX_BATCH`], decodes it
    /// here and has the apply thread apply it. A full batch means more is waiting, so this thread
    /// goes on to poll and decode the next one while the apply thread works; any other batch is
    /// waited for, so that the live tail is counted and checked for readiness at once.
    /// True when a record arrived (which proves the broker was reachable moments ago).
    fn poll_batch(&mut self) -> Result<bool, IngestError> {
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

fn sleep_unless_cancelled(total: Duration, cancel: &CancellationToken) {
    let deadline = Instant::now() + total;
    while !cancel.is_cancelled() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
}
