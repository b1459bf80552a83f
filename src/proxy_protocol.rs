//! The PROXY protocol (feature `proxy-protocol`): [`ProxyProtocolListener`] reads the
//! header a load balancer sends first on each connection (HAProxy's `send-proxy` and
//! `send-proxy-v2`, AWS NLB, Google Cloud's TCP proxy, ...), so that the peer address
//! [`serve`](crate::serve()) hands the app (axum's `ConnectInfo<SocketAddr>`) is the
//! client's, not the proxy's.
//!
//! Versions 1 (text) and 2 (binary) are both read, parsed by the [`ppp`] crate.
//!
//! ```no_run
//! # async fn run(app: axum::Router) -> Result<(), httpdown::Error> {
//! use std::net::SocketAddr;
//! use httpdown::proxy_protocol::ProxyProtocolListener;
//!
//! let tcp = tokio::net::TcpListener::bind("0.0.0.0:8080").await.unwrap();
//! let shutdown = httpdown::Shutdown::new();
//! shutdown.trigger_on_signals()?;
//! let report = httpdown::serve(
//!     ProxyProtocolListener::new(tcp),
//!     app.into_make_service_with_connect_info::<SocketAddr>(),
//!     &shutdown,
//! )
//! .await?;
//! # Ok(()) }
//! ```
//!
//! With TLS the header comes first, before the handshake: the PROXY protocol listener
//! goes inside, `TlsListener::new(ProxyProtocolListener::new(tcp), config)`.
//!
//! # The header is required by default
//!
//! The header is believed as it comes: any client that can reach the port can send a
//! header of its own and choose the address it is seen from, with or without this
//! default. So let only the proxy reach the port (a firewall, a private network, a
//! listener on an address only the proxy routes to), or name the proxies with
//! [`trusted_proxies`](ProxyProtocolListener::trusted_proxies), which reads a header
//! from them alone. What the default adds: a client
//! that reaches the port anyway without speaking the protocol, or a proxy configured
//! without `send-proxy`, is refused rather than served with the wrong address.
//! [`ProxyProtocolListener::optional`] also serves connections without a header (their
//! address is the socket's peer), for a migration, or for health checks sent straight
//! to the server.
//!
//! # What each header gives
//!
//! | Header | Address given to the app |
//! | --- | --- |
//! | v1 `TCP4` / `TCP6`, v2 `PROXY` over TCP (IPv4 or IPv6) | the header's source |
//! | v1 `UNKNOWN`, v2 `LOCAL` (the proxy's own health checks) | the socket's peer |
//! | v2 `PROXY` for UDP, a Unix socket or an unspecified family | the socket's peer |
//! | none, with [`optional`](ProxyProtocolListener::optional) | the socket's peer |
//!
//! [`ProxiedIo`] also keeps the socket's own peer (the proxy), the header's destination
//! and the v2 TLVs. A CRC32C TLV is kept, not checked.
//!
//! # The accept loop never waits for a header
//!
//! Headers are read concurrently, inside the listener: [`accept`](Listener::accept)
//! yields each connection once its header has been read, in the order they complete, and
//! a slow header holds up no other connection. A header must arrive within the
//! [header timeout](ProxyProtocolListener::header_timeout) (5 s by default) and be
//! well formed (a v1 line of at most 107 bytes, a v2 header of 16 bytes plus its
//! length); otherwise the connection is closed, logged at `debug` level, and skipped:
//! it is never an accept error, which could end `serve`. At most
//! [`max_pending_headers`](ProxyProtocolListener::max_pending_headers) headers are read
//! at once; beyond that the listener stops accepting until one completes, so
//! connections that never send a header cannot pile up.
//!
//! # At drain start, and in a handover
//!
//! Once `serve` stops accepting (at drain start, after taking what the kernel had
//! queued; in a handover, at once, the socket going on to the next generation), it asks
//! for the connections whose header was still being read
//! ([`Listener::next_pending`]) and serves those whose header completes within its
//! [`new_connection_grace`](crate::Serve::new_connection_grace) (250 ms by default);
//! the others are closed unserved. A proxy that sends the header with its connect, as
//! HAProxy does, gets it read within a round trip.
//!
//! Bytes that came in the same read as the header (the request that followed it) are
//! kept by [`ProxiedIo`] and read first, so nothing is lost.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use ppp::v2;
use ppp::HeaderResult;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use crate::serve::NO_TIMEOUT_AFTER;
use crate::{Listener, PendingInput};

