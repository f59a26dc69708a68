//! librdkafka's statistics as metrics: what the consumer's statistics callback reports about
//! the broker connections and the topic's partitions, kept as one snapshot and rendered when
//! scraped, so that a broker that left the cluster or a partition no longer assigned leaves the
//! page too (the `metrics` recorder has no way to drop a series).

use std::{
    fmt::Write as _,
    sync::{Mutex, PoisonError},
};

use rdkafka::Statistics;

use super::catalogue::{
    FAMILIES, KAFKA_BROKER_DISCONNECTS, KAFKA_BROKER_UP, KAFKA_CONSUMER_LAG, KAFKA_FETCH_QUEUE,
    KAFKA_RECEIVED_BYTES, LabelValue, Source, header,
};

/// What the newest librdkafka statistics said, kept for the next scrape.
#[derive(Debug, Default, Clone, PartialEq)]
struct KafkaStats {
    /// Sorted by name.
    brokers: Vec<BrokerStats>,
    /// Sorted by partition.
    partitions: Vec<PartitionStats>,
    received_bytes: u64,
}

#[derive(Debug, Clone, PartialEq)]
struct BrokerStats {
    name: String,
    up: bool,
    disconnects: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
struct PartitionStats {
    partition: i32,
    /// `None` while librdkafka does not know it yet.
    lag: Option<u64>,
    fetch_queue: u64,
}

/// The newest statistics of the (one) ingest consumer. A process-wide slot because the consumer's
/// statistics callback, in ingest's client context, reaches it without a handle.
static KAFKA_STATS: Mutex<Option<KafkaStats>> = Mutex::new(None);

/// Keeps what librdkafka's statistics say about the broker connections and the partitions of
/// `topic`, for the next scrape. Called from the consumer's statistics callback (once per
/// `statistics.interval.ms`), so a scrape shows state at most that old.
pub fn record_kafka_statistics(statistics: &Statistics, topic: &str) {
    let stats = KafkaStats::from_statistics(statistics, topic);
    *KAFKA_STATS.lock().unwrap_or_else(PoisonError::into_inner) = Some(stats);
}

impl KafkaStats {
    fn from_statistics(statistics: &Statistics, topic: &str) -> Self {
        let mut brokers: Vec<BrokerStats> = statistics
            .brokers
            .values()
            // Only connections to real brokers: "internal" and "logical" handles (such as the
            // group coordinator) are librdkafka's own bookkeeping.
            .filter(|b| b.source == "learned" || b.source == "configured")
            .map(|b| BrokerStats {
                name: b.name.clone(),
                // UPDATE is the brief state librdkafka passes through while up.
                up: b.state == "UP" || b.state == "UPDATE",
                disconnects: b.disconnects.and_then(|n| u64::try_from(n).ok()),
            })
            .collect();
        brokers.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        let mut partitions: Vec<PartitionStats> = statistics
            .topics
            .get(topic)
            .map(|t| {
                t.partitions
                    .values()
                    // Partition -1 is librdkafka's "unassigned" bucket, not a real partition.
                    .filter(|p| p.partition >= 0)
                    .map(|p| PartitionStats {
                        partition: p.partition,
                        lag: handed_over_lag(p),
                        fetch_queue: u64::try_from(p.fetchq_cnt).unwrap_or(0),
                    })
                    .collect()
            })
            .unwrap_or_default();
        partitions.sort_unstable_by_key(|p| p.partition);
        Self {
            brokers,
            partitions,
            received_bytes: u64::try_from(statistics.rx_bytes).unwrap_or(0),
        }
    }

