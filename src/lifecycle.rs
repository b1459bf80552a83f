//! The lifecycle of one shutdown: the step it has reached (the one source of truth for
//! the phase), the wake-ups of whoever waits for a step, and the trackers of the work the
//! shutdown waits for.
//!
//! Only the driver moves the lifecycle past the trigger; everyone else reads the step,
//! waits for one, or takes a tracker token.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, Waker};

use pin_project_lite::pin_project;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;

/// The steps of a shutdown, in order. Each is reached once and never left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub(crate) enum Step {
    /// Serving normally.
    Running = 0,
    /// Triggered; the drain delay runs.
    Triggered = 1,
    /// Drain start: listeners close, connections are told to finish, the stop timer runs.
    DrainStarted = 2,
    /// The stop deadline (or an escalation): what is left is force-closed, the kill timer
    /// runs.
    ForceClosing = 3,
    /// Finished; the report is set.
    Done = 4,
}

impl Step {
    fn from_u8(value: u8) -> Step {
        match value {
            0 => Step::Running,
            1 => Step::Triggered,
            2 => Step::DrainStarted,
            3 => Step::ForceClosing,
            _ => Step::Done,
        }
    }
}

/// What kind of shutdown this is, decided once, before the trigger, by whichever trigger
/// comes first (stored in [`Lifecycle`] as a `u8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Mode {
    /// Not triggered yet.
    Undecided = 0,
    /// A real stop: the address goes unserved.
    Stop = 1,
    /// A handover to the next generation, which serves sockets of its own on the same
    /// address.
    Handover = 2,
    /// A handover whose next generation serves this process's listening sockets.
    HandoverShared = 3,
}

impl Mode {
    fn from_u8(value: u8) -> Mode {
        match value {
            0 => Mode::Undecided,
            1 => Mode::Stop,
            2 => Mode::Handover,
            _ => Mode::HandoverShared,
        }
    }
}

/// See the [module documentation](self).
#[derive(Debug)]
pub(crate) struct Lifecycle {
    /// The step reached. Written with `fetch_max` (so it only moves forward) before the
    /// step's token is cancelled; see [`Lifecycle::reach`].
    step: AtomicU8,
    /// Wake-ups, one per step, cancelled once the step is stored. They carry no state of
    /// their own: the step is the truth.
    triggered: CancellationToken,
    drain_started: CancellationToken,
    force_closing: CancellationToken,
    done: CancellationToken,
    /// A request to skip to force-closing now (a second signal); the driver acts on it.
    escalation: CancellationToken,
    /// One token per request in flight (from `call` until its body ends or is dropped).
    requests: TaskTracker,
    /// One token per open connection accepted by `serve`, until its socket closes.
    connections: TaskTracker,
    /// Tasks spawned for connections (HTTP/2 streams): waited for, not counted.
    tasks: TaskTracker,
    /// One token per `serve` built and not yet past its accept loop, so a trigger that
    /// lands before a server runs still waits for it to close its listener.
    servers: TaskTracker,
    /// Background work registered with the shutdown (`Shutdown::spawn`).
    background: TaskTracker,
    /// The [`Mode`], decided by one compare-and-swap before the step leaves `Running`, so
    /// a handover and a plain trigger racing each other agree on which one it is.
    mode: AtomicU8,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            step: AtomicU8::new(Step::Running as u8),
            triggered: CancellationToken::new(),
            drain_started: CancellationToken::new(),
            force_closing: CancellationToken::new(),
            done: CancellationToken::new(),
            escalation: CancellationToken::new(),
            requests: TaskTracker::new(),
            connections: TaskTracker::new(),
            tasks: TaskTracker::new(),
            servers: TaskTracker::new(),
            background: TaskTracker::new(),
            mode: AtomicU8::new(Mode::Undecided as u8),
        }
    }
}

impl Lifecycle {
    /// The step reached.
    #[inline]
    pub(crate) fn step(&self) -> Step {
        // Acquire pairs with the release in `reach`: whoever sees a step also sees what
        // the driver did before reaching it (the trackers closed at drain start).
        Step::from_u8(self.step.load(Ordering::Acquire))
    }

    /// Whether `step` has been reached (one atomic load, for the hot path).
    #[inline]
    pub(crate) fn reached(&self, step: Step) -> bool {
        self.step() >= step
    }

    /// Moves to `step` if it is further than the step reached, then wakes whoever waits
    /// for it. Returns whether this call moved it.
    pub(crate) fn reach(&self, step: Step) -> bool {
        let before = Step::from_u8(self.step.fetch_max(step as u8, Ordering::AcqRel));
        // The token is cancelled after the store: a waiter it wakes reads the new step.
        self.token(step).cancel();
        before < step
    }

