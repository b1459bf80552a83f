//! The [`Shutdown`] controller: configuration, phase, counts, and the lifecycle driver.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::report::{Outcome, Report};
use crate::stats::{metrics_impl, Counters};
use crate::task::{catch_panics, Task};
use crate::GracefulLayer;
use crate::Stats;

/// How long to wait at a step of the shutdown before moving on.
///
/// A [`Duration`] converts into [`Timeout::After`]; `Duration::ZERO` means "at once".
/// [`Timeout::Never`] waits for as long as it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timeout {
    /// Move on after this long (`Duration::ZERO`: at once).
    After(Duration),
    /// Never move on; wait until the work is done.
    Never,
}

impl From<Duration> for Timeout {
    fn from(duration: Duration) -> Self {
        Timeout::After(duration)
    }
}

impl fmt::Display for Timeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Timeout::After(d) => write!(f, "{d:?}"),
            Timeout::Never => f.write_str("never"),
        }
    }
}

/// Where a [`Shutdown`] is in its lifecycle.
///
/// The phases only move forward: `Running` → `Draining` → `Forcing` → `Done`
/// (`Forcing` is skipped when everything finished before the stop deadline).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Phase {
    /// Not triggered: serving normally.
    Running,
    /// Triggered. During the drain delay the listeners stay open and requests are served
    /// normally; from drain start on the listeners are closed, every connection has been
    /// told to finish, and the stop timer runs.
    Draining,
    /// The stop deadline passed: whatever was left has been force-closed and the kill timer
    /// runs.
    Forcing,
    /// Shutdown finished; the [`Report`] is available.
    Done,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Running => "running",
            Phase::Draining => "draining",
            Phase::Forcing => "forcing",
            Phase::Done => "done",
        })
    }
}

/// What a second SIGTERM or SIGINT does while a shutdown is already under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SecondSignal {
    /// Skip what is left of the drain delay and the stop timeout: force-close now. The kill
    /// timeout still bounds the wait that follows.
    #[default]
    Escalate,
    /// Log it and carry on with the shutdown already under way.
    Ignore,
}

/// Builds a [`Shutdown`] with non-default timeouts.
///
/// ```
/// use std::time::Duration;
/// use httpdown::{Shutdown, Timeout};
///
/// let shutdown = Shutdown::builder()
///     .stop_timeout(Duration::from_secs(10))
///     .kill_timeout(Timeout::Never)
///     .build();
/// assert_eq!(shutdown.stop_timeout(), Timeout::After(Duration::from_secs(10)));
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct Builder {
    config: Config,
}

#[derive(Debug, Clone, Copy)]
struct Config {
    stop_timeout: Timeout,
    kill_timeout: Timeout,
    drain_delay: Duration,
    second_signal: SecondSignal,
    progress_interval: Option<Duration>,
}

/// Both timeouts default to 60 seconds, as in Go's `httpdown`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// How often a shutdown in progress logs what it is waiting for, unless told otherwise.
pub const DEFAULT_PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

impl Default for Config {
    fn default() -> Self {
        Config {
            stop_timeout: Timeout::After(DEFAULT_TIMEOUT),
            kill_timeout: Timeout::After(DEFAULT_TIMEOUT),
            drain_delay: Duration::ZERO,
            second_signal: SecondSignal::Escalate,
            progress_interval: Some(DEFAULT_PROGRESS_INTERVAL),
        }
    }
}

impl Builder {
    /// How long in-flight work may run after drain start before what is left is
    /// force-closed. Default 60 s; `Duration::ZERO` force-closes at drain start.
    pub fn stop_timeout(mut self, timeout: impl Into<Timeout>) -> Self {
        self.config.stop_timeout = timeout.into();
        self
    }

    /// How long to wait after the stop deadline for force-closed tasks to finish before
    /// giving up and reporting what is left. Default 60 s.
    pub fn kill_timeout(mut self, timeout: impl Into<Timeout>) -> Self {
        self.config.kill_timeout = timeout.into();
        self
    }

