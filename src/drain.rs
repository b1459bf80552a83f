//! [`Drain`]: how a handler sees the shutdown of the request it is handling.
//!
//! The drain travels with the request's task, not inside the request: while
//! [`serve`](crate::serve()) or a [`GracefulLayer`](crate::GracefulLayer) runs a
//! request's service (its `call` and every poll of its response future), the request's
//! `Drain` is the thread's current one, which [`Drain::current`] (and the axum extractor)
//! reads. Nothing is inserted into the request, so it costs a request nothing unless a
//! handler asks.

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::mem::ManuallyDrop;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

use crate::lifecycle::Step;
use crate::{Phase, Shutdown, UntilDrain};

thread_local! {
    /// The drain of the request whose service is running on this thread, if any.
    ///
    /// `ManuallyDrop`, so the thread-local needs no destructor (and its every access no
    /// check that one is registered): a drain is only ever here while its scope runs,
    /// and the scope takes it back out, also on unwind.
    static CURRENT: Cell<ManuallyDrop<Option<Drain>>> = const {
        Cell::new(ManuallyDrop::new(None))
    };
}

/// Swaps `drain` in as the thread's current drain; returns the one it replaces.
#[inline]
fn swap_current(drain: Option<Drain>) -> Option<Drain> {
    ManuallyDrop::into_inner(CURRENT.with(|current| current.replace(ManuallyDrop::new(drain))))
}

/// A handle that lets a handler observe the shutdown of the request it is handling.
///
/// Inside a handler (anything that runs while [`serve`](crate::serve()) or
/// [`GracefulLayer`](crate::GracefulLayer) runs the request's service) get it with
/// [`Drain::current`], or as an axum extractor with the `axum` feature
/// (`drain: Drain` as a handler argument). Outside a request, [`Shutdown::drain`] gives
/// the same handle. It is not carried into tasks the handler spawns: take it first and
/// move it in (as a WebSocket handler does before its upgrade).
///
/// Request cancellation does not happen at drain start: a handler keeps running until it
/// finishes or the stop deadline passes. Long-lived handlers (SSE, long polls) can await
/// [`Drain::started`] (or use [`Drain::until_drain`]) to end early and cleanly.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use tower::{service_fn, Layer, ServiceExt};
/// use httpdown::{Drain, Phase, Shutdown};
///
/// let shutdown = Shutdown::new();
/// let app = shutdown.layer().layer(service_fn(|_req: http::Request<()>| async {
///     let drain = Drain::current().expect("inside a counted request");
///     Ok::<_, std::convert::Infallible>(http::Response::new(drain.phase().to_string()))
/// }));
/// let response = app.oneshot(http::Request::new(())).await.unwrap();
/// # use http_body_util::BodyExt;
/// let body = response.into_body().collect().await.unwrap().to_bytes();
/// assert_eq!(body, "running");
/// assert!(Drain::current().is_none(), "only while a request runs");
/// # }
/// ```
#[derive(Clone)]
pub struct Drain {
    shutdown: Shutdown,
}

impl Drain {
    /// The drain of the request being handled on this thread, if any: `Some` inside a
    /// service run by [`serve`](crate::serve()) or wrapped in a
    /// [`GracefulLayer`](crate::GracefulLayer), `None` elsewhere.
    pub fn current() -> Option<Drain> {
        let drain = swap_current(None);
        let copy = drain.clone();
        swap_current(drain);
        copy
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.shutdown.phase()
    }

    /// Whether drain start has passed.
    pub fn is_started(&self) -> bool {
        self.shutdown.lifecycle().reached(Step::DrainStarted)
    }

