//! The HTTP API: the OPS-COM "Permit Stats" request (spec/stats-api.md), health and metrics.
//!
//! The stats request is answered straight from the projection's published view of the client:
//! after validation and the token check it is a map lookup and a clone of ready-encoded bytes
//! (or a join of the requested zones' runs). Every failure maps to the vendor's error shape in
//! one place, [`ApiError`]; nothing a client sends can produce a 5xx other than the documented 503.
//!
//! The HTTP server itself is here too ([`serve`]): hyper's HTTP/1 connection driver with the
//! [`Limits`] that keep slow, greedy and hostile clients from tying the service up (a deadline for
//! a request's head and one for its body, a cap on open connections, an optional per-token rate
//! limit), and a graceful shutdown. `axum::serve` has no knobs for the first three.
//! `docs/openapi.json` describes all of it; `tests/openapi.rs` keeps the two in step.

use std::{
    borrow::Cow,
    fmt,
    future::{Future as _, poll_fn},
    num::NonZeroU32,
    pin::pin,
    str::FromStr,
    sync::Arc,
    task::Poll,
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use axum::{
    Router,
    body::{Body, Bytes, HttpBody as _},
    extract::{MatchedPath, Path, Request, State},
    http::{HeaderName, HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use dashmap::DashMap;
use governor::{Quota, RateLimiter, clock::Clock as _};
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use metrics::{Counter, Histogram, counter, histogram};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowHeaders, Any, CorsLayer};
use tracing::{debug, error, info};

use crate::{
    auth::{TokenKey, Tokens},
    config::ServeArgs,
    projection::Projection,
    status::IngestStatus,
    telemetry, text,
};

/// The largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;
/// The largest request head (request line and headers) accepted; larger ones get hyper's 431.
/// Browsers and HTTP clients send well under 8 KiB; hyper's own default is ~400 KiB.
pub const MAX_HEAD_BYTES: usize = 32 * 1024;
/// The longest `apiToken`, in characters.
pub const MAX_TOKEN_CHARS: usize = 50;
/// The longest `zones` string, in bytes.
pub const MAX_ZONES_BYTES: usize = 8 * 1024;
/// The most zone names one request may list.
pub const MAX_ZONE_NAMES: usize = 1000;
/// Seconds a client should wait before retrying a 503.
const RETRY_AFTER_SECS: &str = "1";

/// Default of `--header-read-timeout`, in seconds.
pub const DEFAULT_HEADER_READ_TIMEOUT_SECS: u64 = 10;
/// Default of `--body-read-timeout`, in seconds.
pub const DEFAULT_BODY_READ_TIMEOUT_SECS: u64 = 10;
/// Default of `--max-connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

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
    /// The body did not arrive within the body read timeout.
    #[error("request body was not received in time")]
    BodyTimeout,
    /// The token has used up its rate limit; `Retry-After` says when to come back.
    #[error("too many requests for this apiToken; retry after the time in Retry-After")]
    TooManyRequests {
        /// Whole seconds until the token may send again (at least 1).
        retry_after_secs: u32,
    },
    /// The projection has not caught up since start.
    #[error("permit stats are still being rebuilt; retry shortly")]
    NotReady,
    /// No such path.
    #[error("no such resource")]
    NotFound,
    /// The path exists, the method does not (`Allow` lists the ones it has).
    #[error("method not allowed; see the Allow header")]
    MethodNotAllowed,
}

impl ApiError {
    /// One value of every variant (both fields of [`ApiError::TooLong`]), for the documentation
    /// test: each must appear in `docs/openapi.json` with its code, status and message.
    pub const ALL: [ApiError; 13] = [
        Self::MissingClient,
        Self::MissingToken,
        Self::Forbidden,
        Self::InvalidBody,
        Self::TooLong("apiToken"),
        Self::TooLong("zones"),
        Self::InvalidCharacters,
        Self::BodyTooLarge,
        Self::BodyTimeout,
        Self::TooManyRequests {
            retry_after_secs: 1,
        },
        Self::NotReady,
        Self::NotFound,
        Self::MethodNotAllowed,
    ];

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
            Self::BodyTimeout => (9408, StatusCode::REQUEST_TIMEOUT),
            Self::TooManyRequests { .. } => (9429, StatusCode::TOO_MANY_REQUESTS),
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
            Self::TooManyRequests { retry_after_secs } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            }
            // The rest of the body is still on its way, or never coming: don't wait for it.
            Self::BodyTimeout | Self::BodyTooLarge => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}

