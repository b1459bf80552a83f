//! Statistics: the [`Stats`] snapshot and, with the `metrics` feature, the same figures
//! through the [`metrics`](https://docs.rs/metrics) facade.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::Phase;

/// A snapshot of what a [`Shutdown`](crate::Shutdown) is looking after, from
/// [`Shutdown::stats`](crate::Shutdown::stats).
///
/// Connection figures come from [`serve`](crate::serve()); requests are counted by
/// [`GracefulLayer`](crate::GracefulLayer) (which `serve` applies itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// The phase.
    pub phase: Phase,
    /// Requests in flight (from `call` until the response body ends).
    pub in_flight: usize,
    /// Open connections by state.
    pub connections: ConnectionStats,
    /// Connections accepted so far.
    pub accepted: u64,
    /// Connections closed so far (including force-closed ones).
    pub closed: u64,
    /// Connections force-closed at the stop deadline.
    pub force_closed: u64,
    /// Requests started so far.
    pub requests: u64,
    /// Tasks spawned by the crate that panicked so far: connections (whose HTTP/1
    /// handlers run inside them), HTTP/2 streams (whose handlers run there), and the
    /// crate's own tasks. Each panic is also logged at `ERROR`.
    pub panics: u64,
}

/// Open connections by state, in [`Stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ConnectionStats {
    /// Accepted, no request yet.
    pub new: usize,
    /// At least one request in flight.
    pub active: usize,
    /// Between requests (keep-alive).
    pub idle: usize,
    /// Switched protocols (WebSocket): the socket belongs to an upgrade task.
    pub upgraded: usize,
}

impl ConnectionStats {
    /// All open connections.
    pub fn total(&self) -> usize {
        self.new + self.active + self.idle + self.upgraded
    }
}

/// The state of one connection, for the gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnKind {
    New,
    Active,
    Idle,
    Upgraded,
}

/// The counters behind [`Stats`]. Each is independent (a snapshot is not atomic across
/// them), so `Relaxed` suffices. Idle connections are not counted but derived (open
/// minus the others), so a request moves one shared counter each way, not two.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    new: AtomicUsize,
    active: AtomicUsize,
    upgraded: AtomicUsize,
    accepted: AtomicU64,
    closed: AtomicU64,
    force_closed: AtomicU64,
    requests: AtomicU64,
    panics: AtomicU64,
    /// `serve` calls that ran their accept loop: whether anything closes listeners.
    servers: AtomicU64,
}

impl Counters {
    fn gauge(&self, kind: ConnKind) -> Option<&AtomicUsize> {
        match kind {
            ConnKind::New => Some(&self.new),
            ConnKind::Active => Some(&self.active),
            ConnKind::Idle => None,
            ConnKind::Upgraded => Some(&self.upgraded),
        }
    }

    pub(crate) fn accepted(&self) {
        self.new.fetch_add(1, Ordering::Relaxed);
        self.accepted.fetch_add(1, Ordering::Relaxed);
        metrics_impl::accepted();
    }

    pub(crate) fn moved(&self, from: ConnKind, to: ConnKind) {
        if from != to {
            if let Some(gauge) = self.gauge(from) {
                gauge.fetch_sub(1, Ordering::Relaxed);
            }
            if let Some(gauge) = self.gauge(to) {
                gauge.fetch_add(1, Ordering::Relaxed);
            }
            metrics_impl::moved(from, to);
        }
    }

    pub(crate) fn closed(&self, kind: ConnKind, forced: bool) {
        if let Some(gauge) = self.gauge(kind) {
            gauge.fetch_sub(1, Ordering::Relaxed);
        }
        self.closed.fetch_add(1, Ordering::Relaxed);
        if forced {
            self.force_closed.fetch_add(1, Ordering::Relaxed);
        }
        metrics_impl::closed(kind, forced);
    }

    pub(crate) fn request_started(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        metrics_impl::request_started();
    }

    /// A `serve` started its accept loop.
    pub(crate) fn server_started(&self) {
        self.servers.fetch_add(1, Ordering::Relaxed);
        metrics_impl::serve();
    }

    /// Whether any `serve` ran, and whether any connection was accepted (by `serve`, or
    /// watched): what the shutdown can say it closed.
    pub(crate) fn owns(&self) -> (bool, bool) {
        (
            self.servers.load(Ordering::Relaxed) > 0,
            self.accepted.load(Ordering::Relaxed) > 0,
        )
    }

    pub(crate) fn panicked(&self) {
        self.panics.fetch_add(1, Ordering::Relaxed);
        metrics_impl::panicked();
    }

    pub(crate) fn panics(&self) -> u64 {
        self.panics.load(Ordering::Relaxed)
    }

    pub(crate) fn snapshot(&self, phase: Phase, in_flight: usize) -> Stats {
        let accepted = self.accepted.load(Ordering::Relaxed);
        let closed = self.closed.load(Ordering::Relaxed);
        let open = usize::try_from(accepted.saturating_sub(closed)).unwrap_or(usize::MAX);
        let new = self.new.load(Ordering::Relaxed);
        let active = self.active.load(Ordering::Relaxed);
        let upgraded = self.upgraded.load(Ordering::Relaxed);
        Stats {
            phase,
            in_flight,
            connections: ConnectionStats {
                new,
                active,
                // Read apart from the others: clamp rather than wrap on a torn snapshot.
                idle: open.saturating_sub(new + active + upgraded),
                upgraded,
            },
            accepted,
            closed,
            force_closed: self.force_closed.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            panics: self.panics(),
        }
    }
}

