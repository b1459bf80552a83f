//! One connection served by `serve`: what its task, its IO and its requests share
//! ([`Connection`]), and the task that serves it and closes it at the right moment
//! ([`run`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::Duration;

use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tower_service::Service;

use super::executor::TrackedExecutor;
use super::io::WatchedIo;
use super::service::ConnService;
use super::{IdleClose, HANDOVER_IDLE_WAIT};
use crate::lifecycle::{Lifecycle, Step, StepWait};
use crate::stats::ConnKind;
use crate::{BoxError, Shutdown};

/// How long, at the stop deadline, a connection or stream that carried gRPC calls may go
/// on to send their `grpc-status` trailers before it is dropped.
pub(crate) const GRPC_FLUSH: Duration = Duration::from_millis(3);

/// How long a request whose first bytes had arrived at drain start has to be read.
const PENDING_INPUT_GRACE: Duration = Duration::from_secs(1);

/// How long an HTTP/2 connection closed by its idle timeout has, after its GOAWAY, to
/// answer the GOAWAY's PING (and be closed by hyper) before it is dropped.
const H2_IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How a connection of `serve` closes: the options of [`Serve`](super::Serve) it reads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Closing {
    /// `None`: the default for the kind of shutdown (see [`IdleClose`]).
    pub(crate) idle_close: Option<IdleClose>,
    pub(crate) header_read_timeout: Option<Duration>,
    /// How long a keep-alive connection may stay idle between requests (HTTP/2: with no
    /// stream open).
    pub(crate) idle_timeout: Option<Duration>,
    /// How long a connection is used before it is retired (HTTP/2: GOAWAY; HTTP/1: the
    /// next response closes it), less up to a tenth for spread.
    pub(crate) max_age: Option<Duration>,
    /// How long a connection that has sent nothing yet may take, from its accept, to
    /// begin its first request once the drain has started (B20).
    pub(crate) new_connection_grace: Duration,
}

impl Closing {
    /// A connection that is closed at once when idle, with no header-read timeout.
    pub(crate) const IMMEDIATELY: Closing = Closing {
        idle_close: Some(IdleClose::Immediately),
        header_read_timeout: None,
        idle_timeout: None,
        max_age: None,
        new_connection_grace: Duration::ZERO,
    };

    /// The `IdleClose` in force: the server's, or the default for a final stop
    /// (`Immediately`) or a handover (the next request, or [`HANDOVER_IDLE_WAIT`]).
    fn idle_close(&self, handover: bool) -> IdleClose {
        match self.idle_close {
            Some(chosen) => chosen,
            None if handover => IdleClose::AfterNextRequest(HANDOVER_IDLE_WAIT),
            None => IdleClose::Immediately,
        }
    }
}

/// What one connection's task, IO and requests share.
pub(crate) struct Connection {
    shutdown: Shutdown,
    /// Requests and the connection's state for the statistics, which change together.
    /// Only this connection's task and requests take the lock (uncontended for HTTP/1).
    activity: Mutex<Activity>,
    /// What is known of the connection, as bits (`UPGRADED`, `DETACHED`, `HTTP2`, `GRPC`),
    /// set once each and read on every IO call (one load). `Relaxed`: `HTTP2` and `GRPC`
    /// are written and read by the connection's own task; `UPGRADED` and `DETACHED` are
    /// written before the socket is handed to an upgrade task, which synchronizes through
    /// hyper's upgrade channel, and read as hints before that.
    flags: AtomicU8,
    /// The drain-start probe for unread input, between the task and the IO.
    probe: Probe,
    /// When the connection was accepted: the origin of `head_since`.
    accepted_at: Instant,
    /// Its place under [`Serve::max_connections`](super::Serve::max_connections), given
    /// back when the connection's last part (its IO, its services) is dropped.
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
    /// When the first bytes of the next request arrived on the idle connection, as
    /// nanoseconds after `accepted_at` plus one; 0 while none have. Written by the IO on
    /// its first read after the connection goes idle (`AWAITING_HEAD`), read by the task.
    head_since: AtomicU64,
}

