//! The [`Shutdown`] controller: configuration, phase, counts, the report, and the start
//! of the driver that runs the lifecycle.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::runtime::Handle;
use tracing::instrument::WithSubscriber;

use crate::driver::Driver;
use crate::lifecycle::{Lifecycle, Mode, Step};
use crate::report::{Limit, Report};
use crate::stats::Counters;
use crate::task::{catch_panics, log_quietly, quiet_logs, Task};
use crate::{GracefulLayer, Stats};

/// Where a [`Shutdown`] is in its lifecycle.
///
/// The phases only move forward: `Running` → `Draining` → `ForceClosing` → `Done`
/// (`ForceClosing` is skipped when everything finished before the stop deadline).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Phase {
    /// Not triggered: serving normally.
    Running,
    /// Triggered. During the drain delay the listeners stay open and requests are served
    /// normally; from drain start on the listeners are closed, every connection has been
    /// told to finish, and the stop timer runs.
    Draining,
    /// The stop deadline passed (or the shutdown was escalated): whatever was left has
    /// been force-closed, and the kill timer runs.
    ForceClosing,
    /// Shutdown finished; the [`Report`] is available.
    Done,
}

impl Phase {
    pub(crate) fn of(step: Step) -> Phase {
        match step {
            Step::Running => Phase::Running,
            Step::Triggered | Step::DrainStarted => Phase::Draining,
            Step::ForceClosing => Phase::ForceClosing,
            Step::Done => Phase::Done,
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Running => "running",
            Phase::Draining => "draining",
            Phase::ForceClosing => "force-closing",
            Phase::Done => "done",
        })
    }
}

/// What a second SIGTERM or SIGINT does while a shutdown is already under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SecondSignal {
    /// Escalate: skip what is left of the drain delay and the stop timeout, and
    /// force-close now. The kill timeout still bounds the wait that follows.
    #[default]
    Escalate,
    /// Log it and carry on with the shutdown already under way.
    Ignore,
}

/// Both timeouts default to 60 seconds, as in Go's `httpdown`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// How often a shutdown in progress logs what it is waiting for, unless told otherwise.
pub const DEFAULT_PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// The configuration of a [`Shutdown`]. Every value is valid: durations too long to add
/// to the clock (`Duration::MAX`) mean "never".
#[derive(Debug, Clone, Copy)]
pub(crate) struct Config {
    /// Drain start to stop deadline; `None`: never.
    pub(crate) stop_timeout: Option<Duration>,
    /// Stop deadline to kill deadline; `None`: never.
    pub(crate) kill_timeout: Option<Duration>,
    /// Trigger to drain start.
    pub(crate) drain_delay: Duration,
    pub(crate) second_signal: SecondSignal,
    /// `None`: no progress lines.
    pub(crate) progress_interval: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            stop_timeout: Some(DEFAULT_TIMEOUT),
            kill_timeout: Some(DEFAULT_TIMEOUT),
            drain_delay: Duration::ZERO,
            second_signal: SecondSignal::Escalate,
            progress_interval: Some(DEFAULT_PROGRESS_INTERVAL),
        }
    }
}

/// Builds a [`Shutdown`] with a configuration of its own.
///
/// Every value is valid: `Duration::ZERO` means "at once", `None` (or a duration too long
/// to add to the clock, such as `Duration::MAX`) means "never".
///
/// ```
/// use std::time::Duration;
/// use httpdown::Shutdown;
///
/// let shutdown = Shutdown::builder()
///     .stop_timeout(Duration::from_secs(10))
///     .kill_timeout(None) // wait for as long as it takes
///     .build();
/// assert_eq!(shutdown.stop_timeout(), Some(Duration::from_secs(10)));
/// assert_eq!(shutdown.kill_timeout(), None);
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct Builder {
    config: Config,
}

