//! Per-connection state for [`serve`](crate::serve()): what the connection task needs to
//! know about its requests and its socket to close it at the right moment, and the IO
//! wrapper that keeps a connection counted (and force-closable) even after an upgrade
//! hands its socket to a WebSocket task.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::task_tracker::TaskTrackerToken;

use crate::stats::ConnKind;
use crate::task::{catch_panics, Task};
use crate::Shutdown;

/// How long a connection closed during the drain with unread input keeps reading (and
/// discarding) before its socket closes, so the kernel sends FIN rather than a reset that
/// could destroy the final response before the client reads it. Go waits 500 ms too.
const LINGER: Duration = Duration::from_millis(500);

const PROBE_NONE: u8 = 0;
const PROBE_REQUESTED: u8 = 1;
const PROBE_INPUT: u8 = 2;
const PROBE_EMPTY: u8 = 3;

/// What the connection task, the connection's IO and its requests share.
///
/// The request count and the connection's state (for the statistics) change together
/// under one uncontended lock. The other fields are hints read by one task and written
/// by another without other data depending on them, so `Relaxed` orderings suffice,
/// except the `started` counter paired with `started_notify` (see
/// [`ConnState::request_started`]).
pub(crate) struct ConnState {
    activity: Mutex<Activity>,
    /// Requests started on this connection so far.
    started: AtomicU64,
    started_notify: Notify,
    /// Notified when the last request in flight ends.
    idle_notify: Notify,
    /// The client spoke the HTTP/2 preface.
    http2: AtomicBool,
    /// A response switched protocols: the socket now belongs to an upgrade task.
    upgraded: AtomicBool,
    /// A request for the IO to look for unread input on its next read (`PROBE_*`).
    probe: AtomicU8,
    /// Set while the connection task waits on `request_started` or `became_idle`, so
    /// requests only pay for a notification when someone listens.
    watching: AtomicBool,
    /// Child tokens of the shutdown's drain and force tokens: waiting on them locks a
    /// mutex no other connection uses.
    drain: CancellationToken,
    force: CancellationToken,
    shutdown: Shutdown,
}

#[derive(Debug)]
struct Activity {
    /// Requests in flight on this connection.
    active: usize,
    kind: ConnKind,
    /// The socket closed: the gauges no longer count this connection.
    closed: bool,
    /// When the connection last went idle (or was accepted).
    idle_since: Instant,
}

impl ConnState {
    /// The state of a connection just accepted.
    pub(crate) fn new(shutdown: Shutdown) -> Arc<Self> {
        shutdown.inner.counters.accepted();
        Arc::new(ConnState {
            activity: Mutex::new(Activity {
                active: 0,
                kind: ConnKind::New,
                closed: false,
                idle_since: Instant::now(),
            }),
            started: AtomicU64::new(0),
            started_notify: Notify::new(),
            idle_notify: Notify::new(),
            http2: AtomicBool::new(false),
            upgraded: AtomicBool::new(false),
            probe: AtomicU8::new(PROBE_NONE),
            watching: AtomicBool::new(false),
            drain: shutdown.inner.drain.child_token(),
            force: shutdown.inner.force.child_token(),
            shutdown,
        })
    }

    fn activity(&self) -> std::sync::MutexGuard<'_, Activity> {
        self.activity.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_kind(&self, activity: &mut Activity, kind: ConnKind) {
        // An upgraded connection stays upgraded until it closes; a request that ends
        // after its connection closed (a body dropped late) changes nothing.
        if activity.kind != ConnKind::Upgraded && !activity.closed {
            self.shutdown.inner.counters.moved(activity.kind, kind);
            activity.kind = kind;
        }
    }

