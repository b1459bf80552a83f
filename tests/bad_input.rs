//! Bad input (SPEC section 5): malformed requests, oversize heads, invalid chunked
//! bodies, clients resetting mid-body, slowloris heads and a flood of silent connections
//! get the right status or a clean close, never a panic, and the shutdown still ends by
//! its deadlines.

mod common;

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::post;
use axum::Router;
use common::*;
use httpdown::{Error, Outcome, Report, Shutdown};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;

fn bad_input_app() -> Router {
    app(Arc::default()).route("/echo", post(|body: String| async move { body }))
}

async fn server(
    stop: Duration,
    header_read_timeout: Duration,
) -> (SocketAddr, Shutdown, JoinHandle<Result<Report, Error>>) {
    let shutdown = Shutdown::builder()
        .stop_timeout(stop)
        .kill_timeout(Duration::from_secs(1))
        .build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        httpdown::serve(listener, bad_input_app(), &shutdown)
            .header_read_timeout(header_read_timeout)
            .into_future(),
    );
    (addr, shutdown, server)
}

/// Sends `bytes` on a new connection and reads what comes back until the server closes.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> (String, End) {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(bytes).await.unwrap();
    read_to_end(&mut conn).await
}

fn status(response: &str) -> &str {
    response.lines().next().unwrap_or("")
}