/// The router of the whole API, with the default [`Limits`] (no rate limit).
pub fn router(state: AppState) -> Router {
    router_with(state, &Limits::default())
}

/// The router of the whole API, with the body read timeout and rate limit of `limits`.
pub fn router_with(state: AppState, limits: &Limits) -> Router {
    let stats_context = Arc::new(StatsContext {
        app: state.clone(),
        limiter: limits
            .rate_limit
            .map(|limit| RateLimiter::dashmap(limit.quota())),
        body_read_timeout: limits.body_read_timeout,
    });
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::POST, Method::GET, Method::OPTIONS])
        .allow_headers(AllowHeaders::mirror_request())
        .expose_headers([X_STATS_AS_OF, X_STATS_LAG, header::RETRY_AFTER])
        .max_age(std::time::Duration::from_secs(600));
    Router::new()
        .route(
            "/api/{client}/v1/permits/stats",
            post(stats)
                .fallback(method_not_allowed)
                .with_state(stats_context),
        )
        .route(
            "/api//v1/permits/stats",
            post(missing_client).fallback(method_not_allowed),
        )
        .route("/health/live", get(live).fallback(get_only))
        .route("/health/ready", get(ready).fallback(get_only))
        .route("/metrics", get(metrics_page).fallback(get_only))
        .fallback(not_found)
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

/// What the stats handler needs beyond [`AppState`]; one `Arc` clone per request.
struct StatsContext {
    app: AppState,
    /// Per-token limiter, keyed by the token's digest; `None` when rate limiting is off, so that
    /// the default configuration pays nothing for it.
    limiter: Option<TokenLimiter>,
    body_read_timeout: Duration,
}

type TokenLimiter = governor::DefaultKeyedRateLimiter<TokenKey>;

async fn stats(
    State(context): State<Arc<StatsContext>>,
    client: Result<Path<String>, axum::extract::rejection::PathRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    let Ok(Path(client)) = client else {
        return Err(ApiError::MissingClient);
    };
    if client.trim().is_empty() {
        return Err(ApiError::MissingClient);
    }
    let body = read_body(request.into_body(), context.body_read_timeout).await?;
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
    if !text::is_alphanumeric_or_dash(token) {
        return Err(ApiError::InvalidCharacters);
    }
    let zones = zone_filter(request.zones.as_deref())?;

    let state = &context.app;
    // One snapshot of the token set for the whole request: a reload swaps the set whole.
    let tokens = state.tokens.load();
    let Some(grant) = tokens.authorize(token, &client) else {
        debug!(client = %client, "refused a stats request: token not valid for this client");
        return Err(ApiError::Forbidden);
    };
    if let Some(limiter) = &context.limiter {
        if let Err(not_until) = limiter.check_key(&grant.key) {
            let wait = not_until.wait_time_from(limiter.clock().now());
            debug!(client = %client, token = %grant.name, "refused a stats request: rate limited");
            return Err(ApiError::TooManyRequests {
                retry_after_secs: retry_after_secs(wait),
            });
        }
    }
    if !state.status.is_ready() {
        return Err(ApiError::NotReady);
    }
    debug!(client = %client, token = %grant.name, "stats request");

    let view = state.projection.view(&client);
    let body = view.as_ref().map_or_else(
        || Bytes::from_static(br#"{"data":[]}"#),
        |view| view.body(zones.as_deref()),
    );
    let mut response = Response::new(Body::from(body));
    let headers = response.headers_mut();
    // Room for ours and the CORS layer's, so the map is sized once rather than grown twice.
    headers.reserve(8);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let lag = match state.status.lag() {
        0 => HeaderValue::from_static("0"),
        lag => HeaderValue::from(lag),
    };
    headers.insert(X_STATS_LAG, lag);
    // Formatted once per publish by the projection; here only checked and shared.
    if let Some(as_of) = view
        .and_then(|view| view.as_of_rfc3339())
        .and_then(|text| HeaderValue::from_maybe_shared(text).ok())
    {
        headers.insert(X_STATS_AS_OF, as_of);
    }
    Ok(response)
}

/// Reads a request body of at most [`MAX_BODY`] bytes within `timeout`.
///
/// A declared `Content-Length` over the limit is refused before a byte of the body is read; a
/// chunked body is cut off as soon as it passes the limit. The common small body has arrived
/// with the head already, so the first poll finishes it and no timer is armed.
async fn read_body(body: Body, timeout: Duration) -> Result<Bytes, ApiError> {
    if body.size_hint().lower() > MAX_BODY as u64 {
        return Err(ApiError::BodyTooLarge);
    }
    let mut collect = pin!(Limited::new(body, MAX_BODY).collect());
    let collected = match poll_fn(|cx| Poll::Ready(collect.as_mut().poll(cx))).await {
        Poll::Ready(collected) => collected,
        Poll::Pending => tokio::time::timeout(timeout, collect)
            .await
            .map_err(|_| ApiError::BodyTimeout)?,
    };
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(ApiError::BodyTooLarge),
        // A broken chunked encoding or a connection closed halfway: the body is not JSON.
        Err(_) => Err(ApiError::InvalidBody),
    }
}