/// A response switched protocols (`101`, or `2xx` to an extended CONNECT): the socket,
/// or the stream, belongs to an upgrade.
const UPGRADED: u8 = 1;
/// The connection's future has ended: an IO still alive belongs to an upgrade.
const DETACHED: u8 = 2;
/// The client opened with the HTTP/2 preface.
const HTTP2: u8 = 4;
/// It carried a gRPC call: at the stop deadline it gets a moment to send the calls'
/// `grpc-status` trailers before it is dropped.
const GRPC: u8 = 8;
/// The connection went idle after a request and has read nothing since: the IO records
/// when the next request's first bytes arrive.
const AWAITING_HEAD: u8 = 16;
/// The connection has reached its maximum age: its next HTTP/1 response closes it.
const RETIRING: u8 = 32;

#[derive(Debug)]
struct Activity {
    /// Requests in flight on this connection.
    active: usize,
    /// Requests started on this connection so far.
    started: u64,
    /// When the connection last went idle (or was accepted).
    idle_since: Instant,
    kind: ConnKind,
    /// The socket closed: the gauges no longer count this connection.
    closed: bool,
}

impl Connection {
    /// The state of a connection just accepted.
    pub(crate) fn new(shutdown: Shutdown) -> Arc<Self> {
        Connection::with_permit(shutdown, None)
    }

