//! Any Kafka a user runs: every compression codec, written by a producer that is not ours
//! (Kafka's own `ConsoleProducer`); SASL_SSL with SCRAM-SHA-512 from a `client.properties` file;
//! mutual TLS from `--kafka-option`s; and a cluster that refuses the service (a wrong password,
//! a missing client certificate), which must leave it up, answering 503 with the reason and
//! never the password.
//!
//! They need the shared broker's secured listeners:
//!
//! ```text
//! KAFKA_SECURITY=1 scripts/kafka.sh run -- cargo test --test it kafka_security -- --nocapture
//! ```
//!
//! Without them they print a loud notice and pass, unless `CI` is set (then they fail).

use std::{fs, path::Path, process::Command, time::Duration};

use permit_stats::events::pb;
use prost::Message as _;

use crate::support::{
    TempDir,
    client::{converge, http},
    kafka::{Secured, create_topic, kafka_tool, produce, read_topic, secured},
    service::{BINARY, Service, write_tokens},
    unique,
    workload::{Record, Workload},
};

/// Good records per topic.
const EVENTS: usize = 300;

/// Kafka's codecs, by the names of `--compression-codec` (and `produce --compression`).
const CODECS: [&str; 5] = ["none", "gzip", "snappy", "lz4", "zstd"];

/// The log filter of these tests: librdkafka's own lines too, to show none carries a secret.
const LOGS: &str = "info,librdkafka=debug";

/// A record's value as one line of canonical JSON (protobuf values are decoded and re-encoded;
/// the model does not change).
fn json_line(record: &Record) -> String {
    let json = if record.content_type == Some("application/json") {
        record.payload.clone()
    } else {
        let event = pb::PermitEvent::decode(record.payload.as_slice()).expect("a protobuf event");
        serde_json::to_vec(&event).expect("serializes")
    };
    let line = String::from_utf8(json).expect("JSON is UTF-8");
    assert!(!line.contains(['\n', '\t']), "one line: {line}");
    line
}

/// Writes `records` to `topic` with Kafka's ConsoleProducer in `codec`, each with a
/// `content-type: application/json` header.
fn console_produce(bootstrap: &str, topic: &str, codec: &str, records: &[Record]) {
    let mut input = String::new();
    for record in records {
        input.push_str("content-type:application/json\t");
        input.push_str(&record.key);
        input.push('\t');
        input.push_str(&json_line(record));
        input.push('\n');
    }
    kafka_tool(
        "org.apache.kafka.tools.ConsoleProducer",
        &[
            "--bootstrap-server",
            bootstrap,
            "--topic",
            topic,
            "--compression-codec",
            codec,
            "--property",
            "parse.headers=true",
            "--property",
            "parse.key=true",
            "--producer-property",
            "linger.ms=50",
        ],
        input.as_bytes(),
    );
}

/// The codecs of the batches in each topic's first partition, as Kafka's DumpLogSegments reads
/// the log files (the broker keeps what the producer wrote: `compression.type=producer`), by
/// topic, in one run of the tool.
fn codecs_on_disk(run_dir: &str, topics: &[&str]) -> Vec<Vec<String>> {
    let folders: Vec<_> = topics
        .iter()
        .map(|topic| Path::new(run_dir).join("data").join(format!("{topic}-0")))
        .collect();
    let logs: Vec<String> = folders
        .iter()
        .flat_map(|folder| {
            fs::read_dir(folder)
                .unwrap_or_else(|e| panic!("{}: {e}", folder.display()))
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "log"))
                .map(|p| p.display().to_string())
        })
        .collect();
    let dump = kafka_tool(
        "kafka.tools.DumpLogSegments",
        &["--files", &logs.join(",")],
        b"",
    );
    folders
        .iter()
        .map(|folder| {
            let folder = folder.display().to_string();
            let mut codecs: Vec<String> = dump
                .split("Dumping ")
                .filter(|section| section.starts_with(&folder))
                .flat_map(|section| section.split("compresscodec: ").skip(1))
                .filter_map(|rest| rest.split_whitespace().next())
                .map(|c| c.trim_end_matches(',').to_lowercase())
                .collect();
            codecs.sort();
            codecs.dedup();
            codecs
        })
        .collect()
}