    /// A request started on this connection.
    pub(crate) fn request_began(&self) {
        // A probe's answer describes the connection before this request: forget it.
        if self.probe.load(Ordering::Relaxed) != PROBE_NONE {
            self.probe.store(PROBE_NONE, Ordering::Relaxed);
        }
        {
            let mut activity = self.activity();
            activity.active += 1;
            self.set_kind(&mut activity, ConnKind::Active);
        }
        // Release pairs with the Acquire in `requests_started`: a waiter that reads the
        // new count also sees the request as active.
        self.started.fetch_add(1, Ordering::SeqCst);
        // SeqCst with the waiter's store of `watching` and load of `started`: either
        // the waiter sees the new count, or this sees it watching.
        if self.watching.load(Ordering::SeqCst) {
            self.started_notify.notify_waiters();
        }
    }

    /// A request on this connection ended (its response body ended or was dropped).
    pub(crate) fn request_ended(&self) {
        let mut activity = self.activity();
        activity.active = activity.active.saturating_sub(1);
        if activity.active == 0 {
            activity.idle_since = Instant::now();
            self.set_kind(&mut activity, ConnKind::Idle);
            drop(activity);
            if self.watching.load(Ordering::SeqCst) {
                self.idle_notify.notify_waiters();
            }
        }
    }

    /// Resolves once no request is in flight on this connection.
    pub(crate) async fn became_idle(&self) {
        self.watching.store(true, Ordering::SeqCst);
        loop {
            let notified = self.idle_notify.notified();
            tokio::pin!(notified);
            // Register before checking, so an end between the two is not missed.
            notified.as_mut().enable();
            if !self.is_busy() {
                return;
            }
            notified.await;
        }
    }

    /// The connection's socket closed.
    fn closed(&self, forced: bool) {
        let mut activity = self.activity();
        if !activity.closed {
            activity.closed = true;
            self.shutdown.inner.counters.closed(activity.kind, forced);
        }
    }

    pub(crate) fn is_busy(&self) -> bool {
        self.activity().active > 0
    }

    pub(crate) fn idle_since(&self) -> Instant {
        self.activity().idle_since
    }

    /// The shutdown this connection belongs to.
    pub(crate) fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// This connection's child of the shutdown's drain token.
    pub(crate) fn drain(&self) -> &CancellationToken {
        &self.drain
    }

    /// This connection's child of the shutdown's force token.
    pub(crate) fn force(&self) -> &CancellationToken {
        &self.force
    }

    pub(crate) fn is_http2(&self) -> bool {
        self.http2.load(Ordering::Relaxed)
    }

    pub(crate) fn mark_upgraded(&self) {
        self.upgraded.store(true, Ordering::Relaxed);
        let mut activity = self.activity();
        self.set_kind(&mut activity, ConnKind::Upgraded);
    }

    pub(crate) fn is_upgraded(&self) -> bool {
        self.upgraded.load(Ordering::Relaxed)
    }

    fn requests_started(&self) -> u64 {
        self.started.load(Ordering::SeqCst)
    }

    /// Resolves once a request starts after this call.
    pub(crate) async fn request_started(&self) {
        self.watching.store(true, Ordering::SeqCst);
        let seen = self.requests_started();
        loop {
            let notified = self.started_notify.notified();
            tokio::pin!(notified);
            // Register before re-checking, so a start between the check and the await
            // is not missed.
            notified.as_mut().enable();
            if self.requests_started() != seen {
                return;
            }
            notified.await;
        }
    }

    /// Asks the IO to check for unread input on its next read.
    pub(crate) fn request_probe(&self) {
        self.probe.store(PROBE_REQUESTED, Ordering::Relaxed);
    }

    /// The probe's answer: `Some(true)` if input was waiting, `None` if the IO has not
    /// been read since the request.
    pub(crate) fn probe_result(&self) -> Option<bool> {
        match self.probe.load(Ordering::Relaxed) {
            PROBE_INPUT => Some(true),
            PROBE_EMPTY => Some(false),
            _ => None,
        }
    }
}

/// Whether a connection's socket has bytes waiting to be read.
pub(crate) type PeekFn<I> = fn(&I) -> bool;