    /// The state of a connection just accepted, holding `permit` until it is dropped.
    pub(crate) fn with_permit(
        shutdown: Shutdown,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Arc<Self> {
        shutdown.counters().accepted();
        let now = Instant::now();
        Arc::new(Connection {
            shutdown,
            activity: Mutex::new(Activity {
                active: 0,
                started: 0,
                idle_since: now,
                kind: ConnKind::New,
                closed: false,
            }),
            flags: AtomicU8::new(0),
            probe: Probe::default(),
            accepted_at: now,
            _permit: permit,
            head_since: AtomicU64::new(0),
        })
    }

    fn activity(&self) -> MutexGuard<'_, Activity> {
        // A panic while the lock is held leaves consistent counts (each update is a few
        // assignments), so a poisoned lock is used as is.
        self.activity.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_kind(&self, activity: &mut Activity, kind: ConnKind) {
        // An upgraded connection stays upgraded until it closes; a request that ends
        // after its connection closed (a body dropped late) changes nothing.
        if activity.kind != ConnKind::Upgraded && !activity.closed {
            self.shutdown.counters().moved(activity.kind, kind);
            activity.kind = kind;
        }
    }

    /// The shutdown this connection belongs to.
    pub(crate) fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    pub(crate) fn lifecycle(&self) -> &Lifecycle {
        self.shutdown.lifecycle()
    }

    /// A request started on this connection.
    pub(crate) fn request_began(&self) {
        // A probe's answer describes the connection before this request: forget it.
        self.probe.forget();
        let mut activity = self.activity();
        activity.active += 1;
        activity.started += 1;
        self.set_kind(&mut activity, ConnKind::Active);
    }

    /// A request on this connection ended (its response body ended or was dropped).
    pub(crate) fn request_ended(&self) {
        let mut activity = self.activity();
        activity.active = activity.active.saturating_sub(1);
        if activity.active == 0 {
            activity.idle_since = Instant::now();
            self.head_since.store(0, Ordering::Relaxed);
            self.set(AWAITING_HEAD);
            self.set_kind(&mut activity, ConnKind::Idle);
        }
    }

    /// The IO read bytes: on an idle connection, the next request has begun to arrive,
    /// and from now on the header-read timeout counts rather than the idle timeout.
    #[inline]
    pub(crate) fn bytes_read(&self) {
        if self.has(AWAITING_HEAD) {
            self.head_began();
        }
    }

    /// Once per request on a keep-alive connection: kept out of the read path.
    #[inline(never)]
    fn head_began(&self) {
        self.flags.fetch_and(!AWAITING_HEAD, Ordering::Relaxed);
        let since = self.accepted_at.elapsed().as_nanos();
        let since = u64::try_from(since).unwrap_or(u64::MAX - 1);
        self.head_since.store(since + 1, Ordering::Relaxed);
    }

    /// The connection's socket closed.
    pub(crate) fn closed(&self, force_closed: bool) {
        let mut activity = self.activity();
        if !activity.closed {
            activity.closed = true;
            self.shutdown.counters().closed(activity.kind, force_closed);
        }
    }

    fn is_busy(&self) -> bool {
        self.activity().active > 0
    }

    /// When an idle HTTP/1 connection is closed: `header_read_timeout` after its accept
    /// for its first request, or after the first bytes of a later one; `idle_timeout`
    /// after its last response while nothing has arrived. An HTTP/2 connection: its
    /// `idle_timeout` after its accept or its last stream's end (frames that open no
    /// stream, PINGs say, do not count). `None` while a request runs (or with no such
    /// timeout).
    fn idle_deadline(
        &self,
        header_read_timeout: Option<Duration>,
        idle_timeout: Option<Duration>,
    ) -> Option<Instant> {
        let activity = self.activity();
        if activity.active > 0 {
            return None;
        }
        if self.is_http2() {
            return activity.idle_since.checked_add(idle_timeout?);
        }
        if activity.started == 0 {
            return activity.idle_since.checked_add(header_read_timeout?);
        }
        match self.head_since.load(Ordering::Relaxed) {
            0 => activity.idle_since.checked_add(idle_timeout?),
            since => self
                .accepted_at
                .checked_add(Duration::from_nanos(since - 1))?
                .checked_add(header_read_timeout?),
        }
    }

    fn requests_started(&self) -> u64 {
        self.activity().started
    }

    fn idle_since(&self) -> Instant {
        self.activity().idle_since
    }

    /// A response switched protocols: the socket is handed to an upgrade task.
    fn set(&self, flag: u8) {
        self.flags.fetch_or(flag, Ordering::Relaxed);
    }

    #[inline]
    fn has(&self, flags: u8) -> bool {
        self.flags.load(Ordering::Relaxed) & flags != 0
    }

    pub(crate) fn mark_upgraded(&self) {
        self.set(UPGRADED);
        let mut activity = self.activity();
        self.set_kind(&mut activity, ConnKind::Upgraded);
    }

    pub(crate) fn is_upgraded(&self) -> bool {
        self.has(UPGRADED)
    }

    /// A gRPC call arrived on this connection.
    pub(crate) fn mark_grpc(&self) {
        self.set(GRPC);
    }

    /// The connection has reached its maximum age.
    pub(crate) fn is_retiring(&self) -> bool {
        self.has(RETIRING)
    }

    pub(crate) fn is_grpc(&self) -> bool {
        self.has(GRPC)
    }

    /// The connection's future has ended; its IO, if still alive, belongs to an upgrade.
    pub(crate) fn detach(&self) {
        self.set(DETACHED);
    }

    /// Whether the socket now belongs to an upgrade (a `101`, an extended CONNECT, or an
    /// IO that outlived its connection's future).
    #[inline]
    pub(crate) fn is_handed_over(&self) -> bool {
        self.has(UPGRADED | DETACHED)
    }

    /// The client opened with the HTTP/2 preface.
    pub(crate) fn mark_http2(&self) {
        self.set(HTTP2);
    }

    fn is_http2(&self) -> bool {
        self.has(HTTP2)
    }

    pub(crate) fn probe(&self) -> &Probe {
        &self.probe
    }
}

/// The drain-start probe: the connection task asks, the IO looks at the socket on its
/// next read (before hyper reads it) and answers. Both sides run in the connection's
/// task, so `Relaxed` suffices.
#[derive(Debug, Default)]
pub(crate) struct Probe(AtomicU8);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum ProbeState {
    /// Nobody asked, or the answer was forgotten.
    None = 0,
    /// The task asked; the IO has not read since.
    Asked = 1,
    /// Input was waiting.
    Input = 2,
    /// Nothing was waiting.
    Empty = 3,
}

impl Probe {
    fn state(&self) -> ProbeState {
        match self.0.load(Ordering::Relaxed) {
            1 => ProbeState::Asked,
            2 => ProbeState::Input,
            3 => ProbeState::Empty,
            _ => ProbeState::None,
        }
    }

