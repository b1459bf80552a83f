//! `GracefulLayer` on its own: what counts, for how long, and what the stop deadline does.

mod common;

use common::no_panics;
use std::convert::Infallible;
use std::time::Duration;

use axum::body::Bytes;
use axum::routing::get;
use axum::Router;
use futures_util::FutureExt;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use httpdown::{Drain, Graceful, GracefulLayer, Outcome, Phase, Shutdown};
use hyper::body::Frame;
use tokio::sync::mpsc;
use tower::{service_fn, Layer, Service, ServiceBuilder, ServiceExt};

type Chunks =
    StreamBody<futures_util::stream::BoxStream<'static, Result<Frame<Bytes>, Infallible>>>;

/// A body fed by the test through a channel, so the test decides when it ends.
fn channel_body() -> (mpsc::Sender<Bytes>, Chunks) {
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok(Frame::data(b)), rx))
    });
    (tx, StreamBody::new(Box::pin(stream) as _))
}

async fn settle() {
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn counts_from_call_until_the_body_ends() {
    let shutdown = Shutdown::new();
    let (tx, body) = channel_body();
    let mut body = Some(body);
    let mut svc = shutdown.layer().layer(service_fn(move |_req: Request<()>| {
        let body = body.take().expect("one request");
        async move { Ok::<_, Infallible>(Response::new(body)) }
    }));

    // poll_ready does not count.
    svc.ready().await.unwrap();
    assert_eq!(shutdown.in_flight(), 0);

    let future = svc.call(Request::new(()));
    assert_eq!(shutdown.in_flight(), 1, "counted from call");
    let response = future.await.unwrap();
    assert_eq!(
        shutdown.in_flight(),
        1,
        "still counted while the body streams"
    );

    let mut body = std::pin::pin!(response.into_body());
    tx.send(Bytes::from_static(b"a")).await.unwrap();
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "a");
    assert_eq!(shutdown.in_flight(), 1);
    drop(tx);
    assert!(body.frame().await.is_none());
    assert_eq!(shutdown.in_flight(), 0, "released when the body ends");
}

#[tokio::test]
async fn a_full_body_is_released_with_its_last_frame() {
    let shutdown = Shutdown::new();
    let svc = shutdown
        .layer()
        .layer(service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello"))))
        }));
    let mut body = std::pin::pin!(svc.oneshot(Request::new(())).await.unwrap().into_body());
    assert_eq!(shutdown.in_flight(), 1);
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "hello");
    // `Full` reports its end with the last frame: no extra poll needed.
    assert_eq!(shutdown.in_flight(), 0);
}

#[tokio::test]
async fn dropping_the_future_or_the_body_releases_the_count() {
    let shutdown = Shutdown::new();
    let (_tx, body) = channel_body();
    let mut body = Some(body);
    let mut svc = Graceful::new(
        service_fn(move |req: Request<()>| {
            let body = if req.uri() == "/slow" {
                None
            } else {
                body.take()
            };
            async move {
                if req.uri() == "/slow" {
                    std::future::pending::<()>().await;
                }
                Ok::<_, Infallible>(Response::new(body.expect("one streaming request")))
            }
        }),
        shutdown.clone(),
    );
    let slow = svc
        .ready()
        .await
        .unwrap()
        .call(Request::get("/slow").body(()).unwrap());
    assert_eq!(shutdown.in_flight(), 1);
    drop(slow);
    assert_eq!(shutdown.in_flight(), 0);

    let response = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap();
    assert_eq!(shutdown.in_flight(), 1);
    drop(response);
    assert_eq!(shutdown.in_flight(), 0);
}

/// B28: a panicking handler never leaks an in-flight count.
#[tokio::test]
async fn a_panicking_handler_does_not_leak_the_count() {
    let shutdown = Shutdown::new();
    let mut svc = shutdown
        .layer()
        .layer(service_fn(|req: Request<()>| async move {
            if req.uri() == "/panic" {
                panic!("handler panicked");
            }
            Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
        }));
    let future = svc
        .ready()
        .await
        .unwrap()
        .call(Request::get("/panic").body(()).unwrap());
    assert_eq!(shutdown.in_flight(), 1);
    let result = std::panic::AssertUnwindSafe(future).catch_unwind().await;
    assert!(result.is_err());
    assert_eq!(shutdown.in_flight(), 0);

    // A panic inside `call` itself unwinds through the layer too.
    let mut svc = shutdown
        .layer()
        .layer(tower::service_fn(|_req: Request<()>| {
            if true {
                panic!("call panicked");
            }
            std::future::ready(Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new())))
        }));
    svc.ready().await.unwrap();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        drop(svc.call(Request::new(())));
    }));
    assert!(result.is_err());
    assert_eq!(shutdown.in_flight(), 0);

    // And a task that panics while polling the request drops it.
    let svc = shutdown
        .layer()
        .layer(service_fn(|_req: Request<()>| async {
            tokio::task::yield_now().await;
            panic!("handler panicked later");
            #[allow(unreachable_code)]
            Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
        }));
    let task = tokio::spawn(svc.oneshot(Request::new(())));
    assert!(task.await.unwrap_err().is_panic());
    assert_eq!(shutdown.in_flight(), 0);
}

