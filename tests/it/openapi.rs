//! `docs/openapi.json` against the real API and server, so that the two cannot drift apart:
//!
//! - every error the API can produce ([`ApiError::ALL`]) is produced here by a real request, and
//!   the document has it (ErrorCode, status, exact message, required headers such as
//!   `Retry-After` and `Allow`), and lists no code the API cannot produce;
//! - every documented operation, sent its documented examples, answers a documented status with
//!   a body that fits the documented schema and the documented required headers;
//! - every route the API answers is in the document: probing plausible paths with every
//!   method finds only documented ones (anything else is the documented 404/405).

use std::{collections::BTreeSet, time::Duration};

use axum::{
    body::Body,
    http::{Method, Request},
    response::IntoResponse as _,
};
use http_body_util::BodyExt as _;
use permit_stats::api::{Api, ApiError, Limits};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;
use tower::ServiceExt as _;

use crate::support::server::{self, RawAnswer, TOKEN, read_answer, stats_body};

const STATS_PATH: &str = "/api/{client}/v1/permits/stats";

fn document() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("docs/openapi.json exists"))
        .expect("docs/openapi.json is JSON")
}

/// Follows a local `$ref` (`#/components/...`), repeatedly.
fn resolve<'a>(doc: &'a Value, mut value: &'a Value) -> &'a Value {
    while let Some(reference) = value.get("$ref").and_then(Value::as_str) {
        let pointer = reference.strip_prefix('#').expect("a local reference");
        value = doc
            .pointer(pointer)
            .unwrap_or_else(|| panic!("{reference} resolves"));
    }
    value
}

