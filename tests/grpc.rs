//! B46: gRPC as a first-class user. A tonic service (tonic-health, no protoc) served by
//! `serve` over h2c: calls in flight at drain start complete; a call still running at the
//! stop deadline ends with `grpc-status: 14` (UNAVAILABLE), never a transport error read
//! as UNKNOWN; a call refused after the stop deadline gets UNAVAILABLE too; the health
//! service can report NOT_SERVING from the trigger on.

mod common;

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::middleware::{from_fn, Next};
use common::*;
use httpdown::{Outcome, Shutdown};
use tokio::net::TcpListener;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus as Status;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::HealthReporter;

/// A gRPC call's `x-delay-ms` metadata makes the server wait that long before answering:
/// a slow unary call.
async fn delay(request: Request, next: Next) -> axum::response::Response {
    let ms = request
        .headers()
        .get("x-delay-ms")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    if let Some(ms) = ms {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    next.run(request).await
}

/// Serves tonic-health on 127.0.0.1:0 with `serve`.
async fn grpc_server(
    shutdown: &Shutdown,
) -> (
    SocketAddr,
    HealthReporter,
    tokio::task::JoinHandle<Result<httpdown::Report, httpdown::Error>>,
) {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let app = tonic::service::Routes::new(health)
        .into_axum_router()
        .layer(from_fn(delay));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(httpdown::serve(listener, app, shutdown).into_future());
    (addr, reporter, server)
}

async fn client(addr: SocketAddr) -> HealthClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
}

fn check(delay_ms: u64) -> tonic::Request<HealthCheckRequest> {
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    request
        .metadata_mut()
        .insert("x-delay-ms", delay_ms.to_string().parse().unwrap());
    request
}

/// A unary call in flight at drain start completes normally; the drain waits for it.
#[tokio::test]
async fn a_unary_call_in_flight_at_drain_start_completes() {
    let shutdown = shutdown(Duration::from_secs(10));
    let (addr, _reporter, server) = grpc_server(&shutdown).await;
    let mut health = client(addr).await;
    let call = tokio::spawn(async move { health.check(check(300)).await });
    wait_until(|| shutdown.in_flight() == 1).await;
    shutdown.trigger();
    let response = call.await.unwrap().expect("the call completes");
    assert_eq!(response.into_inner().status, Status::Serving as i32);
    let report = served_in_time(server).await;
    assert_eq!(report.outcome(), Outcome::Drained, "{report}");
    assert_eq!(report.requests_at_drain(), 1);
}

/// A call still running at the stop deadline, unary (no response yet) or streaming (an
/// endless health `Watch`), ends with UNAVAILABLE and the crate's message: a status gRPC
/// retry policies retry, not UNKNOWN.
#[tokio::test]
async fn calls_cut_at_the_stop_deadline_end_with_unavailable() {
    let stop = Duration::from_millis(400);
    let shutdown = shutdown(stop);
    let (addr, _reporter, server) = grpc_server(&shutdown).await;
    let mut health = client(addr).await;
    let mut watcher = client(addr).await;

    let mut stream = watcher
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("the watch starts")
        .into_inner();
    let first: HealthCheckResponse = stream.message().await.unwrap().unwrap();
    assert_eq!(first.status, Status::Serving as i32);
    let unary = tokio::spawn(async move { health.check(check(60_000)).await });
    wait_until(|| shutdown.in_flight() == 2).await;

    let t0 = Instant::now();
    shutdown.trigger();
    let unary = tokio::time::timeout(BOUND, unary)
        .await
        .expect("the unary call ended")
        .unwrap();
    let status = unary.expect_err("cut at the stop deadline");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "server shutting down", "{status:?}");
    let ended = loop {
        match tokio::time::timeout(BOUND, stream.message()).await.unwrap() {
            Ok(Some(_)) => continue,
            other => break other,
        }
    };
    let status = ended.expect_err("the endless stream is cut, not ended cleanly");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(t0.elapsed() >= stop, "{:?}", t0.elapsed());

    let report = served_in_time(server).await;
    assert_eq!(
        report.outcome(),
        Outcome::ForceClosed {
            connections: 2,
            requests: 2
        },
        "{report}"
    );
}

