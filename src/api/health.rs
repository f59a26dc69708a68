//! The operator's routes: liveness, readiness (with the replay progress) and the `/metrics` page.

use axum::{
    extract::State,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

use super::{AppState, error::RETRY_AFTER_SECS};

/// `GET /health/live`: the process answers.
pub(super) async fn live() -> &'static str {
    "ok"
}

/// `GET /health/ready`: 200 once the projection has caught up since start, else 503; the body
/// is the replay progress either way.
pub(super) async fn ready(State(state): State<AppState>) -> Response {
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

/// `GET /metrics`: the Prometheus text page.
pub(super) async fn metrics_page(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        state.metrics.render(&state.projection),
    )
        .into_response()
}
