//! The topic's retention against a real broker (issue 14, "Warn before it happens"): what
//! `cleanup.policy`, `retention.ms` and `retention.bytes` the service reads, the warnings it
//! gives (and does not give), and what an operator sees of them from the running binary: the
//! WARN line in its JSON log and `permit_stats_topic_retention_seconds` on `/metrics`. Also the
//! test helper that deletes records the way Kafka's retention does (DeleteRecords), which the
//! missing-history tests rely on.

use std::time::Duration;

use permit_stats::kafka::{
    KafkaSettings,
    retention::{self, CleanupPolicy, RetentionError, TopicRetention},
};
use serde_json::Value;

use crate::support::{
    TempDir,
    kafka::{
        bootstrap, create_topic, create_topic_with_configs, delete_records, delete_topic, produce,
        read_topic, watermarks,
    },
    prometheus::{assert_promtool_clean, parse, promtool},
    service::{Service, assert_clean_exit, write_tokens},
    unique,
    workload::Record,
};

/// Kafka's default `retention.ms`: 7 days.
const SEVEN_DAYS_MS: i64 = 7 * 24 * 3600 * 1000;

const GAUGE: &str = "permit_stats_topic_retention_seconds";

async fn read(bootstrap: &str, topic: &str) -> Result<TopicRetention, RetentionError> {
    retention::read(
        &KafkaSettings::plain(bootstrap),
        topic,
        Duration::from_secs(10),
    )
    .await
}

/// A fresh topic with these settings, read back.
async fn topic_with(bootstrap: &str, configs: &[(&str, &str)]) -> (String, TopicRetention) {
    let topic = unique("permit-stats-retention");
    create_topic_with_configs(bootstrap, &topic, 1, configs).await;
    let retention = read(bootstrap, &topic).await.expect("retention read");
    (topic, retention)
}

#[tokio::test]
async fn kafkas_default_retention_warns_in_days_unless_a_checkpoint_store_is_set() {
    let Some(bootstrap) = bootstrap() else {
        return;
    };
    let (topic, retention) = topic_with(&bootstrap, &[]).await;
    assert_eq!(
        retention,
        TopicRetention {
            cleanup_policy: CleanupPolicy::Delete,
            retention_ms: Some(SEVEN_DAYS_MS),
            retention_bytes: None,
        }
    );
    assert_eq!(retention.retention_seconds(), 604_800.0);
    let warnings = retention.warnings(false);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("records older than 7 days")
            && warnings[0].contains("--checkpoint-store")
            && warnings[0].contains("retention.ms=-1"),
        "the warning says how long, and both ways out: {}",
        warnings[0]
    );
    assert_eq!(
        retention.warnings(true),
        Vec::<String>::new(),
        "a checkpoint store keeps what the topic deletes"
    );
    delete_topic(&bootstrap, &topic).await;
}

#[tokio::test]
async fn a_topic_that_keeps_everything_does_not_warn() {
    let Some(bootstrap) = bootstrap() else {
        return;
    };
    let (topic, retention) = topic_with(
        &bootstrap,
        &[("retention.ms", "-1"), ("retention.bytes", "-1")],
    )
    .await;
    assert_eq!(
        (retention.retention_ms, retention.retention_bytes),
        (None, None)
    );
    assert_eq!(retention.retention_seconds(), -1.0);
    assert_eq!(retention.warnings(false), Vec::<String>::new());
    delete_topic(&bootstrap, &topic).await;

    // Forever by time is not enough: a size limit deletes too.
    let (topic, sized) = topic_with(
        &bootstrap,
        &[("retention.ms", "-1"), ("retention.bytes", "1073741824")],
    )
    .await;
    assert_eq!(sized.retention_seconds(), -1.0);
    let warnings = sized.warnings(false);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("more than 1 GiB"), "{}", warnings[0]);
    delete_topic(&bootstrap, &topic).await;
}

