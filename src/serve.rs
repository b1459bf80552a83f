//! [`serve`]: an accept loop that owns its listener and every connection.

use std::fmt;
use std::future::{Future, IntoFuture};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::time::Instant;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tower_service::Service;

use crate::conn::{ConnIo, ConnState};
use crate::task::{catch_panics, Task};
use crate::{BoxError, Error, Graceful, Report, Shutdown};

/// When [`serve`] closes an idle HTTP/1 keep-alive connection during the drain.
///
/// HTTP/1 has no way to tell a client "no more requests on this connection" except in a
/// response. A client may send a request on an idle keep-alive connection at the very
/// moment the server closes it; that request is lost, and a client cannot safely retry a
/// non-idempotent one. Requests whose bytes have already arrived are always served;
/// these options also cover requests still on their way, at the price of keeping idle
/// connections open a little longer. Every option ends by the stop deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum IdleClose {
    /// Close idle connections at drain start (the default).
    #[default]
    Immediately,
    /// Close an idle connection only once it has been idle for at least this long
    /// (nginx's `keepalive_min_timeout`): a client that just got a response and is about
    /// to send the next request gets to send it, and it is served with
    /// `Connection: close`.
    MinIdleAge(Duration),
    /// Keep idle connections open for up to this long, serve the next request on each
    /// with `Connection: close`, then close (HAProxy's `idle-close-on-response`).
    AfterNextRequest(Duration),
}

/// The header-read timeout [`serve`] uses unless told otherwise.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A source of connections for [`serve`].
///
/// Implemented for [`tokio::net::TcpListener`] (which also sets `TCP_NODELAY` on every
/// accepted socket) and, on unix, [`tokio::net::UnixListener`].
pub trait Listener: Send + 'static {
    /// The connection type.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// The peer address type.
    type Addr: fmt::Debug + Send;

    /// Accepts one connection.
    ///
    /// Errors about one connection (`ConnectionAborted`, `ConnectionReset`,
    /// `ConnectionRefused`) are skipped by [`serve`]; running out of file descriptors or
    /// memory makes it pause for a second and retry; any other error ends [`serve`] with
    /// [`Error::Accept`].
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Io, Self::Addr)>> + Send;

    /// The local address this listener is bound to.
    fn local_addr(&self) -> io::Result<Self::Addr>;

    /// Whether bytes are waiting to be read on `io`, without reading them.
    ///
    /// [`serve`] asks this of an idle HTTP/1 connection at drain start: a request whose
    /// bytes have already arrived is then served (with `Connection: close`) rather than
    /// dropped unread, and a connection closed with unread input lingers briefly so the
    /// client gets a clean close, not a reset. The default answers `false`, which closes
    /// idle connections at once.
    fn has_pending_input(io: &Self::Io) -> bool {
        let _ = io;
        false
    }
}

/// Peeks at a socket without blocking: `true` if at least one byte is waiting.
#[cfg(unix)]
fn peek_socket(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    // The socket is non-blocking (tokio registered it): this never waits.
    matches!(socket2::SockRef::from(&fd).peek(&mut buf), Ok(1..))
}

impl Listener for TcpListener {
    type Io = tokio::net::TcpStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> io::Result<(Self::Io, Self::Addr)> {
        let (stream, addr) = TcpListener::accept(self).await?;
        // Without TCP_NODELAY a flushed first write followed by a later one waits for the
        // peer's delayed ACK (~40 ms).
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "failed to set TCP_NODELAY");
        }
        Ok((stream, addr))
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        TcpListener::local_addr(self)
    }

    #[cfg(unix)]
    fn has_pending_input(io: &Self::Io) -> bool {
        use std::os::fd::AsFd;
        peek_socket(io.as_fd())
    }
}

#[cfg(unix)]
impl Listener for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    type Addr = tokio::net::unix::SocketAddr;

    async fn accept(&mut self) -> io::Result<(Self::Io, Self::Addr)> {
        tokio::net::UnixListener::accept(self).await
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        tokio::net::UnixListener::local_addr(self)
    }

    fn has_pending_input(io: &Self::Io) -> bool {
        use std::os::fd::AsFd;
        peek_socket(io.as_fd())
    }
}

