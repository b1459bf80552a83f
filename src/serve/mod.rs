//! [`serve`]: an accept loop that owns its listener and every connection.
//!
//! - `listener.rs`: the [`Listener`] trait and what an accept error means.
//! - `connection.rs`: one connection's shared state and the task that serves and closes
//!   it.
//! - `io.rs`: the connection's IO (count, upgrades, preface, probe, lingering close).
//! - `service.rs`: the per-connection service that counts requests.
//! - `executor.rs`: HTTP/2 stream tasks.

mod connection;
mod discard;
mod executor;
mod io;
mod listener;
mod make;
mod service;
mod settings;
mod watch;

use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioTimer;
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::task::task_tracker::TaskTrackerToken;

pub use self::io::{PendingInput, WatchedIo};
pub use discard::{DiscardUnread, Discarding, DiscardingService, MakeDiscarding, UnreadBody};
#[cfg(all(unix, feature = "restart"))]
pub(crate) use listener::mark_shared;
pub use listener::Listener;
pub use make::{IncomingConnection, MakeService};
pub use settings::{Http1Settings, Http2Settings};
pub use watch::ConnectionWatcher;

use self::connection::{far_future, Closing, Connection};
use self::executor::TrackedExecutor;
use self::listener::AcceptError;
use self::service::ConnService;
use crate::drain::Scoped;
use crate::error::ConfigError;
use crate::lifecycle::Step;
use crate::task::{catch_panics, Task};
use crate::{Error, Report, Shutdown};

/// When [`serve`] closes an idle HTTP/1 keep-alive connection during the drain.
///
/// HTTP/1 has no way to tell a client "no more requests on this connection" except in a
/// response. A client may send a request on an idle keep-alive connection at the very
/// moment the server closes it; that request is lost, and a client cannot safely retry a
/// non-idempotent one. Requests whose bytes have already arrived are always served;
/// these options also cover requests still on their way, at the price of keeping idle
/// connections open a little longer. Every option ends by the stop deadline (a duration
/// too long for the clock, such as `Duration::MAX`, waits until then); a zero duration
/// is the same as `Immediately`.
///
/// Unless a server sets one, a final stop uses `Immediately` and a handover to the next
/// generation of the process ([`Shutdown::trigger_handover`]) uses
/// `AfterNextRequest(`[`HANDOVER_IDLE_WAIT`]`)`: there the address stays served, so
/// nothing is gained by closing early, and a keep-alive client loses nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum IdleClose {
    /// Close idle connections at drain start (the default for a final stop).
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

impl IdleClose {
    /// `Immediately` for a zero wait, which means the same.
    fn normalized(self) -> IdleClose {
        match self {
            IdleClose::MinIdleAge(d) | IdleClose::AfterNextRequest(d) if d.is_zero() => {
                IdleClose::Immediately
            }
            other => other,
        }
    }
}

/// How long, during a handover, an idle HTTP/1 connection is kept open for its next
/// request (served with `Connection: close`) unless the server chose an [`IdleClose`].
pub const HANDOVER_IDLE_WAIT: Duration = Duration::from_secs(5);

/// How long a connection accepted just before drain start (or accepted from the queue at
/// drain start) has, from its accept, to begin its first request, unless told otherwise.
pub const DEFAULT_NEW_CONNECTION_GRACE: Duration = Duration::from_millis(250);

/// After a listener stops new handshakes at drain start, it goes on accepting until no
/// connection has come for this long (handshakes answered just before complete within a
/// round trip), but no longer than [`SETTLE_MAX`].
const SETTLE_QUIET: Duration = Duration::from_millis(10);
const SETTLE_MAX: Duration = Duration::from_millis(250);

/// The header-read timeout [`serve`] uses unless told otherwise.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The idle keep-alive timeout [`serve`] uses unless told otherwise: longer than the
/// upstream keep-alive of the proxies in front of it (nginx and AWS load balancers keep
/// idle connections 60 s, Google Cloud's load balancers 600 s), so that the proxy, not
/// the instance, closes an idle connection, and never races a request it is sending.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(620);