/// `Retry-After` in whole seconds, rounded up, at least 1 (0 would invite an immediate retry).
fn retry_after_secs(wait: Duration) -> u32 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    u32::try_from(secs.max(1)).unwrap_or(u32::MAX)
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

async fn missing_client() -> ApiError {
    ApiError::MissingClient
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// 405 in the API's own error shape for the read-only routes, which take GET (and HEAD).
async fn get_only() -> Response {
    let mut response = ApiError::MethodNotAllowed.into_response();
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    response
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
        // A shared lock for the handles that exist (all but the first request of each kind); the
        // exclusive one of `entry` only to register a new one.
        match self.requests.get(&(route, status)) {
            Some(counter) => counter.increment(1),
            None => self
                .requests
                .entry((route, status))
                .or_insert_with(|| {
                    counter!(telemetry::HTTP_REQUESTS, "route" => route, "status" => status.to_string())
                })
                .increment(1),
        }
        match self.durations.get(route) {
            Some(histogram) => histogram.record(seconds),
            None => self
                .durations
                .entry(route)
                .or_insert_with(|| histogram!(telemetry::HTTP_DURATION, "route" => route))
                .record(seconds),
        }
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

/// What protects the service from slow, greedy and hostile clients. The defaults suit a service
/// that faces client integrations directly or through a load balancer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// How long a client has to send a request's head (request line and headers). It is also
    /// how long an idle keep-alive connection stays open: hyper starts the clock whenever it
    /// waits for a next head, so an idle connection cannot hold a slot for ever.
    pub header_read_timeout: Duration,
    /// How long a client has, once the head has arrived, to send the whole body.
    pub body_read_timeout: Duration,
    /// Connections served at once. Further clients wait in the listen backlog until a slot
    /// frees, rather than being refused: nobody gets an error for arriving in a burst.
    pub max_connections: usize,
    /// Per-token limit of the stats request; `None` (the default) leaves it off.
    pub rate_limit: Option<RateLimit>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(DEFAULT_HEADER_READ_TIMEOUT_SECS),
            body_read_timeout: Duration::from_secs(DEFAULT_BODY_READ_TIMEOUT_SECS),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            rate_limit: None,
        }
    }
}

impl Limits {
    /// The limits `permit-stats serve` was given.
    pub fn from_args(args: &ServeArgs) -> Self {
        Self {
            header_read_timeout: Duration::from_secs(args.header_read_timeout),
            body_read_timeout: Duration::from_secs(args.body_read_timeout),
            max_connections: args.max_connections,
            rate_limit: args.rate_limit.map(|limit| match args.rate_limit_burst {
                Some(burst) => limit.with_burst(burst),
                None => limit,
            }),
        }
    }
}