/// Serves `app` on `listener` until `shutdown` is done, and returns its [`Report`].
///
/// HTTP/1.1 and HTTP/2 (cleartext, prior knowledge) share the port. Every request is
/// counted as by [`GracefulLayer`](crate::GracefulLayer) (adding the layer yourself as
/// well is harmless: a request is counted once). On shutdown, at drain start, the listener
/// is closed (new connects are refused) and every connection is told to finish: an idle
/// HTTP/1 connection, or one that has sent nothing, closes at once; a busy one closes
/// after its response, which carries `Connection: close`; HTTP/2 gets GOAWAY. At the stop
/// deadline the connection tasks are dropped, which closes their sockets. `serve` returns
/// the moment the shutdown is done.
///
/// `serve` returns a builder: set options, then `.await` it. From the moment it is built,
/// the shutdown waits for it: a trigger that lands before it is awaited still lets it
/// start, close its listener and drain (build it before announcing readiness, and a
/// signal right after cannot make it fail). A `Serve` built but never awaited holds the
/// drain until it is dropped.
///
/// ```no_run
/// # #[tokio::main]
/// # async fn main() -> Result<(), httpdown::Error> {
/// use axum::{routing::get, Router};
///
/// let shutdown = httpdown::Shutdown::new();
/// shutdown.trigger_on_signals()?;
/// let app = Router::new().route("/", get(|| async { "hello" }));
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await.unwrap();
/// let report = httpdown::serve(listener, app, &shutdown).await?;
/// eprintln!("{report}");
/// # Ok(())
/// # }
/// ```
///
/// # Errors
/// [`Error::AlreadyShutDown`] if `shutdown` has already finished, [`Error::Config`] for an
/// invalid option, [`Error::Accept`] if the listener fails. After a listener failure the
/// connections already accepted keep being served and the shutdown still drains them.
pub fn serve<L, S>(listener: L, app: S, shutdown: &Shutdown) -> Serve<L, S> {
    Serve {
        listener,
        app,
        shutdown: shutdown.clone(),
        header_read_timeout: Some(DEFAULT_HEADER_READ_TIMEOUT),
        idle_close: IdleClose::Immediately,
        registration: shutdown.inner.servers.token(),
    }
}

/// Binds `addr`, triggers `shutdown` on SIGTERM/SIGINT, serves `app` and returns the
/// report: Go's `httpdown.ListenAndServe` in one call.
///
/// ```no_run
/// # #[tokio::main]
/// # async fn main() -> Result<(), httpdown::Error> {
/// use axum::{routing::get, Router};
///
/// let app = Router::new().route("/", get(|| async { "hello" }));
/// let report = httpdown::listen_and_serve("127.0.0.1:8080", app, &httpdown::Shutdown::new()).await?;
/// eprintln!("{report}");
/// # Ok(())
/// # }
/// ```
///
/// # Errors
/// [`Error::Bind`] if the address cannot be bound, [`Error::Signal`] if the signal
/// handlers cannot be installed, and the errors of [`serve`].
pub async fn listen_and_serve<A, S, B>(
    addr: A,
    app: S,
    shutdown: &Shutdown,
) -> Result<Report, Error>
where
    A: ToSocketAddrs + fmt::Display,
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let listener = TcpListener::bind(&addr)
        .await
        .map_err(|source| Error::Bind {
            addr: addr.to_string(),
            source,
        })?;
    if let Ok(local) = listener.local_addr() {
        tracing::info!(addr = %local, "serving");
    }
    // Built first: a signal from here on drains this server rather than finishing the
    // shutdown before it starts.
    let serving = serve(listener, app, shutdown);
    shutdown.trigger_on_signals()?;
    serving.await
}

/// The builder [`serve`] returns. `.await` it to serve.
#[must_use = "serve does nothing until awaited"]
pub struct Serve<L, S> {
    listener: L,
    app: S,
    shutdown: Shutdown,
    header_read_timeout: Option<Duration>,
    idle_close: IdleClose,
    /// Keeps the shutdown from finishing before this server has started.
    registration: TaskTrackerToken,
}

impl<L, S> Serve<L, S> {
    /// When idle HTTP/1 keep-alive connections close during the drain (default
    /// [`IdleClose::Immediately`]). See [`IdleClose`].
    pub fn idle_close(mut self, idle_close: IdleClose) -> Self {
        self.idle_close = idle_close;
        self
    }

