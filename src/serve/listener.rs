//! [`Listener`]: where `serve` gets its connections, and how it reads accept errors.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

use super::io::PendingInput;

/// A source of connections for [`serve`](crate::serve()).
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
    /// Errors about one connection (a reset or aborted handshake, or the network errors
    /// Linux reports on `accept` for a connection: `ENETDOWN`, `EPROTO`, `EHOSTUNREACH`
    /// and the like) are skipped by [`serve`](crate::serve()); running out of file
    /// descriptors or memory makes it pause for a second and retry; any other error ends
    /// it (see [`Error::Accept`](crate::Error::Accept)).
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Io, Self::Addr)>> + Send;

    /// The local address this listener is bound to.
    fn local_addr(&self) -> io::Result<Self::Addr>;

    /// Whether bytes are waiting to be read on `io`, without reading them.
    ///
    /// [`serve`](crate::serve()) asks this of an idle HTTP/1 connection at drain start:
    /// a request whose bytes have already arrived is then served (with
    /// `Connection: close`) rather than dropped unread, and a connection closed with
    /// unread input lingers briefly so the client gets a clean close, not a reset. The
    /// default answers `false`, which closes idle connections at once.
    fn has_pending_input(io: &Self::Io) -> bool {
        let _ = io;
        false
    }

    /// Stops new handshakes on this listener, where the platform can, without closing it;
    /// returns whether it did.
    ///
    /// At drain start [`serve`](crate::serve()) asks this first, then accepts the
    /// connections whose handshakes had already completed (waiting in the kernel's accept
    /// queue) or were under way, then closes the listener. A client whose connect had
    /// succeeded is then served, and one that comes later is refused (after its SYN
    /// retransmit) rather than reset after its connect. Not asked when the listener is
    /// handed to the next generation of the process, which goes on accepting from it.
    /// The default does nothing and answers `false`: the listener closes right after the
    /// connections already queued are accepted.
    fn stop_handshakes(&mut self) -> io::Result<bool> {
        Ok(false)
    }

    /// The next connection this listener has already taken from its socket but not yet
    /// returned from [`accept`](Listener::accept) (one whose PROXY protocol header is
    /// still being read, say), once it is ready; `None` when there are no more.
    ///
    /// [`serve`](crate::serve()) asks this once it has stopped accepting, at drain start
    /// and in a handover (which takes nothing more from a socket passed on to the next
    /// generation), for up to its
    /// [`new_connection_grace`](crate::Serve::new_connection_grace), and serves what it
    /// gets: a client whose connect succeeded is not dropped for having been taken off the
    /// socket a moment too early. The default answers `None` at once.
    fn next_pending(
        &mut self,
    ) -> impl Future<Output = Option<io::Result<(Self::Io, Self::Addr)>>> + Send {
        std::future::ready(None)
    }
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

    fn has_pending_input(io: &Self::Io) -> bool {
        PendingInput::has_pending_input(io)
    }

    /// On Linux, attaches a socket filter that drops SYNs (and only them): handshakes
    /// already answered complete and are accepted, new ones are not answered.
    fn stop_handshakes(&mut self) -> io::Result<bool> {
        if self.local_addr().is_ok_and(is_shared) {
            // Held by systemd too: the next process inherits it, filter and all.
            return Ok(false);
        }
        stop_syns(&*self)
    }
}

/// Addresses of TCP listening sockets that outlive this process (held by systemd, which
/// hands them to the next start): a final stop must not leave its handshake filter on
/// them, or the next process would inherit a socket that answers no one.
static SHARED: Mutex<Vec<SocketAddr>> = Mutex::new(Vec::new());

/// Marks the listening socket at `addr` as one that outlives this process.
#[cfg_attr(not(all(unix, feature = "restart")), allow(dead_code))]
pub(crate) fn mark_shared(addr: SocketAddr) {
    let mut shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
    if !shared.contains(&addr) {
        shared.push(addr);
    }
}

fn is_shared(addr: SocketAddr) -> bool {
    SHARED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .contains(&addr)
}

/// A classic BPF program for a TCP socket that drops segments with SYN set and ACK clear
/// (new connection attempts) and keeps everything else, the last ACK of a handshake under
/// way included. A TCP socket filter sees the segment from its TCP header on.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn stop_syns(socket: &impl std::os::fd::AsFd) -> io::Result<bool> {
    use socket2::SockFilter;
    const TCP_FLAGS: u32 = 13;
    const SYN: u32 = 0x02;
    const ACK: u32 = 0x10;
    let op = |code: u32| u16::try_from(code).unwrap_or_default();
    let program = [
        // A = the flags byte
        SockFilter::new(
            op(libc::BPF_LD | libc::BPF_B | libc::BPF_ABS),
            0,
            0,
            TCP_FLAGS,
        ),
        // A &= SYN | ACK
        SockFilter::new(
            op(libc::BPF_ALU | libc::BPF_AND | libc::BPF_K),
            0,
            0,
            SYN | ACK,
        ),
        // A == SYN ? drop : keep
        SockFilter::new(op(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K), 0, 1, SYN),
        SockFilter::new(op(libc::BPF_RET | libc::BPF_K), 0, 0, 0),
        SockFilter::new(op(libc::BPF_RET | libc::BPF_K), 0, 0, u32::MAX),
    ];
    socket2::SockRef::from(socket).attach_filter(&program)?;
    Ok(true)
}

