//! Kafka for the tests that need a real broker: the gate that decides whether they run, topics
//! (with settings; deleted, and their oldest records deleted as retention does), watermarks,
//! an independent producer and reader (never the crate's), and brokers of a test's own that it
//! may stop and start again (`scripts/kafka.sh start|down|up|stop DIR`).
//!
//! The shared broker is the one of `KAFKA_BOOTSTRAP` (`scripts/kafka.sh run -- cargo test` sets
//! it); without it a test skips locally and fails in CI ([`super::skip_unless_ci`]).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use rdkafka::{
    ClientConfig, ClientContext, Message as _, Offset, TopicPartitionList,
    admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer},
    error::{KafkaError, RDKafkaErrorCode},
    message::{Header, OwnedHeaders, OwnedMessage},
    producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext},
};

use super::{TempDir, service::write_tokens, skip_unless_ci, unique, workload::Record};

/// The shared real broker's address; `None` (after a loud notice) when a developer runs the
/// tests without one. In CI a missing broker is a failure.
pub fn bootstrap() -> Option<String> {
    match std::env::var("KAFKA_BOOTSTRAP") {
        Ok(b) if !b.trim().is_empty() => Some(b.trim().to_owned()),
        _ => {
            skip_unless_ci(
                "real-Kafka test (KAFKA_BOOTSTRAP is not set)",
                "run: scripts/kafka.sh run -- cargo test --test it -- --nocapture",
            );
            None
        }
    }
}

/// The shared broker's secured listeners and test credentials (`KAFKA_SECURITY=1
/// scripts/kafka.sh run -- ...`).
#[derive(Debug, Clone)]
pub struct Secured {
    /// The PLAINTEXT listener (what the tests' own producer and reader use).
    pub plain: String,
    /// The SASL_SSL listener (SCRAM-SHA-512, SCRAM-SHA-256, PLAIN, OAUTHBEARER).
    pub sasl_ssl: String,
    /// The SSL listener that requires a client certificate.
    pub ssl: String,
    /// The test CA's certificate (PEM file).
    pub ca: String,
    /// The client certificate the CA signed (PEM file).
    pub client_cert: String,
    /// Its key (PEM file).
    pub client_key: String,
    /// The SCRAM user.
    pub user: String,
    /// Its password (never to be printed by the service).
    pub password: String,
    /// The broker's run folder (its data, for Kafka's own tools).
    pub run_dir: String,
}

/// The secured listeners, or `None` (after a loud notice) when the broker was started without
/// `KAFKA_SECURITY=1` outside CI. In CI a broker without them is a failure.
pub fn secured() -> Option<Secured> {
    let plain = bootstrap()?;
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let found = (|| {
        Some(Secured {
            plain,
            sasl_ssl: var("KAFKA_SASL_SSL_BOOTSTRAP")?,
            ssl: var("KAFKA_SSL_BOOTSTRAP")?,
            ca: var("KAFKA_CA_PEM")?,
            client_cert: var("KAFKA_CLIENT_CERT_PEM")?,
            client_key: var("KAFKA_CLIENT_KEY_PEM")?,
            user: var("KAFKA_SCRAM_USER")?,
            password: var("KAFKA_SCRAM_PASSWORD")?,
            run_dir: var("KAFKA_RUN_DIR")?,
        })
    })();
    if found.is_none() {
        skip_unless_ci(
            "secured-Kafka test (the broker has no secured listeners: KAFKA_SASL_SSL_BOOTSTRAP \
             and friends are not set)",
            "run: KAFKA_SECURITY=1 scripts/kafka.sh run -- cargo test --test it kafka_security",
        );
    }
    found
}

/// Runs one of Kafka's own command-line tools (`scripts/kafka.sh tool CLASS ARGS...`) with
/// `stdin` as its input; its stdout. Panics with its stderr when it fails.
pub fn kafka_tool(class: &str, args: &[&str], stdin: &[u8]) -> String {
    use std::io::Write as _;
    let mut child = Command::new(script())
        .arg("tool")
        .arg(class)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run scripts/kafka.sh tool");
    // A tool that refused its arguments closes its input early: its stderr says why, below.
    let _ = child.stdin.take().expect("piped").write_all(stdin);
    let output = child.wait_with_output().expect("the tool ends");
    assert!(
        output.status.success(),
        "scripts/kafka.sh tool {class} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client")
}

/// Creates a topic with `partitions` partitions and the broker's default settings.
pub async fn create_topic(bootstrap: &str, name: &str, partitions: i32) {
    create_topic_with_configs(bootstrap, name, partitions, &[]).await;
}

/// Creates a topic with `partitions` partitions and these topic settings (e.g.
/// `("cleanup.policy", "compact")`, `("retention.ms", "-1")`).
pub async fn create_topic_with_configs(
    bootstrap: &str,
    name: &str,
    partitions: i32,
    configs: &[(&str, &str)],
) {
    let topic = configs.iter().fold(
        NewTopic::new(name, partitions, TopicReplication::Fixed(1)),
        |topic, (key, value)| topic.set(key, value),
    );
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin(bootstrap)
        .create_topics([&topic], &options)
        .await
        .expect("create_topics request")
    {
        result.unwrap_or_else(|(t, code)| panic!("cannot create topic {t}: {code}"));
    }
}

