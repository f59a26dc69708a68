//! One HTTP request in process: what the service's user-space work per request costs, from the
//! request's bytes to the answer's, without the kernel's TCP on loopback (the same in every
//! server, and the noisiest part of `benches/load.sh http` on a shared machine).
//!
//! A keep-alive HTTP/1.1 connection over an in-memory pipe (`tokio::io::duplex`), served by
//! hyper with the service's own connection settings ([`api::http1`]) on a single-threaded
//! runtime, as an HTTP worker serves one; the client writes the request wrk sends and reads the
//! whole answer, one request at a time. Compared, in the same run:
//!
//! - `stats_all_rows`, `stats_two_zones`: the stats request through [`Api`] (a 20-zone client,
//!   60 rows, about 3 KB, as in `load.sh http`);
//! - `live`: `GET /health/live`, which goes through the axum router;
//! - `hyper_same_bytes`: the floor, hyper alone answering every request with the very status,
//!   headers and body of `stats_all_rows`, prepared once. What `stats_all_rows` costs above it is
//!   the service's own work: token check, body parse, lookup, metrics, headers.
//!
//! A pipe has no vectored writes, so hyper copies the body into its buffer here (over TCP it
//! hands head and body to one `writev`): the same copy for every case.
//!
//! `cargo bench --bench http`

mod support;

use std::{convert::Infallible, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http_body_util::Full;
use hyper::{Request, Response, body::Bytes, service::service_fn};
use hyper_util::rt::TokioIo;
use permit_stats::{
    api::{self, Api, AppState, Limits, auth::Tokens},
    projection::Projection,
    status::IngestStatus,
    telemetry,
};
use sha2::{Digest as _, Sha256};
use support::{TYPES, created, size};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};

/// 50 characters, as `permit-stats token` issues them.
const TOKEN: &str = "bench-token-0123456789abcdefghijklmnopqrstuvwxyz-0";
const CLIENT: &str = "OC-TOMA";
const ZONES: usize = 20;

/// The 20-zone client: 60 (zone, type) rows with totals of three and four digits.
fn state() -> AppState {
    let projection = Projection::new();
    let per_row = size(1_500, 3);
    let mut events = Vec::new();
    for z in 0..ZONES {
        let zone = format!("Lot {:02}", z + 1);
        for permit_type in &TYPES[..3] {
            for n in 0..per_row + z * 20 {
                let id = format!("{zone}-{permit_type}-{n}");
                events.push(created(CLIENT, &id, 1, zone.clone(), permit_type));
            }
        }
    }
    projection.apply_batch(&events);
    let digest = hex::encode(Sha256::digest(TOKEN));
    let tokens = Tokens::parse(&format!(
        "[[tokens]]\nclient = \"{CLIENT}\"\nname = \"bench\"\npermissions = [\"permit-create\"]\nsha256 = \"{digest}\"\n"
    ))
    .expect("a valid token file");
    let status = Arc::new(IngestStatus::new());
    status.mark_ready();
    AppState {
        projection: Arc::new(projection),
        tokens: Arc::new(ArcSwap::from_pointee(tokens)),
        status,
        metrics: telemetry::install().expect("the only recorder of this process"),
    }
}