    /// How long a client may take to send a complete HTTP/1 request head before its
    /// connection is closed (default 30 s; `None` disables it). Zero is rejected.
    pub fn header_read_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.header_read_timeout = timeout.into();
        self
    }
}

impl<L: fmt::Debug, S> fmt::Debug for Serve<L, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Serve")
            .field("listener", &self.listener)
            .field("shutdown", &self.shutdown)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("idle_close", &self.idle_close)
            .finish_non_exhaustive()
    }
}

/// The future of an awaited [`Serve`].
#[must_use = "futures do nothing unless polled"]
pub struct ServeFuture(Pin<Box<dyn Future<Output = Result<Report, Error>> + Send>>);

impl Future for ServeFuture {
    type Output = Result<Report, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx)
    }
}

impl fmt::Debug for ServeFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServeFuture").finish_non_exhaustive()
    }
}

impl<L, S, B> IntoFuture for Serve<L, S>
where
    L: Listener,
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Output = Result<Report, Error>;
    type IntoFuture = ServeFuture;

    fn into_future(self) -> Self::IntoFuture {
        ServeFuture(Box::pin(self.run()))
    }
}

impl<L, S> Serve<L, S> {
    async fn run<B>(self) -> Result<Report, Error>
    where
        L: Listener,
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let Serve {
            mut listener,
            app,
            shutdown,
            header_read_timeout,
            idle_close,
            registration,
        } = self;
        if shutdown.inner.is_done() {
            return Err(Error::AlreadyShutDown);
        }
        if header_read_timeout == Some(Duration::ZERO) {
            return Err(Error::Config(
                "header_read_timeout must be greater than zero; pass None to disable it",
            ));
        }
        if let IdleClose::MinIdleAge(d) | IdleClose::AfterNextRequest(d) = idle_close {
            if d.is_zero() {
                return Err(Error::Config(
                    "an idle_close duration must be greater than zero; use IdleClose::Immediately",
                ));
            }
        }
        let inner = &shutdown.inner;
        let mut builder = auto::Builder::new(TrackedExecutor {
            shutdown: shutdown.clone(),
        });
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(header_read_timeout);
        builder.http2().timer(TokioTimer::new());
        let builder = Arc::new(builder);
        let app = Graceful::new(app, shutdown.clone());
        crate::stats::metrics_impl::serve();

        loop {
            let accepted = tokio::select! {
                biased;
                _ = inner.drain.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((io, peer)) => {
                    tracing::trace!(?peer, "accepted");
                    let state = ConnState::new(shutdown.clone());
                    let io = ConnIo::new(
                        io,
                        Arc::clone(&state),
                        // Counted from here until the socket closes, through an upgrade.
                        inner.connections.token(),
                        L::has_pending_input,
                    );
                    let served = serve_connection(
                        Arc::clone(&builder),
                        io,
                        app.for_connection(Arc::clone(&state)),
                        Arc::clone(&state),
                        idle_close,
                    );
                    tokio::spawn(async move {
                        let counters = &state.shutdown().inner.counters;
                        catch_panics(Task::Connection, counters, served).await;
                    });
                }
                Err(e) if is_connection_error(&e) => {
                    tracing::debug!(error = %e, "accept: connection error, skipped");
                }
                Err(e) if is_resource_error(&e) => {
                    tracing::error!(error = %e, "accept: out of resources, retrying in 1s");
                    tokio::select! {
                        _ = inner.drain.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "accept failed; connections already accepted are still served");
                    return Err(Error::Accept(e));
                }
            }
        }
        // Closing the listener: new connects are refused from here on.
        drop(listener);
        drop(registration);
        Ok(shutdown.wait().await)
    }
}

