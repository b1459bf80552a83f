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

use crate::conn::ConnState;
use crate::shutdown::Inner;

/// Keeps one request counted while it lives (in the shutdown, and in its connection's
/// state when [`serve`](crate::serve()) serves it).
struct Guard {
    _token: TaskTrackerToken,
    inner: Arc<Inner>,
    conn: Option<Arc<ConnState>>,
}

impl Guard {
    fn new(inner: &Arc<Inner>, conn: Option<Arc<ConnState>>) -> Self {
        if let Some(conn) = &conn {
            conn.request_began();
        }
        Guard {
            _token: inner.requests.token(),
            inner: Arc::clone(inner),
            conn,
        }
    }

    /// The response switched protocols: its connection now lives on in an upgrade task.
    fn upgraded(&self) {
        if let Some(conn) = &self.conn {
            conn.mark_upgraded();
        }
    }

    fn is_forced(&self) -> bool {
        self.inner.force.is_cancelled()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(conn) = &self.conn {
            conn.request_ended();
        }
    }
}