    /// How long to keep accepting and serving normally after the trigger, while the phase
    /// already reads [`Phase::Draining`] (so readiness checks fail and load balancers stop
    /// sending traffic). Default zero. The stop timer starts after it.
    pub fn drain_delay(mut self, delay: Duration) -> Self {
        self.config.drain_delay = delay;
        self
    }

    /// How often, while waiting, the shutdown logs a progress line such as
    /// `draining: 3 requests, 5 connections left, stop deadline in 7.2s` (a `tracing`
    /// event at `INFO`). Default 1 s; `None` turns them off. Phase changes are logged
    /// either way. Zero is treated as `None`.
    pub fn progress_interval(mut self, interval: impl Into<Option<Duration>>) -> Self {
        self.config.progress_interval = interval.into().filter(|d| !d.is_zero());
        self
    }

    /// What a second SIGTERM/SIGINT does during the shutdown. Default
    /// [`SecondSignal::Escalate`].
    pub fn on_second_signal(mut self, action: SecondSignal) -> Self {
        self.config.second_signal = action;
        self
    }

    /// Builds the controller.
    ///
    /// If called inside a tokio runtime, that runtime is remembered so that
    /// [`Shutdown::trigger`] works from any thread.
    pub fn build(self) -> Shutdown {
        Shutdown {
            inner: Arc::new(Inner {
                config: self.config,
                triggered: CancellationToken::new(),
                escalated: CancellationToken::new(),
                drain: CancellationToken::new(),
                force: CancellationToken::new(),
                done: CancellationToken::new(),
                requests: TaskTracker::new(),
                connections: TaskTracker::new(),
                tasks: TaskTracker::new(),
                servers: TaskTracker::new(),
                driver_started: AtomicBool::new(false),
                draining: AtomicBool::new(false),
                forced: AtomicBool::new(false),
                runtime: Handle::try_current().ok(),
                counters: Counters::default(),
                times: Mutex::new(Times::default()),
                report: OnceLock::new(),
            }),
        }
    }
}

/// Coordinates the graceful shutdown of one or more servers.
///
/// A `Shutdown` is a cheap handle (an [`Arc`]): clone it into signal handlers, servers and
/// layers. It holds the configuration, counts in-flight requests (through
/// [`GracefulLayer`]) and connections (through [`serve`](crate::serve())), and runs the
/// lifecycle once triggered:
///
/// 1. **Trigger** ([`trigger`](Self::trigger), a signal). Sticky and idempotent.
/// 2. **Drain delay** (default zero): still accepting, phase [`Phase::Draining`].
/// 3. **Drain start**: listeners close, idle connections close at once, busy ones close
///    after their current response, HTTP/2 gets GOAWAY. The stop timer starts.
/// 4. **Stop deadline**: in-flight responses are cut (the client sees an error, never a
///    body that looks complete) and connection tasks are dropped. The kill timer starts.
/// 5. **Kill deadline**: stop waiting for tasks that ignore cancellation; report them.
/// 6. **Done** the moment nothing is left, never on a polling tick.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use httpdown::{Outcome, Phase, Shutdown};
///
/// let shutdown = Shutdown::new();
/// assert_eq!(shutdown.phase(), Phase::Running);
/// shutdown.trigger();
/// let report = shutdown.wait().await;
/// assert_eq!(report.outcome(), Outcome::Drained);
/// assert_eq!(shutdown.phase(), Phase::Done);
/// # }
/// ```
#[derive(Clone)]
pub struct Shutdown {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    config: Config,
    /// Cancelled by the first trigger.
    triggered: CancellationToken,
    /// Cancelled to skip straight to the force-close step (second signal).
    escalated: CancellationToken,
    /// Cancelled at drain start (after the drain delay).
    pub(crate) drain: CancellationToken,
    /// Cancelled at the stop deadline: request-level cancellation and connection abort.
    pub(crate) force: CancellationToken,
    /// Cancelled once the report is set.
    done: CancellationToken,
    /// Mirrors of `drain` and `force` for the per-request hot path: one atomic load,
    /// where `CancellationToken::is_cancelled` locks the token's mutex. Each is set
    /// (Release) just before its token is cancelled.
    draining: AtomicBool,
    forced: AtomicBool,
    /// One token per in-flight request (from `call` until the body ends or drops).
    pub(crate) requests: TaskTracker,
    /// One task per accepted connection.
    pub(crate) connections: TaskTracker,
    /// Tasks spawned on behalf of connections (HTTP/2 streams).
    pub(crate) tasks: TaskTracker,
    /// One token per `serve` built and not yet past its accept loop: a trigger that
    /// lands before a server starts still waits for it to start and close its listener.
    pub(crate) servers: TaskTracker,
    driver_started: AtomicBool,
    runtime: Option<Handle>,
    /// Connection and request counters for [`Shutdown::stats`].
    pub(crate) counters: Counters,
    times: Mutex<Times>,
    report: OnceLock<Report>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Times {
    triggered: Option<Instant>,
    drain: Option<Instant>,
    force: Option<Instant>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown::new()
    }
}

