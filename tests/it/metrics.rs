//! `/metrics` of the real binary, scraped the way Prometheus would: every name, type and label of
//! spec/operations.md with its help text, from the first scrape on, passing Prometheus' own
//! `promtool check metrics`, also while the broker is unreachable; and, against a real broker
//! (`KAFKA_BOOTSTRAP`), librdkafka's statistics in the `permit_stats_kafka_*` families.
//!
//! Without `promtool` or `KAFKA_BOOTSTRAP` the checks that need them skip locally and fail in CI.

use std::{
    collections::BTreeSet,
    fs,
    process::Command,
    time::{SystemTime, UNIX_EPOCH},
};

use serde_json::Value;

use crate::support::{
    kafka,
    prometheus::{assert_promtool_clean, label_names, label_value, parse, promtool},
    service::{BINARY, Service},
};

/// Every metric of spec/operations.md: name, Prometheus type and label names. Written out here
/// rather than taken from the crate, so that the test checks the contract, not itself.
const PROMISED: &[(&str, &str, &[&str])] = &[
    ("permit_stats_permits", "gauge", &["client", "zone", "type"]),
    ("permit_stats_events_applied_total", "counter", &["kind"]),
    ("permit_stats_events_skipped_total", "counter", &["reason"]),
    (
        "permit_stats_records_rejected_total",
        "counter",
        &["reason"],
    ),
    ("permit_stats_consumer_lag_records", "gauge", &["partition"]),
    ("permit_stats_last_event_timestamp_seconds", "gauge", &[]),
    ("permit_stats_ready", "gauge", &[]),
    (
        "permit_stats_http_requests_total",
        "counter",
        &["route", "status"],
    ),
    (
        "permit_stats_http_request_duration_seconds",
        "histogram",
        &["route"],
    ),
];

/// The librdkafka-statistics families the README documents.
const KAFKA_FAMILIES: &[(&str, &str)] = &[
    ("permit_stats_kafka_broker_up", "gauge"),
    ("permit_stats_kafka_broker_disconnects_total", "counter"),
    ("permit_stats_kafka_consumer_lag_records", "gauge"),
    ("permit_stats_kafka_fetch_queue_records", "gauge"),
    ("permit_stats_kafka_received_bytes_total", "counter"),
];

/// The fixed `route` labels of the HTTP metrics.
const ROUTES: &[&str] = &["stats", "live", "ready", "metrics", "unmatched"];

fn assert_every_promised_family(page: &str, with_samples: bool) {
    let families = parse(page);
    let described = |name: &str, kind: &str| {
        let family = families
            .get(name)
            .unwrap_or_else(|| panic!("{name} is missing from /metrics:\n{page}"));
        assert!(
            family.help.as_deref().is_some_and(|h| !h.trim().is_empty()),
            "{name} has no help text"
        );
        assert_eq!(
            family.kind.as_deref(),
            Some(kind),
            "{name} has the wrong TYPE"
        );
        family
    };
    for &(name, kind, labels) in PROMISED {
        let family = described(name, kind);
        if with_samples {
            assert!(!family.samples.is_empty(), "{name} has no series:\n{page}");
            let expected: BTreeSet<String> = labels.iter().map(|l| (*l).to_owned()).collect();
            for (sample, sample_labels, _) in &family.samples {
                assert_eq!(
                    label_names(sample_labels),
                    expected,
                    "labels of {sample}{{{sample_labels}}}"
                );
            }
        }
    }
    for &(name, kind) in KAFKA_FAMILIES {
        described(name, kind);
    }
}