    fn set(&self, state: ProbeState) {
        self.0.store(state as u8, Ordering::Relaxed);
    }

    /// Asks the IO to look for unread input on its next read.
    fn ask(&self) {
        self.set(ProbeState::Asked);
    }

    /// Whether the IO has been asked and not yet answered.
    pub(crate) fn is_asked(&self) -> bool {
        self.state() == ProbeState::Asked
    }

    /// The IO's answer.
    pub(crate) fn answer(&self, input: bool) {
        self.set(if input {
            ProbeState::Input
        } else {
            ProbeState::Empty
        });
    }

    /// `Some(true)` if input was waiting, `Some(false)` if not, `None` if the IO has not
    /// been read since it was asked (or a request started since).
    pub(crate) fn result(&self) -> Option<bool> {
        match self.state() {
            ProbeState::Input => Some(true),
            ProbeState::Empty => Some(false),
            ProbeState::None | ProbeState::Asked => None,
        }
    }

    fn forget(&self) {
        if self.state() != ProbeState::None {
            self.set(ProbeState::None);
        }
    }
}

/// What ended a wait on the connection.
enum Event<E> {
    /// The connection ended (closed by either side, or an error).
    Ended(Result<(), E>),
    /// The stop deadline passed: drop the connection.
    ForceClosing,
    /// No request began within the header-read timeout of the connection going idle.
    TimedOut,
    DrainStarted,
    RequestStarted,
    Idle,
    Deadline,
}

/// How a watched connection ended.
pub(crate) enum End<E> {
    /// Its future ended (closed by either side, or an error).
    Finished(Result<(), E>),
    /// Dropped at the stop deadline.
    ForceClosed,
    /// Dropped: no request began within the header-read timeout.
    TimedOut,
}

impl<E> End<E> {
    fn of(event: Event<E>) -> Option<End<E>> {
        match event {
            Event::Ended(result) => Some(End::Finished(result)),
            Event::ForceClosing => Some(End::ForceClosed),
            Event::TimedOut => Some(End::TimedOut),
            _ => None,
        }
    }
}

/// What a wait on the connection waits for, besides its end and the stop deadline.
#[derive(Default)]
struct Until {
    drain_start: bool,
    /// A request started after this many.
    request_after: Option<u64>,
    idle: bool,
    deadline: Option<Instant>,
}

/// Serves one connection of `serve` until it ends (see [`watch`]).
pub(crate) async fn run<I, S, B>(
    builder: Arc<auto::Builder<TrackedExecutor>>,
    io: WatchedIo<I>,
    service: ConnService<S>,
    connection: Arc<Connection>,
    closing: Closing,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let conn =
        builder.serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(service));
    // Pinned here and lent to `watch`: moved into it, the connection (most of the task)
    // would be held twice.
    tokio::pin!(conn);
    match watch(conn, &connection, closing).await {
        End::Finished(result) => log_end(result),
        End::TimedOut => tracing::debug!("connection closed: idle, or no request head, in time"),
        End::ForceClosed => {}
    }
}