impl Shutdown {
    /// A controller with the default configuration: stop and kill timeouts of 60 s each,
    /// no drain delay.
    pub fn new() -> Self {
        Builder {
            config: Config::default(),
        }
        .build()
    }

    /// A builder for a controller with other timeouts.
    pub fn builder() -> Builder {
        Builder {
            config: Config::default(),
        }
    }

    /// A [`GracefulLayer`] that counts requests for this controller.
    pub fn layer(&self) -> GracefulLayer {
        GracefulLayer::from_shutdown(self.clone())
    }

    /// The stop timeout (drain start to stop deadline).
    pub fn stop_timeout(&self) -> Timeout {
        self.inner.config.stop_timeout
    }

    /// The kill timeout (stop deadline to kill deadline).
    pub fn kill_timeout(&self) -> Timeout {
        self.inner.config.kill_timeout
    }

    /// The drain delay (trigger to drain start).
    pub fn drain_delay(&self) -> Duration {
        self.inner.config.drain_delay
    }

    /// What a second signal does.
    pub fn second_signal(&self) -> SecondSignal {
        self.inner.config.second_signal
    }

    /// Starts the shutdown. Sticky and idempotent: later calls join the shutdown under
    /// way; they never restart a timer.
    ///
    /// The lifecycle runs on a task of the tokio runtime that is current here, or else
    /// the one current when the controller was built; if there is neither, it starts
    /// when one of the async methods ([`wait`](Self::wait), ...) is first polled.
    pub fn trigger(&self) {
        if !self.inner.triggered.is_cancelled() {
            tracing::info!(
                stop_timeout = %self.inner.config.stop_timeout,
                kill_timeout = %self.inner.config.kill_timeout,
                drain_delay = ?self.inner.config.drain_delay,
                "shutdown triggered"
            );
        }
        self.inner.triggered.cancel();
        self.inner.start_driver();
    }

    /// Triggers the shutdown if it has not been, and skips straight to the force-close
    /// step: what is left of the drain delay and of the stop timeout is not waited for.
    /// The kill timeout still bounds the wait that follows.
    pub fn force(&self) {
        self.inner.escalated.cancel();
        self.trigger();
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.inner.phase()
    }

    /// Whether the shutdown has been triggered.
    pub fn is_triggered(&self) -> bool {
        self.inner.triggered.is_cancelled()
    }

    /// Whether drain start has passed (listeners closed, connections told to finish).
    pub fn is_drain_started(&self) -> bool {
        self.inner.drain.is_cancelled()
    }

    /// Requests counted by a [`GracefulLayer`] of this controller that have not finished
    /// (their response body has not ended or been dropped).
    pub fn in_flight(&self) -> usize {
        self.inner.requests.len()
    }

