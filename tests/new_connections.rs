//! New connections at drain start (B20's grace, B55): a client whose connect succeeded
//! gets its response; one that comes later has its connect refused, never a reset or an
//! EOF after its request was written.

mod common;

use std::future::IntoFuture;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use httpdown::{Listener, Outcome, Shutdown, DEFAULT_NEW_CONNECTION_GRACE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// Serves the test app over in-memory pipes (paused time) with `grace`, if given.
fn serve_on_pipe(
    shutdown: &Shutdown,
    grace: Option<Duration>,
) -> (
    Connector,
    tokio::task::JoinHandle<Result<httpdown::Report, httpdown::Error>>,
) {
    let (listener, connector) = channel_listener();
    let mut serve = httpdown::serve(listener, app(Arc::default()), shutdown);
    if let Some(grace) = grace {
        serve = serve.new_connection_grace(grace);
    }
    (connector, tokio::spawn(serve.into_future()))
}

fn is_close(text: &str) -> bool {
    text.to_ascii_lowercase().contains("connection: close\r\n")
}

/// B20: a connection accepted a moment before drain start whose request comes after it
/// is served, with `Connection: close`; one that never sends closes when its grace (from
/// its accept) ends; an older silent connection closes at drain start.
#[tokio::test(start_paused = true)]
async fn a_fresh_connection_gets_its_grace_from_its_accept() {
    let shutdown = shutdown(Duration::from_secs(10));
    let (connector, server) = serve_on_pipe(&shutdown, None);
    let mut old = connector.connect();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let fresh_at = Instant::now();
    let mut fresh = connector.connect();
    let mut fresh_silent = connector.connect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(shutdown.connections(), 3);

    let t0 = Instant::now();
    shutdown.trigger();
    let (text, end) = read_to_end(&mut old).await;
    assert_eq!((text.as_str(), end), ("", End::Eof));
    assert_eq!(
        t0.elapsed(),
        Duration::ZERO,
        "a silent connection older than the grace closes at drain start"
    );

    // The fresh client's request comes 100 ms into the drain.
    tokio::time::sleep(Duration::from_millis(100)).await;
    send_get(&mut fresh, "/").await;
    let (text, end) = read_to_end(&mut fresh).await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text:?}");
    assert!(is_close(&text), "served with Connection: close: {text:?}");
    assert!(text.ends_with("hello"), "{text:?}");
    assert_eq!(end, End::Eof);

    let (text, end) = read_to_end(&mut fresh_silent).await;
    assert_eq!((text.as_str(), end), ("", End::Eof));
    assert_eq!(
        fresh_at.elapsed(),
        DEFAULT_NEW_CONNECTION_GRACE,
        "a fresh connection that sends nothing closes when its grace ends"
    );
    let report = served(server).await;
    assert_eq!(report.outcome(), Outcome::Drained, "{report}");
}

/// B20: the grace is configurable, zero closes every silent connection at drain start,
/// and no grace outlasts the stop deadline.
#[tokio::test(start_paused = true)]
async fn the_grace_is_configurable_and_bounded_by_the_stop_deadline() {
    for (grace, stop, closed_after) in [
        (Duration::ZERO, 10_000, 0),
        (Duration::from_secs(1), 10_000, 1_000),
        (Duration::from_secs(60), 700, 701),
        (Duration::MAX, 700, 701),
    ] {
        let shutdown = shutdown(Duration::from_millis(stop));
        let (connector, server) = serve_on_pipe(&shutdown, Some(grace));
        let accepted = Instant::now();
        let mut silent = connector.connect();
        tokio::time::sleep(Duration::from_millis(1)).await;
        shutdown.trigger();
        let (text, end) = read_to_end(&mut silent).await;
        assert_eq!((text.as_str(), end), ("", End::Eof), "grace {grace:?}");
        let expected = Duration::from_millis(closed_after.max(1));
        assert_eq!(
            accepted.elapsed(),
            expected,
            "grace {grace:?}, stop {stop} ms"
        );
        served(server).await;
    }
}

/// A TCP listener whose accepts wait for permits: connections pile up, completed, in the
/// kernel's accept queue, as they do behind a busy accept loop.
struct Gated {
    inner: TcpListener,
    gate: Arc<Semaphore>,
}

impl Listener for Gated {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> io::Result<(TcpStream, SocketAddr)> {
        self.gate.acquire().await.expect("gate closed").forget();
        self.inner.accept().await
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn stop_handshakes(&mut self) -> io::Result<bool> {
        self.inner.stop_handshakes()
    }
}

async fn gated() -> (Gated, SocketAddr, Arc<Semaphore>) {
    let inner = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = inner.local_addr().unwrap();
    let gate = Arc::new(Semaphore::new(0));
    let listener = Gated {
        inner,
        gate: Arc::clone(&gate),
    };
    (listener, addr, gate)
}

/// B55: connections waiting in the accept queue at drain start (their connects
/// succeeded) are accepted and served, whether their requests were sent before drain
/// start or come during their grace; none is reset by the listener's close.
#[tokio::test]
async fn connections_in_the_accept_queue_at_drain_start_are_served() {
    const QUEUED: usize = 16;
    let shutdown = shutdown(Duration::from_secs(10));
    let (listener, addr, gate) = gated().await;
    let server =
        tokio::spawn(httpdown::serve(listener, app(Arc::default()), &shutdown).into_future());
    let mut early = Vec::new();
    let mut late = Vec::new();
    for i in 0..QUEUED {
        let mut conn = TcpStream::connect(addr).await.expect("connect");
        if i % 2 == 0 {
            send_get(&mut conn, "/").await;
            early.push(conn);
        } else {
            late.push(conn);
        }
    }
    assert_eq!(shutdown.connections(), 0, "all still in the accept queue");

    shutdown.trigger();
    gate.add_permits(Semaphore::MAX_PERMITS / 2);
    tokio::time::sleep(Duration::from_millis(50)).await;
    for conn in &mut late {
        send_get(conn, "/").await;
    }
    for (i, conn) in early.iter_mut().chain(late.iter_mut()).enumerate() {
        let (text, end) = read_to_end(conn).await;
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\n") && text.ends_with("hello"),
            "queued connection {i} lost its request: {text:?}, {end:?}"
        );
        assert!(is_close(&text), "{text:?}");
        assert_eq!(end, End::Eof, "queued connection {i}");
    }
    let report = served_in_time(server).await;
    assert_eq!(report.outcome(), Outcome::Drained, "{report}");
    assert_eq!(shutdown.stats().accepted, QUEUED as u64);
}