/// A per-token rate: `requests` per `period`, with bursts of up to `burst` requests.
///
/// Written `50/s`, `3000/min` or `100000/h` (also `/sec`, `/m`, `/hour`); the burst defaults to
/// one period's worth (`50/s` lets a token send 50 at once, then one every 20 ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests per period.
    pub requests: NonZeroU32,
    /// The period.
    pub period: Duration,
    /// Requests a token may send at once after a quiet spell.
    pub burst: NonZeroU32,
}

/// Why a `--rate-limit` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateLimitError {
    /// Not `<count>/<unit>`.
    #[error("expected <count>/<unit>, e.g. 50/s, 3000/min or 100000/h")]
    Shape,
    /// The count is not a whole number from 1 to 1,000,000.
    #[error("the count must be a whole number from 1 to 1000000")]
    Count,
    /// The unit is not seconds, minutes or hours.
    #[error("the unit must be s, min or h")]
    Unit,
}

impl RateLimit {
    /// The same rate with another burst size.
    pub fn with_burst(self, burst: NonZeroU32) -> Self {
        Self { burst, ..self }
    }

    fn quota(self) -> Quota {
        // `requests` is at most 1,000,000 and the period at least 1 s, so the interval is at
        // least 1 µs and never zero.
        let interval = self.period / self.requests.get();
        Quota::with_period(interval)
            .unwrap_or_else(|| Quota::per_second(self.requests))
            .allow_burst(self.burst)
    }
}

impl FromStr for RateLimit {
    type Err = RateLimitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (count, unit) = s.trim().split_once('/').ok_or(RateLimitError::Shape)?;
        let requests: NonZeroU32 = count
            .trim()
            .parse()
            .ok()
            .filter(|n: &NonZeroU32| n.get() <= 1_000_000)
            .ok_or(RateLimitError::Count)?;
        let period = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return Err(RateLimitError::Unit),
        };
        Ok(Self {
            requests,
            period,
            burst: requests,
        })
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.period.as_secs() {
            60 => "min",
            3600 => "h",
            _ => "s",
        };
        write!(f, "{}/{unit} (burst {})", self.requests, self.burst)
    }
}

/// Serves `router` on `listener` until `shutdown` fires; then stops accepting (new connections
/// are refused once the listener is dropped) and waits for open connections to finish their
/// in-flight request. The caller bounds that wait (`--shutdown-grace`).
///
/// Each connection holds one of `limits.max_connections` slots from accept to close; with none
/// free, accepting pauses and the kernel's backlog holds newcomers.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // Some clients (netcat, scripts) shut their sending side once the request is out and
        // wait for the answer: without this hyper would hang up on them unanswered.
        .half_close(true)
        .max_header_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    info!(
        max_connections = limits.max_connections,
        header_read_timeout_ms = limits.header_read_timeout.as_millis(),
        body_read_timeout_ms = limits.body_read_timeout.as_millis(),
        rate_limit = %limits
            .rate_limit
            .map_or_else(|| "off".to_owned(), |limit| limit.to_string()),
        "serving HTTP"
    );
    loop {
        let slot = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                // Never closed: the semaphore lives in this function.
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    accept_failed(e, &shutdown).await;
                    continue;
                }
            },
        };
        // Answers are small and written whole: Nagle's algorithm would only delay them.
        let _ = stream.set_nodelay(true);
        let connection = graceful.watch(http.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(router.clone()),
        ));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                // Timeouts, resets and unparsable requests end here: the client's doing.
                debug!("connection closed: {e}");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// A failed accept: a client that gave up is nothing; anything else (out of file descriptors)
