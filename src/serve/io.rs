//! The IO of one connection served by `serve`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_util::task::task_tracker::TaskTrackerToken;

use super::connection::Connection;
use crate::lifecycle::{Step, StepWait};
use crate::task::{catch_panics, Task};

/// How long a connection closed during the drain with unread input keeps reading (and
/// discarding) before its socket closes, so the kernel sends FIN rather than a reset that
/// could destroy the final response before the client reads it. Go waits 500 ms too.
const LINGER: Duration = Duration::from_millis(500);

/// Whether a connection's socket has bytes waiting to be read.
pub(crate) type PeekFn<I> = fn(&I) -> bool;

/// An IO whose unread input can be seen without reading it.
///
/// At drain start an idle HTTP/1 connection is looked at: a request whose bytes have
/// already arrived is served (with `Connection: close`) rather than dropped unread, and a
/// connection closed with unread input lingers so the client gets a clean close, not a
/// reset. Implemented for TCP and Unix streams (and TLS over them).
pub trait PendingInput {
    /// Whether bytes are waiting to be read, without reading them.
    fn has_pending_input(&self) -> bool;
}

#[cfg(unix)]
fn peek_socket(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    // The socket is non-blocking (tokio registered it): this never waits.
    matches!(socket2::SockRef::from(&fd).peek(&mut buf), Ok(1..))
}

impl PendingInput for tokio::net::TcpStream {
    #[cfg(unix)]
    fn has_pending_input(&self) -> bool {
        use std::os::fd::AsFd;
        peek_socket(self.as_fd())
    }

    #[cfg(not(unix))]
    fn has_pending_input(&self) -> bool {
        false
    }
}

#[cfg(unix)]
impl PendingInput for tokio::net::UnixStream {
    fn has_pending_input(&self) -> bool {
        use std::os::fd::AsFd;
        peek_socket(self.as_fd())
    }
}

/// An in-memory pipe: nothing to look at without reading.
impl PendingInput for tokio::io::DuplexStream {
    fn has_pending_input(&self) -> bool {
        false
    }
}

/// The IO of a connection served by [`serve`](crate::serve()), or of one of a hand-written
/// accept loop watched with a [`ConnectionWatcher`](crate::ConnectionWatcher).
///
/// - It holds the connection's count in the shutdown, so a connection stays counted for
///   as long as its socket lives, through an upgrade.
/// - Once the connection is upgraded, reads and writes fail from the stop deadline on,
///   so a WebSocket task that ignores the drain still lets go of its socket.
/// - It tells the connection whether the client opened with the HTTP/2 preface, and
///   answers the drain-start probe for unread input.
/// - On drop during the drain, a socket with unread input lingers (FIN, then read and
///   discard for up to 500 ms) so the client gets the end of its response, not a reset.
pub struct WatchedIo<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> {
    io: Option<I>,
    connection: Arc<Connection>,
    token: Option<TaskTrackerToken>,
    peek: PeekFn<I>,
    preface: Preface,
    /// The wait for the stop deadline, made once the connection is upgraded (hyper needs
    /// an `Unpin` IO, so it is boxed; only upgraded connections pay for it).
    force: Option<Pin<Box<StepWait>>>,
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> WatchedIo<I> {
    pub(crate) fn new(
        io: I,
        connection: Arc<Connection>,
        token: TaskTrackerToken,
        peek: PeekFn<I>,
    ) -> Self {
        WatchedIo {
            io: Some(io),
            connection,
            token: Some(token),
            peek,
            preface: Preface::default(),
            force: None,
        }
    }

    fn io(&mut self) -> io::Result<&mut I> {
        self.io
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }

    /// For an upgraded connection: fails once the stop deadline has passed, and otherwise
    /// makes sure the task is woken when it does. One atomic load for the others.
    #[inline]
    fn poll_force_closed(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if !self.connection.is_handed_over() {
            return Ok(());
        }
        self.poll_force_closed_upgraded(cx)
    }

    #[cold]
    fn poll_force_closed_upgraded(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let lifecycle = self.connection.lifecycle();
        let closing = lifecycle.reached(Step::ForceClosing);
        let wait = self.force.get_or_insert_with(|| Box::pin(StepWait::new()));
        match wait
            .as_mut()
            .poll_cancelled(lifecycle.token(Step::ForceClosing), closing, cx)
        {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "connection force-closed at the stop deadline",
            )),
            Poll::Pending => Ok(()),
        }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncRead for WatchedIo<I> {
    #[inline]
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.poll_force_closed(cx)?;
        let probe = this.connection.probe();
        if probe.is_asked() {
            probe.answer(this.io.as_ref().is_some_and(this.peek));
        }
        let before = buf.filled().len();
        ready!(Pin::new(this.io()?).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            this.connection.bytes_read();
        }
        if this.preface.is_open() && this.preface.read(&buf.filled()[before..]) {
            this.connection.mark_http2();
        }
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncWrite for WatchedIo<I> {
    #[inline]
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_force_closed(cx)?;
        Pin::new(self.io()?).poll_write(cx, buf)
    }

    #[inline]
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_force_closed(cx)?;
        Pin::new(self.io()?).poll_write_vectored(cx, bufs)
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(|io| io.is_write_vectored())
    }

