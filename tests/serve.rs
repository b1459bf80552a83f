//! `serve` over real sockets (and over in-memory pipes on paused time where a deadline
//! is checked to the millisecond).

mod common;

use std::future::IntoFuture;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use httpdown::{Error, Outcome, Shutdown};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

async fn wait_for(cond: impl Fn() -> bool) {
    tokio::time::timeout(BOUND, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("condition not reached in time");
}

/// B03: an idle keep-alive connection is closed at drain start; shutdown does not wait.
#[tokio::test]
async fn idle_keep_alive_connection_closes_at_drain_start() {
    let shutdown = shutdown(Duration::from_secs(30));
    let (addr, server) = start(app(Arc::default()), &shutdown).await;
    let mut idle = get_request(addr, "/").await;
    read_until(&mut idle, "hello").await;
    assert_eq!(shutdown.connections(), 1);

    let t0 = Instant::now();
    shutdown.trigger();
    let (rest, end) = read_to_end(&mut idle).await;
    assert_eq!((rest.as_str(), end), ("", End::Eof));
    let report = served(server).await;
    eprintln!(
        "idle connection: serve returned {:?} after the trigger",
        t0.elapsed()
    );
    assert_eq!(report.outcome(), Outcome::Drained);
    assert_eq!(report.connections_at_drain(), 1);
    assert!(report.total() < Duration::from_secs(5), "{report}");
}

/// B04: a streaming response in flight at drain start completes with its whole body, and
/// shutdown ends right after it.
#[tokio::test]
async fn in_flight_streaming_response_completes_then_shutdown_ends() {
    let shutdown = shutdown(Duration::from_secs(30));
    let (addr, server) = start(app(Arc::default()), &shutdown).await;
    let mut client = get_request(addr, "/slow?ms=300").await;
    read_until(&mut client, "start\n").await;
    shutdown.trigger();
    let (rest, end) = read_to_end(&mut client).await;
    let last_byte = Instant::now();
    assert!(rest.contains("end\n"), "{rest:?}");
    assert!(
        rest.ends_with("0\r\n\r\n"),
        "no terminating chunk: {rest:?}"
    );
    assert_eq!(end, End::Eof);
    let report = served(server).await;
    eprintln!(
        "last response byte to serve returning: {:?}",
        last_byte.elapsed()
    );
    assert_eq!(report.outcome(), Outcome::Drained);
    assert_eq!(report.requests_at_drain(), 1);
    assert!(report.drain() >= Duration::from_millis(250), "{report}");
}

/// B05: after drain start new connections are refused while responses keep streaming.
#[tokio::test]
async fn new_connections_are_refused_while_in_flight_responses_stream() {
    let shutdown = shutdown(Duration::from_secs(30));
    let (addr, server) = start(app(Arc::default()), &shutdown).await;
    let mut client = get_request(addr, "/slow?ms=500").await;
    read_until(&mut client, "start\n").await;
    shutdown.trigger();
    wait_for(|| shutdown.is_drain_started()).await;
    // The accept loop drops the listener right after drain start.
    let refused = tokio::time::timeout(BOUND, async {
        loop {
            match TcpStream::connect(addr).await {
                Err(e) => return e.kind(),
                Ok(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
    })
    .await
    .expect("connects still accepted");
    assert_eq!(refused, io::ErrorKind::ConnectionRefused);
    let (rest, _) = read_to_end(&mut client).await;
    assert!(
        rest.contains("end\n") && rest.ends_with("0\r\n\r\n"),
        "{rest:?}"
    );
    assert_eq!(served(server).await.outcome(), Outcome::Drained);
}

/// B06: a response written during the drain carries `Connection: close` and the
/// connection closes after it.
#[tokio::test]
async fn responses_during_the_drain_carry_connection_close() {
    let release = Arc::new(Notify::new());
    let shutdown = shutdown(Duration::from_secs(30));
    let (addr, server) = start(app(release.clone()), &shutdown).await;
    let mut client = get_request(addr, "/wait").await;
    wait_for(|| shutdown.in_flight() == 1).await;
    shutdown.trigger();
    wait_for(|| shutdown.is_drain_started()).await;
    release.notify_one();
    let (response, end) = read_to_end(&mut client).await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response:?}");
    assert!(
        response
            .to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{response:?}"
    );
    assert!(response.ends_with("done"), "{response:?}");
    assert_eq!(end, End::Eof);
    assert_eq!(served(server).await.outcome(), Outcome::Drained);
}

/// A keep-alive connection that is busy at drain start serves no further request: after
/// the response it closes, even if the client tries to reuse it.
#[tokio::test]
async fn a_busy_connection_goes_idle_during_the_drain_and_closes() {
    let shutdown = shutdown(Duration::from_secs(30));
    let (addr, server) = start(app(Arc::default()), &shutdown).await;
    let mut client = get_request(addr, "/slow?ms=200").await;
    read_until(&mut client, "start\n").await;
    shutdown.trigger();
    let (rest, end) = read_to_end(&mut client).await;
    assert!(rest.ends_with("end\n\r\n0\r\n\r\n"), "{rest:?}");
    assert_eq!(end, End::Eof);
    assert_eq!(served(server).await.outcome(), Outcome::Drained);
}

/// B07: at the stop deadline the connection is force-closed; the client sees the chunked
/// body end without its terminating chunk.
#[tokio::test]
async fn stop_deadline_force_closes_and_the_client_sees_an_incomplete_body() {
    let shutdown = shutdown(Duration::from_millis(300));
    let (addr, server) = start(app(Arc::default()), &shutdown).await;
    let mut client = get_request(addr, "/slow?ms=30000").await;
    read_until(&mut client, "start\n").await;
    let t0 = Instant::now();
    shutdown.trigger();
    let (rest, _end) = read_to_end(&mut client).await;
    let closed_after = t0.elapsed();
    assert!(!rest.contains("end\n"), "{rest:?}");
    assert!(
        !rest.contains("0\r\n\r\n"),
        "a cut body must not look complete: {rest:?}"
    );
    assert!(
        closed_after >= Duration::from_millis(300),
        "{closed_after:?}"
    );
    let report = served(server).await;
    eprintln!("force-close: socket closed {closed_after:?} after the trigger (stop 300ms)");
    assert_eq!(
        report.outcome(),
        Outcome::ForceClosed {
            connections: 1,
            requests: 1
        }
    );
    assert!(report.is_complete());
}

/// B07 and B09 over `serve`, on paused time: the force-close happens exactly at the stop
/// deadline, counted from drain start.
#[tokio::test(start_paused = true)]
async fn force_close_happens_exactly_at_the_stop_deadline() {
    let shutdown = Shutdown::builder()
        .drain_delay(Duration::from_millis(700))
        .stop_timeout(Duration::from_millis(1_500))
        .kill_timeout(Duration::from_secs(1))
        .build();
    let (listener, connector) = channel_listener();
    let server =
        tokio::spawn(httpdown::serve(listener, app(Arc::default()), &shutdown).into_future());
    let mut client = connector.connect();
    send_get(&mut client, "/slow?ms=60000").await;
    read_until(&mut client, "start\n").await;
    let t0 = Instant::now();
    shutdown.trigger();
    let (rest, end) = read_to_end(&mut client).await;
    assert_eq!(t0.elapsed(), Duration::from_millis(2_200));
    assert!(!rest.contains("0\r\n\r\n"), "{rest:?}");
    assert_eq!(end, End::Eof);
    let report = served(server).await;
    assert_eq!(report.total(), Duration::from_millis(2_200));
    assert_eq!(report.drain(), Duration::from_millis(1_500));
    assert_eq!(report.force(), Some(Duration::ZERO));
}

/// B20: a connection that sent nothing closes at drain start (once older than its
/// new-connection grace); one that sent half a request head is held no later than the
/// stop deadline.
#[tokio::test(start_paused = true)]
async fn silent_and_half_sent_connections_never_hold_shutdown_past_the_stop_deadline() {
    let shutdown = Shutdown::builder()
        .stop_timeout(Duration::from_secs(5))
        .kill_timeout(Duration::from_secs(1))
        .build();
    let (listener, connector) = channel_listener();
    let server = tokio::spawn(
        httpdown::serve(listener, app(Arc::default()), &shutdown)
            .header_read_timeout(Duration::from_secs(60))
            .into_future(),
    );
    let mut silent = connector.connect();
    let mut half = connector.connect();
    half.write_all(b"GET / HTTP/1.1\r\nHost: test\r\n")
        .await
        .unwrap();
    // Older than the default grace (250 ms): a silent connection, not a fresh one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(shutdown.connections(), 2);

    let t0 = Instant::now();
    shutdown.trigger();
    let (rest, end) = read_to_end(&mut silent).await;
    assert_eq!((rest.as_str(), end), ("", End::Eof));
    assert_eq!(
        t0.elapsed(),
        Duration::ZERO,
        "the silent connection closes at drain start"
    );

    let (rest, _) = read_to_end(&mut half).await;
    assert!(!rest.contains("200 OK"), "{rest:?}");
    assert_eq!(t0.elapsed(), Duration::from_secs(5));
    let report = served(server).await;
    assert_eq!(
        report.outcome(),
        Outcome::ForceClosed {
            connections: 1,
            requests: 0
        }
    );
}

/// B20 over a real socket: a connection that sent nothing does not delay the shutdown.
#[tokio::test]
async fn a_silent_tcp_connection_closes_at_drain_start() {
    let shutdown = shutdown(Duration::from_secs(30));
    let (addr, server) = start(app(Arc::default()), &shutdown).await;
    let mut silent = TcpStream::connect(addr).await.unwrap();
    wait_for(|| shutdown.connections() == 1).await;
    shutdown.trigger();
    let (rest, end) = read_to_end(&mut silent).await;
    assert_eq!((rest.as_str(), end), ("", End::Eof));
    assert_eq!(served(server).await.outcome(), Outcome::Drained);
}

/// B11: a listener error that is not about one connection ends `serve` with that error;
/// `serve` triggers the shutdown first, so the connections it accepted are not left
/// unmanaged: the one in flight completes, the idle one closes, and the error comes once
/// the shutdown is done.
#[tokio::test]
async fn a_listener_error_drains_the_connections_then_is_returned() {
    let shutdown = shutdown(Duration::from_secs(30));
    let (listener, connector) = channel_listener();
    let server =
        tokio::spawn(httpdown::serve(listener, app(Arc::default()), &shutdown).into_future());
    let mut client = connector.connect();
    send_get(&mut client, "/slow?ms=200").await;
    read_until(&mut client, "start\n").await;

    // Errors about one connection are skipped...
    connector.fail(io::Error::from(io::ErrorKind::ConnectionAborted));
    let mut second = connector.connect();
    send_get(&mut second, "/").await;
    read_until(&mut second, "hello").await;
    assert!(!shutdown.is_triggered());
    // ...others end `serve`, through a shutdown.
    connector.fail(io::Error::other("listener broke"));
    let (rest, _) = read_to_end(&mut client).await;
    assert!(rest.ends_with("end\n\r\n0\r\n\r\n"), "{rest:?}");
    let (idle, end) = read_to_end(&mut second).await;
    assert_eq!((idle.as_str(), end), ("", End::Eof));
    let err = server.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::Accept(_)), "{err:?}");
    assert_eq!(err.to_string(), "listener failed: listener broke");
    let report = no_panics(
        shutdown
            .report()
            .expect("done before the error is returned"),
    );
    assert_eq!(report.outcome(), Outcome::Drained, "{report}");
    assert_eq!(report.connections_at_drain(), 2);
    assert_eq!(report.requests_at_drain(), 1);
}

/// B28: a client that disconnects mid-request does not leak an in-flight count.
#[tokio::test]
async fn a_client_disconnecting_mid_request_releases_the_count() {
    let shutdown = shutdown(Duration::from_secs(30));
    let (addr, server) = start(app(Arc::default()), &shutdown).await;
    let mut client = get_request(addr, "/slow?ms=60000").await;
    read_until(&mut client, "start\n").await;
    assert_eq!(shutdown.in_flight(), 1);
    drop(client);
    wait_for(|| shutdown.in_flight() == 0 && shutdown.connections() == 0).await;
    let report = no_panics({
        shutdown.trigger();
        shutdown.wait().await
    });
    assert_eq!(report.outcome(), Outcome::Drained);
    served(server).await;
}

/// B34: serving after the shutdown finished, a bind failure and a bad option are clear
/// errors.
#[tokio::test]
async fn misuse_is_a_clear_error() {
    let shutdown = Shutdown::new();
    no_panics({
        shutdown.trigger();
        shutdown.wait().await
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = httpdown::serve(listener, app(Arc::default()), &shutdown)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::AlreadyShutDown));
    assert_eq!(
        err.to_string(),
        "this shutdown has already finished: build a new Shutdown to serve again"
    );

    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let err = httpdown::listen_and_serve(addr.as_str(), app(Arc::default()), &Shutdown::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Bind { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with(&format!("failed to bind {addr}: ")),
        "{err}"
    );

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = httpdown::serve(listener, app(Arc::default()), &Shutdown::new())
        .header_read_timeout(Duration::ZERO)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("header_read_timeout must be greater than zero"),
        "{err}"
    );
}

/// A malformed request gets a 400 and the connection closes; nothing panics.
#[tokio::test]
async fn a_malformed_request_gets_400() {
    let shutdown = shutdown(Duration::from_secs(30));
    let (addr, server) = start(app(Arc::default()), &shutdown).await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(b"NOT A REQUEST\r\n\r\n").await.unwrap();
    let (response, _) = read_to_end(&mut client).await;
    assert!(
        response.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{response:?}"
    );
    assert_eq!(
        no_panics({
            shutdown.trigger();
            shutdown.wait().await
        })
        .outcome(),
        Outcome::Drained
    );
    served(server).await;
}

/// HTTP/2 (h2c, prior knowledge) on the same port: a stream in flight at drain start
/// completes, then the connection closes.
#[tokio::test]
async fn h2c_stream_in_flight_completes_across_the_drain() {
    use http_body_util::BodyExt;
    let shutdown = shutdown(Duration::from_secs(30));
    let (addr, server) = start(app(Arc::default()), &shutdown).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let request = http::Request::get(format!("http://{addr}/slow?ms=300"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "start\n");
    shutdown.trigger();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "end\n");
    // GOAWAY: the client connection ends without error.
    tokio::time::timeout(BOUND, conn)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(served(server).await.outcome(), Outcome::Drained);
}

/// B08 over `serve`: a handler that blocks its thread ignores the force-close; at the kill
/// deadline `serve` returns anyway and reports what was left. Real time: a blocked thread
/// cannot run on paused time. The handler stays blocked until the test has its report, so
/// the report cannot have waited for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kill_deadline_gives_up_on_a_handler_blocking_its_thread() {
    use axum::routing::get;
    use std::sync::mpsc;

    let (stop, kill) = (Duration::from_millis(300), Duration::from_millis(300));
    let shutdown = Shutdown::builder()
        .stop_timeout(stop)
        .kill_timeout(kill)
        .build();
    let entered = Arc::new(Notify::new());
    let (release, blocked) = mpsc::channel::<()>();
    let blocked = Arc::new(std::sync::Mutex::new(blocked));
    let app = axum::Router::new().route(
        "/block",
        get({
            let entered = entered.clone();
            move || async move {
                entered.notify_one();
                // Blocks this worker thread until the test lets go (or ends).
                let _ = blocked.lock().unwrap().recv();
                "unblocked"
            }
        }),
    );
    let (addr, server) = start(app, &shutdown).await;
    let _client = get_request(addr, "/block").await;
    tokio::time::timeout(BOUND, entered.notified())
        .await
        .unwrap();

    let t0 = Instant::now();
    shutdown.trigger();
    let report = tokio::time::timeout(BOUND, shutdown.wait())
        .await
        .expect("waited for the blocked handler");
    let took = t0.elapsed();
    eprintln!("blocked handler: gave up {took:?} after the trigger ({report})");
    assert_eq!(
        report.outcome(),
        Outcome::GaveUp {
            connections: 1,
            requests: 1
        },
        "{report}"
    );
    assert!(!report.is_complete());
    assert!(
        took >= stop + kill,
        "gave up before the kill deadline: {took:?}"
    );
    assert!(report.force().unwrap() >= kill, "{report}");
    release.send(()).unwrap();
    drop(server);
}

