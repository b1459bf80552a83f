//! axum integration (feature `axum`): [`Drain`] as an extractor, and
//! [`GracefulWebSocket`], which closes a WebSocket with code 1001 at drain start.
//!
//! ```
//! use axum::extract::ws::{Message, WebSocketUpgrade};
//! use axum::response::Response;
//! use httpdown::axum::GracefulWebSocket;
//! use httpdown::Drain;
//!
//! // An echo server that says goodbye at drain start.
//! async fn echo(ws: WebSocketUpgrade, drain: Drain) -> Response {
//!     ws.on_upgrade(move |socket| async move {
//!         let mut socket = GracefulWebSocket::new(socket, drain);
//!         while let Some(Ok(message)) = socket.recv().await {
//!             if let Message::Text(_) | Message::Binary(_) = message {
//!                 if socket.send(message).await.is_err() {
//!                     break;
//!                 }
//!             }
//!         }
//!     })
//! }
//! # let _ = axum::Router::<()>::new().route("/ws", axum::routing::get(echo));
//! ```

use std::fmt;

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::net::SocketAddr;
use std::task::{Context, Poll};

use axum::extract::connect_info::Connected;
use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket};
use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use axum::Router;
use http::request::Parts;
use http::StatusCode;
use tower_service::Service;

use crate::{Drain, IncomingConnection, Listener};

/// The rejection of the [`Drain`] extractor: the request did not go through
/// [`GracefulLayer`](crate::GracefulLayer) or [`serve`](crate::serve()).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MissingDrain;

impl fmt::Display for MissingDrain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "no httpdown::Drain in the request: serve the app with httpdown::serve or add httpdown::GracefulLayer",
        )
    }
}

impl std::error::Error for MissingDrain {}

impl IntoResponse for MissingDrain {
    fn into_response(self) -> Response {
        (StatusCode::INTERNAL_SERVER_ERROR, self.to_string()).into_response()
    }
}

/// The request's drain ([`Drain::current`]); [`MissingDrain`] (a 500 that says what to
/// add) when the handler does not run inside [`serve`](crate::serve()) or a
/// [`GracefulLayer`](crate::GracefulLayer).
impl<S: Send + Sync> FromRequestParts<S> for Drain {
    type Rejection = MissingDrain;

    async fn from_request_parts(_parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Drain::current().ok_or(MissingDrain)
    }
}

/// `httpdown::serve(listener, router, &shutdown)`, as `axum::serve(listener, router)`.
impl<L: Listener> Service<IncomingConnection<'_, L>> for Router<()> {
    type Response = Router<()>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Self::Error>>;

    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _connection: IncomingConnection<'_, L>) -> Self::Future {
        // As axum does: turn every route into a service once per connection, not per
        // request.
        ready(Ok(self.clone().with_state(())))
    }
}

/// `httpdown::serve(listener, method_router, &shutdown)`, as with `axum::serve`.
impl<L: Listener> Service<IncomingConnection<'_, L>> for MethodRouter<()> {
    type Response = MethodRouter<()>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Self::Error>>;

    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _connection: IncomingConnection<'_, L>) -> Self::Future {
        ready(Ok(self.clone().with_state(())))
    }
}

/// `ConnectInfo<SocketAddr>` for handlers, with
/// `router.into_make_service_with_connect_info::<SocketAddr>()`, on any listener whose
/// addresses are socket addresses (TCP, TLS over TCP).
impl<L> Connected<IncomingConnection<'_, L>> for SocketAddr
where
    L: Listener<Addr = SocketAddr>,
{
    fn connect_info(connection: IncomingConnection<'_, L>) -> Self {
        *connection.remote_addr()
    }
}

/// `ConnectInfo<tokio::net::unix::SocketAddr>` for handlers, with
/// `router.into_make_service_with_connect_info::<tokio::net::unix::SocketAddr>()`, on a
/// Unix socket.
#[cfg(unix)]
impl<L> Connected<IncomingConnection<'_, L>> for tokio::net::unix::SocketAddr
where
    L: Listener<Addr = tokio::net::unix::SocketAddr>,
{
    fn connect_info(connection: IncomingConnection<'_, L>) -> Self {
        connection.remote_addr().clone()
    }
}