/// One topic per codec, written by ConsoleProducer; the service reads each to the exact answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_codec_written_by_kafkas_console_producer_is_read_exactly() {
    let Some(kafka) = secured() else { return };
    let dir = TempDir::new("codecs");
    let (tokens_path, tokens) = write_tokens(&dir.0);
    let tokens_file = tokens_path.to_str().expect("utf-8 path");
    let mut runs = Vec::new();
    for (i, codec) in CODECS.iter().enumerate() {
        let topic = unique(&format!("codec-{codec}"));
        create_topic(&kafka.plain, &topic, 1).await;
        let mut workload = Workload::new(0xC0DEC + i as u64, 120);
        let records = workload.records(EVENTS, 0.0);
        let (bootstrap, topic_name) = (kafka.plain.clone(), topic.clone());
        let codec_name = (*codec).to_owned();
        tokio::task::spawn_blocking(move || {
            console_produce(&bootstrap, &topic_name, &codec_name, &records)
        })
        .await
        .expect("producer thread");
        runs.push((*codec, topic, workload));
    }
    let topics: Vec<&str> = runs.iter().map(|(_, topic, _)| topic.as_str()).collect();
    let on_disk = codecs_on_disk(&kafka.run_dir, &topics);
    for ((codec, topic, _), on_disk) in runs.iter().zip(on_disk) {
        assert_eq!(
            on_disk,
            [codec.to_string()],
            "{topic}: batches are {on_disk:?}"
        );
    }
    let mut services: Vec<Service> = runs
        .iter()
        .map(|(_, topic, _)| {
            Service::serve(
                &[],
                &[
                    "--brokers",
                    &kafka.plain,
                    "--topic",
                    topic,
                    "--tokens",
                    tokens_file,
                ],
                Some(LOGS),
            )
        })
        .collect();
    let http = http();
    for ((codec, topic, workload), service) in runs.iter().zip(&mut services) {
        eprintln!("{codec}: {topic}");
        converge(service, &http, &tokens, workload, true).await;
    }
}

/// SASL_SSL with SCRAM-SHA-512, every setting in a Java-syntax `client.properties` file (the
/// bootstrap servers too: no `--brokers`, so no embedded broker); the dead-letter producer and
/// its scan use them as well. Answers exact; the password is in no log line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_ssl_scram_from_a_client_properties_file() {
    let Some(kafka) = secured() else { return };
    let topic = unique("sasl-ssl");
    let dead = format!("{topic}.dead");
    create_topic(&kafka.plain, &topic, 2).await;
    let dir = TempDir::new("sasl-ssl");
    let (tokens_path, tokens) = write_tokens(&dir.0);
    let mut workload = Workload::new(0x5A51, 200);
    let mut records = workload.records(EVENTS, 0.0);
    records.push(workload.bad());
    produce(&kafka.plain, &topic, records).await;

    let properties = dir.0.join("client.properties");
    fs::write(
        &properties,
        format!(
            "# librdkafka settings, Java properties syntax\n\
             ! comments of both kinds\n\
             bootstrap.servers = {}\n\
             security.protocol: SASL_SSL\n\
             sasl.mechanism SCRAM-SHA-512\n\
             sasl.username=\\\n    {}\n\
             sasl.password={}\n\
             ssl.ca.location={}\n",
            kafka.sasl_ssl, kafka.user, kafka.password, kafka.ca
        ),
    )
    .expect("write client.properties");
    let mut service = Service::serve(
        &[],
        &[
            "--topic",
            &topic,
            "--tokens",
            tokens_path.to_str().expect("utf-8"),
            "--kafka-config",
            properties.to_str().expect("utf-8"),
            "--dead-letter-topic",
            &dead,
        ],
        Some(LOGS),
    );
    converge(&mut service, &http(), &tokens, &workload, true).await;
    let copies = tokio::task::spawn_blocking({
        let (plain, dead) = (kafka.plain.clone(), dead.clone());
        move || read_topic(&plain, &dead, 1, Duration::from_secs(30))
    })
    .await
    .expect("reader");
    assert_eq!(
        copies.len(),
        1,
        "the bad record is dead-lettered over SASL_SSL"
    );
    let log = service.log_text();
    assert!(
        !log.contains("embedded broker"),
        "bootstrap.servers counts as --brokers"
    );
    assert!(
        log.contains("sasl.password=<redacted>"),
        "settings logged, redacted"
    );
    assert!(!log.contains(&kafka.password), "the password is in the log");
}

/// Mutual TLS from `--kafka-option`s: the service reads exactly, and `permit-stats produce`
/// (its admin client and its producer, zstd) writes over the same listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_from_kafka_options() {
    let Some(kafka) = secured() else { return };
    let tls_options = |kafka: &Secured| {
        vec![
            format!("bootstrap.servers={}", kafka.ssl),
            "security.protocol=SSL".to_owned(),
            format!("ssl.ca.location={}", kafka.ca),
            format!("ssl.certificate.location={}", kafka.client_cert),
            format!("ssl.key.location={}", kafka.client_key),
        ]
    };
    let mut flags = Vec::new();
    for option in tls_options(&kafka) {
        flags.push("--kafka-option".to_owned());
        flags.push(option);
    }

    // Our own writer, over mutual TLS, with a topic it creates.
    let written = unique("mtls-produce");
    let mut produce_cmd = Command::new(BINARY);
    produce_cmd
        .args(["produce", "--topic", &written, "--events", "500"])
        .args(["--create-partitions", "2", "--compression", "zstd"])
        .args(&flags);
    let output = tokio::task::spawn_blocking(move || produce_cmd.output())
        .await
        .expect("thread")
        .expect("run permit-stats produce");
    assert!(
        output.status.success(),
        "produce over mutual TLS failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let landed = tokio::task::spawn_blocking({
        let (plain, written) = (kafka.plain.clone(), written.clone());
        move || read_topic(&plain, &written, 500, Duration::from_secs(30))
    })
    .await
    .expect("reader");
    assert_eq!(landed.len(), 500);

    // The service, over mutual TLS.
    let topic = unique("mtls");
    create_topic(&kafka.plain, &topic, 2).await;
    let dir = TempDir::new("mtls");
    let (tokens_path, tokens) = write_tokens(&dir.0);
    let mut workload = Workload::new(0x7715, 200);
    let records = workload.records(EVENTS, 0.0);
    produce(&kafka.plain, &topic, records).await;
    let mut serve: Vec<&str> = vec![
        "--topic",
        &topic,
        "--tokens",
        tokens_path.to_str().expect("utf-8"),
    ];
    serve.extend(flags.iter().map(String::as_str));
    let mut service = Service::serve(&[], &serve, Some(LOGS));
    converge(&mut service, &http(), &tokens, &workload, true).await;
}

