use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::service::LayerGuard;
use crate::request::CountedBody;
use crate::BoxError;

pin_project! {
    /// Response body of [`Graceful`](super::Graceful).
    ///
    /// The request stays counted until this body has ended (its last frame was read) or
    /// has been dropped. If the stop deadline passes while it is still streaming, the next
    /// poll fails with [`ForceClosed`](crate::ForceClosed), so the server cuts the
    /// response short (no terminating chunk, or fewer bytes than `Content-Length`) instead
    /// of ending it cleanly.
    pub struct ResponseBody<B> {
        #[pin]
        inner: CountedBody<B, LayerGuard>,
    }
}

impl<B> ResponseBody<B> {
    #[inline]
    pub(super) fn new(inner: CountedBody<B, LayerGuard>) -> Self {
        ResponseBody { inner }
    }
}

/// An uncounted `B::default()`, so the layer sits inside middleware that needs a default
/// body (tower-http's `TimeoutLayer`).
impl<B: Default> Default for ResponseBody<B> {
    fn default() -> Self {
        ResponseBody::new(CountedBody::pass_through(B::default()))
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody")
            .field("state", &self.inner.state())
            .finish()
    }
}
