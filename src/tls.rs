//! TLS with rustls (feature `tls`): [`TlsListener`] wraps any [`Listener`] so that
//! [`serve`](crate::serve()) serves HTTPS (HTTP/1.1 and HTTP/2 by ALPN) with the same
//! drain as plain TCP.
//!
//! The handshake runs in the connection's own task, never in the accept loop, and is
//! bounded by a handshake timeout. At drain start an idle TLS connection closes with a
//! `close_notify` alert; a connection still in its handshake is closed (or, if a request
//! is already arriving, given the same short grace as a plain connection), so a
//! handshake never holds the shutdown past the stop deadline.
//!
//! ```no_run
//! # async fn run(app: axum::Router) -> Result<(), httpdown::Error> {
//! use httpdown::tls::TlsListener;
//!
//! let config = httpdown::tls::config_from_pem_files("cert.pem", "key.pem")?;
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:8443").await.unwrap();
//! let shutdown = httpdown::Shutdown::new();
//! shutdown.trigger_on_signals()?;
//! let report = httpdown::serve(TlsListener::new(listener, config), app, &shutdown).await?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;
use tokio_rustls::{Accept, TlsAcceptor};

pub use tokio_rustls::rustls;

use crate::{Error, Listener};

/// The handshake timeout [`TlsListener`] uses unless told otherwise.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A [`Listener`] that speaks TLS on the connections of another listener.
///
/// The `ServerConfig` is used as given: set its `alpn_protocols` to
/// `[b"h2", b"http/1.1"]` for HTTP/2 (the helpers [`config`] and
/// [`config_from_pem_files`] do).
pub struct TlsListener<L> {
    inner: L,
    acceptor: TlsAcceptor,
    handshake_timeout: Option<Duration>,
}

impl<L> TlsListener<L> {
    /// Wraps `inner`, accepting TLS with `config`.
    pub fn new(inner: L, config: Arc<ServerConfig>) -> Self {
        TlsListener {
            inner,
            acceptor: TlsAcceptor::from(config),
            handshake_timeout: Some(DEFAULT_HANDSHAKE_TIMEOUT),
        }
    }

    /// How long a client may take to complete the handshake (default 10 s; `None`:
    /// no limit, the header-read timeout and the stop deadline still apply).
    #[must_use]
    pub fn handshake_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.handshake_timeout = timeout.into().filter(|d| !d.is_zero());
        self
    }

    /// A connection whose handshake runs on its first use.
    fn handshaking(&self, io: L::Io) -> TlsIo<L::Io>
    where
        L: Listener,
    {
        TlsIo {
            state: State::Handshaking {
                accept: Box::new(self.acceptor.accept(io)),
                timeout: self
                    .handshake_timeout
                    .map(|d| Box::pin(tokio::time::sleep(d))),
            },
        }
    }

    /// The wrapped listener.
    pub fn get_ref(&self) -> &L {
        &self.inner
    }
}

impl<L: fmt::Debug> fmt::Debug for TlsListener<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsListener")
            .field("inner", &self.inner)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

impl<L: Listener> Listener for TlsListener<L> {
    type Io = TlsIo<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> io::Result<(Self::Io, Self::Addr)> {
        let (io, addr) = self.inner.accept().await?;
        Ok((self.handshaking(io), addr))
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }

    fn has_pending_input(io: &Self::Io) -> bool {
        io.get_ref().is_some_and(L::has_pending_input)
    }

    fn stop_handshakes(&mut self) -> io::Result<bool> {
        self.inner.stop_handshakes()
    }

    async fn next_pending(&mut self) -> Option<io::Result<(Self::Io, Self::Addr)>> {
        let next = self.inner.next_pending().await?;
        Some(next.map(|(io, addr)| (self.handshaking(io), addr)))
    }
}

/// A server-side TLS connection from a [`TlsListener`]: it completes its handshake on
/// first use, then reads and writes through rustls.
pub struct TlsIo<I> {
    state: State<I>,
}

enum State<I> {
    Handshaking {
        accept: Box<Accept<I>>,
        timeout: Option<Pin<Box<Sleep>>>,
    },
    Streaming(Box<TlsStream<I>>),
    Failed,
}

impl<I> TlsIo<I> {
    /// The underlying connection, unless the handshake failed.
    pub fn get_ref(&self) -> Option<&I> {
        match &self.state {
            State::Handshaking { accept, .. } => accept.get_ref(),
            State::Streaming(stream) => Some(stream.get_ref().0),
            State::Failed => None,
        }
    }

