//! Slow, greedy and hostile clients against the real server (`api::serve`) on loopback: the head
//! and body read timeouts, the 64 KiB limit before the body is read, the connection cap, the
//! per-token rate limit, and the graceful shutdown that drains in-flight requests.
//!
//! The clients here are raw TCP sockets, since a well-behaved HTTP client cannot trickle bytes or
//! lie about its body's length.

use std::{
    num::NonZeroU32,
    time::{Duration, Instant},
};

use permit_stats::api::{Limits, RateLimit};
use reqwest::StatusCode;
use serde_json::Value;
use tokio::{io::AsyncWriteExt as _, net::TcpStream};

use crate::support::server::{
    self, OTHER_CLIENT_TOKEN, SECOND_TOKEN, TOKEN, raw_stats_request, read_answer, stats_body,
};

fn limits(header: Duration, body: Duration) -> Limits {
    Limits {
        header_read_timeout: header,
        body_read_timeout: body,
        ..Limits::default()
    }
}

async fn connect(addr: std::net::SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.expect("connect")
}

/// Sends a whole stats request on a fresh connection and reads the answer.
async fn ask(addr: std::net::SocketAddr, token: &str) -> server::RawAnswer {
    let mut stream = connect(addr).await;
    stream
        .write_all(raw_stats_request(&stats_body(token)).as_bytes())
        .await
        .expect("send");
    read_answer(&mut stream, Duration::from_secs(10))
        .await
        .expect("an answer")
}

fn error_code(answer: &server::RawAnswer) -> i64 {
    let body: Value = serde_json::from_str(&answer.body).expect("a JSON error body");
    body["ErrorCode"].as_i64().expect("a numeric ErrorCode")
}

/// Writes `bytes` one at a time, `every` apart, until the server closes the connection; returns
/// how long that took and whatever the server sent.
async fn trickle_until_closed(
    stream: &mut TcpStream,
    bytes: &[u8],
    every: Duration,
) -> (Option<Duration>, Vec<u8>) {
    let started = Instant::now();
    let mut received = Vec::new();
    for byte in bytes {
        if stream.write_all(&[*byte]).await.is_err() {
            return (Some(started.elapsed()), received);
        }
        if server::closed_within(stream, every, &mut received).await {
            return (Some(started.elapsed()), received);
        }
    }
    (None, received)
}

#[tokio::test]
async fn a_client_that_trickles_its_head_is_cut_off_and_so_is_an_idle_one() {
    let fixture = server::fixture(true);
    let server = server::serve(
        fixture.state,
        limits(Duration::from_secs(1), Duration::from_secs(30)),
    )
    .await;

    // 400 bytes at 10 per second would take 40 s; the server must hang up after about 1 s.
    let head = format!(
        "POST /api/OC-TOMA/v1/permits/stats HTTP/1.1\r\nHost: test\r\nX-Padding: {}\r\n\r\n",
        "p".repeat(300)
    );
    let mut slow = connect(server.addr).await;
    let (closed_after, received) =
        trickle_until_closed(&mut slow, head.as_bytes(), Duration::from_millis(100)).await;
    let closed_after = closed_after.expect("the trickling client was cut off");
    assert!(
        closed_after >= Duration::from_millis(900) && closed_after < Duration::from_secs(6),
        "cut off after {closed_after:?}, expected about the 1 s header timeout"
    );
    let text = String::from_utf8_lossy(&received);
    assert!(!text.starts_with("HTTP/1.1 5"), "no 5xx: {text}");

    // A connection that sends nothing at all holds its slot no longer.
    let mut idle = connect(server.addr).await;
    let started = Instant::now();
    assert!(
        server::closed_within(&mut idle, Duration::from_secs(6), &mut Vec::new()).await,
        "an idle connection is closed"
    );
    assert!(started.elapsed() >= Duration::from_millis(900));

    // Meanwhile a prompt client is served.
    assert_eq!(ask(server.addr, TOKEN).await.status, 200);
}

