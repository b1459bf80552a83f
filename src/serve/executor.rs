//! Where hyper runs the tasks of a connection (HTTP/2 streams): tracked by the shutdown,
//! with the stream's [`Drain`] current while it runs, dropped at the stop deadline.

use std::future::Future;

use super::connection::GRPC_FLUSH;
use crate::background::UntilForceClosing;
use crate::drain::Scoped;
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
        // At the stop deadline a stream gets a moment to send what its body ends with
        // (a gRPC call's `grpc-status` trailers); others end at once.
        let task = UntilForceClosing::new(stream, shutdown.clone(), Some(GRPC_FLUSH));
        self.shutdown
            .lifecycle()
            .spawn_task(catch_panics(Task::Stream, shutdown, task));
    }
}
