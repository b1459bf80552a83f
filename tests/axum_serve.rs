//! Layer-only mode: `GracefulLayer` under plain `axum::serve`.

mod common;

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use httpdown::{GracefulLayer, Outcome};
use tokio::time::Instant;

/// An endless stream would hang `axum::serve(..).with_graceful_shutdown(..)` forever; with
/// the layer it is cut at the stop deadline, the client sees an incomplete body, and axum
/// returns.
#[tokio::test]
async fn the_layer_alone_ends_an_endless_stream_at_the_stop_deadline() {
    let layer = GracefulLayer::from_shutdown(
        httpdown::Shutdown::builder()
            .stop_timeout(Duration::from_millis(400))
            .build(),
    );
    let shutdown = layer.shutdown().clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        axum::serve(listener, app(Arc::default()).layer(layer))
            .with_graceful_shutdown(shutdown.drain_started())
            .into_future(),
    );
    let mut idle = get_request(addr, "/").await;
    read_until(&mut idle, "hello").await;
    let mut client = get_request(addr, "/stream").await;
    read_until(&mut client, "tick\n").await;

    let t0 = Instant::now();
    shutdown.trigger();
    // axum closes the idle connection itself at drain start.
    let (rest, end) = read_to_end(&mut idle).await;
    assert_eq!((rest.as_str(), end), ("", End::Eof));
    let (rest, _) = read_to_end(&mut client).await;
    assert!(
        !rest.contains("0\r\n\r\n"),
        "the cut stream looks complete: {rest:?}"
    );
    assert!(t0.elapsed() >= Duration::from_millis(400));
    tokio::time::timeout(BOUND, server)
        .await
        .expect("axum::serve still running after the stop deadline")
        .unwrap()
        .unwrap();
    let report = no_panics(shutdown.wait().await);
    assert_eq!(
        report.outcome(),
        Outcome::ForceClosed {
            connections: 0,
            requests: 1
        }
    );
}

/// In-flight requests under `axum::serve` are waited for, as with `serve`.
#[tokio::test]
async fn the_layer_alone_waits_for_in_flight_requests() {
    let shutdown = httpdown::Shutdown::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        axum::serve(listener, app(Arc::default()).layer(shutdown.layer()))
            .with_graceful_shutdown(shutdown.drain_started())
            .into_future(),
    );
    let mut client = get_request(addr, "/slow?ms=300").await;
    read_until(&mut client, "start\n").await;
    assert_eq!(shutdown.in_flight(), 1);
    shutdown.trigger();
    let (rest, _) = read_to_end(&mut client).await;
    assert!(rest.ends_with("end\n\r\n0\r\n\r\n"), "{rest:?}");
    let report = no_panics(shutdown.wait().await);
    assert_eq!(report.outcome(), Outcome::Drained);
    assert!(report.drain() >= Duration::from_millis(250), "{report}");
    tokio::time::timeout(BOUND, server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
