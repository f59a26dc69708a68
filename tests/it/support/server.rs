//! The fixture the HTTP tests share: the real API ([`api::Api`]) and the real server ([`api::serve`], with
//! its limits; [`api::serve_tls`] for HTTPS) on a loopback port, in front of a projection filled directly, so that no broker
//! is needed and what the tests claim is the HTTP behaviour. Also the raw-socket side of it:
//! reading an answer off a connection, and the bytes of a stats request.
//!
//! The metrics recorder is one per process, and every test of this binary shares the process:
//! [`metrics`] is the only place that obtains it.

use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock},
};

use arc_swap::ArcSwap;
use permit_stats::{
    api::{self, AppState, Limits, RateLimit, auth::Tokens, tls::Tls},
    events::{Change, PermitEvent},
    projection::Projection,
    status::IngestStatus,
    telemetry::{self, Metrics},
};
use tokio_util::sync::CancellationToken;

/// A token of OC-TOMA with `permit-create`.
pub const TOKEN: &str = "test-token-OC-TOMA-0123456789";
/// A second token of OC-TOMA with `permit-create` (for per-token limits).
pub const SECOND_TOKEN: &str = "test-token-OC-TOMA-second";
/// A token of OC-OTHER with `permit-create`.
pub const OTHER_CLIENT_TOKEN: &str = "test-token-OC-OTHER";
/// A token of OC-TOMA without `permit-create`.
pub const READ_ONLY_TOKEN: &str = "test-token-no-permit-create";
/// Every token the fixture accepts for something: none may ever be echoed.
pub const ALL_TOKENS: [&str; 4] = [TOKEN, SECOND_TOKEN, OTHER_CLIENT_TOKEN, READ_ONLY_TOKEN];
/// A permit type only OC-OTHER has: it must never show in an answer to anyone else.
pub const OTHER_CLIENT_MARKER: &str = "only-oc-other-has-this";

/// A created event.
pub fn created(client: &str, id: &str, zone: &str, permit_type: &str, at_ms: i64) -> PermitEvent {
    PermitEvent {
        client: client.into(),
        reference_id: id.into(),
        revision: None,
        occurred_at_ms: Some(at_ms),
        change: Change::Created {
            zone: zone.into(),
            permit_type: permit_type.into(),
        },
    }
}

/// The state the tests serve: a few permits of two clients and the four tokens.
pub struct Fixture {
    /// What the API serves.
    pub state: AppState,
    /// Readiness, to flip.
    pub status: Arc<IngestStatus>,
    /// The read model, to change under a running server.
    pub projection: Arc<Projection>,
}

/// The fixture; ready unless told otherwise.
pub fn fixture(ready: bool) -> Fixture {
    let projection = Arc::new(Projection::new());
    let mut events = Vec::new();
    for i in 0..4 {
        events.push(created(
            "OC-TOMA",
            &format!("s{i}"),
            "zone1",
            "standard",
            1_000,
        ));
    }
    for i in 0..35 {
        events.push(created("OC-TOMA", &format!("t{i}"), "zone1", "temp", 2_000));
    }
    events.push(created("OC-TOMA", "l1", "Lot 01", "temp", 3_000));
    events.push(created(
        "OC-TOMA",
        "l2",
        "Lot 02",
        "validator",
        1_795_923_044_250,
    ));
    events.push(created("OC-TOMA", "l3", "lot 01", "standard", 3_000));
    events.push(created("OC-OTHER", "o1", "zone1", "standard", 3_000));
    events.push(created(
        "OC-OTHER",
        "o2",
        "Lot 01",
        OTHER_CLIENT_MARKER,
        3_000,
    ));
    projection.apply_batch(&events);

    let mut file = String::new();
    for (token, client, permission) in [
        (TOKEN, "OC-TOMA", "permit-create"),
        (SECOND_TOKEN, "OC-TOMA", "permit-create"),
        (OTHER_CLIENT_TOKEN, "OC-OTHER", "permit-create"),
        (READ_ONLY_TOKEN, "OC-TOMA", "permit-read"),
    ] {
        let digest = sha256_hex(token);
        file.push_str(&format!(
            "[[tokens]]\nclient = \"{client}\"\nname = \"{client} test\"\npermissions = [\"{permission}\"]\nsha256 = \"{digest}\"\n"
        ));
    }
    let tokens = Tokens::parse(&file).expect("test token file is valid");

    let status = Arc::new(IngestStatus::new());
    if ready {
        status.mark_ready();
    }
    let state = AppState {
        projection: Arc::clone(&projection),
        tokens: Arc::new(ArcSwap::from_pointee(tokens)),
        status: Arc::clone(&status),
        metrics: metrics(),
    };
    Fixture {
        state,
        status,
        projection,
    }
}

