//! The request metrics of every route: a counter per (route, status) and a latency histogram per
//! route, recorded by a middleware around the whole router.

use std::{
    sync::{Arc, OnceLock},
    time::Instant,
};

use axum::{
    extract::{MatchedPath, Request, State},
    middleware::Next,
    response::Response,
};
use dashmap::DashMap;
use metrics::{Counter, Histogram, counter, histogram};

use super::paths;
use crate::telemetry::{self, Route};

/// Request counters and latency histograms, with handles cached per (route, status).
#[derive(Default)]
pub(super) struct HttpMetrics {
    /// The stats request's 200: nearly every request the service answers under load. Held
    /// apart so that it takes no map lookup: a map's shard lock is an atomic write to a cache
    /// line the other HTTP workers write too.
    stats_ok: OnceLock<(Counter, Histogram)>,
    requests: DashMap<(Route, u16), Counter>,
    durations: DashMap<Route, Histogram>,
}

impl HttpMetrics {
    /// Counts an answer of `status` on `route` and records how long it took.
    pub(super) fn record(&self, route: Route, status: u16, seconds: f64) {
        if route == Route::Stats && status == 200 {
            let (requests, duration) = self.stats_ok.get_or_init(|| {
                (
                    counter!(telemetry::HTTP_REQUESTS, "route" => route.label(), "status" => "200"),
                    histogram!(telemetry::HTTP_DURATION, "route" => route.label()),
                )
            });
            requests.increment(1);
            duration.record(seconds);
            return;
        }
        // A shared lock for the handles that exist (all but the first request of each kind); the
        // exclusive one of `entry` only to register a new one.
        match self.requests.get(&(route, status)) {
            Some(counter) => counter.increment(1),
            None => self
                .requests
                .entry((route, status))
                .or_insert_with(|| {
                    counter!(telemetry::HTTP_REQUESTS, "route" => route.label(), "status" => status.to_string())
                })
                .increment(1),
        }
        match self.durations.get(&route) {
            Some(histogram) => histogram.record(seconds),
            None => self
                .durations
                .entry(route)
                .or_insert_with(|| histogram!(telemetry::HTTP_DURATION, "route" => route.label()))
                .record(seconds),
        }
    }
}

/// The route a request matched, by the router's paths.
fn route_label(path: Option<&MatchedPath>) -> Route {
    match path.map(MatchedPath::as_str) {
        Some(paths::STATS | paths::STATS_WITHOUT_CLIENT) => Route::Stats,
        Some(paths::LIVE) => Route::Live,
        Some(paths::READY) => Route::Ready,
        Some(paths::METRICS) => Route::Metrics,
        _ => Route::Unmatched,
    }
}

/// The middleware: times the request and counts its answer.
pub(super) async fn track(
    State(metrics): State<Arc<HttpMetrics>>,
    request: Request,
    next: Next,
) -> Response {
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
