//! The measuring halves of the end-to-end load benchmark that `benches/load.sh` drives (it starts
//! the broker, the service and `wrk`, and prints the results). Each subcommand prints one JSON
//! line:
//!
//! - `bare BROKERS TOPIC`: the raw limit of the consumer: a bare rdkafka `BaseConsumer` on a
//!   thread, configured like ingest's (same prefetch), assigned every partition from the
//!   beginning, polling and only counting records up to the high watermarks noted at start.
//! - `hyper ADDR BODY_FILE`: the floor of the HTTP front, the issue's "40-line hyper server": hyper
//!   1.x with its default settings, one `current_thread` runtime per core on `SO_REUSEPORT`
//!   listeners (the service's [`permit_stats::api::bind`]), reading each request's body and
//!   answering it with the bytes of `BODY_FILE` as `application/json`; no timeouts, limits,
//!   routing, token or metrics. Prints `{"listening":ADDR}` and serves until killed.
//! - `memory N`: resident memory per live permit, in process: RSS before and after applying N
//!   creates of distinct UUID permits (in ingest's batches of 4,096) to an empty projection.
//! - `freshness BROKERS TOPIC ADDR TOKEN RATE SECONDS`: produce→visible latency. Writes one create
//!   of a new permit of client `FRESH` at a steady rate, and polls the running service's stats
//!   request for `FRESH` over one keep-alive connection; an event is visible when the answer's
//!   total counts it. Latency = first answer that counts it - its send time. Beside it, at the
//!   same time and on the same records, a bare consumer (ingest's settings, from the topic's
//!   end) notes each record's arrival: `bare_p99_ms` is what Kafka itself takes.
//!
//! Under `cargo test` (no `--bench` argument) it does nothing, so the test suite stays fast.
//!
//! `cargo bench --bench e2e -- memory 1000000`

mod support;

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use permit_stats::{
    events::{Encoding, PermitEvent, pb},
    ingest,
    projection::Projection,
};
use prost::Message as _;
use rdkafka::{
    ClientConfig, Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
    message::{Header, OwnedHeaders},
    producer::{BaseProducer, BaseRecord, Producer},
};
use support::{created, uuid};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if !support::benchmarking() {
        eprintln!("e2e: measures only under `cargo bench` (see benches/load.sh)");
        return Ok(());
    }
    let arg = |i: usize| args.get(i).map(String::as_str).ok_or("missing argument");
    match arg(0)? {
        "bare" => bare(arg(1)?, arg(2)?),
        "hyper" => bare_hyper(arg(1)?.parse()?, arg(2)?),
        "memory" => memory(arg(1)?.parse()?),
        "freshness" => freshness(
            arg(1)?,
            arg(2)?,
            arg(3)?,
            arg(4)?,
            arg(5)?.parse()?,
            arg(6)?.parse()?,
        ),
        other => Err(format!("unknown subcommand {other}").into()),
    }
}

fn bare_hyper(addr: std::net::SocketAddr, body_file: &str) -> Result<()> {
    use http_body_util::{BodyExt as _, Full};
    use hyper::{Request, Response, body::Incoming, server::conn::http1, service::service_fn};

    let body = bytes::Bytes::from(std::fs::read(body_file)?);
    let cores = std::thread::available_parallelism()?;
    let listeners = permit_stats::api::bind(addr, cores)?;
    println!(r#"{{"listening":"{}"}}"#, listeners[0].local_addr()?);
    let workers: Vec<_> = listeners
        .into_iter()
        .map(|listener| {
            let body = body.clone();
            std::thread::spawn(move || -> std::io::Result<()> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    loop {
                        let (tcp, _) = listener.accept().await?;
                        tcp.set_nodelay(true)?;
                        let body = body.clone();
                        let answer = service_fn(move |request: Request<Incoming>| {
                            let body = body.clone();
                            async move {
                                request.into_body().collect().await?;
                                Response::builder()
                                    .header("content-type", "application/json")
                                    .body(Full::new(body))
                                    .map_err(Box::<dyn std::error::Error + Send + Sync>::from)
                            }
                        });
                        let io = hyper_util::rt::TokioIo::new(tcp);
                        tokio::spawn(http1::Builder::new().serve_connection(io, answer));
                    }
                })
            })
        })
        .collect();
    for worker in workers {
        worker.join().map_err(|_| "a worker panicked")??;
    }
    Ok(())
}

