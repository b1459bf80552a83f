//! The service `serve` runs for each connection: it counts every request (as a
//! [`GracefulLayer`](crate::GracefulLayer) does) and looks after what a response means
//! for its connection.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{header, HeaderValue, Method, Request, Response, StatusCode, Version};
use hyper::ext::Protocol;
use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tower_service::Service;

use super::connection::Connection;
use crate::lifecycle::Step;
use crate::request::{is_grpc, Counted, CountedBody, CountedFuture, OwnerPolls};
use crate::stats::metrics_impl;

/// The app, for one connection.
#[derive(Clone)]
pub(crate) struct ConnService<S> {
    inner: S,
    connection: Arc<Connection>,
}

impl<S> ConnService<S> {
    pub(crate) fn new(inner: S, connection: Arc<Connection>) -> Self {
        ConnService { inner, connection }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ConnService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<CountedBody<ResBody, ConnGuard>>;
    type Error = S::Error;
    type Future = CountedFuture<S::Future, ConnGuard>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let mut guard = ConnGuard::new(&self.connection, req.version());
        if is_grpc(&req) {
            guard.grpc = true;
            self.connection.mark_grpc();
        }
        // RFC 8441: an HTTP/2 CONNECT with a `:protocol` (WebSockets over HTTP/2).
        guard.extended_connect =
            req.method() == Method::CONNECT && req.extensions().get::<Protocol>().is_some();
        if guard.is_force_closing() {
            return CountedFuture::rejected(guard);
        }
        CountedFuture::counted(self.inner.call(req), guard)
    }
}

/// Keeps one request counted, in the shutdown and on its connection, while it lives.
pub(crate) struct ConnGuard {
    _token: TaskTrackerToken,
    connection: Arc<Connection>,
    http1: bool,
    /// An HTTP/2 extended CONNECT: a `2xx` upgrades its stream.
    extended_connect: bool,
    grpc: bool,
}

impl ConnGuard {
    fn new(connection: &Arc<Connection>, version: Version) -> Self {
        let shutdown = connection.shutdown();
        // Counted first, then the phase is looked at (by the caller): a request counted
        // before the drain sees an empty tracker is always waited for.
        let token = shutdown.lifecycle().count_request();
        shutdown.counters().request_started();
        connection.request_began();
        ConnGuard {
            _token: token,
            connection: Arc::clone(connection),
            http1: version <= Version::HTTP_11,
            extended_connect: false,
            grpc: false,
        }
    }
}

impl Counted for ConnGuard {
    // `serve`'s connection task (HTTP/1) and stream tasks (HTTP/2) wake at the stop
    // deadline and poll their requests once more (or drop them): nothing to register per
    // request, and nothing added to its future and body.
    type Wait = OwnerPolls;

    #[inline]
    fn is_force_closing(&self) -> bool {
        self.connection.lifecycle().reached(Step::ForceClosing)
    }

    fn force_token(&self) -> &CancellationToken {
        self.connection.lifecycle().token(Step::ForceClosing)
    }

    fn is_grpc(&self) -> bool {
        self.grpc
    }

    /// A response that switches protocols hands the connection (HTTP/1) or the stream
    /// (HTTP/2 extended CONNECT) to an upgrade task. An HTTP/1 response written after
    /// drain start carries `Connection: close`, so the connection closes right after it,
    /// whether or not hyper has been told yet.
    fn on_response<B>(&mut self, response: &mut Response<B>) {
        let status = response.status();
        let upgraded = status == StatusCode::SWITCHING_PROTOCOLS
            || (self.extended_connect && status.is_success());
        if upgraded {
            self.connection.mark_upgraded();
        } else if self.http1
            && (self.connection.lifecycle().reached(Step::DrainStarted)
                || self.connection.is_retiring())
        {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        metrics_impl::request_ended();
        self.connection.request_ended();
    }
}
