//! HTTP/1 edges of the drain (B21, B22, B23): a request already on an idle keep-alive
//! connection, pipelined requests, and the idle-close race options.

mod common;

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use httpdown::{Error, IdleClose, Outcome, Shutdown};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

/// Serves the test app over in-memory pipes (paused time) with `idle_close`.
fn serve_on_pipe(
    shutdown: &Shutdown,
    idle_close: IdleClose,
) -> (
    Connector,
    tokio::task::JoinHandle<Result<httpdown::Report, Error>>,
) {
    serve_pipe_with(shutdown, |serve| serve.idle_close(idle_close))
}

/// Splits raw HTTP/1 responses read from one connection into their status lines.
fn status_lines(text: &str) -> Vec<&str> {
    text.split("\r\n")
        .filter(|line| line.starts_with("HTTP/1.1 "))
        .collect()
}

/// B21: the bytes of a request arrive on an idle keep-alive connection just before drain
/// start (the server has not read them yet). The request is served, with
/// `Connection: close`, not dropped unread.
///
/// The request is written and the shutdown triggered in the same poll of this
/// single-threaded runtime, so the connection task sees drain start before the reactor
/// has reported the socket readable.
#[tokio::test]
async fn a_request_already_on_an_idle_connection_is_served_with_connection_close() {
    for round in 0..20 {
        let shutdown = shutdown(Duration::from_secs(10));
        let (addr, server) = start(app(Arc::default()), &shutdown).await;
        let mut conn = get_request(addr, "/").await;
        read_until(&mut conn, "hello").await;
        // Let the connection go idle (the response's guard released).
        tokio::time::sleep(Duration::from_millis(5)).await;

        send_get(&mut conn, "/").await;
        shutdown.trigger();
        let (text, end) = read_to_end(&mut conn).await;
        assert_eq!(
            status_lines(&text),
            ["HTTP/1.1 200 OK"],
            "round {round}: {text:?}"
        );
        assert!(
            text.to_ascii_lowercase().contains("connection: close\r\n"),
            "round {round}: {text:?}"
        );
        assert!(text.ends_with("hello"), "round {round}: {text:?}");
        assert_eq!(end, End::Eof, "round {round}");
        let report = served(server).await;
        assert_eq!(report.outcome(), Outcome::Drained, "round {round}");
    }
}

/// B22: requests pipelined behind the one in progress at drain start are not processed;
/// the connection ends cleanly (FIN, not a reset) right after the final response, even
/// for a client that reads the response late.
#[tokio::test]
async fn pipelined_requests_after_the_current_one_are_not_processed() {
    for round in 0..10 {
        let shutdown = shutdown(Duration::from_secs(10));
        let (addr, server) = start(app(Arc::default()), &shutdown).await;
        let mut conn = get_request(addr, "/slow?ms=200").await;
        read_until(&mut conn, "start\n").await;
        shutdown.trigger();
        tokio::task::yield_now().await;
        // 20,000 more requests (640 KiB) behind the one in progress: more than the server
        // buffers, so some are still unread in the socket when it closes.
        let (mut reader, mut writer) = conn.into_split();
        let writer = tokio::spawn(async move {
            let pipelined = "GET / HTTP/1.1\r\nHost: test\r\n\r\n".repeat(20_000);
            // The lingering close reads (and discards) what the server will not serve, so
            // every byte is taken: a close with unread input would reset the connection,
            // and this write (or the reader) would see the reset.
            let written = writer.write_all(pipelined.as_bytes()).await;
            (writer, written)
        });
        // A client slow to read: the response ends (and the server closes) before it
        // reads. A close with unread input would reset the connection, and the reset
        // destroys the response the client has not read yet.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let (text, end) = read_to_end(&mut reader).await;
        // A reset that arrives after the response and the FIN reads as a plain EOF, but
        // leaves its error on the socket (EPIPE, for a socket that already saw the FIN).
        let pending = reader.as_ref().take_error();
        // A real client closes once it has read the end of the response.
        drop(reader);
        let (writer, written) = writer.await.unwrap();
        drop(writer);
        assert!(
            text.contains("end\n") && text.ends_with("0\r\n\r\n"),
            "round {round}: {text:?}"
        );
        assert!(
            written.is_ok(),
            "round {round}: the pipelined input was not read before the close: {written:?}"
        );
        assert!(
            matches!(pending, Ok(None)),
            "round {round}: the server reset the connection after the response: {pending:?}"
        );
        assert!(
            !text.contains("hello"),
            "a pipelined request was served: {text:?}"
        );
        assert_eq!(
            end,
            End::Eof,
            "round {round}: the connection was reset, not closed"
        );
        let report = served(server).await;
        assert_eq!(report.outcome(), Outcome::Drained);
        assert_eq!(shutdown.connections(), 0);
    }
}

