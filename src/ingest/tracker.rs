//! What ingest knows between batches: each partition's next offset and start watermark, the
//! readiness latch, lag, the broker's outages, replay progress, and the metric handles they
//! feed. It also decodes each record into the batch, since a record's offset is noted there
//! and a bad record is counted, logged and dead-lettered there.
//!
//! It holds everything but the consumer, so that a record borrowed from the consumer can be
//! taken while the consumer is borrowed. Readiness, lag and contact are published through
//! [`IngestStatus`]'s writer methods only.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, PoisonError},
    time::Instant,
};

use metrics::{Counter, Gauge, counter, gauge};
use rdkafka::{
    Message, Offset, TopicPartitionList,
    message::{BorrowedMessage, Headers},
};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tracing::{debug, info, warn};

use crate::{
    events::{self, Encoding, InvalidEvent},
    kafka::{PartitionMark, RecordMark},
    projection::{Kind, Projection, SkipReason},
    status::IngestStatus,
    telemetry,
};

use super::{
    OUTAGE_AFTER, REMIND_EVERY, WARN_SUMMARY_EVERY,
    apply::{Applied, DecodedBatch},
    dead_letter::DeadLetter,
    summary::{Summaries, Summary, Verdict},
};

/// The newest high watermark per partition, from librdkafka's statistics.
pub(super) type HighWatermarks = Arc<Mutex<HashMap<i32, i64>>>;

/// One assigned partition.
#[derive(Debug)]
pub(super) struct PartitionState {
    /// Where this run's replay of the partition began: its low watermark, or the restored
    /// state's offset when that is later.
    pub(super) low: i64,
    /// The next offset to apply.
    pub(super) next: i64,
    /// The last record taken, if any (for the next checkpoint's marks).
    pub(super) last_record: Option<RecordMark>,
    /// Records between what the state covered and the low watermark: deleted before the state
    /// saw them.
    pub(super) missing: u64,
    /// `replay --until`: records from this offset on are not applied.
    pub(super) until: Option<i64>,
    /// The high watermark noted when the partition was assigned.
    pub(super) start_high: i64,
    pub(super) caught_up: bool,
    pub(super) lag: Gauge,
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

/// Everything but the consumer, so that a message borrowed from the consumer can be taken.
pub(super) struct Tracker {
    pub(super) topic: String,
    high_watermarks: HighWatermarks,
    projection: Arc<Projection>,
    pub(super) status: Arc<IngestStatus>,
    pub(super) partitions: BTreeMap<i32, PartitionState>,
    metrics: IngestMetrics,
    newest_event_ms: Option<i64>,
    /// The consumer's last error, so that a repeated one is logged once.
    pub(super) last_error: Option<String>,
    pub(super) dead_letter: Option<DeadLetter>,
    /// Bad records by reason and coordinates (partition, offset), for the WARN summaries.
    bad_records: Summaries<InvalidEvent, (i32, i64)>,
    /// Last sign of the broker: a record, or a metadata answer.
    pub(super) last_contact: Instant,
    /// The broker's current outage, while there is one.
    pub(super) outage: Option<Outage>,
    /// Records missed before this run (carried by the checkpoint the state was restored from).
    history_missing_before: u64,
    /// Serve even when history is missing (`--allow-missing-history`).
    allow_missing_history: bool,
}

/// A stretch of time without an answer from the broker.
pub(super) struct Outage {
    /// RFC 3339 time of the last answer before it.
    since: String,
    /// The last answer before it.
    started: Instant,
    /// When it was last logged.
    told: Instant,
}

impl Tracker {
    /// Nothing assigned, replayed or heard from the broker yet.
    pub(super) fn new(
        topic: String,
        high_watermarks: HighWatermarks,
        projection: Arc<Projection>,
        status: Arc<IngestStatus>,
        dead_letter: Option<DeadLetter>,
        history_missing_before: u64,
        allow_missing_history: bool,
    ) -> Self {
        Self {
            topic,
            high_watermarks,
            projection,
            status,
            partitions: BTreeMap::new(),
            metrics: IngestMetrics::new(),
            newest_event_ms: None,
            last_error: None,
            dead_letter,
            bad_records: Summaries::new(WARN_SUMMARY_EVERY),
            last_contact: Instant::now(),
            outage: None,
            history_missing_before,
            allow_missing_history,
        }
    }

    /// Says "not ready" in the metrics until the latch flips.
    pub(super) fn replay_starting(&self) {
        self.metrics.ready.set(0.0);
    }

    /// Decodes one record into `batch`; a bad one is counted, logged and dead-lettered here.
    pub(super) fn take(&mut self, message: &BorrowedMessage<'_>, batch: &mut DecodedBatch) {
        let partition = message.partition();
        let offset = message.offset();
        if let Some(state) = self.partitions.get_mut(&partition) {
            if state.until.is_some_and(|until| offset >= until) {
                return;
            }
            state.last_record = Some(RecordMark {
                offset,
                timestamp_ms: message.timestamp().to_millis(),
            });
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
            self.reject(message, reason);
        }
    }