impl Builder {
    /// How long in-flight work may run after drain start before what is left is
    /// force-closed. Default 60 s; `Duration::ZERO` force-closes at drain start; `None`
    /// waits for as long as it takes.
    pub fn stop_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.config.stop_timeout = timeout.into();
        self
    }

    /// How long to wait after the stop deadline for force-closed tasks to finish before
    /// giving up and reporting what is left. Default 60 s; `None` waits for as long as
    /// it takes.
    pub fn kill_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
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
    /// event at `INFO`). Default 1 s; `None` (or zero) turns them off. The steps
    /// themselves are logged either way.
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
            shared: Arc::new(Shared {
                config: self.config,
                lifecycle: Lifecycle::default(),
                counters: Counters::default(),
                report: OnceLock::new(),
                driver_started: AtomicBool::new(false),
                signals: AtomicBool::new(false),
                runtime: Handle::try_current().ok(),
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
/// 4. **Stop deadline**: what is left is force-closed: in-flight responses end with an
///    error (never a body that looks complete) and connection tasks are dropped. The
///    kill timer starts. An [escalation](Self::escalate) skips here at once.
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
    shared: Arc<Shared>,
}

struct Shared {
    config: Config,
    lifecycle: Lifecycle,
    counters: Counters,
    /// Set once, by the driver, before the lifecycle reaches `Done`.
    report: OnceLock<Report>,
    /// Whether the driver task has been spawned.
    driver_started: AtomicBool,
    /// Whether `trigger_on_signals` has installed its handlers (once per controller).
    signals: AtomicBool,
    /// The runtime current when the controller was built, to spawn the driver from a
    /// trigger outside any runtime.
    runtime: Option<Handle>,
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
        Shutdown::builder().build()
    }

    /// A builder for a controller with another configuration.
    pub fn builder() -> Builder {
        Builder {
            config: Config::default(),
        }
    }

    /// A [`GracefulLayer`] that counts requests for this controller.
    pub fn layer(&self) -> GracefulLayer {
        GracefulLayer::from_shutdown(self.clone())
    }

    /// The stop timeout (drain start to stop deadline); `None`: never.
    pub fn stop_timeout(&self) -> Option<Duration> {
        self.shared.config.stop_timeout
    }

    /// The kill timeout (stop deadline to kill deadline); `None`: never.
    pub fn kill_timeout(&self) -> Option<Duration> {
        self.shared.config.kill_timeout
    }

    /// The drain delay (trigger to drain start).
    pub fn drain_delay(&self) -> Duration {
        self.shared.config.drain_delay
    }

    /// What a second signal does.
    pub fn second_signal(&self) -> SecondSignal {
        self.shared.config.second_signal
    }

    /// Starts the shutdown. Sticky and idempotent: later calls join the shutdown under
    /// way; they never restart a timer.
    ///
    /// The lifecycle runs on a task of the tokio runtime that is current here, or else
    /// the one current when the controller was built; if there is neither, it starts
    /// when one of the async methods ([`wait`](Self::wait), ...) is first polled.
    pub fn trigger(&self) {
        self.trigger_by(None);
    }

    /// Triggers the shutdown as a handover: the listening sockets go on being served by
    /// the next generation of the process (see the `restart` feature's `Upgrader`, or
    /// your own), so this one only has to finish what it holds.
    ///
    /// Compared with [`trigger`](Self::trigger): no drain delay (nothing changes for a
    /// load balancer), [`readiness`](Self::readiness) stays `200`, [`serve`](crate::serve())
    /// closes its listeners at once without the final-stop care of new handshakes (B55),
    /// and idle HTTP/1 connections close the safe way
    /// ([`IdleClose::AfterNextRequest`](crate::IdleClose::AfterNextRequest) unless a
    /// server chose otherwise). The stop and kill deadlines are the same.
    ///
    /// Returns `false`, and does nothing more than `trigger`, if the shutdown had already
    /// been triggered: a stop under way stays a stop.
    pub fn trigger_handover(&self) -> bool {
        self.trigger_handover_with(true)
    }

    /// [`trigger_handover`](Self::trigger_handover); `sockets_shared`: whether the next
    /// generation serves this process's listening sockets themselves (`false`: sockets of
    /// its own on the same address, `SO_REUSEPORT`), in which case each listener closes
    /// with a final stop's care for new connections.
    pub(crate) fn trigger_handover_with(&self, sockets_shared: bool) -> bool {
        let handover = self.lifecycle().hand_over(sockets_shared);
        if handover {
            self.trigger_by(Some(&"a handover to the next generation"));
        } else {
            self.trigger();
        }
        handover
    }

    /// Whether the shutdown is a handover ([`trigger_handover`](Self::trigger_handover)).
    pub fn is_handover(&self) -> bool {
        self.lifecycle().is_handover()
    }

    /// Triggers, saying what did (a signal's name) in the one line it logs.
    pub(crate) fn trigger_by(&self, cause: Option<&dyn fmt::Display>) {
        let config = &self.shared.config;
        // A plain trigger decides a stop unless a handover was decided before it.
        self.lifecycle().decide(Mode::Stop);
        if self.lifecycle().reach(Step::Triggered) {
            let (stop, kill, delay) = (
                Limit(config.stop_timeout),
                Limit(config.kill_timeout),
                config.drain_delay,
            );
            log_quietly(|| match cause {
                Some(cause) => tracing::info!(
                    stop_timeout = %stop,
                    kill_timeout = %kill,
                    drain_delay = ?delay,
                    "shutdown triggered by {cause}"
                ),
                None => tracing::info!(
                    stop_timeout = %stop,
                    kill_timeout = %kill,
                    drain_delay = ?delay,
                    "shutdown triggered"
                ),
            });
        }
        self.start_driver();
    }

    /// Marks the signal handlers as installed; `false` if they already were.
    pub(crate) fn install_signals(&self) -> bool {
        !self.shared.signals.swap(true, Ordering::AcqRel)
    }

    /// Escalates: triggers the shutdown if it has not been, and skips straight to
    /// force-closing what is left, without waiting for what remains of the drain delay
    /// or the stop timeout. The kill timeout still bounds the wait that follows. The
    /// [`Report`] says it was escalated.
    pub fn escalate(&self) {
        self.lifecycle().escalate();
        self.trigger();
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        Phase::of(self.lifecycle().step())
    }

    /// Whether the shutdown has been triggered: from here on a readiness check fails
    /// (see [`Readiness`](crate::Readiness)).
    pub fn is_triggered(&self) -> bool {
        self.lifecycle().reached(Step::Triggered)
    }

    /// Whether drain start has passed (listeners closed, connections told to finish).
    pub fn is_drain_started(&self) -> bool {
        self.lifecycle().reached(Step::DrainStarted)
    }

    /// Requests counted for this controller (by [`serve`](crate::serve()) or a
    /// [`GracefulLayer`]) that have not finished: their response body has not ended or
    /// been dropped.
    pub fn in_flight(&self) -> usize {
        self.lifecycle().requests()
    }

    /// Connections accepted by [`serve`](crate::serve()) that are still open.
    pub fn connections(&self) -> usize {
        self.lifecycle().connections()
    }

    /// A snapshot of the statistics: phase, in-flight requests, open connections by state,
    /// and totals. See [`Stats`].
    pub fn stats(&self) -> Stats {
        self.shared
            .counters
            .snapshot(self.phase(), self.in_flight())
    }

    /// The report, once the shutdown is done.
    pub fn report(&self) -> Option<Report> {
        self.shared.report.get().copied()
    }

    /// Resolves when the shutdown is triggered.
    ///
    /// # Cancel safety
    /// All the phase futures are cancel safe and can be awaited any number of times.
    pub fn triggered(&self) -> impl Future<Output = ()> + Send + 'static {
        self.lifecycle().reaching(Step::Triggered)
    }

    /// Resolves at drain start: after the trigger and the drain delay, when listeners close.
    ///
    /// This is the future to hand to `axum::serve(..).with_graceful_shutdown(..)`.
    pub fn drain_started(&self) -> impl Future<Output = ()> + Send + 'static {
        self.step_future(Step::DrainStarted)
    }

    /// Resolves at the stop deadline (or an escalation), when what is left is
    /// force-closed.
    ///
    /// It never resolves if everything finished before the stop deadline.
    pub fn stop_deadline(&self) -> impl Future<Output = ()> + Send + 'static {
        self.step_future(Step::ForceClosing)
    }

    /// Waits until the shutdown is triggered and done, and returns its report.
    pub fn wait(&self) -> impl Future<Output = Report> + Send + 'static {
        let shutdown = self.clone();
        async move {
            shutdown.step_future(Step::Done).await;
            *shutdown
                .shared
                .report
                .get()
                .expect("the report is set before the lifecycle is done")
        }
    }

    /// Resolves when `step` is reached; the driver is started when the trigger has
    /// happened, if it has not been (a trigger outside any runtime).
    fn step_future(&self, step: Step) -> impl Future<Output = ()> + Send + 'static {
        let shutdown = self.clone();
        async move {
            shutdown.triggered().await;
            shutdown.start_driver();
            shutdown.lifecycle().reaching(step).await;
        }
    }

    /// The lifecycle: its step, its wake-ups and its trackers.
    #[inline]
    pub(crate) fn lifecycle(&self) -> &Lifecycle {
        &self.shared.lifecycle
    }

    /// The runtime current when the controller was built.
    pub(crate) fn runtime(&self) -> Option<Handle> {
        self.shared.runtime.clone()
    }

    /// The counters behind [`Stats`].
    #[inline]
    pub(crate) fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    /// Whether two handles control the same shutdown.
    pub(crate) fn same_as(&self, other: &Shutdown) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// Spawns the driver once the shutdown is triggered, exactly once.
    fn start_driver(&self) {
        if !self.is_triggered() {
            return;
        }
        // `swap` makes exactly one caller the one that spawns; AcqRel pairs the winner's
        // store with a loser's read so a failed spawn (no runtime) can be retried later.
        if self.shared.driver_started.swap(true, Ordering::AcqRel) {
            return;
        }
        match Handle::try_current()
            .ok()
            .or_else(|| self.shared.runtime.clone())
        {
            Some(handle) => {
                handle.spawn(self.clone().drive());
            }
            None => self.shared.driver_started.store(false, Ordering::Release),
        }
    }

    /// Runs the lifecycle from the trigger to the report, its log lines unable to stop it
    /// (a subscriber may panic when its writer fails). Should the driver panic all the
    /// same, the panic is counted and the shutdown still ends at once, with what is left
    /// given up on, so that waiters never hang.
    async fn drive(self) {
        let shared = &self.shared;
        let mut driver = Driver::new(&shared.config, &shared.lifecycle, &shared.counters);
        let run = driver.run().with_subscriber(quiet_logs());
        let report = match catch_panics(Task::Driver, &shared.counters, run).await {
            Some(report) => report,
            None => tracing::dispatcher::with_default(&quiet_logs(), || driver.abandon()),
        };
        // The report is set before `Done` is reached: `wait` relies on it.
        let _ = shared.report.set(report);
        shared.lifecycle.reach(Step::Done);
    }
}