async fn serve_connection<I, S, B>(
    builder: Arc<auto::Builder<TrackedExecutor>>,
    io: ConnIo<I>,
    app: Graceful<S>,
    state: Arc<ConnState>,
    idle_close: IdleClose,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let conn =
        builder.serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(app));
    tokio::pin!(conn);
    let force = state.force();
    let result = tokio::select! {
        biased;
        // Dropping the connection closes its socket: the client sees an error.
        _ = force.cancelled() => return,
        result = conn.as_mut() => result,
        _ = state.drain().cancelled() => {
            // Busy HTTP/1 connections close after the current response, with
            // `Connection: close`; HTTP/2 gets GOAWAY. An idle HTTP/1 connection (or one
            // that has sent nothing) closes now, unless a request is already on it.
            let drain_at = Instant::now();
            let http1 = !state.is_http2() && !state.is_upgraded();
            if http1 && state.is_busy() && idle_close != IdleClose::Immediately {
                // A response begun before drain start carries no `Connection: close`, and
                // its client may reuse the connection at once: rather than close under
                // it, treat the connection as idle once that response is done. Responses
                // begun from now on carry `Connection: close`, and hyper closes after them.
                tokio::select! {
                    biased;
                    _ = force.cancelled() => return,
                    result = conn.as_mut() => return log_end(result),
                    _ = state.became_idle() => {}
                }
            }
            let hold = if !http1 || state.is_busy() {
                None
            } else {
                idle_hold(conn.as_mut(), &state, idle_close, drain_at).await
            };
            match hold {
                Some(Hold::Finished(result)) => return log_end(result),
                Some(Hold::Until(until)) => {
                    tokio::select! {
                        biased;
                        _ = force.cancelled() => return,
                        result = conn.as_mut() => return log_end(result),
                        _ = state.request_started() => {}
                        _ = tokio::time::sleep_until(until) => {}
                    }
                }
                None => {}
            }
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                biased;
                _ = force.cancelled() => return,
                result = conn.as_mut() => result,
            }
        }
    };
    log_end(result);
}

fn log_end(result: Result<(), BoxError>) {
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// How long an idle HTTP/1 connection stays open at drain start.
enum Hold {
    /// The connection ended while being looked at.
    Finished(Result<(), BoxError>),
    /// Until a request starts on it, or this instant.
    Until(Instant),
}

/// How long to keep an idle HTTP/1 connection open at drain start: until the request
/// whose bytes have already arrived starts (bounded by [`PENDING_INPUT_GRACE`]), or as
/// `idle_close` says; `None` to close it now.
async fn idle_hold<F>(
    mut conn: Pin<&mut F>,
    state: &ConnState,
    idle_close: IdleClose,
    drain_at: Instant,
) -> Option<Hold>
where
    F: Future<Output = Result<(), BoxError>>,
{
    // Poll the connection once with a probe requested: hyper, idle, reads from the
    // socket, and the IO peeks at it first.
    state.request_probe();
    let polled = std::future::poll_fn(|cx| Poll::Ready(conn.as_mut().poll(cx))).await;
    if let Poll::Ready(result) = polled {
        return Some(Hold::Finished(result));
    }
    if state.is_busy() || state.probe_result() == Some(true) {
        // A request has arrived: give it time to be read and start.
        return Some(Hold::Until(Instant::now() + PENDING_INPUT_GRACE));
    }
    match idle_close {
        IdleClose::Immediately => None,
        IdleClose::MinIdleAge(age) => Some(Hold::Until(state.idle_since() + age)),
        IdleClose::AfterNextRequest(wait) => Some(Hold::Until(drain_at + wait)),
    }
}

/// How long a request whose first bytes had arrived at drain start has to be read.
const PENDING_INPUT_GRACE: Duration = Duration::from_secs(1);

/// Runs hyper's background tasks (HTTP/2 streams) in the shutdown's task tracker, so they
/// are waited for, and drops them at the stop deadline.
#[derive(Clone)]
struct TrackedExecutor {
    shutdown: Shutdown,
}

impl<F> hyper::rt::Executor<F> for TrackedExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        let shutdown = self.shutdown.clone();
        self.shutdown.inner.tasks.spawn(async move {
            let inner = &shutdown.inner;
            tokio::select! {
                biased;
                _ = inner.force.cancelled() => {}
                _ = catch_panics(Task::Stream, &inner.counters, future) => {}
            }
        });
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

fn is_resource_error(e: &io::Error) -> bool {
    // EMFILE, ENFILE, ENOBUFS, ENOMEM (Linux numbers): the process or system is out of
    // something that frees up as connections close.
    matches!(e.raw_os_error(), Some(23 | 24 | 105 | 12)) || e.kind() == io::ErrorKind::OutOfMemory
}
