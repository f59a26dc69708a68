//! Fuzzing the request path, as property tests that run in `cargo test`:
//!
//! - `any_request_gets_a_documented_answer`: generated requests (method, path and client segment,
//!   headers, content types, bodies from well-formed to garbage) through the real API in
//!   process (`tower::ServiceExt::oneshot` into [`Api`], its hand-matched stats path and its
//!   router): no panic, no 5xx but the documented 503, every answer
//!   a documented status with the documented error shape and code, no token ever echoed, and a
//!   200 only for a token of the path's client, with only that client's rows.
//! - `mangled_bytes_on_the_wire_never_get_a_5xx`: a valid request's bytes, mutated, sent over a
//!   socket to the real server, so that hyper's parser is part of what is fuzzed.
//!
//! The interesting inputs these find are kept in `tests/corpus/` and replayed by `corpus.rs`.
//!
//! `PROPTEST_CASES` raises the number of cases (CI runs the defaults below).

use std::{collections::HashSet, time::Duration};

use axum::{
    body::Body,
    http::{HeaderName, HeaderValue, Method, Request},
};
use http_body_util::BodyExt as _;
use permit_stats::api::{Api, ApiError, Limits};
use proptest::prelude::*;
use serde_json::{Value, json};
use tower::ServiceExt as _;

use crate::support::server::{
    self, ALL_TOKENS, OTHER_CLIENT_TOKEN, READ_ONLY_TOKEN, SECOND_TOKEN, TOKEN, exchange, statuses,
};

/// Cases per property unless `PROPTEST_CASES` says otherwise.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

/// The (ErrorCode, status) pairs the API documents.
fn documented_errors() -> HashSet<(i64, u16)> {
    ApiError::ALL
        .iter()
        .map(|e| {
            let (code, status) = e.code();
            (i64::from(code), status.as_u16())
        })
        .collect()
}

/// The client a token may read, if any.
fn client_of(token: &str) -> Option<&'static str> {
    match token {
        TOKEN | SECOND_TOKEN => Some("OC-TOMA"),
        OTHER_CLIENT_TOKEN => Some("OC-OTHER"),
        _ => None,
    }
}

// ---- generators -------------------------------------------------------------------------

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        8 => Just(Method::POST),
        1 => Just(Method::GET),
        1 => Just(Method::PUT),
        1 => Just(Method::DELETE),
        1 => Just(Method::PATCH),
        1 => Just(Method::OPTIONS),
        1 => Just(Method::HEAD),
        1 => Just(Method::TRACE),
        1 => Just(Method::from_bytes(b"PURGE").expect("a valid method")),
    ]
}

fn client_segment() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => Just("OC-TOMA".to_owned()),
        2 => Just("OC-OTHER".to_owned()),
        1 => Just("OC_TOMA".to_owned()),
        1 => Just("oc-toma".to_owned()),
        1 => Just(String::new()),
        1 => Just("%20".to_owned()),
        1 => Just("%20%09".to_owned()),
        1 => Just("%00".to_owned()),
        1 => Just("%FF%FE".to_owned()),
        1 => Just("OC%2DTOMA".to_owned()),
        1 => Just("OC-TOMA%2F..".to_owned()),
        1 => Just("..".to_owned()),
        1 => Just("%C3%B6".to_owned()),
        1 => Just("x".repeat(5000)),
        3 => "[A-Za-z0-9._~%-]{0,60}",
    ]
}

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        12 => client_segment().prop_map(|c| format!("/api/{c}/v1/permits/stats")),
        1 => Just("/api//v1/permits/stats".to_owned()),
        1 => Just("/health/live".to_owned()),
        1 => Just("/health/ready".to_owned()),
        1 => Just("/metrics".to_owned()),
        1 => client_segment().prop_map(|c| format!("/api/{c}/v1/permits/stats/")),
        1 => client_segment().prop_map(|c| format!("/api/{c}/v2/permits/stats")),
        1 => client_segment().prop_map(|c| format!("/api/{c}/v1/permits/stats?zones=Lot%2001")),
        2 => "/[A-Za-z0-9._~%/-]{0,40}",
    ]
}

