//! Panics in the tasks the crate spawns: caught, logged and counted, never silent.
//!
//! A panic inside a spawned task would otherwise be swallowed by tokio (the task's
//! `JoinHandle` is not awaited), so a connection whose handler panicked would look like a
//! connection the client closed, and the shutdown would still read "drained". Each task
//! the crate spawns runs inside [`catch_panics`]: the panic ends that task only (as it
//! would anyway), and [`Stats::panics`](crate::Stats::panics) and
//! [`Report::panics`](crate::Report::panics) count it.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use futures_util::future::CatchUnwind;
use futures_util::FutureExt;
use pin_project_lite::pin_project;

use crate::stats::Counters;
use crate::Shutdown;

/// The kind of task that panicked, for the log line.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Task {
    /// A connection served by `serve` (its HTTP/1 handlers run inside it).
    Connection,
    /// A task hyper spawned for a connection: an HTTP/2 stream (its handler runs there).
    Stream,
    /// A connection closed with unread input, lingering so its client reads the end.
    Linger,
    /// The task that listens for shutdown signals.
    Signals,
    /// Background work registered with `Shutdown::spawn`.
    Background,
    /// The shutdown's own lifecycle.
    Driver,
}

impl Task {
    fn name(self) -> &'static str {
        match self {
            Task::Connection => "connection",
            Task::Stream => "HTTP/2 stream",
            Task::Linger => "lingering close",
            Task::Signals => "signal listener",
            Task::Background => "background",
            Task::Driver => "shutdown driver",
        }
    }
}

/// Where a caught panic is counted: the counters themselves, or a handle that owns them
/// (so that a spawned task can carry it).
pub(crate) trait CountsPanics {
    fn counters(&self) -> &Counters;
}

impl CountsPanics for &Counters {
    fn counters(&self) -> &Counters {
        self
    }
}

impl CountsPanics for Shutdown {
    fn counters(&self) -> &Counters {
        Shutdown::counters(self)
    }
}

/// Runs `future`, catching a panic in it: the panic is logged at `ERROR` and counted in
/// `counters`, and the returned future ends as if `future` had (`None` after a panic).
///
/// A named future rather than an `async fn`: wrapped around a connection's task it holds
/// `future` once, where an `async` wrapper would hold it in its unresumed state and again
/// in its awaiting one, doubling every connection task's allocation.
///
/// `AssertUnwindSafe` is sound here: after a panic nothing of `future` is touched again
/// (it is dropped), and the counters are atomics.
pub(crate) fn catch_panics<F, C>(task: Task, counters: C, future: F) -> CatchPanics<F, C>
where
    F: Future,
    C: CountsPanics,
{
    CatchPanics {
        future: AssertUnwindSafe(future).catch_unwind(),
        task,
        counters,
    }
}

pin_project! {
    /// The future of [`catch_panics`].
    pub(crate) struct CatchPanics<F, C> {
        #[pin]
        future: CatchUnwind<AssertUnwindSafe<F>>,
        task: Task,
        counters: C,
    }
}

impl<F, C> Future for CatchPanics<F, C>
where
    F: Future,
    C: CountsPanics,
{
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match ready!(this.future.poll(cx)) {
            Ok(output) => Poll::Ready(Some(output)),
            Err(payload) => {
                let task = *this.task;
                this.counters.counters().panicked();
                // The panic may have come from a log line: this one must not take the task
                // down a second time.
                log_quietly(|| {
                    tracing::error!(
                        task = task.name(),
                        panic = message(&*payload),
                        "a {} task panicked",
                        task.name()
                    );
                });
                Poll::Ready(None)
            }
        }
    }
}

/// Emits a log line, catching a panic in it: a subscriber whose writer fails may panic
/// (tracing-subscriber's `fmt` reports the failure with `eprintln!`, which panics when
/// stderr is a closed pipe), and a log line must not stop a shutdown. For the lines on
/// the way to a shutdown's end that run in the caller's code or outside
/// [`catch_panics`].
pub(crate) fn log_quietly(line: impl FnOnce()) {
    // Nothing is left half-changed by a log line that panics.
    let _ = std::panic::catch_unwind(AssertUnwindSafe(line));
}

/// The current `tracing` dispatcher, with a panic in any of its events caught (see
/// [`log_quietly`]): for a future on the way to a shutdown's end, through
/// `tracing::instrument::WithSubscriber`, so that none of its log lines can stop it.
pub(crate) fn quiet_logs() -> tracing::Dispatch {
    tracing::Dispatch::new(QuietLogs(tracing::dispatcher::get_default(Clone::clone)))
}

/// A dispatcher whose events are emitted under [`log_quietly`].
struct QuietLogs(tracing::Dispatch);

impl tracing::Subscriber for QuietLogs {
    fn register_callsite(
        &self,
        metadata: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        self.0.register_callsite(metadata)
    }

    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        self.0.enabled(metadata)
    }

    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        self.0.new_span(span)
    }

    fn record(&self, span: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        self.0.record(span, values);
    }

    fn record_follows_from(&self, span: &tracing::span::Id, follows: &tracing::span::Id) {
        self.0.record_follows_from(span, follows);
    }

    fn event(&self, event: &tracing::Event<'_>) {
        log_quietly(|| self.0.event(event));
    }

    fn enter(&self, span: &tracing::span::Id) {
        self.0.enter(span);
    }

    fn exit(&self, span: &tracing::span::Id) {
        self.0.exit(span);
    }

    fn clone_span(&self, id: &tracing::span::Id) -> tracing::span::Id {
        self.0.clone_span(id)
    }

    fn try_close(&self, id: tracing::span::Id) -> bool {
        self.0.try_close(id)
    }
}

/// The text of a panic payload (`panic!` with a message gives a `&str` or a `String`).
fn message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_is_counted_and_ends_only_its_task() {
        let counters = Counters::default();
        let ok = catch_panics(Task::Connection, &counters, async { 7 }).await;
        assert_eq!(ok, Some(7));
        assert_eq!(counters.panics(), 0);
        let caught = catch_panics(Task::Stream, &counters, async {
            if counters.panics() == 0 {
                panic!("boom");
            }
        })
        .await;
        assert_eq!(caught, None);
        assert_eq!(counters.panics(), 1);
        let formatted = catch_panics(Task::Linger, &counters, async {
            panic!("{} formatted", 2);
        });
        assert_eq!(formatted.await, None::<()>);
        assert_eq!(counters.panics(), 2);
    }

    #[test]
    fn payload_messages() {
        assert_eq!(message(&"static"), "static");
        assert_eq!(message(&String::from("owned")), "owned");
        assert_eq!(message(&42_u8), "(not a string)");
    }
}