    #[inline]
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_force_closed(cx)?;
        Pin::new(self.io()?).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_force_closed(cx)?;
        Pin::new(self.io()?).poll_shutdown(cx)
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> std::fmt::Debug for WatchedIo<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchedIo")
            .field("open", &self.io.is_some())
            .field("handed_over", &self.connection.is_handed_over())
            .finish_non_exhaustive()
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> Drop for WatchedIo<I> {
    fn drop(&mut self) {
        let (Some(mut io), Some(token)) = (self.io.take(), self.token.take()) else {
            return;
        };
        let connection = &self.connection;
        let lifecycle = connection.lifecycle();
        let force_closed = lifecycle.reached(Step::ForceClosing);
        connection.closed(force_closed);
        // An idle connection just found empty and closed at drain start has nothing to
        // protect: no response is on its way to the client.
        let closed_idle = connection.probe().result() == Some(false);
        if !lifecycle.reached(Step::DrainStarted)
            || force_closed
            || closed_idle
            || !(self.peek)(&io)
        {
            return;
        }
        // Closing a socket with unread input makes the kernel send a reset, which can
        // destroy the response the client has not read yet. Send FIN, read and discard
        // until the client closes (or LINGER, or the stop deadline), then close.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let shutdown = connection.shutdown().clone();
        runtime.spawn(async move {
            let _token = token;
            let force_closing = shutdown.lifecycle().reaching(Step::ForceClosing);
            let linger = async {
                let _ = io.shutdown().await;
                let mut buf = [0u8; 2048];
                while let Ok(1..) = io.read(&mut buf).await {}
            };
            let linger = catch_panics(Task::Linger, shutdown.counters(), linger);
            tokio::select! {
                _ = linger => {}
                _ = tokio::time::sleep(LINGER) => {}
                _ = force_closing => {}
            }
        });
    }
}

/// Tells an HTTP/2 connection (prior knowledge) from an HTTP/1 one by its first bytes,
/// across reads of any size.
#[derive(Debug, Default)]
struct Preface {
    /// Bytes of the preface matched so far.
    matched: usize,
    /// Decided: the preface was seen in full, or a byte did not match.
    decided: bool,
}

/// What an HTTP/2 client with prior knowledge sends first (RFC 9113, 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl Preface {
    fn is_open(&self) -> bool {
        !self.decided
    }

    /// Reads the next bytes of the connection; `true` once the whole preface has been
    /// seen.
    fn read(&mut self, bytes: &[u8]) -> bool {
        if bytes.is_empty() {
            // End of input before a decision.
            self.decided = true;
            return false;
        }
        let rest = &PREFACE[self.matched..];
        let n = rest.len().min(bytes.len());
        if rest[..n] != bytes[..n] {
            self.decided = true;
            return false;
        }
        self.matched += n;
        if self.matched == PREFACE.len() {
            self.decided = true;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The probe sees bytes waiting on TCP and Unix sockets, and leaves them there.
    #[cfg(unix)]
    #[tokio::test]
    async fn pending_input_is_seen_without_being_read() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut byte = [0u8; 1];

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        assert!(!server.has_pending_input(), "nothing sent yet");
        assert!(!<tokio::net::TcpListener as crate::Listener>::has_pending_input(&server));
        client.write_all(b"x").await.unwrap();
        server.readable().await.unwrap();
        assert!(server.has_pending_input(), "a byte is waiting");
        assert!(
            <tokio::net::TcpListener as crate::Listener>::has_pending_input(&server),
            "the TCP listener's probe is the stream's"
        );
        server.read_exact(&mut byte).await.unwrap();
        assert_eq!(&byte, b"x", "still there to read");
        assert!(!server.has_pending_input(), "read");

        let (mut server, mut client) = tokio::net::UnixStream::pair().unwrap();
        let through_listener = <tokio::net::UnixListener as crate::Listener>::has_pending_input;
        assert!(!server.has_pending_input(), "nothing sent yet");
        assert!(!through_listener(&server));
        client.write_all(b"y").await.unwrap();
        server.readable().await.unwrap();
        assert!(server.has_pending_input(), "a byte is waiting");
        assert!(
            through_listener(&server),
            "the Unix listener's probe is the stream's"
        );
        server.read_exact(&mut byte).await.unwrap();
        assert_eq!(&byte, b"y", "still there to read");
        assert!(!server.has_pending_input(), "read");
    }

    #[test]
    fn the_http2_preface_is_seen_across_short_reads() {
        for split in 1..PREFACE.len() {
            let mut preface = Preface::default();
            let mut seen = false;
            for chunk in PREFACE.chunks(split) {
                assert!(preface.is_open());
                seen = preface.read(chunk);
            }
            assert!(seen, "split every {split} bytes");
            assert!(!preface.is_open());
        }
        // The preface followed by a frame in the same read.
        let mut preface = Preface::default();
        assert!(preface.read(&[PREFACE, &[0, 0, 0, 4]].concat()));
    }

    #[test]
    fn anything_else_is_http1() {
        for start in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"PRI",
            b"PRI * HTTP/1.1\r\n",
            b"P",
        ] {
            let mut preface = Preface::default();
            let seen = preface.read(start) || preface.read(b"X");
            assert!(!seen, "{start:?}");
            assert!(!preface.is_open(), "{start:?}: decided");
        }
        let mut preface = Preface::default();
        assert!(!preface.read(b""));
        assert!(!preface.is_open(), "EOF decides");
    }
}
