//! Health checks for load balancers and orchestrators: [`Readiness`] fails from the
//! trigger on, [`Liveness`] never does.

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::task::{Context, Poll};

use http::{header, HeaderValue, Request, Response, StatusCode};
use tower_service::Service;

use crate::Shutdown;

/// A readiness check: `200 ready` while running, `503 draining` from the trigger on
/// (the drain delay included), so a load balancer or Kubernetes stops sending traffic
/// before the listener closes. A handover ([`Shutdown::trigger_handover`]) stays
/// `200 ready`: the address goes on being served by the next generation.
///
/// Made by [`Shutdown::readiness`]; a [`Service`] for any request body, answering at
/// once (it never holds the drain open). For a custom check, use
/// `!shutdown.is_triggered() || shutdown.is_handover()`.
///
/// ```
/// use axum::{routing::get, Router};
///
/// let shutdown = httpdown::Shutdown::new();
/// let app: Router = Router::new()
///     .route("/", get(|| async { "hello" }))
///     .route_service("/readyz", shutdown.readiness())
///     .route_service("/livez", httpdown::Liveness);
/// # let _ = app;
/// ```
#[derive(Debug, Clone)]
pub struct Readiness {
    shutdown: Shutdown,
}

impl Shutdown {
    /// A readiness check bound to this controller. See [`Readiness`].
    pub fn readiness(&self) -> Readiness {
        Readiness {
            shutdown: self.clone(),
        }
    }
}

fn plain(status: StatusCode, body: &'static str) -> Response<String> {
    let mut response = Response::new(body.to_owned());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Implements `Service` for a check that answers at once with `$answer(&self)`.
macro_rules! check_service {
    ($check:ty, $answer:expr) => {
        impl<B> Service<Request<B>> for $check {
            type Response = Response<String>;
            type Error = Infallible;
            type Future = Ready<Result<Response<String>, Infallible>>;

            #[inline]
            fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
                Poll::Ready(Ok(()))
            }

            fn call(&mut self, _req: Request<B>) -> Self::Future {
                let (status, body) = $answer(&*self);
                ready(Ok(plain(status, body)))
            }
        }
    };
}

check_service!(
    Readiness,
    |check: &Readiness| if !check.shutdown.is_triggered() || check.shutdown.is_handover() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    }
);

/// A liveness check: always `200 alive`, during a shutdown too, so an orchestrator does
/// not kill a process that is draining on purpose.
#[derive(Debug, Clone, Copy, Default)]
pub struct Liveness;

check_service!(Liveness, |_: &Liveness| (StatusCode::OK, "alive\n"));
