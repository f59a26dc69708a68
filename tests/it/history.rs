//! History that Kafka forgets (spec/operations.md, "History"), against the real broker: records
//! deleted the way retention deletes them (`DeleteRecords`), with and without a checkpoint that
//! covers them; restores that answer exactly like a full replay; damaged, foreign and re-created
//! topics' checkpoints; the `checkpoint` command; and `replay --until`.
//!
//! What a user would notice is asserted: readiness and `waiting_for`, the stats answers byte for
//! byte (against the reference model of `support::model`), headers, metrics, log lines, and the
//! commands' output and exit status.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use serde_json::Value;

use crate::support::{
    TempDir,
    client::{converge, get, http, metric, stats},
    kafka::{
        bootstrap, create_topic, delete_records, delete_topic, produce, topic_and_tokens,
        watermarks,
    },
    service::{BINARY, Service},
    workload::{CLIENTS, Workload},
};

const PARTITIONS: i32 = 2;

/// A topic with `events` records of a fresh workload over `permits` permits, pinned to
/// partitions by key so that `DeleteRecords` can cut a known prefix.
async fn written(
    bootstrap: &str,
    name: &str,
    events: usize,
    permits: usize,
) -> (Workload, String, TempDir, PathBuf, HashMap<String, String>) {
    let (topic, dir, tokens_path, tokens) = topic_and_tokens(bootstrap, name, PARTITIONS).await;
    let mut workload = Workload::new(0xC4EC_0001, permits);
    workload.pin_by_key(PARTITIONS);
    let records = workload.records(events, 0.0);
    produce(bootstrap, &topic, records).await;
    (workload, topic, dir, tokens_path, tokens)
}

fn checkpoints_in(dir: &Path, topic: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir.join(topic))
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

/// Starts the service, waits until its answers equal the model's, then stops it with SIGTERM
/// (which writes the last checkpoint).
async fn run_until_exact(
    bootstrap: &str,
    topic: &str,
    tokens_path: &Path,
    tokens: &HashMap<String, String>,
    workload: &Workload,
    extra: &[&str],
) -> String {
    let mut service = Service::start(bootstrap, topic, tokens_path, extra);
    converge(&mut service, &http(), tokens, workload, true).await;
    service.terminate();
    service.log_text()
}

/// Deletes every record of `topic` so far, the way retention would.
async fn delete_everything(bootstrap: &str, topic: &str) {
    for partition in 0..PARTITIONS {
        let (_, high) = watermarks(bootstrap, topic, partition);
        delete_records(bootstrap, topic, partition, high).await;
    }
}

/// `permit-stats <command> --brokers <bootstrap> --topic <topic> <extra...>`, to its exit.
fn run(command: &str, bootstrap: &str, topic: &str, extra: &[&str]) -> Output {
    Command::new(BINARY)
        .args([command, "--brokers", bootstrap, "--topic", topic])
        .args(extra)
        .env("RUST_LOG", "info,librdkafka=warn")
        .output()
        .expect("run permit-stats")
}

/// `permit-stats checkpoint` into `store`, which must succeed; what it printed.
fn checkpoint(bootstrap: &str, topic: &str, store: &str) -> String {
    let out = run(
        "checkpoint",
        bootstrap,
        topic,
        &["--checkpoint-store", store],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn deleted_history_is_never_served_as_exact() {
    let Some(bootstrap) = bootstrap() else { return };
    let (_workload, topic, dir, tokens_path, tokens) =
        written(&bootstrap, "history-lost", 2_000, 300).await;
    delete_records(&bootstrap, &topic, 0, 400).await;

    // No checkpoint of a state that is not exact: the command refuses, naming what is lost.
    let store = dir.0.join("checkpoints");
    let store_arg = store.to_str().expect("utf-8 path");
    let out = run(
        "checkpoint",
        &bootstrap,
        &topic,
        &["--checkpoint-store", store_arg],
    );
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("partition 0 offsets 0..400 (400 records)"),
        "{said}"
    );
    assert!(checkpoints_in(&store, &topic).is_empty());

    let mut service = Service::start(&bootstrap, &topic, &tokens_path, &[]);
    service.wait_until("waiting_for names the lost records", |s| {
        s.get("/health/ready").is_some_and(|(status, body)| {
            status == 503 && body.contains("partition 0 offsets 0..400 (400 records)")
        })
    });
    let http = http();
    let client = CLIENTS[0];
    let answer = stats(&http, &service.base, client, &tokens[client], None).await;
    assert_eq!(answer.status, 503, "{}", answer.text());
    assert_eq!(answer.json()["ErrorCode"], 9503);
    let page = service.scrape();
    assert_eq!(
        metric(
            &page,
            "permit_stats_history_missing_records",
            "partition=\"0\""
        ),
        400.0
    );
    assert_eq!(
        metric(
            &page,
            "permit_stats_history_missing_records",
            "partition=\"1\""
        ),
        0.0
    );
    assert!(
        service.log_text().contains("history missing"),
        "{}",
        service.log_tail()
    );
    service.terminate();

    // Served anyway when asked to, and every answer says how much is missing.
    let mut service = Service::start(
        &bootstrap,
        &topic,
        &tokens_path,
        &["--allow-missing-history"],
    );
    service.wait_ready();
    let answer = stats(&http, &service.base, client, &tokens[client], None).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.header("x-stats-history-missing"), Some("400"));
    service.terminate();
}