impl fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let config = &self.shared.config;
        let mut d = f.debug_struct("Shutdown");
        d.field("phase", &self.phase())
            .field("in_flight", &self.in_flight())
            .field("connections", &self.connections())
            .field("stop_timeout", &config.stop_timeout)
            .field("kill_timeout", &config.kill_timeout)
            .field("drain_delay", &config.drain_delay);
        if let Some(report) = self.shared.report.get() {
            d.field("report", report);
        }
        d.finish()
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Outcome;
    use crate::Graceful;
    use std::convert::Infallible;
    use tokio::time::Instant;
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

    /// Each getter returns what was configured (not the default).
    #[test]
    fn getters_return_what_was_configured() {
        let shutdown = Shutdown::builder()
            .stop_timeout(Duration::from_secs(3))
            .kill_timeout(Duration::from_secs(4))
            .drain_delay(Duration::from_secs(2))
            .on_second_signal(SecondSignal::Ignore)
            .build();
        assert_eq!(shutdown.stop_timeout(), Some(Duration::from_secs(3)));
        assert_eq!(shutdown.kill_timeout(), Some(Duration::from_secs(4)));
        assert_eq!(shutdown.drain_delay(), Duration::from_secs(2));
        assert_eq!(shutdown.second_signal(), SecondSignal::Ignore);
    }

    /// Background work spawned from a thread outside any runtime runs on the runtime the
    /// controller was built in.
    #[test]
    fn spawn_outside_a_runtime_uses_the_one_it_was_built_in() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let shutdown = runtime.block_on(async { Shutdown::new() });
        let spawned = std::thread::spawn(move || shutdown.spawn(|_drain| async { 7 }))
            .join()
            .unwrap()
            .expect("spawned on the runtime the controller was built in");
        assert_eq!(runtime.block_on(spawned).unwrap(), Some(7));
    }

    #[test]
    fn defaults_are_sixty_seconds_each() {
        let shutdown = Shutdown::new();
        assert_eq!(shutdown.stop_timeout(), Some(Duration::from_secs(60)));
        assert_eq!(shutdown.kill_timeout(), Some(Duration::from_secs(60)));
        assert_eq!(shutdown.drain_delay(), Duration::ZERO);
        assert_eq!(shutdown.second_signal(), SecondSignal::Escalate);
        assert_eq!(shutdown.phase(), Phase::Running);
    }

    #[tokio::test(start_paused = true)]
    async fn no_traffic_returns_at_once() {
        let shutdown = Shutdown::new();
        let start = Instant::now();
        let report = {
            shutdown.trigger();
            shutdown.wait().await
        };
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
        assert_eq!(shutdown.phase(), Phase::ForceClosing);
        drop(held);
        let report = shutdown.wait().await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(
            report.outcome(),
            Outcome::ForceClosed {
                connections: 0,
                requests: 1
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn never_waits_forever_for_work() {
        let shutdown = Shutdown::builder()
            .stop_timeout(None)
            .kill_timeout(None)
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
            Phase::ForceClosing,
            "not forced at the stop deadline"
        );

        tokio::time::sleep_until(t0 + ms(17_999)).await;
        settle().await;
        assert_eq!(
            shutdown.phase(),
            Phase::ForceClosing,
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
                    {
                        shutdown.trigger();
                        shutdown.wait().await
                    }
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
        shutdown.escalate();
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

    /// No configuration value panics or hangs: `Duration::MAX` anywhere means "never"
    /// (and a zero progress interval means no progress lines).
    #[tokio::test(start_paused = true)]
    async fn duration_max_means_never_everywhere() {
        // Stop and kill timeouts: wait for the work, however long.
        let shutdown = Shutdown::builder()
            .stop_timeout(Duration::MAX)
            .kill_timeout(Duration::MAX)
            .progress_interval(Duration::MAX)
            .build();
        let held = stuck_request(&shutdown).await;
        shutdown.trigger();
        tokio::time::sleep(Duration::from_secs(100 * 365 * 24 * 3600)).await;
        assert_eq!(shutdown.phase(), Phase::Draining);
        drop(held);
        assert_eq!(shutdown.wait().await.outcome(), Outcome::Drained);

        // A drain delay that never ends: still serving, until an escalation.
        let shutdown = Shutdown::builder()
            .drain_delay(Duration::MAX)
            .kill_timeout(Duration::from_secs(1))
            // On paused time, a progress line a second for ten years is 315 million
            // wake-ups.
            .progress_interval(None)
            .build();
        shutdown.trigger();
        tokio::time::sleep(Duration::from_secs(10 * 365 * 24 * 3600)).await;
        assert!(!shutdown.is_drain_started());
        let t0 = Instant::now();
        shutdown.escalate();
        let report = shutdown.wait().await;
        assert_eq!(t0.elapsed(), Duration::ZERO);
        assert_eq!(
            report.outcome(),
            Outcome::ForceClosed {
                connections: 0,
                requests: 0
            }
        );

        // The largest timeouts the clock can still add: far away, never a panic.
        let far = Duration::from_secs(u64::MAX / 4);
        let shutdown = Shutdown::builder()
            .stop_timeout(far)
            .kill_timeout(far)
            .drain_delay(Duration::ZERO)
            .progress_interval(far)
            .build();
        let held = stuck_request(&shutdown).await;
        shutdown.trigger();
        tokio::time::sleep(Duration::from_secs(3600)).await;
        drop(held);
        assert_eq!(shutdown.wait().await.outcome(), Outcome::Drained);
        assert_eq!(
            Shutdown::builder()
                .progress_interval(Duration::ZERO)
                .build()
                .phase(),
            Phase::Running
        );
    }

    /// An escalation during the drain is reported as one, with its time, and is not the
    /// stop deadline.
    #[tokio::test(start_paused = true)]
    async fn an_escalation_is_reported_as_such() {
        let shutdown = Shutdown::builder()
            .stop_timeout(Duration::from_secs(60))
            .kill_timeout(Duration::from_secs(5))
            .build();
        let held = stuck_request(&shutdown).await;
        shutdown.trigger();
        tokio::time::sleep(Duration::from_millis(10)).await;
        shutdown.escalate();
        settle().await;
        assert_eq!(shutdown.phase(), Phase::ForceClosing);
        tokio::time::sleep(Duration::from_millis(5)).await;
        drop(held);
        let report = shutdown.wait().await;
        assert_eq!(report.escalated(), Some(Duration::from_millis(10)));
        assert_eq!(report.drain(), Duration::from_millis(10));
        assert_eq!(report.force(), Some(Duration::from_millis(5)));
        assert_eq!(
            report.outcome(),
            Outcome::ForceClosed {
                connections: 0,
                requests: 1
            }
        );
        let line = report.to_string();
        assert!(
            line.contains("on escalation, 10ms after the trigger"),
            "{line}"
        );

        // Not escalated: the stop deadline.
        let shutdown = Shutdown::builder()
            .stop_timeout(Duration::from_secs(1))
            .build();
        let held = stuck_request(&shutdown).await;
        shutdown.trigger();
        tokio::time::sleep(Duration::from_secs(2)).await;
        drop(held);
        let report = shutdown.wait().await;
        assert_eq!(report.escalated(), None);
        assert!(
            report.to_string().contains("at the stop deadline"),
            "{report}"
        );
    }
}
