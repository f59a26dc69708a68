//! The HTTP API: the OPS-COM "Permit Stats" request (spec/stats-api.md), health and metrics.
//!
//! The stats request is answered straight from the projection's published view of the client:
//! after validation and the token check it is a map lookup and a clone of ready-encoded bytes
//! (or a join of the requested zones' runs). Every failure maps to the vendor's error shape in
//! one place, [`ApiError`]; nothing a client sends can produce a 5xx other than the documented 503.

use std::{borrow::Cow, sync::Arc, time::Instant};

use arc_swap::ArcSwap;
use axum::{
    Router,
    body::{Body, Bytes},
    extract::{DefaultBodyLimit, MatchedPath, Path, Request, State, rejection::BytesRejection},
    http::{HeaderName, HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use dashmap::DashMap;
use metrics::{Counter, Histogram, counter, histogram};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tower_http::cors::{AllowHeaders, Any, CorsLayer};
use tracing::debug;

use crate::{auth::Tokens, ingest::IngestStatus, projection::Projection, telemetry};

/// The largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;
/// The longest `apiToken`, in characters.
pub const MAX_TOKEN_CHARS: usize = 50;
/// The longest `zones` string, in bytes.
pub const MAX_ZONES_BYTES: usize = 8 * 1024;
/// The most zone names one request may list.
pub const MAX_ZONE_NAMES: usize = 1000;
/// Seconds a client should wait before retrying a 503.
const RETRY_AFTER_SECS: &str = "1";

/// `X-Stats-As-Of`: RFC 3339 time of the newest event applied to the client's projection.
pub const X_STATS_AS_OF: HeaderName = HeaderName::from_static("x-stats-as-of");
/// `X-Stats-Lag`: records not yet applied at the last check.
pub const X_STATS_LAG: HeaderName = HeaderName::from_static("x-stats-lag");

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The read model.
    pub projection: Arc<Projection>,
    /// The accepted tokens; swapped whole on reload.
    pub tokens: Arc<ArcSwap<Tokens>>,
    /// Replay progress and lag.
    pub status: Arc<IngestStatus>,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
}

/// Everything the API can answer besides a success, each with its OPS-COM code and HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The client code segment of the path is missing or blank.
    #[error("client code is missing")]
    MissingClient,
    /// `apiToken` is missing, null or empty.
    #[error("apiToken is required")]
    MissingToken,
    /// Unknown, revoked, lacking permission, or of another client: one answer for all.
    #[error("apiToken is not valid for this request")]
    Forbidden,
    /// The body is not a JSON object, not valid JSON, or a field has the wrong JSON type.
    #[error("request body must be a JSON object with string fields apiToken and zones")]
    InvalidBody,
    /// A field is longer than its limit.
    #[error("{0} is too long")]
    TooLong(&'static str),
    /// `apiToken` has characters outside `[A-Za-z0-9-]`.
    #[error("apiToken may contain only letters, digits and dashes")]
    InvalidCharacters,
    /// The body is larger than 64 KiB.
    #[error("request body is larger than 64 KiB")]
    BodyTooLarge,
    /// The projection has not caught up since start.
    #[error("permit stats are still being rebuilt; retry shortly")]
    NotReady,
    /// No such path.
    #[error("no such resource")]
    NotFound,
    /// The path exists, the method does not.
    #[error("method not allowed; use POST")]
    MethodNotAllowed,
}

impl ApiError {
    /// The OPS-COM `ErrorCode` and the HTTP status.
    pub fn code(self) -> (u16, StatusCode) {
        match self {
            Self::MissingClient => (9000, StatusCode::BAD_REQUEST),
            Self::MissingToken => (9001, StatusCode::UNAUTHORIZED),
            Self::Forbidden => (9002, StatusCode::FORBIDDEN),
            Self::InvalidBody => (9003, StatusCode::BAD_REQUEST),
            Self::TooLong(_) => (9030, StatusCode::BAD_REQUEST),
            Self::InvalidCharacters => (9033, StatusCode::BAD_REQUEST),
            Self::BodyTooLarge => (9030, StatusCode::PAYLOAD_TOO_LARGE),
            Self::NotReady => (9503, StatusCode::SERVICE_UNAVAILABLE),
            Self::NotFound => (9404, StatusCode::NOT_FOUND),
            Self::MethodNotAllowed => (9405, StatusCode::METHOD_NOT_ALLOWED),
        }
    }
}

#[derive(Serialize)]
struct ErrorBody {
    #[serde(rename = "ErrorCode")]
    code: u16,
    #[serde(rename = "ErrorMessage")]
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, status) = self.code();
        let body = serde_json::to_vec(&ErrorBody {
            code,
            message: self.to_string(),
        })
        .unwrap_or_default();
        let mut response = (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response();
        let headers = response.headers_mut();
        match self {
            Self::NotReady => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from_static(RETRY_AFTER_SECS),
                );
            }
            Self::MethodNotAllowed => {
                headers.insert(header::ALLOW, HeaderValue::from_static("POST"));
            }
            _ => {}
        }
        response
    }
}

