//! Connections of a hand-written accept loop, handed to a [`Shutdown`] (B44): hyper-util's
//! `GracefulShutdown::watch`, with the stop deadline, the report and the statistics.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::task::task_tracker::TaskTrackerToken;

use super::connection::{self, Closing, Connection};
use super::io::{PendingInput, WatchedIo};
use crate::Shutdown;

/// One connection of your own accept loop, watched by a [`Shutdown`]: counted from the
/// moment it is made until the connection ends (or, through [`io`](Self::io), until its
/// socket closes).
///
/// [`watch`](Self::watch) gives a hyper connection (HTTP/1, HTTP/2 or hyper-util's auto,
/// with or without upgrades) the whole drain: it is counted, told to finish at drain
/// start (`Connection: close` after the current response, or GOAWAY), dropped at the stop
/// deadline (which closes its socket), and counted in the [`Report`](crate::Report) and
/// the [`Stats`](crate::Stats).
///
/// What needs the socket itself comes with [`io`](Self::io), if you wrap the socket in
/// it: a request whose bytes had already arrived at drain start is served rather than
/// dropped; a connection closed with unread input lingers instead of being reset; an
/// upgraded connection (WebSocket) stays counted until its socket closes and fails its
/// reads and writes at the stop deadline; HTTP/2 is recognised by its preface. Requests
/// are counted by a [`GracefulLayer`](crate::GracefulLayer) in your service, as with any
/// server. What only [`serve`](crate::serve()) does: close the listener at drain start,
/// `IdleClose`, the grace of connections accepted just before drain start, and count each
/// connection's requests for the connection states.
///
/// ```no_run
/// # async fn run(app: axum::Router, shutdown: httpdown::Shutdown) -> std::io::Result<()> {
/// use hyper_util::rt::{TokioExecutor, TokioIo};
/// use hyper_util::server::conn::auto;
/// use hyper_util::service::TowerToHyperService;
///
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// let app = app.layer(shutdown.layer()); // requests counted and force-closed
/// loop {
///     let (socket, _peer) = tokio::select! {
///         accepted = listener.accept() => accepted?,
///         _ = shutdown.drain_started() => break, // the listener closes here
///     };
///     let mut watcher = shutdown.watcher();
///     let io = TokioIo::new(watcher.io(socket));
///     let service = TowerToHyperService::new(app.clone());
///     tokio::spawn(async move {
///         let conn = auto::Builder::new(TokioExecutor::new())
///             .serve_connection_with_upgrades(io, service)
///             .into_owned();
///         let _ = watcher.watch(conn).await;
///     });
/// }
/// let report = shutdown.wait().await;
/// # Ok(()) }
/// ```
#[must_use = "a watcher counts its connection until it is dropped"]
pub struct ConnectionWatcher {
    connection: Arc<Connection>,
    /// The connection's count, until [`io`](Self::io) moves it into the socket.
    token: Option<TaskTrackerToken>,
}

impl Shutdown {
    /// Watches one connection of a hand-written accept loop. See [`ConnectionWatcher`].
    pub fn watcher(&self) -> ConnectionWatcher {
        ConnectionWatcher {
            connection: Connection::new(self.clone()),
            token: Some(self.lifecycle().count_connection()),
        }
    }

    /// Watches a hyper connection until it ends: counted, told to finish at drain start,
    /// dropped at the stop deadline. Resolves with the connection's own result, or
    /// `Ok(())` when it was force-closed at the stop deadline (the report counts it).
    /// Same as `shutdown.watcher().watch(conn)`; see [`ConnectionWatcher`] for the IO
    /// wrapper that adds what needs the socket.
    ///
    /// # Cancel safety
    /// Dropping the future drops the connection, which is then no longer counted.
    pub fn watch<C>(&self, conn: C) -> impl Future<Output = Result<(), C::Error>> + Send
    where
        C: GracefulConnection + Send,
        C::Error: Send,
    {
        self.watcher().watch(conn)
    }
}

impl ConnectionWatcher {
    /// Wraps the connection's socket: see [`ConnectionWatcher`] for what it adds. The
    /// connection then stays counted until the socket closes, through an upgrade.
    ///
    /// # Panics
    /// If called twice on one watcher: a connection has one socket.
    pub fn io<I>(&mut self, io: I) -> WatchedIo<I>
    where
        I: PendingInput + AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let token = self
            .token
            .take()
            .expect("ConnectionWatcher::io is called once per connection");
        WatchedIo::new(
            io,
            Arc::clone(&self.connection),
            token,
            PendingInput::has_pending_input,
        )
    }

    /// Drives `conn` until it ends, through the drain. Resolves with the connection's
    /// own result, or `Ok(())` when it was force-closed at the stop deadline.
    pub fn watch<C>(self, conn: C) -> impl Future<Output = Result<(), C::Error>> + Send
    where
        C: GracefulConnection + Send,
        C::Error: Send,
    {
        let mut this = self;
        let token = this.token.take();
        let connection = Arc::clone(&this.connection);
        async move {
            tokio::pin!(conn);
            let end = connection::watch(conn, &connection, Closing::IMMEDIATELY).await;
            let force_closed = matches!(end, connection::End::ForceClosed);
            if token.is_some() {
                // No IO wrapper: the connection ends with its future.
                connection.closed(force_closed);
            }
            drop(token);
            match end {
                connection::End::Finished(result) => result,
                _ => Ok(()),
            }
        }
    }
}

impl Drop for ConnectionWatcher {
    fn drop(&mut self) {
        // Dropped without being watched, or its IO wrapped: the count goes with it.
        if self.token.take().is_some() {
            self.connection.closed(false);
        }
    }
}

impl fmt::Debug for ConnectionWatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionWatcher")
            .field("io_wrapped", &self.token.is_none())
            .finish_non_exhaustive()
    }
}