/// B55, on Linux: `stop_handshakes` leaves the listener open but unanswering, so a
/// connect that comes later does not complete (and is refused once the listener closes),
/// while the connections already completed are still accepted.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn stopped_handshakes_leave_completed_connections_acceptable() {
    let mut listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut before = TcpStream::connect(addr).await.unwrap();
    assert!(listener.stop_handshakes().expect("attach the filter"));

    let later = tokio::spawn(TcpStream::connect(addr));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!later.is_finished(), "a new handshake was answered");

    let (mut accepted, _) = tokio::time::timeout(BOUND, listener.accept())
        .await
        .expect("the completed connection is still in the queue")
        .unwrap();
    before.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    accepted.read_exact(&mut buf).await.unwrap();
    assert_eq!(
        &buf, b"ping",
        "data still flows on a filtered listener's connection"
    );

    drop(listener);
    let refused = tokio::time::timeout(BOUND, later)
        .await
        .expect("the SYN retransmit is answered by the closed port")
        .unwrap();
    assert_eq!(
        refused.map(drop).map_err(|e| e.kind()),
        Err(io::ErrorKind::ConnectionRefused)
    );
}

/// How one request of the burst client ended.
#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    /// The connect failed or did not complete: safe to retry.
    refused: AtomicUsize,
    /// Reset or EOF after the connect succeeded and the request was written.
    lost: AtomicUsize,
}

async fn one_request(addr: SocketAddr, tally: &Tally) {
    let connect = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await;
    let Ok(Ok(mut conn)) = connect else {
        tally.refused.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let request = b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n";
    let mut seen = Vec::new();
    let exchange = async {
        conn.write_all(request).await?;
        conn.read_to_end(&mut seen).await
    };
    let result = tokio::time::timeout(BOUND, exchange).await;
    let text = String::from_utf8_lossy(&seen);
    if matches!(result, Ok(Ok(_))) && text.starts_with("HTTP/1.1 200 OK") && text.ends_with("hello")
    {
        tally.ok.fetch_add(1, Ordering::Relaxed);
    } else {
        tally.lost.fetch_add(1, Ordering::Relaxed);
    }
}

/// 32 clients, a new connection per request, each until one of its connects is refused
/// (the close has been seen); `close` is called 200 ms in. Returns (served, refused,
/// lost after connect).
async fn burst<F: std::future::Future>(addr: SocketAddr, close: F) -> (usize, usize, usize) {
    let tally = Arc::new(Tally::default());
    let clients: Vec<_> = (0..32)
        .map(|_| {
            let tally = Arc::clone(&tally);
            tokio::spawn(async move {
                let start = tally.refused.load(Ordering::Relaxed);
                loop {
                    one_request(addr, &tally).await;
                    if tally.refused.load(Ordering::Relaxed) > start {
                        break;
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    close.await;
    for client in clients {
        tokio::time::timeout(BOUND, client)
            .await
            .expect("clients stop once refused")
            .unwrap();
    }
    (
        tally.ok.load(Ordering::Relaxed),
        tally.refused.load(Ordering::Relaxed),
        tally.lost.load(Ordering::Relaxed),
    )
}

/// B55 end to end: 32 clients open a new connection per request while the server shuts
/// down (three rounds). Every client whose connect succeeded gets its response; the
/// others have their connects refused. The same burst against `axum::serve` with its
/// graceful shutdown is run alongside and reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_new_connections_across_the_close_loses_nothing_after_connect() {
    let (mut ours, mut axum_lost) = (Vec::new(), Vec::new());
    for round in 0..3 {
        let shutdown = shutdown(Duration::from_secs(10));
        let (addr, server) = start(app(Arc::default()), &shutdown).await;
        let (ok, refused, lost) = burst(addr, async {
            shutdown.trigger();
        })
        .await;
        let report = served_in_time(server).await;
        assert!(ok > 0, "round {round}: no request served before the close");
        assert!(refused > 0, "round {round}");
        assert_eq!(
            lost, 0,
            "round {round}: {lost} requests reset or cut after their connect succeeded \
             ({ok} served, {refused} refused)"
        );
        assert_eq!(report.outcome(), Outcome::Drained, "{report}");
        ours.push(format!("{lost} lost ({ok} served, {refused} refused)"));

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let axum = tokio::spawn(
            axum::serve(listener, app(Arc::default()))
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .into_future(),
        );
        let (ok, refused, lost) = burst(addr, async {
            let _ = stop.send(());
            let _ = tokio::time::timeout(BOUND, axum).await;
        })
        .await;
        axum_lost.push(format!("{lost} lost ({ok} served, {refused} refused)"));
    }
    eprintln!(
        "bursts across the close: httpdown {}; axum::serve {}",
        ours.join("; "),
        axum_lost.join("; ")
    );
}