/// Timeouts at least this long are treated as none: hyper adds them to the clock, and
/// a century is never in practice.
pub(crate) const NO_TIMEOUT_AFTER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

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
/// No client whose connect succeeded loses its request to the close: at drain start a
/// TCP listener first stops answering new handshakes (on Linux, a socket filter that
/// drops SYNs: a client that comes later has its connect refused after its SYN
/// retransmit), then accepts the connections already completed, then closes; a
/// connection accepted less than
/// [`new_connection_grace`](Serve::new_connection_grace) before (or at) drain start has
/// until then to begin its request, which is served with `Connection: close`. Older
/// silent connections (a browser's spare preconnect) close at once.
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
/// invalid option, [`Error::Accept`] if the listener fails: `serve` then triggers the
/// shutdown, so the connections it accepted drain with the usual deadlines (as do those
/// of every other server of the same controller), and returns the error once it is done.
pub fn serve<L, M>(listener: L, app: M, shutdown: &Shutdown) -> Serve<L, M>
where
    L: Listener,
    M: MakeService<L>,
{
    Serve {
        listener,
        app,
        shutdown: shutdown.clone(),
        header_read_timeout: Some(DEFAULT_HEADER_READ_TIMEOUT),
        idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
        max_connections: None,
        max_connection_age: None,
        idle_close: None,
        new_connection_grace: DEFAULT_NEW_CONNECTION_GRACE,
        http1: Http1Settings::default(),
        http2: Http2Settings::default(),
        config_error: None,
        registration: shutdown.lifecycle().count_server(),
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
pub async fn listen_and_serve<A, M>(addr: A, app: M, shutdown: &Shutdown) -> Result<Report, Error>
where
    A: ToSocketAddrs + fmt::Display,
    M: MakeService<TcpListener>,
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
pub struct Serve<L, M> {
    listener: L,
    app: M,
    shutdown: Shutdown,
    header_read_timeout: Option<Duration>,
    idle_timeout: Option<Duration>,
    max_connections: Option<usize>,
    max_connection_age: Option<Duration>,
    /// `None`: the default for the kind of shutdown (see [`IdleClose`]).
    idle_close: Option<IdleClose>,
    new_connection_grace: Duration,
    http1: Http1Settings,
    http2: Http2Settings,
    /// The first invalid option, returned when awaited.
    config_error: Option<ConfigError>,
    /// Keeps the shutdown from finishing before this server has started.
    registration: TaskTrackerToken,
}

impl<L, M> Serve<L, M> {
    /// When idle HTTP/1 keep-alive connections close during the drain (default
    /// [`IdleClose::Immediately`] for a final stop, [`IdleClose::AfterNextRequest`] for a
    /// handover). See [`IdleClose`].
    pub fn idle_close(mut self, idle_close: IdleClose) -> Self {
        self.idle_close = Some(idle_close.normalized());
        self
    }

    /// How long a connection that has not sent its first request yet may take, from its
    /// accept, to begin it once the drain has started (default
    /// [`DEFAULT_NEW_CONNECTION_GRACE`], 250 ms). It covers connections accepted just
    /// before drain start and those accepted from the queue at drain start, whose clients
    /// have seen their connect succeed and are sending a request. Zero closes every
    /// silent connection at drain start.
    pub fn new_connection_grace(mut self, grace: Duration) -> Self {
        self.new_connection_grace = grace;
        self
    }

    /// How long a client may take to send a complete HTTP/1 request head before its
    /// connection is closed (default 30 s; `None`, or a duration of a century or more,
    /// disables it): counted from the accept for a connection's first request, and from
    /// the first bytes of each later one (the wait for them is the
    /// [`idle_timeout`](Serve::idle_timeout)'s). Zero is an error
    /// ([`ConfigError::ZeroHeaderReadTimeout`]), returned when the server is awaited.
    pub fn header_read_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        let timeout = timeout.into().filter(|d| *d < NO_TIMEOUT_AFTER);
        if timeout == Some(Duration::ZERO) {
            self.config_error
                .get_or_insert(ConfigError::ZeroHeaderReadTimeout);
        }
        self.header_read_timeout = timeout;
        self
    }

    /// How long an HTTP/1 keep-alive connection may wait for its next request, from the
    /// end of its last response until the request's first bytes, before it is closed
    /// (default [`DEFAULT_IDLE_TIMEOUT`], 620 s; `None`, or a century or more, keeps idle
    /// connections open until the client closes them or the drain starts). An HTTP/2
    /// connection with no stream open for as long (since its accept or its last stream's
    /// end; PINGs and other frames do not count) gets GOAWAY and closes: a stream its
    /// client opened meanwhile is either served to its end or, by the GOAWAY's last
    /// stream id, known to the client as not processed; a client that does not answer
    /// the GOAWAY's PING within a second is dropped. (A connection that carried an
    /// extended CONNECT, a WebSocket over HTTP/2, is left to its client.)
    ///
    /// Behind a proxy or load balancer that keeps connections to this server alive, make
    /// it longer than the proxy's own idle timeout for them (nginx's upstream
    /// `keepalive_timeout`, an AWS ALB's idle timeout, ...): whichever side closes an idle
    /// connection first races the other's next request on it, and only the proxy can
    /// close it without losing that request. Zero is an error
    /// ([`ConfigError::ZeroIdleTimeout`]), returned when the server is awaited.
    pub fn idle_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        let timeout = timeout.into().filter(|d| *d < NO_TIMEOUT_AFTER);
        if timeout == Some(Duration::ZERO) {
            self.config_error
                .get_or_insert(ConfigError::ZeroIdleTimeout);
        }
        self.idle_timeout = timeout;
        self
    }

    /// At most this many connections open at once (default: no limit). At the limit the
    /// server stops accepting: new connections wait in the kernel's accept queue (and,
    /// once it is full, their handshakes wait), and one is taken each time an open
    /// connection closes, so a flood, or two generations of a process sharing a socket,
    /// meet backpressure rather than errors. A connection counts until its socket closes,
    /// an upgraded one included. At drain start the connections already queued are still
    /// accepted and served, beyond the limit (B55). Zero is an error
    /// ([`ConfigError::ZeroMaxConnections`]), returned when the server is awaited.
    pub fn max_connections(mut self, max: impl Into<Option<usize>>) -> Self {
        let max = max.into();
        if max == Some(0) {
            self.config_error
                .get_or_insert(ConfigError::ZeroMaxConnections);
        }
        self.max_connections = max;
        self
    }

    /// Retires each connection once it is this old (default: never), less up to a tenth
    /// so that connections accepted together are not retired together: an HTTP/2
    /// connection gets GOAWAY (its streams finish, its client opens a new connection for
    /// the next ones), an HTTP/1 connection closes after its next response, which carries
    /// `Connection: close`. After a rolling restart, long-lived HTTP/2 and gRPC
    /// connections stay on the instances that were up first; an age limit spreads them
    /// again (gRPC's `MAX_CONNECTION_AGE`). `None`, or a century or more, is no limit;
    /// zero is an error ([`ConfigError::ZeroMaxConnectionAge`]), returned when the server
    /// is awaited.
    pub fn max_connection_age(mut self, age: impl Into<Option<Duration>>) -> Self {
        let age = age.into().filter(|d| *d < NO_TIMEOUT_AFTER);
        if age == Some(Duration::ZERO) {
            self.config_error
                .get_or_insert(ConfigError::ZeroMaxConnectionAge);
        }
        self.max_connection_age = age;
        self
    }
}

