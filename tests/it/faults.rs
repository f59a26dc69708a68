//! Faults on a REAL Apache Kafka broker, each a test: bad records (counted by reason and copied
//! to a dead-letter topic once), a broker stopped mid-stream, a service started while the broker
//! is down, a service killed with SIGKILL mid-stream, partitions added while running, and two
//! replicas. (SIGTERM with requests in flight is in `shutdown.rs`.)
//!
//! Every answer is compared with the reference model (`support::model`) of the same events, byte
//! for byte. Tests that stop the broker start one of their own with `scripts/kafka.sh start DIR`
//! and stop and start it with `scripts/kafka.sh down|up DIR` (same ports, same data: an honest
//! outage); the others share the broker of `KAFKA_BOOTSTRAP`.
//!
//! ```text
//! scripts/kafka.sh run -- cargo test --test it faults -- --nocapture
//! ```

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::{Duration, Instant},
};

use rdkafka::message::{Headers as _, Message as _};

use crate::support::{
    client::{self, CONVERGE, converge, get, http, metric, stats},
    kafka::{
        PrivateBroker, add_partitions, bootstrap, create_topic, delete_topic, join_writer, produce,
        produce_in_background, read_topic, topic_and_tokens,
    },
    service::{Service, assert_clean_exit},
    workload::{Bad, CLIENTS, Workload},
};

