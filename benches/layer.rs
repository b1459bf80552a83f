//! Per-request cost of the `Graceful` layer, next to the bare service and tower-http's
//! `InFlightRequests`, on the same trivial service. A request is counted from `call`
//! until its response body has been polled to its end, so each iteration makes the
//! request, calls the service, and collects the body.
//!
//! Every future here is ready at once, so no runtime is involved: the numbers are the
//! cost of the wrappers alone. `bash benches/run.sh` runs this bench several times,
//! alternating, and reports the medians in BENCHMARKS.md.

// `criterion_group!` defines an undocumented public function.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use futures_util::FutureExt;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Empty, Full};
use tower::{service_fn, Layer, Service};
use tower_http::metrics::InFlightRequestsLayer;

type Req = Request<Empty<Bytes>>;

async fn hello(_req: Req) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(
        b"Hello, World!",
    ))))
}

/// One request: ready, call, response, body collected to its end.
fn one_request<S, B>(svc: &mut S) -> Bytes
where
    S: Service<Req, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    std::future::poll_fn(|cx| svc.poll_ready(cx))
        .now_or_never()
        .expect("ready at once")
        .expect("ready");
    let response = svc
        .call(Request::new(Empty::new()))
        .now_or_never()
        .expect("the response is ready at once")
        .expect("the service never fails");
    response
        .into_body()
        .collect()
        .now_or_never()
        .expect("the body is ready at once")
        .expect("the body never fails")
        .to_bytes()
}

fn layer(c: &mut Criterion) {
    let mut group = c.benchmark_group("layer");

    let mut bare = service_fn(hello);
    group.bench_function("bare", |b| b.iter(|| black_box(one_request(&mut bare))));

    let shutdown = httpdown::Shutdown::new();
    let mut graceful = shutdown.layer().layer(service_fn(hello));
    group.bench_function("graceful", |b| {
        b.iter(|| black_box(one_request(&mut graceful)))
    });
    assert_eq!(shutdown.in_flight(), 0, "every request was counted out");

    let (in_flight_layer, counter) = InFlightRequestsLayer::pair();
    let mut in_flight = in_flight_layer.layer(service_fn(hello));
    group.bench_function("in_flight_requests", |b| {
        b.iter(|| black_box(one_request(&mut in_flight)))
    });
    assert_eq!(counter.get(), 0, "every request was counted out");

    group.finish();
}

criterion_group!(benches, layer);
criterion_main!(benches);