#[tokio::test]
async fn malformed_and_oversize_requests_get_the_right_status() {
    let (addr, shutdown, server) = server(Duration::from_secs(5), Duration::from_secs(5)).await;

    for bad in [
        &b"NOT A REQUEST\r\n\r\n"[..],
        b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET /\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header Without Colon\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    ] {
        let (response, _) = exchange(addr, bad).await;
        assert_eq!(
            status(&response),
            "HTTP/1.1 400 Bad Request",
            "{:?} -> {response:?}",
            String::from_utf8_lossy(bad)
        );
    }

    // A head larger than the server buffers, and one with too many fields: 431.
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let (response, _) = exchange(addr, huge.as_bytes()).await;
    assert_eq!(
        status(&response),
        "HTTP/1.1 431 Request Header Fields Too Large",
        "{response:?}"
    );
    let many: String = (0..200).map(|i| format!("X-{i}: y\r\n")).collect();
    let (response, _) = exchange(
        addr,
        format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes(),
    )
    .await;
    assert_eq!(
        status(&response),
        "HTTP/1.1 431 Request Header Fields Too Large",
        "{response:?}"
    );

    // An invalid chunked body: the handler cannot read it; 400, and the connection ends.
    let (response, _) = exchange(
        addr,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert!(
        response.is_empty() || status(&response) == "HTTP/1.1 400 Bad Request",
        "{response:?}"
    );

    // The server is still fine.
    let (response, _) = exchange(
        addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(response.ends_with("hello"), "{response:?}");
    assert_eq!(shutdown.in_flight(), 0);
    shutdown.trigger();
    let report = served(server).await;
    assert_eq!(report.outcome(), Outcome::Drained, "{report}");
}

/// A client that resets its connection in the middle of a request body: the request is
/// released, nothing leaks, the shutdown drains.
#[tokio::test]
async fn a_client_resetting_mid_body_leaks_nothing() {
    let (addr, shutdown, server) = server(Duration::from_secs(5), Duration::from_secs(5)).await;
    for _ in 0..20 {
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\npartial body",
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        // SO_LINGER 0: close sends a reset.
        socket2::SockRef::from(&conn)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(conn);
    }
    tokio::time::timeout(BOUND, async {
        while shutdown.in_flight() > 0 || shutdown.connections() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("a reset request stayed counted");
    let stats = shutdown.stats();
    assert_eq!((stats.accepted, stats.closed), (20, 20));
    shutdown.trigger();
    let report = served(server).await;
    assert_eq!(report.outcome(), Outcome::Drained, "{report}");
}

/// Slowloris on paused time, over in-memory pipes: a head sent one byte every 20 ms is
/// cut by the header-read timeout while serving; during a shutdown (header-read timeout
/// out of the way), 50 of them hold it exactly until the stop deadline and no longer.
#[tokio::test(start_paused = true)]
async fn slowloris_heads_are_cut_by_the_header_read_timeout_and_the_stop_deadline() {
    const DRIP: Duration = Duration::from_millis(20);
    let serve_pipes = |stop: Duration, header_read_timeout: Duration| {
        let shutdown = Shutdown::builder()
            .stop_timeout(stop)
            .kill_timeout(Duration::from_secs(1))
            .build();
        let (listener, connector) = channel_listener();
        let server = tokio::spawn(
            httpdown::serve(listener, bad_input_app(), &shutdown)
                .header_read_timeout(header_read_timeout)
                .into_future(),
        );
        (shutdown, connector, server)
    };
    /// Drips a never-ending head; returns how long until a write failed (the server
    /// closed), or `None` if it was never cut within a minute.
    async fn drip(mut conn: tokio::io::DuplexStream) -> Option<Duration> {
        let started = Instant::now();
        for byte in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ".iter().cycle() {
            if conn.write_all(&[*byte]).await.is_err() {
                return Some(started.elapsed());
            }
            if started.elapsed() > Duration::from_secs(60) {
                return None;
            }
            tokio::time::sleep(DRIP).await;
        }
        unreachable!("the head never ends")
    }

    // While serving: the header-read timeout (500 ms) cuts it, and only it.
    let (shutdown, connector, server) =
        serve_pipes(Duration::from_millis(800), Duration::from_millis(500));
    let cut_after = drip(connector.connect()).await.expect("never cut");
    assert!(
        cut_after >= Duration::from_millis(500) && cut_after <= Duration::from_millis(500) + DRIP,
        "cut {cut_after:?} after the first byte; the header-read timeout is 500 ms"
    );
    shutdown.trigger();
    let report = served(server).await;
    assert_eq!(report.outcome(), Outcome::Drained, "{report}");

    // During a shutdown: 50 drips, each cut at the stop deadline (800 ms after drain
    // start), and the shutdown ends there, forced.
    let (shutdown, connector, server) =
        serve_pipes(Duration::from_millis(800), Duration::from_secs(60));
    let drips: Vec<_> = (0..50)
        .map(|_| tokio::spawn(drip(connector.connect())))
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t0 = Instant::now();
    shutdown.trigger();
    let report = served(server).await;
    assert_eq!(t0.elapsed(), Duration::from_millis(800), "{report}");
    assert_eq!(
        report.outcome(),
        Outcome::ForceClosed {
            connections: 50,
            requests: 0
        },
        "{report}"
    );
    for drip in drips {
        let cut_after = drip.await.expect("a drip task failed").expect("never cut");
        // Started 100 ms before the trigger: cut at the stop deadline, 900 ms in.
        assert!(
            cut_after >= Duration::from_millis(900)
                && cut_after <= Duration::from_millis(900) + DRIP,
            "cut {cut_after:?} after the first byte, not at the stop deadline"
        );
    }
}

/// A flood of connections that send nothing: all closed at drain start.
#[tokio::test]
async fn a_flood_of_silent_connections_closes_at_drain_start() {
    let (addr, shutdown, server) = server(Duration::from_secs(30), Duration::from_secs(30)).await;
    let mut silent = Vec::new();
    for _ in 0..500 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::timeout(BOUND, async {
        while shutdown.connections() < 500 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("not all accepted");
    let t0 = Instant::now();
    shutdown.trigger();
    let report = served(server).await;
    eprintln!(
        "500 silent connections: serve returned {:?} after the trigger",
        t0.elapsed()
    );
    assert_eq!(report.outcome(), Outcome::Drained, "{report}");
    assert_eq!(report.connections_at_drain(), 500);
    assert!(report.total() < Duration::from_secs(5), "{report}");
    for mut conn in silent {
        let (text, end) = read_to_end(&mut conn).await;
        assert_eq!((text.as_str(), end), ("", End::Eof));
    }
}

/// A bounded mutation fuzz of the request path: 2,000 requests made from valid ones by
/// flipping, inserting, deleting and truncating bytes (a fixed seed, so a failure
/// replays). Each gets a response or a close, nothing panics, nothing stays counted, and
/// the server still serves and drains afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_requests_never_break_the_server() {
    let (addr, shutdown, server) = server(Duration::from_secs(5), Duration::from_secs(2)).await;
    let templates: [&[u8]; 4] = [
        b"GET /slow?ms=1 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\nAccept: */*\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
    ];
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        seed.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let mut statuses = std::collections::BTreeMap::<String, usize>::new();
    for _batch in 0..40 {
        let mut batch = Vec::new();
        for _ in 0..50 {
            let mut bytes = templates[(next() % 4) as usize].to_vec();
            for _ in 0..1 + next() % 4 {
                let at = (next() as usize) % bytes.len().max(1);
                match next() % 4 {
                    0 => bytes[at] = next() as u8,
                    1 => bytes.insert(at, next() as u8),
                    2 if bytes.len() > 1 => {
                        bytes.remove(at);
                    }
                    _ => bytes.truncate(at.max(1)),
                }
            }
            batch.push(tokio::spawn(async move {
                let mut conn = TcpStream::connect(addr).await.unwrap();
                let _ = conn.write_all(&bytes).await;
                // End of input: a truncated request ends here rather than at a timeout.
                let _ = conn.shutdown().await;
                read_to_end(&mut conn).await.0
            }));
        }
        for task in batch {
            let response = task.await.expect("a client panicked or hung");
            let line = status(&response).to_owned();
            let key = if line.is_empty() {
                "(closed)".to_owned()
            } else {
                line
            };
            *statuses.entry(key).or_default() += 1;
        }
    }
    eprintln!("mutated requests by first status line: {statuses:?}");
    assert!(
        statuses
            .keys()
            .all(|s| s == "(closed)" || !s.contains(" 5")),
        "a 5xx: {statuses:?}"
    );
    let (response, _) = exchange(
        addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(response.ends_with("hello"), "{response:?}");
    tokio::time::timeout(BOUND, async {
        while shutdown.in_flight() > 0 || shutdown.connections() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("something stayed counted");
    shutdown.trigger();
    let report = served(server).await;
    assert_eq!(report.outcome(), Outcome::Drained, "{report}");
}