/// Waits until at least one client's answer differs from `before`: the service has applied part
/// of a stream that is still being written.
async fn wait_until_changed(
    service: &mut Service,
    http: &reqwest::Client,
    tokens: &HashMap<String, String>,
    before: &HashMap<String, Vec<u8>>,
) {
    let deadline = Instant::now() + CONVERGE;
    loop {
        service.assert_running();
        for client in CLIENTS {
            let answer = stats(http, &service.base, client, &tokens[client], None).await;
            assert_eq!(answer.status, 200, "{}", answer.text());
            if answer.body != before[client] {
                return;
            }
        }
        assert!(Instant::now() < deadline, "the stream never showed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// ~1% garbage of every kind the issue lists: the good records count exactly, every bad one is
/// counted under its reason and copied once to the dead-letter topic with its coordinates; a
/// restart (after SIGKILL) does not copy them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_are_counted_by_reason_and_dead_lettered_once() {
    let Some(bootstrap) = bootstrap() else {
        return;
    };
    let t0 = Instant::now();
    let (topic, _dir, tokens_path, tokens) = topic_and_tokens(&bootstrap, "faults-bad", 3).await;
    let dead = format!("{topic}.dead-letter");
    create_topic(&bootstrap, &dead, 2).await;

    let mut workload = Workload::new(0xBAD_2026, 900);
    let records = workload.records(6_000, 0.01);
    let bad_total = workload.bad_total();
    assert!(
        Bad::ALL.iter().all(|k| workload.bad_made.contains_key(k)),
        "every kind of bad record is in the topic: {:?}",
        workload.bad_made
    );
    eprintln!(
        "bad: {} records, {bad_total} bad: {:?}",
        records.len(),
        workload.bad_made
    );
    let landed = produce(&bootstrap, &topic, records.clone()).await;

    let http = http();
    let flags = ["--dead-letter-topic", dead.as_str()];
    let mut service = Service::start(&bootstrap, &topic, &tokens_path, &flags);
    let seen = converge(&mut service, &http, &tokens, &workload, true).await;
    eprintln!("bad: exact after {:?} ({:?})", seen.after, seen.statuses);

    // Every bad record counted under its reason, nothing else rejected.
    let page = get(&http, format!("{}/metrics", service.base)).await.text();
    for kind in Bad::ALL {
        assert_eq!(
            metric(
                &page,
                "permit_stats_records_rejected_total",
                &format!("reason=\"{}\"", kind.reason())
            ),
            workload.bad_made[&kind] as f64,
            "permit_stats_records_rejected_total{{reason=\"{}\"}}",
            kind.reason()
        );
    }
    assert_eq!(
        metric(&page, "permit_stats_records_rejected_total", ""),
        bad_total as f64
    );

    // Each one copied to the dead-letter topic: original key, value and headers, plus ours.
    let copies = tokio::task::spawn_blocking({
        let (bootstrap, dead) = (bootstrap.clone(), dead.clone());
        move || read_topic(&bootstrap, &dead, bad_total, Duration::from_secs(30))
    })
    .await
    .expect("reader");
    assert_eq!(copies.len(), bad_total, "one copy per bad record");
    let mut by_source = HashMap::new();
    for copy in &copies {
        let headers: BTreeMap<String, String> = copy
            .headers()
            .expect("a copy has headers")
            .iter()
            .map(|h| {
                (
                    h.key.to_owned(),
                    String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                )
            })
            .collect();
        assert_eq!(headers["permit-stats-source-topic"], topic);
        let source = (
            headers["permit-stats-source-partition"]
                .parse::<i32>()
                .expect("partition"),
            headers["permit-stats-source-offset"]
                .parse::<i64>()
                .expect("offset"),
        );
        assert!(
            by_source.insert(source, (copy.clone(), headers)).is_none(),
            "{source:?} copied twice"
        );
    }
    for (record, at) in records.iter().zip(&landed) {
        let Some(kind) = record.bad else {
            assert!(!by_source.contains_key(at), "good record {at:?} copied");
            continue;
        };
        let (copy, headers) = by_source
            .get(at)
            .unwrap_or_else(|| panic!("bad record ({kind:?}) at {at:?} not copied"));
        assert_eq!(headers["permit-stats-reason"], kind.reason(), "{at:?}");
        assert_eq!(copy.key(), Some(record.key.as_bytes()), "{at:?}: key");
        assert_eq!(
            copy.payload(),
            Some(record.payload.as_slice()),
            "{at:?}: value"
        );
        assert_eq!(
            headers.get("content-type").map(String::as_str),
            record.content_type,
            "{at:?}: the original headers ride along"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let page = get(&http, format!("{}/metrics", service.base)).await.text();
        let copied = metric(&page, "permit_stats_dead_letter_records_total", "");
        assert_eq!(
            metric(&page, "permit_stats_dead_letter_failures_total", ""),
            0.0
        );
        if copied == bad_total as f64 {
            break;
        }
        assert!(Instant::now() < deadline, "dead-letter acks: {copied}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A crash and a restart: the replay meets every bad record again but copies none of them;
    // one new bad record is copied.
    service.kill();
    let mut more = workload.records(100, 0.0);
    more.push(workload.bad());
    more.extend(workload.records(100, 0.0));
    let more_landed = produce(&bootstrap, &topic, more.clone()).await;
    let sentinel = more_landed[100];
    let mut service = Service::start(&bootstrap, &topic, &tokens_path, &flags);
    converge(&mut service, &http, &tokens, &workload, true).await;
    let page = get(&http, format!("{}/metrics", service.base)).await.text();
    assert_eq!(
        metric(&page, "permit_stats_records_rejected_total", ""),
        (bad_total + 1) as f64,
        "the replay counts every bad record again"
    );
    assert_clean_exit(&mut service);
    assert!(
        service.log_text().contains(&format!("already={bad_total}")),
        "the restart read the {bad_total} earlier copies:\n{}",
        service.log_tail()
    );
    // SIGTERM flushed the dead-letter producer: what it copied is in the topic now.
    let copies = tokio::task::spawn_blocking({
        let (bootstrap, dead) = (bootstrap.clone(), dead.clone());
        move || read_topic(&bootstrap, &dead, bad_total + 1, Duration::from_secs(30))
    })
    .await
    .expect("reader");
    let sources: HashSet<(i32, i64)> = copies
        .iter()
        .map(|c| {
            let h = c.headers().expect("headers");
            let find = |name: &str| {
                h.iter()
                    .find(|x| x.key == name)
                    .and_then(|x| x.value)
                    .map(|v| String::from_utf8_lossy(v).parse::<i64>().expect("number"))
                    .expect("header")
            };
            (
                i32::try_from(find("permit-stats-source-partition")).expect("i32"),
                find("permit-stats-source-offset"),
            )
        })
        .collect();
    assert_eq!(
        copies.len(),
        bad_total + 1,
        "after a restart: the old copies once each, plus the new one"
    );
    assert!(sources.contains(&sentinel), "the new bad record was copied");
    delete_topic(&bootstrap, &topic).await;
    delete_topic(&bootstrap, &dead).await;
    eprintln!("bad: done in {:?}", t0.elapsed());
}

/// The broker is killed mid-stream and started again a while later: the service answers 200 with
/// the state it had all along, an `X-Stats-Lag` that never falls while nothing can be applied,
/// says in `/health/ready` since when it has not heard from the broker (`lag_age_seconds`
/// growing), and then converges to the exact counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_mid_stream_is_ridden_out_and_converges() {
    if bootstrap().is_none() {
        return;
    }
    let t0 = Instant::now();
    let broker = PrivateBroker::start();
    eprintln!(
        "outage: private broker {} up in {:?}",
        broker.bootstrap,
        t0.elapsed()
    );
    let (topic, _dir, tokens_path, tokens) =
        topic_and_tokens(&broker.bootstrap, "faults-outage", 3).await;

    let mut workload = Workload::new(0x0_07A6E, 900);
    produce(&broker.bootstrap, &topic, workload.records(3_000, 0.005)).await;
    let http = http();
    let mut service = Service::start(&broker.bootstrap, &topic, &tokens_path, &[]);
    let before = converge(&mut service, &http, &tokens, &workload, true).await;

    // The stream goes on through the outage: the producer keeps its records until the broker
    // is back, as a real one would.
    let stream = workload.records(1_500, 0.005);
    let writer = produce_in_background(&broker.bootstrap, &topic, stream, 150.0);
    wait_until_changed(&mut service, &http, &tokens, &before.bodies).await;
    let down_at = Instant::now();
    broker.down(true);
    eprintln!("outage: broker killed {:?} into the test", t0.elapsed());

    // While it is down: never anything but 200; once the outage is declared (records fetched
    // before the kill may still be applied until then), the same bodies, a lag that never
    // falls, and a growing lag_age_seconds.
    let mut max_lag = 0;
    let mut frozen: Option<HashMap<String, Vec<u8>>> = None;
    let mut ages = Vec::new();
    let mut answers = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        service.assert_running();
        let ready = get(&http, format!("{}/health/ready", service.base)).await;
        assert_eq!(ready.status, 200, "ready is a latch: {}", ready.text());
        let progress = ready.json();
        let waiting = progress["waiting_for"].as_str().map(str::to_owned);
        let declared = waiting.as_deref().is_some_and(|w| w.contains("broker"));
        let mut bodies = HashMap::new();
        for client in CLIENTS {
            let answer = stats(&http, &service.base, client, &tokens[client], None).await;
            answers += 1;
            assert_eq!(answer.status, 200, "during the outage: {}", answer.text());
            let lag = answer.lag();
            if declared {
                assert!(
                    lag >= max_lag,
                    "X-Stats-Lag fell from {max_lag} to {lag} while the broker was down"
                );
                max_lag = lag;
            }
            bodies.insert(client.to_owned(), answer.body);
        }
        if declared {
            let age = progress["lag_age_seconds"]
                .as_f64()
                .unwrap_or_else(|| panic!("lag_age_seconds: {progress}"));
            ages.push(age);
            match &frozen {
                None => frozen = Some(bodies),
                Some(first) => assert!(
                    *first == bodies,
                    "an answer changed while the broker was down"
                ),
            }
            if age >= 8.0 {
                eprintln!("outage: declared: {progress}");
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the outage was not told in /health/ready: {progress}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        ages.windows(2).all(|w| w[1] >= w[0]) && ages.last() > ages.first(),
        "lag_age_seconds must grow during the outage: {ages:?}"
    );
    assert!(
        service.log_text().contains("the broker is unreachable"),
        "the log says so:\n{}",
        service.log_tail()
    );

    broker.up();
    eprintln!(
        "outage: broker back after {:?} ({answers} answers, all 200, X-Stats-Lag {max_lag} \
         throughout; lag_age_seconds {:?} .. {:?})",
        down_at.elapsed(),
        ages.first(),
        ages.last()
    );
    join_writer(writer).await;
    let after = converge(&mut service, &http, &tokens, &workload, false).await;
    eprintln!("outage: exact {:?} after the stream ended", after.after);
    let ready = get(&http, format!("{}/health/ready", service.base))
        .await
        .json();
    assert!(ready.get("waiting_for").is_none(), "{ready}");
    assert!(service.log_text().contains("the broker answers again"));
    assert_clean_exit(&mut service);
    eprintln!("outage: done in {:?}", t0.elapsed());
}

/// Started while the broker is down, the service waits, says why (log and `/health/ready`),
/// answers 503 (never another 5xx), and becomes ready with the exact counts once it is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_started_while_the_broker_is_down_waits_and_then_catches_up() {
    if bootstrap().is_none() {
        return;
    }
    let t0 = Instant::now();
    let broker = PrivateBroker::start();
    let (topic, _dir, tokens_path, tokens) =
        topic_and_tokens(&broker.bootstrap, "faults-late", 3).await;
    let mut workload = Workload::new(0x1A7E, 600);
    produce(&broker.bootstrap, &topic, workload.records(2_000, 0.005)).await;
    broker.down(false);

    let http = http();
    let mut service = Service::start(&broker.bootstrap, &topic, &tokens_path, &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let said = loop {
        service.assert_running();
        if let Ok(ready) =
            client::try_send(http.get(format!("{}/health/ready", service.base))).await
        {
            assert_eq!(ready.status, 503, "{}", ready.text());
            let progress = ready.json();
            let answer = stats(&http, &service.base, CLIENTS[0], &tokens[CLIENTS[0]], None).await;
            assert_eq!(answer.status, 503, "{}", answer.text());
            assert_eq!(answer.json()["ErrorCode"], 9503);
            if let Some(why) = progress["waiting_for"].as_str()
                && why.contains("unreachable")
                && service.log_text().contains("waiting for the topic")
            {
                break why.to_owned();
            }
        }
        assert!(
            Instant::now() < deadline,
            "never said why it waits:\n{}",
            service.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("late: waiting_for {said:?}");

    broker.up();
    let seen = converge(&mut service, &http, &tokens, &workload, true).await;
    eprintln!(
        "late: exact {:?} after the broker came up ({:?})",
        seen.after, seen.statuses
    );
    let ready = get(&http, format!("{}/health/ready", service.base)).await;
    assert_eq!(ready.status, 200);
    assert!(
        ready.json().get("waiting_for").is_none(),
        "{}",
        ready.text()
    );
    assert!(service.log_text().contains("the topic is reachable"));
    assert_clean_exit(&mut service);
    eprintln!("late: done in {:?}", t0.elapsed());
}

/// SIGKILL mid-stream, start again: the replay gives the exact counts of everything written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_killed_mid_stream_replays_to_the_exact_counts() {
    let Some(bootstrap) = bootstrap() else {
        return;
    };
    let t0 = Instant::now();
    let (topic, _dir, tokens_path, tokens) =
        topic_and_tokens(&bootstrap, "faults-sigkill", 4).await;
    let mut workload = Workload::new(0x0516_1111, 900);
    produce(&bootstrap, &topic, workload.records(3_000, 0.005)).await;

    let http = http();
    let mut service = Service::start(&bootstrap, &topic, &tokens_path, &[]);
    let before = converge(&mut service, &http, &tokens, &workload, true).await;
    let writer = produce_in_background(&bootstrap, &topic, workload.records(2_000, 0.005), 400.0);
    wait_until_changed(&mut service, &http, &tokens, &before.bodies).await;
    service.kill();
    eprintln!(
        "sigkill: killed mid-stream {:?} into the test",
        t0.elapsed()
    );

    let mut service = Service::start(&bootstrap, &topic, &tokens_path, &[]);
    join_writer(writer).await;
    let seen = converge(&mut service, &http, &tokens, &workload, true).await;
    eprintln!(
        "sigkill: exact after restart in {:?} ({:?})",
        seen.after, seen.statuses
    );
    assert_clean_exit(&mut service);
    delete_topic(&bootstrap, &topic).await;
}

/// Partitions added while the service runs are read from their beginning: permits that live only
/// in them are counted. The producer keeps every existing permit on its old partition (what a
/// producer must do for per-permit order to survive the change; see the README's guarantees).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_added_while_running_are_picked_up() {
    let Some(bootstrap) = bootstrap() else {
        return;
    };
    let (topic, _dir, tokens_path, tokens) = topic_and_tokens(&bootstrap, "faults-grow", 2).await;
    let mut workload = Workload::new(0x6_2011, 600);
    workload.pin_by_key(2);
    produce(&bootstrap, &topic, workload.records(2_000, 0.005)).await;

    let http = http();
    let flags = ["--metadata-interval", "1"];
    let mut service = Service::start(&bootstrap, &topic, &tokens_path, &flags);
    converge(&mut service, &http, &tokens, &workload, true).await;

    add_partitions(&bootstrap, &topic, 4).await;
    // The producer must see the new partitions before it can be told to write to them.
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::task::spawn_blocking({
        let (bootstrap, topic) = (bootstrap.clone(), topic.clone());
        move || partition_count(&bootstrap, &topic)
    })
    .await
    .expect("metadata")
        < 4
    {
        assert!(
            Instant::now() < deadline,
            "the topic never showed 4 partitions"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let grown = Instant::now();
    workload.add_pinned_permits(300, |i| 2 + i32::from(i % 2 == 1));
    let landed = produce(&bootstrap, &topic, workload.records(2_000, 0.005)).await;
    let on_new = landed.iter().filter(|(p, _)| *p >= 2).count();
    assert!(on_new > 200, "the new partitions got records: {on_new}");
    let seen = converge(&mut service, &http, &tokens, &workload, false).await;
    eprintln!(
        "grow: {on_new} records on the new partitions; exact {:?} after they were written, {:?} \
         after the partitions were added",
        seen.after,
        grown.elapsed()
    );
    let page = get(&http, format!("{}/metrics", service.base)).await.text();
    for partition in 0..4 {
        assert!(
            page.contains(&format!(
                "permit_stats_consumer_lag_records{{partition=\"{partition}\"}} 0"
            )),
            "partition {partition} is consumed and caught up"
        );
    }
    assert_clean_exit(&mut service);
    delete_topic(&bootstrap, &topic).await;
}

fn partition_count(bootstrap: &str, topic: &str) -> usize {
    use rdkafka::{
        ClientConfig,
        consumer::{BaseConsumer, Consumer as _},
    };
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("consumer");
    consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map(|m| m.topics().first().map_or(0, |t| t.partitions().len()))
        .unwrap_or(0)
}

/// Two replicas on one topic, a stream going on: once both have caught up, every answer (every
/// client, with and without zone filters) is byte-identical between them and equal to the model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_answer_byte_identical_bodies() {
    let Some(bootstrap) = bootstrap() else {
        return;
    };
    let (topic, _dir, tokens_path, tokens) =
        topic_and_tokens(&bootstrap, "faults-replicas", 3).await;
    let mut workload = Workload::new(0x2EB1_1CA5, 900);
    produce(&bootstrap, &topic, workload.records(3_000, 0.005)).await;

    let http = http();
    let mut a = Service::start(&bootstrap, &topic, &tokens_path, &[]);
    let mut b = Service::start(&bootstrap, &topic, &tokens_path, &[]);
    let writer = produce_in_background(&bootstrap, &topic, workload.records(1_500, 0.005), 500.0);
    join_writer(writer).await;
    let seen_a = converge(&mut a, &http, &tokens, &workload, true).await;
    let seen_b = converge(&mut b, &http, &tokens, &workload, true).await;
    for client in CLIENTS {
        assert_eq!(seen_a.bodies[client], seen_b.bodies[client], "{client}");
        for zones in [
            None,
            Some("Lot 01, Zoné ,zone a"),
            Some("North \"B\" Lot,Nope"),
        ] {
            let x = stats(&http, &a.base, client, &tokens[client], zones).await;
            let y = stats(&http, &b.base, client, &tokens[client], zones).await;
            assert_eq!((x.status, y.status), (200, 200));
            assert_eq!(x.body, y.body, "{client} {zones:?}");
            for header in ["x-stats-as-of", "x-stats-lag", "content-type"] {
                assert_eq!(x.header(header), y.header(header), "{client} {header}");
            }
            let names: Option<Vec<&str>> = zones.map(|z| z.split(',').map(str::trim).collect());
            assert_eq!(x.text(), workload.model.body(client, names.as_deref()));
        }
    }
    let gauges = |page: String| -> Vec<String> {
        let mut lines: Vec<String> = page
            .lines()
            .filter(|l| l.starts_with("permit_stats_permits{"))
            .map(str::to_owned)
            .collect();
        lines.sort();
        lines
    };
    assert_eq!(
        gauges(get(&http, format!("{}/metrics", a.base)).await.text()),
        gauges(get(&http, format!("{}/metrics", b.base)).await.text()),
        "the permit gauges agree too"
    );
    for service in [&mut a, &mut b] {
        assert_clean_exit(service);
    }
    delete_topic(&bootstrap, &topic).await;
}