    /// Connections accepted by [`serve`](crate::serve()) that are still open.
    pub fn connections(&self) -> usize {
        self.inner.connections.len()
    }

    /// A snapshot of the statistics: phase, in-flight requests, open connections by state,
    /// and totals. See [`Stats`].
    pub fn stats(&self) -> Stats {
        self.inner
            .counters
            .snapshot(self.phase(), self.inner.requests.len())
    }

    /// Whether a readiness check should pass: `false` from the trigger on, drain delay
    /// included. See [`Readiness`](crate::Readiness).
    pub fn is_ready(&self) -> bool {
        !self.is_triggered()
    }

    /// The report, once the shutdown is done.
    pub fn report(&self) -> Option<Report> {
        self.inner.report.get().copied()
    }

    /// Resolves when the shutdown is triggered.
    ///
    /// # Cancel safety
    /// All the phase futures are cancel safe and can be awaited any number of times.
    pub fn triggered(&self) -> impl Future<Output = ()> + Send + 'static {
        let token = self.inner.triggered.clone();
        async move { token.cancelled().await }
    }

    /// Resolves at drain start: after the trigger and the drain delay, when listeners close.
    ///
    /// This is the future to hand to `axum::serve(..).with_graceful_shutdown(..)`.
    pub fn drain_started(&self) -> impl Future<Output = ()> + Send + 'static {
        self.phase_future(self.inner.drain.clone())
    }

    /// Resolves at the stop deadline, when what is left is force-closed.
    ///
    /// It never resolves if everything finished before the stop deadline.
    pub fn stop_deadline(&self) -> impl Future<Output = ()> + Send + 'static {
        self.phase_future(self.inner.force.clone())
    }

    /// Waits until the shutdown is triggered and done, and returns its report.
    pub fn wait(&self) -> impl Future<Output = Report> + Send + 'static {
        let inner = Arc::clone(&self.inner);
        async move {
            inner.triggered.cancelled().await;
            inner.start_driver();
            inner.done.cancelled().await;
            *inner
                .report
                .get()
                .expect("the report is set before done is signalled")
        }
    }

    /// Triggers the shutdown and waits for its report: Go's `Stop`.
    pub fn shutdown(&self) -> impl Future<Output = Report> + Send + 'static {
        self.trigger();
        self.wait()
    }

    /// Whether two handles control the same shutdown.
    pub fn ptr_eq(&self, other: &Shutdown) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    fn phase_future(&self, token: CancellationToken) -> impl Future<Output = ()> + Send + 'static {
        let inner = Arc::clone(&self.inner);
        async move {
            inner.triggered.cancelled().await;
            inner.start_driver();
            token.cancelled().await
        }
    }
}

impl Inner {
    pub(crate) fn phase(&self) -> Phase {
        if self.done.is_cancelled() {
            Phase::Done
        } else if self.force.is_cancelled() {
            Phase::Forcing
        } else if self.triggered.is_cancelled() {
            Phase::Draining
        } else {
            Phase::Running
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        self.done.is_cancelled()
    }

    /// Drain has started (cheap: an atomic load).
    pub(crate) fn is_draining(&self) -> bool {
        // Acquire pairs with the Release store before `drain.cancel()`.
        self.draining.load(Ordering::Acquire)
    }

    /// The stop deadline has passed, or the shutdown was forced (cheap: an atomic load).
    pub(crate) fn is_forced(&self) -> bool {
        // Acquire pairs with the Release store before `force.cancel()`.
        self.forced.load(Ordering::Acquire)
    }

    fn start_driver(self: &Arc<Self>) {
        if !self.triggered.is_cancelled() {
            return;
        }
        // `swap` makes exactly one caller the one that spawns; AcqRel pairs the winner's
        // store with a loser's read so a failed spawn (no runtime) can be retried later.
        if self.driver_started.swap(true, Ordering::AcqRel) {
            return;
        }
        match Handle::try_current().ok().or_else(|| self.runtime.clone()) {
            Some(handle) => {
                handle.spawn(Arc::clone(self).run_driver());
            }
            None => self.driver_started.store(false, Ordering::Release),
        }
    }

    /// Resolves once every connection, connection task and request has finished.
    async fn all_finished(&self) {
        self.connections.wait().await;
        self.tasks.wait().await;
        self.servers.wait().await;
        self.requests.wait().await;
    }

    /// Open connections and in-flight requests. HTTP/2 stream tasks are waited for but
    /// not counted: their streams are counted as requests, their sockets as connections.
    fn left(&self) -> (usize, usize) {
        (self.connections.len(), self.requests.len())
    }

    fn mark(&self, f: impl FnOnce(&mut Times)) -> Times {
        let mut times = self.times.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut times);
        *times
    }