#[tokio::test]
async fn the_inner_error_type_is_kept() {
    #[derive(Debug, PartialEq)]
    struct MyError;
    let shutdown = Shutdown::new();
    let svc: Graceful<_> = shutdown
        .layer()
        .layer(service_fn(|_req: Request<()>| async {
            Err::<Response<Empty<Bytes>>, _>(MyError)
        }));
    let result: Result<_, MyError> = svc.oneshot(Request::new(())).await;
    assert_eq!(result.unwrap_err(), MyError);
    assert_eq!(shutdown.in_flight(), 0);
}

#[tokio::test]
async fn works_on_an_axum_router_and_in_a_service_builder() {
    let layer = GracefulLayer::new();
    let shutdown = layer.shutdown().clone();
    let app = Router::new()
        .route(
            "/",
            get(|drain: Drain| async move { format!("phase {}", drain.phase()) }),
        )
        .layer(layer);
    let response = app
        .oneshot(Request::new(axum::body::Body::empty()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "phase running");
    assert_eq!(shutdown.in_flight(), 0);

    let svc = ServiceBuilder::new()
        .layer(shutdown.layer())
        .concurrency_limit(4)
        .service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        });
    let body = svc.oneshot(Request::new(())).await.unwrap().into_body();
    assert_eq!(shutdown.in_flight(), 1);
    assert_eq!(body.collect().await.unwrap().to_bytes(), "ok");
    assert_eq!(shutdown.in_flight(), 0);
}

#[tokio::test]
async fn a_request_is_counted_once_under_two_layers_of_one_shutdown() {
    let shutdown = Shutdown::new();
    let (_tx, body) = channel_body();
    let mut body = Some(body);
    let svc = ServiceBuilder::new()
        .layer(shutdown.layer())
        .layer(shutdown.layer())
        .service_fn(move |_req: Request<()>| {
            let body = body.take().expect("one request");
            async move { Ok::<_, Infallible>(Response::new(body)) }
        });
    let response = svc.oneshot(Request::new(())).await.unwrap();
    assert_eq!(shutdown.in_flight(), 1);
    drop(response);
    assert_eq!(shutdown.in_flight(), 0);
}

/// B27: handlers read the phase; cancellation does not fire at drain start, it fires at
/// the stop deadline, to the millisecond.
#[tokio::test(start_paused = true)]
async fn cancellation_fires_at_the_stop_deadline_not_at_drain_start() {
    let shutdown = Shutdown::builder()
        .stop_timeout(Duration::from_millis(2_500))
        .kill_timeout(Duration::from_secs(1))
        .build();
    let (phases_tx, mut phases) = mpsc::unbounded_channel();
    let (dropped_tx, mut dropped) = mpsc::unbounded_channel::<tokio::time::Instant>();
    let svc = shutdown.layer().layer(service_fn(move |req: Request<()>| {
        let _ = req;
        let drain = Drain::current().expect("the layer makes the request's drain current");
        let phases_tx = phases_tx.clone();
        let dropped_tx = dropped_tx.clone();
        async move {
            struct OnDrop(mpsc::UnboundedSender<tokio::time::Instant>);
            impl Drop for OnDrop {
                fn drop(&mut self) {
                    let _ = self.0.send(tokio::time::Instant::now());
                }
            }
            let _on_drop = OnDrop(dropped_tx);
            phases_tx.send(drain.phase()).unwrap();
            drain.started().await;
            phases_tx.send(drain.phase()).unwrap();
            std::future::pending::<()>().await;
            Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
        }
    }));
    let request = tokio::spawn(svc.oneshot(Request::new(())));
    assert_eq!(phases.recv().await, Some(Phase::Running));

    let t0 = tokio::time::Instant::now();
    shutdown.trigger();
    assert_eq!(phases.recv().await, Some(Phase::Draining));
    tokio::time::sleep(Duration::from_millis(2_499)).await;
    settle().await;
    assert!(
        dropped.try_recv().is_err(),
        "cancelled before the stop deadline"
    );

    let response = request.await.unwrap().unwrap();
    assert_eq!(
        dropped.recv().await.unwrap() - t0,
        Duration::from_millis(2_500)
    );
    // The response that replaces it fails, so the client sees an error.
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let err = response.into_body().collect().await.unwrap_err();
    assert!(err.is::<httpdown::ForceClosed>(), "{err}");
    let report = no_panics(shutdown.wait().await);
    assert_eq!(
        report.outcome(),
        Outcome::ForceClosed {
            connections: 0,
            requests: 1
        }
    );
    assert_eq!(report.total(), Duration::from_millis(2_500));
}