#[tokio::test]
async fn a_checkpoint_keeps_the_history_that_retention_deleted() {
    let Some(bootstrap) = bootstrap() else { return };
    let (mut workload, topic, dir, tokens_path, tokens) =
        written(&bootstrap, "history-kept", 3_000, 400).await;
    let store = dir.0.join("checkpoints");
    let store_arg = store.to_str().expect("utf-8 path");
    let log = run_until_exact(
        &bootstrap,
        &topic,
        &tokens_path,
        &tokens,
        &workload,
        &["--checkpoint-store", store_arg],
    )
    .await;
    assert!(log.contains("checkpoint written"), "{log}");
    let written = checkpoints_in(&store, &topic);
    assert_eq!(written.len(), 1, "one checkpoint, at shutdown: {written:?}");

    // Retention deletes everything the checkpoint covers; more events arrive after it.
    delete_everything(&bootstrap, &topic).await;
    produce(&bootstrap, &topic, workload.records(500, 0.0)).await;

    let mut service = Service::start(
        &bootstrap,
        &topic,
        &tokens_path,
        &["--checkpoint-store", store_arg],
    );
    converge(&mut service, &http(), &tokens, &workload, true).await;
    let log = service.log_text();
    assert!(
        log.contains("restored the state from a checkpoint"),
        "{log}"
    );
    let page = service.scrape();
    assert_eq!(
        metric(&page, "permit_stats_history_missing_records", ""),
        0.0
    );
    // None written since this start yet (the next comes at the interval or at shutdown).
    assert_eq!(
        metric(
            &page,
            "permit_stats_checkpoint_last_success_timestamp_seconds",
            ""
        ),
        0.0
    );
    service.terminate();
    assert_eq!(
        checkpoints_in(&store, &topic).len(),
        2,
        "a second one at shutdown"
    );
}

/// The same topic, once replayed whole and once restored from a checkpoint cut halfway: the
/// same answers and the same `permit_stats_permits` series.
#[tokio::test]
async fn a_restore_answers_like_a_full_replay() {
    let Some(bootstrap) = bootstrap() else { return };
    let (mut workload, topic, dir, tokens_path, tokens) =
        written(&bootstrap, "history-same", 2_000, 300).await;
    let store = dir.0.join("checkpoints");
    let store_arg = store.to_str().expect("utf-8 path");
    let said = checkpoint(&bootstrap, &topic, store_arg);
    assert!(said.starts_with(&format!("wrote {topic}/")), "{said}");
    // Nothing new: nothing written.
    let again = checkpoint(&bootstrap, &topic, store_arg);
    assert!(again.starts_with("nothing new since"), "{again}");
    produce(&bootstrap, &topic, workload.records(1_000, 0.0)).await;

    let http = http();
    let mut restored = Service::start(
        &bootstrap,
        &topic,
        &tokens_path,
        &["--checkpoint-store", store_arg],
    );
    let mut full = Service::start(&bootstrap, &topic, &tokens_path, &[]);
    let a = converge(&mut restored, &http, &tokens, &workload, true).await;
    let b = converge(&mut full, &http, &tokens, &workload, true).await;
    assert_eq!(a.bodies, b.bodies);
    let gauges = |page: String| -> Vec<String> {
        page.lines()
            .filter(|l| l.starts_with("permit_stats_permits{"))
            .map(str::to_owned)
            .collect()
    };
    let (a, b) = (gauges(restored.scrape()), gauges(full.scrape()));
    assert!(!a.is_empty());
    assert_eq!(a, b);
    assert!(
        restored
            .log_text()
            .contains("restored the state from a checkpoint")
    );
    restored.terminate();
    full.terminate();
}

