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

use http::{header, HeaderValue, Response, StatusCode};

use tokio_util::task::task_tracker::TaskTrackerToken;

use crate::conn::ConnState;
use crate::shutdown::Inner;

/// Keeps one request counted while it lives (in the shutdown, and in its connection's
/// state when [`serve`](crate::serve()) serves it).
struct Guard {
    _token: TaskTrackerToken,
    owner: Owner,
}

/// What a guard keeps alive: its connection's state when `serve` serves the request (a
/// reference count only that connection's requests touch), the shutdown otherwise.
enum Owner {
    Conn(Arc<ConnState>),
    Shutdown(Arc<Inner>),
}

impl Guard {
    fn new(inner: &Arc<Inner>, conn: Option<Arc<ConnState>>) -> Self {
        inner.counters.request_started();
        let owner = match conn {
            Some(conn) => {
                conn.request_began();
                Owner::Conn(conn)
            }
            None => Owner::Shutdown(Arc::clone(inner)),
        };
        Guard {
            _token: inner.requests.token(),
            owner,
        }
    }

    fn inner(&self) -> &Inner {
        match &self.owner {
            Owner::Conn(conn) => conn.shutdown(),
            Owner::Shutdown(inner) => inner,
        }
    }

    /// Notes what a response served by [`serve`](crate::serve()) means for its
    /// connection. A response that switches protocols hands the connection to an upgrade
    /// task. An HTTP/1 response written after drain start carries `Connection: close`,
    /// so the connection closes right after it, whether or not hyper has been told yet.
    fn on_response<B>(&self, response: &mut Response<B>) {
        let Owner::Conn(conn) = &self.owner else {
            return;
        };
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            conn.mark_upgraded();
        } else if conn.shutdown().is_draining() && !conn.is_http2() {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }

    fn is_forced(&self) -> bool {
        self.inner().is_forced()
    }

    /// The token to wait on for the stop deadline: the connection's own child token
    /// when `serve` serves the request (so waiting does not share a lock with every
    /// other connection), the shutdown's otherwise.
    fn force_token(&self) -> &tokio_util::sync::CancellationToken {
        match &self.owner {
            Owner::Conn(conn) => conn.force(),
            Owner::Shutdown(inner) => &inner.force,
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        crate::stats::metrics_impl::request_ended();
        if let Owner::Conn(conn) = &self.owner {
            conn.request_ended();
        }
    }
}
