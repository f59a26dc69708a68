//! End-to-end tests against a REAL Apache Kafka broker: the built `permit-stats serve` binary,
//! a topic written by an independent producer, and an independent reference model of the five
//! projection rules of `spec/events.md`.
//!
//! Nothing here uses the crate's own producer, generator or projection: the test writes the
//! seeded event stream of `support::workload` (protobuf with and without the `content-type`
//! header, canonical JSON, exact duplicates, moves, re-creates, orphans, bad records of every
//! kind) and a bulk stream of a third client that makes the replay long, computes the expected
//! answer with the reference model of `support::model`, and compares what a user of the HTTP API
//! sees (bodies byte for byte, freshness headers, readiness, metrics) with it.
//!
//! Run them with a broker:
//!
//! ```text
//! scripts/kafka.sh run -- cargo test --test it kafka_e2e -- --nocapture
//! ```
//!
//! Without `KAFKA_BOOTSTRAP` the tests print a loud notice and pass, unless `CI` is set, in which
//! case they fail. `PERMIT_STATS_E2E_SEED` changes the seed of the generated stream,
//! `PERMIT_STATS_E2E_BULK` the number of extra bulk events (see [`BULK_EVENTS`]).

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use rand::{Rng as _, SeedableRng as _, rngs::StdRng};
use serde_json::Value;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::support::{
    TempDir,
    client::{Answer, get, http, metric, stats, stats_request, try_send},
    kafka::{bootstrap, create_topic, delete_topic, produce},
    model::Model,
    service::{Service, write_tokens_for},
    unique,
    workload::{Bad, Record, Workload},
};

// ---------------------------------------------------------------------------------------------
// The generated stream (the generator, the reference model and the Kafka, service and HTTP
// fixtures are in `support/`).
// ---------------------------------------------------------------------------------------------

/// The two clients of the vendor's examples: both plain values, never the same client.
const CLIENTS: [&str; 2] = ["OC-TOMA", "OC_TOMA"];
/// The client of the bulk events that only make the replay take long enough to watch.
const BULK_CLIENT: &str = "BULK";

/// Good events of the two real clients before the service starts (bad records come on top).
const MAIN_EVENTS: usize = 4_000;
/// Distinct permits of the main stream.
const MAIN_PERMITS: usize = 600;
/// The share of bad records in the main stream.
const GARBAGE: f64 = 0.01;
/// Extra valid events of [`BULK_CLIENT`], mixed into the topic so that the replay of a debug
/// build takes long enough for "503 before caught up" to be observed reliably.
const BULK_EVENTS: usize = 150_000;
/// Distinct permits of the bulk stream.
const BULK_PERMITS: usize = 20_000;
/// Events produced while the service runs (live updates).
const LIVE_EVENTS: usize = 200;
/// Partitions of every test topic.
const PARTITIONS: i32 = 4;
/// The default seed of the generated stream.
const DEFAULT_SEED: u64 = 0x5EED_2026_0105;

/// How long a start may take to become ready.
const READY_DEADLINE: Duration = Duration::from_secs(60);
/// How long live updates may take to show.
const LIVE_DEADLINE: Duration = Duration::from_secs(30);
/// Poll step.
const STEP: Duration = Duration::from_millis(20);

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, got {v:?}")),
        Err(_) => default,
    }
}

/// The workload of this test: [`MAIN_PERMITS`] permits of [`CLIENTS`], and [`BULK_PERMITS`] of
/// [`BULK_CLIENT`].
fn workload(seed: u64) -> Workload {
    let mut workload = Workload::over(seed, &CLIENTS, MAIN_PERMITS);
    workload.add_bulk_permits(BULK_CLIENT, BULK_PERMITS);
    workload
}