    /// Runs [`drive`](Self::drive). Should it panic, the panic is counted and the
    /// shutdown still ends, at once, with what is left given up on: waiters never hang.
    async fn run_driver(self: Arc<Self>) {
        let driven = catch_panics(Task::Driver, &self.counters, Arc::clone(&self).drive()).await;
        if driven.is_none() && self.report.get().is_none() {
            let now = Instant::now();
            let times = self.mark(|_| {});
            let (connections, requests) = self.left();
            let report = Report::new(
                Outcome::GaveUp {
                    connections,
                    requests,
                },
                times.triggered.unwrap_or(now),
                times.drain.unwrap_or(now),
                times.force,
                now,
                connections,
                requests,
                self.counters.panics(),
            );
            let _ = self.report.set(report);
            // Whatever still waits for drain start or the stop deadline gets it now.
            self.draining.store(true, Ordering::Release);
            self.drain.cancel();
            self.forced.store(true, Ordering::Release);
            self.force.cancel();
            self.done.cancel();
        }
    }

    /// The lifecycle, from trigger to report. Runs on its own task, once.
    async fn drive(self: Arc<Self>) {
        let triggered_at = Instant::now();
        self.mark(|t| t.triggered = Some(triggered_at));

        let delay = self.config.drain_delay;
        if !delay.is_zero() {
            tracing::info!(?delay, "drain delay: still serving, readiness failing");
            let end = triggered_at + delay;
            let mut progress = self.progress(triggered_at);
            loop {
                tokio::select! {
                    biased;
                    _ = self.escalated.cancelled() => break,
                    _ = tokio::time::sleep_until(end) => break,
                    _ = tick(&mut progress) => self.log_progress("drain delay", "drain start", Some(end)),
                }
            }
        }

        let drain_at = Instant::now();
        self.mark(|t| t.drain = Some(drain_at));
        let (connections_at_drain, requests_at_drain) = self.left();
        self.connections.close();
        self.tasks.close();
        self.servers.close();
        self.requests.close();
        self.draining.store(true, Ordering::Release);
        self.drain.cancel();
        metrics_impl::drain_started();
        tracing::info!(
            connections = connections_at_drain,
            requests = requests_at_drain,
            stop_timeout = %self.config.stop_timeout,
            "drain started: listeners closed, connections told to finish"
        );

        let finished = self.all_finished();
        tokio::pin!(finished);
        let stop_at = deadline(drain_at, self.config.stop_timeout);
        let stop = deadline_sleep(stop_at);
        tokio::pin!(stop);
        let mut progress = self.progress(drain_at);
        let drained = loop {
            tokio::select! {
                biased;
                _ = &mut finished => break true,
                _ = self.escalated.cancelled() => break false,
                _ = &mut stop => break false,
                _ = tick(&mut progress) => self.log_progress("draining", "stop deadline", stop_at),
            }
        };

        let outcome = if drained {
            Outcome::Drained
        } else {
            let force_at = Instant::now();
            self.mark(|t| t.force = Some(force_at));
            let (connections, requests) = self.left();
            tracing::warn!(
                connections,
                requests,
                kill_timeout = %self.config.kill_timeout,
                "stop deadline: force-closing what is left"
            );
            self.forced.store(true, Ordering::Release);
            self.force.cancel();
            metrics_impl::forced(connections);
            let kill_at = deadline(force_at, self.config.kill_timeout);
            let kill = deadline_sleep(kill_at);
            tokio::pin!(kill);
            let mut progress = self.progress(force_at);
            loop {
                tokio::select! {
                    biased;
                    _ = &mut finished => break Outcome::Forced { connections, requests },
                    _ = &mut kill => {
                        let (connections, requests) = self.left();
                        tracing::error!(connections, requests, "kill deadline: giving up on what is left");
                        metrics_impl::gave_up();
                        break Outcome::GaveUp { connections, requests };
                    }
                    _ = tick(&mut progress) => self.log_progress("forcing", "kill deadline", kill_at),
                }
            }
        };

        let times = self.mark(|_| {});
        let report = Report::new(
            outcome,
            triggered_at,
            drain_at,
            times.force,
            Instant::now(),
            connections_at_drain,
            requests_at_drain,
            self.counters.panics(),
        );
        metrics_impl::done(report.total());
        tracing::info!(outcome = ?report.outcome(), total = ?report.total(), "shutdown done");
        // The report is set before `done` is cancelled: `wait` relies on it.
        let _ = self.report.set(report);
        self.done.cancel();
    }
}