/// B23, off (the default): an idle keep-alive connection closes at drain start, so a
/// request sent after that finds it closed.
#[tokio::test(start_paused = true)]
async fn by_default_an_idle_connection_closes_at_drain_start() {
    let shutdown = shutdown(Duration::from_secs(10));
    let (listener, connector) = channel_listener();
    let server =
        tokio::spawn(httpdown::serve(listener, app(Arc::default()), &shutdown).into_future());
    let mut conn = connector.connect();
    send_get(&mut conn, "/").await;
    read_until(&mut conn, "hello").await;
    let t0 = Instant::now();
    shutdown.trigger();
    let (text, end) = read_to_end(&mut conn).await;
    assert_eq!((text.as_str(), end), ("", End::Eof));
    assert_eq!(Instant::now(), t0, "closed at drain start");
    served(server).await;
}

/// B23, `AfterNextRequest`: an idle connection stays open for the next request, which is
/// served with `Connection: close`; one that sends nothing closes when the wait ends.
#[tokio::test(start_paused = true)]
async fn after_next_request_serves_one_more_request_then_closes() {
    let shutdown = shutdown(Duration::from_secs(10));
    let (connector, server) = serve_on_pipe(
        &shutdown,
        IdleClose::AfterNextRequest(Duration::from_secs(2)),
    );
    let mut busy = connector.connect();
    send_get(&mut busy, "/").await;
    read_until(&mut busy, "hello").await;
    let mut quiet = connector.connect();
    send_get(&mut quiet, "/").await;
    read_until(&mut quiet, "hello").await;

    let t0 = Instant::now();
    shutdown.trigger();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    send_get(&mut busy, "/").await;
    let (text, end) = read_to_end(&mut busy).await;
    assert_eq!(status_lines(&text), ["HTTP/1.1 200 OK"], "{text:?}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close\r\n"),
        "{text:?}"
    );
    assert_eq!(end, End::Eof);
    assert_eq!(Instant::now() - t0, Duration::from_millis(1_500));

    let (text, end) = read_to_end(&mut quiet).await;
    assert_eq!((text.as_str(), end), ("", End::Eof));
    assert_eq!(
        Instant::now() - t0,
        Duration::from_secs(2),
        "closed when the wait ended"
    );
    let report = served(server).await;
    assert_eq!(report.outcome(), Outcome::Drained);
    assert_eq!(report.drain(), Duration::from_secs(2));
}

/// B23, `MinIdleAge`: a connection idle for less than the minimum age at drain start
/// closes once it reaches it; one already older closes at once.
#[tokio::test(start_paused = true)]
async fn min_idle_age_closes_each_connection_once_old_enough() {
    let shutdown = shutdown(Duration::from_secs(10));
    let (connector, server) =
        serve_on_pipe(&shutdown, IdleClose::MinIdleAge(Duration::from_secs(1)));
    let mut old = connector.connect();
    send_get(&mut old, "/").await;
    read_until(&mut old, "hello").await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let mut young = connector.connect();
    send_get(&mut young, "/").await;
    read_until(&mut young, "hello").await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let t0 = Instant::now();
    shutdown.trigger();
    let (text, end) = read_to_end(&mut old).await;
    assert_eq!((text.as_str(), end), ("", End::Eof));
    assert_eq!(
        Instant::now(),
        t0,
        "the old idle connection closed at drain start"
    );

    let (text, end) = read_to_end(&mut young).await;
    assert_eq!((text.as_str(), end), ("", End::Eof));
    assert_eq!(
        Instant::now() - t0,
        Duration::from_millis(700),
        "the young one closed when it had been idle 1 s"
    );
    served(server).await;
}

