//! Background work registered with a [`Shutdown`]: queue consumers, flushers, pollers.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use std::time::Duration;
use tokio::runtime::Handle;

use tokio::task::JoinHandle;
use tokio::time::Sleep;

use crate::error::ConfigError;
use crate::lifecycle::{Step, StepWait};
use crate::task::{catch_panics, Task};
use crate::{Drain, Error, Shutdown};

impl Shutdown {
    /// Spawns background work that the shutdown looks after like a request: the work
    /// gets a [`Drain`] to see drain start (and stop taking new work, flush, ...), the
    /// shutdown waits for it to finish, and at the stop deadline it is dropped
    /// (force-closed). The [`Report`](crate::Report) counts it.
    ///
    /// The task runs on the current tokio runtime, or the one current when the controller
    /// was built. Its handle resolves to `Some(output)`, or `None` if it was dropped at
    /// the stop deadline or panicked (a panic is logged and counted).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), httpdown::Error> {
    /// let shutdown = httpdown::Shutdown::new();
    /// let consumer = shutdown.spawn(|drain| async move {
    ///     let mut handled = 0;
    ///     while !drain.is_started() {
    ///         // take the next message ...
    ///         handled += 1;
    ///         tokio::task::yield_now().await;
    ///     }
    ///     handled // then flush and end
    /// })?;
    /// shutdown.trigger();
    /// let report = shutdown.wait().await;
    /// assert!(consumer.await.unwrap().is_some(), "ended by itself at drain start");
    /// assert_eq!(report.background_at_drain(), 1);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Config`] ([`ConfigError::NoRuntime`]) outside a tokio runtime.
    pub fn spawn<F, Fut>(&self, work: F) -> Result<JoinHandle<Option<Fut::Output>>, Error>
    where
        F: FnOnce(Drain) -> Fut,
        Fut: Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        let runtime = Handle::try_current()
            .ok()
            .or_else(|| self.runtime())
            .ok_or(Error::Config(ConfigError::NoRuntime))?;
        let work = UntilForceClosing::new(work(self.drain()), self.clone(), None);
        let shutdown = self.clone();
        let task = async move {
            catch_panics(Task::Background, shutdown.counters(), work)
                .await
                .flatten()
        };
        Ok(self.lifecycle().spawn_background(task, &runtime))
    }
}

pin_project! {
    /// Runs `work` until it ends (`Some`) or the stop deadline passes (`None`), then
    /// for `grace` more if given.
    pub(crate) struct UntilForceClosing<F> {
        #[pin]
        work: F,
        shutdown: Shutdown,
        #[pin]
        force: StepWait,
        grace: Option<Duration>,
        #[pin]
        grace_end: Option<Sleep>,
    }
}

impl<F> UntilForceClosing<F> {
    pub(crate) fn new(work: F, shutdown: Shutdown, grace: Option<Duration>) -> Self {
        UntilForceClosing {
            work,
            shutdown,
            force: StepWait::new(),
            grace,
            grace_end: None,
        }
    }
}

impl<F: Future> Future for UntilForceClosing<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let lifecycle = this.shutdown.lifecycle();
        let closing = lifecycle.reached(Step::ForceClosing);
        let in_grace = this.grace_end.is_some();
        if !closing || in_grace {
            if let Poll::Ready(output) = this.work.as_mut().poll(cx) {
                return Poll::Ready(Some(output));
            }
        }
        if !in_grace {
            let token = lifecycle.token(Step::ForceClosing);
            if this.force.poll_cancelled(token, closing, cx).is_pending() {
                return Poll::Pending;
            }
            let Some(grace) = *this.grace else {
                return Poll::Ready(None);
            };
            this.grace_end.set(Some(tokio::time::sleep(grace)));
            // Polled once more within the grace: it may end now.
            if let Poll::Ready(output) = this.work.poll(cx) {
                return Poll::Ready(Some(output));
            }
        }
        match this.grace_end.as_pin_mut().map(|end| end.poll(cx)) {
            Some(Poll::Pending) => Poll::Pending,
            _ => Poll::Ready(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// At the stop deadline, work given a grace (an HTTP/2 stream that carried gRPC) may
    /// go on for that long, and no longer.
    #[tokio::test(start_paused = true)]
    async fn work_ending_within_its_grace_after_the_stop_deadline_is_kept() {
        for (grace_ms, ends_ms, kept) in [(10, 5, true), (2, 5, false)] {
            let shutdown = Shutdown::builder()
                .stop_timeout(Duration::from_secs(1))
                .kill_timeout(Duration::from_secs(1))
                .build();
            // Work that never ends holds the drain until the stop deadline.
            let _held = shutdown.spawn(|_| std::future::pending::<()>()).unwrap();
            let work = {
                let shutdown = shutdown.clone();
                async move {
                    shutdown.stop_deadline().await;
                    tokio::time::sleep(Duration::from_millis(ends_ms)).await;
                    7
                }
            };
            let run = UntilForceClosing::new(
                work,
                shutdown.clone(),
                Some(Duration::from_millis(grace_ms)),
            );
            shutdown.trigger();
            let output = run.await;
            assert_eq!(
                output.is_some(),
                kept,
                "grace {grace_ms} ms, work ending {ends_ms} ms after the deadline"
            );
        }
    }
}