    /// The token cancelled when `step` is reached (never cancelled for `Running`).
    pub(crate) fn token(&self, step: Step) -> &CancellationToken {
        match step {
            // Never cancelled: `Running` is where everything starts.
            Step::Running => &self.escalation,
            Step::Triggered => &self.triggered,
            Step::DrainStarted => &self.drain_started,
            Step::ForceClosing => &self.force_closing,
            Step::Done => &self.done,
        }
    }

    /// Resolves once `step` is reached.
    pub(crate) fn reaching(&self, step: Step) -> WaitForCancellationFutureOwned {
        self.token(step).clone().cancelled_owned()
    }

    /// Decides the kind of shutdown, unless a trigger decided it before; returns the
    /// kind in force. Called by every trigger before it reaches `Triggered`.
    pub(crate) fn decide(&self, mode: Mode) -> Mode {
        // AcqRel: the winner's decision is published before its trigger, and a loser
        // reads the winner's.
        match self.mode.compare_exchange(
            Mode::Undecided as u8,
            mode as u8,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => mode,
            Err(decided) => Mode::from_u8(decided),
        }
    }

    /// Decides a handover to the next generation (before triggering it), whose next
    /// generation serves this process's own listening sockets if `sockets_shared`.
    /// Whether the shutdown is a handover: `false` if a plain trigger came first.
    pub(crate) fn hand_over(&self, sockets_shared: bool) -> bool {
        let mode = if sockets_shared {
            Mode::HandoverShared
        } else {
            Mode::Handover
        };
        matches!(self.decide(mode), Mode::Handover | Mode::HandoverShared)
    }

    fn mode(&self) -> Mode {
        Mode::from_u8(self.mode.load(Ordering::Acquire))
    }

    /// Whether the listening sockets themselves go on being served by the next
    /// generation (a handover that passed them on).
    pub(crate) fn listeners_handed_over(&self) -> bool {
        self.mode() == Mode::HandoverShared
    }

    /// Whether the listeners are handed over to the next generation of the process.
    #[inline]
    pub(crate) fn is_handover(&self) -> bool {
        matches!(self.mode(), Mode::Handover | Mode::HandoverShared)
    }

    /// Asks the driver to force-close now.
    pub(crate) fn escalate(&self) {
        self.escalation.cancel();
    }

    /// Resolves when an escalation is asked for.
    pub(crate) fn escalated(&self) -> WaitForCancellationFutureOwned {
        self.escalation.clone().cancelled_owned()
    }

    /// Counts one request until the token is dropped.
    #[inline]
    pub(crate) fn count_request(&self) -> TaskTrackerToken {
        self.requests.token()
    }

    /// Counts one connection until the token is dropped.
    pub(crate) fn count_connection(&self) -> TaskTrackerToken {
        self.connections.token()
    }

    /// Keeps the shutdown from finishing before a server has closed its listener.
    pub(crate) fn count_server(&self) -> TaskTrackerToken {
        self.servers.token()
    }

    /// Spawns `task` (work on behalf of a connection, such as an HTTP/2 stream) so that
    /// the shutdown waits for it. Ending it at the stop deadline is the caller's part.
    pub(crate) fn spawn_task<F>(&self, task: F)
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn(task);
    }

    /// Spawns background work on `runtime`: the shutdown waits for it.
    pub(crate) fn spawn_background<F>(
        &self,
        work: F,
        runtime: &tokio::runtime::Handle,
    ) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.background.spawn_on(work, runtime)
    }

    /// Background tasks still running.
    pub(crate) fn background(&self) -> usize {
        self.background.len()
    }

    /// At drain start: from here on the trackers count down to empty.
    pub(crate) fn close_trackers(&self) {
        self.connections.close();
        self.tasks.close();
        self.servers.close();
        self.background.close();
        self.requests.close();
    }

    /// Resolves once every server, connection, task and request has finished (after
    /// [`close_trackers`](Self::close_trackers)).
    ///
    /// Servers first: a server still accepts at drain start (the connections already in
    /// its listener's queue), so the connections can count down to zero and then up
    /// again until it has closed its listener. The same holds, more rarely, for work a
    /// connection starts as it ends: all are checked again until all are empty at once.
    pub(crate) async fn finished(&self) {
        loop {
            self.servers.wait().await;
            self.connections.wait().await;
            self.tasks.wait().await;
            self.background.wait().await;
            self.requests.wait().await;
            let trackers = [
                &self.servers,
                &self.connections,
                &self.tasks,
                &self.background,
                &self.requests,
            ];
            if trackers.iter().all(|tracker| tracker.is_empty()) {
                return;
            }
        }
    }

    /// Requests in flight.
    pub(crate) fn requests(&self) -> usize {
        self.requests.len()
    }

    /// Open connections. HTTP/2 stream tasks are waited for but not counted: their
    /// streams are counted as requests, their sockets as connections.
    pub(crate) fn connections(&self) -> usize {
        self.connections.len()
    }
}

