//! SIGTERM on a REAL Apache Kafka broker's service: new connections are refused at once, a
//! request in flight still gets its full, exact answer, the consumer thread stops and the process
//! exits 0; a request that never finishes holds the process no longer than the grace period.
//!
//! ```text
//! scripts/kafka.sh run -- cargo test --test it shutdown -- --nocapture
//! ```

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::TcpStream,
    time::{Duration, Instant},
};

use crate::support::{
    client::{converge, http},
    kafka::{bootstrap, delete_topic, produce, topic_and_tokens},
    service::Service,
    workload::{CLIENTS, Workload},
};

/// Opens a stats request that is in flight: head sent with `Expect: 100-continue`, and the
/// server's `100 Continue` read back, which hyper sends only once the handler reads the body.
fn open_in_flight_request(addr: &str, token: &str) -> (TcpStream, Vec<u8>) {
    let body = format!(r#"{{"apiToken":"{token}"}}"#).into_bytes();
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    write!(
        stream,
        "POST /api/{}/v1/permits/stats HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Accept: application/json\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        CLIENTS[0],
        body.len()
    )
    .expect("send the head");
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !seen.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).expect("read 100 Continue");
        assert_eq!(
            n,
            1,
            "closed before 100 Continue: {:?}",
            String::from_utf8_lossy(&seen)
        );
        seen.push(byte[0]);
    }
    assert!(
        seen.starts_with(b"HTTP/1.1 100"),
        "expected 100 Continue, got {:?}",
        String::from_utf8_lossy(&seen)
    );
    (stream, body)
}

/// Polls until a new connection to `addr` is refused.
fn wait_refused(addr: &str, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        match TcpStream::connect(addr) {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => return started.elapsed(),
            _ => {}
        }
        assert!(
            started.elapsed() < within,
            "new connections still accepted after {within:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// SIGTERM with a request in flight: new connections are refused at once, the in-flight request
/// still gets its full, exact answer, the consumer thread stops, and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_refuses_new_ones_and_exits_0() {
    let Some(bootstrap) = bootstrap() else {
        return;
    };
    let (topic, _dir, tokens_path, tokens) = topic_and_tokens(&bootstrap, "faults-term", 2).await;
    let mut workload = Workload::new(0x7E5, 300);
    produce(&bootstrap, &topic, workload.records(1_000, 0.0)).await;
    let http = http();
    let flags = ["--shutdown-grace", "10"];
    let mut service = Service::start(&bootstrap, &topic, &tokens_path, &flags);
    converge(&mut service, &http, &tokens, &workload, true).await;

    let (mut stream, body) = open_in_flight_request(&service.addr, &tokens[CLIENTS[0]]);
    let term = Instant::now();
    service.signal("TERM");
    let refused_after = wait_refused(&service.addr, Duration::from_secs(5));
    assert!(
        service.wait_exit(Duration::ZERO).is_none(),
        "the process must wait for the request in flight"
    );
    stream.write_all(&body).expect("send the body");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read the answer");
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = service.wait_exit(Duration::from_secs(10));
    let exited_after = term.elapsed();
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "the in-flight request is answered: {response}"
    );
    assert!(
        response.ends_with(&workload.model.body(CLIENTS[0], None)),
        "with the exact body: {response}"
    );
    assert!(status.is_some_and(|s| s.success()), "exit {status:?}");
    let log = service.log_text();
    assert!(
        log.contains("ingest stopped"),
        "the consumer thread stopped:\n{log}"
    );
    assert!(!log.contains("did not finish in time"), "{log}");
    eprintln!(
        "term: refused new connections {refused_after:?} after SIGTERM, answered the request in \
         flight, exited 0 {exited_after:?} after SIGTERM"
    );
    delete_topic(&bootstrap, &topic).await;
}

/// A request that never finishes cannot hold the process: SIGTERM exits 0 once the grace period
/// (2 s here) is over, plus the few seconds the consumer thread may take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_request_does_not_hold_shutdown_beyond_the_grace_period() {
    let Some(bootstrap) = bootstrap() else {
        return;
    };
    let (topic, _dir, tokens_path, tokens) = topic_and_tokens(&bootstrap, "faults-stuck", 1).await;
    let mut workload = Workload::new(0x57CC, 100);
    produce(&bootstrap, &topic, workload.records(200, 0.0)).await;
    let http = http();
    let flags = ["--shutdown-grace", "2", "--body-read-timeout", "60"];
    let mut service = Service::start(&bootstrap, &topic, &tokens_path, &flags);
    converge(&mut service, &http, &tokens, &workload, true).await;

    let (_stream, _body) = open_in_flight_request(&service.addr, &tokens[CLIENTS[0]]);
    let term = Instant::now();
    service.signal("TERM");
    let status = service.wait_exit(Duration::from_secs(2 + 3 + 3));
    let after = term.elapsed();
    assert!(
        status.is_some_and(|s| s.success()),
        "exit {status:?} {after:?} after SIGTERM"
    );
    assert!(
        after >= Duration::from_secs(2),
        "the request got its grace: {after:?}"
    );
    let log = service.log_text();
    assert!(log.contains("did not finish in time"), "{log}");
    assert!(
        log.contains("ingest stopped"),
        "the consumer thread stopped:\n{log}"
    );
    eprintln!("stuck: exited 0 {after:?} after SIGTERM");
    delete_topic(&bootstrap, &topic).await;
}
