//! B65: a handler that answers without reading the request body does not cost the client
//! its keep-alive connection when `serve` discards unread bodies (an opt-in), within its
//! bounds in bytes and time; without the option, or beyond the bounds, the connection
//! closes as hyper closes it. All on paused time, over in-memory pipes, with the body
//! sent after the response as a proxy's separate packet would come.

mod common;

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::post;
use axum::Router;
use common::*;
use httpdown::{DiscardUnread, Error, Report, Shutdown};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;

/// `POST /early` answers without reading the body; `POST /half` reads 5 bytes of it.
fn unread_app() -> Router {
    app(Arc::default())
        .route("/early", post(|| async { "early" }))
        .route(
            "/half",
            post(|body: axum::body::Body| async move {
                use http_body_util::BodyExt;
                let mut body = body;
                let mut read = 0;
                while read < 5 {
                    match body.frame().await {
                        Some(Ok(frame)) => read += frame.data_ref().map_or(0, |d| d.len()),
                        _ => break,
                    }
                }
                "half"
            }),
        )
}

fn serve_on_pipe(
    shutdown: &Shutdown,
    limits: Option<DiscardUnread>,
) -> (Connector, JoinHandle<Result<Report, Error>>) {
    let (listener, connector) = channel_listener();
    let serving = httpdown::serve(listener, unread_app(), shutdown);
    let server = match limits {
        Some(limits) => tokio::spawn(serving.discard_unread_bodies(limits).into_future()),
        None => tokio::spawn(serving.into_future()),
    };
    (connector, server)
}

/// Sends a POST head announcing `len` bytes, reads the early answer, then sends the body
/// in `chunks` pieces `gap` apart, then a GET on the same connection. Whether the GET was
/// answered (the connection survived), and everything read.
async fn post_then_get(
    connector: &Connector,
    path: &str,
    head_extra: &str,
    len: usize,
    chunks: usize,
    gap: Duration,
) -> (bool, String) {
    let mut conn = connector.connect();
    let head =
        format!("POST {path} HTTP/1.1\r\nHost: t\r\n{head_extra}Content-Length: {len}\r\n\r\n");
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut seen = String::new();
    if path == "/early" {
        seen = read_until(&mut conn, "early").await;
    }
    let body = vec![b'x'; len];
    for piece in body.chunks(len.div_ceil(chunks).max(1)) {
        tokio::time::sleep(gap).await;
        if conn.write_all(piece).await.is_err() {
            return (false, seen);
        }
    }
    if path == "/half" {
        seen = read_until(&mut conn, "half").await;
    }
    if conn
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .is_err()
    {
        return (false, seen);
    }
    let rest = read_rest(&mut conn).await;
    seen.push_str(&rest);
    (rest.ends_with("hello"), seen)
}

/// Reads until `hello` ends a response or the connection closes.
async fn read_rest(conn: &mut DuplexStream) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
            if seen.ends_with(b"hello") {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .expect("neither answered nor closed");
    String::from_utf8_lossy(&seen).into_owned()
}

#[tokio::test(start_paused = true)]
async fn an_unread_body_costs_the_connection_only_without_the_option() {
    for discard in [false, true] {
        let shutdown = shutdown(Duration::from_secs(10));
        let (connector, server) = serve_on_pipe(&shutdown, discard.then(DiscardUnread::new));
        let gap = Duration::from_millis(5);
        let (kept, seen) = post_then_get(&connector, "/early", "", 100, 1, gap).await;
        assert_eq!(
            kept, discard,
            "discard {discard}: the next request served: {seen:?}"
        );
        // A body the handler read in part: the rest is discarded the same way.
        let (kept, seen) = post_then_get(&connector, "/half", "", 100, 4, gap).await;
        assert_eq!(kept, discard, "discard {discard}, half read: {seen:?}");
        shutdown.trigger();
        no_panics(served(server).await);
    }
}