/// A trigger that lands after `serve` is built but before it runs (a signal right after
/// the server announced itself) still lets it start and drain: `Ok`, not an error.
#[tokio::test]
async fn a_trigger_before_serve_runs_still_drains_it() {
    let shutdown = shutdown(Duration::from_secs(5));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let serving = httpdown::serve(listener, app(Arc::default()), &shutdown);
    shutdown.trigger();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        shutdown.report().is_none(),
        "finished before its server started"
    );
    let report = serving.await.expect("served and drained");
    assert_eq!(report.outcome(), Outcome::Drained);

    // Dropping a Serve never awaited releases the shutdown.
    let shutdown = self::shutdown(Duration::from_secs(5));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let serving = httpdown::serve(listener, app(Arc::default()), &shutdown);
    shutdown.trigger();
    drop(serving);
    let report = tokio::time::timeout(BOUND, shutdown.wait()).await.unwrap();
    assert_eq!(report.outcome(), Outcome::Drained);
}

/// A handler that panics ends its own connection (HTTP/1) or stream (HTTP/2) only: the
/// panic is counted in the statistics and the report (never silent), its request is not
/// left counted, and other connections are served as usual.
#[tokio::test]
async fn a_panicking_handler_is_counted_and_ends_only_its_own_connection_or_stream() {
    use axum::routing::get;
    use http_body_util::BodyExt;

    let shutdown = shutdown(Duration::from_secs(30));
    let app = app(Arc::default()).route(
        "/panic",
        get(|| async {
            panic!("a handler panicked on purpose");
            #[allow(unreachable_code)]
            ""
        }),
    );
    let (addr, server) = start(app, &shutdown).await;

    // HTTP/1: the connection closes without a response.
    let mut conn = get_request(addr, "/panic").await;
    let (text, _) = read_to_end(&mut conn).await;
    assert_eq!(text, "", "no response to a request whose handler panicked");
    wait_for(|| shutdown.stats().panics == 1).await;

    // HTTP/2: the stream is reset; the connection goes on serving.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, h2) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let h2 = tokio::spawn(h2);
    let get = |path: &str| {
        http::Request::get(format!("http://{addr}{path}"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    let failed = sender.send_request(get("/panic")).await;
    assert!(failed.is_err(), "{failed:?}");
    wait_for(|| shutdown.stats().panics == 2).await;
    let response = sender.send_request(get("/")).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        body, "hello",
        "the connection still serves after a stream panicked"
    );

    // A plain HTTP/1 connection is unaffected.
    let mut other = get_request(addr, "/").await;
    read_until(&mut other, "hello").await;
    drop(other);

    wait_for(|| shutdown.in_flight() == 0).await;
    shutdown.trigger();
    tokio::time::timeout(BOUND, h2)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let report = server.await.unwrap().unwrap();
    assert_eq!(report.panics(), 2, "{report}");
    assert!(
        report.to_string().contains("; 2 tasks panicked)"),
        "{report}"
    );
    assert_eq!(report.outcome(), Outcome::Drained, "{report}");
    assert_eq!(shutdown.stats().panics, 2);
}

/// SPEC section 1: every TCP connection `serve` accepts has `TCP_NODELAY` set (without it,
/// a flushed first write followed by a later one waits for the peer's delayed ACK). The
/// listener `serve` drives is wrapped here to look at each socket it hands over.
#[tokio::test]
async fn accepted_tcp_connections_have_tcp_nodelay() {
    use httpdown::Listener;
    use tokio::net::TcpListener;

    struct Watching {
        inner: TcpListener,
        nodelay: Arc<std::sync::Mutex<Vec<bool>>>,
    }
    impl Listener for Watching {
        type Io = TcpStream;
        type Addr = std::net::SocketAddr;
        async fn accept(&mut self) -> io::Result<(TcpStream, Self::Addr)> {
            let (stream, addr) = Listener::accept(&mut self.inner).await?;
            self.nodelay.lock().unwrap().push(stream.nodelay()?);
            Ok((stream, addr))
        }
        fn local_addr(&self) -> io::Result<Self::Addr> {
            Listener::local_addr(&self.inner)
        }
    }

    let shutdown = shutdown(Duration::from_secs(5));
    let inner = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = inner.local_addr().unwrap();
    let nodelay = Arc::default();
    let listener = Watching {
        inner,
        nodelay: Arc::clone(&nodelay),
    };
    let server =
        tokio::spawn(httpdown::serve(listener, app(Arc::default()), &shutdown).into_future());
    for _ in 0..3 {
        let mut conn = get_request(addr, "/").await;
        read_until(&mut conn, "hello").await;
    }
    shutdown.trigger();
    served(server).await;
    assert_eq!(
        *nodelay.lock().unwrap(),
        [true, true, true],
        "TCP_NODELAY on each socket"
    );
}

/// A `GracefulLayer` of another controller inside `serve` counts its requests for its
/// own controller (`serve`'s count does not stand for it).
#[tokio::test(start_paused = true)]
async fn a_layer_of_another_shutdown_inside_serve_counts_for_its_own() {
    let serving = shutdown(Duration::from_secs(10));
    let other = shutdown(Duration::from_secs(10));
    let release = Arc::new(Notify::new());
    let (listener, connector) = channel_listener();
    let app = app(Arc::clone(&release)).layer(other.layer());
    let server = tokio::spawn(httpdown::serve(listener, app, &serving).into_future());
    let mut conn = get_request_on(&connector, "/wait").await;
    while serving.in_flight() == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(
        other.in_flight(),
        1,
        "the other controller counts the request"
    );
    release.notify_one();
    read_until(&mut conn, "done").await;
    assert_eq!(other.in_flight(), 0);
    serving.trigger();
    served(server).await;
}

/// The header-read timeout times a connection's idle spells only: a request that runs
/// longer than it is never cut by it.
#[tokio::test(start_paused = true)]
async fn a_request_longer_than_the_header_read_timeout_completes() {
    let shutdown = shutdown(Duration::from_secs(10));
    let (listener, connector) = channel_listener();
    let server = tokio::spawn(
        httpdown::serve(listener, app(Arc::default()), &shutdown)
            .header_read_timeout(Duration::from_secs(1))
            .into_future(),
    );
    let mut conn = get_request_on(&connector, "/slow?ms=3000").await;
    let text = read_until(&mut conn, "end\n").await;
    assert!(text.contains("start\n"), "{text:?}");
    shutdown.trigger();
    served(server).await;
}

/// Reads until the server closes `conn` (after `hello`, nothing more may come) and
/// returns how long after `since` that was.
async fn closed_after(conn: &mut tokio::io::DuplexStream, since: Instant) -> Duration {
    closed_within(conn, since, Duration::from_secs(3_600)).await
}

async fn closed_within(
    conn: &mut tokio::io::DuplexStream,
    since: Instant,
    bound: Duration,
) -> Duration {
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(bound, conn.read(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("not closed within {bound:?}"));
    assert_eq!(
        read.expect("a clean close"),
        0,
        "nothing more before the close"
    );
    since.elapsed()
}

/// B66: an idle keep-alive connection is closed by the idle timeout, counted from the
/// end of its last response, not by the (shorter) header-read timeout; a request sent
/// within it is served, and the next idle spell counts afresh.
#[tokio::test(start_paused = true)]
async fn an_idle_keep_alive_connection_lasts_the_idle_timeout_not_the_header_read_timeout() {
    let shutdown = shutdown(Duration::from_secs(10));
    let (connector, server) = serve_pipe_with(&shutdown, |serve| {
        serve
            .header_read_timeout(Duration::from_secs(1))
            .idle_timeout(Duration::from_secs(10))
    });
    let mut conn = get_request_on(&connector, "/").await;
    read_until(&mut conn, "hello").await;
    // Idle for 9.999 s, nine times the header-read timeout: still open.
    tokio::time::sleep(Duration::from_millis(9_999)).await;
    send_get(&mut conn, "/").await;
    read_until(&mut conn, "hello").await;
    let idle = Instant::now();
    assert_eq!(
        closed_after(&mut conn, idle).await,
        Duration::from_secs(10),
        "closed by the idle timeout, to the millisecond"
    );
    shutdown.trigger();
    served(server).await;
}

/// B66: once the next request's first bytes arrive on an idle connection, the
/// header-read timeout counts from them: a head begun 5 s into an idle spell and never
/// finished is cut 1 s later, well before the idle timeout.
#[tokio::test(start_paused = true)]
async fn a_head_begun_on_an_idle_connection_gets_the_header_read_timeout_from_its_first_byte() {
    let shutdown = shutdown(Duration::from_secs(10));
    let (connector, server) = serve_pipe_with(&shutdown, |serve| {
        serve
            .header_read_timeout(Duration::from_secs(1))
            .idle_timeout(Duration::from_secs(10))
    });
    let mut conn = get_request_on(&connector, "/").await;
    read_until(&mut conn, "hello").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    conn.write_all(b"GET / HTTP/1.1\r\nHost: te").await.unwrap();
    let begun = Instant::now();
    assert_eq!(
        closed_after(&mut conn, begun).await,
        Duration::from_secs(1),
        "cut by the header-read timeout from the first byte"
    );
    // A connection's first request is timed from its accept: silent, it closes after the
    // header-read timeout, not the idle timeout.
    let accepted = Instant::now();
    let mut silent = connector.connect();
    assert_eq!(
        closed_after(&mut silent, accepted).await,
        Duration::from_secs(1)
    );
    shutdown.trigger();
    served(server).await;
}

/// B66: `idle_timeout(None)` keeps an idle keep-alive connection open (here 1,000 s)
/// until the drain; zero is a configuration error that says what to do instead.
#[tokio::test(start_paused = true)]
async fn no_idle_timeout_keeps_idle_connections_and_zero_is_an_error() {
    let shutdown = shutdown(Duration::from_secs(10));
    let (connector, server) = serve_pipe_with(&shutdown, |serve| {
        serve
            .header_read_timeout(Duration::from_secs(1))
            .idle_timeout(None)
    });
    let mut conn = get_request_on(&connector, "/").await;
    read_until(&mut conn, "hello").await;
    tokio::time::sleep(Duration::from_secs(1_000)).await;
    send_get(&mut conn, "/").await;
    read_until(&mut conn, "hello").await;
    let triggered = Instant::now();
    shutdown.trigger();
    assert_eq!(
        closed_after(&mut conn, triggered).await,
        Duration::ZERO,
        "closed at drain start"
    );
    served(server).await;

    let (listener, _connector) = channel_listener();
    let err = httpdown::serve(listener, app(Arc::default()), &Shutdown::new())
        .idle_timeout(Duration::ZERO)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("idle_timeout must be greater than zero")
            && err.to_string().contains("keep_alive(false)"),
        "{err}"
    );
}

/// Long timeouts still count: only a century or more means none (a year and a half here,
/// on paused time), and the defaults are the documented ones (a silent connection closes
/// after 30 s, an idle keep-alive connection after 620 s).
#[tokio::test(start_paused = true)]
async fn long_and_default_timeouts_are_kept() {
    let long = Duration::from_secs(547 * 86_400);
    let shutdown = shutdown(Duration::from_secs(10));
    let (connector, server) = serve_pipe_with(&shutdown, |serve| {
        serve
            .idle_timeout(long)
            // Alone, so the connection's timer is not looked at every 30 s for 1.5 years.
            .header_read_timeout(None)
    });
    let mut conn = get_request_on(&connector, "/").await;
    read_until(&mut conn, "hello").await;
    let idle = Instant::now();
    assert_eq!(closed_within(&mut conn, idle, long * 2).await, long);
    shutdown.trigger();
    served(server).await;

    let shutdown = common::shutdown(Duration::from_secs(10));
    let (listener, connector) = channel_listener();
    let serve = httpdown::serve(listener, app(Arc::default()), &shutdown);
    let debug = format!("{serve:?}");
    assert!(
        debug.starts_with("Serve {")
            && debug.contains("header_read_timeout: Some(30s)")
            && debug.contains("idle_timeout: Some(620s)"),
        "{debug}"
    );
    let serve = serve.into_future();
    assert!(format!("{serve:?}").starts_with("ServeFuture"));
    let server = tokio::spawn(serve);
    let accepted = Instant::now();
    let mut silent = connector.connect();
    assert_eq!(
        closed_after(&mut silent, accepted).await,
        httpdown::DEFAULT_HEADER_READ_TIMEOUT
    );
    let mut conn = get_request_on(&connector, "/").await;
    read_until(&mut conn, "hello").await;
    let idle = Instant::now();
    assert_eq!(
        closed_after(&mut conn, idle).await,
        httpdown::DEFAULT_IDLE_TIMEOUT
    );
    shutdown.trigger();
    served(server).await;
}

/// A connection error from the listener while it is emptied at drain start (a client
/// that gave up in the queue) skips that connection only: the one behind it is served;
/// any other error ends the emptying.
#[tokio::test(start_paused = true)]
async fn a_connection_error_at_drain_start_skips_one_connection() {
    let shutdown = shutdown(Duration::from_secs(10));
    let (listener, connector) = channel_listener();
    let server =
        tokio::spawn(httpdown::serve(listener, app(Arc::default()), &shutdown).into_future());
    // Let the server wait in accept.
    tokio::time::sleep(Duration::from_millis(1)).await;
    // The trigger wakes the driver (drain start, no delay) before the server, which then
    // finds both in its queue only once the drain has started.
    shutdown.trigger();
    connector.fail(io::Error::from(io::ErrorKind::ConnectionAborted));
    let mut conn = get_request_on(&connector, "/").await;
    let text = read_until(&mut conn, "hello").await;
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    served(server).await;

    // Any other error ends the emptying (the listener is broken): what is behind it is
    // not accepted, and `serve` returns its report as it would have anyway.
    let shutdown = common::shutdown(Duration::from_secs(10));
    let (listener, connector) = channel_listener();
    let server =
        tokio::spawn(httpdown::serve(listener, app(Arc::default()), &shutdown).into_future());
    tokio::time::sleep(Duration::from_millis(1)).await;
    shutdown.trigger();
    connector.fail(io::Error::other("the listener broke"));
    let mut conn = get_request_on(&connector, "/").await;
    let (text, end) = read_to_end(&mut conn).await;
    assert_eq!(
        (text.as_str(), end),
        ("", End::Eof),
        "not accepted after a fatal error"
    );
    served(server).await;
}

/// Whether `conn` has received anything within 1 s (paused time).
async fn answered_within_a_second(conn: &mut tokio::io::DuplexStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), conn.read(&mut buf)).await,
        Ok(Ok(1..))
    )
}

