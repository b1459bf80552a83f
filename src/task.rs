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

use futures_util::FutureExt;

use crate::stats::Counters;

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

/// Runs `future`, catching a panic in it: the panic is logged at `ERROR` and counted in
/// `counters`, and the returned future ends as if `future` had.
///
/// `AssertUnwindSafe` is sound here: after a panic nothing of `future` is touched again
/// (it is dropped), and the counters are atomics.
pub(crate) async fn catch_panics<F>(task: Task, counters: &Counters, future: F) -> Option<F::Output>
where
    F: Future,
{
    match AssertUnwindSafe(future).catch_unwind().await {
        Ok(output) => Some(output),
        Err(payload) => {
            counters.panicked();
            tracing::error!(
                task = task.name(),
                panic = message(&*payload),
                "a {} task panicked",
                task.name()
            );
            None
        }
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
