//! How one request is counted, shared by [`GracefulLayer`](crate::GracefulLayer) and
//! [`serve`](crate::serve()): a guard taken in `call` moves from the response future into
//! the response body and is dropped when the body ends (or the future or body is
//! dropped). At the stop deadline a response still pending becomes a `503` whose body
//! fails at once, and a body still streaming fails with [`ForceClosed`]: either way the
//! client sees an error, never a response that looks complete.
//!
//! What differs between the two users lives in their [`Counted`] guard; this module knows
//! nothing of connections.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{header, HeaderValue, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio_util::sync::CancellationToken;

use crate::lifecycle::StepWait;
use crate::BoxError;

/// The guard of one counted request: it counts while it lives.
pub(crate) trait Counted {
    /// Whether the stop deadline has passed (an atomic load).
    fn is_force_closing(&self) -> bool;

    /// The token cancelled at the stop deadline, for a request that has to wait.
    fn force_token(&self) -> &CancellationToken;

    /// Sees the response before it goes out.
    fn on_response<B>(&mut self, response: &mut Response<B>) {
        let _ = response;
    }

    /// Runs `f` (the inner service's `call`, or a poll of its future) in this request's
    /// scope.
    #[inline]
    fn scoped<R>(&mut self, f: impl FnOnce() -> R) -> R {
        f()
    }
}

pin_project! {
    /// The response future of a counted request.
    #[project = FutureProj]
    pub(crate) enum CountedFuture<F, G> {
        Counted {
            #[pin]
            future: F,
            guard: Option<G>,
            // Registered only once the inner future is pending, so a response ready at
            // once never touches the stop deadline's wait list.
            #[pin]
            force: StepWait,
        },
        // Counted elsewhere already (an outer layer of the same controller, or `serve`).
        PassThrough {
            #[pin]
            future: F,
        },
        // Arrived after the stop deadline.
        Rejected {
            guard: Option<G>,
        },
    }
}

impl<F, G> CountedFuture<F, G> {
    #[inline]
    pub(crate) fn counted(future: F, guard: G) -> Self {
        CountedFuture::Counted {
            future,
            guard: Some(guard),
            force: StepWait::new(),
        }
    }

    #[inline]
    pub(crate) fn pass_through(future: F) -> Self {
        CountedFuture::PassThrough { future }
    }

    #[inline]
    pub(crate) fn rejected(guard: G) -> Self {
        CountedFuture::Rejected { guard: Some(guard) }
    }
}

/// A `503` with `Connection: close` and `body`.
fn unavailable<B>(body: B) -> Response<B> {
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

impl<F, B, E, G> Future for CountedFuture<F, G>
where
    F: Future<Output = Result<Response<B>, E>>,
    G: Counted,
{
    type Output = Result<Response<CountedBody<B, G>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            FutureProj::PassThrough { future } => future
                .poll(cx)
                .map_ok(|res| res.map(CountedBody::pass_through)),
            FutureProj::Rejected { guard } => {
                Poll::Ready(Ok(unavailable(CountedBody::empty(guard.take()))))
            }
            FutureProj::Counted {
                future,
                guard,
                force,
            } => {
                let Some(counted) = guard.as_mut() else {
                    // Polled again after completion: nothing more to count.
                    return Poll::Pending;
                };
                if let Poll::Ready(mut result) = counted.scoped(|| future.poll(cx)) {
                    let mut guard = guard.take();
                    if let (Ok(response), Some(guard)) = (&mut result, &mut guard) {
                        guard.on_response(response);
                    }
                    return Poll::Ready(
                        result.map(|res| res.map(|body| CountedBody::counted(body, guard))),
                    );
                }
                let closing = counted.is_force_closing();
                if force
                    .poll_cancelled(counted.force_token(), closing, cx)
                    .is_pending()
                {
                    return Poll::Pending;
                }
                Poll::Ready(Ok(unavailable(CountedBody::force_closed(guard.take()))))
            }
        }
    }
}