/// B23: a wait longer than the stop timeout still ends at the stop deadline.
#[tokio::test(start_paused = true)]
async fn idle_close_waits_never_outlast_the_stop_deadline() {
    let shutdown = shutdown(Duration::from_secs(3));
    let (connector, server) = serve_on_pipe(
        &shutdown,
        IdleClose::AfterNextRequest(Duration::from_secs(60)),
    );
    let mut conn = connector.connect();
    send_get(&mut conn, "/").await;
    read_until(&mut conn, "hello").await;
    let t0 = Instant::now();
    shutdown.trigger();
    let report = served(server).await;
    assert_eq!(Instant::now() - t0, Duration::from_secs(3));
    assert_eq!(
        report.outcome(),
        Outcome::ForceClosed {
            connections: 1,
            requests: 0
        }
    );
}

/// A zero `IdleClose` duration means the same as `Immediately`: the idle connection
/// closes at drain start.
#[tokio::test(start_paused = true)]
async fn a_zero_idle_close_duration_closes_at_once() {
    for option in [
        IdleClose::MinIdleAge(Duration::ZERO),
        IdleClose::AfterNextRequest(Duration::ZERO),
    ] {
        let shutdown = shutdown(Duration::from_secs(10));
        let (connector, server) = serve_on_pipe(&shutdown, option);
        let mut conn = connector.connect();
        send_get(&mut conn, "/").await;
        read_until(&mut conn, "hello").await;
        let t0 = Instant::now();
        shutdown.trigger();
        let (text, end) = read_to_end(&mut conn).await;
        assert_eq!((text.as_str(), end), ("", End::Eof), "{option:?}");
        assert_eq!(Instant::now(), t0, "{option:?}: closed at drain start");
        served(server).await;
    }
}

/// B22: a connection closed during the drain with unread input (here 640 KiB of
/// pipelined requests) closes in stages: FIN after the final response, read and discard,
/// then close. Closing it at once would make the kernel reset it and throw away the part
/// of the response still in the server's send buffer; a client slow to read would get a
/// truncated response and a reset.
#[tokio::test]
async fn a_close_with_unread_input_lingers_so_a_slow_reader_gets_the_whole_response() {
    use axum::routing::get;

    const SIZE: usize = 8 << 20;
    let app = axum::Router::new().route(
        "/big",
        get(|| async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            vec![b'x'; SIZE]
        }),
    );
    let shutdown = shutdown(Duration::from_secs(10));
    let (addr, server) = start(app, &shutdown).await;
    let conn = get_request(addr, "/big").await;
    let (mut reader, mut writer) = conn.into_split();
    shutdown.trigger();
    let writer = tokio::spawn(async move {
        let pipelined = "GET / HTTP/1.1\r\nHost: test\r\n\r\n".repeat(20_000);
        let _ = writer.write_all(pipelined.as_bytes()).await;
        writer
    });
    // Read nothing until well after the response has been handed to the kernel.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut body = Vec::new();
    let end = tokio::time::timeout(BOUND, async {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) => return End::Eof,
                Ok(n) => body.extend_from_slice(&buf[..n]),
                Err(e) => return End::Error(e.kind()),
            }
        }
    })
    .await
    .unwrap();
    let head_len = body.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&body[..head_len]).to_ascii_lowercase();
    assert!(head.contains("connection: close\r\n"), "{head}");
    assert_eq!(
        body.len() - head_len,
        SIZE,
        "truncated response (end: {end:?})"
    );
    assert_eq!(end, End::Eof);
    drop(reader);
    drop(writer.await.unwrap());
    let report = served(server).await;
    assert_eq!(report.outcome(), Outcome::Drained);
}

