//! Server-Sent Events and other long-lived bodies (B26) over `serve`: a stream wrapped in
//! `Drain::until_drain` ends cleanly at drain start; one that ignores the drain is cut at
//! the stop deadline, not before and not never.

mod common;

use std::convert::Infallible;
use std::future::IntoFuture;
use std::time::Duration;

use axum::response::sse::{Event, Sse};
use axum::routing::get;
use axum::Router;
use common::*;
use futures_util::{stream, Stream};
use httpdown::{Drain, Outcome};
use tokio::time::Instant;

fn ticks() -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold(0u64, |n| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Some((Ok(Event::default().data(format!("tick {n}"))), n + 1))
    })
}

fn sse_app() -> Router {
    Router::new()
        .route(
            "/events",
            get(|drain: Drain| async move {
                let bye = Event::default().event("shutdown").data("bye");
                Sse::new(drain.until_drain(ticks()).with_final(Ok(bye)))
            }),
        )
        .route("/ignores-drain", get(|| async { Sse::new(ticks()) }))
}

/// B26: at drain start the event stream sends its last event and ends with the
/// terminating chunk; the shutdown does not wait for the stop deadline.
#[tokio::test(start_paused = true)]
async fn an_event_stream_ends_cleanly_at_drain_start() {
    let shutdown = shutdown(Duration::from_secs(30));
    let (listener, connector) = channel_listener();
    let server = tokio::spawn(httpdown::serve(listener, sse_app(), &shutdown).into_future());
    let mut conn = connector.connect();
    send_get(&mut conn, "/events").await;
    let head = read_until(&mut conn, "data: tick 2\n\n").await;
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    let t0 = Instant::now();
    shutdown.trigger();
    let (rest, end) = read_to_end(&mut conn).await;
    assert!(rest.contains("event: shutdown\ndata: bye\n\n"), "{rest:?}");
    assert!(
        rest.ends_with("0\r\n\r\n"),
        "a clean end of the chunked body: {rest:?}"
    );
    assert_eq!(end, End::Eof);
    assert!(
        !rest.contains("tick 3"),
        "no tick after drain start: {rest:?}"
    );
    let report = served(server).await;
    assert_eq!(Instant::now(), t0, "drained at once");
    assert_eq!(report.outcome(), Outcome::Drained);
}

/// B26: a stream that ignores the drain keeps ticking through the drain and is cut exactly
/// at the stop deadline, with no terminating chunk.
#[tokio::test(start_paused = true)]
async fn an_event_stream_that_ignores_the_drain_is_cut_at_the_stop_deadline() {
    let shutdown = shutdown(Duration::from_secs(3));
    let (listener, connector) = channel_listener();
    let server = tokio::spawn(httpdown::serve(listener, sse_app(), &shutdown).into_future());
    let mut conn = connector.connect();
    send_get(&mut conn, "/ignores-drain").await;
    read_until(&mut conn, "data: tick 0\n\n").await;
    let t0 = Instant::now();
    shutdown.trigger();
    let (rest, _) = read_to_end(&mut conn).await;
    assert_eq!(Instant::now() - t0, Duration::from_secs(3));
    assert!(
        rest.contains("data: tick 20\n\n"),
        "ticked through the drain: {rest:?}"
    );
    assert!(!rest.contains("0\r\n\r\n"), "cut, not ended: {rest:?}");
    let report = served(server).await;
    assert_eq!(
        report.outcome(),
        Outcome::ForceClosed {
            connections: 1,
            requests: 1
        }
    );
}
