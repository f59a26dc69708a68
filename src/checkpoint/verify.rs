//! Is a checkpoint's topic still the topic we read? A topic deleted and created again under the
//! same name starts its offsets over, and a checkpoint of the old one would then be applied to
//! records it never saw. Checked against the broker before a checkpoint is used:
//!
//! - every partition of the checkpoint still exists, and none of its offsets lies beyond the
//!   partition's high watermark (a new topic has fewer records than the old one had);
//! - the last record the checkpoint took, per partition, is still there with the same timestamp
//!   (the offsets of a new topic that grew past the old one's are not enough). When retention
//!   has deleted that record, only the offsets can be checked; records deleted past the
//!   checkpoint's offsets are then missing history, which ingest reports.
//!
//! Blocking (librdkafka's metadata, watermark and fetch calls): run it off the async runtime.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use rdkafka::{Message as _, Offset, TopicPartitionList, consumer::Consumer as _};

use crate::kafka::{KafkaSettings, PartitionMark, offsets};

/// Timeout of one metadata or watermark request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long reading back the marked records may take.
const READ_DEADLINE: Duration = Duration::from_secs(30);

/// Checks `partitions` (a checkpoint's marks) against `topic` as the broker has it now. `Err`
/// says why the checkpoint must not be used, in words for the log.
pub fn against_topic(
    kafka: &KafkaSettings,
    topic: &str,
    partitions: &[PartitionMark],
) -> Result<(), String> {
    let consumer = offsets::reader(kafka, "permit-stats-checkpoint-check")?;
    let present = offsets::partitions(&consumer, topic)?;
    let mut to_read = BTreeMap::new();
    for mark in partitions {
        let partition = mark.partition;
        if present.binary_search(&partition).is_err() {
            return Err(format!(
                "partition {partition} is gone: the topic was deleted and created again"
            ));
        }
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, REQUEST_TIMEOUT)
            .map_err(|e| format!("cannot read partition {partition}'s offsets: {e}"))?;
        if mark.next_offset > high {
            return Err(format!(
                "partition {partition} ends at offset {high} but the checkpoint covers up to \
                 {}: the topic was deleted and created again",
                mark.next_offset
            ));
        }
        if let Some(record) = mark.last_record
            && record.offset >= low
        {
            to_read.insert(partition, record);
        }
    }
    if to_read.is_empty() {
        return Ok(());
    }
    let mut assignment = TopicPartitionList::new();
    for (&partition, record) in &to_read {
        assignment
            .add_partition_offset(topic, partition, Offset::Offset(record.offset))
            .map_err(|e| format!("cannot read partition {partition}: {e}"))?;
    }
    consumer
        .assign(&assignment)
        .map_err(|e| format!("cannot read the marked records: {e}"))?;
    let deadline = Instant::now() + READ_DEADLINE;
    while !to_read.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let partitions: Vec<_> = to_read.keys().collect();
            return Err(format!(
                "could not read back the last records of partitions {partitions:?} within {}s",
                READ_DEADLINE.as_secs()
            ));
        }
        let Some(result) = consumer.poll(left.min(Duration::from_millis(500))) else {
            continue;
        };
        let message = result.map_err(|e| format!("cannot read the marked records: {e}"))?;
        let partition = message.partition();
        let Some(record) = to_read.remove(&partition) else {
            continue;
        };
        let timestamp = message.timestamp().to_millis();
        if message.offset() != record.offset || timestamp != record.timestamp_ms {
            return Err(format!(
                "partition {partition}: the record at offset {} is not the one the checkpoint \
                 took (offset {}, timestamp {:?} ms where the checkpoint has {:?}): the topic \
                 was deleted and created again",
                record.offset,
                message.offset(),
                timestamp,
                record.timestamp_ms
            ));
        }
    }
    Ok(())
}
