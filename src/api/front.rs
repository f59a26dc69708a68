//! The service every connection is served by ([`Api`]): the stats request, the hot path, is
//! matched here by hand and answered directly; every other request goes to the axum router.
//!
//! Why: measured against nginx serving the same bytes, a third of the time per stats request
//! went to what surrounds the handler, not to the handler: the router's boxed service clone and
//! future, the middleware's `Next`, the CORS layer's own header map, an `axum::Body` box around
//! bytes that are already whole (BENCHMARKS.md, "The stats request before the router"). Here
//! the request goes from hyper to [`super::stats::answer`] and back with none of that; what
//! those layers did for it is done here the same way:
//!
//! - the request counter and latency histogram of [`super::track`], under the same route;
//! - the CORS headers, which for a request that is not a preflight are the same for every
//!   request, and are taken once, at start, from the router's own CORS layer (so the two paths
//!   cannot drift apart);
//! - the path's client code, percent-decoded as axum's `Path` decodes it.
//!
//! The router still has the stats route, with the same handler: a request this match does not
//! take (a preflight, another method) gets exactly the answer it got before.

use std::{
    convert::Infallible,
    future::Future,
    ops::Range,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use axum::{
    Router,
    body::{Body, Bytes, HttpBody},
    http::{HeaderName, HeaderValue, Method, Request, Response, header},
    response::IntoResponse as _,
    routing::future::RouteFuture,
};
use futures_util::{
    FutureExt as _,
    future::{self, Map},
};
use http_body_util::{Either, Full};
use tower::{Layer as _, Service as _, ServiceExt as _, service_fn};
use tower_http::cors::CorsLayer;

use super::{
    AppState, Limits, paths,
    stats::{self, StatsContext},
    track::HttpMetrics,
};
use crate::telemetry::Route;

/// A response of either path: the stats answer's bytes as they are, or the router's body.
pub type ApiBody = Either<Full<Bytes>, Body>;

/// The whole HTTP API as one service: the stats request matched before the router, the rest by
/// it. hyper serves it ([`hyper::service::Service`]); tests call it in process
/// ([`tower::Service`], for any request body).
///
/// A clone shares its state; each of the server's worker threads gets a copy of its own.
#[derive(Clone)]
pub struct Api(Arc<Inner>);

#[derive(Clone)]
struct Inner {
    stats: Arc<StatsContext>,
    router: Router,
    metrics: Arc<HttpMetrics>,
    /// What the CORS layer adds to an answer that is not a preflight's.
    cors: Arc<[(HeaderName, HeaderValue)]>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").finish_non_exhaustive()
    }
}

/// The stats path ([`paths::STATS`]) around its client code, one non-empty segment.
const STATS_PREFIX: &str = "/api/";
const STATS_SUFFIX: &str = "/v1/permits/stats";

impl Api {
    /// The API over `state`, with the body read timeout and rate limit of `limits` (the
    /// server applies the rest of them).
    pub fn new(state: AppState, limits: &Limits) -> Self {
        let stats = Arc::new(StatsContext::new(state.clone(), limits));
        let metrics = Arc::new(HttpMetrics::default());
        let cors = super::cors();
        Self(Arc::new(Inner {
            cors: simple_cors_headers(&cors).into(),
            router: super::router(state, Arc::clone(&stats), Arc::clone(&metrics), cors),
            stats,
            metrics,
        }))
    }

    /// The same API under a reference count of its own: every connection and stats request
    /// clones the `Api` it is served by, and a count shared by the worker threads would be a
    /// cache line they all write to.
    pub(super) fn for_worker(&self) -> Self {
        Self(Arc::new(Inner::clone(&self.0)))
    }

    /// Answers `request`.
    fn answer<B>(&self, request: Request<B>) -> ApiFuture
    where
        B: HttpBody<Data = Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        if request.method() == Method::POST
            && let Some(client) = stats_client(request.uri().path())
        {
            let api = Arc::clone(&self.0);
            let started = Instant::now();
            return future::Either::Left(Box::pin(async move {
                let (parts, body) = request.into_parts();
                let raw = &parts.uri.path()[client];
                let client = percent_encoding::percent_decode_str(raw).decode_utf8().ok();
                let answer = stats::answer(&api.stats, client.as_deref(), body).await;
                let mut response = match answer {
                    Ok(response) => response.map(Either::Left),
                    Err(e) => e.into_response().map(Either::Right),
                };
                let headers = response.headers_mut();
                for (name, value) in api.cors.iter() {
                    headers.append(name.clone(), value.clone());
                }
                let seconds = started.elapsed().as_secs_f64();
                api.metrics
                    .record(Route::Stats, response.status().as_u16(), seconds);
                Ok(response)
            }));
        }
        let mut router = self.0.router.clone();
        future::Either::Right(router.call(request).map(router_answer as RouterAnswer))
    }
}

