use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;
use pin_project_lite::pin_project;

use super::service::LayerGuard;
use super::ResponseBody;
use crate::request::CountedFuture;

pin_project! {
    /// Response future of [`Graceful`](super::Graceful).
    ///
    /// It moves the request's count into the [`ResponseBody`], so a request keeps counting
    /// until its body has ended or been dropped. If the stop deadline passes while the inner
    /// future is still pending, it answers `503` with a body that fails at once, so the
    /// client sees an error rather than a complete-looking response.
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: CountedFuture<F, LayerGuard>,
    }
}

impl<F> ResponseFuture<F> {
    #[inline]
    pub(super) fn new(inner: CountedFuture<F, LayerGuard>) -> Self {
        ResponseFuture { inner }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project()
            .inner
            .poll(cx)
            .map_ok(|response| response.map(ResponseBody::new))
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