impl<L, M> Serve<L, M> {
    /// Discards what a handler leaves unread of an HTTP/1 request body (B65), so that the
    /// connection can carry the next request: the app's services get
    /// `Request<`[`UnreadBody`]`>` instead of `Request<hyper::body::Incoming>`, which axum's
    /// `Router` and tonic take as they are (a service written for `Incoming` is not served
    /// this way). A body dropped before its end is read to its end and discarded on a
    /// task of its own, within `limits` ([`DiscardUnread::new`]: 256 KiB within 1 s);
    /// beyond them, and once the drain has started, the connection closes as without this
    /// option. A request sent with `Expect: 100-continue` whose body was never read gets
    /// no `100 Continue`: its body is not asked for.
    ///
    /// Off by default. Worth it behind a proxy that keeps connections alive and sends a
    /// body after the head in a packet of its own (Caddy, Go's `ReverseProxy`): without it
    /// an early answer (a 401, a 413, a redirect) closes the connection under the proxy's
    /// next request.
    ///
    /// ```
    /// # async fn run(listener: tokio::net::TcpListener, shutdown: httpdown::Shutdown) {
    /// use axum::{routing::post, Router};
    /// use httpdown::DiscardUnread;
    ///
    /// let app = Router::new().route("/upload", post(|| async { "401: log in first" }));
    /// let serving = httpdown::serve(listener, app, &shutdown)
    ///     .discard_unread_bodies(DiscardUnread::new());
    /// # let _ = serving;
    /// # }
    /// ```
    pub fn discard_unread_bodies(self, limits: DiscardUnread) -> Serve<L, Discarding<M>> {
        Serve {
            listener: self.listener,
            app: Discarding::new(self.app, limits),
            shutdown: self.shutdown,
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            max_connections: self.max_connections,
            max_connection_age: self.max_connection_age,
            idle_close: self.idle_close,
            new_connection_grace: self.new_connection_grace,
            http1: self.http1,
            http2: self.http2,
            config_error: self.config_error,
            registration: self.registration,
        }
    }