/// Elsewhere there is no such filter: the listener closes right after its queue is
/// accepted.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) fn stop_syns<S>(_socket: &S) -> io::Result<bool> {
    Ok(false)
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
        PendingInput::has_pending_input(io)
    }
}

/// What an accept error means for the accept loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AcceptError {
    /// About one connection only: skip it.
    Connection,
    /// Out of file descriptors or memory, which frees up as connections close: pause,
    /// then retry.
    Resources,
    /// The listener itself failed.
    Fatal,
}

impl AcceptError {
    pub(crate) fn of(e: &io::Error) -> AcceptError {
        use io::ErrorKind::*;
        match e.kind() {
            ConnectionRefused | ConnectionAborted | ConnectionReset | Interrupted | WouldBlock => {
                return AcceptError::Connection
            }
            OutOfMemory => return AcceptError::Resources,
            _ => {}
        }
        #[cfg(unix)]
        if let Some(code) = e.raw_os_error() {
            // accept(2) on Linux: "For reliable operation the application should detect
            // the network errors defined for the protocol after accept() and treat them
            // like EAGAIN by retrying."
            if [
                libc::ENETDOWN,
                libc::EPROTO,
                libc::ENOPROTOOPT,
                libc::EHOSTDOWN,
                libc::EHOSTUNREACH,
                libc::EOPNOTSUPP,
                libc::ENETUNREACH,
                #[cfg(target_os = "linux")]
                libc::ENONET,
            ]
            .contains(&code)
            {
                return AcceptError::Connection;
            }
            if [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM].contains(&code) {
                return AcceptError::Resources;
            }
        }
        AcceptError::Fatal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The handshake filter: a connection made before it is served, a connect after it
    /// is never answered (every SYN, the retransmits too, is dropped), and a listener
    /// marked shared gets no filter.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[tokio::test]
    async fn stopped_handshakes_are_never_answered_unless_the_socket_is_shared() {
        use std::time::Duration;
        let connects = |addr| {
            tokio::time::timeout(
                Duration::from_millis(300),
                tokio::net::TcpStream::connect(addr),
            )
        };
        let mut listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let before = connects(addr).await.expect("answered").unwrap();
        assert!(listener.stop_handshakes().unwrap(), "filter attached");
        assert!(
            connects(addr).await.is_err(),
            "a new connect is not answered"
        );
        let (accepted, _) = Listener::accept(&mut listener).await.unwrap();
        assert_eq!(accepted.peer_addr().unwrap(), before.local_addr().unwrap());

        let mut shared = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let shared_addr = shared.local_addr().unwrap();
        assert!(!is_shared(shared_addr));
        mark_shared(shared_addr);
        mark_shared(shared_addr);
        assert!(is_shared(shared_addr) && !is_shared(addr));
        assert_eq!(
            SHARED
                .lock()
                .unwrap()
                .iter()
                .filter(|a| **a == shared_addr)
                .count(),
            1,
            "marked once"
        );
        assert!(
            !shared.stop_handshakes().unwrap(),
            "no filter on a shared socket"
        );
        connects(shared_addr)
            .await
            .expect("still answered")
            .unwrap();
    }

    #[test]
    fn accept_errors_are_classified_portably() {
        let kind = |kind| AcceptError::of(&io::Error::from(kind));
        assert_eq!(
            kind(io::ErrorKind::ConnectionAborted),
            AcceptError::Connection
        );
        assert_eq!(
            kind(io::ErrorKind::ConnectionReset),
            AcceptError::Connection
        );
        assert_eq!(kind(io::ErrorKind::Interrupted), AcceptError::Connection);
        assert_eq!(kind(io::ErrorKind::OutOfMemory), AcceptError::Resources);
        assert_eq!(kind(io::ErrorKind::InvalidInput), AcceptError::Fatal);
        assert_eq!(kind(io::ErrorKind::Other), AcceptError::Fatal);
        #[cfg(unix)]
        {
            let os = |code| AcceptError::of(&io::Error::from_raw_os_error(code));
            assert_eq!(os(libc::EMFILE), AcceptError::Resources);
            assert_eq!(os(libc::ENFILE), AcceptError::Resources);
            assert_eq!(os(libc::ENOBUFS), AcceptError::Resources);
            assert_eq!(os(libc::ENOMEM), AcceptError::Resources);
            assert_eq!(os(libc::EPROTO), AcceptError::Connection);
            assert_eq!(os(libc::ENETUNREACH), AcceptError::Connection);
            assert_eq!(os(libc::EBADF), AcceptError::Fatal);
            assert_eq!(os(libc::EINVAL), AcceptError::Fatal);
        }
    }
}