/// is logged and accepting pauses a second, since retrying at once would spin.
async fn accept_failed(e: std::io::Error, shutdown: &CancellationToken) {
    use std::io::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::ConnectionRefused
    ) {
        return;
    }
    error!("cannot accept a connection: {e}");
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = tokio::time::sleep(Duration::from_secs(1)) => {}
    }
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
    fn rate_limits_parse_with_a_default_burst_of_one_period() {
        let limit: RateLimit = "50/s".parse().expect("valid");
        assert_eq!(limit.requests.get(), 50);
        assert_eq!(limit.period, Duration::from_secs(1));
        assert_eq!(limit.burst.get(), 50);
        assert_eq!(
            " 3000 / min ".parse::<RateLimit>().map(|l| l.period),
            Ok(Duration::from_secs(60))
        );
        assert_eq!("1/h".parse::<RateLimit>().map(|l| l.requests.get()), Ok(1));
        assert_eq!("50".parse::<RateLimit>(), Err(RateLimitError::Shape));
        assert_eq!("0/s".parse::<RateLimit>(), Err(RateLimitError::Count));
        assert_eq!("-5/s".parse::<RateLimit>(), Err(RateLimitError::Count));
        assert_eq!("2000000/s".parse::<RateLimit>(), Err(RateLimitError::Count));
        assert_eq!("5/day".parse::<RateLimit>(), Err(RateLimitError::Unit));
    }

    #[test]
    fn limits_come_from_the_command_line_with_sane_defaults() {
        use crate::config::{Cli, Command};
        use clap::Parser as _;
        let limits = |extra: &[&str]| {
            let argv = ["permit-stats", "serve", "--demo"].iter().chain(extra);
            match Cli::try_parse_from(argv).map(|cli| cli.command) {
                Ok(Command::Serve(args)) => Ok(Limits::from_args(&args)),
                Ok(_) => panic!("parsed another subcommand"),
                Err(e) => Err(e.kind()),
            }
        };
        let defaults = limits(&[]).expect("valid");
        assert_eq!(defaults, Limits::default());
        assert_eq!(defaults.header_read_timeout, Duration::from_secs(10));
        assert_eq!(defaults.body_read_timeout, Duration::from_secs(10));
        assert_eq!(defaults.max_connections, 1024);
        assert_eq!(defaults.rate_limit, None, "rate limiting is off by default");

        let set = limits(&[
            "--header-read-timeout",
            "3",
            "--body-read-timeout",
            "4",
            "--max-connections",
            "50",
            "--rate-limit",
            "50/s",
            "--rate-limit-burst",
            "10",
        ])
        .expect("valid");
        assert_eq!(set.header_read_timeout, Duration::from_secs(3));
        assert_eq!(set.body_read_timeout, Duration::from_secs(4));
        assert_eq!(set.max_connections, 50);
        let rate = set.rate_limit.expect("a rate limit");
        assert_eq!((rate.requests.get(), rate.burst.get()), (50, 10));

        assert!(limits(&["--rate-limit", "fast"]).is_err());
        assert!(limits(&["--max-connections", "0"]).is_err());
        assert!(limits(&["--header-read-timeout", "0"]).is_err());
        assert!(
            limits(&["--rate-limit-burst", "5"]).is_err(),
            "a burst needs a rate"
        );
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(20)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(60)), 60);
    }

    #[test]
    fn every_error_variant_is_listed_once_in_all() {
        // Adding a variant breaks this match until it is also added to ALL (and to the docs).
        let index = |e: ApiError| match e {
            ApiError::MissingClient => 0,
            ApiError::MissingToken => 1,
            ApiError::Forbidden => 2,
            ApiError::InvalidBody => 3,
            ApiError::TooLong("apiToken") => 4,
            ApiError::TooLong(_) => 5,
            ApiError::InvalidCharacters => 6,
            ApiError::BodyTooLarge => 7,
            ApiError::BodyTimeout => 8,
            ApiError::TooManyRequests { .. } => 9,
            ApiError::NotReady => 10,
            ApiError::NotFound => 11,
            ApiError::MethodNotAllowed => 12,
        };
        let indexes: Vec<usize> = ApiError::ALL.into_iter().map(index).collect();
        assert_eq!(indexes, (0..ApiError::ALL.len()).collect::<Vec<_>>());
    }
}