/// The IO of one served connection.
///
/// It holds the connection's count in the shutdown, so a connection stays counted for as
/// long as its socket lives, through an upgrade. Once the connection is upgraded, reads
/// and writes fail from the stop deadline on, so a WebSocket task that ignores the drain
/// still lets go of its socket. On drop during the drain, a socket with unread input
/// lingers (see [`LINGER`]).
pub(crate) struct ConnIo<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> {
    io: Option<I>,
    state: Arc<ConnState>,
    token: Option<TaskTrackerToken>,
    peek: PeekFn<I>,
    first_read: bool,
    /// Created once the connection is upgraded, on the connection's own force token.
    force: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> ConnIo<I> {
    pub(crate) fn new(
        io: I,
        state: Arc<ConnState>,
        token: TaskTrackerToken,
        peek: PeekFn<I>,
    ) -> Self {
        ConnIo {
            io: Some(io),
            state,
            token: Some(token),
            peek,
            first_read: true,
            force: None,
        }
    }

    fn io(&mut self) -> io::Result<&mut I> {
        self.io
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }

    /// For an upgraded connection: fails once the stop deadline has passed, and otherwise
    /// makes sure the task is woken when it does.
    fn poll_forced(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if !self.state.is_upgraded() {
            return Ok(());
        }
        let state = &self.state;
        let wait = self
            .force
            .get_or_insert_with(|| Box::pin(state.force().clone().cancelled_owned()));
        match wait.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "connection force-closed at the stop deadline",
            )),
            Poll::Pending => Ok(()),
        }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncRead for ConnIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.poll_forced(cx)?;
        if this.state.probe.load(Ordering::Relaxed) == PROBE_REQUESTED {
            let input = this.io.as_ref().is_some_and(this.peek);
            let answer = if input { PROBE_INPUT } else { PROBE_EMPTY };
            this.state.probe.store(answer, Ordering::Relaxed);
        }
        let before = buf.filled().len();
        ready!(Pin::new(this.io()?).poll_read(cx, buf))?;
        if this.first_read && buf.filled().len() > before {
            this.first_read = false;
            if buf.filled()[before..].starts_with(b"PRI") {
                this.state.http2.store(true, Ordering::Relaxed);
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncWrite for ConnIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_forced(cx)?;
        Pin::new(self.io()?).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_forced(cx)?;
        Pin::new(self.io()?).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(|io| io.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_forced(cx)?;
        Pin::new(self.io()?).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_forced(cx)?;
        Pin::new(self.io()?).poll_shutdown(cx)
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> Drop for ConnIo<I> {
    fn drop(&mut self) {
        let (Some(mut io), Some(token)) = (self.io.take(), self.token.take()) else {
            return;
        };
        let shutdown = &self.state.shutdown().inner;
        let forced = shutdown.is_forced();
        self.state.closed(forced);
        // An idle connection just found empty and closed at drain start has nothing to
        // protect: no response is on its way to the client.
        let closed_idle = self.state.probe_result() == Some(false) && !self.state.is_busy();
        if !shutdown.is_draining() || forced || closed_idle || !(self.peek)(&io) {
            return;
        }
        // Closing a socket with unread input makes the kernel send a reset, which can
        // destroy the response the client has not read yet. Send FIN, read and discard
        // until the client closes (or LINGER, or the stop deadline), then close.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let force = self.state.force().clone();
        let state = Arc::clone(&self.state);
        runtime.spawn(async move {
            let _token = token;
            let linger = catch_panics(Task::Linger, &state.shutdown().inner.counters, async {
                let _ = io.shutdown().await;
                let mut buf = [0u8; 2048];
                while let Ok(1..) = io.read(&mut buf).await {}
            });
            tokio::select! {
                _ = linger => {}
                _ = tokio::time::sleep(LINGER) => {}
                _ = force.cancelled() => {}
            }
        });
    }
}