#[tokio::test]
async fn a_client_that_trickles_its_body_gets_408() {
    let fixture = server::fixture(true);
    let server = server::serve(
        fixture.state,
        limits(Duration::from_secs(30), Duration::from_secs(1)),
    )
    .await;
    let body = format!(
        "{{\"apiToken\":\"{TOKEN}\",\"zones\":\"{}\"}}",
        "z".repeat(200)
    );
    let request = raw_stats_request(&body);
    let (head, body) = request.split_at(request.find("\r\n\r\n").expect("a head") + 4);
    let mut slow = connect(server.addr).await;
    slow.write_all(head.as_bytes()).await.expect("send head");
    let started = Instant::now();
    let (closed_after, received) =
        trickle_until_closed(&mut slow, body.as_bytes(), Duration::from_millis(100)).await;
    let closed_after = closed_after.expect("the trickling client was cut off");
    assert!(
        closed_after >= Duration::from_millis(900) && closed_after < Duration::from_secs(6),
        "cut off after {closed_after:?} (started {started:?}), expected about the 1 s body timeout"
    );
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(text.contains(r#""ErrorCode":9408"#), "{text}");
}

#[tokio::test]
async fn an_oversized_body_is_refused_before_it_is_read() {
    let fixture = server::fixture(true);
    // A long body timeout: a 413 that only came after reading (or waiting for) the body would
    // take that long.
    let server = server::serve(
        fixture.state,
        limits(Duration::from_secs(30), Duration::from_secs(30)),
    )
    .await;

    // Declares 1 GiB, sends 20 bytes: the answer comes at once, without waiting for the rest.
    let started = Instant::now();
    let mut stream = connect(server.addr).await;
    stream
        .write_all(
            b"POST /api/OC-TOMA/v1/permits/stats HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n{\"apiToken\":\"abcdef",
        )
        .await
        .expect("send");
    let answer = read_answer(&mut stream, Duration::from_secs(5))
        .await
        .expect("an answer before the body");
    assert_eq!((answer.status, error_code(&answer)), (413, 9030));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(answer.head.contains("connection: close"), "{}", answer.head);

    // The same with `Expect: 100-continue`: refused without inviting the body.
    let mut stream = connect(server.addr).await;
    stream
        .write_all(
            b"POST /api/OC-TOMA/v1/permits/stats HTTP/1.1\r\nHost: test\r\nContent-Length: 1073741824\r\nExpect: 100-continue\r\n\r\n",
        )
        .await
        .expect("send");
    let answer = read_answer(&mut stream, Duration::from_secs(5))
        .await
        .expect("an answer");
    assert_eq!(answer.status, 413, "{}", answer.head);

    // A chunked body of unknown length is cut off once it passes 64 KiB, not read to the end:
    // 64 chunks of 4 KiB are sent, then the client stalls; the answer must not wait for more.
    let mut stream = connect(server.addr).await;
    stream
        .write_all(b"POST /api/OC-TOMA/v1/permits/stats HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .expect("send head");
    let chunk = format!("1000\r\n{}\r\n", "x".repeat(4096));
    for _ in 0..17 {
        stream
            .write_all(chunk.as_bytes())
            .await
            .expect("send chunk");
    }
    let answer = read_answer(&mut stream, Duration::from_secs(5))
        .await
        .expect("an answer while the client stalls");
    assert_eq!((answer.status, error_code(&answer)), (413, 9030));
}

#[tokio::test]
async fn connections_over_the_cap_wait_for_a_free_slot() {
    let fixture = server::fixture(true);
    let server = server::serve(
        fixture.state,
        Limits {
            max_connections: 2,
            ..limits(Duration::from_secs(30), Duration::from_secs(30))
        },
    )
    .await;
    // Two keep-alive connections, each served once and left open: both slots taken.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = connect(server.addr).await;
        stream
            .write_all(raw_stats_request(&stats_body(TOKEN)).as_bytes())
            .await
            .expect("send");
        let answer = read_answer(&mut stream, Duration::from_secs(10)).await;
        assert_eq!(answer.expect("served").status, 200);
        held.push(stream);
    }
    // A third client connects (the kernel's backlog takes it) but is not served...
    let mut third = connect(server.addr).await;
    third
        .write_all(raw_stats_request(&stats_body(TOKEN)).as_bytes())
        .await
        .expect("send");
    assert!(
        read_answer(&mut third, Duration::from_millis(700))
            .await
            .is_none(),
        "a third connection is not served while two are open"
    );
    // ...until one of the two closes; then it is, without an error.
    drop(held.pop());
    let answer = read_answer(&mut third, Duration::from_secs(10))
        .await
        .expect("served once a slot is free");
    assert_eq!(answer.status, 200);
}

fn rate(text: &str, burst: u32) -> Option<RateLimit> {
    Some(server::rate_limit(text).with_burst(NonZeroU32::new(burst).expect("non-zero")))
}

#[tokio::test]
async fn a_token_over_its_rate_gets_429_and_other_tokens_do_not_notice() {
    let fixture = server::fixture(true);
    let server = server::serve(
        fixture.state,
        Limits {
            rate_limit: rate("5/min", 5),
            ..Limits::default()
        },
    )
    .await;
    let http = reqwest::Client::new();
    let send = {
        let (http, base) = (http.clone(), server.url(""));
        move |token: &'static str, client: &'static str| {
            http.post(format!("{base}/api/{client}/v1/permits/stats"))
                .header("Content-Type", "application/json")
                .header("Origin", "https://integrator.example")
                .body(stats_body(token))
                .send()
        }
    };
    for _ in 0..5 {
        assert_eq!(
            send(TOKEN, "OC-TOMA").await.expect("answered").status(),
            200
        );
    }
    // The flood: four clients keep sending with the spent token...
    let floods: Vec<_> = (0..4)
        .map(|_| {
            let send = send.clone();
            tokio::spawn(async move {
                let mut answers = Vec::new();
                for _ in 0..50 {
                    let response = send(TOKEN, "OC-TOMA").await.expect("answered");
                    let status = response.status();
                    let retry_after = response
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok());
                    let exposed = response
                        .headers()
                        .get("access-control-expose-headers")
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|v| v.to_ascii_lowercase().contains("retry-after"));
                    let body: Value = response.json().await.expect("JSON error");
                    answers.push((status, retry_after, exposed, body["ErrorCode"].clone()));
                }
                answers
            })
        })
        .collect();
    // ...while another token of the same client, and a token of another client, are served
    // from their own budgets.
    for _ in 0..5 {
        assert_eq!(
            send(SECOND_TOKEN, "OC-TOMA")
                .await
                .expect("answered")
                .status(),
            200
        );
        assert_eq!(
            send(OTHER_CLIENT_TOKEN, "OC-OTHER")
                .await
                .expect("answered")
                .status(),
            200
        );
    }
    for flood in floods {
        for (status, retry_after, exposed, code) in flood.await.expect("flood ran") {
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
            let retry_after = retry_after.expect("Retry-After in whole seconds");
            assert!((1..=12).contains(&retry_after), "Retry-After {retry_after}");
            assert!(exposed, "a page can read Retry-After");
            assert_eq!(code, 9429);
        }
    }
    // A refused token is refused for what it is, and counted against no one.
    let wrong = send("no-such-token", "OC-TOMA").await.expect("answered");
    assert_eq!(wrong.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_rate_limited_token_is_served_again_after_retry_after() {
    let fixture = server::fixture(true);
    let server = server::serve(
        fixture.state,
        Limits {
            rate_limit: rate("2/s", 2),
            ..Limits::default()
        },
    )
    .await;
    let mut refused = None;
    for _ in 0..10 {
        let answer = ask(server.addr, TOKEN).await;
        if answer.status == 429 {
            refused = Some(answer);
            break;
        }
    }
    let refused = refused.expect("a burst of 10 passes a 2/s limit");
    assert_eq!(error_code(&refused), 9429);
    assert!(refused.head.contains("retry-after: 1"), "{}", refused.head);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let status = ask(server.addr, TOKEN).await.status;
        if status == 200 {
            break;
        }
        assert_eq!(status, 429);
        assert!(Instant::now() < deadline, "still refused after Retry-After");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_shutdown_finishes_the_request_in_flight_and_refuses_new_connections() {
    let fixture = server::fixture(true);
    let server = server::serve(
        fixture.state,
        limits(Duration::from_secs(30), Duration::from_secs(30)),
    )
    .await;
    let addr = server.addr;
    let body = stats_body(TOKEN);
    let mut in_flight = connect(addr).await;
    in_flight
        .write_all(
            format!(
                "POST /api/OC-TOMA/v1/permits/stats HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .expect("send head");
    // `100 Continue` comes when the handler starts reading the body: the request is in flight.
    let go_on = read_answer(&mut in_flight, Duration::from_secs(10)).await;
    assert_eq!(go_on.map(|a| a.status), Some(100));

    let stopped = server.shut_down();
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting after shutdown");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    in_flight
        .write_all(body.as_bytes())
        .await
        .expect("send body");
    let answer = read_answer(&mut in_flight, Duration::from_secs(10))
        .await
        .expect("the in-flight request is answered");
    assert_eq!(answer.status, 200);
    assert!(answer.body.starts_with(r#"{"data":["#), "{}", answer.body);
    tokio::time::timeout(Duration::from_secs(10), stopped)
        .await
        .expect("the server stops once drained")
        .expect("server task")
        .expect("server ran cleanly");
}

/// The head deadline runs from each answer, not from the connection's start: a keep-alive client
/// that keeps asking is served for as long as it likes, and one that falls silent after an
/// answer is let go one deadline later.
#[tokio::test]
async fn a_keep_alive_client_is_served_while_it_asks_and_let_go_once_it_falls_silent() {
    let fixture = server::fixture(true);
    let server = server::serve(
        fixture.state,
        limits(Duration::from_secs(1), Duration::from_secs(30)),
    )
    .await;
    let mut client = connect(server.addr).await;
    let request = raw_stats_request(&stats_body(TOKEN));
    // Eight requests 400 ms apart: 3.2 s on one connection, three deadlines' worth.
    let started = Instant::now();
    for i in 0..8 {
        client.write_all(request.as_bytes()).await.expect("send");
        let answer = read_answer(&mut client, Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("request {i} answered on the same connection"));
        assert_eq!(answer.status, 200, "request {i}");
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert!(started.elapsed() > Duration::from_secs(3));

    let silent = Instant::now();
    assert!(
        server::closed_within(&mut client, Duration::from_secs(6), &mut Vec::new()).await,
        "a silent keep-alive connection is closed"
    );
    let after = silent.elapsed();
    // The last answer came 400 ms before the silence was timed.
    assert!(
        after >= Duration::from_millis(500) && after < Duration::from_secs(3),
        "closed {after:?} into the silence, expected about 0.6 s"
    );
}
