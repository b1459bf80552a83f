//! B45: the layer composes with tower-http's usual stack in any order tower accepts
//! (`ResponseBody<B>: Default` lets it sit inside `TimeoutLayer`); each placement the
//! README shows is served and drained here, and what differs is checked: only with the
//! layer inside `TraceLayer` does the trace see a force-closed request.

mod common;

use std::future::IntoFuture;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use common::*;
use httpdown::{Outcome, Shutdown};
use tower::ServiceBuilder;
use tower_http::classify::ServerErrorsFailureClass;
use tower_http::compression::CompressionLayer;
use tower_http::cors::CorsLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

/// Counts the requests `TraceLayer` saw fail (a 5xx, or a body error).
#[derive(Clone, Default)]
struct Failures(Arc<AtomicUsize>);

impl Failures {
    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

fn routes() -> Router {
    Router::new()
        .route("/", get(|| async { "hello" }))
        .route("/wait", get(std::future::pending::<&'static str>))
}

/// Serves `app` with `axum::serve` (the layer is what a stack like this is for; `serve`
/// counts requests itself, and at the stop deadline drops the connection, so its client
/// sees the connection end rather than a 503), checks a request works, then leaves one
/// pending request to be force-closed at the stop deadline (300 ms) and returns what the
/// client got for it.
async fn drain(app: Router, shutdown: &Shutdown) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.drain_started())
            .into_future(),
    );
    let mut conn = get_request(addr, "/").await;
    read_until(&mut conn, "hello").await;
    drop(conn);
    let mut pending = get_request(addr, "/wait").await;
    tokio::time::timeout(BOUND, async {
        while shutdown.in_flight() != 1 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .unwrap();
    shutdown.trigger();
    let (text, _) = read_to_end(&mut pending).await;
    tokio::time::timeout(BOUND, server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let report = no_panics(shutdown.wait().await);
    assert!(
        matches!(report.outcome(), Outcome::ForceClosed { requests: 1, .. }),
        "{report}"
    );
    text
}

/// What a client sees of a request force-closed while pending: no response (hyper finds
/// the 503's body failing before it writes the head) or a 503, never a success.
fn assert_cut(text: &str) {
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 503 "),
        "{text:?}"
    );
}

/// The recommended placement: the layer outermost, so it counts the whole request and
/// its cut happens outside everything else.
#[tokio::test]
async fn outermost() {
    let shutdown = shutdown(Duration::from_millis(300));
    let failures = Failures::default();
    let seen = failures.clone();
    let app = routes().layer(
        ServiceBuilder::new()
            .layer(shutdown.layer())
            .layer(TraceLayer::new_for_http().on_failure(
                move |_: ServerErrorsFailureClass, _: Duration, _: &tracing::Span| {
                    seen.0.fetch_add(1, Ordering::SeqCst);
                },
            ))
            .layer(RequestBodyLimitLayer::new(1 << 20))
            .layer(CompressionLayer::new())
            .layer(CorsLayer::permissive())
            .layer(TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                Duration::from_secs(60),
            )),
    );
    let text = drain(app, &shutdown).await;
    assert_cut(&text);
    assert_eq!(
        failures.get(),
        0,
        "outside TraceLayer, the trace never sees the cut"
    );
}

/// Inside `TraceLayer` and `TimeoutLayer` (possible because `ResponseBody<B>: Default`;
/// tower-http's `TimeoutLayer` needs a default body from what it wraps, so it sits inside
/// `RequestBodyLimitLayer` and `CompressionLayer` whatever the layer's place):
/// the trace sees the cut as a failed (503) request.
#[tokio::test]
async fn inside_trace_and_timeout() {
    let shutdown = shutdown(Duration::from_millis(300));
    let failures = Failures::default();
    let seen = failures.clone();
    let app = routes().layer(
        ServiceBuilder::new()
            .layer(TraceLayer::new_for_http().on_failure(
                move |_: ServerErrorsFailureClass, _: Duration, _: &tracing::Span| {
                    seen.0.fetch_add(1, Ordering::SeqCst);
                },
            ))
            .layer(RequestBodyLimitLayer::new(1 << 20))
            .layer(CompressionLayer::new())
            .layer(CorsLayer::permissive())
            .layer(TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                Duration::from_secs(60),
            ))
            .layer(shutdown.layer()),
    );
    let text = drain(app, &shutdown).await;
    assert_cut(&text);
    assert!(
        failures.get() >= 1,
        "inside TraceLayer, the trace sees the cut"
    );
}

/// Innermost, right around the routes (or as `Router::layer`, per route): still counted
/// and cut, with every other layer's work done outside it.
#[tokio::test]
async fn innermost() {
    let shutdown = shutdown(Duration::from_millis(300));
    let app = routes().layer(shutdown.layer()).layer(
        ServiceBuilder::new()
            .layer(TraceLayer::new_for_http())
            .layer(RequestBodyLimitLayer::new(1 << 20))
            .layer(CompressionLayer::new())
            .layer(CorsLayer::permissive())
            .layer(TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                Duration::from_secs(60),
            )),
    );
    let text = drain(app, &shutdown).await;
    assert_cut(&text);
}

/// Inside `TimeoutLayer`, the timeout still works: its 408 ends the request, and the
/// request stops counting.
#[tokio::test]
async fn a_timeout_outside_the_layer_still_ends_the_request() {
    use tower::{Layer, ServiceExt};

    let shutdown = Shutdown::new();
    let svc = ServiceBuilder::new()
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_millis(50),
        ))
        .layer(shutdown.layer())
        .service(routes());
    let request = http::Request::get("/wait").body(Body::empty()).unwrap();
    let response = svc.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
    assert_eq!(shutdown.in_flight(), 0);
    // `ResponseBody<B>: Default` is what lets the layer sit there.
    let _default: httpdown::ResponseBody<Body> = Default::default();
    let _ = TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, Duration::from_secs(1))
        .layer(shutdown.layer().layer(routes()));
}