/// The records written before the service starts: [`MAIN_EVENTS`] good records of the main
/// stream (bad ones on top) and `bulk` of the bulk stream, randomly interleaved (each keeps its
/// own order).
fn initial(workload: &mut Workload, seed: u64, bulk: usize) -> Vec<Record> {
    let mut rng = StdRng::seed_from_u64(seed.rotate_left(32));
    let mut out = Vec::with_capacity(MAIN_EVENTS + bulk + 64);
    let (mut main_left, mut bulk_left) = (MAIN_EVENTS, bulk);
    while main_left + bulk_left > 0 {
        if rng.random_range(0..main_left + bulk_left) < main_left {
            let record = workload.next(GARBAGE);
            if record.bad.is_none() {
                main_left -= 1;
            }
            out.push(record);
        } else {
            out.push(workload.next_bulk());
            bulk_left -= 1;
        }
    }
    out
}

/// What the test saw while waiting for a start to become ready.
#[derive(Debug, Default)]
struct StartObservation {
    connect_after: Duration,
    ready_after: Duration,
    stats_503: usize,
    ready_503: usize,
    /// The first 200 of the stats request.
    first_ok: Option<Answer>,
    /// Progress bodies of `/health/ready` 503s: (replayed, target, percent).
    progress: Vec<(u64, u64, f64)>,
    /// The first and last 503 bodies of `/health/ready`, for the log.
    ready_bodies: Vec<String>,
}