fn bare(brokers: &str, topic: &str) -> Result<()> {
    let started = Instant::now();
    let consumer: BaseConsumer =
        ingest::consumer_config(&permit_stats::kafka::KafkaSettings::plain(brokers))
            .set("client.id", "permit-stats-bare")
            .create()?;
    let timeout = Duration::from_secs(10);
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut assignment = TopicPartitionList::new();
    // Per partition: the next offset to see and the high watermark noted at start.
    let mut left: HashMap<i32, (i64, i64)> = HashMap::new();
    let mut target = 0i64;
    for p in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, timeout)?;
        assignment.add_partition_offset(topic, p, Offset::Beginning)?;
        target += high - low;
        if high > low {
            left.insert(p, (low, high));
        }
    }
    consumer.assign(&assignment)?;
    let mut records = 0u64;
    let mut bytes = 0u64;
    while !left.is_empty() {
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message?;
        records += 1;
        bytes += message.payload_len() as u64;
        if let Some((next, high)) = left.get_mut(&message.partition()) {
            *next = message.offset() + 1;
            if *next >= *high {
                left.remove(&message.partition());
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        r#"{{"bare_records":{records},"target":{target},"bytes":{bytes},"seconds":{seconds:.3},"rate":{:.0}}}"#,
        records as f64 / seconds
    );
    Ok(())
}

/// Resident set size of this process, in bytes.
fn rss() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .ok_or("no VmRSS")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()?;
    Ok(kb * 1024)
}

fn memory(permits: usize) -> Result<()> {
    let projection = Projection::new();
    // One client, 20 zones, 3 types: the counters are negligible, the permits are everything.
    let before = rss()?;
    let started = Instant::now();
    let mut batch: Vec<PermitEvent> = Vec::with_capacity(4_096);
    for i in 0..permits {
        let t = support::TYPES[i % 3];
        batch.push(created(
            "OC-TOMA",
            &uuid(i as u64),
            1,
            support::zone(i % 20),
            t,
        ));
        if batch.len() == 4_096 || i + 1 == permits {
            projection.apply_batch(&batch);
            batch.clear();
        }
    }
    drop(batch);
    let seconds = started.elapsed().as_secs_f64();
    let after = rss()?;
    let live: u64 = projection
        .query("OC-TOMA", None)
        .iter()
        .map(|r| r.total)
        .sum();
    assert_eq!(live as usize, permits);
    println!(
        r#"{{"permits":{permits},"rss_before":{before},"rss_after":{after},"bytes_per_permit":{:.1},"apply_seconds":{seconds:.2}}}"#,
        (after.saturating_sub(before)) as f64 / permits as f64
    );
    Ok(())
}

/// A minimal HTTP/1.1 client on one keep-alive connection: enough for one POST at a time.
struct Client {
    stream: BufReader<TcpStream>,
    request: Vec<u8>,
}

impl Client {
    fn new(addr: &str, token: &str) -> Result<Self> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        let body = format!(r#"{{"apiToken":"{token}"}}"#);
        let request = format!(
            "POST /api/FRESH/v1/permits/stats HTTP/1.1\r\nHost: {addr}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        Ok(Self {
            stream: BufReader::new(stream),
            request: request.into_bytes(),
        })
    }

    /// The sum of the totals in one stats answer.
    fn total(&mut self) -> Result<u64> {
        self.stream.get_mut().write_all(&self.request)?;
        let mut length = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            self.stream.read_line(&mut line)?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some(v) = line
                .to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_owned())
            {
                length = v.parse()?;
            }
        }
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body)?;
        let value: serde_json::Value = serde_json::from_slice(&body)?;
        Ok(value["data"]
            .as_array()
            .map(|rows| {
                rows.iter()
                    .filter_map(|r| r["total"].as_str()?.parse::<u64>().ok())
                    .sum()
            })
            .unwrap_or(0))
    }
}