#[tokio::test]
async fn damaged_foreign_and_recreated_topic_checkpoints_are_skipped() {
    let Some(bootstrap) = bootstrap() else { return };
    let (workload, topic, dir, tokens_path, tokens) =
        written(&bootstrap, "history-trust", 1_000, 200).await;
    let store = dir.0.join("checkpoints");
    let store_arg = store.to_str().expect("utf-8 path");
    checkpoint(&bootstrap, &topic, store_arg);
    let good = checkpoints_in(&store, &topic).remove(0);

    // A newer-looking one that is corrupt, and one of another topic under this topic's name.
    let name = |covered: u64| {
        store
            .join(&topic)
            .join(format!("{covered:020}-0123456789abcdef.checkpoint"))
    };
    let mut corrupt = fs::read(&good).expect("read");
    let at = corrupt.len() / 2;
    corrupt[at] ^= 0xff;
    fs::write(name(u64::MAX / 4), corrupt).expect("write");
    let other = crate::support::unique("history-other");
    create_topic(&bootstrap, &other, 1).await;
    produce(&bootstrap, &other, Workload::new(7, 10).records(20, 0.0)).await;
    checkpoint(&bootstrap, &other, store_arg);
    let foreign = checkpoints_in(&store, &other).remove(0);
    fs::copy(&foreign, name(u64::MAX / 8)).expect("copy");

    let mut service = Service::start(
        &bootstrap,
        &topic,
        &tokens_path,
        &["--checkpoint-store", store_arg],
    );
    converge(&mut service, &http(), &tokens, &workload, true).await;
    let log = service.log_text();
    assert!(log.contains("the SHA-256 does not match"), "{log}");
    assert!(
        log.contains(&format!("it is a checkpoint of topic {other}")),
        "{log}"
    );
    assert!(
        log.contains("restored the state from a checkpoint"),
        "{log}"
    );
    service.terminate();

    // The topic deleted and created again, with other events: its old checkpoints are refused.
    delete_topic(&bootstrap, &topic).await;
    create_topic(&bootstrap, &topic, PARTITIONS).await;
    let mut fresh = Workload::new(0xC4EC_0002, 50);
    fresh.pin_by_key(PARTITIONS);
    produce(&bootstrap, &topic, fresh.records(300, 0.0)).await;
    let mut service = Service::start(
        &bootstrap,
        &topic,
        &tokens_path,
        &["--checkpoint-store", store_arg],
    );
    converge(&mut service, &http(), &tokens, &fresh, true).await;
    let log = service.log_text();
    assert!(log.contains("deleted and created again"), "{log}");
    assert!(log.contains("no usable checkpoint"), "{log}");
    service.terminate();
}