/// An axum [`Listener`](axum::serve::Listener) for [`serve`](crate::serve()): axum's
/// own listeners, ones of your own written for `axum::serve`, and those made with
/// `ListenerExt::tap_io`.
///
/// ```
/// # async fn run(app: axum::Router, shutdown: httpdown::Shutdown) -> std::io::Result<()> {
/// use axum::serve::ListenerExt;
/// use httpdown::axum::AxumListener;
///
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
///     .await?
///     .tap_io(|tcp| {
///         let _ = tcp.set_nodelay(true);
///     });
/// let serving = httpdown::serve(AxumListener(listener), app, &shutdown);
/// # let _ = serving;
/// # Ok(()) }
/// ```
///
/// An axum listener hands over no socket to look at, so compared with serving a
/// `tokio::net::TcpListener` directly two guarantees of the drain are lost: a request
/// whose bytes had already arrived on an idle keep-alive connection at drain start is not
/// served (the connection closes at once, as with `axum::serve`), and a connection
/// closed with unread input is not given a lingering close (the kernel may reset it). Its
/// accept loop also retries errors itself, so `serve`'s own handling of them (and
/// [`Error::Accept`](crate::Error::Accept)) does not apply. Everything else, the stop and
/// kill deadlines, upgrades, HTTP/2 and the report, is the same. `TCP_NODELAY` is set
/// only if the listener sets it (axum's `TcpListener` does not; `tap_io` can).
#[derive(Debug)]
pub struct AxumListener<L>(pub L);

impl<L> Listener for AxumListener<L>
where
    L: axum::serve::Listener,
    L::Addr: fmt::Debug,
{
    type Io = L::Io;
    type Addr = L::Addr;

    async fn accept(&mut self) -> std::io::Result<(Self::Io, Self::Addr)> {
        Ok(self.0.accept().await)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// A [`WebSocket`] that says goodbye at drain start.
///
/// [`recv`](Self::recv) works as on the plain socket until drain start. Then it sends a
/// Close frame with code 1001 ("going away"), keeps reading (and discarding) until the
/// client answers with its own Close frame, the connection ends, or the stop deadline
/// passes, and returns `None`: the handler's receive loop ends on its own, and the
/// upgraded connection closes cleanly. A socket that is not read (or whose handler
/// ignores the drain) is still force-closed at the stop deadline by
/// [`serve`](crate::serve()).
pub struct GracefulWebSocket {
    socket: WebSocket,
    drain: Drain,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// Drain start passed: our Close frame is to be sent.
    SayingGoodbye,
    /// Our Close frame is sent; waiting for the client's.
    Closing,
    Closed,
}

/// The reason sent with the Close frame at drain start.
pub const GOING_AWAY_REASON: &str = "server shutting down";

impl GracefulWebSocket {
    /// Wraps `socket`, watching `drain`.
    pub fn new(socket: WebSocket, drain: Drain) -> Self {
        GracefulWebSocket {
            socket,
            drain,
            state: State::Open,
        }
    }

    /// Receives the next message; `None` once the socket is closed, or once the goodbye
    /// that drain start begins has ended.
    ///
    /// # Cancel safety
    /// Cancel-safe: a message is never lost if the future is dropped before it
    /// completes.
    pub async fn recv(&mut self) -> Option<Result<Message, axum::Error>> {
        loop {
            match self.state {
                State::Closed => return None,
                State::Open if self.drain.is_started() => self.state = State::SayingGoodbye,
                State::Open => {
                    tokio::select! {
                        biased;
                        message = self.socket.recv() => {
                            if matches!(message, None | Some(Err(_)) | Some(Ok(Message::Close(_)))) {
                                self.state = State::Closed;
                            }
                            return message;
                        }
                        () = self.drain.started() => self.state = State::SayingGoodbye,
                    }
                }
                State::SayingGoodbye => {
                    let goodbye = Message::Close(Some(CloseFrame {
                        code: close_code::AWAY,
                        reason: GOING_AWAY_REASON.into(),
                    }));
                    self.state = match self.socket.send(goodbye).await {
                        Ok(()) => State::Closing,
                        Err(_) => State::Closed,
                    };
                }
                State::Closing => {
                    tokio::select! {
                        biased;
                        message = self.socket.recv() => match message {
                            // The client's Close completes the handshake.
                            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => {
                                self.state = State::Closed;
                            }
                            // Data after our Close is discarded (RFC 6455, 5.5.1).
                            Some(Ok(_)) => {}
                        },
                        () = self.drain.stop_deadline() => self.state = State::Closed,
                    }
                }
            }
        }
    }

    /// Sends a message. After drain start has begun the goodbye, messages other than
    /// Close are refused by the protocol and fail.
    pub async fn send(&mut self, message: Message) -> Result<(), axum::Error> {
        self.socket.send(message).await
    }

    /// Whether the goodbye has begun (drain start passed while receiving) or the socket
    /// is closed.
    pub fn is_closing(&self) -> bool {
        self.state != State::Open
    }

    /// The plain socket.
    pub fn into_inner(self) -> WebSocket {
        self.socket
    }
}

impl fmt::Debug for GracefulWebSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GracefulWebSocket")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}