/// The header timeout [`ProxyProtocolListener`] uses unless told otherwise.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// How many headers [`ProxyProtocolListener`] reads at once unless told otherwise.
pub const DEFAULT_MAX_PENDING_HEADERS: usize = 1024;

/// The longest header: a v2 header's 16 bytes and the largest length it can give.
const MAX_HEADER_LEN: usize = 16 + u16::MAX as usize;

/// The first read's buffer: a v1 line, and a v2 header with a few TLVs, fit in it, along
/// with the start of the request that may follow in the same packet.
const FIRST_READ: usize = 512;

/// How a v1 header begins: `PROXY` and a space.
const V1_SIGNATURE: &[u8] = b"PROXY ";

/// The longest v1 line, its CRLF included.
const V1_MAX_LEN: usize = 107;

/// Which peers may send a header: see [`ProxyProtocolListener::trusted_proxies`].
type TrustedProxies = dyn Fn(SocketAddr) -> bool + Send + Sync;

/// A header being read: the connection once it has been, `None` if it was closed.
type PendingHeader<I> = Pin<Box<dyn Future<Output = Option<ProxiedIo<I>>> + Send>>;

/// A [`Listener`] that reads a PROXY protocol header (v1 or v2) at the start of each
/// connection of another listener, and gives the client's address from it as the
/// connection's peer address.
///
/// See the [module docs](self) for what each header gives, the default that requires a
/// header, and what happens at drain start.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// use std::time::Duration;
/// use httpdown::proxy_protocol::ProxyProtocolListener;
/// use httpdown::Listener;
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
///
/// let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let addr = tcp.local_addr()?;
/// let mut listener = ProxyProtocolListener::new(tcp).header_timeout(Duration::from_secs(1));
///
/// // What HAProxy's `send-proxy` sends first, then the client's request.
/// let mut proxy = tokio::net::TcpStream::connect(addr).await?;
/// proxy
///     .write_all(b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET / HTTP/1.1\r\n")
///     .await?;
///
/// let (mut io, peer) = listener.accept().await?;
/// assert_eq!(peer.to_string(), "192.0.2.1:56324");
/// assert_eq!(io.peer_addr(), proxy.local_addr()?);
/// let mut request = [0; 16];
/// io.read_exact(&mut request).await?;
/// assert_eq!(&request, b"GET / HTTP/1.1\r\n");
/// # Ok(()) }
/// ```
#[must_use = "a listener does nothing until served"]
pub struct ProxyProtocolListener<L: Listener> {
    inner: L,
    header_timeout: Option<Duration>,
    optional: bool,
    max_pending: usize,
    /// Which peers may send a header (`None`: any).
    trusted: Option<Arc<TrustedProxies>>,
    /// Connections accepted from `inner` whose header is being read. Kept here, not in
    /// the `accept` future, so that dropping that future (as `serve` does at drain start)
    /// loses none of them.
    pending: FuturesUnordered<PendingHeader<L::Io>>,
}

impl<L: Listener> ProxyProtocolListener<L> {
    /// Wraps `inner`: every connection must start with a PROXY protocol header, read
    /// within [`DEFAULT_HEADER_TIMEOUT`].
    pub fn new(inner: L) -> Self {
        ProxyProtocolListener {
            inner,
            header_timeout: Some(DEFAULT_HEADER_TIMEOUT),
            optional: false,
            max_pending: DEFAULT_MAX_PENDING_HEADERS,
            trusted: None,
            pending: FuturesUnordered::new(),
        }
    }