/// Polls `/health/ready` until its body names `what`; the body.
fn wait_for_refusal(service: &mut Service, what: &str) -> String {
    let mut body = String::new();
    service.wait_until(&format!("a 503 naming {what}"), |s| {
        match s.get("/health/ready") {
            Some((503, text)) if text.to_lowercase().contains(what) => {
                body = text;
                true
            }
            Some((status, _)) => {
                assert_ne!(
                    status, 200,
                    "ready although the cluster refuses the service"
                );
                false
            }
            None => false,
        }
    });
    body
}

/// A wrong password (given through `PERMIT_STATS_KAFKA_OPTIONS`, newline-separated): the service
/// stays up, answers 503 naming an authentication failure, and prints the password nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_leaves_the_service_up_with_a_503_that_says_why() {
    let Some(kafka) = secured() else { return };
    let topic = unique("refused");
    create_topic(&kafka.plain, &topic, 1).await;
    let dir = TempDir::new("refused");
    let (tokens_path, _) = write_tokens(&dir.0);
    let wrong = format!("wrong-{}", unique("pw"));
    let options = format!(
        "bootstrap.servers={}\nsecurity.protocol=SASL_SSL\nsasl.mechanism=SCRAM-SHA-512\n\
         sasl.username={}\nsasl.password={wrong}\nssl.ca.location={}\n",
        kafka.sasl_ssl, kafka.user, kafka.ca
    );
    let mut service = Service::serve_with_env(
        &[],
        &[
            "--topic",
            &topic,
            "--tokens",
            tokens_path.to_str().expect("utf-8"),
        ],
        Some(LOGS),
        &[("PERMIT_STATS_KAFKA_OPTIONS", &options)],
    );
    let body = wait_for_refusal(&mut service, "authentication failed");
    assert!(!body.contains(&wrong), "{body}");
    // Still up and still refusing a while later: it retries, it does not exit.
    std::thread::sleep(Duration::from_secs(3));
    service.assert_running();
    let (status, body) = service.get("/health/ready").expect("answers");
    assert_eq!(status, 503, "{body}");
    let log = service.log_text();
    assert!(
        log.contains("the cluster refused the service"),
        "a clear log line"
    );
    assert!(!log.contains(&wrong), "the password is in the log");
    // `--help` never shows the variable's value either.
    let help = Command::new(BINARY)
        .args(["serve", "--help"])
        .env("PERMIT_STATS_KAFKA_OPTIONS", &options)
        .output()
        .expect("help");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--kafka-option"), "{help}");
    assert!(!help.contains(&wrong), "{help}");
}

/// A listener that wants a client certificate, and none given: 503 naming the TLS failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_client_certificate_is_named_in_the_503() {
    let Some(kafka) = secured() else { return };
    let topic = unique("no-cert");
    create_topic(&kafka.plain, &topic, 1).await;
    let dir = TempDir::new("no-cert");
    let (tokens_path, _) = write_tokens(&dir.0);
    let ca = format!("ssl.ca.location={}", kafka.ca);
    let mut service = Service::serve(
        &[],
        &[
            "--brokers",
            &kafka.ssl,
            "--topic",
            &topic,
            "--tokens",
            tokens_path.to_str().expect("utf-8"),
            "--kafka-option",
            "security.protocol=SSL",
            "--kafka-option",
            &ca,
        ],
        Some(LOGS),
    );
    wait_for_refusal(&mut service, "tls handshake failed");
    service.assert_running();
}

/// Owned settings are refused at start, by name, and the process exits non-zero.
#[test]
fn owned_settings_stop_the_start_with_their_names() {
    let output = Command::new(BINARY)
        .args(["serve", "--demo", "--listen", "127.0.0.1:0"])
        .args([
            "--kafka-option",
            "group.id=mine",
            "--kafka-option",
            "auto.offset.reset=latest",
        ])
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("group.id") && stderr.contains("auto.offset.reset"),
        "{stderr}"
    );
}
