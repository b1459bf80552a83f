//! What `serve` takes as its app: a service per connection, made from the connection
//! (a "make service"), as `axum::serve` does.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use tower_service::Service;

use super::Listener;
use crate::BoxError;

/// A connection [`serve`](crate::serve()) has just accepted, handed to the app's make
/// service to make the service for that connection (axum's `IncomingStream`, for
/// `serve`).
///
/// With the `axum` feature, `Router`, `router.into_make_service()` and
/// `router.into_make_service_with_connect_info::<SocketAddr>()` take it as they take
/// `IncomingStream` in `axum::serve`. Without axum, a make service reads the peer address
/// here:
///
/// ```
/// use std::convert::Infallible;
/// use std::net::SocketAddr;
/// use httpdown::IncomingConnection;
/// use tokio::net::TcpListener;
///
/// // Each connection's service answers with the peer's address.
/// let make = tower::service_fn(|conn: IncomingConnection<'_, TcpListener>| {
///     let peer: SocketAddr = *conn.remote_addr();
///     let service = tower::service_fn(move |_req: http::Request<hyper::body::Incoming>| async move {
///         Ok::<_, Infallible>(http::Response::new(peer.to_string()))
///     });
///     async move { Ok::<_, Infallible>(service) }
/// });
/// # async fn run(make: impl httpdown::MakeService<TcpListener>) {
/// # let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
/// # let _ = httpdown::serve(listener, make, &httpdown::Shutdown::new());
/// # }
/// # let _ = run(make);
/// ```
pub struct IncomingConnection<'a, L: Listener> {
    io: &'a L::Io,
    remote_addr: L::Addr,
}

impl<'a, L: Listener> IncomingConnection<'a, L> {
    pub(crate) fn new(io: &'a L::Io, remote_addr: L::Addr) -> Self {
        IncomingConnection { io, remote_addr }
    }

    /// The connection's IO, as the listener accepted it.
    pub fn io(&self) -> &L::Io {
        self.io
    }

    /// The peer's address.
    pub fn remote_addr(&self) -> &L::Addr {
        &self.remote_addr
    }
}

impl<L: Listener> fmt::Debug for IncomingConnection<'_, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IncomingConnection")
            .field("remote_addr", &self.remote_addr)
            .finish_non_exhaustive()
    }
}

/// What [`serve`](crate::serve()) can serve on a listener of type `L`: a make service,
/// called with each [`IncomingConnection`], whose per-connection service takes
/// `Request<hyper::body::Incoming>`.
///
/// Implemented for every suitable `tower` make service: with the `axum` feature, an axum
/// `Router` (its state given with `.with_state(..)`), `router.into_make_service()` and
/// `router.into_make_service_with_connect_info::<C>()`; for any other tower service,
/// `tower::make::Shared::new(service)` makes one (a hyper `service_fn` is a hyper
/// service, not a tower one: use `tower::service_fn`). Not to be implemented by hand.
///
/// ```
/// # async fn run(listener: tokio::net::TcpListener, shutdown: httpdown::Shutdown) {
/// use std::net::SocketAddr;
/// use axum::{extract::ConnectInfo, routing::get, Router};
///
/// let app = Router::new().route(
///     "/",
///     get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
/// );
/// let serving = httpdown::serve(
///     listener,
///     app.into_make_service_with_connect_info::<SocketAddr>(),
///     &shutdown,
/// );
/// # let _ = serving;
/// # }
/// ```
///
/// A wrong app fails at the argument, with a message that says what is expected: a
/// `Router` whose state is not given yet,
///
/// ```compile_fail
/// # async fn run(listener: tokio::net::TcpListener, shutdown: httpdown::Shutdown) {
/// #[derive(Clone)]
/// struct AppState;
/// let app: axum::Router<AppState> = axum::Router::new();
/// let serving = httpdown::serve(listener, app, &shutdown); // `.with_state(AppState)` first
/// # }
/// ```
///
/// or a hyper `service_fn`:
///
/// ```compile_fail
/// # async fn run(listener: tokio::net::TcpListener, shutdown: httpdown::Shutdown) {
/// let app = hyper::service::service_fn(|_: http::Request<hyper::body::Incoming>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
/// });
/// let serving = httpdown::serve(listener, app, &shutdown); // a tower service is expected
/// # }
/// ```
///
/// A plain tower service, wrapped in `tower::make::Shared`, is served:
///
/// ```
/// # async fn run(listener: tokio::net::TcpListener, shutdown: httpdown::Shutdown) {
/// let app = tower::service_fn(|_: http::Request<hyper::body::Incoming>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("hello")))
/// });
/// let serving = httpdown::serve(listener, tower::make::Shared::new(app), &shutdown);
/// # let _ = serving;
/// # }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an app `httpdown::serve` can serve on a `{L}`",
    label = "expected an axum `Router<()>`, `router.into_make_service()`, `router.into_make_service_with_connect_info::<SocketAddr>()`, or a tower make service",
    note = "a `Router<State>` needs its state first: `router.with_state(state)`",
    note = "a plain tower `Service<Request<hyper::body::Incoming>>` becomes one with `tower::make::Shared::new(service)`; a hyper `service_fn` is not a tower service (use `tower::service_fn`)"
)]
pub trait MakeService<L: Listener>: Send + 'static {
    /// The service made for each connection.
    type Service: Service<
            Request<Incoming>,
            Response = Response<Self::Body>,
            Error = Self::Error,
            Future = Self::Future,
        > + Clone
        + Send
        + 'static;
    /// Its response body.
    type Body: Body<Data = Self::Data, Error = Self::BodyError> + Send + 'static;
    /// Its error.
    type Error: Into<BoxError>;
    /// Its response future.
    type Future: Future<Output = Result<Response<Self::Body>, Self::Error>> + Send + 'static;
    /// The body's data.
    type Data: hyper::body::Buf + Send;
    /// The body's error.
    type BodyError: Into<BoxError>;

    /// Whether the make service is ready to make a service (tower's `poll_ready`).
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<()>;

    /// Makes the service for `connection` (tower's `call`, once ready).
    fn make_service<'a>(
        &'a mut self,
        connection: IncomingConnection<'a, L>,
    ) -> impl Future<Output = Result<Self::Service, Infallible>> + Send + 'a;
}

impl<L, M, S, B> MakeService<L> for M
where
    L: Listener,
    M: for<'a> Service<IncomingConnection<'a, L>, Error = Infallible, Response = S>
        + Send
        + 'static,
    for<'a> <M as Service<IncomingConnection<'a, L>>>::Future: Send,
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Service = S;
    type Body = B;
    type Error = S::Error;
    type Future = S::Future;
    type Data = B::Data;
    type BodyError = B::Error;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        Service::poll_ready(self, cx).map(|ready| ready.unwrap_or_else(|never| match never {}))
    }

    fn make_service<'a>(
        &'a mut self,
        connection: IncomingConnection<'a, L>,
    ) -> impl Future<Output = Result<S, Infallible>> + Send + 'a {
        self.call(connection)
    }
}