    /// How long a connection has, from its accept, to send its complete header before it
    /// is closed (default [`DEFAULT_HEADER_TIMEOUT`], 5 s). `None`, zero, or a century
    /// or more: no limit (a header that never comes then holds its place among the
    /// [pending headers](Self::max_pending_headers) until the client goes away or the
    /// drain starts).
    ///
    /// With [`optional`](Self::optional), a connection without a header has as long to
    /// send its first bytes.
    pub fn header_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.header_timeout = timeout
            .into()
            .filter(|d| !d.is_zero() && *d < NO_TIMEOUT_AFTER);
        self
    }

    /// Whether connections without a header are served too (default `false`: they are
    /// closed), with the socket's peer address. A connection whose first bytes begin a
    /// header is still closed if the header turns out malformed.
    ///
    /// As with the default, only the proxy should be able to reach the port (see the
    /// [module docs](self)); with this, a proxy that stopped sending headers would go
    /// unnoticed, every client then seen from the proxy's address.
    pub fn optional(mut self, optional: bool) -> Self {
        self.optional = optional;
        self
    }

    /// Takes a header only from the peers `trusted` accepts (the proxies' addresses):
    /// a connection from any other peer is not read for a header. Without
    /// [`optional`](Self::optional) it is closed at once; with it, it is served as it
    /// comes, with the socket's peer address (a header it sends is then not a header but
    /// its request's first bytes, answered 400). Default: every peer may send one, so
    /// only the proxy should be able to reach the port.
    ///
    /// ```
    /// # fn f(tcp: tokio::net::TcpListener) {
    /// use httpdown::proxy_protocol::ProxyProtocolListener;
    ///
    /// // HAProxy on 10.0.0.5 and 10.0.0.6.
    /// let proxies = ["10.0.0.5".parse().unwrap(), "10.0.0.6".parse().unwrap()];
    /// let listener = ProxyProtocolListener::new(tcp)
    ///     .trusted_proxies(move |peer| proxies.contains(&peer.ip()));
    /// # }
    /// ```
    pub fn trusted_proxies(
        mut self,
        trusted: impl Fn(SocketAddr) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.trusted = Some(Arc::new(trusted));
        self
    }

    /// At most this many headers are read at once (default
    /// [`DEFAULT_MAX_PENDING_HEADERS`], 1024; zero is taken as one). At the limit the
    /// listener accepts no more connections until a header completes or times out: the
    /// next ones wait in the kernel's accept queue, as at
    /// [`Serve::max_connections`](crate::Serve::max_connections), which does not count
    /// connections whose header is still being read.
    pub fn max_pending_headers(mut self, max: usize) -> Self {
        self.max_pending = max.max(1);
        self
    }

    /// The wrapped listener.
    pub fn get_ref(&self) -> &L {
        &self.inner
    }

    /// How many accepted connections are waiting for their header.
    pub fn pending_headers(&self) -> usize {
        self.pending.len()
    }

    /// Reads the header of a connection just accepted, within the timeout.
    fn read_header(&self, io: L::Io, peer: SocketAddr) -> PendingHeader<L::Io> {
        let optional = self.optional;
        let timeout = self.header_timeout;
        Box::pin(async move {
            let read = read_header(io, peer, optional);
            let read = match timeout {
                Some(limit) => tokio::time::timeout(limit, read)
                    .await
                    .unwrap_or(Err(HeaderError::TimedOut(limit))),
                None => read.await,
            };
            read.map_err(|error| {
                tracing::debug!(%peer, %error, "PROXY protocol: connection closed");
            })
            .ok()
        })
    }
}

impl<L: Listener + fmt::Debug> fmt::Debug for ProxyProtocolListener<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyProtocolListener")
            .field("inner", &self.inner)
            .field("header_timeout", &self.header_timeout)
            .field("optional", &self.optional)
            .field("max_pending_headers", &self.max_pending)
            .field("trusted_proxies", &self.trusted.is_some())
            .field("pending_headers", &self.pending.len())
            .finish()
    }
}