/// B23, `AfterNextRequest` on a connection busy at drain start: its response began before
/// drain start and so carries no `Connection: close`; the connection is not closed under
/// a client about to reuse it, but kept for one more request, served with
/// `Connection: close`.
#[tokio::test(start_paused = true)]
async fn after_next_request_keeps_a_busy_connection_for_its_next_request() {
    let shutdown = shutdown(Duration::from_secs(10));
    let (connector, server) = serve_on_pipe(
        &shutdown,
        IdleClose::AfterNextRequest(Duration::from_secs(2)),
    );
    let mut conn = connector.connect();
    send_get(&mut conn, "/slow?ms=500").await;
    read_until(&mut conn, "start\n").await;
    shutdown.trigger();
    let text = read_until(&mut conn, "0\r\n\r\n").await;
    assert!(
        !text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    send_get(&mut conn, "/").await;
    let (text, end) = read_to_end(&mut conn).await;
    assert_eq!(status_lines(&text), ["HTTP/1.1 200 OK"], "{text:?}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close\r\n"),
        "{text:?}"
    );
    assert_eq!(end, End::Eof);
    let report = served(server).await;
    assert_eq!(report.outcome(), Outcome::Drained);
}

/// `AfterNextRequest` on a connection busy at drain start: once its response is done the
/// connection is held like an idle one, and a client that sends nothing more has it
/// closed when the wait ends (2 s after drain start), not at the stop deadline.
#[tokio::test(start_paused = true)]
async fn after_next_request_closes_a_once_busy_connection_when_the_wait_ends() {
    let shutdown = shutdown(Duration::from_secs(10));
    let (connector, server) = serve_on_pipe(
        &shutdown,
        IdleClose::AfterNextRequest(Duration::from_secs(2)),
    );
    let mut conn = connector.connect();
    send_get(&mut conn, "/slow?ms=500").await;
    read_until(&mut conn, "start\n").await;
    let t0 = Instant::now();
    shutdown.trigger();
    let text = read_until(&mut conn, "0\r\n\r\n").await;
    assert!(text.contains("end\n"), "{text:?}");
    let (rest, end) = read_to_end(&mut conn).await;
    assert_eq!((rest.as_str(), end), ("", End::Eof));
    assert_eq!(
        t0.elapsed(),
        Duration::from_secs(2),
        "closed when the wait ended"
    );
    served(server).await;
}

/// B66: an HTTP/1 connection older than `max_connection_age` is closed after its next
/// response, which carries `Connection: close`; an idle one is not closed under a request
/// that may be on its way.
#[tokio::test(start_paused = true)]
async fn an_http1_connection_past_its_max_age_closes_after_its_next_response() {
    let shutdown = shutdown(Duration::from_secs(30));
    let (connector, server) = serve_pipe_with(&shutdown, |serve| {
        serve.max_connection_age(Duration::from_secs(10))
    });
    let mut conn = get_request_on(&connector, "/").await;
    let first = read_until(&mut conn, "hello").await;
    assert!(
        !first.to_ascii_lowercase().contains("connection: close"),
        "{first}"
    );
    tokio::time::sleep(Duration::from_secs(11)).await;
    send_get(&mut conn, "/").await;
    let (text, end) = read_to_end(&mut conn).await;
    assert!(
        text.ends_with("hello") && text.to_ascii_lowercase().contains("connection: close"),
        "{text:?}"
    );
    assert_eq!(end, End::Eof);
    shutdown.trigger();
    served(server).await;

    let (listener, _connector) = channel_listener();
    let err = httpdown::serve(listener, app(Arc::default()), &Shutdown::new())
        .max_connection_age(Duration::ZERO)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("max_connection_age must be greater than zero"),
        "{err}"
    );
}
