use std::fmt;
use std::task::{Context, Poll};

use http::{Request, Response};
use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tower_layer::Layer;
use tower_service::Service;

use super::ResponseFuture;
use crate::drain::Entered;
use crate::lifecycle::Step;
use crate::request::{is_grpc, Counted, CountedFuture};
use crate::stats::metrics_impl;
use crate::{Drain, Shutdown};

/// A [`Layer`] that counts in-flight requests for a [`Shutdown`].
///
/// Two spellings give the same thing: `shutdown.layer()` for a controller you already
/// have, or `GracefulLayer::new()` for a fresh one that you then reach with
/// [`GracefulLayer::shutdown`].
///
/// ```
/// use axum::{routing::get, Router};
/// use httpdown::GracefulLayer;
///
/// let layer = GracefulLayer::new();
/// let shutdown = layer.shutdown().clone();
/// let app: Router = Router::new().route("/", get(|| async { "hello" })).layer(layer);
/// # let _ = (app, shutdown);
/// ```
///
/// With the layer alone (for example under plain `axum::serve`), the stop deadline still
/// holds: a response that has not finished by then is force-closed, so one endless stream
/// can no longer hang a shutdown. Closing the listener and idle connections is the
/// server's job: [`serve`](crate::serve()) does it, and counts every request itself (a
/// layer of the same controller inside it then counts nothing twice).
#[derive(Clone)]
#[must_use]
pub struct GracefulLayer {
    shutdown: Shutdown,
}

impl GracefulLayer {
    /// A layer bound to a new [`Shutdown`] with the default configuration.
    pub fn new() -> Self {
        GracefulLayer {
            shutdown: Shutdown::new(),
        }
    }

    /// A layer bound to `shutdown`. Same as [`Shutdown::layer`].
    pub fn from_shutdown(shutdown: Shutdown) -> Self {
        GracefulLayer { shutdown }
    }

    /// The controller this layer counts for.
    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }
}

impl Default for GracefulLayer {
    fn default() -> Self {
        GracefulLayer::new()
    }
}

impl fmt::Debug for GracefulLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GracefulLayer")
            .field("shutdown", &self.shutdown)
            .finish()
    }
}

impl<S> Layer<S> for GracefulLayer {
    type Service = Graceful<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Graceful::new(inner, self.shutdown.clone())
    }
}

/// Middleware that counts in-flight requests for a [`Shutdown`]. See [`GracefulLayer`].
#[derive(Clone)]
pub struct Graceful<S> {
    inner: S,
    shutdown: Shutdown,
}

impl<S> Graceful<S> {
    /// Wraps `inner`, counting its requests for `shutdown`.
    pub fn new(inner: S, shutdown: Shutdown) -> Self {
        Graceful { inner, shutdown }
    }

    /// The controller this middleware counts for.
    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// A reference to the inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// A mutable reference to the inner service.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: fmt::Debug> fmt::Debug for Graceful<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Graceful")
            .field("inner", &self.inner)
            .field("shutdown", &self.shutdown)
            .finish()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Graceful<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<super::ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // `serve`, or an outer layer of the same controller, counts this request already.
        if Drain::current_is(&self.shutdown) {
            return ResponseFuture::new(CountedFuture::pass_through(self.inner.call(req)));
        }
        let mut guard = LayerGuard::new(&self.shutdown, is_grpc(&req));
        if guard.is_force_closing() {
            return ResponseFuture::new(CountedFuture::rejected(guard));
        }
        let entered = Entered::new(&mut guard.drain);
        let future = self.inner.call(req);
        drop(entered);
        ResponseFuture::new(CountedFuture::counted(future, guard))
    }
}

/// Keeps one request counted for the layer's controller while it lives, and holds the
/// request's [`Drain`], the thread's current one while the request's service runs.
pub(crate) struct LayerGuard {
    _token: TaskTrackerToken,
    grpc: bool,
    /// Always `Some`, except while it is the thread's current drain (inside `scoped`).
    drain: Option<Drain>,
}

impl LayerGuard {
    fn new(shutdown: &Shutdown, grpc: bool) -> Self {
        // Counted first, then the phase is looked at (by the caller): a request counted
        // before the drain sees an empty tracker is always waited for.
        let token = shutdown.lifecycle().count_request();
        shutdown.counters().request_started();
        LayerGuard {
            _token: token,
            grpc,
            drain: Some(shutdown.drain()),
        }
    }

    fn shutdown(&self) -> &Shutdown {
        self.drain
            .as_ref()
            .expect("the drain is back once its scope has ended")
            .shutdown()
    }
}

impl Counted for LayerGuard {
    // Under any server: nothing else wakes a pending request at the stop deadline.
    type Wait = crate::request::LazyWait;

    #[inline]
    fn is_force_closing(&self) -> bool {
        self.shutdown().lifecycle().reached(Step::ForceClosing)
    }

    fn force_token(&self) -> &CancellationToken {
        self.shutdown().lifecycle().token(Step::ForceClosing)
    }

    fn is_grpc(&self) -> bool {
        self.grpc
    }

    #[inline]
    fn scoped<R>(&mut self, f: impl FnOnce() -> R) -> R {
        Drain::scoped(&mut self.drain, f)
    }
}

impl Drop for LayerGuard {
    fn drop(&mut self) {
        metrics_impl::request_ended();
    }
}
