//! [`UntilDrain`]: a stream that ends cleanly at drain start.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use pin_project_lite::pin_project;

use crate::lifecycle::{Step, StepWait};
use crate::{Drain, Shutdown};

pin_project! {
    /// A stream that ends cleanly at drain start, optionally with one last item.
    ///
    /// Made by [`Drain::until_drain`]. Long-lived responses (Server-Sent Events, long
    /// polls, endless downloads) wrap their stream in it so that, at drain start, the
    /// response ends properly (an HTTP/1 chunked body gets its terminating chunk, an
    /// HTTP/2 stream its `END_STREAM`) instead of being cut at the stop deadline.
    ///
    /// ```
    /// # async fn handler(drain: httpdown::Drain) {
    /// use axum::response::sse::{Event, Sse};
    /// use futures_util::stream::{self, StreamExt};
    /// use std::convert::Infallible;
    ///
    /// let ticks = stream::repeat_with(|| Ok::<_, Infallible>(Event::default().data("tick")));
    /// let events = drain
    ///     .until_drain(ticks)
    ///     .with_final(Ok(Event::default().event("shutdown").data("bye")));
    /// let response = Sse::new(events);
    /// # let _ = response;
    /// # }
    /// ```
    #[must_use = "streams do nothing unless polled"]
    pub struct UntilDrain<S: Stream> {
        #[pin]
        stream: S,
        shutdown: Shutdown,
        #[pin]
        drain_started: StepWait,
        last: Option<S::Item>,
        ended: bool,
    }
}

impl<S: Stream> UntilDrain<S> {
    pub(crate) fn new(stream: S, drain: &Drain) -> Self {
        UntilDrain {
            stream,
            shutdown: drain.shutdown().clone(),
            drain_started: StepWait::new(),
            last: None,
            ended: false,
        }
    }

    /// Yields `item` as the stream's last item at drain start (for example an SSE
    /// `event: shutdown`), then ends.
    pub fn with_final(mut self, item: S::Item) -> Self {
        self.last = Some(item);
        self
    }

    /// The wrapped stream.
    pub fn into_inner(self) -> S {
        self.stream
    }
}

impl<S: Stream> Stream for UntilDrain<S> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = self.project();
        if *this.ended {
            return Poll::Ready(None);
        }
        let lifecycle = this.shutdown.lifecycle();
        let started = lifecycle.reached(Step::DrainStarted);
        let token = lifecycle.token(Step::DrainStarted);
        if this
            .drain_started
            .poll_cancelled(token, started, cx)
            .is_ready()
        {
            *this.ended = true;
            return Poll::Ready(this.last.take());
        }
        match this.stream.poll_next(cx) {
            Poll::Ready(None) => {
                *this.ended = true;
                Poll::Ready(None)
            }
            other => other,
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.ended {
            return (0, Some(0));
        }
        // It may end at any moment; it never yields more than the stream plus the last.
        let upper = self
            .stream
            .size_hint()
            .1
            .and_then(|n| n.checked_add(usize::from(self.last.is_some())));
        (0, upper)
    }
}

impl<S: Stream + fmt::Debug> fmt::Debug for UntilDrain<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UntilDrain")
            .field("stream", &self.stream)
            .field("has_final", &self.last.is_some())
            .field("ended", &self.ended)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::{stream, StreamExt};

    use crate::Shutdown;

    /// B26: the stream runs normally until drain start, then yields its last item and
    /// ends; the drain delay does not end it.
    #[tokio::test(start_paused = true)]
    async fn ends_with_the_final_item_at_drain_start() {
        let shutdown = Shutdown::builder()
            .drain_delay(Duration::from_secs(1))
            .build();
        let drain = shutdown.drain();
        let ticks = stream::unfold(0, |n| async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Some((n, n + 1))
        });
        let mut events = Box::pin(drain.until_drain(ticks).with_final(-1));
        assert_eq!(events.next().await, Some(0));
        assert_eq!(events.next().await, Some(1));
        shutdown.trigger();
        // Still ticking during the drain delay.
        for n in 2..12 {
            assert_eq!(events.next().await, Some(n));
        }
        assert_eq!(events.next().await, Some(-1));
        assert_eq!(events.next().await, None);
        assert_eq!(events.next().await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn ends_without_a_final_item_and_when_the_stream_ends() {
        let shutdown = Shutdown::new();
        let drain = shutdown.drain();
        let mut short = Box::pin(drain.until_drain(stream::iter([1, 2])));
        assert_eq!(short.next().await, Some(1));
        assert_eq!(short.next().await, Some(2));
        assert_eq!(short.next().await, None);

        let mut endless = Box::pin(drain.until_drain(stream::pending::<u8>()));
        shutdown.trigger();
        assert_eq!(endless.next().await, None);
    }
}