    /// Counts a bad record, logs it (at WARN when it is the first of its reason in an interval,
    /// else at DEBUG and in the next summary) and copies it to the dead-letter topic.
    fn reject(&mut self, message: &BorrowedMessage<'_>, reason: InvalidEvent) {
        let (partition, offset) = (message.partition(), message.offset());
        if let Some(counter) = self.metrics.rejected.get(&reason) {
            counter.increment(1);
        }
        let verdict = self
            .bad_records
            .note(reason, (partition, offset), Instant::now());
        if verdict == Verdict::Warn {
            warn!(
                topic = %self.topic,
                partition,
                offset,
                reason = reason.reason(),
                "rejected a bad record: {reason}"
            );
        } else {
            debug!(
                topic = %self.topic,
                partition,
                offset,
                reason = reason.reason(),
                "rejected a bad record: {reason}"
            );
        }
        if let Verdict::Summary(summary) = verdict {
            tell_bad_records(&self.topic, reason, summary);
        }
        if let Some(dead_letter) = &mut self.dead_letter {
            dead_letter.copy(message, reason);
        }
    }

    /// Writes the WARN summaries that are due (with `all`, every pending one, as at shutdown):
    /// of bad records, and of failed dead-letter copies.
    pub(super) fn tell_summaries(&mut self, all: bool) {
        let topic = &self.topic;
        self.bad_records
            .for_each_due(Instant::now(), all, |&reason, summary| {
                tell_bad_records(topic, reason, summary);
            });
        if let Some(dead_letter) = &self.dead_letter {
            dead_letter.tell_summaries(all);
        }
    }

    /// The broker answered just now: lifts an outage, if one was declared.
    pub(super) fn contact(&mut self) {
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
    pub(super) fn no_contact(&mut self, error: &str) {
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
    pub(super) fn applied(
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

    /// Moves each partition's next offset up to the consumer's position, which also steps over
    /// offsets that carry no record for us (transaction markers, compacted gaps).
    pub(super) fn advance_to_positions(&mut self, positions: &TopicPartitionList) {
        for element in positions.elements_for_topic(&self.topic) {
            if let (Some(state), Offset::Offset(position)) = (
                self.partitions.get_mut(&element.partition()),
                element.offset(),
            ) {
                state.next = state.next.max(position);
            }
        }
    }

    /// The projection ingest applies to.
    pub(super) fn projection(&self) -> &Projection {
        &self.projection
    }

    /// Where the state stands, per partition: a checkpoint's marks.
    pub(super) fn marks(&self) -> Vec<PartitionMark> {
        self.partitions
            .iter()
            .map(|(&partition, state)| PartitionMark {
                partition,
                next_offset: state.next,
                last_record: state.last_record,
            })
            .collect()
    }

    /// Records the state never saw: those deleted before this run's replay of each partition
    /// began, and those its checkpoint had already missed.
    pub(super) fn history_missing(&self) -> u64 {
        self.history_missing_before + self.partitions.values().map(|s| s.missing).sum::<u64>()
    }

    /// Why the state cannot be served as exact, when history is missing and that is not allowed.
    fn missing_history_reason(&self) -> Option<String> {
        if self.allow_missing_history || self.history_missing() == 0 {
            return None;
        }
        let mut lost: Vec<String> = self
            .partitions
            .iter()
            .filter(|(_, s)| s.missing > 0)
            .map(|(p, s)| {
                format!(
                    "partition {p} offsets {}..{} ({} records)",
                    s.low - s.missing as i64,
                    s.low,
                    s.missing
                )
            })
            .collect();
        if self.history_missing_before > 0 {
            lost.push(format!(
                "{} records the restored checkpoint had already missed",
                self.history_missing_before
            ));
        }
        Some(format!(
            "history: the topic deleted records before this state saw them ({}): the counts \
             would not be exact; restore from a checkpoint that covers them, or serve anyway \
             with --allow-missing-history",
            lost.join(", ")
        ))
    }

    /// Flips the latch once every partition is applied up to its start watermark, and notes the
    /// replay's progress and the lag. True when the latch flipped now. Never while history is
    /// missing and that is not allowed: `waiting_for` says which records are gone.
    pub(super) fn check_ready(&mut self) -> bool {
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
        self.status.set_history_missing(self.history_missing());
        // Lag first, so that the first answer after the latch flips carries a current one.
        self.update_lag();
        // Said as soon as it is known, not only once the replay is done.
        let missing = self.missing_history_reason();
        if let Some(reason) = &missing {
            self.status.set_waiting_for(Some(reason.clone()));
        }
        if !all_caught_up || self.partitions.is_empty() || missing.is_some() {
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
    pub(super) fn update_lag(&self) {
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

    /// Logs the replay's progress and rate since the last call; returns what the next call needs.
    pub(super) fn log_progress(&self, (since, before): (Instant, u64)) -> (Instant, u64) {
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

/// The WARN summary of bad records of one reason.
fn tell_bad_records(topic: &str, reason: InvalidEvent, summary: Summary<(i32, i64)>) {
    let (last_partition, last_offset) = summary.last;
    warn!(
        topic,
        reason = reason.reason(),
        count = summary.count,
        seconds = summary.over.as_secs(),
        last_partition,
        last_offset,
        "rejected more bad records: {reason}"
    );
}

/// The record's `content-type` header, if any (header names compare case-insensitively).
#[inline]
fn content_type<'a>(message: &'a BorrowedMessage<'_>) -> Option<&'a [u8]> {
    let headers = message.headers()?;
    headers
        .iter()
        .find(|h| h.key.eq_ignore_ascii_case("content-type"))
        .and_then(|h| h.value)
}
