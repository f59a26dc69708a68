//! The API's answers other than a success: [`ApiError`], each variant with its OPS-COM
//! `ErrorCode` and HTTP status in one `match`, the vendor's error body, and the router's fallbacks
//! that answer with them (unknown path, wrong method, blank client code).
//!
//! Messages say what the client did wrong; details of server-side failures are logged, never
//! sent. `docs/openapi.json` lists every variant; an integration test (openapi) keeps the two in
//! step.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;

/// Seconds a client should wait before retrying a 503.
pub(super) const RETRY_AFTER_SECS: &str = "1";

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

/// A stats request with an empty client code segment.
pub(super) async fn missing_client() -> ApiError {
    ApiError::MissingClient
}

/// A method the stats route does not take.
pub(super) async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// 405 in the API's own error shape for the read-only routes, which take GET (and HEAD).
pub(super) async fn get_only() -> Response {
    let mut response = ApiError::MethodNotAllowed.into_response();
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    response
}

/// A path the router does not know.
pub(super) async fn not_found() -> ApiError {
    ApiError::NotFound
}

#[cfg(test)]
mod tests {
    use super::*;

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