/// A gRPC call that arrives after the stop deadline is refused with UNAVAILABLE, as a
/// "trailers-only" response (through the layer, where a call can still arrive then).
#[tokio::test]
async fn a_call_refused_after_the_stop_deadline_gets_unavailable() {
    use tower::{Layer, ServiceExt};

    let shutdown = Shutdown::builder()
        .stop_timeout(Duration::ZERO)
        .kill_timeout(Duration::from_secs(1))
        .build();
    shutdown.trigger();
    no_panics(shutdown.wait().await);
    let (_reporter, health) = tonic_health::server::health_reporter();
    let service = shutdown.layer().layer(health);
    let request = http::Request::post("/grpc.health.v1.Health/Check")
        .version(http::Version::HTTP_2)
        .header("content-type", "application/grpc")
        .body(tonic::body::Body::empty())
        .unwrap();
    let response = service.oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200, "gRPC answers with HTTP 200");
    assert_eq!(response.headers()["grpc-status"], "14");
    assert_eq!(
        response.headers()["grpc-message"],
        "server%20shutting%20down"
    );
    assert_eq!(response.headers()["content-type"], "application/grpc");
    let status = tonic::Status::from_header_map(response.headers()).unwrap();
    assert_eq!(status.code(), Code::Unavailable);
}

/// The health service reports NOT_SERVING from the trigger on (during the drain delay,
/// while requests are still served), so load balancers stop sending calls first.
#[tokio::test]
async fn health_reports_not_serving_from_the_trigger() {
    let shutdown = Shutdown::builder()
        .drain_delay(Duration::from_secs(2))
        .stop_timeout(Duration::from_secs(5))
        .kill_timeout(Duration::from_secs(1))
        .build();
    let (addr, reporter, server) = grpc_server(&shutdown).await;
    // What an application writes: flip the health status at the trigger.
    tokio::spawn({
        let triggered = shutdown.triggered();
        async move {
            triggered.await;
            reporter
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
        }
    });
    let mut health = client(addr).await;
    let before = health.check(check(0)).await.unwrap().into_inner();
    assert_eq!(before.status, Status::Serving as i32);
    shutdown.trigger();
    let mut status = Status::Serving as i32;
    let deadline = Instant::now() + Duration::from_secs(1);
    while status != Status::NotServing as i32 && Instant::now() < deadline {
        status = health.check(check(0)).await.unwrap().into_inner().status;
    }
    assert_eq!(status, Status::NotServing as i32, "during the drain delay");
    assert!(!shutdown.is_drain_started(), "still in the drain delay");
    drop(health);
    let report = served_in_time(server).await;
    assert_eq!(report.outcome(), Outcome::Drained, "{report}");
}

async fn wait_until(condition: impl Fn() -> bool) {
    tokio::time::timeout(BOUND, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("condition not reached in time");
}

/// B46 on paused time: at the stop deadline a connection that carried gRPC is polled a
/// little longer (up to 3 ms), so the `grpc-status: 14` trailers its cut calls have just
/// written reach the client before the socket closes.
#[tokio::test(start_paused = true)]
async fn a_cut_grpc_call_trailers_reach_the_client_before_the_close() {
    use axum::body::{Body, Bytes};
    use axum::routing::post;
    use futures_util::StreamExt;
    use http_body_util::BodyExt;
    let shutdown = Shutdown::builder()
        .stop_timeout(Duration::from_secs(1))
        .build();
    let app = axum::Router::new().route(
        "/endless",
        post(|| async {
            let ticks = futures_util::stream::unfold((), |()| async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Some((
                    Ok::<_, std::convert::Infallible>(Bytes::from_static(b"x")),
                    (),
                ))
            });
            Body::from_stream(ticks.boxed())
        }),
    );
    let (listener, connector) = channel_listener();
    let server = tokio::spawn(httpdown::serve(listener, app, &shutdown).into_future());
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(connector.connect()),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let request = http::Request::post("http://test/endless")
        .header("content-type", "application/grpc")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let mut body = sender.send_request(request).await.unwrap().into_body();
    body.frame().await.unwrap().unwrap();
    shutdown.trigger();
    let trailers = loop {
        match body.frame().await {
            Some(Ok(frame)) if frame.is_trailers() => break frame.into_trailers().unwrap(),
            Some(Ok(_)) => {}
            other => panic!("the trailers never arrived: {other:?}"),
        }
    };
    assert_eq!(trailers["grpc-status"], "14", "{trailers:?}");
    served(server).await;
}