type RouterAnswer = fn(Result<Response<Body>, Infallible>) -> Result<Response<ApiBody>, Infallible>;

/// The router's answer as an [`ApiBody`] one.
fn router_answer(
    response: Result<Response<Body>, Infallible>,
) -> Result<Response<ApiBody>, Infallible> {
    response.map(|response| response.map(Either::Right))
}

/// The future of [`Api`]'s answer.
pub type ApiFuture = future::Either<
    Pin<Box<dyn Future<Output = Result<Response<ApiBody>, Infallible>> + Send>>,
    Map<RouteFuture<Infallible>, RouterAnswer>,
>;

impl hyper::service::Service<Request<hyper::body::Incoming>> for Api {
    type Response = Response<ApiBody>;
    type Error = Infallible;
    type Future = ApiFuture;

    fn call(&self, request: Request<hyper::body::Incoming>) -> Self::Future {
        self.answer(request)
    }
}

impl<B> tower::Service<Request<B>> for Api
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response<ApiBody>;
    type Error = Infallible;
    type Future = ApiFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        self.answer(request)
    }
}

/// Where the client code lies in a stats path (`/api/{client}/v1/permits/stats`), or `None`
/// for any other path, the stats path with an empty segment included (the router answers that
/// one).
fn stats_client(path: &str) -> Option<Range<usize>> {
    let client = path
        .strip_prefix(STATS_PREFIX)?
        .strip_suffix(STATS_SUFFIX)?;
    (!client.is_empty() && !client.contains('/'))
        .then(|| STATS_PREFIX.len()..STATS_PREFIX.len() + client.len())
}