/// Grows a topic to `total` partitions.
pub async fn add_partitions(bootstrap: &str, name: &str, total: usize) {
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin(bootstrap)
        .create_partitions([&NewPartitions::new(name, total)], &options)
        .await
        .expect("create_partitions request")
    {
        result.unwrap_or_else(|(t, code)| panic!("cannot add partitions to {t}: {code}"));
    }
}

/// Deletes a topic and waits (up to 30 s) until the broker's metadata no longer lists it, so
/// that a topic of the same name can be created next. A topic that does not exist is fine;
/// other failures are ignored too (most callers clean up after a test whose verdict is in).
pub async fn delete_topic(bootstrap: &str, name: &str) {
    let _ = admin(bootstrap)
        .delete_topics(&[name], &AdminOptions::new())
        .await;
    let (bootstrap, name) = (bootstrap.to_owned(), name.to_owned());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("allow.auto.create.topics", "false")
            .create()
            .expect("metadata client");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let listed = consumer
                .fetch_metadata(None, Duration::from_secs(10))
                .map(|m| m.topics().iter().any(|t| t.name() == name));
            if matches!(listed, Ok(false)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "topic {name} still exists 30 s after its deletion ({listed:?})"
            );
            thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .expect("metadata thread");
}

/// Deletes the records of `topic`'s `partition` below `before_offset`, the way Kafka's
/// retention does (DeleteRecords): the partition's low watermark moves to `before_offset` and
/// a reader from the beginning starts there. Panics if the broker refuses.
pub async fn delete_records(bootstrap: &str, topic: &str, partition: i32, before_offset: i64) {
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset(topic, partition, Offset::Offset(before_offset))
        .expect("partition");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let done = admin(bootstrap)
        .delete_records(&offsets, &options)
        .await
        .unwrap_or_else(|e| panic!("DeleteRecords on {topic}/{partition}: {e}"));
    for element in done.elements() {
        if let Err(e) = element.error() {
            panic!(
                "DeleteRecords on {}/{} refused: {e}",
                element.topic(),
                element.partition()
            );
        }
    }
}

/// The (low, high) watermarks of `topic`'s `partition`.
pub fn watermarks(bootstrap: &str, topic: &str, partition: i32) -> (i64, i64) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("watermark client");
    consumer
        .fetch_watermarks(topic, partition, Duration::from_secs(10))
        .expect("watermarks")
}

/// Where each record landed, by its index in what was sent.
type Landed = Arc<Mutex<Vec<Option<(i32, i64)>>>>;

struct Deliveries {
    landed: Landed,
    failed: AtomicUsize,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Box<usize>;

