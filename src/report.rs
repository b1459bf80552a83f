//! The [`Report`] a finished shutdown leaves behind.

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

/// How a shutdown ended.
///
/// Timeouts are not errors, as in Go's `httpdown`: a force-closed shutdown is a designed
/// outcome. Only [`GaveUp`](Outcome::GaveUp) means work may still be running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Everything finished before the stop deadline.
    Drained,
    /// The stop deadline passed (or the shutdown was escalated): this many connections
    /// and requests were still open and were force-closed, and all of them then finished
    /// before the kill deadline.
    ForceClosed {
        /// Connections force-closed.
        connections: usize,
        /// Requests still in flight when they were force-closed.
        requests: usize,
    },
    /// The kill deadline passed with this much still running (for example a handler that
    /// blocks its thread and so ignores cancellation).
    GaveUp {
        /// Connections still open at the kill deadline.
        connections: usize,
        /// Requests still in flight at the kill deadline.
        requests: usize,
    },
}

/// When each step of a shutdown happened, kept by the driver.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeline {
    pub(crate) triggered: Instant,
    pub(crate) drain_started: Option<Instant>,
    pub(crate) force_closing: Option<Instant>,
    /// Set when force-closing began by escalation rather than at the stop deadline.
    pub(crate) escalated: Option<Instant>,
}

impl Timeline {
    pub(crate) fn new(triggered: Instant) -> Self {
        Timeline {
            triggered,
            drain_started: None,
            force_closing: None,
            escalated: None,
        }
    }
}

/// What a shutdown did and how long each phase took.
///
/// Its `Display` is one line, suitable for a log:
/// `shutdown drained in 1.2ms (drain delay 0ns, drain 1.2ms; 1 connection and 1 request at drain start)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    outcome: Outcome,
    drain_delay: Duration,
    drain: Duration,
    force: Option<Duration>,
    escalated: Option<Duration>,
    total: Duration,
    connections_at_drain: usize,
    requests_at_drain: usize,
    background_at_drain: usize,
    background_force_closed: usize,
    panics: u64,
}

/// What the driver counted, for the report.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Counts {
    /// Connections and requests open at drain start.
    pub(crate) at_drain: (usize, usize),
    /// Background tasks running at drain start.
    pub(crate) background_at_drain: usize,
    /// Background tasks still running when force-closing began.
    pub(crate) background_force_closed: usize,
    /// Tasks that panicked.
    pub(crate) panics: u64,
}

impl Report {
    pub(crate) fn new(
        outcome: Outcome,
        timeline: &Timeline,
        done: Instant,
        counts: Counts,
    ) -> Self {
        let (connections_at_drain, requests_at_drain) = counts.at_drain;
        let since = |from: Instant, to: Instant| to.saturating_duration_since(from);
        let drain_start = timeline.drain_started.unwrap_or(done);
        let drain_end = timeline.force_closing.unwrap_or(done);
        Report {
            outcome,
            drain_delay: since(timeline.triggered, drain_start),
            drain: since(drain_start, drain_end),
            force: timeline.force_closing.map(|at| since(at, done)),
            escalated: timeline.escalated.map(|at| since(timeline.triggered, at)),
            total: since(timeline.triggered, done),
            connections_at_drain,
            requests_at_drain,
            background_at_drain: counts.background_at_drain,
            background_force_closed: counts.background_force_closed,
            panics: counts.panics,
        }
    }

    /// How the shutdown ended.
    pub fn outcome(&self) -> Outcome {
        self.outcome
    }

    /// Whether the shutdown ended as designed: drained, or forced and then finished.
    /// `false` only when it gave up at the kill deadline.
    pub fn is_complete(&self) -> bool {
        !matches!(self.outcome, Outcome::GaveUp { .. })
    }

    /// Time from the trigger to drain start.
    pub fn drain_delay(&self) -> Duration {
        self.drain_delay
    }

