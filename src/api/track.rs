//! The request metrics of every route: a counter per (route, status) and a latency histogram per
//! route, recorded by a middleware around the whole router.

use std::{sync::Arc, time::Instant};

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
    requests: DashMap<(Route, u16), Counter>,
    durations: DashMap<Route, Histogram>,
}

impl HttpMetrics {
    fn record(&self, route: Route, status: u16, seconds: f64) {
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
