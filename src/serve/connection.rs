//! One connection served by `serve`: what its task, its IO and its requests share
//! ([`Connection`]), and the task that serves it and closes it at the right moment
//! ([`run`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
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
use super::IdleClose;
use crate::lifecycle::{Lifecycle, Step, StepWait};
use crate::stats::ConnKind;
use crate::{BoxError, Shutdown};

/// How long, at the stop deadline, a connection or stream that carried gRPC calls may go
/// on to send their `grpc-status` trailers before it is dropped.
pub(crate) const GRPC_FLUSH: Duration = Duration::from_millis(3);

/// How long a request whose first bytes had arrived at drain start has to be read.
const PENDING_INPUT_GRACE: Duration = Duration::from_secs(1);

/// What one connection's task, IO and requests share.
pub(crate) struct Connection {
    shutdown: Shutdown,
    /// Requests and the connection's state for the statistics, which change together.
    /// Only this connection's task and requests take the lock (uncontended for HTTP/1).
    activity: Mutex<Activity>,
    /// A response switched protocols: the socket now belongs to an upgrade task.
    /// `Relaxed`: written before hyper hands the socket to the upgrade, which
    /// synchronizes through its channel; read by the IO, only as a hint before that.
    upgraded: AtomicBool,
    /// The client sent the HTTP/2 preface. Written and read by this connection's task
    /// (through its IO), so `Relaxed` suffices.
    http2: AtomicBool,
    /// It carried a gRPC call: at the stop deadline it gets a moment to send the calls'
    /// `grpc-status` trailers before it is dropped. `Relaxed`: a hint read by the same
    /// connection's task.
    grpc: AtomicBool,
    /// The connection's future has ended: an IO still alive now belongs to an upgrade.
    /// `Relaxed`, as `upgraded`: the handover to the upgrade synchronizes.
    detached: AtomicBool,
    /// The drain-start probe for unread input, between the task and the IO.
    probe: Probe,
}

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
        shutdown.counters().accepted();
        Arc::new(Connection {
            shutdown,
            activity: Mutex::new(Activity {
                active: 0,
                started: 0,
                idle_since: Instant::now(),
                kind: ConnKind::New,
                closed: false,
            }),
            upgraded: AtomicBool::new(false),
            http2: AtomicBool::new(false),
            detached: AtomicBool::new(false),
            grpc: AtomicBool::new(false),
            probe: Probe::default(),
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
            self.set_kind(&mut activity, ConnKind::Idle);
        }
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

    fn requests_started(&self) -> u64 {
        self.activity().started
    }

    fn idle_since(&self) -> Instant {
        self.activity().idle_since
    }

    /// A response switched protocols: the socket is handed to an upgrade task.
    pub(crate) fn mark_upgraded(&self) {
        self.upgraded.store(true, Ordering::Relaxed);
        let mut activity = self.activity();
        self.set_kind(&mut activity, ConnKind::Upgraded);
    }

    pub(crate) fn is_upgraded(&self) -> bool {
        self.upgraded.load(Ordering::Relaxed)
    }

    /// A gRPC call arrived on this connection.
    pub(crate) fn mark_grpc(&self) {
        self.grpc.store(true, Ordering::Relaxed);
    }

    pub(crate) fn is_grpc(&self) -> bool {
        self.grpc.load(Ordering::Relaxed)
    }

    /// The connection's future has ended; its IO, if still alive, belongs to an upgrade.
    pub(crate) fn detach(&self) {
        self.detached.store(true, Ordering::Relaxed);
    }

    /// Whether the socket now belongs to an upgrade (a `101`, an extended CONNECT, or an
    /// IO that outlived its connection's future).
    pub(crate) fn is_handed_over(&self) -> bool {
        self.is_upgraded() || self.detached.load(Ordering::Relaxed)
    }

    /// The client opened with the HTTP/2 preface.
    pub(crate) fn mark_http2(&self) {
        self.http2.store(true, Ordering::Relaxed);
    }

    fn is_http2(&self) -> bool {
        self.http2.load(Ordering::Relaxed)
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
    DrainStarted,
    RequestStarted,
    Idle,
    Deadline,
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
    idle_close: IdleClose,
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
    if let Some(result) = watch(conn, &connection, idle_close).await {
        log_end(result);
    }
}

/// Drives `conn` until it ends, through the drain: at drain start a busy HTTP/1
/// connection closes after its response (with `Connection: close`), HTTP/2 gets GOAWAY,
/// and an idle HTTP/1 connection (or one that has sent nothing) closes now, unless a
/// request is already on it or `idle_close` keeps it a little longer. At the stop
/// deadline `conn` is dropped, which closes its socket: `None`.
///
/// What it knows of the connection comes from `connection`, which serve's IO (the
/// protocol, the probe) and service (requests, upgrades) keep; a connection watched
/// without them is treated as an idle HTTP/1 one, which closes (or gets GOAWAY) at once.
pub(crate) async fn watch<C>(
    conn: C,
    connection: &Connection,
    idle_close: IdleClose,
) -> Option<Result<(), C::Error>>
where
    C: GracefulConnection,
{
    tokio::pin!(conn);
    let (drain, force) = (StepWait::new(), StepWait::new());
    tokio::pin!(drain, force);
    let mut watch = Watch {
        connection,
        drain,
        force,
    };
    let mut end = drive(conn.as_mut(), &mut watch, idle_close).await;
    if end.is_none() && connection.is_grpc() {
        // Force-closed: the gRPC calls on it have just ended with their `grpc-status`
        // trailers; give the connection a moment to send them.
        end = tokio::time::timeout(GRPC_FLUSH, conn.as_mut()).await.ok();
    }
    // From here an IO still alive belongs to an upgrade.
    connection.detach();
    end
}

async fn drive<C>(
    mut conn: Pin<&mut C>,
    watch: &mut Watch<'_>,
    idle_close: IdleClose,
) -> Option<Result<(), C::Error>>
where
    C: GracefulConnection,
{
    let connection = watch.connection;
    let until_drain = Until {
        drain_start: true,
        ..Until::default()
    };
    match watch.until(conn.as_mut(), until_drain).await {
        Event::Ended(result) => return Some(result),
        Event::DrainStarted => {}
        _ => return None,
    }

    let drain_at = Instant::now();
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
        match watch.until(conn.as_mut(), until_idle).await {
            Event::Ended(result) => return Some(result),
            Event::Idle => {}
            _ => return None,
        }
    }
    if http1 && !connection.is_busy() {
        match idle_hold(conn.as_mut(), connection, idle_close, drain_at).await {
            Hold::Finished(result) => return Some(result),
            Hold::Until(deadline) => {
                let until_request = Until {
                    request_after: Some(connection.requests_started()),
                    deadline,
                    ..Until::default()
                };
                match watch.until(conn.as_mut(), until_request).await {
                    Event::Ended(result) => return Some(result),
                    Event::RequestStarted | Event::Deadline => {}
                    _ => return None,
                }
            }
            Hold::No => {}
        }
    }
    conn.as_mut().graceful_shutdown();
    match watch.until(conn.as_mut(), Until::default()).await {
        Event::Ended(result) => Some(result),
        _ => None,
    }
}

fn log_end(result: Result<(), BoxError>) {
    if let Err(e) = result {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// The connection task's waits for drain start and the stop deadline.
struct Watch<'a> {
    connection: &'a Connection,
    drain: Pin<&'a mut StepWait>,
    force: Pin<&'a mut StepWait>,
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
/// whose bytes have already arrived starts (bounded by [`PENDING_INPUT_GRACE`]), or as
/// `idle_close` says.
async fn idle_hold<F, E>(
    mut conn: Pin<&mut F>,
    connection: &Connection,
    idle_close: IdleClose,
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
    match idle_close {
        IdleClose::Immediately => Hold::No,
        IdleClose::MinIdleAge(age) => Hold::Until(connection.idle_since().checked_add(age)),
        IdleClose::AfterNextRequest(wait) => Hold::Until(drain_at.checked_add(wait)),
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
