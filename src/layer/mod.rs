//! [`GracefulLayer`]: counts in-flight requests for a [`Shutdown`](crate::Shutdown).
//!
//! A request counts from [`Service::call`](tower_service::Service::call) until its
//! response body has ended or been dropped, so streaming bodies (SSE, downloads) keep the
//! drain open. `poll_ready` does not count. At the stop deadline a response still pending
//! or streaming is cut: the client sees an error, never a body that looks complete.

mod body;
mod future;
mod service;

pub use body::{Aborted, ResponseBody};
pub use future::ResponseFuture;
pub use service::{Drain, Graceful, GracefulLayer};

use std::sync::Arc;

use tokio_util::task::task_tracker::TaskTrackerToken;

use crate::shutdown::Inner;

/// Keeps one request counted while it lives.
struct Guard {
    _token: TaskTrackerToken,
    inner: Arc<Inner>,
}

impl Guard {
    fn new(inner: &Arc<Inner>) -> Self {
        Guard {
            _token: inner.requests.token(),
            inner: Arc::clone(inner),
        }
    }

    fn is_forced(&self) -> bool {
        self.inner.force.is_cancelled()
    }
}
