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
    bound: Bound,
}

/// What a layer, its requests and their `Drain` hold on to: the connection's state when
/// `serve` serves them (a reference count only that connection's requests touch, where
/// the shared controller's would be bumped by every request on every core), the
/// controller otherwise.
#[derive(Clone)]
pub(crate) enum Bound {
    Shutdown(crate::Shutdown),
    Conn(Arc<ConnState>),
}

impl Bound {
    pub(crate) fn shutdown(&self) -> &crate::Shutdown {
        match self {
            Bound::Shutdown(shutdown) => shutdown,
            Bound::Conn(conn) => conn.shutdown(),
        }
    }

    fn inner(&self) -> &Inner {
        &self.shutdown().inner
    }
}

impl Guard {
    fn new(bound: &Bound) -> Self {
        let inner = bound.inner();
        inner.counters.request_started();
        if let Bound::Conn(conn) = bound {
            conn.request_began();
        }
        Guard {
            _token: inner.requests.token(),
            bound: bound.clone(),
        }
    }

    /// Notes what a response served by [`serve`](crate::serve()) means for its
    /// connection. A response that switches protocols hands the connection to an upgrade
    /// task. An HTTP/1 response written after drain start carries `Connection: close`,
    /// so the connection closes right after it, whether or not hyper has been told yet.
    fn on_response<B>(&self, response: &mut Response<B>) {
        let Bound::Conn(conn) = &self.bound else {
            return;
        };
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            conn.mark_upgraded();
        } else if conn.shutdown().inner.is_draining() && !conn.is_http2() {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }

    fn is_forced(&self) -> bool {
        self.bound.inner().is_forced()
    }

    /// The token to wait on for the stop deadline: the connection's own child token
    /// when `serve` serves the request (so waiting does not share a lock with every
    /// other connection), the shutdown's otherwise.
    fn force_token(&self) -> &tokio_util::sync::CancellationToken {
        match &self.bound {
            Bound::Conn(conn) => conn.force(),
            Bound::Shutdown(shutdown) => &shutdown.inner.force,
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        crate::stats::metrics_impl::request_ended();
        if let Bound::Conn(conn) = &self.bound {
            conn.request_ended();
        }
    }
}