/// Drives `conn` until it ends, through the drain: at drain start a busy HTTP/1
/// connection closes after its response (with `Connection: close`), HTTP/2 gets GOAWAY,
/// and an idle HTTP/1 connection (or one that has sent nothing) closes now, unless a
/// request is already on it, `idle_close` keeps it a little longer, or it was accepted
/// less than `new_connection_grace` ago and has not sent its first request yet. At the
/// stop deadline `conn` is dropped, which closes its socket.
///
/// An HTTP/1 connection on which no request begins within `header_read_timeout` of its
/// going idle (its accept, or its last response) is dropped too: a client slow to send a
/// head (slowloris), or an idle keep-alive connection. One timer per connection, moved
/// only when it fires, so requests cost no timer work.
///
/// What it knows of the connection comes from `connection`, which serve's IO (the
/// protocol, the probe) and service (requests, upgrades) keep; a connection watched
/// without them is treated as an idle HTTP/1 one, which closes (or gets GOAWAY) at once.
pub(crate) async fn watch<C>(
    mut conn: Pin<&mut C>,
    connection: &Connection,
    closing: Closing,
) -> End<C::Error>
where
    C: GracefulConnection,
{
    let (drain, force) = (StepWait::new(), StepWait::new());
    tokio::pin!(drain, force);
    let (header_read_timeout, idle_timeout) = (closing.header_read_timeout, closing.idle_timeout);
    // No deadline comes sooner than this after the moment it is computed (a head that
    // begins later, or a connection that goes idle later, gets a later one): the timer
    // is set this far ahead at most, and looked at when it fires.
    let step = match (header_read_timeout, idle_timeout) {
        (Some(header), Some(idle)) => Some(header.min(idle)),
        (one, other) => one.or(other),
    };
    let first_check = step.and_then(|step| Instant::now().checked_add(step));
    let header_timer = tokio::time::sleep_until(first_check.unwrap_or_else(far_future));
    tokio::pin!(header_timer);
    let mut watch = Watch {
        connection,
        drain,
        force,
        header_read_timeout,
        idle_timeout,
        step: step.filter(|_| first_check.is_some()),
        header_timer,
        header_waker: None,
    };
    let mut end = drive(conn.as_mut(), &mut watch, closing).await;
    if matches!(end, End::ForceClosed) && connection.is_grpc() {
        // Force-closed: the gRPC calls on it have just ended with their `grpc-status`
        // trailers; give the connection a moment to send them.
        if let Ok(result) = tokio::time::timeout(GRPC_FLUSH, conn.as_mut()).await {
            end = End::Finished(result);
        }
    }
    // From here an IO still alive belongs to an upgrade.
    connection.detach();
    end
}

/// When a connection of `max_age` is retired: its age less up to a tenth, spread by the
/// connection's own address so that connections accepted together are not all retired
/// at once.
fn retire_at(connection: &Connection, max_age: Duration) -> Option<Instant> {
    let spread = (connection as *const Connection as usize / 64) % 1_000;
    let early = max_age / 10 * u32::try_from(spread).unwrap_or(0) / 1_000;
    connection.accepted_at.checked_add(max_age - early)
}

/// An instant no timer reaches (tokio's own far future is not public).
pub(crate) fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365 * 30)
}