fn freshness(
    brokers: &str,
    topic: &str,
    addr: &str,
    token: &str,
    rate: f64,
    seconds: f64,
) -> Result<()> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "0")
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .create()?;
    let mut client = Client::new(addr, token)?;
    // The baseline at the same moment: a bare consumer of the same topic, with ingest's
    // settings, noting when each record arrives.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let bare = spawn_bare_receiver(brokers, topic, std::sync::Arc::clone(&stop))?;
    let run = uuid(Instant::now().elapsed().as_nanos() as u64 ^ std::process::id() as u64);
    let send = |producer: &BaseProducer, id: &str| -> Result<()> {
        let mut event = created("FRESH", id, 1, "Lot 01".into(), "temp");
        event.occurred_at_ms = None;
        let value = pb::PermitEvent::from(&event).encode_to_vec();
        let headers = OwnedHeaders::new().insert(Header {
            key: "content-type",
            value: Some(Encoding::Protobuf.content_type()),
        });
        let record = BaseRecord::to(topic)
            .key(id.as_bytes())
            .payload(&value)
            .headers(headers);
        producer.send(record).map_err(|(e, _)| e)?;
        producer.poll(Duration::ZERO);
        Ok(())
    };
    // Warm-up: the producer's first record waits for metadata and its idempotence id; not
    // part of what is measured.
    let before = client.total()?;
    send(&producer, &format!("{}-warmup", &run[..23]))?;
    producer.flush(Duration::from_secs(10))?;
    let warm_deadline = Instant::now() + Duration::from_secs(10);
    while client.total()? <= before && Instant::now() < warm_deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let base = client.total()?;
    let n = (rate * seconds) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut sent: Vec<Instant> = Vec::with_capacity(n);
    let mut visible: Vec<Option<Duration>> = vec![None; n];
    let mut seen = 0usize;
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds + 10.0);
    while seen < n && Instant::now() < deadline {
        // Send what is due (a fixed schedule: a stall is followed by a burst, as from a producer).
        while sent.len() < n && started + interval * sent.len() as u32 <= Instant::now() {
            send(&producer, &format!("{}-{:012}", &run[..23], sent.len()))?;
            sent.push(Instant::now());
        }
        producer.poll(Duration::ZERO);
        let total = client.total()?.saturating_sub(base) as usize;
        let now = Instant::now();
        while seen < total.min(sent.len()) {
            visible[seen] = Some(now - sent[seen]);
            seen += 1;
        }
    }
    producer.flush(Duration::from_secs(10))?;
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let received = bare.join().map_err(|_| "the bare consumer panicked")??;
    let prefix = format!("{}-", &run[..23]);
    let mut bare_latencies: Vec<Duration> = received
        .iter()
        .filter_map(|(key, at)| {
            let i: usize = key.strip_prefix(&prefix)?.parse().ok()?;
            Some(at.checked_duration_since(*sent.get(i)?).unwrap_or_default())
        })
        .collect();
    let bare_missing = n.saturating_sub(bare_latencies.len());
    let mut latencies: Vec<Duration> = visible.into_iter().flatten().collect();
    let missing = n - latencies.len();
    latencies.sort_unstable();
    bare_latencies.sort_unstable();
    let pct = |l: &[Duration], p: f64| {
        l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1)))
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
    };
    println!(
        r#"{{"events":{n},"rate":{rate},"p50_ms":{:.2},"p90_ms":{:.2},"p99_ms":{:.2},"max_ms":{:.2},"not_seen":{missing},"bare_p50_ms":{:.2},"bare_p99_ms":{:.2},"bare_max_ms":{:.2},"bare_not_seen":{bare_missing}}}"#,
        pct(&latencies, 0.50),
        pct(&latencies, 0.90),
        pct(&latencies, 0.99),
        pct(&latencies, 1.0),
        pct(&bare_latencies, 0.50),
        pct(&bare_latencies, 0.99),
        pct(&bare_latencies, 1.0),
    );
    Ok(())
}

/// A bare consumer thread, ingest's settings, every partition of `topic` from its end: the
/// key and arrival time of each record until `stop`.
#[allow(clippy::type_complexity)]
fn spawn_bare_receiver(
    brokers: &str,
    topic: &str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Result<std::thread::JoinHandle<std::result::Result<Vec<(String, Instant)>, String>>> {
    let consumer: BaseConsumer =
        ingest::consumer_config(&permit_stats::kafka::KafkaSettings::plain(brokers))
            .set("client.id", "permit-stats-bare-fresh")
            .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut assignment = TopicPartitionList::new();
    for t in metadata.topics().iter().filter(|t| t.name() == topic) {
        for p in t.partitions() {
            assignment.add_partition_offset(topic, p.id(), Offset::End)?;
        }
    }
    consumer.assign(&assignment)?;
    Ok(std::thread::spawn(move || {
        let mut received = Vec::new();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            match consumer.poll(Duration::from_millis(50)) {
                Some(Ok(message)) => {
                    let at = Instant::now();
                    if let Some(key) = message.key() {
                        received.push((String::from_utf8_lossy(key).into_owned(), at));
                    }
                }
                Some(Err(e)) => return Err(e.to_string()),
                None => {}
            }
        }
        Ok(received)
    }))
}