/// Checks `value` against the subset of JSON Schema the document uses; `Err` says where not.
fn validate(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let schema = resolve(doc, schema);
    if let Some(types) = schema.get("type") {
        let types: Vec<&str> = match types {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            _ => return Err(format!("{at}: bad type in schema")),
        };
        let fits = types.iter().any(|t| match *t {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            "null" => value.is_null(),
            _ => false,
        });
        if !fits {
            return Err(format!("{at}: {value} is not {types:?}"));
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(value) {
            return Err(format!("{at}: {value} not in {allowed:?}"));
        }
    }
    if let Some(constant) = schema.get("const") {
        if constant != value {
            return Err(format!("{at}: {value} is not {constant}"));
        }
    }
    if let Some(s) = value.as_str() {
        let chars = s.chars().count() as u64;
        if schema["minLength"].as_u64().is_some_and(|min| chars < min)
            || schema["maxLength"].as_u64().is_some_and(|max| chars > max)
        {
            return Err(format!("{at}: length of {value}"));
        }
    }
    if let Some(n) = value.as_f64() {
        if schema["minimum"].as_f64().is_some_and(|min| n < min)
            || schema["maximum"].as_f64().is_some_and(|max| n > max)
        {
            return Err(format!("{at}: {n} out of range"));
        }
    }
    if let Some(object) = value.as_object() {
        let properties = schema.get("properties").and_then(Value::as_object);
        for required in schema["required"].as_array().into_iter().flatten() {
            let name = required.as_str().unwrap_or_default();
            if !object.contains_key(name) {
                return Err(format!("{at}: {name} missing"));
            }
        }
        for (name, field) in object {
            match properties.and_then(|p| p.get(name)) {
                Some(field_schema) => validate(doc, field_schema, field, &format!("{at}.{name}"))?,
                None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    return Err(format!("{at}: undocumented field {name}"));
                }
                None => {}
            }
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
        for (i, item) in array.iter().enumerate() {
            validate(doc, items, item, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

/// The documented operations: (path template, method, operation).
fn operations(doc: &Value) -> Vec<(String, Method, Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        // The other keys of a path item (parameters, description...) are not operations.
        let methods = [
            "get", "put", "post", "delete", "options", "head", "patch", "trace",
        ];
        for (method, operation) in item.as_object().expect("a path item") {
            if methods.contains(&method.as_str()) {
                let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes());
                out.push((path.clone(), method.expect("a method"), operation.clone()));
            }
        }
    }
    out
}

/// The documented path a concrete path falls under (`{param}` takes one segment, even empty).
fn template_of(doc: &Value, path: &str) -> Option<String> {
    let segments: Vec<&str> = path.split('/').collect();
    doc["paths"].as_object()?.keys().find_map(|template| {
        let pattern: Vec<&str> = template.split('/').collect();
        (pattern.len() == segments.len()
            && pattern
                .iter()
                .zip(&segments)
                .all(|(p, s)| p == s || (p.starts_with('{') && p.ends_with('}'))))
        .then(|| template.clone())
    })
}

/// The documented responses of an operation: status → response object (resolved).
fn responses<'a>(doc: &'a Value, operation: &'a Value) -> Vec<(u16, &'a Value)> {
    operation["responses"]
        .as_object()
        .expect("responses")
        .iter()
        .map(|(status, response)| {
            (
                status.parse().expect("numeric status"),
                resolve(doc, response),
            )
        })
        .collect()
}

/// Checks a real answer against a documented response: body schema and required headers.
fn conforms(
    doc: &Value,
    response: &Value,
    headers: &axum::http::HeaderMap,
    body: &[u8],
) -> Result<(), String> {
    for (name, header) in response["headers"].as_object().into_iter().flatten() {
        let header = resolve(doc, header);
        if header["required"] == true && headers.get(name.as_str()).is_none() {
            return Err(format!("required header {name} missing"));
        }
    }
    let Some(content) = response["content"].as_object() else {
        return if body.is_empty() {
            Ok(())
        } else {
            Err("a body where none is documented".into())
        };
    };
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let (_, media) = content
        .iter()
        .find(|(documented, _)| content_type.starts_with(documented.as_str()))
        .ok_or_else(|| format!("content type {content_type:?} not documented"))?;
    if content_type.starts_with("application/json") {
        let value: Value =
            serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
        validate(doc, &media["schema"], &value, "body")?;
    } else if let Some(constant) = media["schema"]["const"].as_str() {
        if body != constant.as_bytes() {
            return Err(format!("body is not {constant:?}"));
        }
    }
    Ok(())
}

async fn call(api: &Api, request: Request<Body>) -> (u16, axum::http::HeaderMap, Vec<u8>) {
    let response = api
        .clone()
        .oneshot(request)
        .await
        .expect("the API is infallible");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("a body")
        .to_bytes()
        .to_vec();
    (status, headers, body)
}

#[test]
fn the_document_is_openapi_3_1_for_this_crate_and_every_reference_resolves() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    fn walk(doc: &Value, value: &Value) {
        match value {
            Value::Object(map) => {
                if map.contains_key("$ref") {
                    resolve(doc, value);
                }
                map.values().for_each(|v| walk(doc, v));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(doc, v)),
            _ => {}
        }
    }
    walk(&doc, &doc);
    // Every documented example fits its own schema.
    for (path, method, operation) in operations(&doc) {
        for (status, response) in responses(&doc, &operation) {
            for media in response["content"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(_, m)| m)
            {
                let examples = media["examples"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(_, e)| &e["value"])
                    .chain(media.get("example"));
                for example in examples {
                    if let Err(e) = validate(&doc, &media["schema"], example, "example") {
                        panic!("{method} {path} {status}: {e}");
                    }
                }
            }
        }
    }
}

/// A request over the wire that makes the server answer `error`, and the server to send it to.
fn recipe(error: ApiError) -> (&'static str, String) {
    let post = |path: &str, body: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let stats = |body: &str| post("/api/OC-TOMA/v1/permits/stats", body);
    match error {
        ApiError::MissingClient => ("ready", post("/api/%20/v1/permits/stats", &stats_body(TOKEN))),
        ApiError::MissingToken => ("ready", stats("{}")),
        ApiError::Forbidden => ("ready", stats(&stats_body("not-a-known-token"))),
        ApiError::InvalidBody => ("ready", stats("[]")),
        ApiError::TooLong("apiToken") => ("ready", stats(&stats_body(&"a".repeat(51)))),
        ApiError::TooLong(_) => (
            "ready",
            stats(&format!(r#"{{"apiToken":"{TOKEN}","zones":"{}"}}"#, "z".repeat(8193))),
        ),
        ApiError::InvalidCharacters => ("ready", stats(&stats_body("bad token"))),
        ApiError::BodyTooLarge => (
            "ready",
            stats(&format!(r#"{{"apiToken":"{TOKEN}","pad":"{}"}}"#, "x".repeat(65536))),
        ),
        ApiError::BodyTimeout => (
            "ready",
            "POST /api/OC-TOMA/v1/permits/stats HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{".into(),
        ),
        // The limited server lets each token one request an hour: the second is refused.
        ApiError::TooManyRequests { .. } => ("limited", stats(&stats_body(TOKEN))),
        ApiError::NotReady => ("not ready", stats(&stats_body(TOKEN))),
        ApiError::NotFound => ("ready", "GET /nothing/here HTTP/1.1\r\nHost: t\r\n\r\n".into()),
        ApiError::MethodNotAllowed => (
            "ready",
            "GET /api/OC-TOMA/v1/permits/stats HTTP/1.1\r\nHost: t\r\n\r\n".into(),
        ),
    }
}

#[tokio::test]
async fn every_error_the_api_can_produce_is_documented_exactly() {
    let doc = document();
    let short = Limits {
        body_read_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let ready = server::serve(server::fixture(true).state, short.clone()).await;
    let not_ready = server::serve(server::fixture(false).state, short.clone()).await;
    let limited = server::serve(
        server::fixture(true).state,
        Limits {
            rate_limit: Some(server::rate_limit("1/h")),
            ..short
        },
    )
    .await;

    // Every documented response, with its status: the operations' and the shared ones
    // (which say their status in `x-status`).
    let mut places: Vec<(u16, Value)> = operations(&doc)
        .iter()
        .flat_map(|(_, _, op)| responses(&doc, op))
        .map(|(status, response)| (status, response.clone()))
        .collect();
    for response in doc["components"]["responses"]
        .as_object()
        .expect("responses")
        .values()
    {
        let status = response["x-status"].as_u64().expect("x-status");
        places.push((u16::try_from(status).expect("a status"), response.clone()));
    }
    let error_examples = |response: &Value| -> Vec<Value> {
        response["content"]["application/json"]["examples"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(_, example)| example["value"].clone())
            .filter(|value| value.get("ErrorCode").is_some())
            .collect()
    };
    let documented: BTreeSet<(u16, String)> = places
        .iter()
        .flat_map(|(status, response)| {
            error_examples(response)
                .into_iter()
                .map(move |example| (*status, example.to_string()))
        })
        .collect();
    let mut produced = BTreeSet::new();
    for error in ApiError::ALL {
        let (server, request) = recipe(error);
        let addr = match server {
            "ready" => ready.addr,
            "not ready" => not_ready.addr,
            _ => limited.addr,
        };
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut answer: RawAnswer = read_answer(&mut stream, Duration::from_secs(10))
            .await
            .expect("an answer");
        if matches!(error, ApiError::TooManyRequests { .. }) {
            assert_eq!(answer.status, 200, "the first request of the token passes");
            stream
                .write_all(request.as_bytes())
                .await
                .expect("send again");
            answer = read_answer(&mut stream, Duration::from_secs(10))
                .await
                .expect("a second answer");
        }
        // The recipe really produced this variant: same status, same bytes.
        let own = error.into_response();
        let own_status = own.status().as_u16();
        let own_body = own.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(
            (answer.status, answer.body.as_bytes()),
            (own_status, own_body.as_ref()),
            "{error:?}"
        );
        // The document has it under that status, word for word, with its headers.
        let body: Value = serde_json::from_str(&answer.body).expect("JSON");
        let (code, status) = error.code();
        let (_, place) = places
            .iter()
            .find(|(s, response)| *s == status.as_u16() && error_examples(response).contains(&body))
            .unwrap_or_else(|| panic!("{error:?}: {body} is not documented under {status}"));
        for (name, header) in place["headers"].as_object().into_iter().flatten() {
            let header = resolve(&doc, header);
            if header["required"] == true {
                assert!(
                    answer
                        .head
                        .contains(&format!("\n{}:", name.to_ascii_lowercase())),
                    "{error:?}: documented header {name} missing:\n{}",
                    answer.head
                );
            }
        }
        validate(
            &doc,
            &json!({"$ref": "#/components/schemas/Error"}),
            &body,
            "error",
        )
        .unwrap_or_else(|e| panic!("{error:?}: {e}"));
        produced.insert((status.as_u16(), body.to_string()));
        assert!(code >= 9000);
    }
    // And the document lists nothing the API cannot produce.
    for (status, example) in &documented {
        assert!(
            produced.contains(&(*status, example.clone())),
            "the document shows {status} {example}, which no ApiError produces"
        );
    }
    let codes: BTreeSet<i64> = ApiError::ALL
        .iter()
        .map(|e| i64::from(e.code().0))
        .collect();
    let enum_codes: BTreeSet<i64> =
        doc["components"]["schemas"]["Error"]["properties"]["ErrorCode"]["enum"]
            .as_array()
            .expect("an enum")
            .iter()
            .filter_map(Value::as_i64)
            .collect();
    assert_eq!(codes, enum_codes, "the ErrorCode enum");
}

#[tokio::test]
async fn every_documented_operation_answers_as_documented() {
    let doc = document();
    let ready = Api::new(server::fixture(true).state, &Limits::default());
    let not_ready = Api::new(server::fixture(false).state, &Limits::default());
    let mut seen_statuses = BTreeSet::new();
    for (template, method, operation) in operations(&doc) {
        let path = template.replace("{client}", "OC-TOMA");
        let mut bodies: Vec<String> =
            operation["requestBody"]["content"]["application/json"]["examples"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(_, example)| {
                    let mut body = example["value"].clone();
                    body["apiToken"] = json!(TOKEN);
                    body.to_string()
                })
                .collect();
        if bodies.is_empty() {
            bodies.push(String::new());
        }
        for body in bodies {
            for (readiness, router) in [("ready", &ready), ("not ready", &not_ready)] {
                let mut request = Request::builder()
                    .method(method.clone())
                    .uri(&path)
                    .header("Origin", "https://integrator.example");
                if method == Method::OPTIONS {
                    request = request
                        .header("Access-Control-Request-Method", "POST")
                        .header("Access-Control-Request-Headers", "content-type, accept");
                }
                if !body.is_empty() {
                    request = request.header("Content-Type", "application/json");
                }
                let request = request.body(Body::from(body.clone())).expect("a request");
                let (status, headers, answer) = call(router, request).await;
                let documented = responses(&doc, &operation);
                let response = documented
                    .iter()
                    .find(|(s, _)| *s == status)
                    .map(|(_, r)| *r)
                    .unwrap_or_else(|| {
                        panic!("{method} {path} ({readiness}): {status} is not documented")
                    });
                conforms(&doc, response, &headers, &answer).unwrap_or_else(|e| {
                    panic!(
                        "{method} {path} ({readiness}) {status}: {e}\n{}",
                        String::from_utf8_lossy(&answer)
                    )
                });
                seen_statuses.insert((template.clone(), method.to_string(), status));
            }
        }
    }
    // The success answers were among them (not only errors).
    for expected in [
        (STATS_PATH, "POST", 200),
        (STATS_PATH, "POST", 503),
        (STATS_PATH, "OPTIONS", 200),
        ("/health/live", "GET", 200),
        ("/health/ready", "GET", 200),
        ("/health/ready", "GET", 503),
        ("/metrics", "GET", 200),
    ] {
        assert!(
            seen_statuses.contains(&(expected.0.to_owned(), expected.1.to_owned(), expected.2)),
            "{expected:?} was not seen"
        );
    }
}

#[tokio::test]
async fn every_route_the_router_answers_is_documented() {
    let doc = document();
    let router = Api::new(server::fixture(true).state, &Limits::default());
    let mut probes: Vec<String> = doc["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .map(|p| p.replace("{client}", "OC-TOMA"))
        .collect();
    probes.extend(
        [
            // What the router is known to serve, whatever the document says...
            "/api/OC-TOMA/v1/permits/stats",
            "/health/live",
            "/health/ready",
            "/metrics",
            // ...and what it might serve by accident.
            "/",
            "/api",
            "/api/",
            "/api/OC-TOMA",
            "/api/OC-TOMA/v1",
            "/api/OC-TOMA/v1/permits",
            "/api//v1/permits/stats",
            "/api/OC-TOMA/v1/permits/stats/",
            "/api/OC-TOMA/v1/permits/stats/extra",
            "/api/OC-TOMA/v2/permits/stats",
            "/api/OC-TOMA/V1/permits/stats",
            "/API/OC-TOMA/v1/permits/stats",
            "/api/OC-TOMA/v1/permits/stat",
            "/health",
            "/health/",
            "/health/live/",
            "/health/ready/",
            "/health/startup",
            "/healthz",
            "/ready",
            "/live",
            "/metrics/",
            "/metrics/x",
            "/openapi.json",
            "/docs",
            "/swagger",
            "/status",
            "/debug",
            "/admin",
            "/favicon.ico",
            "/robots.txt",
            "/.env",
        ]
        .map(str::to_owned),
    );
    let methods = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "TRACE", "PURGE",
    ];
    for path in &probes {
        for method in methods {
            let method = Method::from_bytes(method.as_bytes()).expect("a method");
            let request = Request::builder()
                .method(method.clone())
                .uri(path.as_str())
                .body(Body::from(stats_body(TOKEN)))
                .expect("a request");
            let (status, _, body) = call(&router, request).await;
            // HEAD answers carry no body to read the code from.
            let code = if method == Method::HEAD {
                None
            } else {
                serde_json::from_slice::<Value>(&body)
                    .ok()
                    .map(|b| b["ErrorCode"].clone())
            };
            let expect_code = |c: i64| (method != Method::HEAD).then(|| json!(c));
            let Some(template) = template_of(&doc, path) else {
                assert_eq!(
                    (status, code),
                    (404, expect_code(9404)),
                    "{method} {path} is answered but not documented"
                );
                continue;
            };
            // HEAD is GET without a body.
            let documented_method = if method == Method::HEAD {
                Method::GET
            } else {
                method.clone()
            };
            let operation =
                &doc["paths"][&template][documented_method.as_str().to_ascii_lowercase()];
            if operation.is_null() {
                assert_eq!(
                    status, 405,
                    "{method} {path}: an undocumented method must get 405"
                );
                assert_eq!(code, expect_code(9405), "{method} {path}");
            } else {
                assert!(
                    responses(&doc, operation).iter().any(|(s, _)| *s == status),
                    "{method} {path}: {status} not documented"
                );
            }
        }
        // OPTIONS is a CORS preflight on every path, as the document says.
        let request = Request::builder()
            .method(Method::OPTIONS)
            .uri(path.as_str())
            .header("Origin", "https://integrator.example")
            .header("Access-Control-Request-Method", "POST")
            .body(Body::empty())
            .expect("a request");
        let (status, headers, body) = call(&router, request).await;
        assert_eq!((status, body.len()), (200, 0), "OPTIONS {path}");
        assert_eq!(headers["access-control-allow-origin"], "*");
    }
}
