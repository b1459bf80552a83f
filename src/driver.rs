//! The driver: runs one shutdown from its trigger to its report, on a task of its own.
//! It alone moves the lifecycle past the trigger, and it owns the timing: the drain
//! delay, the stop and kill deadlines, the progress lines and the report's times.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::time::Instant;

use crate::lifecycle::{Lifecycle, Step};
use crate::report::{plural, Counts, Limit, Outcome, Report, Timeline};
use crate::shutdown::Config;
use crate::stats::{metrics_impl, Counters};

/// How a wait at one step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waited {
    /// Everything the shutdown waits for has finished.
    Finished,
    /// The step's deadline passed.
    Deadline,
    /// An escalation cut the step short.
    Escalated,
}

pub(crate) struct Driver<'a> {
    config: &'a Config,
    lifecycle: &'a Lifecycle,
    counters: &'a Counters,
    timeline: Timeline,
    /// What the report counts.
    counts: Counts,
}

impl<'a> Driver<'a> {
    pub(crate) fn new(
        config: &'a Config,
        lifecycle: &'a Lifecycle,
        counters: &'a Counters,
    ) -> Self {
        Driver {
            config,
            lifecycle,
            counters,
            timeline: Timeline::new(Instant::now()),
            counts: Counts::default(),
        }
    }

    /// Runs the lifecycle from the trigger to the report.
    pub(crate) async fn run(&mut self) -> Report {
        let triggered = Instant::now();
        self.timeline = Timeline::new(triggered);

        let mut escalated = false;
        // A handover leaves the address served by the next generation: nothing for a load
        // balancer to notice, so no delay.
        let delay = if self.lifecycle.is_handover() {
            Duration::ZERO
        } else {
            self.config.drain_delay
        };
        if !delay.is_zero() {
            tracing::info!(?delay, "drain delay: still serving, readiness failing");
            let end = triggered.checked_add(delay);
            let never = std::future::pending::<()>();
            tokio::pin!(never);
            let waited = self
                .wait("drain delay", "drain start", triggered, end, never, true)
                .await;
            escalated = waited == Waited::Escalated;
        }

        let drain_at = self.start_drain();
        let finished = self.lifecycle.finished();
        tokio::pin!(finished);
        if !escalated {
            let stop_at = after(drain_at, self.config.stop_timeout);
            match self
                .wait(
                    "draining",
                    "stop deadline",
                    drain_at,
                    stop_at,
                    finished.as_mut(),
                    true,
                )
                .await
            {
                Waited::Finished => return self.report(Outcome::Drained),
                Waited::Escalated => escalated = true,
                Waited::Deadline => {}
            }
        }

        let (connections, requests) = self.force_close(escalated);
        let force_at = self.timeline.force_closing.unwrap_or(drain_at);
        let kill_at = after(force_at, self.config.kill_timeout);
        let outcome = match self
            .wait(
                "force-closing",
                "kill deadline",
                force_at,
                kill_at,
                finished,
                false,
            )
            .await
        {
            Waited::Deadline => {
                let (connections, requests) = self.left();
                tracing::error!(
                    connections,
                    requests,
                    "kill deadline: giving up on what is left"
                );
                metrics_impl::gave_up();
                Outcome::GaveUp {
                    connections,
                    requests,
                }
            }
            Waited::Finished | Waited::Escalated => Outcome::ForceClosed {
                connections,
                requests,
            },
        };
        self.report(outcome)
    }

    /// Ends a shutdown whose driver panicked: everything waiting on a step is released at
    /// once, and the report says what was left, given up on.
    pub(crate) fn abandon(&mut self) -> Report {
        if self.timeline.drain_started.is_none() {
            self.start_drain();
        }
        if self.timeline.force_closing.is_none() {
            self.force_close(false);
        }
        let (connections, requests) = self.left();
        self.report(Outcome::GaveUp {
            connections,
            requests,
        })
    }

