use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use super::{Bound, Guard, ResponseFuture};
use crate::conn::ConnState;
use crate::{Phase, Shutdown, UntilDrain};

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
/// holds: a response that has not finished by then is cut, so one endless stream can no
/// longer hang a shutdown. Closing the listener and idle connections is the server's
/// job: [`serve`](crate::serve()) does it.
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
    /// The controller, or the connection this service serves when `serve` made it.
    bound: Bound,
}

impl<S> Graceful<S> {
    /// Wraps `inner`, counting its requests for `shutdown`.
    pub fn new(inner: S, shutdown: Shutdown) -> Self {
        Graceful {
            inner,
            bound: Bound::Shutdown(shutdown),
        }
    }

    /// The same service, also keeping `conn`'s request count.
    pub(crate) fn for_connection(&self, conn: Arc<ConnState>) -> Self
    where
        S: Clone,
    {
        Graceful {
            inner: self.inner.clone(),
            bound: Bound::Conn(conn),
        }
    }

    /// The controller this middleware counts for.
    pub fn shutdown(&self) -> &Shutdown {
        self.bound.shutdown()
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
            .field("shutdown", self.shutdown())
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

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        // An outer `Graceful` of the same controller (for example the one `serve` adds)
        // already counts this request: pass it through rather than count it twice.
        if let Some(drain) = req.extensions().get::<Drain>() {
            if drain.shutdown().ptr_eq(self.bound.shutdown()) {
                return ResponseFuture::pass_through(self.inner.call(req));
            }
        }
        // Count first, then look at the phase: a request counted before the drain's wait
        // observes an empty tracker is always waited for.
        let guard = Guard::new(&self.bound);
        if guard.is_forced() {
            return ResponseFuture::rejected(guard);
        }
        req.extensions_mut().insert(Drain {
            bound: self.bound.clone(),
        });
        ResponseFuture::counted(self.inner.call(req), guard)
    }
}

/// A request extension that lets a handler observe the shutdown.
///
/// [`GracefulLayer`] (and so [`serve`](crate::serve())) inserts it into every request it
/// counts. In axum it is also an extractor with the `axum` feature (`drain: Drain` as a
/// handler argument), or `Extension(drain): Extension<httpdown::Drain>` without it.
///
/// Request cancellation does not happen at drain start: a handler keeps running until it
/// finishes or the stop deadline passes. Long-lived handlers (SSE, long polls) can await
/// [`Drain::started`] to end early and cleanly.
#[derive(Clone)]
pub struct Drain {
    bound: Bound,
}

impl Drain {
    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.shutdown().phase()
    }

    /// Resolves at drain start.
    pub fn started(&self) -> impl Future<Output = ()> + Send + 'static {
        self.shutdown().drain_started()
    }

    /// Resolves at the stop deadline, just before the request is cut.
    pub fn stop_deadline(&self) -> impl Future<Output = ()> + Send + 'static {
        self.shutdown().stop_deadline()
    }

    /// Wraps `stream` so it ends cleanly at drain start. See [`UntilDrain`].
    pub fn until_drain<St: futures_core::Stream>(&self, stream: St) -> UntilDrain<St> {
        UntilDrain::new(stream, self)
    }

    /// The controller.
    pub fn shutdown(&self) -> &Shutdown {
        self.bound.shutdown()
    }
}

impl Shutdown {
    /// A [`Drain`] handle on this controller, as handlers get it from the request.
    pub fn drain(&self) -> Drain {
        Drain {
            bound: Bound::Shutdown(self.clone()),
        }
    }
}

impl fmt::Debug for Drain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Drain")
            .field("phase", &self.phase())
            .finish()
    }
}