pin_project! {
    /// The response body of a counted request.
    #[project = BodyProj]
    pub(crate) enum CountedBody<B, G> {
        Counted {
            #[pin]
            body: B,
            guard: Option<G>,
            #[pin]
            force: StepWait,
        },
        PassThrough {
            #[pin]
            body: B,
        },
        // Fails on the first poll (while it still holds the guard), then ends.
        ForceClosed {
            guard: Option<G>,
        },
        Empty {
            guard: Option<G>,
        },
    }
}

impl<B, G> CountedBody<B, G> {
    #[inline]
    fn counted(body: B, guard: Option<G>) -> Self {
        CountedBody::Counted {
            body,
            guard,
            force: StepWait::new(),
        }
    }

    #[inline]
    pub(crate) fn pass_through(body: B) -> Self {
        CountedBody::PassThrough { body }
    }

    #[inline]
    fn force_closed(guard: Option<G>) -> Self {
        CountedBody::ForceClosed { guard }
    }

    #[inline]
    fn empty(guard: Option<G>) -> Self {
        CountedBody::Empty { guard }
    }

    /// `"counted"`, `"ended"`, `"pass-through"`, `"force-closed"` or `"empty"`.
    pub(crate) fn state(&self) -> &'static str {
        match self {
            CountedBody::Counted { guard: Some(_), .. } => "counted",
            CountedBody::Counted { .. } => "ended",
            CountedBody::PassThrough { .. } => "pass-through",
            CountedBody::ForceClosed { .. } => "force-closed",
            CountedBody::Empty { .. } => "empty",
        }
    }
}

impl<B, G> Body for CountedBody<B, G>
where
    B: Body,
    B::Error: Into<BoxError>,
    G: Counted,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let fail = match self.as_mut().project() {
            BodyProj::PassThrough { body } => return body.poll_frame(cx).map_err(Into::into),
            BodyProj::Empty { guard } => {
                guard.take();
                return Poll::Ready(None);
            }
            BodyProj::ForceClosed { guard } => guard.take().is_some(),
            BodyProj::Counted {
                mut body,
                guard,
                force,
            } => {
                let Some(counted) = guard.as_ref() else {
                    // Already ended: no longer counted.
                    return body.poll_frame(cx).map_err(Into::into);
                };
                let closing = counted.is_force_closing();
                if closing {
                    true
                } else {
                    match body.as_mut().poll_frame(cx) {
                        Poll::Ready(Some(Ok(frame))) => {
                            if body.is_end_stream() {
                                guard.take();
                            }
                            return Poll::Ready(Some(Ok(frame)));
                        }
                        Poll::Ready(Some(Err(e))) => {
                            guard.take();
                            return Poll::Ready(Some(Err(e.into())));
                        }
                        Poll::Ready(None) => {
                            guard.take();
                            return Poll::Ready(None);
                        }
                        Poll::Pending => {
                            match force.poll_cancelled(counted.force_token(), closing, cx) {
                                Poll::Ready(()) => true,
                                Poll::Pending => return Poll::Pending,
                            }
                        }
                    }
                }
            }
        };
        // Force-closed: drop the inner body and the count now, fail once, then end.
        self.set(CountedBody::ForceClosed { guard: None });
        if fail {
            Poll::Ready(Some(Err(Box::new(ForceClosed))))
        } else {
            Poll::Ready(None)
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            CountedBody::Counted { body, .. } | CountedBody::PassThrough { body } => {
                body.is_end_stream()
            }
            CountedBody::ForceClosed { guard } => guard.is_none(),
            CountedBody::Empty { .. } => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            CountedBody::Counted { body, .. } | CountedBody::PassThrough { body } => {
                body.size_hint()
            }
            CountedBody::ForceClosed { .. } => SizeHint::default(),
            CountedBody::Empty { .. } => SizeHint::with_exact(0),
        }
    }
}

/// The error a response body fails with when the stop deadline force-closes it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ForceClosed;

impl fmt::Display for ForceClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("response force-closed at the shutdown's stop deadline")
    }
}

impl StdError for ForceClosed {}
