//! Graceful shutdown for HTTP servers built on tokio, hyper, tower and axum.
//!
//! `httpdown` stops accepting, lets in-flight work finish, closes idle connections at
//! once, force-closes what is left at a **stop deadline**, and gives up waiting at a
//! **kill deadline**, then tells you what happened in a [`Report`]. It is a Rust take on
//! Go's `facebookgo/httpdown`.
//!
//! # Quick start (axum)
//!
//! ```no_run
//! use std::time::Duration;
//! use axum::{routing::get, Router};
//! use httpdown::Shutdown;
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), httpdown::Error> {
//! let shutdown = Shutdown::builder()
//!     .stop_timeout(Duration::from_secs(10))
//!     .kill_timeout(Duration::from_secs(1))
//!     .build();
//! shutdown.trigger_on_signals()?; // SIGTERM / SIGINT
//!
//! let app = Router::new().route("/", get(|| async { "hello" }));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await.unwrap();
//! let report = httpdown::serve(listener, app, &shutdown).await?;
//! eprintln!("{report}");
//! # Ok(())
//! # }
//! ```
//!
//! # When a request counts
//!
//! [`GracefulLayer`] counts a request from `call` until its response **body** has ended
//! or been dropped, so streaming responses keep the drain open. `poll_ready` does not
//! count. A request that panics, or whose client goes away, stops counting when hyper
//! drops its future or body. [`serve`] counts every request itself; adding the layer as
//! well counts each request once.
//!
//! # The lifecycle
//!
//! 1. **Trigger**: [`Shutdown::trigger`], or a signal with
//!    [`Shutdown::trigger_on_signals`]. Sticky and idempotent.
//! 2. **Drain delay** (default zero): still serving, but [`Shutdown::phase`] reads
//!    [`Phase::Draining`].
//! 3. **Drain start**: listeners close, idle connections close, busy HTTP/1 connections
//!    close after the current response (with `Connection: close`), HTTP/2 gets GOAWAY.
//!    The stop timer starts.
//! 4. **Stop deadline** (`stop_timeout`, default 60 s): what is still running is
//!    force-closed: responses end with an error (the client never sees a body that looks
//!    complete) and connection tasks are dropped, closing their sockets. The kill timer
//!    starts. An **escalation** ([`Shutdown::escalate`], or a second signal) skips here
//!    at once.
//! 5. **Kill deadline** (`kill_timeout`, default 60 s after the stop deadline): stop
//!    waiting for tasks that ignore cancellation (a handler blocking its thread) and
//!    report how many were left.
//! 6. **Done** the moment nothing is left: completion is event-driven, never a polling
//!    tick.
//!
//! `Duration::ZERO` moves on at once; `None` (or a duration too long for the clock, such
//! as `Duration::MAX`) waits forever at that step. No value panics.
//!
//! # With plain `axum::serve`
//!
//! The layer alone still bounds a shutdown: hand [`Shutdown::drain_started`] to
//! `with_graceful_shutdown`, and at the stop deadline the layer force-closes whatever is
//! still running, so one endless stream cannot hang axum's shutdown. What only [`serve`] does:
//! refuse new connections the moment drain starts on every listener it owns, close
//! connections that sent nothing, drop connection tasks at the stop deadline, and count
//! connections.
//!
//! # Long-lived connections
//!
//! Handlers see the shutdown through [`Drain`] ([`Drain::current`] inside a handler, and
//! an axum extractor with the `axum` feature): [`Drain::until_drain`] ends a stream (SSE,
//! long poll) cleanly at drain start, [`axum::GracefulWebSocket`] closes a WebSocket with
//! code 1001. [`serve`] keeps upgraded connections counted until their socket closes and
//! force-closes them at the stop deadline, sends HTTP/2 GOAWAY, serves a request already
//! on an idle HTTP/1 connection rather than dropping it, and offers [`IdleClose`]
//! against the keep-alive close race.
//!
//! # Fitting what you have
//!
//! - **axum apps as they are**: [`serve`] takes a `Router`, `router.into_make_service()`
//!   and `router.into_make_service_with_connect_info::<SocketAddr>()` ([`MakeService`],
//!   [`IncomingConnection`]); a plain tower service through `tower::make::Shared`.
//! - **hyper's settings**: [`Serve::http1`] and [`Serve::http2`] ([`Http1Settings`],
//!   [`Http2Settings`]), without losing any part of the drain.
//! - **your own accept loop**: [`Shutdown::watch`] a hyper connection, and
//!   [`ConnectionWatcher::io`] for what needs the socket; axum's listeners through
//!   `axum::AxumListener`.
//! - **background work**: [`Shutdown::spawn`].
//! - **gRPC**: calls force-closed at the stop deadline end with `grpc-status: 14`
//!   (UNAVAILABLE), not a transport error.
//! - **Unix sockets**: [`bind_unix`] removes a stale socket file, never a live one.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), httpdown::Error> {
//! use std::net::SocketAddr;
//! use axum::{extract::ConnectInfo, routing::get, Router};
//! use httpdown::{Http2Settings, Outcome, Shutdown};
//!
//! let shutdown = Shutdown::new();
//! let app = Router::new().route(
//!     "/",
//!     get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
//! );
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//! let serving = httpdown::serve(
//!     listener,
//!     app.into_make_service_with_connect_info::<SocketAddr>(),
//!     &shutdown,
//! )
//! .http2(Http2Settings::new().max_concurrent_streams(128));
//! let flusher = shutdown.spawn(|drain| async move { drain.started().await })?;
//! shutdown.trigger(); // a signal would do the same
//! let report = serving.await?;
//! assert_eq!(report.outcome(), Outcome::Drained);
//! assert_eq!(flusher.await.unwrap(), Some(()));
//! # Ok(())
//! # }
//! ```
//!
//! # Logs
//!
//! Each step is a `tracing` event (targets `httpdown::shutdown`, `httpdown::driver`,
//! `httpdown::signal`); with `tracing_subscriber`'s `EnvFilter` set `RUST_LOG=info` (or
//! `httpdown=info`) to see them.
//!
//! # Feature flags
//!
//! - `axum`: the [`Drain`] extractor, `Service<IncomingConnection>` for `Router`,
//!   `ConnectInfo` for [`serve`], `axum::GracefulWebSocket`, `axum::AxumListener`.
//! - `metrics`: the statistics through the `metrics` facade ([`metric_names`]).
//! - `tls`: HTTPS with rustls, `tls::TlsListener`.
//! - `proxy-protocol`: the PROXY protocol (v1 and v2) behind a load balancer,
//!   `proxy_protocol::ProxyProtocolListener`: the client's address, not the proxy's.

// The README's examples compile as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

mod background;
mod drain;
mod driver;
mod error;
mod health;
mod layer;
mod lifecycle;
mod report;
mod request;
mod serve;
mod shutdown;
mod signal;
mod stats;
mod task;
#[cfg(unix)]
mod unix;
mod until_drain;

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub mod axum;
#[cfg(feature = "proxy-protocol")]
#[cfg_attr(docsrs, doc(cfg(feature = "proxy-protocol")))]
pub mod proxy_protocol;
#[cfg(all(unix, feature = "restart"))]
#[cfg_attr(docsrs, doc(cfg(all(unix, feature = "restart"))))]
pub mod restart;
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub mod tls;

pub use drain::Drain;
pub use error::{ConfigError, Error};
pub use health::{Liveness, Readiness};
pub use layer::{Graceful, GracefulLayer, ResponseBody, ResponseFuture};
pub use report::{Outcome, Report};
pub use request::ForceClosed;
pub use serve::{
    listen_and_serve, serve, ConnectionWatcher, DiscardUnread, Discarding, DiscardingService,
    Http1Settings, Http2Settings, IdleClose, IncomingConnection, Listener, MakeDiscarding,
    MakeService, PendingInput, Serve, ServeFuture, UnreadBody, WatchedIo,
    DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_NEW_CONNECTION_GRACE,
    HANDOVER_IDLE_WAIT,
};
pub use shutdown::{
    Builder, Phase, SecondSignal, Shutdown, DEFAULT_PROGRESS_INTERVAL, DEFAULT_TIMEOUT,
};
pub use stats::{names as metric_names, ConnectionStats, Stats};
#[cfg(unix)]
pub use unix::bind_unix;
pub use until_drain::UntilDrain;

/// A boxed error, the error type of [`ResponseBody`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
