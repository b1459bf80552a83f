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

/// How a counted request waits for the stop deadline while it is pending.
pub(crate) trait ForceWait {
    fn new() -> Self;

    /// `Ready` once the stop deadline has passed (`closing`, read by the caller); once
    /// pending, makes sure the request is polled again when it passes.
    fn poll_force_closing(
        self: Pin<&mut Self>,
        token: &CancellationToken,
        closing: bool,
        cx: &mut Context<'_>,
    ) -> Poll<()>;
}

/// A request whose owner polls it again at the stop deadline (`serve`'s connection and
/// stream tasks do): it registers nothing, and adds nothing to its future or body.
#[derive(Debug)]
pub(crate) struct OwnerPolls;

impl ForceWait for OwnerPolls {
    #[inline]
    fn new() -> Self {
        OwnerPolls
    }

    #[inline]
    fn poll_force_closing(
        self: Pin<&mut Self>,
        _token: &CancellationToken,
        closing: bool,
        _cx: &mut Context<'_>,
    ) -> Poll<()> {
        if closing {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// The guard of one counted request: it counts while it lives.
pub(crate) trait Counted {
    /// How the request waits for the stop deadline.
    type Wait: ForceWait;

    /// Whether the stop deadline has passed (an atomic load).
    fn is_force_closing(&self) -> bool;

    /// The token cancelled at the stop deadline, for a request that has to wait.
    fn force_token(&self) -> &CancellationToken;

    /// A gRPC call: force-closed with `grpc-status: 14` (UNAVAILABLE), which gRPC clients
    /// may retry, rather than with a transport error they read as UNKNOWN.
    fn is_grpc(&self) -> bool {
        false
    }

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
    pub(crate) enum CountedFuture<F, G: Counted> {
        Counted {
            #[pin]
            future: F,
            guard: Option<G>,
            // Registered only once the inner future is pending, so a response ready at
            // once never touches the stop deadline's wait list.
            #[pin]
            force: G::Wait,
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

impl<F, G: Counted> CountedFuture<F, G> {
    #[inline]
    pub(crate) fn counted(future: F, guard: G) -> Self {
        CountedFuture::Counted {
            future,
            guard: Some(guard),
            force: G::Wait::new(),
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

/// Whether `request` is a gRPC call: a `POST` over HTTP/2 with
/// `content-type: application/grpc...` (the cheap checks first: most requests stop there).
#[inline]
pub(crate) fn is_grpc<B>(request: &http::Request<B>) -> bool {
    request.version() == http::Version::HTTP_2
        && request.method() == http::Method::POST
        && request
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// `grpc-status: 14` (UNAVAILABLE) and why, as a gRPC status in headers or trailers.
fn grpc_unavailable_status(headers: &mut http::HeaderMap) {
    headers.insert("grpc-status", HeaderValue::from_static("14"));
    headers.insert(
        "grpc-message",
        // Percent-encoded, as gRPC requires.
        HeaderValue::from_static("server%20shutting%20down"),
    );
}

/// The answer to a request that is not, or no longer, served: for a gRPC call a
/// "trailers-only" response with `grpc-status: 14` (UNAVAILABLE); otherwise a `503` with
/// `Connection: close`, whose body fails at once when `cut` (the stop deadline passed
/// while it was pending). The guard goes into the body: the request counts until the
/// answer is sent.
fn refusal<B, G: Counted>(guard: Option<G>, cut: bool) -> Response<CountedBody<B, G>> {
    if guard.as_ref().is_some_and(Counted::is_grpc) {
        let mut response = Response::new(CountedBody::empty(guard));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        grpc_unavailable_status(response.headers_mut());
        response
    } else if cut {
        unavailable(CountedBody::force_closed(guard))
    } else {
        unavailable(CountedBody::empty(guard))
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
            FutureProj::Rejected { guard } => Poll::Ready(Ok(refusal(guard.take(), false))),
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
                    .poll_force_closing(counted.force_token(), closing, cx)
                    .is_pending()
                {
                    return Poll::Pending;
                }
                Poll::Ready(Ok(refusal(guard.take(), true)))
            }
        }
    }
}

pin_project! {
    /// The response body of a counted request.
    #[project = BodyProj]
    pub(crate) enum CountedBody<B, G: Counted> {
        Counted {
            #[pin]
            body: B,
            guard: Option<G>,
            #[pin]
            force: G::Wait,
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

impl<B, G: Counted> CountedBody<B, G> {
    #[inline]
    fn counted(body: B, guard: Option<G>) -> Self {
        CountedBody::Counted {
            body,
            guard,
            force: G::Wait::new(),
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
            BodyProj::Counted { guard, .. }
                if guard
                    .as_ref()
                    .is_some_and(|g| g.is_grpc() && g.is_force_closing()) =>
            {
                // A gRPC call ends with its status in trailers (once the guard is gone).
                let guard = guard.take();
                self.set(CountedBody::Empty { guard: None });
                drop(guard);
                let mut trailers = http::HeaderMap::new();
                grpc_unavailable_status(&mut trailers);
                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
            }
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
                            match force.poll_force_closing(counted.force_token(), closing, cx) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[test]
    fn grpc_is_a_post_over_http2_with_a_grpc_content_type() {
        let request = |version, method, content_type: Option<&str>| {
            let mut builder = http::Request::builder().version(version).method(method);
            if let Some(content_type) = content_type {
                builder = builder.header(header::CONTENT_TYPE, content_type);
            }
            builder.body(()).unwrap()
        };
        use http::{Method, Version};
        let grpc = Some("application/grpc+proto");
        assert!(is_grpc(&request(Version::HTTP_2, Method::POST, grpc)));
        assert!(!is_grpc(&request(Version::HTTP_2, Method::GET, None)));
        assert!(!is_grpc(&request(
            Version::HTTP_2,
            Method::POST,
            Some("text/plain")
        )));
        assert!(!is_grpc(&request(Version::HTTP_11, Method::POST, grpc)));
        assert!(!is_grpc(&request(Version::HTTP_11, Method::GET, None)));
    }

    #[test]
    fn force_closed_says_what_happened() {
        assert_eq!(
            ForceClosed.to_string(),
            "response force-closed at the shutdown's stop deadline"
        );
    }
    use http_body_util::{BodyExt, Full};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A guard that records what the core does with it.
    struct Probe {
        token: CancellationToken,
        force_closing: Arc<AtomicBool>,
        responses: Arc<AtomicUsize>,
        scoped: Arc<AtomicUsize>,
        dropped: Arc<AtomicUsize>,
    }

    impl Counted for Probe {
        type Wait = LazyWait;

        fn is_force_closing(&self) -> bool {
            self.force_closing.load(Ordering::SeqCst)
        }
        fn force_token(&self) -> &CancellationToken {
            &self.token
        }
        fn on_response<B>(&mut self, _response: &mut Response<B>) {
            self.responses.fetch_add(1, Ordering::SeqCst);
        }
        fn scoped<R>(&mut self, f: impl FnOnce() -> R) -> R {
            self.scoped.fetch_add(1, Ordering::SeqCst);
            f()
        }
    }

    impl Drop for Probe {
        fn drop(&mut self) {
            self.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[derive(Default, Clone)]
    struct Seen {
        force_closing: Arc<AtomicBool>,
        responses: Arc<AtomicUsize>,
        scoped: Arc<AtomicUsize>,
        dropped: Arc<AtomicUsize>,
    }

    impl Seen {
        fn guard(&self, token: &CancellationToken) -> Probe {
            Probe {
                token: token.clone(),
                force_closing: Arc::clone(&self.force_closing),
                responses: Arc::clone(&self.responses),
                scoped: Arc::clone(&self.scoped),
                dropped: Arc::clone(&self.dropped),
            }
        }
        fn count(n: &Arc<AtomicUsize>) -> usize {
            n.load(Ordering::SeqCst)
        }
    }

    type Result<T> = std::result::Result<T, std::convert::Infallible>;

    #[tokio::test]
    async fn the_guard_sees_the_response_and_lives_until_the_body_ends() {
        let (seen, token) = (Seen::default(), CancellationToken::new());
        let future = async { Result::Ok(Response::new(Full::new(bytes::Bytes::from("hi")))) };
        let response = CountedFuture::counted(future, seen.guard(&token))
            .await
            .unwrap();
        assert_eq!(Seen::count(&seen.responses), 1);
        assert_eq!(
            Seen::count(&seen.scoped),
            1,
            "the inner future polled in scope"
        );
        assert_eq!(Seen::count(&seen.dropped), 0, "moved into the body");
        let body = response.into_body();
        assert_eq!(body.state(), "counted");
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(bytes, "hi");
        assert_eq!(Seen::count(&seen.dropped), 1, "dropped at the body's end");
    }

    #[tokio::test]
    async fn a_pending_response_becomes_a_503_at_the_stop_deadline() {
        let (seen, token) = (Seen::default(), CancellationToken::new());
        let future = std::future::pending::<Result<Response<Full<bytes::Bytes>>>>();
        let mut counted = Box::pin(CountedFuture::counted(future, seen.guard(&token)));
        assert!(counted.as_mut().now_or_never().is_none());
        seen.force_closing.store(true, Ordering::SeqCst);
        token.cancel();
        let response = counted.await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::CONNECTION], "close");
        assert_eq!(Seen::count(&seen.responses), 0, "not the app's response");
        let mut body = Box::pin(response.into_body());
        let error = body.frame().await.unwrap().unwrap_err();
        assert!(error.is::<ForceClosed>(), "{error}");
        assert!(body.frame().await.is_none());
        assert_eq!(Seen::count(&seen.dropped), 1);
    }

    #[tokio::test]
    async fn rejected_and_passed_through_requests() {
        let (seen, token) = (Seen::default(), CancellationToken::new());
        let rejected =
            CountedFuture::<std::future::Ready<Result<Response<Full<bytes::Bytes>>>>, _>::rejected(
                seen.guard(&token),
            );
        let response = rejected.await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.body().is_end_stream());
        assert_eq!(Seen::count(&seen.dropped), 0, "held by the empty body");
        drop(response);
        assert_eq!(Seen::count(&seen.dropped), 1);

        let passed = CountedFuture::<_, Probe>::pass_through(async {
            Result::Ok(Response::new(Full::new(bytes::Bytes::from("through"))))
        });
        let body = passed.await.unwrap().into_body();
        assert_eq!(body.state(), "pass-through");
        assert_eq!(body.collect().await.unwrap().to_bytes(), "through");
    }
}

/// The layer's wait: a [`StepWait`] made (and boxed) only once a request has to wait. A
/// request ready at once (most of them) carries 8 bytes for it and allocates nothing;
/// inline, the wait's 88 bytes in both the future and the body cost more in moves
/// (measured: about 240 instructions per request) than the one allocation of a request
/// that streams.
#[derive(Debug)]
pub(crate) struct LazyWait(Option<Pin<Box<StepWait>>>);

impl ForceWait for LazyWait {
    #[inline]
    fn new() -> Self {
        LazyWait(None)
    }

    #[inline]
    fn poll_force_closing(
        self: Pin<&mut Self>,
        token: &CancellationToken,
        closing: bool,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        if closing {
            return Poll::Ready(());
        }
        self.get_mut()
            .0
            .get_or_insert_with(|| Box::pin(StepWait::new()))
            .as_mut()
            .poll_cancelled(token, closing, cx)
    }
}