/// The process's one metrics recorder, installed once for every test of this binary.
pub fn metrics() -> Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS
        .get_or_init(|| telemetry::install().expect("the only install in this process"))
        .clone()
}

/// The API's rate limit for a `--rate-limit` text such as `20/min` (burst: one period's worth).
pub fn rate_limit(text: &str) -> RateLimit {
    let flag: permit_stats::config::RateLimit = text.parse().expect("valid rate");
    RateLimit::new(flag.requests, flag.period)
}

/// SHA-256 of a token, as the token file holds it.
pub fn sha256_hex(token: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// A server on a loopback port; stops (gracefully) when dropped.
#[derive(Debug)]
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    /// `http` or `https`.
    pub scheme: &'static str,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Server {
    /// `http://<addr><path>`, or `https://localhost:<port><path>` over TLS (the name the
    /// test certificates are for).
    pub fn url(&self, path: &str) -> String {
        match self.scheme {
            "https" => format!("https://localhost:{}{path}", self.addr.port()),
            _ => format!("http://{}{path}", self.addr),
        }
    }

    /// Starts the graceful shutdown (SIGTERM's path in the binary); the returned task ends when
    /// the server has finished.
    pub fn shut_down(mut self) -> tokio::task::JoinHandle<std::io::Result<()>> {
        self.stop.cancel();
        self.task.take().expect("shut down once")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Serves `state` with `limits` through the production server, on port 0.
pub async fn serve(state: AppState, limits: Limits) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind port 0");
    let addr = listener.local_addr().expect("bound address");
    let stop = CancellationToken::new();
    let api = api::Api::new(state, &limits);
    let task = tokio::spawn(api::serve(listener, api, limits, stop.clone()));
    Server {
        addr,
        scheme: "http",
        stop,
        task: Some(task),
    }
}

/// [`serve`] over HTTPS ([`api::serve_tls`]) with the certificate `tls` presents.
pub async fn serve_tls(state: AppState, limits: Limits, tls: Tls) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind port 0");
    let addr = listener.local_addr().expect("bound address");
    let stop = CancellationToken::new();
    let api = api::Api::new(state, &limits);
    let task = tokio::spawn(api::serve_tls(listener, api, limits, tls, stop.clone()));
    Server {
        addr,
        scheme: "https",
        stop,
        task: Some(task),
    }
}

/// One HTTP/1.1 answer read off a raw connection.
#[derive(Debug)]
pub struct RawAnswer {
    /// The status code.
    pub status: u16,
    /// The head, lower-cased (status line and headers).
    pub head: String,
    /// The body.
    pub body: String,
}

/// Reads one answer (head, then `Content-Length` bytes of body) within `within`; `None` when the
/// connection closed or the deadline passed before a whole answer arrived.
pub async fn read_answer(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    within: std::time::Duration,
) -> Option<RawAnswer> {
    use tokio::io::AsyncReadExt as _;
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = Vec::new();
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                let status = head.get(9..12)?.parse().ok()?;
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + length]).into_owned();
                return Some(RawAnswer { status, head, body });
            }
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}

/// Waits up to `within` for the peer to close the connection; true when it did. Anything the
/// server sends meanwhile is returned through `received`.
pub async fn closed_within(
    stream: &mut tokio::net::TcpStream,
    within: std::time::Duration,
    received: &mut Vec<u8>,
) -> bool {
    use tokio::io::AsyncReadExt as _;
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(n)) => received.extend_from_slice(&chunk[..n]),
            Err(_) => return false,
        }
    }
}

/// Sends `bytes`, half-closes, and reads everything the server says until it closes.
pub async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // The server may close before reading everything (that is its right): ignore write errors.
    let _ = stream.write_all(bytes).await;
    let _ = stream.shutdown().await;
    let mut received = Vec::new();
    let within = std::time::Duration::from_secs(10);
    let _ = tokio::time::timeout(within, stream.read_to_end(&mut received)).await;
    received
}

/// Every status code in what the server sent.
pub fn statuses(received: &[u8]) -> Vec<u16> {
    let text = String::from_utf8_lossy(received);
    text.match_indices("HTTP/1.")
        .filter(|(at, _)| text.get(at + 8..at + 9) == Some(" "))
        .filter_map(|(at, _)| text.get(at + 9..at + 12)?.parse().ok())
        .collect()
}

/// The raw bytes of a stats request for OC-TOMA with `body`.
pub fn raw_stats_request(body: &str) -> String {
    format!(
        "POST /api/OC-TOMA/v1/permits/stats HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// The JSON body of a stats request with `token`.
pub fn stats_body(token: &str) -> String {
    format!("{{\"apiToken\":\"{token}\"}}")
}