pin_project! {
    /// A wait for a lifecycle step's token, kept inside the future that waits (no
    /// allocation), made only once the waiter first has to wait, and registered again
    /// only when the waker changes: a re-poll with the same waker costs no lock.
    ///
    /// The one way the crate waits for drain start or the stop deadline on a hot path.
    #[derive(Debug)]
    pub(crate) struct StepWait {
        #[pin]
        wait: Option<WaitForCancellationFutureOwned>,
        // The waker the wait registered; `None` before the first poll.
        waker: Option<Waker>,
    }
}

impl StepWait {
    pub(crate) fn new() -> Self {
        StepWait {
            wait: None,
            waker: None,
        }
    }

    /// Polls for the cancellation of `token`, the token of a step whose being reached the
    /// caller has just read as `reached` (an atomic load, where the token's own check
    /// takes a lock). Once pending, `cx`'s task is woken when the token is cancelled.
    ///
    /// The step is stored before its token is cancelled, so a caller woken by the token
    /// reads `reached` as true.
    pub(crate) fn poll_cancelled(
        self: Pin<&mut Self>,
        token: &CancellationToken,
        reached: bool,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        if reached {
            return Poll::Ready(());
        }
        let mut this = self.project();
        let registered = this
            .waker
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()));
        if registered {
            // The cancellation will wake this very waker.
            return Poll::Pending;
        }
        if this.wait.is_none() {
            this.wait.set(Some(token.clone().cancelled_owned()));
        }
        let wait = this.wait.as_pin_mut().expect("set above");
        match wait.poll(cx) {
            Poll::Ready(()) => Poll::Ready(()),
            Poll::Pending => {
                *this.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::task::Wake;

    #[test]
    fn steps_only_move_forward_and_wake_their_waiters() {
        let lifecycle = Lifecycle::default();
        assert_eq!(lifecycle.step(), Step::Running);
        assert!(lifecycle.reach(Step::DrainStarted));
        assert!(!lifecycle.reach(Step::Triggered), "never back");
        assert_eq!(lifecycle.step(), Step::DrainStarted);
        assert!(lifecycle.reached(Step::Triggered));
        assert!(!lifecycle.reached(Step::ForceClosing));
        assert!(lifecycle.token(Step::DrainStarted).is_cancelled());
        assert!(!lifecycle.token(Step::ForceClosing).is_cancelled());
        assert!(!lifecycle.token(Step::Running).is_cancelled());
        assert!(!lifecycle.reach(Step::DrainStarted), "reached once");
    }

    #[test]
    fn the_first_trigger_decides_stop_or_handover_for_good() {
        let lifecycle = Lifecycle::default();
        assert!(!lifecycle.is_handover());
        assert_eq!(lifecycle.decide(Mode::Stop), Mode::Stop);
        assert!(!lifecycle.hand_over(true), "a plain trigger came first");
        assert!(!lifecycle.is_handover());
        assert!(!lifecycle.listeners_handed_over());

        let lifecycle = Lifecycle::default();
        assert!(lifecycle.hand_over(false));
        assert_eq!(
            lifecycle.decide(Mode::Stop),
            Mode::Handover,
            "stays a handover"
        );
        assert!(lifecycle.hand_over(true), "still the first handover");
        assert!(lifecycle.is_handover());
        assert!(
            !lifecycle.listeners_handed_over(),
            "its own sockets, not shared"
        );

        let lifecycle = Lifecycle::default();
        assert!(lifecycle.hand_over(true));
        assert!(lifecycle.listeners_handed_over());
    }

    struct Count(std::sync::atomic::AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_step_wait_registers_once_per_waker_and_is_woken() {
        let token = CancellationToken::new();
        let mut wait = Box::pin(StepWait::new());
        let count = Arc::new(Count(Default::default()));
        let waker = Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);
        assert!(wait
            .as_mut()
            .poll_cancelled(&token, token.is_cancelled(), &mut cx)
            .is_pending());
        assert!(wait
            .as_mut()
            .poll_cancelled(&token, token.is_cancelled(), &mut cx)
            .is_pending());
        token.cancel();
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "woken once");
        assert!(wait
            .as_mut()
            .poll_cancelled(&token, token.is_cancelled(), &mut cx)
            .is_ready());

        // A new waker registers again, and that one is woken.
        let token = CancellationToken::new();
        let mut wait = Box::pin(StepWait::new());
        let first = Arc::new(Count(Default::default()));
        let second = Arc::new(Count(Default::default()));
        let (w1, w2) = (
            Waker::from(Arc::clone(&first)),
            Waker::from(Arc::clone(&second)),
        );
        assert!(wait
            .as_mut()
            .poll_cancelled(&token, false, &mut Context::from_waker(&w1))
            .is_pending());
        assert!(wait
            .as_mut()
            .poll_cancelled(&token, false, &mut Context::from_waker(&w2))
            .is_pending());
        token.cancel();
        assert_eq!(
            second.0.load(Ordering::SeqCst),
            1,
            "the latest waker is woken"
        );
    }
}
