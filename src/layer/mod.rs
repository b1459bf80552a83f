//! [`GracefulLayer`]: counts in-flight requests for a [`Shutdown`](crate::Shutdown).
//!
//! A request counts from [`Service::call`](tower_service::Service::call) until its
//! response body has ended or been dropped, so streaming bodies (SSE, downloads) keep the
//! drain open. `poll_ready` does not count. At the stop deadline a response still pending
//! or streaming is force-closed: the client sees an error, never a body that looks
//! complete.
//!
//! The layer is a plain counter for its controller: it knows nothing of connections.

mod body;
mod future;
mod service;

pub use body::ResponseBody;
pub use future::ResponseFuture;
pub use service::{Graceful, GracefulLayer};