async fn drive<C>(mut conn: Pin<&mut C>, watch: &mut Watch<'_>, closing: Closing) -> End<C::Error>
where
    C: GracefulConnection,
{
    let connection = watch.connection;
    let until_drain = Until {
        drain_start: true,
        deadline: closing.max_age.and_then(|age| retire_at(connection, age)),
        ..Until::default()
    };
    let mut event = watch.until(conn.as_mut(), until_drain).await;
    if matches!(event, Event::TimedOut) && connection.is_http2() {
        // Idle for its idle timeout: GOAWAY, which also tells a client that opened a
        // stream meanwhile whether it was taken (hyper then serves it to its end). hyper
        // closes once the client has answered the GOAWAY's PING; a client that does not
        // (gone, or deaf) is dropped after a grace unless a stream has started since.
        watch.step = None;
        let seen = connection.requests_started();
        conn.as_mut().graceful_shutdown();
        let grace = Until {
            deadline: Instant::now().checked_add(H2_IDLE_CLOSE_GRACE),
            ..Until::default()
        };
        let mut event = watch.until(conn.as_mut(), grace).await;
        if let Event::Deadline = event {
            if connection.requests_started() == seen && !connection.is_busy() {
                return End::TimedOut;
            }
            event = watch.until(conn.as_mut(), Until::default()).await;
        }
        return End::of(event).unwrap_or(End::ForceClosed);
    }
    if let Event::Deadline = event {
        // Old enough: retired, so that clients reconnect and traffic spreads over the
        // instances started since (after a rolling restart, say).
        connection.set(RETIRING);
        if connection.is_http2() {
            // GOAWAY: the streams in flight finish, no new one starts.
            conn.as_mut().graceful_shutdown();
            let event = watch.until(conn.as_mut(), Until::default()).await;
            return End::of(event).unwrap_or(End::ForceClosed);
        }
        // HTTP/1: the next response carries `Connection: close` (an idle connection is not
        // closed under a request that may be on its way).
        let until_drain = Until {
            drain_start: true,
            ..Until::default()
        };
        event = watch.until(conn.as_mut(), until_drain).await;
    }
    if let Some(end) = End::of(event) {
        return end;
    }

    let drain_at = Instant::now();
    let idle_close = closing.idle_close(connection.lifecycle().is_handover());
    let http1 = !connection.is_http2() && !connection.is_upgraded();
    if http1 && connection.is_busy() && idle_close != IdleClose::Immediately {
        // A response begun before drain start carries no `Connection: close`, and its
        // client may reuse the connection at once: rather than close under it, treat the
        // connection as idle once that response is done. Responses begun from now on
        // carry `Connection: close`, and hyper closes after them.
        let until_idle = Until {
            idle: true,
            ..Until::default()
        };
        let event = watch.until(conn.as_mut(), until_idle).await;
        if let Some(end) = End::of(event) {
            return end;
        }
    }
    if http1 && !connection.is_busy() {
        match idle_hold(conn.as_mut(), connection, idle_close, closing, drain_at).await {
            Hold::Finished(result) => return End::Finished(result),
            Hold::Until(deadline) => {
                let until_request = Until {
                    request_after: Some(connection.requests_started()),
                    deadline,
                    ..Until::default()
                };
                let event = watch.until(conn.as_mut(), until_request).await;
                if let Some(end) = End::of(event) {
                    return end;
                }
            }
            Hold::No => {}
        }
    }
    conn.as_mut().graceful_shutdown();
    let event = watch.until(conn.as_mut(), Until::default()).await;
    End::of(event).unwrap_or(End::ForceClosed)
}

fn log_end(result: Result<(), BoxError>) {
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// The connection task's waits for drain start, the stop deadline and the header-read
/// timeout.
struct Watch<'a> {
    connection: &'a Connection,
    drain: Pin<&'a mut StepWait>,
    force: Pin<&'a mut StepWait>,
    header_read_timeout: Option<Duration>,
    idle_timeout: Option<Duration>,
    /// The shorter of the two: `None` when neither is set.
    step: Option<Duration>,
    /// Set to the earliest the header-read or idle timeout can fall; moved on (to the
    /// connection's deadline, or one `step` ahead) only when it fires.
    header_timer: Pin<&'a mut tokio::time::Sleep>,
    /// The waker `header_timer` is registered with: polled again only for another.
    header_waker: Option<std::task::Waker>,
}

impl Watch<'_> {
    /// Whether the header-read timeout has passed; otherwise makes sure the task wakes
    /// when it may.
    fn poll_timed_out(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        let Some(step) = self.step else {
            return false;
        };
        // Registered with this waker and not due: nothing to look at (most polls).
        let registered = self
            .header_waker
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()));
        if registered && !self.header_timer.is_elapsed() {
            return false;
        }
        let connection = self.connection;
        if connection.is_handed_over() {
            return false;
        }
        // While a request runs there is nothing to time out. Look again one step from
        // now: an HTTP/2 stream ends on a task of its own, which does not wake this one,
        // and until then the timer, registered, keeps later polls on the path above.
        let Some(deadline) = connection.idle_deadline(self.header_read_timeout, self.idle_timeout)
        else {
            if let Some(next) = Instant::now().checked_add(step) {
                self.header_timer.as_mut().reset(next);
            }
            if self.header_timer.as_mut().poll(cx).is_pending() {
                self.header_waker = Some(cx.waker().clone());
            }
            return false;
        };
        loop {
            if self.header_timer.as_mut().poll(cx).is_pending() {
                self.header_waker = Some(cx.waker().clone());
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            // Fired for an earlier idle spell, or early: wait for this one's deadline,
            // or one step, after which a head begun meanwhile may be due.
            let next = now.checked_add(step).map_or(deadline, |n| n.min(deadline));
            self.header_timer.as_mut().reset(next);
        }
    }
}

