//! Instructions per request of the `Graceful` layer, next to the bare service and
//! tower-http's `InFlightRequests`: the same requests as `benches/layer.rs`, run a fixed
//! number of times so that `valgrind --tool=callgrind` can count them (a count does not
//! depend on what else the machine is doing).
//!
//! ```text
//! cargo bench --bench layer_instructions --no-run
//! valgrind --tool=callgrind --toggle-collect='layer_instructions::run_*' \
//!     target/release/deps/layer_instructions-HASH graceful
//! ```
//!
//! `bash benches/run.sh` does this for each variant and divides by the request count.

// A bench target, not part of the API.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::hint::black_box;

use bytes::Bytes;
use futures_util::FutureExt;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Empty, Full};
use tower::{service_fn, Layer, Service};
use tower_http::metrics::InFlightRequestsLayer;

/// Requests per run.
const REQUESTS: usize = 100_000;

/// `LAYER_REQUESTS` overrides [`REQUESTS`] (for timing whole runs).
fn requests() -> usize {
    std::env::var("LAYER_REQUESTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(REQUESTS)
}

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

#[inline(never)]
fn run_requests<S, B>(svc: &mut S)
where
    S: Service<Req, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    for _ in 0..requests() {
        black_box(one_request(svc));
    }
}

fn main() {
    let variant = std::env::args().nth(1).unwrap_or_default();
    match variant.as_str() {
        "bare" => run_requests(&mut service_fn(hello)),
        "graceful" => {
            let shutdown = httpdown::Shutdown::new();
            run_requests(&mut shutdown.layer().layer(service_fn(hello)));
            assert_eq!(shutdown.in_flight(), 0);
        }
        "in_flight_requests" => {
            let (layer, counter) = InFlightRequestsLayer::pair();
            run_requests(&mut layer.layer(service_fn(hello)));
            assert_eq!(counter.get(), 0);
        }
        // `cargo bench` runs every bench target with `--bench`: nothing to do then.
        _ => println!(
            "usage: layer_instructions bare|graceful|in_flight_requests; {REQUESTS} requests"
        ),
    }
}