/// B26 (layer part): a body that never ends is cut at the stop deadline, not before.
#[tokio::test(start_paused = true)]
async fn an_endless_body_is_cut_at_the_stop_deadline() {
    let shutdown = Shutdown::builder()
        .stop_timeout(Duration::from_secs(3))
        .build();
    let (tx, body) = channel_body();
    let mut body = Some(body);
    let svc = shutdown.layer().layer(service_fn(move |_req: Request<()>| {
        let body = body.take().expect("one request");
        async move { Ok::<_, Infallible>(Response::new(body)) }
    }));
    let mut body = std::pin::pin!(svc.oneshot(Request::new(())).await.unwrap().into_body());
    let t0 = tokio::time::Instant::now();
    shutdown.trigger();
    let feeder = tokio::spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_millis(100));
        loop {
            interval.tick().await;
            if tx.send(Bytes::from_static(b"tick\n")).await.is_err() {
                return;
            }
        }
    });
    let mut frames = 0;
    let err = loop {
        match body.frame().await {
            Some(Ok(_)) => frames += 1,
            Some(Err(e)) => break e,
            None => panic!("the body ended cleanly"),
        }
    };
    assert!(err.is::<httpdown::ForceClosed>());
    assert_eq!(t0.elapsed(), Duration::from_secs(3));
    assert_eq!(frames, 30, "ticks at 0, 100, ..., 2900 ms");
    assert!(body.frame().await.is_none());
    assert_eq!(shutdown.in_flight(), 0);
    feeder.abort();
    assert!(matches!(
        no_panics(shutdown.wait().await).outcome(),
        Outcome::ForceClosed { requests: 1, .. }
    ));
}

#[tokio::test(start_paused = true)]
async fn requests_after_the_stop_deadline_get_503_with_connection_close() {
    let shutdown = Shutdown::builder().stop_timeout(Duration::ZERO).build();
    let (_tx, body) = channel_body();
    let mut svc = shutdown.layer().layer(service_fn({
        let mut body = Some(body);
        move |_req: Request<()>| {
            let body = body.take();
            async move { Ok::<_, Infallible>(Response::new(body.expect("called once"))) }
        }
    }));
    let held = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap();
    shutdown.trigger();
    settle().await;
    assert_eq!(shutdown.phase(), Phase::ForceClosing);
    let response = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["connection"], "close");
    assert!(response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .is_empty());
    drop(held);
    no_panics(shutdown.wait().await);
}

/// The layer alone (any server) cuts a gRPC call at the stop deadline with
/// `grpc-status: 14` (UNAVAILABLE) in trailers, which gRPC clients retry, not with a body
/// error read as UNKNOWN.
#[tokio::test(start_paused = true)]
async fn the_layer_alone_ends_a_cut_grpc_call_with_unavailable() {
    let shutdown = Shutdown::builder()
        .stop_timeout(Duration::from_secs(1))
        .build();
    let (tx, body) = channel_body();
    let mut body = Some(body);
    let svc = shutdown.layer().layer(service_fn(move |_req: Request<()>| {
        let body = body.take().expect("one request");
        async move { Ok::<_, Infallible>(Response::new(body)) }
    }));
    let request = Request::post("/grpc.health.v1.Health/Watch")
        .version(http::Version::HTTP_2)
        .header("content-type", "application/grpc")
        .body(())
        .unwrap();
    let mut body = std::pin::pin!(svc.oneshot(request).await.unwrap().into_body());
    shutdown.trigger();
    let trailers = loop {
        match body.frame().await {
            Some(Ok(frame)) if frame.is_trailers() => break frame.into_trailers().unwrap(),
            Some(Ok(_)) => {}
            other => panic!("expected grpc-status trailers, got {other:?}"),
        }
    };
    assert_eq!(trailers["grpc-status"], "14", "{trailers:?}");
    drop(tx);
    no_panics(shutdown.wait().await);
}

/// `Graceful` hands out its own controller, and says what it wraps in `Debug`.
#[test]
fn graceful_hands_out_its_controller() {
    let shutdown = Shutdown::new();
    let svc = Graceful::new(
        service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
        }),
        shutdown.clone(),
    );
    svc.shutdown().trigger();
    assert!(shutdown.is_triggered(), "the same controller");
    let debug = format!("{:?}", Graceful::new("inner", Shutdown::new()));
    assert!(
        debug.starts_with("Graceful {") && debug.contains("inner: \"inner\""),
        "{debug}"
    );
}

/// The layer keeps what its body says about its end (an empty body is known to be over,
/// so a server can send `content-length: 0` instead of a chunked end), and `Debug` says
/// what each of its types is.
#[tokio::test]
async fn the_layer_keeps_the_body_end_and_debug_names() {
    let shutdown = Shutdown::new();
    let layer = shutdown.layer();
    let svc = layer.layer(service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
    }));
    let mut svc = svc;
    let future = svc.ready().await.unwrap().call(Request::new(()));
    assert!(
        format!("{future:?}").starts_with("ResponseFuture"),
        "{future:?}"
    );
    let body = future.await.unwrap().into_body();
    assert!(
        http_body::Body::is_end_stream(&body),
        "an empty body is over"
    );
    assert!(format!("{body:?}").starts_with("ResponseBody"), "{body:?}");
    assert!(
        format!("{layer:?}").starts_with("GracefulLayer"),
        "{layer:?}"
    );
}