    fn delivery(&self, result: &DeliveryResult<'_>, index: Box<usize>) {
        match result {
            Ok(message) => {
                let mut landed = self.landed.lock().expect("not poisoned");
                landed[*index] = Some((message.partition(), message.offset()));
            }
            Err((e, _)) => {
                eprintln!("test producer: delivery failed: {e}");
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Writes `records` in order (keyed, idempotent, acks=all) at `rate` records per second (0: as
/// fast as possible), waits for every acknowledgement, and returns where each one landed.
/// `message.timeout.ms` is long, so records written while the broker is down wait in the
/// producer and arrive once it is back (that is what a real producer does, too).
pub fn produce_blocking(
    bootstrap: &str,
    topic: &str,
    records: &[Record],
    rate: f64,
) -> Vec<(i32, i64)> {
    let landed: Landed = Arc::new(Mutex::new(vec![None; records.len()]));
    let producer: BaseProducer<Deliveries> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "240000")
        .set("queue.buffering.max.messages", "1000000")
        .create_with_context(Deliveries {
            landed: Arc::clone(&landed),
            failed: AtomicUsize::new(0),
        })
        .expect("test producer");
    let started = Instant::now();
    for (i, record) in records.iter().enumerate() {
        if rate > 0.0 {
            // Pacing, not synchronization: the stream is meant to take this long.
            let due = started + Duration::from_secs_f64(i as f64 / rate);
            while Instant::now() < due {
                producer.poll(Duration::from_millis(1));
            }
        }
        let mut base = BaseRecord::with_opaque_to(topic, Box::new(i))
            .key(record.key.as_str())
            .payload(record.payload.as_slice());
        if let Some(ct) = record.content_type {
            base = base.headers(OwnedHeaders::new().insert(Header {
                key: "content-type",
                value: Some(ct),
            }));
        }
        if let Some(p) = record.partition {
            base = base.partition(p);
        }
        loop {
            match producer.send(base) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    base = back;
                    producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => panic!("test producer: cannot enqueue: {e}"),
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer
        .flush(Duration::from_secs(240))
        .expect("test producer: flush");
    assert_eq!(
        producer.context().failed.load(Ordering::Relaxed),
        0,
        "every record must be delivered"
    );
    let landed = landed.lock().expect("not poisoned");
    landed
        .iter()
        .map(|l| l.expect("every record was acknowledged"))
        .collect()
}

/// [`produce_blocking`] on a blocking thread.
pub async fn produce(bootstrap: &str, topic: &str, records: Vec<Record>) -> Vec<(i32, i64)> {
    let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || produce_blocking(&bootstrap, &topic, &records, 0.0))
        .await
        .expect("producer thread")
}

/// [`produce_blocking`] at `rate` on a thread of its own, for streams that run while the test
/// does other things.
pub fn produce_in_background(
    bootstrap: &str,
    topic: &str,
    records: Vec<Record>,
    rate: f64,
) -> thread::JoinHandle<Vec<(i32, i64)>> {
    let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
    thread::spawn(move || produce_blocking(&bootstrap, &topic, &records, rate))
}

/// Every record of `topic` up to its high watermarks, read from the beginning, once at least
/// `at_least` are there (or the deadline passes).
pub fn read_topic(
    bootstrap: &str,
    topic: &str,
    at_least: usize,
    within: Duration,
) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("test-reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    let deadline = Instant::now() + within;
    loop {
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("metadata");
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        let mut ends = HashMap::new();
        let mut total = 0;
        for &p in &partitions {
            let (low, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .expect("watermarks");
            total += usize::try_from(high - low).expect("non-negative");
            if high > low {
                ends.insert(p, high);
            }
        }
        if total < at_least && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(100));
            continue;
        }
        let mut tpl = TopicPartitionList::new();
        for &p in ends.keys() {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .expect("partition");
        }
        consumer.assign(&tpl).expect("assign");
        let mut out = Vec::with_capacity(total);
        while !ends.is_empty() {
            assert!(
                Instant::now() < deadline + Duration::from_secs(30),
                "could not read {topic} to its end"
            );
            if let Some(result) = consumer.poll(Duration::from_millis(100)) {
                let message = result.expect("read a record");
                if ends
                    .get(&message.partition())
                    .is_some_and(|&end| message.offset() + 1 >= end)
                {
                    ends.remove(&message.partition());
                }
                out.push(message.detach());
            }
        }
        return out;
    }
}

// ---- a broker of the test's own, which it may stop and start again --------------------------

/// At most one private broker at a time: the machine has two cores, and each is a JVM.
static PRIVATE_BROKERS: Mutex<()> = Mutex::new(());

/// A real Kafka broker started by `scripts/kafka.sh start DIR` for one test; stopped (and its
/// folder removed) on drop.
pub struct PrivateBroker {
    /// Its run folder.
    dir: PathBuf,
    /// Its bootstrap address.
    pub bootstrap: String,
    _turn: std::sync::MutexGuard<'static, ()>,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka.sh")
}

fn run_script(args: &[&str]) -> String {
    // A private broker needs no secured listeners: their start costs time (certificates, two
    // more ports), and CI runs the tests with KAFKA_SECURITY=1 for the shared broker.
    let output = Command::new(script())
        .args(args)
        .env_remove("KAFKA_SECURITY")
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/kafka.sh");
    assert!(
        output.status.success(),
        "scripts/kafka.sh {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

impl PrivateBroker {
    /// Starts one (waits its turn if another test holds one).
    pub fn start() -> Self {
        let turn = PRIVATE_BROKERS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let dir = std::env::temp_dir().join(unique("permit-stats-broker"));
        let out = run_script(&["start", dir.to_str().expect("utf-8 path")]);
        let bootstrap = out
            .split_whitespace()
            .find_map(|w| w.strip_prefix("KAFKA_BOOTSTRAP="))
            .unwrap_or_else(|| panic!("no KAFKA_BOOTSTRAP in {out:?}"))
            .to_owned();
        Self {
            dir,
            bootstrap,
            _turn: turn,
        }
    }

    /// Stops the broker (SIGTERM, or SIGKILL with `kill`), keeping its data and ports.
    pub fn down(&self, kill: bool) {
        let dir = self.dir.to_str().expect("utf-8 path");
        if kill {
            run_script(&["down", "--kill", dir]);
        } else {
            run_script(&["down", dir]);
        }
    }

    /// Starts it again on the same ports with the same data; returns once it answers.
    pub fn up(&self) {
        run_script(&["up", self.dir.to_str().expect("utf-8 path")]);
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .arg("stop")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A fresh topic named `{name}-…` with `partitions` partitions, a temporary folder, and a token
/// file for [`CLIENTS`](super::workload::CLIENTS) in it: (topic, folder, token file, tokens by client).
pub async fn topic_and_tokens(
    bootstrap: &str,
    name: &str,
    partitions: i32,
) -> (String, TempDir, PathBuf, HashMap<String, String>) {
    let topic = unique(name);
    create_topic(bootstrap, &topic, partitions).await;
    let dir = TempDir::new(name);
    let (tokens_path, tokens) = write_tokens(&dir.0);
    (topic, dir, tokens_path, tokens)
}

/// Waits (off the async threads) for a [`produce_in_background`] writer to finish.
pub async fn join_writer(writer: thread::JoinHandle<Vec<(i32, i64)>>) {
    tokio::task::spawn_blocking(move || writer.join().expect("writer"))
        .await
        .expect("writer");
}
