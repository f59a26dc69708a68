//! The dead-letter copy of bad records: one idempotent producer, created once and polled by the
//! ingest thread, and the scan at start of the copies already in the dead-letter topic.
//!
//! A copy carries the original key, value and headers plus the `permit-stats-*` headers of
//! [`DEAD_LETTER_HEADERS`](super::DEAD_LETTER_HEADERS), so a reader of the dead-letter topic can
//! find the source record, and so can the scan: a restart replays every bad record again, and the
//! scan is what keeps it from being copied twice.
//! Copying never blocks consumption: a copy that cannot be queued or delivered is counted and
//! logged (at DEBUG each, at WARN the first of a kind and then a summary per interval), never
//! retried by waiting.

use std::{
    collections::{HashMap, HashSet},
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use metrics::{Counter, counter};
use rdkafka::{
    ClientContext, Message, Offset, TopicPartitionList,
    config::RDKafkaLogLevel,
    consumer::{BaseConsumer, Consumer},
    error::KafkaError,
    message::{BorrowedMessage, Header, Headers, OwnedHeaders},
    producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext},
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{events::InvalidEvent, kafka::KafkaSettings, telemetry};

use super::{
    DEAD_LETTER_FLUSH, DEAD_LETTER_SCAN_DEADLINE, HEADER_REASON, HEADER_SOURCE_OFFSET,
    HEADER_SOURCE_PARTITION, HEADER_SOURCE_TOPIC, IngestError, POLL_WAIT, REQUEST_TIMEOUT,
    WARN_SUMMARY_EVERY,
    summary::{Summaries, Verdict},
};

/// The dead-letter copy of bad records: one producer, created once, polled by the ingest thread.
pub(super) struct DeadLetter {
    producer: BaseProducer<DeadLetterContext>,
    topic: String,
    source_topic: String,
    kafka: KafkaSettings,
    /// Source (partition, offset) of the copies found in the dead-letter topic at start; each is
    /// removed when its record comes by again, so the set only shrinks.
    already: HashSet<(i32, i64)>,
    failures: Counter,
}

/// Counts the broker's verdict on every copy, and logs the failures.
struct DeadLetterContext {
    delivered: Counter,
    failures: Counter,
    /// Failed copies by kind, for the WARN summaries. Only the ingest thread takes the lock: it
    /// sends the copies, and its polls run the delivery callbacks.
    failed: Mutex<Summaries<CopyFailure, FailedCopy>>,
}

/// How a copy failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum CopyFailure {
    /// The producer's queue did not take it (e.g. full).
    NotQueued,
    /// The broker did not take it.
    NotDelivered,
}

impl CopyFailure {
    fn label(self) -> &'static str {
        match self {
            Self::NotQueued => "not queued",
            Self::NotDelivered => "not delivered",
        }
    }
}

/// One failed copy: the client's error and the source record's coordinates.
#[derive(Debug, Clone)]
struct FailedCopy {
    error: KafkaError,
    source_partition: Option<i64>,
    source_offset: Option<i64>,
}

impl DeadLetterContext {
    /// Counts a failed copy and logs it: at WARN when it is the first of its kind in an
    /// interval, else at DEBUG and in the next summary.
    fn failed(&self, kind: CopyFailure, copy: FailedCopy) {
        self.failures.increment(1);
        let FailedCopy {
            error,
            source_partition,
            source_offset,
        } = &copy;
        let verdict = self
            .failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .note(kind, copy.clone(), Instant::now());
        let failure = kind.label();
        if matches!(verdict, Verdict::Warn) {
            warn!(
                %error,
                failure,
                source_partition,
                source_offset,
                "could not copy a bad record to the dead-letter topic"
            );
        } else {
            debug!(
                %error,
                failure,
                source_partition,
                source_offset,
                "could not copy a bad record to the dead-letter topic"
            );
        }
        if let Verdict::Summary(summary) = verdict {
            tell_failed_copies(kind, summary.count, summary.over, &summary.last);
        }
    }

    /// Writes the WARN summaries that are due (with `all`, every pending one).
    fn tell_summaries(&self, all: bool) {
        self.failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .for_each_due(Instant::now(), all, |&kind, summary| {
                tell_failed_copies(kind, summary.count, summary.over, &summary.last);
            });
    }
}