    /// Resolves at drain start.
    pub fn started(&self) -> impl Future<Output = ()> + Send + 'static {
        self.shutdown.drain_started()
    }

    /// Resolves at the stop deadline, just before the request is force-closed.
    pub fn stop_deadline(&self) -> impl Future<Output = ()> + Send + 'static {
        self.shutdown.stop_deadline()
    }

    /// Wraps `stream` so it ends cleanly at drain start. See [`UntilDrain`].
    pub fn until_drain<St: futures_core::Stream>(&self, stream: St) -> UntilDrain<St> {
        UntilDrain::new(stream, self)
    }

    /// The controller.
    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// Whether the request being handled on this thread is already counted for
    /// `shutdown` (by `serve` or an outer layer of the same controller).
    pub(crate) fn current_is(shutdown: &Shutdown) -> bool {
        let drain = swap_current(None);
        let same = drain.as_ref().is_some_and(|d| d.shutdown.same_as(shutdown));
        swap_current(drain);
        same
    }

    /// Runs `f` with `slot`'s drain as the thread's current one, then puts it back in
    /// `slot` (also if `f` panics). An empty `slot` leaves the current drain as it is.
    #[inline]
    pub(crate) fn scoped<R>(slot: &mut Option<Drain>, f: impl FnOnce() -> R) -> R {
        let _entered = Entered::new(slot);
        f()
    }
}

/// The scope of a current drain: entered with the drain taken from a slot, left (on drop,
/// so also on unwind) with the drain given back.
pub(crate) struct Entered<'a> {
    /// `None` when the slot was empty and nothing was swapped.
    slot: Option<&'a mut Option<Drain>>,
    previous: Option<Drain>,
}

impl<'a> Entered<'a> {
    #[inline]
    pub(crate) fn new(slot: &'a mut Option<Drain>) -> Self {
        if slot.is_none() {
            return Entered {
                slot: None,
                previous: None,
            };
        }
        let previous = swap_current(slot.take());
        Entered {
            slot: Some(slot),
            previous,
        }
    }
}

impl Drop for Entered<'_> {
    #[inline]
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            *slot = swap_current(self.previous.take());
        }
    }
}

impl Shutdown {
    /// A [`Drain`] handle on this controller, as handlers get it with
    /// [`Drain::current`].
    pub fn drain(&self) -> Drain {
        Drain {
            shutdown: self.clone(),
        }
    }
}

impl fmt::Debug for Drain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Drain")
            .field("phase", &self.phase())
            .finish()
    }
}

pin_project! {
    /// Runs a future with a drain as the thread's current one during each poll: a
    /// connection task of `serve`, or an HTTP/2 stream task.
    pub(crate) struct Scoped<F> {
        #[pin]
        future: F,
        drain: Option<Drain>,
    }
}

impl<F> Scoped<F> {
    pub(crate) fn new(future: F, drain: Drain) -> Self {
        Scoped {
            future,
            drain: Some(drain),
        }
    }
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let future = this.future;
        Drain::scoped(this.drain, || future.poll(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_drain_reads_its_own_controller() {
        let shutdown = Shutdown::new();
        let drain = shutdown.drain();
        assert!(!drain.is_started());
        assert_eq!(format!("{drain:?}"), "Drain { phase: Running }");
        drain.shutdown().trigger();
        assert!(shutdown.is_triggered(), "the same controller");
        shutdown.wait().await;
        assert!(drain.is_started());
    }

    #[test]
    fn the_current_drain_is_scoped_and_restored_even_on_panic() {
        let outer = Shutdown::new();
        let inner = Shutdown::new();
        assert!(Drain::current().is_none());
        let mut slot = Some(outer.drain());
        Drain::scoped(&mut slot, || {
            assert!(Drain::current_is(&outer));
            let mut nested = Some(inner.drain());
            Drain::scoped(&mut nested, || assert!(Drain::current_is(&inner)));
            assert!(nested.is_some(), "given back");
            assert!(Drain::current_is(&outer), "the outer one is back");
            let mut empty = None;
            Drain::scoped(&mut empty, || assert!(Drain::current_is(&outer)));
        });
        assert!(slot.is_some());
        assert!(Drain::current().is_none());

        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Drain::scoped(&mut slot, || panic!("inside"));
        }));
        assert!(panicked.is_err());
        assert!(slot.is_some(), "given back on unwind");
        assert!(
            Drain::current().is_none(),
            "the thread's drain restored on unwind"
        );
    }
}
