//! Where hyper runs the tasks of a connection (HTTP/2 streams): tracked by the shutdown,
//! with the stream's [`Drain`] current while it runs, dropped at the stop deadline.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

use crate::drain::Scoped;
use crate::lifecycle::{Step, StepWait};
use crate::task::{catch_panics, Task};
use crate::Shutdown;

/// Runs hyper's background tasks (HTTP/2 streams) for `serve`.
#[derive(Clone)]
pub(crate) struct TrackedExecutor {
    shutdown: Shutdown,
}

impl TrackedExecutor {
    pub(crate) fn new(shutdown: Shutdown) -> Self {
        TrackedExecutor { shutdown }
    }
}

impl<F> hyper::rt::Executor<F> for TrackedExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        let shutdown = self.shutdown.clone();
        let stream = Scoped::new(future, shutdown.drain());
        let task = UntilForceClosing {
            task: stream,
            shutdown: shutdown.clone(),
            force: StepWait::new(),
        };
        self.shutdown.lifecycle().spawn_task(async move {
            catch_panics(Task::Stream, shutdown.counters(), task).await;
        });
    }
}

pin_project! {
    /// Runs `task` until it ends or the stop deadline passes.
    struct UntilForceClosing<F> {
        #[pin]
        task: F,
        shutdown: Shutdown,
        #[pin]
        force: StepWait,
    }
}

impl<F: Future> Future for UntilForceClosing<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        let lifecycle = this.shutdown.lifecycle();
        let closing = lifecycle.reached(Step::ForceClosing);
        if !closing && this.task.poll(cx).is_ready() {
            return Poll::Ready(());
        }
        this.force
            .poll_cancelled(lifecycle.token(Step::ForceClosing), closing, cx)
    }
}