impl Watch<'_> {
    /// Polls the connection until it ends, the stop deadline passes, or what `until`
    /// asks for happens.
    ///
    /// Requests start and end inside the connection's own poll (hyper calls the service
    /// and polls the response body there), so their counts are read right after it.
    async fn until<F, E>(&mut self, mut conn: Pin<&mut F>, until: Until) -> Event<E>
    where
        F: Future<Output = Result<(), E>>,
    {
        let sleep = until.deadline.map(tokio::time::sleep_until);
        tokio::pin!(sleep);
        std::future::poll_fn(|cx| {
            let lifecycle = self.connection.lifecycle();
            let step = lifecycle.step();
            if step >= Step::ForceClosing {
                return Poll::Ready(Event::ForceClosing);
            }
            if let Poll::Ready(result) = conn.as_mut().poll(cx) {
                return Poll::Ready(Event::Ended(result));
            }
            if until.drain_start && step >= Step::DrainStarted {
                return Poll::Ready(Event::DrainStarted);
            }
            if let Some(seen) = until.request_after {
                if self.connection.requests_started() != seen {
                    return Poll::Ready(Event::RequestStarted);
                }
            }
            if until.idle && !self.connection.is_busy() {
                return Poll::Ready(Event::Idle);
            }
            if let Some(sleep) = sleep.as_mut().as_pin_mut() {
                if sleep.poll(cx).is_ready() {
                    return Poll::Ready(Event::Deadline);
                }
            }
            if self.poll_timed_out(cx) {
                return Poll::Ready(Event::TimedOut);
            }
            // The stop deadline only comes after drain start: before it, only drain start
            // is waited for.
            if step >= Step::DrainStarted {
                let force = lifecycle.token(Step::ForceClosing);
                if self
                    .force
                    .as_mut()
                    .poll_cancelled(force, false, cx)
                    .is_ready()
                {
                    return Poll::Ready(Event::ForceClosing);
                }
            } else {
                let drain = lifecycle.token(Step::DrainStarted);
                if self
                    .drain
                    .as_mut()
                    .poll_cancelled(drain, false, cx)
                    .is_ready()
                {
                    // Seen on the next poll, in order (the stop deadline first).
                    cx.waker().wake_by_ref();
                }
            }
            Poll::Pending
        })
        .await
    }
}

/// How long an idle HTTP/1 connection stays open at drain start.
enum Hold<E> {
    /// The connection ended while being looked at.
    Finished(Result<(), E>),
    /// Until a request starts on it, or this instant (`None`: until the stop deadline).
    Until(Option<Instant>),
    /// Close it now.
    No,
}