fn token() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => Just(json!(TOKEN)),
        1 => Just(json!(SECOND_TOKEN)),
        2 => Just(json!(OTHER_CLIENT_TOKEN)),
        1 => Just(json!(READ_ONLY_TOKEN)),
        1 => Just(json!(format!(" {TOKEN}"))),
        1 => Just(json!(TOKEN.to_lowercase())),
        1 => Just(json!(format!("{TOKEN}{}", "9".repeat(30)))),
        2 => "[A-Za-z0-9-]{0,60}".prop_map(Value::from),
        1 => "\\PC{0,60}".prop_map(Value::from),
        1 => Just(Value::Null),
        1 => any::<i64>().prop_map(Value::from),
        1 => any::<bool>().prop_map(Value::from),
        1 => Just(json!([TOKEN])),
        1 => Just(json!({"token": TOKEN})),
    ]
}

fn zone_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("Lot 01".to_owned()),
        Just("Lot 02".to_owned()),
        Just("zone1".to_owned()),
        Just("lot 01".to_owned()),
        Just(" Lot 01 ".to_owned()),
        Just(String::new()),
        Just(" ".to_owned()),
        Just(server::OTHER_CLIENT_MARKER.to_owned()),
        "\\PC{0,20}",
    ]
}

fn zones() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        3 => Just(None),
        4 => prop::collection::vec(zone_name(), 0..8).prop_map(|names| Some(json!(names.join(",")))),
        1 => Just(Some(Value::Null)),
        1 => Just(Some(json!(",".repeat(1001)))),
        1 => Just(Some(json!(vec!["z"; 1001].join(",")))),
        1 => Just(Some(json!("z".repeat(8 * 1024 + 1)))),
        1 => Just(Some(json!(["Lot 01"]))),
        1 => any::<f64>().prop_map(|n| Some(json!(n))),
    ]
}