    /// Drain start: the trackers close, the lifecycle moves on, listeners and connections
    /// see it.
    fn start_drain(&mut self) -> Instant {
        let now = Instant::now();
        self.timeline.drain_started = Some(now);
        self.counts.at_drain = self.left();
        self.counts.background_at_drain = self.lifecycle.background();
        self.lifecycle.close_trackers();
        self.lifecycle.reach(Step::DrainStarted);
        metrics_impl::drain_started();
        let (connections, requests) = self.counts.at_drain;
        // Only what this crate does: a layer alone closes no listener and no connection.
        match self.counters.owns() {
            (true, _) => tracing::info!(
                connections,
                requests,
                stop_timeout = %Limit(self.config.stop_timeout),
                "drain started: listeners closed, connections told to finish"
            ),
            (false, true) => tracing::info!(
                connections,
                requests,
                stop_timeout = %Limit(self.config.stop_timeout),
                "drain started: connections told to finish"
            ),
            (false, false) => tracing::info!(
                requests,
                stop_timeout = %Limit(self.config.stop_timeout),
                "drain started: waiting for requests in flight"
            ),
        }
        now
    }

    /// The stop deadline, or an escalation: what is left is force-closed. Returns what was
    /// left.
    fn force_close(&mut self, escalated: bool) -> (usize, usize) {
        let now = Instant::now();
        self.timeline.force_closing = Some(now);
        if escalated {
            self.timeline.escalated = Some(now);
        }
        let (connections, requests) = self.left();
        self.counts.background_force_closed = self.lifecycle.background();
        if escalated {
            tracing::warn!(
                connections,
                requests,
                kill_timeout = %Limit(self.config.kill_timeout),
                "escalated: force-closing what is left now"
            );
        } else {
            tracing::warn!(
                connections,
                requests,
                kill_timeout = %Limit(self.config.kill_timeout),
                "stop deadline: force-closing what is left"
            );
        }
        self.lifecycle.reach(Step::ForceClosing);
        metrics_impl::force_closed(connections);
        (connections, requests)
    }

    fn report(&mut self, outcome: Outcome) -> Report {
        let report = Report::new(
            outcome,
            &self.timeline,
            Instant::now(),
            Counts {
                panics: self.counters.panics(),
                ..self.counts
            },
        );
        metrics_impl::done(report.total());
        tracing::info!(outcome = ?report.outcome(), total = ?report.total(), "shutdown done");
        report
    }

    /// Open connections and in-flight requests.
    fn left(&self) -> (usize, usize) {
        (self.lifecycle.connections(), self.lifecycle.requests())
    }

    /// Waits at one step until `finished`, the `deadline` (`None`: never) or, if
    /// `escalation` holds, an escalation; logs a progress line every progress interval
    /// counted from `start` (a late tick delays the next ones, it never bursts).
    async fn wait<F: Future<Output = ()>>(
        &self,
        step: &str,
        next: &str,
        start: Instant,
        deadline: Option<Instant>,
        mut finished: Pin<&mut F>,
        escalation: bool,
    ) -> Waited {
        let deadline_passed = sleep_until(deadline);
        tokio::pin!(deadline_passed);
        let escalated = async {
            if escalation {
                self.lifecycle.escalated().await
            } else {
                std::future::pending().await
            }
        };
        tokio::pin!(escalated);
        let mut next_tick = self
            .config
            .progress_interval
            .and_then(|every| start.checked_add(every));
        loop {
            tokio::select! {
                biased;
                () = &mut finished => return Waited::Finished,
                () = &mut escalated => return Waited::Escalated,
                () = &mut deadline_passed => return Waited::Deadline,
                () = sleep_until(next_tick) => {
                    self.log_progress(step, next, deadline);
                    next_tick = self
                        .config
                        .progress_interval
                        .and_then(|every| Instant::now().checked_add(every));
                }
            }
        }
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
            "{step}: {}, {} left, {remaining}",
            plural(requests, "request"),
            plural(connections, "connection"),
        );
    }
}

/// `start + timeout`, or `None` for never (no timeout, or one too long for the clock).
fn after(start: Instant, timeout: Option<Duration>) -> Option<Instant> {
    timeout.and_then(|timeout| start.checked_add(timeout))
}

/// Sleeps until `at`, or forever for `None`.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