#[tokio::test]
async fn a_compacted_topic_warns_whatever_the_store() {
    let Some(bootstrap) = bootstrap() else {
        return;
    };
    let (topic, compacted) = topic_with(&bootstrap, &[("cleanup.policy", "compact")]).await;
    assert_eq!(compacted.cleanup_policy, CleanupPolicy::Compact);
    for store in [false, true] {
        let warnings = compacted.warnings(store);
        assert_eq!(warnings.len(), 1, "store {store}: {warnings:?}");
        assert!(
            warnings[0].contains("compacted") && warnings[0].contains("partial update"),
            "{}",
            warnings[0]
        );
    }
    delete_topic(&bootstrap, &topic).await;

    let (topic, both) = topic_with(
        &bootstrap,
        &[
            ("cleanup.policy", "compact,delete"),
            ("retention.ms", "86400000"),
        ],
    )
    .await;
    assert_eq!(both.cleanup_policy, CleanupPolicy::CompactDelete);
    assert_eq!(both.retention_seconds(), 86_400.0);
    let warnings = both.warnings(false);
    assert_eq!(warnings.len(), 2, "deleted and compacted: {warnings:?}");
    assert!(warnings[0].contains("older than 1 day"), "{}", warnings[0]);
    assert_eq!(both.warnings(true).len(), 1, "still compacted with a store");
    delete_topic(&bootstrap, &topic).await;
}

#[tokio::test]
async fn a_topic_that_does_not_exist_is_told_apart() {
    let Some(bootstrap) = bootstrap() else {
        return;
    };
    let topic = unique("permit-stats-retention-none");
    let error = read(&bootstrap, &topic).await.expect_err("no such topic");
    assert!(
        matches!(&error, RetentionError::NoTopic { topic: t } if *t == topic),
        "{error:?}"
    );
    assert!(error.is_temporary(), "it may be created: checked again");
}

/// The JSON log lines of the retention check.
fn retention_lines(stderr: &str) -> Vec<Value> {
    stderr
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["target"] == "permit_stats::kafka::retention")
        .collect()
}

/// The gauge's value on the page, once it has a sample.
fn gauge(page: &str) -> Option<f64> {
    parse(page).get(GAUGE)?.samples.first().map(|s| s.2)
}

