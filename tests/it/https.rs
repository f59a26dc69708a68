//! HTTPS (`--tls-cert`, `--tls-key`): the API over TLS answers exactly as over HTTP, refuses
//! plain HTTP cleanly, agrees on `http/1.1` by ALPN, keeps the header read timeout and the
//! connection cap for handshakes, and takes a new certificate on change or SIGHUP (new
//! connections only) while a broken one is refused and the old one kept.
//!
//! A test CA (rcgen) signs the server certificates; the clients trust that CA alone. Most tests
//! run the real server in-process ([`server::serve_tls`]); the SIGHUP and start-up ones run the
//! binary with `--demo` (its embedded broker: no Kafka needed).

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use permit_stats::api::{
    Limits,
    tls::{self, Tls},
};
use reqwest::{Method, StatusCode, tls::TlsInfo};
use rustls_pki_types::CertificateDer;
use tokio_util::sync::CancellationToken;

use crate::support::{
    server::{self, TOKEN, closed_within, exchange, raw_stats_request, stats_body, statuses},
    service::{Service, assert_clean_exit},
    tls::{Leaf, Pki, request_over},
};

const LIVE: &str = "GET /health/live HTTP/1.1\r\nHost: localhost\r\n\r\n";

/// Polls `presented` (the certificate a new connection gets) until it is `want`.
async fn wait_presented(pki: &Pki, addr: SocketAddr, want: &CertificateDer<'_>, why: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while pki.presented(addr).await != *want {
        assert!(Instant::now() < deadline, "timed out waiting for {why}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Status, headers (less `date`) and body: what must be equal over HTTP and HTTPS.
async fn answer(response: reqwest::Response) -> (StatusCode, Vec<(String, String)>, String) {
    let status = response.status();
    let mut headers: Vec<(String, String)> = response
        .headers()
        .iter()
        .filter(|(name, _)| *name != "date")
        .map(|(name, value)| {
            (
                name.to_string(),
                value.to_str().expect("ASCII header").to_owned(),
            )
        })
        .collect();
    headers.sort();
    (status, headers, response.text().await.expect("body"))
}

#[tokio::test]
async fn the_stats_request_over_https_answers_exactly_as_over_http() {
    let (pki, first) = Pki::new();
    let fixture = server::fixture(true);
    let plain = server::serve(fixture.state.clone(), Limits::default()).await;
    let tls = Tls::load(&pki.files).expect("the test pair loads");
    let secure = server::serve_tls(fixture.state, Limits::default(), tls).await;
    let (http, https) = (reqwest::Client::new(), pki.reqwest());

    let stats = "/api/OC-TOMA/v1/permits/stats";
    let cases: [(Method, &str, String); 5] = [
        (
            Method::POST,
            stats,
            format!("{{\"apiToken\":\"{TOKEN}\",\"zones\":\"Lot 01,Lot 02\"}}"),
        ),
        (Method::POST, stats, stats_body(TOKEN)),
        (Method::POST, stats, stats_body("not-a-token")),
        (Method::POST, stats, "{\"apiToken\":".to_owned()),
        (Method::GET, "/health/ready", String::new()),
    ];
    for (method, path, body) in cases {
        let send = |client: &reqwest::Client, url: String| {
            client
                .request(method.clone(), url)
                .header("Content-Type", "application/json")
                .header("Origin", "https://example.test")
                .body(body.clone())
                .send()
        };
        let over_http = send(&http, plain.url(path)).await.expect("HTTP answer");
        let over_https = send(&https, secure.url(path)).await.expect("HTTPS answer");
        let presented = over_https
            .extensions()
            .get::<TlsInfo>()
            .and_then(TlsInfo::peer_certificate)
            .expect("reqwest shows the certificate")
            .to_vec();
        assert_eq!(presented, first.der.to_vec(), "the test CA's certificate");
        let (over_http, over_https) = (answer(over_http).await, answer(over_https).await);
        assert_eq!(over_https, over_http, "{method} {path} {body}");
    }
    let preflight = https
        .request(Method::OPTIONS, secure.url(stats))
        .header("Origin", "https://example.test")
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "content-type")
        .send()
        .await
        .expect("preflight answered");
    assert!(preflight.status().is_success(), "{preflight:?}");
    assert_eq!(preflight.headers()["access-control-allow-origin"], "*");
    let metrics = https
        .get(secure.url("/metrics"))
        .send()
        .await
        .expect("metrics answered");
    assert_eq!(metrics.status(), StatusCode::OK);
    assert!(
        metrics
            .text()
            .await
            .expect("body")
            .contains("permit_stats_http_requests_total"),
        "the requests over HTTPS are counted"
    );
    // The graceful shutdown works over TLS too.
    tokio::time::timeout(Duration::from_secs(10), secure.shut_down())
        .await
        .expect("the HTTPS server stops")
        .expect("no panic")
        .expect("no error");
}

#[tokio::test]
async fn plain_http_to_the_https_port_fails_cleanly_and_the_port_still_serves() {
    let (pki, _) = Pki::new();
    let tls = Tls::load(&pki.files).expect("the test pair loads");
    let secure = server::serve_tls(server::fixture(true).state, Limits::default(), tls).await;

    let started = Instant::now();
    let received = exchange(
        secure.addr,
        raw_stats_request(&stats_body(TOKEN)).as_bytes(),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed at once, not at a timeout"
    );
    assert!(
        statuses(&received).is_empty() && !received.starts_with(b"HTTP/"),
        "no HTTP answer in clear: {:?}",
        String::from_utf8_lossy(&received)
    );
    let url = format!("http://127.0.0.1:{}/health/live", secure.addr.port());
    assert!(
        reqwest::Client::new().get(url).send().await.is_err(),
        "an HTTP client gets an error, not an answer"
    );
    let live = pki
        .reqwest()
        .get(secure.url("/health/live"))
        .send()
        .await
        .expect("HTTPS still served");
    assert_eq!(live.status(), StatusCode::OK);
}

#[tokio::test]
async fn alpn_agrees_on_http_1_1_and_refuses_a_client_that_speaks_only_h2() {
    let (pki, _) = Pki::new();
    let tls = Tls::load(&pki.files).expect("the test pair loads");
    let secure = server::serve_tls(server::fixture(true).state, Limits::default(), tls).await;

    let mut both = pki
        .connect(secure.addr, &[b"h2", b"http/1.1"])
        .await
        .expect("handshake");
    assert_eq!(both.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(request_over(&mut both, LIVE).await.map(|a| a.0), Some(200));

    let mut none = pki.connect(secure.addr, &[]).await.expect("handshake");
    assert_eq!(none.get_ref().1.alpn_protocol(), None);
    assert_eq!(request_over(&mut none, LIVE).await.map(|a| a.0), Some(200));

    assert!(
        pki.connect(secure.addr, &[b"h2"]).await.is_err(),
        "no protocol in common"
    );
}

#[tokio::test]
async fn a_client_that_never_says_hello_is_cut_off_at_the_header_timeout_and_holds_a_slot() {
    let (pki, _) = Pki::new();
    let tls = Tls::load(&pki.files).expect("the test pair loads");
    let limits = Limits {
        header_read_timeout: Duration::from_secs(1),
        max_connections: 1,
        ..Limits::default()
    };
    let secure = server::serve_tls(server::fixture(true).state, limits, tls).await;

    let mut silent = tokio::net::TcpStream::connect(secure.addr)
        .await
        .expect("connect");
    let opened = Instant::now();
    // Let the server accept it (and so take the one slot) before the next client comes.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (https, url) = (pki.reqwest(), secure.url("/health/live"));
    let next = tokio::spawn(async move {
        let started = Instant::now();
        let status = https.get(url).send().await.map(|r| r.status());
        (status, started.elapsed())
    });

    let mut received = Vec::new();
    assert!(
        closed_within(&mut silent, Duration::from_secs(5), &mut received).await,
        "a silent TLS client is not held forever"
    );
    let held = opened.elapsed();
    assert!(
        held >= Duration::from_millis(900) && held < Duration::from_secs(4),
        "cut off at the 1 s header read timeout, after {held:?}"
    );
    let (status, waited) = next.await.expect("no panic");
    assert_eq!(
        status.expect("answered once the slot freed"),
        StatusCode::OK
    );
    assert!(
        waited >= Duration::from_millis(500),
        "the silent handshake held the only slot; the next client waited {waited:?}"
    );
}

#[tokio::test]
async fn a_changed_certificate_is_used_for_new_connections_and_a_broken_one_is_not() {
    let (pki, first) = Pki::new();
    let tls = Tls::load(&pki.files).expect("the test pair loads");
    let secure =
        server::serve_tls(server::fixture(true).state, Limits::default(), tls.clone()).await;
    let stop = CancellationToken::new();
    let reload = tls::spawn_reload(
        pki.files.clone(),
        tls,
        Some(Duration::from_millis(50)),
        stop.clone(),
    );
    assert_eq!(pki.presented(secure.addr).await, first.der);
    let mut open = pki
        .connect(secure.addr, &[b"http/1.1"])
        .await
        .expect("handshake");

    let second = pki.issue("permit-stats two", 2);
    pki.install(&second);
    wait_presented(&pki, secure.addr, &second.der, "the changed certificate").await;
    assert_eq!(
        open.get_ref().1.peer_certificates().expect("a certificate")[0],
        first.der,
        "an open connection keeps its certificate"
    );
    assert_eq!(
        request_over(&mut open, LIVE).await.map(|a| a.0),
        Some(200),
        "and goes on being served"
    );

    // A key that is not PEM, then a key of another certificate: both refused, the second
    // certificate stays for new connections.
    pki.write(
        &pki.files.key,
        "-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n",
    );
    let other = pki.issue("permit-stats other", 3);
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(pki.presented(secure.addr).await, second.der);
    }
    pki.write(&pki.files.key, &other.key_pem);
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(pki.presented(secure.addr).await, second.der);
    }
    // A good pair again is taken: the reload survived the bad ones.
    let third = pki.issue("permit-stats three", 4);
    pki.install(&third);
    wait_presented(&pki, secure.addr, &third.der, "the fixed pair").await;

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), reload)
        .await
        .expect("the reload task stops")
        .expect("no panic");
}