#[test]
fn live_scrape_passes_promtool_and_carries_every_promised_name() {
    let promtool = promtool();
    let mut service = Service::serve_live(&[], &["--demo"]);

    // The first scrape, before anything else: every family is there with HELP and TYPE, and the
    // HTTP series exist before the first request they count.
    let first = service.scrape();
    assert_every_promised_family(&first, false);
    for route in ROUTES {
        assert!(
            first.contains(&format!(
                "permit_stats_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"0.0001\"}}"
            )),
            "no latency series for route {route} on the first scrape:\n{first}"
        );
    }
    assert!(first.contains("permit_stats_http_requests_total{route=\"stats\",status=\"200\"}"));
    if let Some(promtool) = &promtool {
        assert_promtool_clean(promtool, &first);
    }

    service.wait_ready();
    let token = service.demo_token();
    let stats = "/api/OC-TOMA/v1/permits/stats";
    let ok = service
        .request("POST", stats, &format!("{{\"apiToken\":\"{token}\"}}"))
        .expect("stats answers");
    assert_eq!(ok.0, 200, "{ok:?}");
    let forbidden = service
        .request("POST", stats, "{\"apiToken\":\"not-a-known-token\"}")
        .expect("stats answers");
    assert_eq!(forbidden.0, 403);
    assert_eq!(service.get("/no/such/path").map(|r| r.0), Some(404));
    // Live permits appear as the demo streams, and librdkafka's statistics arrive every second.
    service.wait_until("the demo's permits and librdkafka's statistics", |s| {
        let page = s.scrape();
        page.contains("\npermit_stats_permits{")
            && page.contains("\npermit_stats_kafka_broker_up{")
            && page.contains("\npermit_stats_kafka_consumer_lag_records{")
    });

    let page = service.scrape();
    if let Some(promtool) = &promtool {
        assert_promtool_clean(promtool, &page);
    }
    assert_every_promised_family(&page, true);
    let families = parse(&page);
    let value = |name: &str, labels: &str| {
        families
            .values()
            .flat_map(|f| &f.samples)
            .find(|(sample, l, _)| sample == name && l == labels)
            .map(|s| s.2)
    };
    assert_eq!(value("permit_stats_ready", ""), Some(1.0));
    assert!(
        value(
            "permit_stats_http_requests_total",
            "route=\"stats\",status=\"200\""
        )
        .is_some_and(|n| n >= 1.0)
    );
    assert!(
        value(
            "permit_stats_http_requests_total",
            "route=\"stats\",status=\"403\""
        )
        .is_some_and(|n| n >= 1.0)
    );
    assert!(
        value(
            "permit_stats_http_request_duration_seconds_count",
            "route=\"stats\""
        )
        .is_some_and(|n| n >= 2.0)
    );
    assert!(value("permit_stats_last_event_timestamp_seconds", "").is_some_and(|t| t > 1e9));
    assert!(
        value("permit_stats_events_applied_total", "kind=\"created\"").is_some_and(|n| n > 0.0)
    );
    // The latency buckets resolve sub-millisecond answers.
    let bounds: Vec<f64> = families["permit_stats_http_request_duration_seconds"]
        .samples
        .iter()
        .filter(|(_, l, _)| l.starts_with("route=\"stats\""))
        .filter_map(|(_, l, _)| label_value(l, "le"))
        .filter_map(|le| le.parse().ok())
        .collect();
    assert!(
        bounds.iter().filter(|&&b| b < 0.001).count() >= 5,
        "too few sub-millisecond buckets: {bounds:?}"
    );
    // Every route label is one the pre-registered list knows (no drift from the router).
    for (_, labels, _) in &families["permit_stats_http_requests_total"].samples {
        let route = label_value(labels, "route").expect("route label");
        assert!(ROUTES.contains(&route), "unexpected route {route}");
    }
    // The permit gauges are the numbers the API serves.
    let answer: Value = serde_json::from_str(&ok.1).expect("stats JSON");
    assert!(answer["data"].is_array());
    // The embedded broker's connection is up.
    assert!(
        families["permit_stats_kafka_broker_up"]
            .samples
            .iter()
            .any(|s| s.2 == 1.0)
    );

    let (_, stderr) = service.stop();
    assert!(
        !stderr.contains("\x1b["),
        "text logs to a file must not carry colour codes"
    );
    assert!(!stderr.contains(&token), "the demo token was logged");
}

#[test]
fn every_promised_name_is_there_while_the_broker_is_unreachable() {
    let promtool = promtool();
    let dir = std::env::temp_dir().join(format!("permit-stats-obs-tokens-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("temp dir");
    let tokens = dir.join("tokens.toml");
    fs::write(&tokens, token_entry("OC-TOMA")).expect("token file");
    // Port 1 on loopback: nothing listens there, so ingest waits for the broker's metadata.
    let service = Service::serve_live(
        &[],
        &[
            "--brokers",
            "127.0.0.1:1",
            "--tokens",
            tokens.to_str().expect("UTF-8 path"),
        ],
    );
    let page = service.scrape();
    assert_every_promised_family(&page, false);
    assert!(page.contains("\npermit_stats_ready 0\n"), "{page}");
    if let Some(promtool) = &promtool {
        assert_promtool_clean(promtool, &page);
    }
    let _ = fs::remove_dir_all(&dir);
}

/// The token-file entry of a fresh token, from `permit-stats token`.
fn token_entry(client: &str) -> String {
    let out = Command::new(BINARY)
        .args(["token", "--client", client, "--name", "observability-test"])
        .output()
        .expect("permit-stats token runs");
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .expect("UTF-8")
        .lines()
        .skip(1)
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn librdkafka_statistics_of_a_real_broker_reach_the_metrics() {
    let Some(bootstrap) = kafka::bootstrap() else {
        return;
    };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let topic = format!("obs-{}-{nanos}", std::process::id());
    let produced = Command::new(BINARY)
        .args(["produce", "--brokers", &bootstrap, "--topic", &topic])
        .args(["--create-partitions", "2", "--events", "500"])
        .output()
        .expect("permit-stats produce runs");
    assert!(
        produced.status.success(),
        "produce failed: {}",
        String::from_utf8_lossy(&produced.stderr)
    );
    let dir = std::env::temp_dir().join(format!("permit-stats-obs-kafka-{nanos}"));
    fs::create_dir_all(&dir).expect("temp dir");
    let tokens = dir.join("tokens.toml");
    fs::write(&tokens, token_entry("OC-TOMA")).expect("token file");
    let mut service = Service::serve_live(
        &[],
        &[
            "--brokers",
            &bootstrap,
            "--topic",
            &topic,
            "--tokens",
            tokens.to_str().expect("UTF-8 path"),
        ],
    );
    service.wait_ready();
    service.wait_until(
        "every partition caught up in librdkafka's statistics",
        |s| {
            let page = s.scrape();
            page.contains("permit_stats_kafka_consumer_lag_records{partition=\"0\"} 0\n")
                && page.contains("permit_stats_kafka_consumer_lag_records{partition=\"1\"} 0\n")
                && page.contains("\npermit_stats_kafka_broker_up{")
        },
    );
    let page = service.scrape();
    let families = parse(&page);
    let up = &families["permit_stats_kafka_broker_up"].samples;
    assert!(
        up.iter().any(|(_, labels, v)| *v == 1.0
            && label_value(labels, "broker").is_some_and(|b| b.contains(bootstrap.as_str()))),
        "no broker of {bootstrap} is up: {up:?}"
    );
    assert!(
        families["permit_stats_kafka_received_bytes_total"].samples[0].2 > 0.0,
        "nothing received"
    );
    if let Some(promtool) = promtool() {
        assert_promtool_clean(&promtool, &page);
    }
    drop(service);
    let _ = fs::remove_dir_all(&dir);
}