/// The router of the whole API.
pub fn router(state: AppState) -> Router {
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::POST, Method::GET, Method::OPTIONS])
        .allow_headers(AllowHeaders::mirror_request())
        .expose_headers([X_STATS_AS_OF, X_STATS_LAG, header::RETRY_AFTER])
        .max_age(std::time::Duration::from_secs(600));
    Router::new()
        .route(
            "/api/{client}/v1/permits/stats",
            post(stats).fallback(method_not_allowed),
        )
        .route(
            "/api//v1/permits/stats",
            post(missing_client).fallback(method_not_allowed),
        )
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics_page))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(
            Arc::new(HttpMetrics::default()),
            track,
        ))
        .layer(cors)
        .with_state(state)
}

/// The request body. Unknown fields are ignored; `null` is the same as absent.
#[derive(Deserialize)]
struct StatsRequest<'a> {
    #[serde(rename = "apiToken", default, borrow)]
    api_token: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    zones: Option<Cow<'a, str>>,
}

async fn stats(
    State(state): State<AppState>,
    client: Result<Path<String>, axum::extract::rejection::PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Ok(Path(client)) = client else {
        return Err(ApiError::MissingClient);
    };
    if client.trim().is_empty() {
        return Err(ApiError::MissingClient);
    }
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::BodyTooLarge
        } else {
            ApiError::InvalidBody
        }
    })?;
    // serde would also read a JSON array as the struct's fields in order: only objects pass.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(ApiError::InvalidBody);
    }
    let request: StatsRequest<'_> =
        serde_json::from_slice(&body).map_err(|_| ApiError::InvalidBody)?;

    let token = request.api_token.as_deref().unwrap_or_default();
    if token.is_empty() {
        return Err(ApiError::MissingToken);
    }
    if token.chars().count() > MAX_TOKEN_CHARS {
        return Err(ApiError::TooLong("apiToken"));
    }
    if !token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(ApiError::InvalidCharacters);
    }
    let zones = zone_filter(request.zones.as_deref())?;

    let Some(name) = state
        .tokens
        .load()
        .authorize_stats(token, &client)
        .map(str::to_owned)
    else {
        debug!(client = %client, "refused a stats request: token not valid for this client");
        return Err(ApiError::Forbidden);
    };
    if !state.status.is_ready() {
        return Err(ApiError::NotReady);
    }
    debug!(client = %client, token = %name, "stats request");

    let view = state.projection.view(&client);
    let body = view.as_ref().map_or_else(
        || Bytes::from_static(br#"{"data":[]}"#),
        |view| view.body(zones.as_deref()),
    );
    let mut response = Response::new(Body::from(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(X_STATS_LAG, HeaderValue::from(state.status.lag()));
    if let Some(as_of) = view.and_then(|view| view.as_of_ms()).and_then(rfc3339) {
        headers.insert(X_STATS_AS_OF, as_of);
    }
    Ok(response)
}

/// Splits the `zones` string: trimmed names, empties dropped; no names at all means every zone.
fn zone_filter(zones: Option<&str>) -> Result<Option<Vec<&str>>, ApiError> {
    let Some(zones) = zones else {
        return Ok(None);
    };
    if zones.len() > MAX_ZONES_BYTES {
        return Err(ApiError::TooLong("zones"));
    }
    let names: Vec<&str> = zones
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .collect();
    if names.len() > MAX_ZONE_NAMES {
        return Err(ApiError::TooLong("zones"));
    }
    Ok((!names.is_empty()).then_some(names))
}

fn rfc3339(ms: i64) -> Option<HeaderValue> {
    let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()?;
    HeaderValue::from_str(&at.format(&Rfc3339).ok()?).ok()
}

async fn missing_client() -> ApiError {
    ApiError::MissingClient
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

async fn not_found() -> ApiError {
    ApiError::NotFound
}

async fn live() -> &'static str {
    "ok"
}

async fn ready(State(state): State<AppState>) -> Response {
    let progress = state.status.progress();
    let status = if progress.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut response = (status, axum::Json(progress)).into_response();
    if status != StatusCode::OK {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from_static(RETRY_AFTER_SECS),
        );
    }
    response
}

async fn metrics_page(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        telemetry::render(&state.metrics, &state.projection),
    )
        .into_response()
}

