//! One-off lookups in a topic, off the ingest consumer: its partitions ([`partitions`], with the
//! [`reader`] that asks), and offsets by time: per partition, the first record written after a
//! moment (Kafka's `ListOffsets` by timestamp), which is where `replay --until` stops.

use std::{collections::BTreeMap, time::Duration};

use rdkafka::{
    Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer as _},
};

use super::KafkaSettings;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Per partition of `topic`, the offset of the first record stamped after `at_ms` (ms since the
/// Unix epoch), or the high watermark when there is none: every record before it was written
/// at or before `at_ms`, as far as the record timestamps tell. Blocking.
pub fn first_after(
    kafka: &KafkaSettings,
    topic: &str,
    at_ms: i64,
) -> Result<BTreeMap<i32, i64>, String> {
    let consumer = reader(kafka, "permit-stats-replay")?;
    let partitions = partitions(&consumer, topic)?;
    let mut query = TopicPartitionList::new();
    for &partition in &partitions {
        // The earliest offset stamped at or after the next millisecond.
        query
            .add_partition_offset(topic, partition, Offset::Offset(at_ms.saturating_add(1)))
            .map_err(|e| e.to_string())?;
    }
    let found = consumer
        .offsets_for_times(query, REQUEST_TIMEOUT)
        .map_err(|e| format!("cannot look up offsets by time: {e}"))?;
    let mut offsets = BTreeMap::new();
    for element in found.elements_for_topic(topic) {
        let partition = element.partition();
        let offset = match element.offset() {
            Offset::Offset(offset) => offset,
            // No record after that time: everything there is.
            _ => {
                consumer
                    .fetch_watermarks(topic, partition, REQUEST_TIMEOUT)
                    .map_err(|e| format!("cannot read partition {partition}'s offsets: {e}"))?
                    .1
            }
        };
        offsets.insert(partition, offset);
    }
    Ok(offsets)
}

/// A consumer for lookups and for reading a few records by hand (`assign`): no group offsets,
/// and a position out of range is an error, never a silent jump.
pub fn reader(kafka: &KafkaSettings, client_id: &str) -> Result<BaseConsumer, String> {
    kafka
        .client_config(&[("client.id", client_id)])
        .set("group.id", "permit-stats")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "error")
        .create()
        .map_err(|e| format!("no Kafka client: {}", kafka.redact(e)))
}

/// The partitions of `topic`, sorted; `Err` when it does not exist (yet) or its metadata cannot
/// be read.
pub fn partitions(consumer: &BaseConsumer, topic: &str) -> Result<Vec<i32>, String> {
    let metadata = consumer
        .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
        .map_err(|e| format!("cannot read the topic's metadata: {e}"))?;
    let mut partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(format!("topic {topic} does not exist (yet)"));
    }
    partitions.sort_unstable();
    Ok(partitions)
}