/// The instant `timeout` after `start`, or `None` for never.
fn deadline(start: Instant, timeout: Timeout) -> Option<Instant> {
    match timeout {
        Timeout::After(d) => start.checked_add(d),
        Timeout::Never => None,
    }
}

/// Sleeps until `deadline`, or forever for `None`.
async fn deadline_sleep(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The next progress tick, or never when progress lines are off.
async fn tick(progress: &mut Option<tokio::time::Interval>) {
    match progress {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

impl Inner {
    /// Progress ticks every `progress_interval` from `start` (the first one interval in).
    fn progress(&self, start: Instant) -> Option<tokio::time::Interval> {
        self.config.progress_interval.map(|every| {
            let mut interval = tokio::time::interval_at(start + every, every);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval
        })
    }

    /// Logs one progress line: `draining: 3 requests, 5 connections left, stop deadline
    /// in 7.2s`.
    fn log_progress(&self, step: &str, next: &str, at: Option<Instant>) {
        let (connections, requests) = self.left();
        let remaining = match at {
            Some(at) => format!(
                "{next} in {:.1}s",
                at.saturating_duration_since(Instant::now()).as_secs_f64()
            ),
            None => format!("no {next}"),
        };
        tracing::info!(
            requests,
            connections,
            "{step}: {requests} {}, {connections} {} left, {remaining}",
            if requests == 1 { "request" } else { "requests" },
            if connections == 1 {
                "connection"
            } else {
                "connections"
            },
        );
    }
}

impl fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        let mut d = f.debug_struct("Shutdown");
        d.field("phase", &inner.phase())
            .field("in_flight", &inner.requests.len())
            .field("connections", &inner.connections.len())
            .field("tasks", &inner.tasks.len())
            .field("stop_timeout", &inner.config.stop_timeout)
            .field("kill_timeout", &inner.config.kill_timeout)
            .field("drain_delay", &inner.config.drain_delay);
        if let Some(report) = inner.report.get() {
            d.field("report", report);
        }
        d.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Graceful;
    use std::convert::Infallible;
    use tower::{service_fn, Service, ServiceExt};

    /// Lets every task that is ready at this instant run, without moving the clock.
    async fn settle() {
        for _ in 0..16 {
            tokio::task::yield_now().await;
        }
    }

    /// A request that never finishes on its own: its counted future is held, not polled.
    async fn stuck_request(shutdown: &Shutdown) -> impl Send {
        let mut svc = Graceful::new(
            service_fn(|_req: http::Request<()>| async {
                std::future::pending::<Result<http::Response<String>, Infallible>>().await
            }),
            shutdown.clone(),
        );
        svc.ready().await.unwrap().call(http::Request::new(()))
    }

    #[test]
    fn defaults_are_sixty_seconds_each() {
        let shutdown = Shutdown::new();
        assert_eq!(
            shutdown.stop_timeout(),
            Timeout::After(Duration::from_secs(60))
        );
        assert_eq!(
            shutdown.kill_timeout(),
            Timeout::After(Duration::from_secs(60))
        );
        assert_eq!(shutdown.drain_delay(), Duration::ZERO);
        assert_eq!(shutdown.second_signal(), SecondSignal::Escalate);
        assert_eq!(shutdown.phase(), Phase::Running);
    }

    #[tokio::test(start_paused = true)]
    async fn no_traffic_returns_at_once() {
        let shutdown = Shutdown::new();
        let start = Instant::now();
        let report = shutdown.shutdown().await;
        assert_eq!(report.outcome(), Outcome::Drained);
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(report.total(), Duration::ZERO);
        assert_eq!(shutdown.phase(), Phase::Done);
        assert_eq!(shutdown.report(), Some(report));
    }

    #[tokio::test(start_paused = true)]
    async fn zero_stop_timeout_forces_at_drain_start() {
        let shutdown = Shutdown::builder().stop_timeout(Duration::ZERO).build();
        let held = stuck_request(&shutdown).await;
        let start = Instant::now();
        shutdown.trigger();
        settle().await;
        assert_eq!(shutdown.phase(), Phase::Forcing);
        drop(held);
        let report = shutdown.wait().await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(
            report.outcome(),
            Outcome::Forced {
                connections: 0,
                requests: 1
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn never_waits_forever_for_work() {
        let shutdown = Shutdown::builder()
            .stop_timeout(Timeout::Never)
            .kill_timeout(Timeout::Never)
            // On paused time, a progress line a second for a year is 31 million wake-ups.
            .progress_interval(None)
            .build();
        let held = stuck_request(&shutdown).await;
        shutdown.trigger();
        tokio::time::sleep(Duration::from_secs(365 * 24 * 3600)).await;
        assert_eq!(shutdown.phase(), Phase::Draining);
        assert_eq!(shutdown.in_flight(), 1);
        drop(held);
        let report = shutdown.wait().await;
        assert_eq!(report.outcome(), Outcome::Drained);
        assert_eq!(report.drain(), Duration::from_secs(365 * 24 * 3600));
    }

    /// B09: the stop timer starts at drain start, the kill timer at the stop deadline;
    /// B08: at the kill deadline the wait ends and the report says what was left.
    #[tokio::test(start_paused = true)]
    async fn stop_timer_starts_at_drain_start_and_kill_timer_at_stop_deadline() {
        let ms = Duration::from_millis;
        let shutdown = Shutdown::builder()
            .drain_delay(ms(5_000))
            .stop_timeout(ms(10_000))
            .kill_timeout(ms(3_000))
            .build();
        let _held = stuck_request(&shutdown).await;
        let t0 = Instant::now();
        shutdown.trigger();
        settle().await;
        assert_eq!(shutdown.phase(), Phase::Draining);

        tokio::time::sleep_until(t0 + ms(4_999)).await;
        settle().await;
        assert!(
            !shutdown.is_drain_started(),
            "drain started before the delay"
        );
        tokio::time::sleep_until(t0 + ms(5_000)).await;
        settle().await;
        assert!(
            shutdown.is_drain_started(),
            "drain not started at the end of the delay"
        );

        tokio::time::sleep_until(t0 + ms(14_999)).await;
        settle().await;
        assert_eq!(
            shutdown.phase(),
            Phase::Draining,
            "forced before the stop deadline"
        );
        tokio::time::sleep_until(t0 + ms(15_000)).await;
        settle().await;
        assert_eq!(
            shutdown.phase(),
            Phase::Forcing,
            "not forced at the stop deadline"
        );

        tokio::time::sleep_until(t0 + ms(17_999)).await;
        settle().await;
        assert_eq!(
            shutdown.phase(),
            Phase::Forcing,
            "gave up before the kill deadline"
        );
        let report = shutdown.wait().await;
        assert_eq!(Instant::now() - t0, ms(18_000));
        assert_eq!(
            report.outcome(),
            Outcome::GaveUp {
                connections: 0,
                requests: 1
            }
        );
        assert!(!report.is_complete());
        assert_eq!(report.drain_delay(), ms(5_000));
        assert_eq!(report.drain(), ms(10_000));
        assert_eq!(report.force(), Some(ms(3_000)));
        assert_eq!(report.total(), ms(18_000));
        assert_eq!(report.requests_at_drain(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn done_as_soon_as_the_last_request_ends() {
        let shutdown = Shutdown::builder()
            .stop_timeout(Duration::from_secs(60))
            .build();
        let held = stuck_request(&shutdown).await;
        let t0 = Instant::now();
        shutdown.trigger();
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1_234)).await;
            drop(held);
        });
        let report = shutdown.wait().await;
        release.await.unwrap();
        assert_eq!(t0.elapsed(), Duration::from_millis(1_234));
        assert_eq!(report.outcome(), Outcome::Drained);
        assert_eq!(report.drain(), Duration::from_millis(1_234));
    }

    /// B10: double and concurrent triggers share one shutdown and one result, and never
    /// restart a timer.
    #[tokio::test(start_paused = true)]
    async fn concurrent_triggers_share_one_shutdown() {
        let shutdown = Shutdown::builder()
            .stop_timeout(Duration::from_secs(2))
            .kill_timeout(Duration::from_secs(1))
            .build();
        let held = stuck_request(&shutdown).await;
        let t0 = Instant::now();
        let waiters: Vec<_> = (0..8)
            .map(|i| {
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(100 * i)).await;
                    shutdown.shutdown().await
                })
            })
            .collect();
        let mut reports = Vec::new();
        for waiter in waiters {
            reports.push(waiter.await.unwrap());
        }
        drop(held);
        assert!(reports.windows(2).all(|w| w[0] == w[1]));
        // Triggered at t0 by the first waiter; the later triggers did not move the deadline.
        assert_eq!(t0.elapsed(), Duration::from_secs(3));
        shutdown.trigger();
        assert_eq!(shutdown.wait().await, reports[0]);
    }

    #[tokio::test(start_paused = true)]
    async fn force_skips_the_drain_delay_and_stop_timeout() {
        let shutdown = Shutdown::builder()
            .drain_delay(Duration::from_secs(5))
            .stop_timeout(Duration::from_secs(60))
            .kill_timeout(Duration::from_secs(1))
            .build();
        let _held = stuck_request(&shutdown).await;
        let t0 = Instant::now();
        shutdown.trigger();
        tokio::time::sleep(Duration::from_millis(10)).await;
        shutdown.force();
        let report = shutdown.wait().await;
        assert_eq!(t0.elapsed(), Duration::from_millis(1_010));
        assert_eq!(report.drain_delay(), Duration::from_millis(10));
        assert!(matches!(
            report.outcome(),
            Outcome::GaveUp { requests: 1, .. }
        ));
    }

    #[test]
    fn trigger_outside_a_runtime_starts_when_awaited() {
        let shutdown = Shutdown::new();
        shutdown.trigger();
        assert_eq!(shutdown.phase(), Phase::Draining);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let report = rt.block_on(shutdown.wait());
        assert_eq!(report.outcome(), Outcome::Drained);
    }

    #[test]
    fn debug_shows_live_state() {
        let shutdown = Shutdown::new();
        let text = format!("{shutdown:?}");
        assert!(text.contains("phase: Running"), "{text}");
        assert!(text.contains("in_flight: 0"), "{text}");
    }
}
