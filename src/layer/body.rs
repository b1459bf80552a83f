use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::Guard;
use crate::BoxError;

pin_project! {
    /// Response body of [`Graceful`](super::Graceful).
    ///
    /// The request stays counted until this body has ended (its last frame was read) or
    /// has been dropped. If the stop deadline passes while it is still streaming, the next
    /// poll fails with [`Aborted`], so the server cuts the response (no terminating chunk,
    /// or fewer bytes than `Content-Length`) instead of ending it cleanly.
    pub struct ResponseBody<B> {
        #[pin]
        kind: BodyKind<B>,
    }
}

pin_project! {
    #[project = BodyProj]
    enum BodyKind<B> {
        Counted {
            #[pin]
            body: B,
            guard: Option<Guard>,
            forced: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
        },
        PassThrough {
            #[pin]
            body: B,
        },
        // Fails on the first poll (while it still holds the guard), then ends.
        Aborted {
            guard: Option<Guard>,
        },
        Empty {
            guard: Option<Guard>,
        },
    }
}

impl<B> ResponseBody<B> {
    pub(super) fn counted(body: B, guard: Option<Guard>) -> Self {
        ResponseBody {
            kind: BodyKind::Counted {
                body,
                guard,
                forced: None,
            },
        }
    }

    pub(super) fn pass_through(body: B) -> Self {
        ResponseBody {
            kind: BodyKind::PassThrough { body },
        }
    }

    pub(super) fn aborted(guard: Option<Guard>) -> Self {
        ResponseBody {
            kind: BodyKind::Aborted { guard },
        }
    }

    pub(super) fn empty(guard: Option<Guard>) -> Self {
        ResponseBody {
            kind: BodyKind::Empty { guard },
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut kind = self.project().kind;
        let fail = match kind.as_mut().project() {
            BodyProj::PassThrough { body } => return body.poll_frame(cx).map_err(Into::into),
            BodyProj::Empty { guard } => {
                guard.take();
                return Poll::Ready(None);
            }
            BodyProj::Aborted { guard } => guard.take().is_some(),
            BodyProj::Counted {
                mut body,
                guard,
                forced,
            } => {
                let Some(counted) = guard.as_ref() else {
                    // Already ended: no longer counted.
                    return body.poll_frame(cx).map_err(Into::into);
                };
                if counted.is_forced() {
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
                            if forced.is_none() {
                                let token = guard.as_ref().map(|g| g.force_token().clone());
                                *forced = token.map(|t| Box::pin(t.cancelled_owned()));
                            }
                            match forced.as_mut().map(|wait| wait.as_mut().poll(cx)) {
                                Some(Poll::Ready(())) => true,
                                _ => return Poll::Pending,
                            }
                        }
                    }
                }
            }
        };
        // Cut: drop the inner body and the count now, fail once, then end.
        kind.set(BodyKind::Aborted { guard: None });
        if fail {
            Poll::Ready(Some(Err(Box::new(Aborted))))
        } else {
            Poll::Ready(None)
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            BodyKind::Counted { body, .. } | BodyKind::PassThrough { body } => body.is_end_stream(),
            BodyKind::Aborted { guard } => guard.is_none(),
            BodyKind::Empty { .. } => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            BodyKind::Counted { body, .. } | BodyKind::PassThrough { body } => body.size_hint(),
            BodyKind::Aborted { .. } => SizeHint::default(),
            BodyKind::Empty { .. } => SizeHint::with_exact(0),
        }
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            BodyKind::Counted { guard, .. } if guard.is_some() => "counted",
            BodyKind::Counted { .. } => "ended",
            BodyKind::PassThrough { .. } => "pass-through",
            BodyKind::Aborted { .. } => "aborted",
            BodyKind::Empty { .. } => "empty",
        };
        f.debug_struct("ResponseBody").field("kind", &kind).finish()
    }
}

/// The error a [`ResponseBody`] fails with when the stop deadline cuts it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Aborted;

impl fmt::Display for Aborted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("response cut at the shutdown stop deadline")
    }
}

impl StdError for Aborted {}
