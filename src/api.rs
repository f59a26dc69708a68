//! The HTTP API: the OPS-COM "Permit Stats" request (spec/stats-api.md), health and metrics, and
//! the server that carries them.
//!
//! - `api.rs`: the routes, the CORS policy, and what the handlers share ([`AppState`]).
//! - `api/front.rs`: [`Api`], the hyper service of every connection: the stats request matched
//!   by hand before the axum router, everything else by the router.
//! - `api/stats.rs`: the stats request: body, field checks, token check, rate limit, zone filter.
//! - `api/error.rs`: [`ApiError`], each failure with its OPS-COM code and HTTP status in one place.
//! - `api/limits.rs`: [`Limits`] and [`RateLimit`], what slow, greedy and hostile clients meet.
//! - `api/server.rs`: the hyper server ([`serve`], [`serve_tls`]): deadlines, connection cap,
//!   graceful shutdown, over HTTP or HTTPS; and the service's per-core [`Workers`], each with
//!   its own runtime and `SO_REUSEPORT` listener ([`bind`]).
//! - `api/tls.rs` ([`tls`]): HTTPS's certificate and key, and their reload on SIGHUP or change.
//! - `api/reload.rs`: the one reload mechanism (SIGHUP and a poll of the files) of the token file
//!   and the certificate.
//! - `api/health.rs`: liveness, readiness and the `/metrics` page.
//! - `api/track.rs`: the request counters and latency histograms of every route.
//! - `api/auth.rs` ([`auth`]): the token file, the token check, and its reload on SIGHUP or change.
//!
//! `docs/openapi.json` describes all of it; an integration test (openapi) keeps the two in step.

pub mod auth;
mod error;
mod front;
mod health;
mod limits;
mod reload;
mod server;
mod stats;
pub mod tls;
mod track;

use std::{fmt, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use axum::{
    Router,
    http::{Method, header},
    middleware,
    routing::{get, post},
};
use tower_http::cors::{AllowHeaders, Any, CorsLayer};

pub use error::ApiError;
pub use front::{Api, ApiBody, ApiFuture};
pub use limits::{Limits, RateLimit};
pub use server::{MAX_HEAD_BYTES, Workers, bind, http1, serve, serve_tls};
pub use stats::{
    MAX_BODY, MAX_TOKEN_CHARS, MAX_ZONE_NAMES, MAX_ZONES_BYTES, X_STATS_AS_OF,
    X_STATS_HISTORY_MISSING, X_STATS_LAG, zone_filter,
};

use crate::{projection::Projection, status::IngestStatus, telemetry::Metrics};
use auth::Tokens;

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
    pub metrics: Metrics,
}

impl fmt::Debug for AppState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppState")
            .field("tokens", &self.tokens)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// The router's paths; the request metrics name each by its [`crate::telemetry::Route`].
mod paths {
    pub(super) const STATS: &str = "/api/{client}/v1/permits/stats";
    /// The stats path with an empty client code, answered with its own error.
    pub(super) const STATS_WITHOUT_CLIENT: &str = "/api//v1/permits/stats";
    pub(super) const LIVE: &str = "/health/live";
    pub(super) const READY: &str = "/health/ready";
    pub(super) const METRICS: &str = "/metrics";
}

/// The CORS policy (spec/stats-api.md): any origin, the API's methods, and the freshness headers
/// exposed to scripts.
fn cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::POST, Method::GET, Method::OPTIONS])
        .allow_headers(AllowHeaders::mirror_request())
        .expose_headers([
            X_STATS_AS_OF,
            X_STATS_LAG,
            X_STATS_HISTORY_MISSING,
            header::RETRY_AFTER,
        ])
        .max_age(Duration::from_secs(600))
}

/// The router of the whole API, every route with the request metrics and `cors`; [`Api`] takes
/// the stats request before it.
fn router(
    state: AppState,
    stats_context: Arc<stats::StatsContext>,
    metrics: Arc<track::HttpMetrics>,
    cors: CorsLayer,
) -> Router {
    Router::new()
        .route(
            paths::STATS,
            post(stats::stats)
                .fallback(error::method_not_allowed)
                .with_state(stats_context),
        )
        .route(
            paths::STATS_WITHOUT_CLIENT,
            post(error::missing_client).fallback(error::method_not_allowed),
        )
        .route(paths::LIVE, get(health::live).fallback(error::get_only))
        .route(paths::READY, get(health::ready).fallback(error::get_only))
        .route(
            paths::METRICS,
            get(health::metrics_page).fallback(error::get_only),
        )
        .fallback(error::not_found)
        .layer(middleware::from_fn_with_state(metrics, track::track))
        .layer(cors)
        .with_state(state)
}