    /// The negotiated ALPN protocol, once the handshake is done.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        match &self.state {
            State::Streaming(stream) => stream.get_ref().1.alpn_protocol(),
            _ => None,
        }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> TlsIo<I> {
    /// Drives the handshake; `Ready(Ok)` once the stream is usable.
    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<&mut TlsStream<I>>> {
        if let State::Handshaking { accept, timeout } = &mut self.state {
            let result = match Pin::new(accept.as_mut()).poll(cx) {
                Poll::Ready(result) => result,
                Poll::Pending => {
                    let timed_out = timeout
                        .as_mut()
                        .is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready());
                    if !timed_out {
                        return Poll::Pending;
                    }
                    Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "TLS handshake timed out",
                    ))
                }
            };
            match result {
                Ok(stream) => self.state = State::Streaming(Box::new(stream)),
                Err(e) => {
                    tracing::debug!(error = %e, "TLS handshake failed");
                    self.state = State::Failed;
                    return Poll::Ready(Err(e));
                }
            }
        }
        match &mut self.state {
            State::Streaming(stream) => Poll::Ready(Ok(stream)),
            _ => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "TLS handshake failed",
            ))),
        }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let stream = ready!(self.get_mut().poll_handshake(cx))?;
        Pin::new(stream).poll_read(cx, buf)
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let stream = ready!(self.get_mut().poll_handshake(cx))?;
        Pin::new(stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let stream = ready!(self.get_mut().poll_handshake(cx))?;
        Pin::new(stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let State::Streaming(stream) = &mut this.state {
            return Pin::new(stream.as_mut()).poll_flush(cx);
        }
        Poll::Ready(Ok(()))
    }

    /// Sends `close_notify`, then shuts down the write side of the connection.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let State::Streaming(stream) = &mut this.state {
            return Pin::new(stream.as_mut()).poll_shutdown(cx);
        }
        Poll::Ready(Ok(()))
    }
}

/// Bytes waiting on the connection under TLS (a request on its way, or a handshake).
impl<I: crate::PendingInput> crate::PendingInput for TlsIo<I> {
    fn has_pending_input(&self) -> bool {
        self.get_ref()
            .is_some_and(crate::PendingInput::has_pending_input)
    }
}

impl<I> fmt::Debug for TlsIo<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Handshaking { .. } => "handshaking",
            State::Streaming(_) => "streaming",
            State::Failed => "failed",
        };
        f.debug_struct("TlsIo").field("state", &state).finish()
    }
}

/// A `ServerConfig` for `cert_chain` and `key`, with ALPN for `h2` and `http/1.1`, on
/// the process's default crypto provider if one is installed, rustls's default
/// (aws-lc-rs) otherwise.
///
/// # Errors
/// [`Error::Tls`] if the key does not suit the certificate.
pub fn config(
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, Error> {
    let provider = CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error("no usable protocol version", e))?
        .with_no_client_auth()
        .with_single_cert(cert_chain, key)
        .map_err(|e| tls_error("the certificate and key cannot be used together", e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// [`config`] from a PEM certificate chain file and a PEM private key file (PKCS#8,
/// PKCS#1 or SEC1).
///
/// # Errors
/// [`Error::Tls`] naming the file: missing or unreadable, no certificate or key in it,
/// or a key that does not suit the certificate.
pub fn config_from_pem_files(
    cert_file: impl AsRef<Path>,
    key_file: impl AsRef<Path>,
) -> Result<Arc<ServerConfig>, Error> {
    let cert_file = cert_file.as_ref();
    let key_file = key_file.as_ref();
    let certs = CertificateDer::pem_file_iter(cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            let what = format!("cannot read certificates from {}", cert_file.display());
            tls_error(what, e)
        })?;
    if certs.is_empty() {
        let what = format!("no PEM certificate in {}", cert_file.display());
        return Err(tls_error(what, io::Error::from(io::ErrorKind::InvalidData)));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| {
        let what = format!("cannot read a private key from {}", key_file.display());
        tls_error(what, e)
    })?;
    config(certs, key)
}

fn tls_error(
    what: impl Into<String>,
    source: impl std::error::Error + Send + Sync + 'static,
) -> Error {
    Error::Tls {
        what: what.into(),
        source: Box::new(source),
    }
}
