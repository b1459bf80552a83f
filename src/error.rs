//! The crate's [`Error`] type.

use std::io;

#[cfg(feature = "tls")]
use crate::BoxError;

/// A failure to serve. Timeouts are not errors: they end in a [`Report`](crate::Report).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The address could not be bound.
    #[error("failed to bind {addr}: {source}")]
    Bind {
        /// The address as given.
        addr: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The listener failed with an error that is not about one connection. `serve`
    /// triggered the shutdown when it happened, and returns this once the shutdown is
    /// done: the connections it had accepted were drained with the usual deadlines.
    #[error("listener failed: {0}")]
    Accept(#[source] io::Error),
    /// `serve` was called with a [`Shutdown`](crate::Shutdown) that has already finished.
    #[error("this shutdown has already finished: build a new Shutdown to serve again")]
    AlreadyShutDown,
    /// Signal handlers could not be installed.
    #[error("failed to listen for shutdown signals: {0}")]
    Signal(#[source] io::Error),
    /// A configuration mistake; the message says what to change.
    #[error("invalid configuration: {0}")]
    Config(ConfigError),
    /// TLS could not be set up: a certificate or key file missing, unreadable or
    /// invalid, or a key that does not suit the certificate.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    #[error("TLS setup failed: {what}: {source}")]
    Tls {
        /// What failed, naming the file where there is one.
        what: String,
        /// The underlying error.
        #[source]
        source: BoxError,
    },
}

/// A configuration mistake, in [`Error::Config`]. Its message says what to change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// [`Serve::header_read_timeout`](crate::Serve::header_read_timeout) was zero.
    #[error("header_read_timeout must be greater than zero; pass None to disable it")]
    ZeroHeaderReadTimeout,
    /// [`Serve::idle_timeout`](crate::Serve::idle_timeout) was zero.
    #[error("idle_timeout must be greater than zero; pass None to keep idle connections open, or turn keep-alive off with Http1Settings::keep_alive(false)")]
    ZeroIdleTimeout,
    /// [`Serve::max_connections`](crate::Serve::max_connections) was zero.
    #[error("max_connections must be greater than zero; pass None for no limit")]
    ZeroMaxConnections,
    /// [`Serve::max_connection_age`](crate::Serve::max_connection_age) was zero.
    #[error("max_connection_age must be greater than zero; pass None for no limit")]
    ZeroMaxConnectionAge,
    /// An HTTP/1 or HTTP/2 setting out of the range hyper accepts.
    #[error("{setting} must be {allowed}")]
    OutOfRange {
        /// The setting, as `http2 max_frame_size`.
        setting: &'static str,
        /// What it may be, as `in 16384..=16777215`.
        allowed: &'static str,
    },
    /// [`Shutdown::trigger_on_signals`](crate::Shutdown::trigger_on_signals) was called
    /// outside a tokio runtime.
    #[error("trigger_on_signals must be called inside a tokio runtime")]
    NoRuntime,
}
