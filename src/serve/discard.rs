//! Discarding what a handler left unread of a request body (B65), so that an HTTP/1
//! connection survives a handler that answers without reading the body.
//!
//! hyper cannot reuse an HTTP/1 connection whose request body was dropped before its end:
//! it reads what has arrived and then closes. A proxy that sent the body in a packet of
//! its own after the head (Caddy does, at times) then finds its pooled connection closed
//! when it sends the next request. [`Serve::discard_unread_bodies`](super::Serve::discard_unread_bodies)
//! hands the app an [`UnreadBody`] instead of hyper's `Incoming`: dropped before its end,
//! it goes on reading and discarding the rest on a task of its own, within
//! [`DiscardUnread`]'s bounds in bytes and time, so the connection can carry the next
//! request. Beyond the bounds it gives up, and the connection closes as it would have.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{header, Request, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::{Bytes, Incoming};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::{IncomingConnection, Listener};
use crate::Drain;

/// The bounds within which [`serve`](crate::serve()) discards the unread rest of a
/// request body (see [`Serve::discard_unread_bodies`](super::Serve::discard_unread_bodies)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiscardUnread {
    max_bytes: u64,
    max_time: Duration,
}

impl DiscardUnread {
    /// The most bytes read and discarded by default: 256 KiB, as Go's `net/http`.
    pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024;
    /// How long the rest may take to arrive by default: 1 s.
    pub const DEFAULT_MAX_TIME: Duration = Duration::from_secs(1);

    /// The default bounds.
    pub fn new() -> Self {
        DiscardUnread {
            max_bytes: Self::DEFAULT_MAX_BYTES,
            max_time: Self::DEFAULT_MAX_TIME,
        }
    }

    /// At most this many bytes are read and discarded; a longer rest closes the
    /// connection.
    pub fn max_bytes(mut self, max: u64) -> Self {
        self.max_bytes = max;
        self
    }

    /// The rest must have arrived within this long after the body was dropped; a slower
    /// one closes the connection.
    pub fn max_time(mut self, max: Duration) -> Self {
        self.max_time = max;
        self
    }
}

impl Default for DiscardUnread {
    fn default() -> Self {
        Self::new()
    }
}

pin_project! {
    /// A request body as [`serve`](crate::serve()) hands it to the app with
    /// [`Serve::discard_unread_bodies`](super::Serve::discard_unread_bodies): hyper's
    /// `Incoming`, read the same way, which discards its unread rest when dropped before
    /// its end (within [`DiscardUnread`]'s bounds). axum's `Router` and tonic take any
    /// such body.
    pub struct UnreadBody {
        inner: Option<Incoming>,
        limits: DiscardUnread,
        // An HTTP/2 stream's unread body costs the connection nothing (the stream is
        // reset); only HTTP/1 needs the rest read.
        http1: bool,
        // `Expect: 100-continue`: the client waits for a 100 that only reading sends.
        expects_continue: bool,
        polled: bool,
        drain: Option<Drain>,
    }

    impl PinnedDrop for UnreadBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            let Some(body) = this.inner.take() else {
                return;
            };
            if !*this.http1 || body.is_end_stream() || (*this.expects_continue && !*this.polled) {
                return;
            }
            if this.drain.as_ref().is_some_and(Drain::is_started) {
                // The connection closes after this response anyway.
                return;
            }
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return;
            };
            runtime.spawn(discard(body, *this.limits, this.drain.take()));
        }
    }
}

impl UnreadBody {
    fn new(request: &Request<Incoming>, limits: DiscardUnread) -> impl FnOnce(Incoming) -> Self {
        let expects_continue = request
            .headers()
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        let http1 = request.version() <= Version::HTTP_11;
        move |body| UnreadBody {
            inner: Some(body),
            limits,
            http1,
            expects_continue,
            polled: false,
            drain: Drain::current(),
        }
    }
}

impl Body for UnreadBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.project();
        *this.polled = true;
        match this.inner {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().map_or(true, Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl fmt::Debug for UnreadBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnreadBody")
            .field("limits", &self.limits)
            .field("end_stream", &self.is_end_stream())
            .finish_non_exhaustive()
    }
}

/// Reads and discards `body` to its end, within `limits`; stops at drain start.
async fn discard(mut body: Incoming, limits: DiscardUnread, drain: Option<Drain>) {
    if body
        .size_hint()
        .exact()
        .is_some_and(|len| len > limits.max_bytes)
    {
        return;
    }
    let read = async {
        let mut read = 0u64;
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            let Ok(frame) = frame else { return };
            if let Some(data) = frame.data_ref() {
                read += data.len() as u64;
                if read > limits.max_bytes {
                    return;
                }
            }
        }
    };
    let drain_started = async {
        match &drain {
            Some(drain) => drain.started().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::time::timeout(limits.max_time, read) => {}
        () = drain_started => {}
    }
}

/// The app of [`Serve::discard_unread_bodies`](super::Serve::discard_unread_bodies): makes
/// the app's services, which take [`UnreadBody`] requests.
#[derive(Debug, Clone)]
pub struct Discarding<M> {
    app: M,
    limits: DiscardUnread,
}

impl<M> Discarding<M> {
    pub(crate) fn new(app: M, limits: DiscardUnread) -> Self {
        Discarding { app, limits }
    }
}

impl<'a, L, M, S> Service<IncomingConnection<'a, L>> for Discarding<M>
where
    L: Listener,
    M: Service<IncomingConnection<'a, L>, Response = S, Error = Infallible>,
{
    type Response = DiscardingService<S>;
    type Error = Infallible;
    type Future = MakeDiscarding<M::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.app.poll_ready(cx)
    }

    fn call(&mut self, connection: IncomingConnection<'a, L>) -> Self::Future {
        MakeDiscarding {
            future: self.app.call(connection),
            limits: self.limits,
        }
    }
}

pin_project! {
    /// The future of [`Discarding`]'s `call`.
    #[derive(Debug)]
    pub struct MakeDiscarding<F> {
        #[pin]
        future: F,
        limits: DiscardUnread,
    }
}

impl<F, S> Future for MakeDiscarding<F>
where
    F: Future<Output = Result<S, Infallible>>,
{
    type Output = Result<DiscardingService<S>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        this.future.poll(cx).map(|made| {
            made.map(|service| DiscardingService {
                service,
                limits: *this.limits,
            })
        })
    }
}

/// One connection's service under [`Discarding`]: hands the app's service each request
/// with an [`UnreadBody`].
#[derive(Debug, Clone)]
pub struct DiscardingService<S> {
    service: S,
    limits: DiscardUnread,
}

impl<S> Service<Request<Incoming>> for DiscardingService<S>
where
    S: Service<Request<UnreadBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.service.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Incoming>) -> S::Future {
        let wrap = UnreadBody::new(&request, self.limits);
        self.service.call(request.map(wrap))
    }
}