/// # Cancel safety
/// `accept` is cancel safe if the inner listener's is: connections whose header is
/// being read are kept in the listener, not in the future.
impl<L: Listener<Addr = SocketAddr>> Listener for ProxyProtocolListener<L> {
    type Io = ProxiedIo<L::Io>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> io::Result<(Self::Io, Self::Addr)> {
        loop {
            // `max_pending` is at least one, so one of the branches is always enabled.
            let room = self.pending.len() < self.max_pending;
            tokio::select! {
                biased;
                Some(read) = self.pending.next() => {
                    if let Some(io) = read {
                        let addr = io.remote_addr();
                        return Ok((io, addr));
                    }
                }
                accepted = self.inner.accept(), if room => {
                    let (io, peer) = accepted?;
                    if self.trusted.as_ref().is_some_and(|trusted| !trusted(peer)) {
                        if self.optional {
                            return Ok((ProxiedIo::without_header(io, peer), peer));
                        }
                        tracing::debug!(%peer, "PROXY protocol: connection closed: not from a trusted proxy");
                        continue;
                    }
                    let read = self.read_header(io, peer);
                    self.pending.push(read);
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }

    fn has_pending_input(io: &Self::Io) -> bool {
        io.has_buffered() || L::has_pending_input(&io.io)
    }

    fn stop_handshakes(&mut self) -> io::Result<bool> {
        self.inner.stop_handshakes()
    }

    /// The connections whose header is still being read, as their headers complete.
    async fn next_pending(&mut self) -> Option<io::Result<(Self::Io, Self::Addr)>> {
        while let Some(read) = self.pending.next().await {
            if let Some(io) = read {
                let addr = io.remote_addr();
                return Some(Ok((io, addr)));
            }
        }
        None
    }
}

/// A connection from a [`ProxyProtocolListener`], its header read: it returns the bytes
/// read past the header first, then reads and writes the connection.
pub struct ProxiedIo<I> {
    io: I,
    /// What was read past the header, and how much of it has been returned.
    buffered: Vec<u8>,
    returned: usize,
    peer_addr: SocketAddr,
    header: Header,
}

/// What a connection's header said.
#[derive(Debug, Default)]
struct Header {
    /// 1 or 2; 0 without a header.
    version: u8,
    /// The client and the address it connected to, for a proxied TCP connection.
    addresses: Option<(SocketAddr, SocketAddr)>,
    /// The v2 header's TLVs, as sent (checked well formed).
    tlvs: Box<[u8]>,
}

impl<I> ProxiedIo<I> {
    /// A connection served as it comes, with no header.
    fn without_header(io: I, peer_addr: SocketAddr) -> Self {
        ProxiedIo {
            io,
            buffered: Vec::new(),
            returned: 0,
            peer_addr,
            header: Header::default(),
        }
    }

    /// The underlying connection.
    pub fn get_ref(&self) -> &I {
        &self.io
    }

    /// The client's address, as `serve` gives it: the header's source for a proxied TCP
    /// connection, otherwise (v1 `UNKNOWN`, v2 `LOCAL`, UDP or Unix addresses, no
    /// header) the socket's peer.
    pub fn remote_addr(&self) -> SocketAddr {
        self.header
            .addresses
            .map_or(self.peer_addr, |(source, _)| source)
    }

    /// The socket's own peer address: the proxy's (or, without a header, the client's).
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// The address the client connected to, as the header gives it (the proxy's
    /// frontend), for a proxied TCP connection.
    pub fn destination_addr(&self) -> Option<SocketAddr> {
        self.header.addresses.map(|(_, destination)| destination)
    }

    /// The header's version: 1 or 2, `None` for a connection without a header (with
    /// [`ProxyProtocolListener::optional`]).
    pub fn version(&self) -> Option<u8> {
        (self.header.version != 0).then_some(self.header.version)
    }

    /// The v2 header's TLVs (type, value), in order: ALPN (`0x01`), authority (`0x02`,
    /// the TLS SNI), unique ID (`0x05`), SSL (`0x20`), vendor ones (`0xE0` to `0xEF`,
    /// such as the AWS VPC endpoint ID), ... None for a v1 header.
    pub fn tlvs(&self) -> impl Iterator<Item = (u8, &[u8])> + '_ {
        v2::TypeLengthValues::from(&self.header.tlvs[..]).filter_map(|tlv| match tlv {
            Ok(v2::TypeLengthValue {
                kind,
                value: std::borrow::Cow::Borrowed(value),
            }) => Some((kind, value)),
            _ => None,
        })
    }

    /// Whether bytes read past the header are still to be returned.
    fn has_buffered(&self) -> bool {
        self.returned < self.buffered.len()
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for ProxiedIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.has_buffered() {
            let rest = &this.buffered[this.returned..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.returned += n;
            if !this.has_buffered() {
                this.buffered = Vec::new();
                this.returned = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for ProxiedIo<I> {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    #[inline]
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Bytes read past the header and not yet returned, or waiting on the connection.
impl<I: PendingInput> PendingInput for ProxiedIo<I> {
    fn has_pending_input(&self) -> bool {
        self.has_buffered() || self.io.has_pending_input()
    }
}

impl<I> fmt::Debug for ProxiedIo<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxiedIo")
            .field("remote_addr", &self.remote_addr())
            .field("peer_addr", &self.peer_addr)
            .field("destination_addr", &self.destination_addr())
            .field("version", &self.version())
            .field("buffered", &(self.buffered.len() - self.returned))
            .finish_non_exhaustive()
    }
}

/// Why a connection was closed before its header was read.
#[derive(Debug, thiserror::Error)]
enum HeaderError {
    #[error("no PROXY protocol header")]
    Missing,
    #[error("malformed PROXY protocol v1 header: {0}")]
    V1(#[source] ppp::v1::BinaryParseError),
    #[error("malformed PROXY protocol v2 header: {0}")]
    V2(#[source] v2::ParseError),
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
    #[error("no complete PROXY protocol header within {0:?}")]
    TimedOut(Duration),
    #[error("connection closed before its PROXY protocol header was complete")]
    Closed,
    #[error("reading the PROXY protocol header failed: {0}")]
    Io(#[from] io::Error),
}

/// What a connection's first bytes are.
#[derive(Debug)]
enum Parsed {
    /// A complete header of `len` bytes.
    Header { len: usize, header: Header },
    /// Not a header: the bytes are the connection's own (only when the header is
    /// optional).
    NoHeader,
    /// The start of a header: more bytes are needed, at least this many in all.
    Incomplete(usize),
}

/// Reads `io`'s header, keeping the bytes read past it.
async fn read_header<I: AsyncRead + Unpin>(
    mut io: I,
    peer_addr: SocketAddr,
    optional: bool,
) -> Result<ProxiedIo<I>, HeaderError> {
    let mut buf = Vec::with_capacity(FIRST_READ);
    let (len, header) = loop {
        // `read_buf` grows a full `Vec`, so 0 is the end of the input.
        if io.read_buf(&mut buf).await? == 0 {
            return Err(HeaderError::Closed);
        }
        match parse(&buf, optional)? {
            Parsed::Header { len, header } => break (len, header),
            Parsed::NoHeader => break (0, Header::default()),
            Parsed::Incomplete(_) if buf.len() >= MAX_HEADER_LEN => {
                return Err(HeaderError::Malformed("too long"));
            }
            // In steps: a v2 prefix may announce 64 KiB that never come.
            Parsed::Incomplete(needed) => {
                buf.reserve(needed.saturating_sub(buf.len()).min(FIRST_READ));
            }
        }
    };
    let (buffered, returned) = if len < buf.len() {
        (buf, len)
    } else {
        (Vec::new(), 0)
    };
    Ok(ProxiedIo {
        io,
        buffered,
        returned,
        peer_addr,
        header,
    })
}

/// Whether `buf` is, or may become, the start of a header of either version.
fn may_be_header(buf: &[u8]) -> bool {
    [V1_SIGNATURE, v2::PROTOCOL_PREFIX].iter().any(|signature| {
        let n = signature.len().min(buf.len());
        buf[..n] == signature[..n]
    })
}

/// Parses the first bytes of a connection (`buf`, not empty) with `ppp`.
fn parse(buf: &[u8], optional: bool) -> Result<Parsed, HeaderError> {
    if !may_be_header(buf) {
        return if optional {
            Ok(Parsed::NoHeader)
        } else {
            Err(HeaderError::Missing)
        };
    }
    // ppp takes some prefixes of a valid v1 line for malformed ones ("... 56324 " before
    // the last port): a v1 line goes to it only once complete (its CR and the byte
    // after), or once too long to be one.
    let v1_line_ends = buf
        .iter()
        .position(|&b| b == b'\r')
        .is_some_and(|cr| cr + 1 < buf.len());
    if !buf.starts_with(&v2::PROTOCOL_PREFIX[..1]) && !v1_line_ends && buf.len() < V1_MAX_LEN {
        return Ok(Parsed::Incomplete(buf.len() + 1));
    }
    match HeaderResult::parse(buf) {
        HeaderResult::V1(Ok(header)) => {
            let addresses = match header.addresses {
                ppp::v1::Addresses::Tcp4(a) => Some((
                    SocketAddr::from((a.source_address, a.source_port)),
                    SocketAddr::from((a.destination_address, a.destination_port)),
                )),
                ppp::v1::Addresses::Tcp6(a) => Some((
                    SocketAddr::from((a.source_address, a.source_port)),
                    SocketAddr::from((a.destination_address, a.destination_port)),
                )),
                ppp::v1::Addresses::Unknown => None,
            };
            Ok(Parsed::Header {
                len: header.header.len(),
                header: Header {
                    version: 1,
                    addresses,
                    tlvs: Box::default(),
                },
            })
        }
        // The line is complete (or too long): more input cannot help.
        HeaderResult::V1(Err(error)) => Err(HeaderError::V1(error)),
        HeaderResult::V2(Ok(header)) => {
            if let Some(Err(error)) = header.tlvs().find(Result::is_err) {
                return Err(HeaderError::V2(error));
            }
            let addresses = match (header.command, header.protocol, header.addresses) {
                (v2::Command::Proxy, v2::Protocol::Stream, v2::Addresses::IPv4(a)) => Some((
                    SocketAddr::from((a.source_address, a.source_port)),
                    SocketAddr::from((a.destination_address, a.destination_port)),
                )),
                (v2::Command::Proxy, v2::Protocol::Stream, v2::Addresses::IPv6(a)) => Some((
                    SocketAddr::from((a.source_address, a.source_port)),
                    SocketAddr::from((a.destination_address, a.destination_port)),
                )),
                // LOCAL (the proxy's own connection), and what is not TCP over IP: UDP,
                // Unix sockets, an unspecified family. The socket's peer is used.
                _ => None,
            };
            Ok(Parsed::Header {
                len: header.len(),
                header: Header {
                    version: 2,
                    addresses,
                    tlvs: header.tlv_bytes().into(),
                },
            })
        }
        HeaderResult::V2(Err(v2::ParseError::Incomplete(_))) => {
            Ok(Parsed::Incomplete(v2::PROTOCOL_PREFIX.len() + 4))
        }
        HeaderResult::V2(Err(v2::ParseError::Partial(_, length))) => {
            Ok(Parsed::Incomplete(v2::PROTOCOL_PREFIX.len() + 4 + length))
        }
        HeaderResult::V2(Err(error)) => Err(HeaderError::V2(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const PEER: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 9);

    fn v2_header(
        command: u8,
        addresses: impl Into<v2::Addresses>,
        tlvs: &[(u8, &[u8])],
    ) -> Vec<u8> {
        let mut builder =
            v2::Builder::with_addresses(0x20 | command, v2::Protocol::Stream, addresses);
        for (kind, value) in tlvs {
            builder = builder.write_tlv(*kind, value).unwrap();
        }
        builder.build().unwrap()
    }

    fn tcp4() -> (SocketAddr, SocketAddr) {
        (
            SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1), 56324)),
            SocketAddr::from((Ipv4Addr::new(198, 51, 100, 2), 443)),
        )
    }

    /// Parses `bytes` fed one more byte at a time, as a slow client would send them.
    fn parse_growing(bytes: &[u8], optional: bool) -> Result<Parsed, HeaderError> {
        for end in 1..bytes.len() {
            match parse(&bytes[..end], optional)? {
                Parsed::Incomplete(needed) => assert!(needed > end, "{end}: {needed}"),
                done => panic!("complete at {end} of {}: {done:?}", bytes.len()),
            }
        }
        parse(bytes, optional)
    }

    #[test]
    fn v1_headers_are_read_across_any_split() {
        let line = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n";
        let Parsed::Header { len, header } = parse_growing(line, false).unwrap() else {
            panic!()
        };
        assert_eq!((len, header.version), (line.len(), 1));
        assert_eq!(header.addresses, Some(tcp4()));

        let line = b"PROXY TCP6 2001:db8::1 2001:db8::2 1000 443\r\n";
        let Parsed::Header { header, .. } = parse_growing(line, false).unwrap() else {
            panic!()
        };
        let source = SocketAddr::from(("2001:db8::1".parse::<Ipv6Addr>().unwrap(), 1000));
        assert_eq!(header.addresses.map(|a| a.0), Some(source));

        let Parsed::Header { len, header } = parse(b"PROXY UNKNOWN\r\nGET", false).unwrap() else {
            panic!()
        };
        assert_eq!((len, header.version, header.addresses), (15, 1, None));
    }

    #[test]
    fn v2_headers_are_read_across_any_split() {
        let (source, destination) = tcp4();
        let bytes = v2_header(0x1, (source, destination), &[(0x02, b"example.com")]);
        let Parsed::Header { len, header } = parse_growing(&bytes, false).unwrap() else {
            panic!()
        };
        assert_eq!((len, header.version), (bytes.len(), 2));
        assert_eq!(header.addresses, Some((source, destination)));

        let local = v2_header(0x0, v2::Addresses::Unspecified, &[]);
        let Parsed::Header { header, .. } = parse_growing(&local, false).unwrap() else {
            panic!()
        };
        assert_eq!((header.version, header.addresses), (2, None));
    }

    #[test]
    fn v2_udp_and_unix_are_taken_as_local() {
        let (source, destination) = tcp4();
        let udp = v2::Builder::with_addresses(0x21, v2::Protocol::Datagram, (source, destination))
            .build()
            .unwrap();
        let unix = v2::Builder::with_addresses(
            0x21,
            v2::Protocol::Stream,
            v2::Unix::new([b'a'; 108], [b'b'; 108]),
        )
        .build()
        .unwrap();
        for bytes in [udp, unix] {
            let Parsed::Header { len, header } = parse(&bytes, false).unwrap() else {
                panic!()
            };
            assert_eq!((len, header.addresses), (bytes.len(), None));
        }
    }

    #[test]
    fn bad_headers_are_refused_and_missing_ones_only_when_required() {
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\n", false),
            Err(HeaderError::Missing)
        ));
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\n", true),
            Ok(Parsed::NoHeader)
        ));
        assert!(matches!(
            parse(b"PRI * HTTP/2.0", true),
            Ok(Parsed::NoHeader)
        ));
        assert!(matches!(parse(b"\x16\x03\x01", true), Ok(Parsed::NoHeader)));
        // A header that begins is never taken for a connection without one.
        for bad in [
            &b"PROXY TCP4 1.2.3.4\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX",
            b"PROXY TCP9 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 2\r\n",
            b"PROXY TCP4 \xff\r\n",
        ] {
            for optional in [false, true] {
                let result = parse(bad, optional);
                assert!(result.is_err(), "{bad:?}: {result:?}");
            }
        }
        // A v1 line longer than 107 bytes.
        let long = [&b"PROXY UNKNOWN "[..], &[b'x'; 100]].concat();
        assert!(parse(&long, false).is_err());
        // v2: a wrong version, command, family; a TLV longer than the header.
        let mut bytes = v2_header(0x1, tcp4(), &[(0x02, b"x")]);
        let last = bytes.len() - 2;
        bytes[last] = 9;
        assert!(parse(&bytes, false).is_err(), "broken TLV");
        for (at, value) in [(12, 0x31), (12, 0x2f), (13, 0x51)] {
            let mut bytes = v2_header(0x1, tcp4(), &[]);
            bytes[at] = value;
            assert!(parse(&bytes, false).is_err(), "byte {at} = {value:#x}");
        }
    }

    /// Whatever the bytes, `parse` answers without panicking, and never asks for fewer
    /// bytes than it has.
    #[test]
    fn no_input_panics() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let starts: [&[u8]; 3] = [b"", V1_SIGNATURE, v2::PROTOCOL_PREFIX];
        for round in 0..20_000 {
            let mut bytes = starts[round % 3].to_vec();
            let extra = usize::try_from(next() % 64).unwrap();
            for _ in 0..extra {
                let byte = next().to_le_bytes()[0];
                // Mostly header-like characters, so the parser gets far.
                bytes.push(if byte % 2 == 0 {
                    b"0123456789. :\r\nTCP4UNKNOW"[usize::from(byte) % 24]
                } else {
                    byte
                });
            }
            if bytes.is_empty() {
                continue;
            }
            for optional in [false, true] {
                if let Ok(Parsed::Incomplete(needed)) = parse(&bytes, optional) {
                    assert!(needed > bytes.len(), "{bytes:?}");
                }
            }
        }
    }

    /// The bytes after the header come first, then the connection's; the probe sees
    /// them.
    #[tokio::test]
    async fn bytes_past_the_header_are_read_first() {
        let (mut client, server) = tokio::io::duplex(1024);
        client
            .write_all(b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET / HTTP/1.1\r\n")
            .await
            .unwrap();
        let mut io = read_header(server, PEER, false).await.unwrap();
        assert_eq!(io.remote_addr(), tcp4().0);
        assert_eq!(io.destination_addr(), Some(tcp4().1));
        assert_eq!(io.peer_addr(), PEER);
        assert_eq!(io.version(), Some(1));
        assert!(io.has_pending_input());
        assert!(io.tlvs().next().is_none());
        let mut start = [0u8; 4];
        io.read_exact(&mut start).await.unwrap();
        assert_eq!(&start, b"GET ");
        client.write_all(b"Host: x\r\n").await.unwrap();
        let mut rest = [0u8; 21];
        io.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"/ HTTP/1.1\r\nHost: x\r\n");
        assert!(!io.has_buffered(), "the buffer is used up");
        io.write_all(b"ok").await.unwrap();
        let mut answer = [0u8; 2];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"ok");
    }

    #[tokio::test]
    async fn tlvs_and_a_connection_without_a_header() {
        let (mut client, server) = tokio::io::duplex(1024);
        let bytes = v2_header(0x1, tcp4(), &[(0x02, b"example.com"), (0xea, b"vpce-1")]);
        client.write_all(&bytes).await.unwrap();
        let io = read_header(server, PEER, false).await.unwrap();
        let tlvs: Vec<_> = io.tlvs().collect();
        assert_eq!(tlvs, [(0x02, &b"example.com"[..]), (0xea, b"vpce-1")]);
        assert!(!io.has_buffered());

        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(b"GET /").await.unwrap();
        let mut io = read_header(server, PEER, true).await.unwrap();
        assert_eq!(
            (io.remote_addr(), io.version(), io.destination_addr()),
            (PEER, None, None)
        );
        let mut start = [0u8; 5];
        io.read_exact(&mut start).await.unwrap();
        assert_eq!(&start, b"GET /");

        let (client, server) = tokio::io::duplex(1024);
        drop(client);
        assert!(matches!(
            read_header(server, PEER, true).await,
            Err(HeaderError::Closed)
        ));
    }
}