    /// Time from drain start to the end of the drain: when the last work finished, or the
    /// stop deadline (or the escalation).
    pub fn drain(&self) -> Duration {
        self.drain
    }

    /// Time from the stop deadline (or the escalation) to the end: when the last
    /// force-closed task finished, or the kill deadline. `None` when nothing was
    /// force-closed.
    pub fn force(&self) -> Option<Duration> {
        self.force
    }

    /// When the shutdown was escalated (a second signal, [`Shutdown::escalate`]), as the
    /// time from the trigger: force-closing then began at once instead of at the stop
    /// deadline. `None` when it was not escalated before force-closing.
    ///
    /// [`Shutdown::escalate`]: crate::Shutdown::escalate
    pub fn escalated(&self) -> Option<Duration> {
        self.escalated
    }

    /// Time from the trigger to the end.
    pub fn total(&self) -> Duration {
        self.total
    }

    /// Connections open at drain start (upgraded ones included).
    pub fn connections_at_drain(&self) -> usize {
        self.connections_at_drain
    }

    /// Requests in flight at drain start.
    pub fn requests_at_drain(&self) -> usize {
        self.requests_at_drain
    }

    /// Background tasks ([`Shutdown::spawn`](crate::Shutdown::spawn)) running at drain
    /// start.
    pub fn background_at_drain(&self) -> usize {
        self.background_at_drain
    }

    /// Background tasks still running when force-closing began, and so dropped.
    pub fn background_force_closed(&self) -> usize {
        self.background_force_closed
    }

    /// Tasks spawned by the crate that panicked before the shutdown ended (connections,
    /// whose HTTP/1 handlers run inside them, HTTP/2 streams, and the crate's own tasks),
    /// as in [`Stats::panics`](crate::Stats::panics). A panic ends only its own task and
    /// never holds the shutdown; each is logged at `ERROR`.
    pub fn panics(&self) -> u64 {
        self.panics
    }
}

/// Displays a timeout: `10s`, or `never` for none.
pub(crate) struct Limit(pub(crate) Option<Duration>);

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(d) => write!(f, "{d:?}"),
            None => f.write_str("never"),
        }
    }
}

/// `1 request`, `2 requests`.
pub(crate) fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.outcome {
            Outcome::Drained => write!(f, "shutdown drained in {:?}", self.total)?,
            Outcome::ForceClosed {
                connections,
                requests,
            } => {
                write!(
                    f,
                    "shutdown forced in {:?}: force-closed {} and {} ",
                    self.total,
                    plural(connections, "connection"),
                    plural(requests, "request"),
                )?;
                match self.escalated {
                    Some(at) => write!(f, "on escalation, {at:?} after the trigger")?,
                    None => f.write_str("at the stop deadline")?,
                }
            }
            Outcome::GaveUp {
                connections,
                requests,
            } => write!(
                f,
                "shutdown gave up after {:?}: {} and {} left at the kill deadline",
                self.total,
                plural(connections, "connection"),
                plural(requests, "request"),
            )?,
        }
        write!(
            f,
            " (drain delay {:?}, drain {:?}",
            self.drain_delay, self.drain
        )?;
        if let Some(force) = self.force {
            write!(f, ", force {force:?}")?;
        }
        write!(
            f,
            "; {} and {} at drain start",
            plural(self.connections_at_drain, "connection"),
            plural(self.requests_at_drain, "request"),
        )?;
        if self.background_at_drain > 0 {
            write!(
                f,
                ", {}",
                plural(self.background_at_drain, "background task")
            )?;
            if self.background_force_closed > 0 {
                write!(f, " ({} force-closed)", self.background_force_closed)?;
            }
        }
        if self.panics > 0 {
            let panics = usize::try_from(self.panics).unwrap_or(usize::MAX);
            write!(f, "; {} panicked", plural(panics, "task"))?;
        }
        f.write_str(")")
    }
}
