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
        (
            "AfterNextRequest(1s)",
            IdleClose::AfterNextRequest(Duration::from_secs(1)),
        ),
        (
            "MinIdleAge(1s)",
            IdleClose::MinIdleAge(Duration::from_secs(1)),
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
        if option != IdleClose::Immediately {
            assert_eq!(total.lost, 0, "{name}: a POST was lost");
            assert_eq!(
                total.closed_cleanly,
                rounds * CLIENTS,
                "{name}: every connection ends after a response with Connection: close"
            );
        }
    }
}