/// B66: at `max_connections` the server accepts no more until one closes (the others wait
/// in the queue: backpressure, not errors); at drain start the queued ones are still
/// served; zero is a configuration error.
#[tokio::test(start_paused = true)]
async fn the_connection_limit_holds_new_connections_until_one_closes() {
    let shutdown = shutdown(Duration::from_secs(10));
    let (connector, server) = serve_pipe_with(&shutdown, |serve| serve.max_connections(2));
    let mut first = get_request_on(&connector, "/").await;
    read_until(&mut first, "hello").await;
    let mut second = get_request_on(&connector, "/").await;
    read_until(&mut second, "hello").await;
    let mut third = get_request_on(&connector, "/").await;
    assert!(
        !answered_within_a_second(&mut third).await,
        "a third connection waits while two are open"
    );
    assert_eq!(shutdown.connections(), 2);
    drop(first);
    read_until(&mut third, "hello").await;
    let mut fourth = get_request_on(&connector, "/").await;
    assert!(
        !answered_within_a_second(&mut fourth).await,
        "two open again"
    );
    shutdown.trigger();
    let text = read_until(&mut fourth, "hello").await;
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    drop((second, third));
    served(server).await;

    let (listener, _connector) = channel_listener();
    let err = httpdown::serve(listener, app(Arc::default()), &Shutdown::new())
        .max_connections(0)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("max_connections must be greater than zero"),
        "{err}"
    );
}