#[tokio::test]
async fn replay_until_prints_what_the_api_answered_then() {
    let Some(bootstrap) = bootstrap() else { return };
    let (mut workload, topic, dir, tokens_path, tokens) =
        written(&bootstrap, "history-until", 1_500, 300).await;
    let client = CLIENTS[0];
    let http = http();
    let mut service = Service::start(&bootstrap, &topic, &tokens_path, &[]);
    converge(&mut service, &http, &tokens, &workload, true).await;
    let then = stats(&http, &service.base, client, &tokens[client], None).await;
    let then_zones = stats(
        &http,
        &service.base,
        client,
        &tokens[client],
        Some("Lot 01, Lot 02"),
    )
    .await;
    // The moment between the two batches: record timestamps are the producer's clock.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let until = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("formats");
    tokio::time::sleep(Duration::from_millis(50)).await;
    produce(&bootstrap, &topic, workload.records(800, 0.0)).await;
    converge(&mut service, &http, &tokens, &workload, false).await;
    let now = stats(&http, &service.base, client, &tokens[client], None).await;
    assert_ne!(now.body, then.body, "the second batch changed the answer");
    service.terminate();

    let replay = |extra: &[&str]| {
        let mut args = vec!["--until", &until, "--client", client];
        args.extend_from_slice(extra);
        let out = run("replay", &bootstrap, &topic, &args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    assert_eq!(replay(&[]), then.body);
    assert_eq!(replay(&["--zones", "Lot 01, Lot 02"]), then_zones.body);
    let csv = String::from_utf8(replay(&["--format", "csv"])).expect("utf-8");
    let rows: Vec<Value> = then.json()["data"].as_array().expect("rows").clone();
    assert_eq!(csv.lines().count(), rows.len() + 1, "{csv}");
    assert_eq!(csv.lines().next(), Some("type,zone,total"));

    // From a checkpoint: one taken after everything is too new and is not used; the answer is
    // the same.
    let store = dir.0.join("checkpoints");
    let store_arg = store.to_str().expect("utf-8 path");
    checkpoint(&bootstrap, &topic, store_arg);
    let out = run(
        "replay",
        &bootstrap,
        &topic,
        &[
            "--until",
            &until,
            "--client",
            client,
            "--checkpoint-store",
            store_arg,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, then.body);
    assert!(String::from_utf8_lossy(&out.stderr).contains("covers records after --until"));

    // Over deleted history it refuses, naming what is lost.
    delete_records(&bootstrap, &topic, 1, 100).await;
    let out = run(
        "replay",
        &bootstrap,
        &topic,
        &["--until", &until, "--client", client],
    );
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("partition 1 offsets 0..100 (100 records)"),
        "{said}"
    );
}

#[tokio::test]
async fn the_ready_route_and_metrics_tell_the_checkpoint_story() {
    let Some(bootstrap) = bootstrap() else { return };
    let (workload, topic, dir, tokens_path, tokens) =
        written(&bootstrap, "history-metrics", 500, 100).await;
    let store = dir.0.join("checkpoints");
    let store_arg = store.to_str().expect("utf-8 path");
    let mut service = Service::start(
        &bootstrap,
        &topic,
        &tokens_path,
        &[
            "--checkpoint-store",
            store_arg,
            "--checkpoint-interval",
            "1",
        ],
    );
    converge(&mut service, &http(), &tokens, &workload, true).await;
    service.wait_until("a checkpoint written on the interval", |s| {
        metric(
            &s.scrape(),
            "permit_stats_checkpoint_last_success_timestamp_seconds",
            "",
        ) > 0.0
    });
    let page = service.scrape();
    assert!(metric(&page, "permit_stats_checkpoint_size_bytes", "") > 1000.0);
    assert_eq!(
        metric(&page, "permit_stats_checkpoint_failures_total", ""),
        0.0
    );
    let ready = get(&http(), format!("{}/health/ready", service.base)).await;
    assert_eq!(ready.status, 200);
    // Idle topic: no new checkpoint every second.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(checkpoints_in(&store, &topic).len(), 1);
    service.terminate();
    assert_eq!(
        checkpoints_in(&store, &topic).len(),
        1,
        "nothing changed since"
    );
}

/// The same restore through an S3-protocol store (moto), which is what replicas on several
/// machines share.
#[tokio::test]
async fn checkpoints_in_s3_restore_the_state() {
    let Some(bootstrap) = bootstrap() else { return };
    let Some(s3) = crate::support::s3::S3Server::start().await else {
        return;
    };
    let (mut workload, topic, _dir, tokens_path, tokens) =
        written(&bootstrap, "history-s3", 1_000, 200).await;
    let store = s3.url("replicas");
    let env: Vec<(String, String)> = s3.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let tokens_arg = tokens_path.to_str().expect("utf-8 path");
    let args = [
        "--brokers",
        &bootstrap,
        "--topic",
        &topic,
        "--tokens",
        tokens_arg,
        "--checkpoint-store",
        &store,
    ];
    let start = || Service::serve_with_env(&[], &args, Some("info,librdkafka=warn"), &env);
    let mut service = start();
    converge(&mut service, &http(), &tokens, &workload, true).await;
    service.terminate();
    assert!(
        service.log_text().contains("checkpoint written"),
        "{}",
        service.log_tail()
    );

    delete_everything(&bootstrap, &topic).await;
    produce(&bootstrap, &topic, workload.records(200, 0.0)).await;
    let mut service = start();
    converge(&mut service, &http(), &tokens, &workload, true).await;
    assert!(
        service
            .log_text()
            .contains("restored the state from a checkpoint"),
        "{}",
        service.log_tail()
    );
    service.terminate();
}