    /// hyper's HTTP/1 settings (header limits, keep-alive, buffer size). An invalid one
    /// is returned as [`Error::Config`] when the server is awaited.
    pub fn http1(mut self, settings: Http1Settings) -> Self {
        if let Err(error) = settings.check() {
            self.config_error.get_or_insert(error);
        }
        self.http1 = settings;
        self
    }

    /// hyper's HTTP/2 settings (streams, windows, frame size, keep-alive pings, extended
    /// CONNECT). An invalid one is returned as [`Error::Config`] when the server is
    /// awaited.
    pub fn http2(mut self, settings: Http2Settings) -> Self {
        if let Err(error) = settings.check() {
            self.config_error.get_or_insert(error);
        }
        self.http2 = settings;
        self
    }
}

impl<L: fmt::Debug, M> fmt::Debug for Serve<L, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Serve")
            .field("listener", &self.listener)
            .field("shutdown", &self.shutdown)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_connections", &self.max_connections)
            .field("idle_close", &self.idle_close)
            .field("new_connection_grace", &self.new_connection_grace)
            .field("http1", &self.http1)
            .field("http2", &self.http2)
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

impl<L, M> IntoFuture for Serve<L, M>
where
    L: Listener,
    M: MakeService<L>,
{
    type Output = Result<Report, Error>;
    type IntoFuture = ServeFuture;

    fn into_future(self) -> Self::IntoFuture {
        ServeFuture(Box::pin(self.run()))
    }
}