/// The headers `cors` adds to the answer of a request that is not a preflight, taken from the
/// layer itself around an empty answer.
fn simple_cors_headers(cors: &CorsLayer) -> Vec<(HeaderName, HeaderValue)> {
    let inner = service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new(())) });
    let request = Request::post(paths::STATS)
        .header(header::ORIGIN, "https://example.com")
        .body(())
        .expect("a static request is valid");
    let response = cors
        .layer(inner)
        .oneshot(request)
        .now_or_never()
        .expect("the CORS layer around a ready service answers at once")
        .expect("infallible");
    response
        .headers()
        .iter()
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use arc_swap::ArcSwap;
    use http_body_util::BodyExt as _;
    use sha2::{Digest as _, Sha256};

    use super::*;
    use crate::{
        api::{RateLimit, auth::Tokens},
        events::{Change, PermitEvent},
        projection::Projection,
        status::IngestStatus,
        telemetry,
    };

    const TOKEN: &str = "front-test-token-0123456789";

    fn state(ready: bool) -> AppState {
        let projection = Arc::new(Projection::new());
        for (i, (zone, permit_type)) in [
            ("Lot 01", "standard"),
            ("Lot 02", "temp"),
            ("Lot 01", "temp"),
        ]
        .into_iter()
        .enumerate()
        {
            projection.apply(&PermitEvent {
                client: "OC-TOMA".into(),
                reference_id: format!("p{i}"),
                revision: None,
                occurred_at_ms: Some(1_700_000_000_000),
                change: Change::Created {
                    zone: zone.into(),
                    permit_type: permit_type.into(),
                },
            });
        }
        let digest = hex::encode(Sha256::digest(TOKEN));
        let tokens = Tokens::parse(&format!(
            "[[tokens]]\nclient = \"OC-TOMA\"\nname = \"test\"\npermissions = [\"permit-create\"]\nsha256 = \"{digest}\"\n"
        ))
        .expect("a valid token file");
        let status = Arc::new(IngestStatus::new());
        if ready {
            status.mark_ready();
        }
        status.set_lag(3);
        AppState {
            projection,
            tokens: Arc::new(ArcSwap::from_pointee(tokens)),
            status,
            metrics: telemetry::test_metrics(),
        }
    }

    /// Status, every header and the body. Without `Content-Length`, which axum sets and hyper
    /// otherwise writes from the body's exact size: on the wire both answers carry it.
    async fn parts<B: HttpBody>(response: Response<B>) -> (u16, Vec<(String, Vec<u8>)>, Bytes)
    where
        B::Error: std::fmt::Debug,
    {
        let status = response.status().as_u16();
        assert!(
            response.body().size_hint().exact().is_some(),
            "{status}: a sized body"
        );
        let headers = response
            .headers()
            .iter()
            .filter(|(name, _)| *name != header::CONTENT_LENGTH)
            .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
            .collect();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("a body")
            .to_bytes();
        (status, headers, body)
    }

    #[tokio::test]
    async fn the_stats_request_taken_before_the_router_answers_as_the_router_does() {
        let long_body = format!(r#"{{"apiToken":"{TOKEN}","x":"{}"}}"#, "a".repeat(70_000));
        let bodies = [
            format!(r#"{{"apiToken":"{TOKEN}"}}"#),
            format!(r#"{{"apiToken":"{TOKEN}","zones":" Lot 02 ,,nowhere,Lot 01"}}"#),
            format!(r#"{{"apiToken":"{TOKEN}","zones":""}}"#),
            r#"{"apiToken":"not-the-token"}"#.to_owned(),
            r#"{"apiToken":"bad token!"}"#.to_owned(),
            format!(r#"{{"apiToken":"{}"}}"#, "a".repeat(51)),
            r#"{}"#.to_owned(),
            r#"["x"]"#.to_owned(),
            "not json".to_owned(),
            long_body,
        ];
        let paths = [
            "/api/OC-TOMA/v1/permits/stats",
            "/api/OC%2DTOMA/v1/permits/stats?x=1",
            "/api/OC-OTHER/v1/permits/stats",
            "/api/%20/v1/permits/stats",
            "/api/%FF/v1/permits/stats",
        ];
        // Rate limited, so that the 429 is compared too: each path its own API, so that both
        // see the same sequence of requests.
        let limits = Limits {
            rate_limit: Some(RateLimit::new(
                NonZeroU32::new(20).expect("non-zero"),
                std::time::Duration::from_secs(60),
            )),
            ..Limits::default()
        };
        for ready in [true, false] {
            let state = state(ready);
            let (front, router) = (Api::new(state.clone(), &limits), Api::new(state, &limits));
            let mut compared = 0;
            for path in paths {
                for (i, body) in bodies.iter().enumerate() {
                    // With and without an Origin: the CORS headers taken once at start must be
                    // the layer's for either.
                    let request = || {
                        let request = Request::post(path);
                        let request = if i % 2 == 0 {
                            request.header(header::ORIGIN, "https://integrator.example")
                        } else {
                            request
                        };
                        request
                            .body(Full::new(Bytes::from(body.clone())))
                            .expect("a valid request")
                    };
                    assert!(
                        stats_client(request().uri().path()).is_some(),
                        "{path} is taken by hand"
                    );
                    let by_hand = front.clone().oneshot(request()).await.expect("infallible");
                    let routed = router
                        .0
                        .router
                        .clone()
                        .oneshot(request())
                        .await
                        .expect("infallible");
                    assert_eq!(
                        parts(by_hand).await,
                        parts(routed).await,
                        "{path} {body:.60}"
                    );
                    compared += 1;
                }
            }
            assert_eq!(compared, paths.len() * bodies.len());
        }
    }

    #[test]
    fn only_the_stats_path_with_a_client_is_taken_by_hand() {
        assert_eq!(
            format!("{STATS_PREFIX}{{client}}{STATS_SUFFIX}"),
            paths::STATS,
            "the hand match follows the router's stats path"
        );
        assert_eq!(stats_client("/api/OC-TOMA/v1/permits/stats"), Some(5..12));
        for path in [
            "/api//v1/permits/stats",
            "/api/v1/permits/stats",
            "/api/a/b/v1/permits/stats",
            "/api/OC-TOMA/v1/permits/stats/",
            "/api/OC-TOMA/v1/permits/stat",
            "/health/live",
            "/",
        ] {
            assert_eq!(stats_client(path), None, "{path}");
        }
    }
}
