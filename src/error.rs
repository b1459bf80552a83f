//! The crate's [`Error`] type.

use std::io;

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
    /// The listener failed with an error that is not about one connection. Connections
    /// already accepted keep being served, and the shutdown still drains them.
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
    Config(&'static str),
    /// TLS could not be set up (a certificate or key file missing, unreadable or
    /// invalid); the message says which file and why.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    #[error("TLS setup failed: {0}")]
    Tls(String),
}
