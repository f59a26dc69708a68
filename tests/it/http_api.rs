//! The HTTP contract of spec/stats-api.md, over real HTTP on loopback: every error row, the zone
//! filter rules, sorting, string totals, freshness headers, CORS and the body limit.
//!
//! The app runs in-process on port 0 with a projection filled directly, so these tests need no
//! broker; what they claim is the HTTP behaviour. Kafka behaviour is in `kafka_e2e.rs`.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::Arc,
    time::Duration,
};

use permit_stats::{
    api::Limits,
    events::{Change, PermitEvent},
    projection::Projection,
    status::IngestStatus,
};
use reqwest::{Client, Method, StatusCode};
use serde_json::{Value, json};

use crate::support::server::{self, OTHER_CLIENT_TOKEN, READ_ONLY_TOKEN, Server, TOKEN, created};

struct TestApp {
    addr: SocketAddr,
    status: Arc<IngestStatus>,
    projection: Arc<Projection>,
    http: Client,
    _server: Server,
}

/// Starts the production server on port 0 with the shared fixture; ready unless told otherwise.
async fn start(ready: bool) -> TestApp {
    let fixture = server::fixture(ready);
    let server = server::serve(fixture.state, Limits::default()).await;
    TestApp {
        addr: server.addr,
        status: fixture.status,
        projection: fixture.projection,
        http: Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("http client"),
        _server: server,
    }
}

impl TestApp {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .header("Content-Type", "application/json")
            .header("Accept", "application/json")
            .body(body)
            .send()
            .await
            .expect("request is answered")
    }

    async fn stats(&self, body: Value) -> reqwest::Response {
        self.post_raw("/api/OC-TOMA/v1/permits/stats", body.to_string())
            .await
    }
}

/// Status, ErrorCode, and the whole error body (which must never echo the token).
async fn error_of(response: reqwest::Response) -> (StatusCode, i64, String) {
    let status = response.status();
    assert_eq!(
        response.headers()["content-type"],
        "application/json",
        "errors are JSON"
    );
    let text = response.text().await.expect("body");
    let body: Value = serde_json::from_str(&text).expect("error body is JSON");
    let keys: Vec<&String> = body.as_object().expect("an object").keys().collect();
    assert_eq!(keys, ["ErrorCode", "ErrorMessage"], "vendor's error shape");
    assert!(body["ErrorMessage"].is_string());
    (
        status,
        body["ErrorCode"].as_i64().expect("numeric code"),
        text,
    )
}

#[tokio::test]
async fn stats_are_sorted_string_totals_with_freshness_headers() {
    let app = start(true).await;
    let response = app.stats(json!({"apiToken": TOKEN})).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.headers()["x-stats-lag"], "0");
    assert_eq!(
        response.headers()["x-stats-as-of"],
        "2026-11-29T03:30:44.25Z",
        "the newest event applied to this client"
    );
    assert_eq!(
        response.text().await.expect("body"),
        concat!(
            r#"{"data":[{"type":"temp","zone":"Lot 01","total":"1"},"#,
            r#"{"type":"validator","zone":"Lot 02","total":"1"},"#,
            r#"{"type":"standard","zone":"lot 01","total":"1"},"#,
            r#"{"type":"standard","zone":"zone1","total":"4"},"#,
            r#"{"type":"temp","zone":"zone1","total":"35"}]}"#
        )
    );
}