#[tokio::test(start_paused = true)]
async fn beyond_its_bounds_the_rest_is_not_waited_for() {
    let shutdown = shutdown(Duration::from_secs(10));
    let limits = DiscardUnread::new()
        .max_bytes(64)
        .max_time(Duration::from_millis(100));
    let (connector, server) = serve_on_pipe(&shutdown, Some(limits));
    let gap = Duration::from_millis(5);
    // Within both bounds.
    let (kept, seen) = post_then_get(&connector, "/early", "", 64, 4, gap).await;
    assert!(kept, "64 bytes within 20 ms: {seen:?}");
    // Announced longer than the byte bound: not read at all.
    let (kept, _) = post_then_get(&connector, "/early", "", 65, 1, gap).await;
    assert!(!kept, "65 bytes announced");
    // Chunked, with no length announced, longer than the bound once read.
    let mut conn = connector.connect();
    conn.write_all(b"POST /early HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    read_until(&mut conn, "early").await;
    for _ in 0..2 {
        tokio::time::sleep(gap).await;
        let _ = conn.write_all(b"30\r\n").await;
        let _ = conn.write_all(&[b'y'; 0x30]).await;
        let _ = conn.write_all(b"\r\n").await;
    }
    tokio::time::sleep(gap).await;
    let _ = conn
        .write_all(b"0\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await;
    assert!(
        !read_rest(&mut conn).await.ends_with("hello"),
        "96 chunked bytes"
    );
    // Too slow: the last piece comes after the time bound.
    let slow = Duration::from_millis(40);
    let (kept, _) = post_then_get(&connector, "/early", "", 40, 4, slow).await;
    assert!(!kept, "the rest 160 ms late");
    shutdown.trigger();
    no_panics(served(server).await);
}

/// A request that expects `100 Continue` and whose body the handler never read: the
/// body is not asked for (no `100 Continue`) nor waited for (the client may never send
/// it): the connection closes right after the answer, as without the option.
#[tokio::test(start_paused = true)]
async fn an_expect_continue_body_is_not_asked_for() {
    let shutdown = shutdown(Duration::from_secs(10));
    let limits = DiscardUnread::new().max_time(Duration::from_secs(5));
    let (connector, server) = serve_on_pipe(&shutdown, Some(limits));
    let mut conn = connector.connect();
    conn.write_all(
        b"POST /early HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n",
    )
    .await
    .unwrap();
    let answered = tokio::time::Instant::now();
    let seen = read_until(&mut conn, "early").await;
    let rest = read_rest(&mut conn).await;
    assert!(
        !seen.contains("100 Continue") && !rest.contains("100 Continue"),
        "{seen:?} {rest:?}"
    );
    assert!(
        answered.elapsed() < Duration::from_secs(1),
        "closed {:?} after the answer: the body was waited for",
        answered.elapsed()
    );
    shutdown.trigger();
    no_panics(served(server).await);
}

/// Once the drain has started nothing is discarded (the connection closes after its
/// response anyway), and a discard under way stops: the shutdown never waits for a
/// body's rest.
#[tokio::test(start_paused = true)]
async fn the_drain_does_not_wait_for_discarded_bodies() {
    let shutdown = shutdown(Duration::from_secs(10));
    let limits = DiscardUnread::new().max_time(Duration::from_secs(60));
    let (connector, server) = serve_on_pipe(&shutdown, Some(limits));
    let mut conn = connector.connect();
    conn.write_all(b"POST /early HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n")
        .await
        .unwrap();
    read_until(&mut conn, "early").await;
    conn.write_all(&[b'x'; 10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let triggered = tokio::time::Instant::now();
    shutdown.trigger();
    let report = no_panics(served(server).await);
    assert!(
        triggered.elapsed() < Duration::from_secs(1),
        "the drain waited {:?} for a body's rest",
        triggered.elapsed()
    );
    assert_eq!(report.outcome(), httpdown::Outcome::Drained, "{report}");
}