/// Waits (up to 30 s) until the binary answers `/health/live` over HTTPS.
async fn wait_https_live(service: &mut Service, pki: &Pki, port: u16) {
    let url = format!("https://localhost:{port}/health/live");
    let client = pki.reqwest();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        service.assert_running();
        if let Ok(response) = client.get(&url).send().await
            && response.status() == StatusCode::OK
        {
            return;
        }
        assert!(Instant::now() < deadline, "not live over HTTPS in 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_https_and_takes_a_new_certificate_on_sighup() {
    let (pki, first) = Pki::new();
    let (cert, key) = (
        pki.files.cert.to_str().expect("utf-8"),
        pki.files.key.to_str().expect("utf-8"),
    );
    // No polling: only SIGHUP can reload.
    let mut service = Service::serve(
        &[],
        &[
            "--demo",
            "--tls-cert",
            cert,
            "--tls-key",
            key,
            "--tls-poll-interval",
            "0",
        ],
        Some("info,librdkafka=warn"),
    );
    let addr: SocketAddr = service.addr.parse().expect("address");
    wait_https_live(&mut service, &pki, addr.port()).await;
    assert!(service.stdout().contains("curl -sS -X POST 'https://"));
    assert_eq!(pki.presented(addr).await, first.der);

    let second = pki.issue("permit-stats two", 2);
    pki.install(&second);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        pki.presented(addr).await,
        first.der,
        "no reload without SIGHUP at --tls-poll-interval 0"
    );
    service.signal("HUP");
    wait_presented(&pki, addr, &second.der, "the certificate after SIGHUP").await;

    pki.write(&pki.files.cert, "not a certificate\n");
    service.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !service
        .stderr()
        .contains("TLS certificate not reloaded; keeping the previous one")
    {
        assert!(Instant::now() < deadline, "the refusal is logged");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(pki.presented(addr).await, second.der, "the old pair kept");
    service.assert_running();
    assert_clean_exit(&mut service);
}

#[test]
fn the_tls_flags_come_in_pairs_and_a_bad_pair_stops_the_start() {
    let (pki, _) = Pki::new();
    let (cert, key) = (
        pki.files.cert.to_str().expect("utf-8"),
        pki.files.key.to_str().expect("utf-8"),
    );
    let mut alone = Service::serve(&[], &["--demo", "--tls-cert", cert], None);
    let status = alone.wait_exit(Duration::from_secs(15));
    assert!(status.is_some_and(|s| !s.success()), "{status:?}");
    assert!(alone.stderr().contains("--tls-key"), "{}", alone.stderr());

    // A certificate with the key of another one.
    let other = pki.issue("permit-stats other", 9);
    pki.install(&Leaf {
        key_pem: other.key_pem,
        ..pki.issue("permit-stats mismatched", 10)
    });
    let mut mismatched =
        Service::serve(&[], &["--demo", "--tls-cert", cert, "--tls-key", key], None);
    let status = mismatched.wait_exit(Duration::from_secs(15));
    assert!(status.is_some_and(|s| !s.success()), "{status:?}");
    let stderr = mismatched.stderr();
    assert!(
        stderr.contains("does not go with the certificate") && stderr.contains("server.key"),
        "{stderr}"
    );
    assert!(!stderr.contains("PRIVATE KEY"), "{stderr}");
}