/// The request wrk sends (`benches/load.sh`'s stats.lua), as bytes.
fn post(zones: &str) -> Vec<u8> {
    let body = format!(r#"{{"apiToken":"{TOKEN}"{zones}}}"#);
    format!(
        "POST /api/{CLIENT}/v1/permits/stats HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: application/json\r\nAccept: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

const LIVE: &[u8] = b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n";

/// A client on one end of a pipe whose other end hyper serves.
struct Connection {
    pipe: DuplexStream,
    request: Vec<u8>,
    /// The whole answer's length (its `Date` changes, its length does not).
    answer_len: usize,
    buf: Vec<u8>,
}

impl Connection {
    /// Opens a connection served by `service` and learns the length of `request`'s answer.
    async fn open<S>(service: S, request: Vec<u8>) -> (Self, Vec<u8>)
    where
        S: hyper::service::HttpService<hyper::body::Incoming, ResBody = api::ApiBody>
            + Send
            + 'static,
        S::Future: Send,
    {
        let (mut pipe, server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(
            api::http1(&Limits::default()).serve_connection(TokioIo::new(server), service),
        );
        pipe.write_all(&request).await.expect("the server reads");
        let answer = read_answer(&mut pipe).await;
        let connection = Self {
            pipe,
            request,
            answer_len: answer.len(),
            buf: vec![0; answer.len()],
        };
        (connection, answer)
    }

    async fn exchange(&mut self) {
        self.pipe
            .write_all(&self.request)
            .await
            .expect("the server reads");
        self.pipe
            .read_exact(&mut self.buf[..self.answer_len])
            .await
            .expect("the whole answer");
    }
}

/// One whole answer: the head, then as many body bytes as its `content-length` says.
async fn read_answer(pipe: &mut DuplexStream) -> Vec<u8> {
    let mut answer = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = pipe.read(&mut chunk).await.expect("the server answers");
        assert!(n > 0, "the server closed the connection");
        answer.extend_from_slice(&chunk[..n]);
        let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length: "))
            .and_then(|n| n.trim().parse().ok())
            .expect("a content-length");
        if answer.len() >= end + 4 + length {
            return answer;
        }
    }
}

/// hyper alone, answering every request with `answer` (status, headers and body) as it is.
fn same_bytes(
    answer: Response<Bytes>,
) -> impl hyper::service::HttpService<
    hyper::body::Incoming,
    ResBody = api::ApiBody,
    Error = Infallible,
    Future = std::future::Ready<Result<Response<api::ApiBody>, Infallible>>,
> + Clone {
    let answer = Arc::new(answer);
    service_fn(move |_request: Request<hyper::body::Incoming>| {
        let mut response = Response::new(api::ApiBody::Left(Full::new(answer.body().clone())));
        *response.status_mut() = answer.status();
        *response.headers_mut() = answer.headers().clone();
        std::future::ready(Ok(response))
    })
}

/// The answer's head and body parsed back into a response (without its `date` and
/// `content-length`, which hyper writes itself).
fn parsed(answer: &[u8]) -> Response<Bytes> {
    let end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head");
    let head = std::str::from_utf8(&answer[..end]).expect("an ASCII head");
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    let mut response = Response::new(Bytes::copy_from_slice(&answer[end + 4..]));
    *response.status_mut() = status.try_into().expect("a status");
    for line in lines {
        let (name, value) = line.split_once(": ").expect("a header line");
        if !matches!(name, "date" | "content-length") {
            response.headers_mut().append(
                hyper::header::HeaderName::from_bytes(name.as_bytes()).expect("a name"),
                value.parse().expect("a value"),
            );
        }
    }
    response
}

/// The CPU time of this thread (client and server both run on it): unlike wall time, not
/// inflated when the hypervisor or other processes take the core away.
fn cpu_time() -> Duration {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(now.tv_sec).expect("positive"),
        u32::try_from(now.tv_nsec).expect("below a second"),
    )
}

fn http(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let api = Api::new(state(), &Limits::default());

    let ok = |answer: &[u8]| {
        assert!(
            answer.starts_with(b"HTTP/1.1 200 OK\r\n"),
            "{}",
            String::from_utf8_lossy(answer)
        );
    };
    // The floor answers with the stats request's very answer, taken through the service first.
    let (_, answer) = runtime.block_on(Connection::open(api.clone(), post("")));
    ok(&answer);
    let floor = same_bytes(parsed(&answer));
    eprintln!(
        "http: the stats answer is {} bytes ({} of body)",
        answer.len(),
        parsed(&answer).body().len()
    );

    let mut group = c.benchmark_group("http");
    group.throughput(Throughput::Elements(1));
    let two_zones = post(r#","zones":"Lot 01,Lot 02""#);
    for name in [
        "stats_all_rows",
        "stats_two_zones",
        "live",
        "hyper_same_bytes",
    ] {
        // Opened right before its run: an idle connection is closed at the head deadline.
        let (mut connection, first) = runtime.block_on(async {
            match name {
                "stats_all_rows" => Connection::open(api.clone(), post("")).await,
                "stats_two_zones" => Connection::open(api.clone(), two_zones.clone()).await,
                "live" => Connection::open(api.clone(), LIVE.to_vec()).await,
                _ => Connection::open(floor.clone(), post("")).await,
            }
        });
        ok(&first);
        if name == "hyper_same_bytes" {
            assert_eq!(
                first.len(),
                answer.len(),
                "the floor answers the same bytes"
            );
        }
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                runtime.block_on(async {
                    let started = cpu_time();
                    for _ in 0..iters {
                        connection.exchange().await;
                    }
                    cpu_time() - started
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, http);
criterion_main!(benches);
