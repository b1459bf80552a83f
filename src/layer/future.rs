use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::{header, HeaderValue, Response, StatusCode};
use pin_project_lite::pin_project;
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::{Guard, ResponseBody};

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
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Counted {
            #[pin]
            future: F,
            guard: Option<Guard>,
            // Registered only once the inner future has returned `Pending`, so a response
            // that is ready at once never touches the shared wait list.
            forced: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
        },
        PassThrough {
            #[pin]
            future: F,
        },
        Rejected {
            guard: Option<Guard>,
        },
    }
}

impl<F> ResponseFuture<F> {
    pub(super) fn counted(future: F, guard: Guard) -> Self {
        ResponseFuture {
            kind: Kind::Counted {
                future,
                guard: Some(guard),
                forced: None,
            },
        }
    }

    pub(super) fn pass_through(future: F) -> Self {
        ResponseFuture {
            kind: Kind::PassThrough { future },
        }
    }

    pub(super) fn rejected(guard: Guard) -> Self {
        ResponseFuture {
            kind: Kind::Rejected { guard: Some(guard) },
        }
    }
}

fn unavailable<B>(body: ResponseBody<B>) -> Response<ResponseBody<B>> {
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::PassThrough { future } => future
                .poll(cx)
                .map_ok(|res| res.map(ResponseBody::pass_through)),
            KindProj::Rejected { guard } => {
                Poll::Ready(Ok(unavailable(ResponseBody::empty(guard.take()))))
            }
            KindProj::Counted {
                future,
                guard,
                forced,
            } => {
                if let Poll::Ready(mut result) = future.poll(cx) {
                    let guard = guard.take();
                    if let (Ok(response), Some(guard)) = (&mut result, &guard) {
                        guard.on_response(response);
                    }
                    return Poll::Ready(
                        result.map(|res| res.map(|b| ResponseBody::counted(b, guard))),
                    );
                }
                let Some(counted) = guard.as_ref() else {
                    // Polled again after completion: nothing more to count.
                    return Poll::Pending;
                };
                if !counted.is_forced() {
                    if forced.is_none() {
                        *forced = Some(Box::pin(counted.force_token().clone().cancelled_owned()));
                    }
                    if let Some(wait) = forced.as_mut() {
                        ready!(wait.as_mut().poll(cx));
                    }
                }
                Poll::Ready(Ok(unavailable(ResponseBody::aborted(guard.take()))))
            }
        }
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