/// Metric names, as the `metrics` feature records them. The names of Go's `httpdown`
/// statistics they stand for are in each constant's documentation.
pub mod names {
    /// Counter: `serve` calls started (Go: `serve`).
    pub const SERVE: &str = "httpdown_serve_total";
    /// Counter: shutdowns that reached drain start (Go: `stop`).
    pub const STOP: &str = "httpdown_stop_total";
    /// Histogram, seconds: from the trigger to the end of the shutdown (Go: `stop.time`).
    pub const STOP_TIME: &str = "httpdown_stop_duration_seconds";
    /// Counter: shutdowns that reached the stop deadline and force-closed what was left
    /// (Go: `kill`).
    pub const KILL: &str = "httpdown_kill_total";
    /// Counter: connections force-closed at the stop deadline (Go: `kill.conn.count`).
    pub const KILL_CONNECTIONS: &str = "httpdown_kill_connections_total";
    /// Counter: shutdowns that gave up at the kill deadline (Go: `kill.timeout`).
    pub const KILL_TIMEOUT: &str = "httpdown_kill_timeout_total";
    /// Counter: connections accepted.
    pub const ACCEPTED: &str = "httpdown_connections_accepted_total";
    /// Counter: connections closed, force-closed ones included (Go: `conn.closed`).
    pub const CLOSED: &str = "httpdown_connections_closed_total";
    /// Gauge with label `state` = `new`, `active`, `idle` or `upgraded`: open
    /// connections by state (Go: the `conn.new`/`conn.active`/`conn.idle`/`conn.hijacked`
    /// state changes).
    pub const CONNECTIONS: &str = "httpdown_connections";
    /// Counter: requests started.
    pub const REQUESTS: &str = "httpdown_requests_total";
    /// Gauge: requests in flight.
    pub const IN_FLIGHT: &str = "httpdown_requests_in_flight";
    /// Counter: tasks spawned by the crate (connections, HTTP/2 streams, its own) that
    /// panicked.
    pub const PANICS: &str = "httpdown_task_panics_total";
    /// Counter with label `result` = `ok` or `failed`: self-upgrades (feature `restart`).
    pub const UPGRADES: &str = "httpdown_upgrades_total";
}

#[cfg(feature = "metrics")]
pub(crate) mod metrics_impl {
    use std::time::Duration;

    use super::{names, ConnKind};

    fn state(kind: ConnKind) -> &'static str {
        match kind {
            ConnKind::New => "new",
            ConnKind::Active => "active",
            ConnKind::Idle => "idle",
            ConnKind::Upgraded => "upgraded",
        }
    }

    fn connections(kind: ConnKind) -> metrics::Gauge {
        metrics::gauge!(names::CONNECTIONS, "state" => state(kind))
    }

    pub(crate) fn serve() {
        metrics::counter!(names::SERVE).increment(1);
    }

    pub(crate) fn accepted() {
        metrics::counter!(names::ACCEPTED).increment(1);
        connections(ConnKind::New).increment(1.0);
    }

    pub(crate) fn moved(from: ConnKind, to: ConnKind) {
        connections(from).decrement(1.0);
        connections(to).increment(1.0);
    }

    pub(crate) fn closed(kind: ConnKind, _forced: bool) {
        connections(kind).decrement(1.0);
        metrics::counter!(names::CLOSED).increment(1);
    }

    pub(crate) fn request_started() {
        metrics::counter!(names::REQUESTS).increment(1);
        metrics::gauge!(names::IN_FLIGHT).increment(1.0);
    }

    pub(crate) fn request_ended() {
        metrics::gauge!(names::IN_FLIGHT).decrement(1.0);
    }

    pub(crate) fn drain_started() {
        metrics::counter!(names::STOP).increment(1);
    }

    pub(crate) fn force_closed(connections: usize) {
        metrics::counter!(names::KILL).increment(1);
        metrics::counter!(names::KILL_CONNECTIONS).increment(connections as u64);
    }

    pub(crate) fn gave_up() {
        metrics::counter!(names::KILL_TIMEOUT).increment(1);
    }

    pub(crate) fn panicked() {
        metrics::counter!(names::PANICS).increment(1);
    }

    pub(crate) fn done(total: Duration) {
        metrics::histogram!(names::STOP_TIME).record(total.as_secs_f64());
    }
}

#[cfg(not(feature = "metrics"))]
#[allow(clippy::missing_const_for_fn)]
pub(crate) mod metrics_impl {
    use std::time::Duration;

    use super::ConnKind;

    pub(crate) fn serve() {}
    pub(crate) fn accepted() {}
    pub(crate) fn moved(_from: ConnKind, _to: ConnKind) {}
    pub(crate) fn closed(_kind: ConnKind, _forced: bool) {}
    pub(crate) fn request_started() {}
    pub(crate) fn request_ended() {}
    pub(crate) fn drain_started() {}
    pub(crate) fn force_closed(_connections: usize) {}
    pub(crate) fn gave_up() {}
    pub(crate) fn panicked() {}
    pub(crate) fn done(_total: Duration) {}
}