/// The WARN summary of failed copies of one kind.
fn tell_failed_copies(kind: CopyFailure, count: u64, over: Duration, last: &FailedCopy) {
    warn!(
        failure = kind.label(),
        count,
        seconds = over.as_secs(),
        last_error = %last.error,
        last_source_partition = last.source_partition,
        last_source_offset = last.source_offset,
        "could not copy more bad records to the dead-letter topic"
    );
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
            Err((error, message)) => self.failed(
                CopyFailure::NotDelivered,
                FailedCopy {
                    error: error.clone(),
                    source_partition: header_number(message, HEADER_SOURCE_PARTITION),
                    source_offset: header_number(message, HEADER_SOURCE_OFFSET),
                },
            ),
        }
    }
}

impl DeadLetter {
    /// A producer to `topic` for the bad records of `source_topic`; nothing is sent yet.
    ///
    /// It takes the user's Kafka settings, so a `compression.type` among them compresses the
    /// copies' batches; the copies' key, value and headers are the source record's bytes either
    /// way (compression is only how a batch travels and is stored).
    pub(super) fn new(
        kafka: &KafkaSettings,
        topic: &str,
        source_topic: &str,
    ) -> Result<Self, IngestError> {
        let failures = counter!(telemetry::DEAD_LETTER_FAILURES);
        failures.absolute(0);
        let delivered = counter!(telemetry::DEAD_LETTERED);
        delivered.absolute(0);
        let producer: BaseProducer<DeadLetterContext> = kafka
            .client_config(&[
                ("client.id", "permit-stats-dead-letter"),
                // Copies in source order per key, once per send even across retries.
                ("enable.idempotence", "true"),
                ("linger.ms", "20"),
            ])
            .create_with_context(DeadLetterContext {
                delivered,
                failures: failures.clone(),
                failed: Mutex::new(Summaries::new(WARN_SUMMARY_EVERY)),
            })
            .map_err(|e| IngestError::DeadLetterProducer(kafka.redact(e)))?;
        Ok(Self {
            producer,
            topic: topic.to_owned(),
            source_topic: source_topic.to_owned(),
            kafka: kafka.clone(),
            already: HashSet::new(),
            failures,
        })
    }

    /// Copies one bad record: its key, value and headers as they were, plus ours. Never waits:
    /// a full queue is a counted failure, not a stall of consumption.
    pub(super) fn copy(&mut self, message: &BorrowedMessage<'_>, reason: InvalidEvent) {
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
            self.producer.context().failed(
                CopyFailure::NotQueued,
                FailedCopy {
                    error,
                    source_partition: Some(i64::from(partition)),
                    source_offset: Some(offset),
                },
            );
        }
    }

    /// Reads the dead-letter topic once, noting which records of the source topic are already
    /// there, so that the replay of a restart does not copy them again. Best effort: when it
    /// cannot finish, copies may repeat (consumers of the dead-letter topic can tell them apart
    /// by the source headers).
    pub(super) fn load_existing(&mut self, cancel: &CancellationToken) {
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

    fn scan(&mut self, cancel: &CancellationToken) -> Result<usize, IngestError> {
        let consumer: BaseConsumer = self
            .kafka
            .client_config(&[("client.id", "permit-stats-dead-letter-scan")])
            .set("group.id", "permit-stats-dead-letter-scan")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .create()
            .map_err(|e| IngestError::ScanConsumer(self.kafka.redact(e)))?;
        let metadata = consumer
            .fetch_metadata(Some(&self.topic), REQUEST_TIMEOUT)
            .map_err(IngestError::Metadata)?;
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
                .map_err(|error| IngestError::Watermarks {
                    partition: partition.id(),
                    error,
                })?;
            if high > low {
                ends.insert(partition.id(), high);
                assignment
                    .add_partition_offset(&self.topic, partition.id(), Offset::Beginning)
                    .map_err(|error| IngestError::AddPartition {
                        partition: partition.id(),
                        error,
                    })?;
            }
        }
        if ends.is_empty() {
            return Ok(0);
        }
        consumer.assign(&assignment).map_err(IngestError::Assign)?;
        let deadline = Instant::now() + DEAD_LETTER_SCAN_DEADLINE;
        while !ends.is_empty() {
            if cancel.is_cancelled() || Instant::now() >= deadline {
                return Err(IngestError::ScanUnfinished {
                    seconds: DEAD_LETTER_SCAN_DEADLINE.as_secs(),
                });
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

    /// Serves the producer's callbacks (delivery reports) without waiting.
    pub(super) fn poll(&self) {
        self.producer.poll(Duration::ZERO);
    }

    /// Writes the WARN summaries of failed copies that are due (with `all`, every pending one).
    pub(super) fn tell_summaries(&self, all: bool) {
        self.producer.context().tell_summaries(all);
    }

    /// Gives pending copies a moment at shutdown; what is still pending then counts as failed.
    pub(super) fn flush(&self) {
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