#[tokio::test]
async fn zone_filter_trims_drops_empties_and_duplicates_and_is_case_sensitive() {
    let app = start(true).await;
    let body = |zones: Value| app.stats(json!({"apiToken": TOKEN, "zones": zones}));
    let filtered = body(json!(" Lot 02 ,, Lot 01,Lot 01 ,Nowhere,")).await;
    assert_eq!(filtered.status(), StatusCode::OK);
    assert_eq!(
        filtered.text().await.expect("body"),
        r#"{"data":[{"type":"temp","zone":"Lot 01","total":"1"},{"type":"validator","zone":"Lot 02","total":"1"}]}"#
    );
    let lower = body(json!("lot 01")).await.text().await.expect("body");
    assert_eq!(
        lower,
        r#"{"data":[{"type":"standard","zone":"lot 01","total":"1"}]}"#
    );
    let everything = app
        .stats(json!({"apiToken": TOKEN}))
        .await
        .text()
        .await
        .expect("body");
    for blank in [json!(null), json!(""), json!("  , ,")] {
        assert_eq!(
            body(blank).await.text().await.expect("body"),
            everything,
            "absent, null or blank means every zone"
        );
    }
    let unknown = body(json!("Nope,Also nope")).await;
    assert_eq!(unknown.status(), StatusCode::OK);
    assert_eq!(unknown.text().await.expect("body"), r#"{"data":[]}"#);
}

#[tokio::test]
async fn a_request_sees_only_its_own_clients_permits() {
    let app = start(true).await;
    let response = app
        .post_raw(
            "/api/OC-OTHER/v1/permits/stats",
            json!({"apiToken": OTHER_CLIENT_TOKEN}).to_string(),
        )
        .await;
    assert_eq!(
        response.text().await.expect("body"),
        r#"{"data":[{"type":"only-oc-other-has-this","zone":"Lot 01","total":"1"},{"type":"standard","zone":"zone1","total":"1"}]}"#
    );
    // A valid token of a client with no permits yet: an empty answer, not an error.
    for (id, zone, permit_type) in [
        ("o1", "zone1", "standard"),
        ("o2", "Lot 01", server::OTHER_CLIENT_MARKER),
    ] {
        app.projection.apply(&PermitEvent {
            change: Change::Deleted,
            ..created("OC-OTHER", id, zone, permit_type, 4_000)
        });
    }
    let response = app
        .post_raw(
            "/api/OC-OTHER/v1/permits/stats",
            json!({"apiToken": OTHER_CLIENT_TOKEN}).to_string(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.expect("body"), r#"{"data":[]}"#);
}

#[tokio::test]
async fn every_error_row_of_the_contract() {
    let app = start(true).await;
    let long_token = "a".repeat(51);
    let cases: Vec<(&str, String, StatusCode, i64)> = vec![
        // 9000: client code missing or blank.
        (
            "/api//v1/permits/stats",
            json!({"apiToken": TOKEN}).to_string(),
            StatusCode::BAD_REQUEST,
            9000,
        ),
        (
            "/api/%20/v1/permits/stats",
            json!({"apiToken": TOKEN}).to_string(),
            StatusCode::BAD_REQUEST,
            9000,
        ),
        // 9001: apiToken missing, null or empty.
        (
            "/api/OC-TOMA/v1/permits/stats",
            json!({}).to_string(),
            StatusCode::UNAUTHORIZED,
            9001,
        ),
        (
            "/api/OC-TOMA/v1/permits/stats",
            json!({"apiToken": null}).to_string(),
            StatusCode::UNAUTHORIZED,
            9001,
        ),
        (
            "/api/OC-TOMA/v1/permits/stats",
            json!({"apiToken": ""}).to_string(),
            StatusCode::UNAUTHORIZED,
            9001,
        ),
        // 9002: unknown, lacking permit-create, or another client's token.
        (
            "/api/OC-TOMA/v1/permits/stats",
            json!({"apiToken": "not-a-known-token"}).to_string(),
            StatusCode::FORBIDDEN,
            9002,
        ),
        (
            "/api/OC-TOMA/v1/permits/stats",
            json!({"apiToken": READ_ONLY_TOKEN}).to_string(),
            StatusCode::FORBIDDEN,
            9002,
        ),
        (
            "/api/OC-TOMA/v1/permits/stats",
            json!({"apiToken": OTHER_CLIENT_TOKEN}).to_string(),
            StatusCode::FORBIDDEN,
            9002,
        ),
        (
            "/api/OC-OTHER/v1/permits/stats",
            json!({"apiToken": TOKEN}).to_string(),
            StatusCode::FORBIDDEN,
            9002,
        ),
        // 9003: not JSON, not an object, a field of the wrong type.
        (
            "/api/OC-TOMA/v1/permits/stats",
            "{\"apiToken\":".into(),
            StatusCode::BAD_REQUEST,
            9003,
        ),
        (
            "/api/OC-TOMA/v1/permits/stats",
            String::new(),
            StatusCode::BAD_REQUEST,
            9003,
        ),
        (
            "/api/OC-TOMA/v1/permits/stats",
            json!([TOKEN, "zone1"]).to_string(),
            StatusCode::BAD_REQUEST,
            9003,
        ),
        (
            "/api/OC-TOMA/v1/permits/stats",
            json!("apiToken").to_string(),
            StatusCode::BAD_REQUEST,
            9003,
        ),
        (
            "/api/OC-TOMA/v1/permits/stats",
            json!({"apiToken": 12345}).to_string(),
            StatusCode::BAD_REQUEST,
            9003,
        ),
        (
            "/api/OC-TOMA/v1/permits/stats",
            json!({"apiToken": TOKEN, "zones": ["zone1"]}).to_string(),
            StatusCode::BAD_REQUEST,
            9003,
        ),
        // 9030: a field longer than its limit.
        (
            "/api/OC-TOMA/v1/permits/stats",
            json!({"apiToken": long_token}).to_string(),
            StatusCode::BAD_REQUEST,
            9030,
        ),
        (
            "/api/OC-TOMA/v1/permits/stats",
            json!({"apiToken": TOKEN, "zones": "z".repeat(8 * 1024 + 1)}).to_string(),
            StatusCode::BAD_REQUEST,
            9030,
        ),
        (
            "/api/OC-TOMA/v1/permits/stats",
            json!({"apiToken": TOKEN, "zones": vec!["z"; 1001].join(",")}).to_string(),
            StatusCode::BAD_REQUEST,
            9030,
        ),
        // 9033: characters outside the token's alphabet.
        (
            "/api/OC-TOMA/v1/permits/stats",
            json!({"apiToken": "bad token!"}).to_string(),
            StatusCode::BAD_REQUEST,
            9033,
        ),
        (
            "/api/OC-TOMA/v1/permits/stats",
            json!({"apiToken": "tökén"}).to_string(),
            StatusCode::BAD_REQUEST,
            9033,
        ),
        // 413: body larger than 64 KiB.
        (
            "/api/OC-TOMA/v1/permits/stats",
            format!(
                "{{\"apiToken\":\"{TOKEN}\",\"pad\":\"{}\"}}",
                "x".repeat(64 * 1024)
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
            9030,
        ),
        // 404: unknown paths, same error shape.
        (
            "/api/OC-TOMA/v2/permits/stats",
            json!({"apiToken": TOKEN}).to_string(),
            StatusCode::NOT_FOUND,
            9404,
        ),
        ("/nothing/here", String::new(), StatusCode::NOT_FOUND, 9404),
    ];
    for (path, body, status, code) in cases {
        let (got_status, got_code, text) = error_of(app.post_raw(path, body.clone()).await).await;
        let shown: String = body.chars().take(80).collect();
        assert_eq!(
            (got_status, got_code),
            (status, code),
            "POST {path} {shown}"
        );
        assert!(!text.contains(TOKEN), "the token is never echoed: {text}");
    }
}

#[tokio::test]
async fn exactly_64_kib_is_accepted() {
    let app = start(true).await;
    let head = format!("{{\"apiToken\":\"{TOKEN}\",\"pad\":\"");
    let pad = "x".repeat(64 * 1024 - head.len() - 2);
    let body = format!("{head}{pad}\"}}");
    assert_eq!(body.len(), 64 * 1024);
    assert_eq!(
        app.post_raw("/api/OC-TOMA/v1/permits/stats", body)
            .await
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn other_methods_get_405_with_allow() {
    let app = start(true).await;
    for method in [Method::GET, Method::PUT, Method::DELETE, Method::PATCH] {
        let response = app
            .http
            .request(method.clone(), app.url("/api/OC-TOMA/v1/permits/stats"))
            .send()
            .await
            .expect("answered");
        assert_eq!(response.headers()["allow"], "POST", "{method}");
        let (status, code, _) = error_of(response).await;
        assert_eq!(
            (status, code),
            (StatusCode::METHOD_NOT_ALLOWED, 9405),
            "{method}"
        );
    }
}

#[tokio::test]
async fn not_ready_answers_503_with_retry_after_then_serves() {
    let app = start(false).await;
    let response = app.stats(json!({"apiToken": TOKEN})).await;
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(error_of(response).await.0, StatusCode::SERVICE_UNAVAILABLE);
    let ready = app
        .http
        .get(app.url("/health/ready"))
        .send()
        .await
        .expect("answered");
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let progress: Value = ready.json().await.expect("progress is JSON");
    assert_eq!(progress["ready"], false);
    assert!(progress["percent"].is_number() && progress["target"].is_number());
    // Authentication comes first: a bad token is refused even before ready.
    let (status, code, _) = error_of(app.stats(json!({"apiToken": "nope"})).await).await;
    assert_eq!((status, code), (StatusCode::FORBIDDEN, 9002));

    app.status.mark_ready();
    assert_eq!(
        app.stats(json!({"apiToken": TOKEN})).await.status(),
        StatusCode::OK
    );
    let ready = app
        .http
        .get(app.url("/health/ready"))
        .send()
        .await
        .expect("answered");
    assert_eq!(ready.status(), StatusCode::OK);
}

#[tokio::test]
async fn cors_preflight_and_headers_let_a_browser_read_the_answer() {
    let app = start(true).await;
    let preflight = app
        .http
        .request(Method::OPTIONS, app.url("/api/OC-TOMA/v1/permits/stats"))
        .header("Origin", "https://integrator.example")
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "content-type,accept")
        .send()
        .await
        .expect("answered");
    assert!(preflight.status().is_success(), "{}", preflight.status());
    let headers = preflight.headers();
    assert_eq!(headers["access-control-allow-origin"], "*");
    assert!(
        headers["access-control-allow-methods"]
            .to_str()
            .expect("ascii")
            .contains("POST")
    );
    assert!(
        headers["access-control-allow-headers"]
            .to_str()
            .expect("ascii")
            .to_ascii_lowercase()
            .contains("content-type")
    );

    let response = app
        .http
        .post(app.url("/api/OC-TOMA/v1/permits/stats"))
        .header("Origin", "https://integrator.example")
        .header("Content-Type", "application/json")
        .body(json!({"apiToken": TOKEN, "zones": "Lot 01,Lot 02"}).to_string())
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    let exposed = response.headers()["access-control-expose-headers"]
        .to_str()
        .expect("ascii")
        .to_ascii_lowercase();
    assert!(exposed.contains("x-stats-as-of") && exposed.contains("x-stats-lag"));
    // Errors carry CORS too, so a page can read why it was refused.
    let refused = app
        .http
        .post(app.url("/api/OC-TOMA/v1/permits/stats"))
        .header("Origin", "https://integrator.example")
        .body("{}")
        .send()
        .await
        .expect("answered");
    assert_eq!(refused.headers()["access-control-allow-origin"], "*");
}

/// The vendor's raw HTTP/1.1 request, byte for byte, including its placeholder zones text.
#[tokio::test]
async fn the_vendors_raw_request_works_unchanged() {
    let app = start(true).await;
    let body = format!("{{\"apiToken\": \"{TOKEN}\", \"zones\": \"string\"}}");
    let request = format!(
        "POST /api/OC-TOMA/v1/permits/stats HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nContent-Type: application/json\r\nCache-Control: no-cache\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        app.addr,
        body.len()
    );
    let addr = app.addr;
    let response = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.write_all(request.as_bytes()).expect("send");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read");
        response
    })
    .await
    .expect("raw client ran");
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(
        response
            .to_ascii_lowercase()
            .contains("content-type: application/json")
    );
    assert!(response.ends_with("\r\n\r\n{\"data\":[]}"), "{response}");
}

#[tokio::test]
async fn health_and_metrics_pages() {
    let app = start(true).await;
    let live = app
        .http
        .get(app.url("/health/live"))
        .send()
        .await
        .expect("answered");
    assert_eq!(live.status(), StatusCode::OK);
    app.stats(json!({"apiToken": TOKEN})).await;
    let page = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("answered")
        .text()
        .await
        .expect("body");
    assert!(page.contains(r#"permit_stats_permits{client="OC-TOMA",zone="zone1",type="temp"} 35"#));
    assert!(page.contains("# TYPE permit_stats_http_request_duration_seconds histogram"));
    assert!(page.contains(r#"permit_stats_http_requests_total{route="stats",status="200"}"#));
}