/// How long to keep an idle HTTP/1 connection open at drain start: until the request
/// whose bytes have already arrived starts (bounded by [`PENDING_INPUT_GRACE`]), as
/// `idle_close` says, or, for a connection that has sent nothing yet, until
/// `new_connection_grace` after its accept, whichever is latest.
async fn idle_hold<F, E>(
    mut conn: Pin<&mut F>,
    connection: &Connection,
    idle_close: IdleClose,
    closing: Closing,
    drain_at: Instant,
) -> Hold<E>
where
    F: Future<Output = Result<(), E>>,
{
    // Poll the connection once with the probe asked: hyper, idle, reads from the socket,
    // and the IO peeks at it first.
    connection.probe.ask();
    let polled = std::future::poll_fn(|cx| Poll::Ready(conn.as_mut().poll(cx))).await;
    if let Poll::Ready(result) = polled {
        return Hold::Finished(result);
    }
    if connection.is_busy() || connection.probe.result() == Some(true) {
        // A request has arrived: give it time to be read and start.
        return Hold::Until(Instant::now().checked_add(PENDING_INPUT_GRACE));
    }
    let idle_since = connection.idle_since();
    let held = match idle_close {
        IdleClose::Immediately => Hold::No,
        IdleClose::MinIdleAge(age) => Hold::Until(idle_since.checked_add(age)),
        IdleClose::AfterNextRequest(wait) => Hold::Until(drain_at.checked_add(wait)),
    };
    if connection.requests_started() > 0 {
        return held;
    }
    // Never used: accepted at `idle_since`. A client whose connect has just succeeded is
    // about to send its request; closing now would fail it after its connect, which it
    // cannot tell from a crash. An older silent connection (a browser's spare
    // preconnect) closes as the idle ones do.
    // `Some(None)`: a grace too long for the clock, held until the stop deadline.
    let fresh_until = match idle_since.checked_add(closing.new_connection_grace) {
        Some(until) if until <= Instant::now() => None,
        until => Some(until),
    };
    match (held, fresh_until) {
        (held, None) => held,
        (Hold::No, Some(until)) => Hold::Until(until),
        (Hold::Until(Some(held)), Some(Some(until))) => Hold::Until(Some(held.max(until))),
        (Hold::Until(_), Some(_)) => Hold::Until(None),
        (held @ Hold::Finished(_), Some(_)) => held,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_move_the_connection_between_states_and_the_gauges_follow() {
        let shutdown = Shutdown::new();
        let connection = Connection::new(shutdown.clone());
        let gauges = || {
            let c = shutdown.stats().connections;
            (c.new, c.active, c.idle, c.upgraded)
        };
        assert_eq!(gauges(), (1, 0, 0, 0));
        connection.request_began();
        connection.request_began();
        assert!(connection.is_busy());
        assert_eq!(connection.requests_started(), 2);
        assert_eq!(gauges(), (0, 1, 0, 0));
        connection.request_ended();
        assert_eq!(gauges(), (0, 1, 0, 0), "one still in flight");
        connection.request_ended();
        assert!(!connection.is_busy());
        assert_eq!(gauges(), (0, 0, 1, 0));
        connection.mark_upgraded();
        assert!(connection.is_upgraded());
        assert_eq!(gauges(), (0, 0, 0, 1));
        connection.request_began();
        assert_eq!(gauges(), (0, 0, 0, 1), "upgraded until it closes");
        connection.closed(false);
        connection.closed(true);
        let stats = shutdown.stats();
        assert_eq!(gauges(), (0, 0, 0, 0));
        assert_eq!(
            (stats.accepted, stats.closed, stats.force_closed),
            (1, 1, 0)
        );
        connection.request_ended();
        assert_eq!(
            gauges(),
            (0, 0, 0, 0),
            "a request ending after the close changes nothing"
        );
    }

    #[test]
    fn the_probe_is_asked_answered_and_forgotten_by_a_request() {
        let connection = Connection::new(Shutdown::new());
        let probe = connection.probe();
        assert!(!probe.is_asked());
        assert_eq!(probe.result(), None);
        probe.ask();
        assert!(probe.is_asked());
        assert_eq!(probe.result(), None, "not answered yet");
        probe.answer(true);
        assert!(!probe.is_asked());
        assert_eq!(probe.result(), Some(true));
        probe.ask();
        probe.answer(false);
        assert_eq!(probe.result(), Some(false));
        connection.request_began();
        assert_eq!(probe.result(), None, "a request makes the answer stale");
    }

    #[test]
    fn idle_close_zero_waits_are_immediately() {
        for idle_close in [
            IdleClose::MinIdleAge(Duration::ZERO),
            IdleClose::AfterNextRequest(Duration::ZERO),
        ] {
            assert_eq!(idle_close.normalized(), IdleClose::Immediately);
        }
        let one = IdleClose::MinIdleAge(Duration::from_secs(1));
        assert_eq!(one.normalized(), one);
    }
}
