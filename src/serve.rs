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
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

use crate::{BoxError, Error, Graceful, Report, Shutdown};

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
/// `serve` returns a builder: set options, then `.await` it.
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
    shutdown.trigger_on_signals()?;
    if let Ok(local) = listener.local_addr() {
        tracing::info!(addr = %local, "serving");
    }
    serve(listener, app, shutdown).await
}

/// The builder [`serve`] returns. `.await` it to serve.
#[must_use = "serve does nothing until awaited"]
pub struct Serve<L, S> {
    listener: L,
    app: S,
    shutdown: Shutdown,
    header_read_timeout: Option<Duration>,
}

impl<L, S> Serve<L, S> {
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
        } = self;
        if shutdown.inner.is_done() {
            return Err(Error::AlreadyShutDown);
        }
        if header_read_timeout == Some(Duration::ZERO) {
            return Err(Error::Config(
                "header_read_timeout must be greater than zero; pass None to disable it",
            ));
        }
        let inner = &shutdown.inner;
        let mut builder = auto::Builder::new(TrackedExecutor {
            tasks: inner.tasks.clone(),
            force: inner.force.clone(),
        });
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(header_read_timeout);
        builder.http2().timer(TokioTimer::new());
        let builder = Arc::new(builder);
        let app = Graceful::new(app, shutdown.clone());

        loop {
            let accepted = tokio::select! {
                biased;
                _ = inner.drain.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((io, peer)) => {
                    tracing::trace!(?peer, "accepted");
                    inner.connections.spawn(serve_connection(
                        Arc::clone(&builder),
                        io,
                        app.clone(),
                        inner.drain.clone(),
                        inner.force.clone(),
                    ));
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
        Ok(shutdown.wait().await)
    }
}

async fn serve_connection<I, S, B>(
    builder: Arc<auto::Builder<TrackedExecutor>>,
    io: I,
    app: Graceful<S>,
    drain: CancellationToken,
    force: CancellationToken,
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
    let result = tokio::select! {
        biased;
        // Dropping the connection closes its socket: the client sees an error.
        _ = force.cancelled() => return,
        result = conn.as_mut() => result,
        _ = drain.cancelled() => {
            // Idle (or silent) connections close at once; busy HTTP/1 ones after the
            // current response, with `Connection: close`; HTTP/2 gets GOAWAY.
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                biased;
                _ = force.cancelled() => return,
                result = conn.as_mut() => result,
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Runs hyper's background tasks (HTTP/2 streams) in the shutdown's task tracker, so they
/// are waited for, and drops them at the stop deadline.
#[derive(Clone)]
struct TrackedExecutor {
    tasks: TaskTracker,
    force: CancellationToken,
}

impl<F> hyper::rt::Executor<F> for TrackedExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        let force = self.force.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                biased;
                _ = force.cancelled() => {}
                _ = future => {}
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
