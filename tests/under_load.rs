//! Shutdown under sustained HTTP/1.1 load, repeated: keep-alive clients hammer the
//! server (quick and streaming responses) while the shutdown starts. No response may be
//! cut part-way; every other client-side failure is classified and reported.
//!
//! `cargo test --release --test under_load -- --nocapture` prints the figures; set
//! `UNDER_LOAD_ROUNDS` for more rounds (default 20).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use httpdown::{IdleClose, Outcome, Shutdown};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CLIENTS: usize = 24;

#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    /// Complete responses.
    ok: usize,
    /// Connections refused (the listener had closed).
    refused: usize,
    /// A request written on a connection the server closed cleanly before any response
    /// byte (the keep-alive close race: the client may retry an idempotent request).
    closed_before_response: usize,
    /// A connection reset before any response byte.
    reset_before_response: usize,
    /// A response cut part-way (must never happen: no deadline is reached).
    partial: usize,
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, o: Tally) {
        self.ok += o.ok;
        self.refused += o.refused;
        self.closed_before_response += o.closed_before_response;
        self.reset_before_response += o.reset_before_response;
        self.partial += o.partial;
    }
}

enum Outcome1 {
    Complete { close: bool },
    Nothing { reset: bool },
    Partial,
}

/// Reads one response: a `Content-Length` body or a chunked one (no trailers here).
async fn read_response(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Outcome1 {
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let body = &buf[end + 4..];
            let complete = if let Some(len) = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse::<usize>().ok())
            {
                body.len() >= len
            } else {
                body.ends_with(b"0\r\n\r\n")
            };
            if complete {
                return Outcome1::Complete {
                    close: head.contains("connection: close"),
                };
            }
        }
        match conn.read(&mut chunk).await {
            Ok(0) => {
                return if buf.is_empty() {
                    Outcome1::Nothing { reset: false }
                } else {
                    Outcome1::Partial
                }
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => {
                return if buf.is_empty() {
                    Outcome1::Nothing {
                        reset: e.kind() == std::io::ErrorKind::ConnectionReset,
                    }
                } else {
                    Outcome1::Partial
                }
            }
        }
    }
}

/// One client: requests over keep-alive connections, reconnecting after
/// `Connection: close`, until its connection is refused.
async fn client(addr: SocketAddr, id: usize) -> Tally {
    let mut tally = Tally::default();
    let paths = ["/", "/slow?ms=5", "/slow?ms=40"];
    let mut buf = Vec::with_capacity(4096);
    let mut n = id;
    'connections: loop {
        let Ok(mut conn) = TcpStream::connect(addr).await else {
            tally.refused += 1;
            return tally;
        };
        loop {
            n += 1;
            let path = paths[n % paths.len()];
            let head = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
            if conn.write_all(head.as_bytes()).await.is_err() {
                tally.reset_before_response += 1;
                continue 'connections;
            }
            match read_response(&mut conn, &mut buf).await {
                Outcome1::Complete { close } => {
                    tally.ok += 1;
                    if close {
                        continue 'connections;
                    }
                }
                Outcome1::Nothing { reset: false } => {
                    tally.closed_before_response += 1;
                    continue 'connections;
                }
                Outcome1::Nothing { reset: true } => {
                    tally.reset_before_response += 1;
                    continue 'connections;
                }
                Outcome1::Partial => {
                    tally.partial += 1;
                    continue 'connections;
                }
            }
        }
    }
}

async fn rounds(idle_close: IdleClose, rounds: usize) -> Tally {
    let mut total = Tally::default();
    for round in 0..rounds {
        let shutdown = Shutdown::builder()
            .stop_timeout(Duration::from_secs(10))
            .build();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(std::future::IntoFuture::into_future(
            httpdown::serve(listener, app(Arc::default()), &shutdown).idle_close(idle_close),
        ));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|id| tokio::spawn(client(addr, id)))
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        shutdown.trigger();
        let mut tally = Tally::default();
        for client in clients {
            tally += tokio::time::timeout(BOUND, client)
                .await
                .expect("a client hung")
                .unwrap();
        }
        let report = served(server).await;
        assert_eq!(
            report.outcome(),
            Outcome::Drained,
            "round {round}: {report}"
        );
        assert_eq!(
            tally.partial, 0,
            "round {round}: a response was cut part-way: {tally:?}"
        );
        assert_eq!(
            tally.refused, CLIENTS,
            "round {round}: every client ends refused"
        );
        total += tally;
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_shutdowns_under_load_never_cut_a_response() {
    let n: usize = std::env::var("UNDER_LOAD_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    // The wait is long so that clients starved of CPU by other tests still send their
    // next request within it; a client that does not sends it after the close.
    for (name, idle_close) in [
        ("Immediately", IdleClose::Immediately),
        (
            "AfterNextRequest(5s)",
            IdleClose::AfterNextRequest(Duration::from_secs(5)),
        ),
    ] {
        let total = rounds(idle_close, n).await;
        let failed = total.closed_before_response + total.reset_before_response;
        eprintln!(
            "under load, idle_close {name}: {n} rounds x {CLIENTS} clients: {} complete responses, \
             0 cut part-way, {} closed before any response byte, {} reset before any response \
             byte ({:.3}% of requests), {} connects refused after the listener closed",
            total.ok,
            total.closed_before_response,
            total.reset_before_response,
            100.0 * failed as f64 / (total.ok + failed).max(1) as f64,
            total.refused,
        );
        assert_eq!(total.partial, 0);
        if idle_close != IdleClose::Immediately {
            assert_eq!(failed, 0, "{name}: a request was lost: {total:?}");
        }
    }
}