/// Request counters and latency histograms, with handles cached per (route, status).
#[derive(Default)]
struct HttpMetrics {
    requests: DashMap<(&'static str, u16), Counter>,
    durations: DashMap<&'static str, Histogram>,
}

impl HttpMetrics {
    fn record(&self, route: &'static str, status: u16, seconds: f64) {
        self.requests
            .entry((route, status))
            .or_insert_with(|| {
                counter!(telemetry::HTTP_REQUESTS, "route" => route, "status" => status.to_string())
            })
            .increment(1);
        self.durations
            .entry(route)
            .or_insert_with(|| histogram!(telemetry::HTTP_DURATION, "route" => route))
            .record(seconds);
    }
}

/// The `route` label: a fixed name per route, so that no client can grow the label set.
fn route_label(path: Option<&MatchedPath>) -> &'static str {
    match path.map(MatchedPath::as_str) {
        Some("/api/{client}/v1/permits/stats" | "/api//v1/permits/stats") => "stats",
        Some("/health/live") => "live",
        Some("/health/ready") => "ready",
        Some("/metrics") => "metrics",
        _ => "unmatched",
    }
}

async fn track(State(metrics): State<Arc<HttpMetrics>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = route_label(request.extensions().get::<MatchedPath>());
    let response = next.run(request).await;
    metrics.record(
        route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zone_filters_trim_drop_empties_and_treat_blank_as_all() {
        assert_eq!(zone_filter(None), Ok(None));
        assert_eq!(zone_filter(Some("  ")), Ok(None));
        assert_eq!(zone_filter(Some(" , ,")), Ok(None));
        assert_eq!(
            zone_filter(Some(" Lot 01 ,,Lot 02,Lot 01")),
            Ok(Some(vec!["Lot 01", "Lot 02", "Lot 01"]))
        );
        let many = vec!["z"; MAX_ZONE_NAMES + 1].join(",");
        assert_eq!(zone_filter(Some(&many)), Err(ApiError::TooLong("zones")));
        let long = "z".repeat(MAX_ZONES_BYTES + 1);
        assert_eq!(zone_filter(Some(&long)), Err(ApiError::TooLong("zones")));
    }

    #[test]
    fn as_of_is_rfc3339() {
        assert_eq!(
            rfc3339(1_795_923_044_250).expect("valid time"),
            "2026-11-29T03:30:44.25Z"
        );
    }
}
