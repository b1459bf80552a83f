//! The keep-alive close race (B23), measured: clients POST over keep-alive connections,
//! with a short pause between requests as real clients have, while the shutdown starts.
//! With idle connections closed at drain start, a POST sent on a connection the server is
//! closing is lost (the client gets no response and cannot know whether it was
//! processed); with `IdleClose::AfterNextRequest` or `IdleClose::MinIdleAge` none is.
//!
//! `cargo test --release --test close_race -- --nocapture` prints the figures; set
//! `CLOSE_RACE_ROUNDS` for more rounds (default 5).

mod common;

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::time::Duration;

use axum::routing::post;
use axum::Router;
use httpdown::{IdleClose, Shutdown};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CLIENTS: usize = 32;
const THINK: Duration = Duration::from_millis(1);

#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    /// Responses received in full.
    ok: usize,
    /// POSTs written on an open keep-alive connection that got no response byte.
    lost: usize,
    /// Responses cut part-way.
    partial: usize,
    /// Connections the server ended with `Connection: close` after a response.
    closed_cleanly: usize,
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, other: Tally) {
        self.ok += other.ok;
        self.lost += other.lost;
        self.partial += other.partial;
        self.closed_cleanly += other.closed_cleanly;
    }
}

/// One client: POSTs until the server says `Connection: close` or the connection fails.
async fn client(addr: SocketAddr) -> Tally {
    let mut tally = Tally::default();
    let Ok(mut conn) = TcpStream::connect(addr).await else {
        return tally;
    };
    conn.set_nodelay(true).unwrap();
    let request = b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n\r\nhello";
    let mut buf = Vec::with_capacity(1024);
    loop {
        if conn.write_all(request).await.is_err() {
            tally.lost += 1;
            return tally;
        }
        buf.clear();
        let response = loop {
            let mut chunk = [0u8; 1024];
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => break None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                // Every response here is `hello` with a Content-Length of 5.
                if buf.len() >= end + 4 + 5 {
                    break Some(String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase());
                }
            }
        };
        match response {
            None if buf.is_empty() => {
                tally.lost += 1;
                return tally;
            }
            None => {
                tally.partial += 1;
                return tally;
            }
            Some(head) => {
                tally.ok += 1;
                if head.contains("connection: close") {
                    tally.closed_cleanly += 1;
                    return tally;
                }
            }
        }
        tokio::time::sleep(THINK).await;
    }
}

async fn round(idle_close: IdleClose) -> Tally {
    let shutdown = Shutdown::builder()
        .stop_timeout(Duration::from_secs(5))
        .build();
    let app = Router::new().route("/echo", post(|body: String| async move { body }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        httpdown::serve(listener, app, &shutdown)
            .idle_close(idle_close)
            .into_future(),
    );
    let clients: Vec<_> = (0..CLIENTS).map(|_| tokio::spawn(client(addr))).collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    shutdown.trigger();
    let mut tally = Tally::default();
    for client in clients {
        tally += tokio::time::timeout(common::BOUND, client)
            .await
            .expect("client hung")
            .unwrap();
    }
    common::served(server).await;
    tally
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_close_options_lose_no_post_where_closing_at_once_does() {
    let rounds: usize = std::env::var("CLOSE_RACE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let options = [
        ("Immediately", IdleClose::Immediately),
        // Waits far longer than a client's think time, so a client starved of CPU on a
        // loaded machine still sends its next POST in time.
        (
            "AfterNextRequest(5s)",
            IdleClose::AfterNextRequest(Duration::from_secs(5)),
        ),
        (
            "MinIdleAge(5s)",
            IdleClose::MinIdleAge(Duration::from_secs(5)),
        ),
    ];
    for (name, option) in options {
        let mut total = Tally::default();
        for _ in 0..rounds {
            total += round(option).await;
        }
        let posts = total.ok + total.lost + total.partial;
        eprintln!(
            "close race, {name}: {rounds} rounds x {CLIENTS} clients: {posts} POSTs, {} lost ({:.2}%), {} partial, {} connections closed after a response",
            total.lost,
            100.0 * total.lost as f64 / posts.max(1) as f64,
            total.partial,
            total.closed_cleanly,
        );
        assert_eq!(total.partial, 0, "{name}: a response was cut part-way");
        if option == IdleClose::Immediately {
            // Every client idle at drain start (most of them: they spend most of their
            // time thinking) sends its next POST on a connection the server has closed.
            assert!(
                total.lost > 0,
                "{name}: no POST lost, so this test no longer shows the race it is about"
            );
        } else {
            assert_eq!(total.lost, 0, "{name}: a POST was lost");
            assert_eq!(
                total.closed_cleanly,
                rounds * CLIENTS,
                "{name}: every connection ends after a response with Connection: close"
            );
        }
    }
}

/// The race made deterministic (paused time, in-memory pipes): a keep-alive client that
/// got its response just before drain start sends its next POST 1 ms after it. Closing
/// idle connections at once loses that POST (the client gets no response byte); both
/// mitigations serve it, with `Connection: close`.
#[tokio::test(start_paused = true)]
async fn a_post_sent_just_after_drain_start_is_lost_only_when_closing_at_once() {
    const POST: &[u8] = b"POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n\r\nhello";
    let options = [
        IdleClose::Immediately,
        IdleClose::AfterNextRequest(Duration::from_secs(1)),
        IdleClose::MinIdleAge(Duration::from_secs(1)),
    ];
    for option in options {
        let shutdown = common::shutdown(Duration::from_secs(5));
        let app = Router::new().route("/echo", post(|body: String| async move { body }));
        let (listener, connector) = common::channel_listener();
        let server = tokio::spawn(
            httpdown::serve(listener, app, &shutdown)
                .idle_close(option)
                .into_future(),
        );
        let mut conn = connector.connect();
        conn.write_all(POST).await.unwrap();
        common::read_until(&mut conn, "hello").await;
        // Idle now; the shutdown starts, and the client's next POST follows 1 ms later.
        tokio::time::sleep(Duration::from_millis(1)).await;
        shutdown.trigger();
        tokio::time::sleep(Duration::from_millis(1)).await;
        let sent = conn.write_all(POST).await;
        let (text, _) = common::read_to_end(&mut conn).await;
        if option == IdleClose::Immediately {
            assert!(
                sent.is_err() || text.is_empty(),
                "{option:?}: the POST was served: {text:?}"
            );
        } else {
            sent.unwrap();
            assert!(text.starts_with("HTTP/1.1 200 OK"), "{option:?}: {text:?}");
            assert!(
                text.to_ascii_lowercase().contains("connection: close\r\n"),
                "{option:?}: {text:?}"
            );
            assert!(text.ends_with("hello"), "{option:?}: {text:?}");
        }
        let report = common::served(server).await;
        assert_eq!(
            report.outcome(),
            httpdown::Outcome::Drained,
            "{option:?}: {report}"
        );
    }
}