/// A JSON object that is mostly a stats request.
fn stats_json() -> impl Strategy<Value = String> {
    (
        prop::option::weighted(0.9, token()),
        zones(),
        prop::option::of(("[a-zA-Z]{1,10}", "\\PC{0,20}")),
    )
        .prop_map(|(token, zones, extra)| {
            let mut object = serde_json::Map::new();
            if let Some(token) = token {
                object.insert("apiToken".into(), token);
            }
            if let Some(zones) = zones {
                object.insert("zones".into(), zones);
            }
            if let Some((key, value)) = extra {
                object.insert(key, Value::from(value));
            }
            Value::Object(object).to_string()
        })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        10 => stats_json().prop_map(String::into_bytes),
        1 => Just(format!(r#"{{"apiToken":"nope","apiToken":"{TOKEN}"}}"#).into_bytes()),
        1 => Just(format!(r#"[{{"apiToken":"{TOKEN}"}}]"#).into_bytes()),
        1 => Just(format!(r#"{{"apiToken":"{TOKEN}"}} trailing"#).into_bytes()),
        1 => Just(format!("\u{feff}{{\"apiToken\":\"{TOKEN}\"}}").into_bytes()),
        1 => Just(format!(r#"{{"apiToken":"\u0074{}"}}"#, &TOKEN[1..]).into_bytes()),
        1 => (1usize..300).prop_map(|depth| format!("{}{}", "{\"a\":".repeat(depth), "1").into_bytes()),
        1 => (1usize..300).prop_map(|depth| "[".repeat(depth).into_bytes()),
        1 => (64 * 1024 - 40..64 * 1024 + 40usize).prop_map(|size| {
            let head = format!("{{\"apiToken\":\"{TOKEN}\",\"pad\":\"");
            let pad = "x".repeat(size.saturating_sub(head.len() + 2));
            format!("{head}{pad}\"}}").into_bytes()
        }),
        3 => prop::collection::vec(any::<u8>(), 0..512),
        1 => "\\PC{0,200}".prop_map(String::into_bytes),
    ]
}

fn headers() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    let content_type = prop_oneof![
        Just("application/json".to_owned()),
        Just("application/json; charset=utf-8".to_owned()),
        Just("application/json; charset=utf-16".to_owned()),
        Just("text/plain".to_owned()),
        Just("application/x-www-form-urlencoded".to_owned()),
        Just("multipart/form-data; boundary=x".to_owned()),
        Just("application/xml".to_owned()),
        Just(String::new()),
        "\\PC{0,30}",
    ]
    .prop_map(|v| ("content-type".to_owned(), v.into_bytes()));
    let other = prop_oneof![
        Just(("accept".to_owned(), b"application/json".to_vec())),
        Just(("accept".to_owned(), b"text/html".to_vec())),
        Just(("origin".to_owned(), b"https://integrator.example".to_vec())),
        Just(("origin".to_owned(), b"null".to_vec())),
        Just(("access-control-request-method".to_owned(), b"POST".to_vec())),
        Just((
            "access-control-request-headers".to_owned(),
            b"content-type, accept".to_vec()
        )),
        Just(("cache-control".to_owned(), b"no-cache".to_vec())),
        Just(("content-encoding".to_owned(), b"gzip".to_vec())),
        Just(("expect".to_owned(), b"100-continue".to_vec())),
        Just((
            "authorization".to_owned(),
            format!("Bearer {TOKEN}").into_bytes()
        )),
        any::<u64>().prop_map(|n| ("content-length".to_owned(), n.to_string().into_bytes())),
        (
            "[a-z][a-z0-9-]{0,20}",
            prop::collection::vec(32u8..127, 0..40)
        ),
    ];
    (
        prop::option::weighted(0.8, content_type),
        prop::collection::vec(other, 0..5),
    )
        .prop_map(|(content_type, mut other)| {
            other.extend(content_type);
            other
        })
}

#[derive(Debug, Clone)]
struct Generated {
    method: Method,
    path: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    /// Which router: 0 ready, 1 not ready, 2 ready with a tight rate limit.
    router: usize,
}

fn generated() -> impl Strategy<Value = Generated> {
    (
        method(),
        path(),
        headers(),
        body(),
        prop_oneof![8 => Just(0usize), 1 => Just(1), 1 => Just(2)],
    )
        .prop_map(|(method, path, headers, body, router)| Generated {
            method,
            path,
            headers,
            body,
            router,
        })
}

// ---- the oracle -------------------------------------------------------------------------

struct Routers {
    routers: [Api; 3],
    /// Every (client, zone, type) row the fixture holds, per client.
    rows: Vec<(String, String, String)>,
}

fn routers() -> Routers {
    let ready = server::fixture(true);
    let rows = ["OC-TOMA", "OC-OTHER"]
        .iter()
        .flat_map(|client| {
            ready.projection.query(client, None).into_iter().map(|row| {
                (
                    client.to_string(),
                    row.zone.to_string(),
                    row.permit_type.to_string(),
                )
            })
        })
        .collect();
    let limited = Limits {
        rate_limit: Some(server::rate_limit("20/min")),
        ..Limits::default()
    };
    Routers {
        routers: [
            Api::new(ready.state, &Limits::default()),
            Api::new(server::fixture(false).state, &Limits::default()),
            Api::new(server::fixture(true).state, &limited),
        ],
        rows,
    }
}

/// Percent-decoding of a path segment, as the router does it (`None` when not UTF-8).
fn percent_decoded(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| segment.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Checks one answer against everything the contract promises; `Err` says what broke.
fn check(
    request: &Generated,
    status: u16,
    headers: &axum::http::HeaderMap,
    body: &[u8],
    rows: &[(String, String, String)],
) -> Result<(), String> {
    let text = String::from_utf8_lossy(body);
    if status >= 500 && !(status == 503 && request.router == 1) {
        return Err(format!("a {status}: {text}"));
    }
    for token in ALL_TOKENS {
        if text.contains(token) {
            return Err(format!("a token echoed: {text}"));
        }
    }
    // The CORS layer answers every OPTIONS request as a preflight, on any path (documented).
    if request.method == Method::OPTIONS {
        return if status == 200 && body.is_empty() {
            Ok(())
        } else {
            Err(format!("OPTIONS answered {status}"))
        };
    }
    let path = request.path.split('?').next().unwrap_or_default();
    if path == "/health/ready" && matches!(request.method, Method::GET | Method::HEAD) {
        let expected = if request.router == 1 { 503 } else { 200 };
        let progress: Value = serde_json::from_slice(body).unwrap_or_default();
        return if status == expected
            && (request.method == Method::HEAD || progress["ready"] == (expected == 200))
        {
            Ok(())
        } else {
            Err(format!("/health/ready answered {status}: {text}"))
        };
    }
    if status == 200 {
        let stats_path = path.starts_with("/api/") && path.ends_with("/v1/permits/stats");
        if !stats_path {
            return match path {
                "/health/live" | "/health/ready" | "/metrics"
                    if request.method == Method::GET || request.method == Method::HEAD =>
                {
                    Ok(())
                }
                _ => Err(format!("200 for {} {path}", request.method)),
            };
        }
        if request.method != Method::POST {
            return Err(format!("200 for {} on the stats path", request.method));
        }
        // A 200 only for a token of the path's client, with only that client's rows.
        let segment = &path["/api/".len()..path.len() - "/v1/permits/stats".len()];
        let client = percent_decoded(segment).ok_or("200 for a client that is not UTF-8")?;
        let sent: Value = serde_json::from_slice(body_of(request))
            .map_err(|_| "200 for a body that is not JSON")?;
        let token = sent["apiToken"]
            .as_str()
            .ok_or("200 without a string apiToken")?;
        if client_of(token) != Some(client.as_str()) {
            return Err(format!(
                "200 for client {client:?} with a token that may not read it"
            ));
        }
        let answer: Value =
            serde_json::from_slice(body).map_err(|e| format!("200 not JSON: {e}"))?;
        let data = answer["data"].as_array().ok_or("200 without data")?;
        if answer.as_object().map(|o| o.len()) != Some(1) {
            return Err(format!("keys besides data: {text}"));
        }
        for row in data {
            let key = (
                client.clone(),
                row["zone"].as_str().unwrap_or_default().to_owned(),
                row["type"].as_str().unwrap_or_default().to_owned(),
            );
            if !rows.contains(&key) {
                return Err(format!("a row that is not {client}'s: {row}"));
            }
            if !row["total"].is_string() {
                return Err(format!("a total that is not a string: {row}"));
            }
        }
        if headers.get("x-stats-lag").is_none() {
            return Err("a 200 without X-Stats-Lag".into());
        }
        return Ok(());
    }
    // Every other answer is an error in the vendor's shape with a documented code.
    if request.method == Method::HEAD {
        return Ok(());
    }
    if headers.get("content-type").map(|v| v.as_bytes()) != Some(b"application/json") {
        return Err(format!("a {status} that is not JSON"));
    }
    let error: Value =
        serde_json::from_slice(body).map_err(|e| format!("a {status} not JSON: {e}"))?;
    let keys: Vec<&String> = error
        .as_object()
        .ok_or("error not an object")?
        .keys()
        .collect();
    if keys != ["ErrorCode", "ErrorMessage"] || !error["ErrorMessage"].is_string() {
        return Err(format!("not the vendor's error shape: {text}"));
    }
    let code = error["ErrorCode"]
        .as_i64()
        .ok_or("ErrorCode not a number")?;
    if !documented_errors().contains(&(code, status)) {
        return Err(format!("undocumented ({code}, {status})"));
    }
    if status == 405 && headers.get("allow").is_none() {
        return Err("405 without Allow".into());
    }
    if matches!(status, 429 | 503) && headers.get("retry-after").is_none() {
        return Err(format!("{status} without Retry-After"));
    }
    Ok(())
}

fn body_of(request: &Generated) -> &[u8] {
    &request.body
}

fn build(request: &Generated) -> Option<Request<Body>> {
    let mut builder = Request::builder()
        .method(request.method.clone())
        .uri(request.path.as_str());
    for (name, value) in &request.headers {
        let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(value).ok()?;
        builder = builder.header(name, value);
    }
    builder.body(Body::from(request.body.clone())).ok()
}

#[test]
fn any_request_gets_a_documented_answer() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let routers = routers();
    let config = ProptestConfig {
        cases: cases(3000),
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    };
    proptest!(config, |(request in generated())| {
        // A path or header the http crate itself refuses never reaches a server.
        let Some(built) = build(&request) else { return Ok(()); };
        let router = routers.routers[request.router].clone();
        let (status, headers, body) = runtime.block_on(async move {
            let response = router.oneshot(built).await.expect("the API is infallible");
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let body = response.into_body().collect().await.expect("a body").to_bytes();
            (status, headers, body)
        });
        if let Err(broken) = check(&request, status, &headers, &body, &routers.rows) {
            prop_assert!(false, "{} {}: {broken}", request.method, request.path);
        }
    });
}

// ---- on the wire ------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Truncate(usize),
    Duplicate(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let special = prop_oneof![
        Just(b"\r".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\0".to_vec()),
        Just(b" ".to_vec()),
        Just(b":".to_vec()),
        Just(b"\"".to_vec()),
        Just(b"\xff\xfe".to_vec()),
        Just(b"Transfer-Encoding: chunked\r\n".to_vec()),
        Just(b"Content-Length: 5\r\n".to_vec()),
        Just(b"Content-Length: 99999999999999999999\r\n".to_vec()),
        Just(b"HTTP/2.0".to_vec()),
        Just(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec()),
        Just(b"%".to_vec()),
        Just(b"/../".to_vec()),
        prop::collection::vec(any::<u8>(), 1..20),
    ];
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Flip(at, byte)),
        (any::<usize>(), special).prop_map(|(at, bytes)| Mutation::Insert(at, bytes)),
        (any::<usize>(), 1usize..20).prop_map(|(at, n)| Mutation::Delete(at, n)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), 1usize..60).prop_map(|(at, n)| Mutation::Duplicate(at, n)),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for mutation in mutations {
        let len = bytes.len().max(1);
        match mutation {
            Mutation::Flip(at, byte) => {
                if let Some(b) = bytes.get_mut(at % len) {
                    *b = *byte;
                }
            }
            Mutation::Insert(at, insert) => {
                let at = at % (bytes.len() + 1);
                bytes.splice(at..at, insert.iter().copied());
            }
            Mutation::Delete(at, n) => {
                let at = at % len;
                let end = (at + n).min(bytes.len());
                bytes.drain(at.min(end)..end);
            }
            Mutation::Truncate(at) => bytes.truncate(at % len),
            Mutation::Duplicate(at, n) => {
                let at = at % len;
                let end = (at + n).min(bytes.len());
                let copy = bytes[at.min(end)..end].to_vec();
                bytes.splice(end..end, copy);
            }
        }
    }
    bytes
}

#[test]
fn mangled_bytes_on_the_wire_never_get_a_5xx() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let server = runtime.block_on(server::serve(
        server::fixture(true).state,
        Limits {
            header_read_timeout: Duration::from_secs(2),
            body_read_timeout: Duration::from_secs(2),
            ..Limits::default()
        },
    ));
    let valid = format!(
        "POST /api/OC-TOMA/v1/permits/stats HTTP/1.1\r\nHost: permit-stats\r\nAccept: application/json\r\nContent-Type: application/json\r\nCache-Control: no-cache\r\nContent-Length: {}\r\n\r\n{}",
        server::stats_body(TOKEN).len(),
        server::stats_body(TOKEN)
    );
    let allowed: HashSet<u16> = [100, 200, 400, 401, 403, 404, 405, 408, 413, 414, 431]
        .into_iter()
        .collect();
    let config = ProptestConfig {
        cases: cases(300),
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    };
    proptest!(config, |(mutations in prop::collection::vec(mutation(), 1..4))| {
        let bytes = mutate(valid.clone().into_bytes(), &mutations);
        let received = runtime.block_on(exchange(server.addr, &bytes));
        let text = String::from_utf8_lossy(&received);
        prop_assert!(!text.contains(TOKEN), "token echoed: {text}");
        for status in statuses(&received) {
            prop_assert!(allowed.contains(&status), "status {status} for {:?}:\n{text}", String::from_utf8_lossy(&bytes));
        }
    });
    // After all that, the server still answers.
    let received = runtime.block_on(exchange(server.addr, valid.as_bytes()));
    assert_eq!(statuses(&received), [200]);
}
