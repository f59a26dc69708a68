//! The stats request (spec/stats-api.md): the body read within its deadline and size, the field
//! checks, the token check, the per-token rate limit, the zone filter, and the answer.
//!
//! After validation and the token check the answer is a map lookup and a clone of the client's
//! ready-encoded bytes (or a join of the requested zones' runs); nothing a client sends can
//! produce a 5xx other than the documented 503.

use std::{
    borrow::Cow,
    future::{Future as _, poll_fn},
    pin::pin,
    sync::Arc,
    task::Poll,
    time::Duration,
};

use axum::{
    body::{Body, Bytes, HttpBody},
    extract::{Path, Request, State},
    http::{HeaderName, HeaderValue, header},
    response::{IntoResponse as _, Response},
};
use governor::{RateLimiter, clock::Clock as _};
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use serde::Deserialize;
use tracing::debug;

use super::{ApiError, AppState, Limits, auth::TokenKey};
use crate::text;

/// The largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;
/// The longest `apiToken`, in characters.
pub const MAX_TOKEN_CHARS: usize = 50;
/// The longest `zones` string, in bytes.
pub const MAX_ZONES_BYTES: usize = 8 * 1024;
/// The most zone names one request may list.
pub const MAX_ZONE_NAMES: usize = 1000;

/// `X-Stats-As-Of`: RFC 3339 time of the newest event applied to the client's projection.
pub const X_STATS_AS_OF: HeaderName = HeaderName::from_static("x-stats-as-of");
/// `X-Stats-Lag`: records not yet applied at the last check.
pub const X_STATS_LAG: HeaderName = HeaderName::from_static("x-stats-lag");
/// `X-Stats-History-Missing`: records the answer never saw (deleted by the topic before they
/// were read); only with `--allow-missing-history`.
pub const X_STATS_HISTORY_MISSING: HeaderName = HeaderName::from_static("x-stats-history-missing");

/// The request body. Unknown fields are ignored; `null` is the same as absent.
#[derive(Deserialize)]
struct StatsRequest<'a> {
    #[serde(rename = "apiToken", default, borrow)]
    api_token: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    zones: Option<Cow<'a, str>>,
}

/// What the stats handler needs beyond [`AppState`]; one `Arc` clone per request.
pub(super) struct StatsContext {
    app: AppState,
    /// Per-token limiter, keyed by the token's digest; `None` when rate limiting is off, so that
    /// the default configuration pays nothing for it.
    limiter: Option<TokenLimiter>,
    body_read_timeout: Duration,
}

type TokenLimiter = governor::DefaultKeyedRateLimiter<TokenKey>;

impl StatsContext {
    /// The handler's share of `app`, with the body read timeout and rate limit of `limits`.
    pub(super) fn new(app: AppState, limits: &Limits) -> Self {
        Self {
            app,
            limiter: limits
                .rate_limit
                .map(|limit| RateLimiter::dashmap(limit.quota())),
            body_read_timeout: limits.body_read_timeout,
        }
    }
}

/// `POST /api/{client}/v1/permits/stats` as the router's route (api/front.rs takes it before
/// the router; this is the same answer).
pub(super) async fn stats(
    State(context): State<Arc<StatsContext>>,
    client: Result<Path<String>, axum::extract::rejection::PathRejection>,
    request: Request,
) -> Response {
    let client = client.as_ref().ok().map(|Path(client)| client.as_str());
    match answer(&context, client, request.into_body()).await {
        Ok(response) => response.map(Body::new),
        Err(e) => e.into_response(),
    }
}

/// The stats request's answer: `client` is the path's client code, percent-decoded (`None` when
/// it is not UTF-8), `body` the request's body, read here within its deadline and size.
pub(super) async fn answer<B>(
    context: &StatsContext,
    client: Option<&str>,
    body: B,
) -> Result<Response<Full<Bytes>>, ApiError>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<axum::BoxError>,
{
    let client = client.unwrap_or_default();
    if client.trim().is_empty() {
        return Err(ApiError::MissingClient);
    }
    let body = read_body(body, context.body_read_timeout).await?;
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
    let Some(grant) = tokens.authorize(token, client) else {
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

    let view = state.projection.view(client);
    let body = view.as_ref().map_or_else(
        || Bytes::from_static(br#"{"data":[]}"#),
        |view| view.body(zones.as_deref()),
    );
    let mut response = Response::new(Full::new(body));
    let headers = response.headers_mut();
    // Room for ours and the CORS headers, so the map is sized once rather than grown twice.
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
    match state.status.history_missing() {
        0 => {}
        missing => {
            headers.insert(X_STATS_HISTORY_MISSING, HeaderValue::from(missing));
        }
    }
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
async fn read_body<B>(body: B, timeout: Duration) -> Result<Bytes, ApiError>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<axum::BoxError>,
{
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
/// (`replay --zones` reads its list the same way.)
pub fn zone_filter(zones: Option<&str>) -> Result<Option<Vec<&str>>, ApiError> {
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
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(20)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(60)), 60);
    }
}