/// Polls the stats request (and `/health/ready`) from the moment the port accepts until both
/// answer 200, checking every answer before that.
async fn wait_ready(
    service: &mut Service,
    http: &reqwest::Client,
    client: &str,
    token: &str,
    records_in_topic: u64,
) -> StartObservation {
    let mut seen = StartObservation::default();
    let deadline = service.started + READY_DEADLINE;
    let mut connected = false;
    let mut stats_ok = false;
    let mut ready_ok = false;
    loop {
        assert!(
            Instant::now() < deadline,
            "not ready within {READY_DEADLINE:?} (stats 200: {stats_ok}, ready 200: {ready_ok}); log:\n{}",
            service.log_tail()
        );
        service.assert_running();

        let Ok(answer) = try_send(stats_request(http, &service.base, client, token, None)).await
        else {
            // Not listening yet: retry quickly, the 503 window starts with the listener.
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        if !connected {
            connected = true;
            seen.connect_after = service.started.elapsed();
        }
        match answer.status {
            503 => {
                assert!(
                    !stats_ok,
                    "stats answered 503 after it had answered 200: {}",
                    answer.text()
                );
                assert_eq!(
                    answer.json()["ErrorCode"],
                    9503,
                    "503 body: {}",
                    answer.text()
                );
                assert!(
                    answer.header("retry-after").is_some(),
                    "a 503 must carry Retry-After"
                );
                seen.stats_503 += 1;
            }
            200 => {
                if !stats_ok {
                    stats_ok = true;
                    seen.ready_after = service.started.elapsed();
                    seen.first_ok = Some(answer);
                }
            }
            other => panic!(
                "stats before ready must be 503 or 200, got {other}: {}",
                answer.text()
            ),
        }

        let ready = get(http, format!("{}/health/ready", service.base)).await;
        let progress = ready.json();
        match ready.status {
            503 => {
                assert!(!ready_ok, "/health/ready went back to 503: {progress}");
                assert_eq!(progress["ready"], false, "{progress}");
                let replayed = progress["replayed"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("replayed: {progress}"));
                let target = progress["target"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("target: {progress}"));
                let percent = progress["percent"]
                    .as_f64()
                    .unwrap_or_else(|| panic!("percent: {progress}"));
                assert!(progress["lag"].is_u64(), "lag: {progress}");
                assert!(replayed <= target, "{progress}");
                assert!((0.0..=100.0).contains(&percent), "{progress}");
                if target > 0 {
                    assert_eq!(
                        target, records_in_topic,
                        "the replay target is every record in the topic: {progress}"
                    );
                }
                if let Some(&(before, _, _)) = seen.progress.last() {
                    assert!(replayed >= before, "progress went backwards: {progress}");
                }
                seen.progress.push((replayed, target, percent));
                seen.ready_503 += 1;
                if seen.ready_bodies.len() < 2 {
                    seen.ready_bodies.push(ready.text());
                } else {
                    seen.ready_bodies[1] = ready.text();
                }
            }
            200 => {
                ready_ok = true;
                assert_eq!(progress["ready"], true, "{progress}");
            }
            other => panic!("/health/ready answered {other}: {progress}"),
        }
        if stats_ok && ready_ok {
            break;
        }
        tokio::time::sleep(STEP).await;
    }
    seen
}

/// Checks one client's full answer against the model; returns the body.
fn check_answer(answer: &Answer, model: &Model, client: &str, what: &str) -> Vec<u8> {
    let expected = model.body(client, None);
    assert_eq!(answer.status, 200, "{what}: {}", answer.text());
    assert_eq!(
        answer.header("content-type"),
        Some("application/json"),
        "{what}"
    );
    let expected_json: Value = serde_json::from_str(&expected).expect("expected body is JSON");
    assert_eq!(answer.json(), expected_json, "{what}: parsed body");
    assert_eq!(answer.text(), expected, "{what}: exact bytes");
    assert_eq!(
        answer.header("x-stats-lag"),
        Some("0"),
        "{what}: X-Stats-Lag once caught up"
    );
    let Some(&expected_ms) = model.as_of_ms.get(client) else {
        assert_eq!(
            answer.header("x-stats-as-of"),
            None,
            "{what}: no event applied, so no X-Stats-As-Of"
        );
        return answer.body.clone();
    };
    let as_of = answer
        .header("x-stats-as-of")
        .unwrap_or_else(|| panic!("{what}: X-Stats-As-Of missing"));
    let parsed = OffsetDateTime::parse(as_of, &Rfc3339)
        .unwrap_or_else(|e| panic!("{what}: X-Stats-As-Of {as_of:?} is not RFC 3339: {e}"));
    assert_eq!(
        i64::try_from(parsed.unix_timestamp_nanos() / 1_000_000).expect("fits"),
        expected_ms,
        "{what}: X-Stats-As-Of {as_of} is not the newest applied event time"
    );
    answer.body.clone()
}

/// Prometheus label value escaping.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `/metrics`: live-permit gauges equal the model for every client, and every record is counted.
fn check_metrics(page: &str, model: &Model, clients: &[&str], garbage: usize) {
    let mut expected: HashMap<String, u64> = HashMap::new();
    for client in clients {
        for (zone, permit_type, n) in model.rows(client, None) {
            expected.insert(
                format!(
                    "client=\"{}\",zone=\"{}\",type=\"{}\"",
                    label(client),
                    label(&zone),
                    label(&permit_type)
                ),
                n,
            );
        }
    }
    // Every non-zero reference row appears with its exact value ...
    for (labels, n) in &expected {
        let line = format!("permit_stats_permits{{{labels}}} {n}");
        assert!(
            page.lines().any(|l| l == line),
            "/metrics lacks `{line}`; its permit gauges:\n{}",
            page.lines()
                .filter(|l| l.starts_with("permit_stats_permits{"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    // ... and no gauge says anything else (a bucket that emptied may stay, at 0).
    for line in page
        .lines()
        .filter(|l| l.starts_with("permit_stats_permits{"))
    {
        let (labels, value) = line
            .strip_prefix("permit_stats_permits{")
            .and_then(|rest| rest.rsplit_once("} "))
            .unwrap_or_else(|| panic!("unparsable gauge: {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("gauge value: {line}"));
        let want = expected.get(labels).copied().unwrap_or(0);
        assert_eq!(value, want as f64, "/metrics: {line}, reference {want}");
    }

    assert!(
        page.lines()
            .any(|l| l.starts_with("permit_stats_records_rejected_total")),
        "/metrics has no permit_stats_records_rejected_total sample at all (nor, likely, any \
         other ingest metric: permit_stats_ready present: {}); page:\n{page}",
        page.lines().any(|l| l.starts_with("permit_stats_ready "))
    );
    let rejected = metric(page, "permit_stats_records_rejected_total", "");
    assert_eq!(
        rejected,
        garbage as f64,
        "permit_stats_records_rejected_total must sum to the bad records produced; samples:\n{}",
        page.lines()
            .filter(|l| l.starts_with("permit_stats_records_rejected_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    for kind in ["created", "updated", "deleted"] {
        let got = metric(
            page,
            "permit_stats_events_applied_total",
            &format!("kind=\"{kind}\""),
        );
        let want = model.outcomes.get(kind).copied().unwrap_or(0);
        assert_eq!(
            got, want as f64,
            "permit_stats_events_applied_total{{kind=\"{kind}\"}}"
        );
    }
    for reason in ["orphan_update", "orphan_delete", "stale_revision"] {
        let got = metric(
            page,
            "permit_stats_events_skipped_total",
            &format!("reason=\"{reason}\""),
        );
        let want = model.outcomes.get(reason).copied().unwrap_or(0);
        assert_eq!(
            got, want as f64,
            "permit_stats_events_skipped_total{{reason=\"{reason}\"}}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------------------------

/// Replay from the beginning, answers equal to the reference model byte for byte, 503 until
/// caught up, metrics, a SIGTERM restart that answers identically, and live updates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_restart_and_live_updates_match_the_reference_model() {
    let Some(bootstrap) = bootstrap() else {
        return;
    };
    let t0 = Instant::now();
    let seed = env_number("PERMIT_STATS_E2E_SEED", DEFAULT_SEED);
    let bulk =
        usize::try_from(env_number("PERMIT_STATS_E2E_BULK", BULK_EVENTS as u64)).expect("fits");
    let topic = unique("permit-stats-e2e");
    eprintln!("e2e: seed {seed:#x}, topic {topic}, bulk {bulk}");

    let dir = TempDir::new("permit-stats-e2e");
    let all_clients = [CLIENTS[0], CLIENTS[1], BULK_CLIENT];
    let (tokens_path, tokens) = write_tokens_for(&dir.0, &all_clients, |c| format!("e2e {c}"));

    let mut workload = workload(seed);
    let records = initial(&mut workload, seed, bulk);
    let records_in_topic = records.len() as u64;
    let garbage = workload.bad_total();
    eprintln!(
        "e2e: generated {} records ({} bad: {:?}; model outcomes {:?}) in {:?}",
        records.len(),
        garbage,
        workload.bad_made,
        workload.model.outcomes,
        t0.elapsed()
    );
    assert!(
        Bad::ALL.iter().all(|k| workload.bad_made.contains_key(k)),
        "every kind of bad record is in the stream"
    );

    create_topic(&bootstrap, &topic, PARTITIONS).await;
    let t_produce = Instant::now();
    produce(&bootstrap, &topic, records).await;
    eprintln!("e2e: produced in {:?}", t_produce.elapsed());

    let http = http();
    let model = workload.model.clone();

    // ---- first start --------------------------------------------------------------------
    let mut service = Service::start(&bootstrap, &topic, &tokens_path, &[]);
    let seen = wait_ready(
        &mut service,
        &http,
        CLIENTS[0],
        &tokens[CLIENTS[0]],
        records_in_topic,
    )
    .await;
    eprintln!(
        "e2e: first start: listening after {:?}, ready after {:?}; before ready: {} stats 503s, \
         {} /health/ready 503s (progress samples: {:?}; first and last 503 bodies: {:?})",
        seen.connect_after,
        seen.ready_after,
        seen.stats_503,
        seen.ready_503,
        sample(&seen.progress),
        seen.ready_bodies
    );
    let first = seen.first_ok.as_ref().expect("a 200 was seen");
    check_answer(first, &model, CLIENTS[0], "first 200 (OC-TOMA)");
    if bulk >= BULK_EVENTS / 2 {
        // With this much to replay (1.5-2 s in a debug build, polled every 20 ms), the readiness
        // body is seen part-way through: the target is the whole topic, the replay not done.
        assert!(
            seen.progress
                .iter()
                .any(|&(replayed, target, _)| target == records_in_topic && replayed < target),
            "/health/ready never reported a replay in progress: {:?}",
            seen.progress
        );
    }
    assert!(
        seen.stats_503 > 0 && seen.ready_503 > 0,
        "with {records_in_topic} records to replay, the stats request and /health/ready must \
         answer 503 at least once before ready (stats 503s: {}, ready 503s: {})",
        seen.stats_503,
        seen.ready_503
    );

    let mut bodies = HashMap::new();
    for client in all_clients {
        let answer = stats(&http, &service.base, client, &tokens[client], None).await;
        let body = check_answer(&answer, &model, client, &format!("{client} after ready"));
        bodies.insert(client, body);
    }
    assert_ne!(
        bodies[CLIENTS[0]], bodies[CLIENTS[1]],
        "OC-TOMA and OC_TOMA are different clients"
    );

    // Zone filters: trimmed names, unknown names add nothing, order and duplicates do not matter.
    for (zones, names) in [
        ("Lot 01, Lot 02 ,Nope", &["Lot 01", "Lot 02"][..]),
        (
            "Street parking,Red Lot, Street parking,North \"B\" Lot",
            &["Street parking", "Red Lot", "North \"B\" Lot"][..],
        ),
        ("zone a,Zoné", &["zone a", "Zoné"][..]),
    ] {
        for client in CLIENTS {
            let answer = stats(&http, &service.base, client, &tokens[client], Some(zones)).await;
            assert_eq!(answer.status, 200, "{client} {zones:?}: {}", answer.text());
            assert_eq!(
                answer.text(),
                model.body(client, Some(names)),
                "{client} with zones {zones:?}"
            );
        }
    }
    // One client's token never reads another client's stats.
    let cross = stats(&http, &service.base, CLIENTS[1], &tokens[CLIENTS[0]], None).await;
    assert_eq!(cross.status, 403, "{}", cross.text());
    assert_eq!(cross.json()["ErrorCode"], 9002);

    let page = get(&http, format!("{}/metrics", service.base)).await;
    assert_eq!(page.status, 200);
    check_metrics(&page.text(), &model, &all_clients, garbage);

    // ---- restart ------------------------------------------------------------------------
    let stop = Instant::now();
    let status = service.terminate();
    eprintln!("e2e: SIGTERM -> exit {status:?} in {:?}", stop.elapsed());
    assert!(
        status.is_some_and(|s| s.success()),
        "SIGTERM must stop the service with exit status 0 within 10 s, got {status:?}"
    );
    drop(service);

    let mut service = Service::start(&bootstrap, &topic, &tokens_path, &[]);
    let seen = wait_ready(
        &mut service,
        &http,
        CLIENTS[0],
        &tokens[CLIENTS[0]],
        records_in_topic,
    )
    .await;
    eprintln!(
        "e2e: restart: listening after {:?}, ready after {:?}; before ready: {} stats 503s, {} \
         /health/ready 503s",
        seen.connect_after, seen.ready_after, seen.stats_503, seen.ready_503
    );
    for client in all_clients {
        let answer = stats(&http, &service.base, client, &tokens[client], None).await;
        let body = check_answer(&answer, &model, client, &format!("{client} after restart"));
        assert!(
            body == bodies[client],
            "{client}: the body after the restart differs from the one before"
        );
    }
    let page = get(&http, format!("{}/metrics", service.base)).await;
    check_metrics(&page.text(), &model, &all_clients, garbage);

    // ---- live updates -------------------------------------------------------------------
    let mut live = Vec::with_capacity(LIVE_EVENTS + 4);
    let mut good = 0;
    while good < LIVE_EVENTS {
        let record = workload.next(GARBAGE);
        good += usize::from(record.bad.is_none());
        live.push(record);
    }
    let garbage = workload.bad_total();
    let model = workload.model.clone();
    assert!(
        CLIENTS
            .iter()
            .any(|c| model.body(c, None).as_bytes() != bodies[c].as_slice()),
        "the live events must change at least one answer"
    );
    let t_live = Instant::now();
    produce(&bootstrap, &topic, live).await;
    let deadline = Instant::now() + LIVE_DEADLINE;
    // Informational: answers that did not show the live events yet, by what X-Stats-Lag said.
    let (mut behind_with_lag, mut behind_with_lag_0) = (0, 0);
    loop {
        service.assert_running();
        let mut done = true;
        let mut last = Vec::new();
        for client in CLIENTS {
            let answer = stats(&http, &service.base, client, &tokens[client], None).await;
            assert_eq!(answer.status, 200, "{}", answer.text());
            let current = answer.text() == model.body(client, None);
            let lag0 = answer.header("x-stats-lag") == Some("0");
            if !current {
                if lag0 {
                    behind_with_lag_0 += 1;
                } else {
                    behind_with_lag += 1;
                }
            }
            done &= current && lag0;
            last.push(answer);
        }
        if done {
            for (client, answer) in CLIENTS.iter().zip(&last) {
                check_answer(
                    answer,
                    &model,
                    client,
                    &format!("{client} after live updates"),
                );
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "live updates not visible within {LIVE_DEADLINE:?}; OC-TOMA answers\n{}\nexpected\n{}",
            last[0].text(),
            model.body(CLIENTS[0], None)
        );
        tokio::time::sleep(STEP).await;
    }
    eprintln!(
        "e2e: live updates visible after {:?} (produce included); answers still behind before \
         that: {behind_with_lag} with X-Stats-Lag > 0, {behind_with_lag_0} with X-Stats-Lag: 0",
        t_live.elapsed()
    );
    let page = get(&http, format!("{}/metrics", service.base)).await;
    check_metrics(&page.text(), &model, &all_clients, garbage);

    let status = service.terminate();
    assert!(status.is_some_and(|s| s.success()), "exit {status:?}");
    delete_topic(&bootstrap, &topic).await;
    eprintln!("e2e: done in {:?}", t0.elapsed());
}

/// An empty topic: ready at once, an empty answer, no `X-Stats-As-Of`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_topic_is_ready_with_no_rows() {
    let Some(bootstrap) = bootstrap() else {
        return;
    };
    let topic = unique("permit-stats-e2e-empty");
    let dir = TempDir::new("permit-stats-e2e-empty");
    let (tokens_path, tokens) = write_tokens_for(&dir.0, &CLIENTS, |c| format!("e2e {c}"));
    create_topic(&bootstrap, &topic, PARTITIONS).await;

    let http = http();
    let mut service = Service::start(&bootstrap, &topic, &tokens_path, &[]);
    let seen = wait_ready(&mut service, &http, CLIENTS[0], &tokens[CLIENTS[0]], 0).await;
    eprintln!(
        "e2e empty: ready after {:?} ({} stats 503s)",
        seen.ready_after, seen.stats_503
    );
    for client in CLIENTS {
        let answer = stats(&http, &service.base, client, &tokens[client], None).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert_eq!(answer.text(), r#"{"data":[]}"#);
        assert_eq!(answer.header("x-stats-lag"), Some("0"));
        assert_eq!(
            answer.header("x-stats-as-of"),
            None,
            "no event applied: no X-Stats-As-Of"
        );
    }
    let ready = get(&http, format!("{}/health/ready", service.base)).await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["ready"], true);

    let status = service.terminate();
    assert!(status.is_some_and(|s| s.success()), "exit {status:?}");
    delete_topic(&bootstrap, &topic).await;
}

/// A few progress samples for the log: first, middle, last.
fn sample(progress: &[(u64, u64, f64)]) -> Vec<(u64, u64, f64)> {
    match progress.len() {
        0..=3 => progress.to_vec(),
        n => vec![progress[0], progress[n / 2], progress[n - 1]],
    }
}