/// `permit-stats serve` on `topic` with JSON logs.
fn start(bootstrap: &str, topic: &str, dir: &TempDir) -> Service {
    let (tokens, _) = write_tokens(&dir.0);
    let tokens = tokens.to_str().expect("utf-8 path");
    let mut service = Service::serve(
        &["--log-format", "json"],
        &["--brokers", bootstrap, "--topic", topic, "--tokens", tokens],
        Some("info,librdkafka=warn"),
    );
    service.wait_live();
    service
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_running_service_warns_in_its_log_and_shows_the_retention_on_metrics() {
    let Some(bootstrap) = bootstrap() else {
        return;
    };
    let dir = TempDir::new("permit-stats-retention");

    // Kafka's defaults: 7 days, and no checkpoint store.
    let topic = unique("permit-stats-retention-default");
    create_topic(&bootstrap, &topic, 1).await;
    let mut service = start(&bootstrap, &topic, &dir);
    service.wait_until("the retention gauge", |s| gauge(&s.scrape()).is_some());
    let page = service.scrape();
    assert_eq!(gauge(&page), Some(604_800.0));
    if let Some(promtool) = promtool() {
        assert_promtool_clean(&promtool, &page);
    }
    let (_, stderr) = service.stop();
    let lines = retention_lines(&stderr);
    let warning = lines
        .iter()
        .find(|l| l["level"] == "WARN")
        .unwrap_or_else(|| panic!("no retention WARN line in:\n{stderr}"));
    let fields = &warning["fields"];
    let message = fields["message"].as_str().expect("a message");
    assert!(message.contains("records older than 7 days"), "{message}");
    assert!(message.contains("--checkpoint-store"), "{message}");
    assert_eq!(fields["topic"], topic.as_str());
    assert_eq!(fields["cleanup_policy"], "delete");
    assert_eq!(fields["retention_ms"], SEVEN_DAYS_MS);
    assert_eq!(fields["retention_bytes"], -1);
    delete_topic(&bootstrap, &topic).await;

    // A topic that keeps everything: -1, and no warning.
    let topic = unique("permit-stats-retention-forever");
    create_topic_with_configs(
        &bootstrap,
        &topic,
        1,
        &[("retention.ms", "-1"), ("retention.bytes", "-1")],
    )
    .await;
    let mut service = start(&bootstrap, &topic, &dir);
    service.wait_until("the retention gauge", |s| gauge(&s.scrape()).is_some());
    assert_eq!(gauge(&service.scrape()), Some(-1.0));
    assert_clean_exit(&mut service);
    let stderr = service.stderr();
    let lines = retention_lines(&stderr);
    assert!(
        !lines.iter().any(|l| l["level"] == "WARN"),
        "no retention warning for a topic that keeps everything: {lines:?}"
    );
    assert!(
        lines.iter().any(|l| l["level"] == "INFO"
            && l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("keeps the history"))),
        "the check says it passed: {lines:?}"
    );
    delete_topic(&bootstrap, &topic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_created_after_the_start_is_checked_once_it_exists() {
    let Some(bootstrap) = bootstrap() else {
        return;
    };
    let dir = TempDir::new("permit-stats-retention-late");
    let topic = unique("permit-stats-retention-late");
    let mut service = start(&bootstrap, &topic, &dir);
    service.wait_until("the 'could not be checked yet' line", |s| {
        retention_lines(&s.stderr()).iter().any(|l| {
            l["level"] == "WARN"
                && l["fields"]["message"].as_str().is_some_and(|m| {
                    m.contains("could not be checked yet") && m.contains("does not exist")
                })
        })
    });
    assert_eq!(gauge(&service.scrape()), None, "nothing read yet: no value");
    create_topic_with_configs(&bootstrap, &topic, 1, &[("cleanup.policy", "compact")]).await;
    service.wait_until("the retention gauge", |s| gauge(&s.scrape()).is_some());
    assert_eq!(
        gauge(&service.scrape()),
        Some(-1.0),
        "compaction deletes nothing by time"
    );
    service.wait_until("the compaction warning", |s| {
        retention_lines(&s.stderr()).iter().any(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("compacted"))
        })
    });
    assert_clean_exit(&mut service);
    delete_topic(&bootstrap, &topic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_records_moves_the_low_watermark_like_retention() {
    let Some(bootstrap) = bootstrap() else {
        return;
    };
    let topic = unique("permit-stats-delete-records");
    create_topic(&bootstrap, &topic, 2).await;
    let records = (0..10)
        .map(|i| Record {
            key: format!("k{i}"),
            payload: format!("record {i}").into_bytes(),
            content_type: None,
            partition: Some(0),
            bad: None,
        })
        .collect();
    produce(&bootstrap, &topic, records).await;
    assert_eq!(watermarks(&bootstrap, &topic, 0), (0, 10));

    delete_records(&bootstrap, &topic, 0, 4).await;
    assert_eq!(
        watermarks(&bootstrap, &topic, 0),
        (4, 10),
        "the low watermark moved to the offset given"
    );
    let left = read_topic(&bootstrap, &topic, 6, Duration::from_secs(10));
    let offsets: Vec<i64> = left.iter().map(rdkafka::Message::offset).collect();
    assert_eq!(
        offsets,
        (4..10).collect::<Vec<_>>(),
        "a reader from the beginning starts at 4"
    );
    let first = rdkafka::Message::payload(&left[0]).expect("a payload");
    assert_eq!(first, b"record 4");
    // The other partition is untouched (and empty).
    assert_eq!(watermarks(&bootstrap, &topic, 1), (0, 0));

    delete_topic(&bootstrap, &topic).await;
    create_topic(&bootstrap, &topic, 1).await;
    assert_eq!(
        watermarks(&bootstrap, &topic, 0),
        (0, 0),
        "delete_topic waited until it was gone: the new topic of that name starts empty"
    );
    delete_topic(&bootstrap, &topic).await;
}