impl<L: Listener, M: MakeService<L>> Serve<L, M> {
    async fn run(self) -> Result<Report, Error> {
        let Serve {
            mut listener,
            app,
            shutdown,
            header_read_timeout,
            idle_timeout,
            max_connections,
            max_connection_age,
            idle_close,
            new_connection_grace,
            http1,
            http2,
            config_error,
            registration,
        } = self;
        if shutdown.lifecycle().reached(Step::Done) {
            return Err(Error::AlreadyShutDown);
        }
        if let Some(error) = config_error {
            return Err(Error::Config(error));
        }
        let mut builder = auto::Builder::new(TrackedExecutor::new(shutdown.clone()));
        // The header-read timeout is the connection task's (one timer per connection, not
        // one per request as in hyper): hyper's own is off.
        builder.http1().header_read_timeout(None);
        builder.http2().timer(TokioTimer::new());
        http1.apply(&mut builder);
        http2.apply(&mut builder);
        let builder = Arc::new(builder);
        shutdown.counters().server_started();
        let mut acceptor = Acceptor {
            app,
            shutdown: shutdown.clone(),
            builder,
            closing: Closing {
                idle_close,
                header_read_timeout,
                idle_timeout,
                max_age: max_connection_age,
                new_connection_grace,
            },
        };

        let drain_started = shutdown.lifecycle().reaching(Step::DrainStarted);
        tokio::pin!(drain_started);
        let limit = max_connections.map(|max| Arc::new(Semaphore::new(max)));
        let failure = loop {
            // At the limit, wait for a connection to close before accepting another.
            let permit = match &limit {
                Some(limit) => tokio::select! {
                    biased;
                    () = &mut drain_started => break None,
                    permit = Arc::clone(limit).acquire_owned() => permit.ok(),
                },
                None => None,
            };
            let accepted = tokio::select! {
                biased;
                () = &mut drain_started => break None,
                accepted = listener.accept() => accepted,
            };
            let error = match accepted {
                Ok((io, peer)) => {
                    acceptor.connection(io, peer, permit).await;
                    continue;
                }
                Err(error) => error,
            };
            match AcceptError::of(&error) {
                AcceptError::Connection => {
                    tracing::debug!(%error, "accept: connection error, skipped");
                }
                AcceptError::Resources => {
                    tracing::error!(%error, "accept: out of resources, retrying in 1s");
                    tokio::select! {
                        () = &mut drain_started => break None,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
                AcceptError::Fatal => break Some(error),
            }
        };
        if failure.is_none() {
            acceptor.accept_the_last(&mut listener).await;
            acceptor.accept_pending(&mut listener).await;
        }
        // Closing the listener: new connects are refused from here on.
        drop(listener);
        drop(registration);
        if let Some(error) = failure {
            tracing::error!(%error, "listener failed: shutting down, connections drain");
            shutdown.trigger();
            shutdown.wait().await;
            return Err(Error::Accept(error));
        }
        Ok(shutdown.wait().await)
    }
}

/// What the accept loop needs to serve a connection.
struct Acceptor<M> {
    app: M,
    shutdown: Shutdown,
    builder: Arc<auto::Builder<TrackedExecutor>>,
    closing: Closing,
}

impl<M> Acceptor<M> {
    /// Serves one accepted connection on a task of its own (holding `permit`, its place
    /// under the connection limit, until it closes).
    async fn connection<L>(
        &mut self,
        io: L::Io,
        peer: L::Addr,
        permit: Option<OwnedSemaphorePermit>,
    ) where
        L: Listener,
        M: MakeService<L>,
    {
        tracing::trace!(?peer, "accepted");
        let shutdown = &self.shutdown;
        // As `axum::serve` does: one service per connection, made here.
        std::future::poll_fn(|cx| self.app.poll_ready(cx)).await;
        let made = self
            .app
            .make_service(IncomingConnection::new(&io, peer))
            .await;
        let service = made.unwrap_or_else(|never| match never {});
        let connection = Connection::with_permit(shutdown.clone(), permit);
        let io = WatchedIo::new(
            io,
            Arc::clone(&connection),
            // Counted from here until the socket closes, through an upgrade.
            shutdown.lifecycle().count_connection(),
            L::has_pending_input,
        );
        let service = ConnService::new(service, Arc::clone(&connection));
        let served = connection::run(
            Arc::clone(&self.builder),
            io,
            service,
            Arc::clone(&connection),
            self.closing,
        );
        // The connection's requests see its drain while they run.
        let served = Scoped::new(served, shutdown.drain());
        // No `async` block around it: that would hold `served` twice.
        tokio::spawn(catch_panics(Task::Connection, shutdown.clone(), served));
    }

    /// Once the accept loop has stopped (drain start, or a handover): serves the
    /// connections the listener had already taken from its socket but not yet returned
    /// ([`Listener::next_pending`]), those ready within the new-connection grace.
    async fn accept_pending<L>(&mut self, listener: &mut L)
    where
        L: Listener,
        M: MakeService<L>,
    {
        let shutdown = self.shutdown.clone();
        let force_closing = shutdown.lifecycle().reaching(Step::ForceClosing);
        tokio::pin!(force_closing);
        let until = Instant::now().checked_add(self.closing.new_connection_grace);
        let grace = tokio::time::sleep_until(until.unwrap_or_else(far_future));
        tokio::pin!(grace);
        loop {
            let next = tokio::select! {
                biased;
                () = &mut force_closing => break,
                () = &mut grace => break,
                next = listener.next_pending() => next,
            };
            match next {
                Some(Ok((io, peer))) => self.connection::<L>(io, peer, None).await,
                Some(Err(error)) => tracing::debug!(%error, "pending connection failed"),
                None => break,
            }
        }
    }

    /// At drain start, before the listener closes: stops new handshakes, then accepts
    /// what the kernel has completed (B55), so that no client whose connect succeeded is
    /// reset by the close. Skipped in a handover that passed the listening sockets on: the
    /// next generation goes on accepting from the same socket, and a filter on it would be
    /// its filter too.
    async fn accept_the_last<L>(&mut self, listener: &mut L)
    where
        L: Listener,
        M: MakeService<L>,
    {
        let shutdown = self.shutdown.clone();
        let lifecycle = shutdown.lifecycle();
        if lifecycle.listeners_handed_over() {
            return;
        }
        let stopped = listener.stop_handshakes().unwrap_or_else(|error| {
            tracing::debug!(%error, "could not stop new handshakes on the listener");
            false
        });
        // Handshakes answered just before the filter complete within a round trip; without
        // one, only what is queued now is taken.
        let quiet = if stopped {
            SETTLE_QUIET
        } else {
            Duration::ZERO
        };
        let settle_end = Instant::now() + SETTLE_MAX;
        let mut accepted = 0usize;
        while !lifecycle.reached(Step::ForceClosing) {
            let next = if quiet.is_zero() {
                match futures_util::FutureExt::now_or_never(listener.accept()) {
                    Some(next) => next,
                    None => break,
                }
            } else {
                let until = (Instant::now() + quiet).min(settle_end);
                tokio::select! {
                    biased;
                    next = listener.accept() => next,
                    () = tokio::time::sleep_until(until) => break,
                }
            };
            match next {
                Ok((io, peer)) => {
                    accepted += 1;
                    self.connection::<L>(io, peer, None).await;
                }
                Err(error) if AcceptError::of(&error) == AcceptError::Connection => {}
                Err(error) => {
                    tracing::debug!(%error, "accept at drain start failed");
                    break;
                }
            }
        }
        if accepted > 0 {
            tracing::debug!(
                accepted,
                "accepted at drain start, from the listener's queue"
            );
        }
    }
}