    fn render(&self, out: &mut String) {
        header(out, KAFKA_BROKER_UP);
        for b in &self.brokers {
            let _ = writeln!(
                out,
                "{KAFKA_BROKER_UP}{{broker=\"{}\"}} {}",
                LabelValue(&b.name),
                u8::from(b.up)
            );
        }
        header(out, KAFKA_BROKER_DISCONNECTS);
        for b in &self.brokers {
            if let Some(n) = b.disconnects {
                let _ = writeln!(
                    out,
                    "{KAFKA_BROKER_DISCONNECTS}{{broker=\"{}\"}} {n}",
                    LabelValue(&b.name)
                );
            }
        }
        header(out, KAFKA_CONSUMER_LAG);
        for p in &self.partitions {
            if let Some(lag) = p.lag {
                let _ = writeln!(
                    out,
                    "{KAFKA_CONSUMER_LAG}{{partition=\"{}\"}} {lag}",
                    p.partition
                );
            }
        }
        header(out, KAFKA_FETCH_QUEUE);
        for p in &self.partitions {
            let _ = writeln!(
                out,
                "{KAFKA_FETCH_QUEUE}{{partition=\"{}\"}} {}",
                p.partition, p.fetch_queue
            );
        }
        header(out, KAFKA_RECEIVED_BYTES);
        let _ = writeln!(out, "{KAFKA_RECEIVED_BYTES} {}", self.received_bytes);
    }
}

/// High watermark minus the next offset librdkafka hands to ingest. librdkafka's own
/// `consumer_lag` is measured from the committed offset, and ingest never commits (it replays
/// from the beginning on every start), so it is always -1 here. Before the first record is handed
/// over, everything from the low watermark on is still to come. `None` while the watermarks are
/// unknown.
fn handed_over_lag(p: &rdkafka::statistics::Partition) -> Option<u64> {
    let high = u64::try_from(p.hi_offset).ok()?;
    let next = u64::try_from(p.app_offset)
        .or_else(|_| u64::try_from(p.lo_offset))
        .ok()?;
    Some(high.saturating_sub(next))
}

/// The Kafka families of the page: the newest statistics, or, before the first arrives (they come
/// while ingest polls), each family's header alone.
pub(super) fn render(out: &mut String) {
    let kafka = KAFKA_STATS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    match kafka {
        Some(kafka) => kafka.render(out),
        None => {
            for family in FAMILIES.iter().filter(|f| f.source == Source::Kafka) {
                header(out, family.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn librdkafka_statistics_become_broker_and_partition_gauges() {
        let json = r#"{
            "name": "c", "client_id": "permit-stats", "type": "consumer", "ts": 1, "time": 1,
            "age": 1, "replyq": 0, "msg_cnt": 0, "msg_size": 0, "msg_max": 0, "msg_size_max": 0,
            "tx": 0, "tx_bytes": 0, "rx": 0, "rx_bytes": 4096, "txmsgs": 0, "txmsg_bytes": 0,
            "rxmsgs": 0, "rxmsg_bytes": 0, "simple_cnt": 0, "metadata_cache_cnt": 1,
            "brokers": {
                "kafka:9092/1": {"name": "kafka:9092/1", "nodeid": 1, "nodename": "kafka:9092",
                    "source": "learned", "state": "UP", "stateage": 1, "outbuf_cnt": 0,
                    "outbuf_msg_cnt": 0, "waitresp_cnt": 0, "waitresp_msg_cnt": 0, "tx": 1,
                    "txbytes": 1, "txerrs": 0, "txretries": 0, "txidle": 0, "req_timeouts": 0,
                    "rx": 1, "rxbytes": 1, "rxerrs": 0, "rxcorriderrs": 0, "rxpartial": 0,
                    "rxidle": 0, "req": {}, "zbuf_grow": 0, "buf_grow": 0, "disconnects": 2,
                    "rtt": {"min": 100, "max": 300, "avg": 250, "sum": 500, "cnt": 2,
                        "stddev": 0, "hdrsize": 0, "p50": 0, "p75": 0, "p90": 0, "p95": 0,
                        "p99": 0, "p99_99": 0, "outofrange": 0},
                    "toppars": {}},
                "GroupCoordinator": {"name": "GroupCoordinator", "nodeid": -1, "nodename": "",
                    "source": "logical", "state": "UP", "stateage": 1, "outbuf_cnt": 0,
                    "outbuf_msg_cnt": 0, "waitresp_cnt": 0, "waitresp_msg_cnt": 0, "tx": 0,
                    "txbytes": 0, "txerrs": 0, "txretries": 0, "txidle": 0, "req_timeouts": 0,
                    "rx": 0, "rxbytes": 0, "rxerrs": 0, "rxcorriderrs": 0, "rxpartial": 0,
                    "rxidle": 0, "req": {}, "zbuf_grow": 0, "buf_grow": 0, "toppars": {}},
                "kafka:9092/bootstrap": {"name": "kafka:9092/bootstrap", "nodeid": -1,
                    "nodename": "kafka:9092", "source": "configured", "state": "DOWN",
                    "stateage": 1, "outbuf_cnt": 0, "outbuf_msg_cnt": 0, "waitresp_cnt": 0,
                    "waitresp_msg_cnt": 0, "tx": 0, "txbytes": 0, "txerrs": 0, "txretries": 0,
                    "txidle": 0, "req_timeouts": 0, "rx": 0, "rxbytes": 0, "rxerrs": 0,
                    "rxcorriderrs": 0, "rxpartial": 0, "rxidle": 0, "req": {}, "zbuf_grow": 0,
                    "buf_grow": 0, "toppars": {}}
            },
            "topics": {"t": {"topic": "t", "age": 1, "metadata_age": 1,
                "batchsize": {"min": 0, "max": 0, "avg": 0, "sum": 0, "cnt": 0, "stddev": 0,
                    "hdrsize": 0, "p50": 0, "p75": 0, "p90": 0, "p95": 0, "p99": 0,
                    "p99_99": 0, "outofrange": 0},
                "batchcnt": {"min": 0, "max": 0, "avg": 0, "sum": 0, "cnt": 0, "stddev": 0,
                    "hdrsize": 0, "p50": 0, "p75": 0, "p90": 0, "p95": 0, "p99": 0,
                    "p99_99": 0, "outofrange": 0},
                "partitions": {
                    "0": {"partition": 0, "broker": 1, "leader": 1, "desired": true,
                        "unknown": false, "msgq_cnt": 0, "msgq_bytes": 0, "xmit_msgq_cnt": 0,
                        "xmit_msgq_bytes": 0, "fetchq_cnt": 7, "fetchq_size": 70,
                        "fetch_state": "active", "query_offset": 0, "next_offset": 10,
                        "app_offset": 3, "stored_offset": -1001, "committed_offset": -1001,
                        "eof_offset": -1001, "lo_offset": 0, "hi_offset": 10, "ls_offset": 10,
                        "consumer_lag": -1, "consumer_lag_stored": -1, "txmsgs": 0,
                        "txbytes": 0, "rxmsgs": 10, "rxbytes": 100, "msgs": 10,
                        "rx_ver_drops": 0, "msgs_inflight": 0, "next_ack_seq": 0,
                        "next_err_seq": 0, "acked_msgid": 0},
                    "1": {"partition": 1, "broker": 1, "leader": 1, "desired": true,
                        "unknown": false, "msgq_cnt": 0, "msgq_bytes": 0, "xmit_msgq_cnt": 0,
                        "xmit_msgq_bytes": 0, "fetchq_cnt": 0, "fetchq_size": 0,
                        "fetch_state": "active", "query_offset": 0, "next_offset": 5,
                        "app_offset": -1001, "stored_offset": -1001, "committed_offset": -1001,
                        "eof_offset": -1001, "lo_offset": 5, "hi_offset": 9, "ls_offset": 9,
                        "consumer_lag": -1, "consumer_lag_stored": -1, "txmsgs": 0,
                        "txbytes": 0, "rxmsgs": 0, "rxbytes": 0, "msgs": 0,
                        "rx_ver_drops": 0, "msgs_inflight": 0, "next_ack_seq": 0,
                        "next_err_seq": 0, "acked_msgid": 0},
                    "-1": {"partition": -1, "broker": -1, "leader": -1, "desired": false,
                        "unknown": false, "msgq_cnt": 0, "msgq_bytes": 0, "xmit_msgq_cnt": 0,
                        "xmit_msgq_bytes": 0, "fetchq_cnt": 0, "fetchq_size": 0,
                        "fetch_state": "none", "query_offset": -1001, "next_offset": 0,
                        "app_offset": -1001, "stored_offset": -1001,
                        "committed_offset": -1001, "eof_offset": -1001, "lo_offset": -1001,
                        "hi_offset": -1001, "ls_offset": -1001, "consumer_lag": -1,
                        "consumer_lag_stored": -1, "txmsgs": 0, "txbytes": 0, "rxmsgs": 0,
                        "rxbytes": 0, "msgs": 0, "rx_ver_drops": 0, "msgs_inflight": 0,
                        "next_ack_seq": 0, "next_err_seq": 0, "acked_msgid": 0}
                }}}
        }"#;
        let statistics: Statistics = serde_json::from_str(json).expect("valid statistics JSON");
        let stats = KafkaStats::from_statistics(&statistics, "t");
        let mut page = String::new();
        stats.render(&mut page);
        for line in [
            "permit_stats_kafka_broker_up{broker=\"kafka:9092/1\"} 1\n",
            "permit_stats_kafka_broker_up{broker=\"kafka:9092/bootstrap\"} 0\n",
            "permit_stats_kafka_broker_disconnects_total{broker=\"kafka:9092/1\"} 2\n",
            "permit_stats_kafka_consumer_lag_records{partition=\"0\"} 7\n",
            "permit_stats_kafka_consumer_lag_records{partition=\"1\"} 4\n",
            "permit_stats_kafka_fetch_queue_records{partition=\"0\"} 7\n",
            "permit_stats_kafka_received_bytes_total 4096\n",
        ] {
            assert!(page.contains(line), "missing {line:?} in\n{page}");
        }
        assert!(!page.contains("GroupCoordinator"));
        assert!(!page.contains("partition=\"-1\""));
        // Another topic's partitions are not ours.
        assert!(
            KafkaStats::from_statistics(&statistics, "other")
                .partitions
                .is_empty()
        );
    }
}
