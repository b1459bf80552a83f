//! HTTP/2 (h2c, prior knowledge) at frame level (B24): raw frames over a TCP socket, or
//! over an in-memory pipe on paused time where a deadline is checked to the millisecond.
//!
//! The client is hand-written: a 9-byte frame header (24-bit length, type, flags, 31-bit
//! stream id), and request HEADERS as a hand-encoded HPACK block of static-table fields.
//! Response HEADERS are not decoded; only frame types, flags, stream ids and DATA payloads
//! are looked at.

mod common;

use std::future::IntoFuture;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use common::*;
use httpdown::Outcome;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;

/// 2^31-1: the last-stream-id of the first GOAWAY of a two-step shutdown.
const MAX_STREAM_ID: u32 = (1 << 31) - 1;
const NO_ERROR: u32 = 0;

/// The test app plus `/hit`, which counts the calls of its handler.
fn counting_app(hits: Arc<AtomicUsize>) -> Router {
    app(Arc::default()).route(
        "/hit",
        get(move || {
            hits.fetch_add(1, Ordering::SeqCst);
            async { "hit" }
        }),
    )
}

async fn tcp(addr: std::net::SocketAddr) -> TcpStream {
    let stream = tokio::time::timeout(BOUND, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    stream.set_nodelay(true).unwrap();
    stream
}

/// One frame read from the server.
#[derive(Debug, Clone)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
    /// When it was read.
    at: Instant,
}

impl Frame {
    fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    fn is_goaway(&self) -> bool {
        self.kind == GOAWAY
    }

    /// A GOAWAY's last-stream-id and error code.
    fn goaway(&self) -> (u32, u32) {
        assert!(self.is_goaway(), "{self:?}");
        let p = &self.payload;
        let last = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & MAX_STREAM_ID;
        let code = u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
        (last, code)
    }

    /// The final GOAWAY of a two-step shutdown (one with a real last-stream-id).
    fn is_final_goaway(&self) -> bool {
        self.is_goaway() && self.goaway().0 != MAX_STREAM_ID
    }

    fn is_ping(&self) -> bool {
        self.kind == PING && !self.has(ACK)
    }

    /// A DATA frame's data, without padding.
    fn data(&self) -> &[u8] {
        assert_eq!(self.kind, DATA);
        if self.has(PADDED) {
            let pad = self.payload[0] as usize;
            &self.payload[1..self.payload.len() - pad]
        } else {
            &self.payload
        }
    }
}

/// A hand-written HTTP/2 client connection: it writes frames, and reads and records every
/// frame the server sends. It always ACKs the server's SETTINGS; it ACKs PINGs only if
/// `answer_pings`.
struct H2<S> {
    io: S,
    answer_pings: bool,
    /// Every frame read so far, in order.
    frames: Vec<Frame>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> H2<S> {
    /// Sends the preface and an empty SETTINGS, and reads until the server's SETTINGS has
    /// been ACKed and ours has been ACKed by the server.
    async fn handshake(io: S, answer_pings: bool) -> Self {
        let mut h2 = H2 {
            io,
            answer_pings,
            frames: Vec::new(),
        };
        h2.io.write_all(PREFACE).await.unwrap();
        h2.send(SETTINGS, 0, 0, &[]).await;
        h2.until(|h2| {
            let settings = |ack: bool| {
                h2.frames
                    .iter()
                    .any(|f| f.kind == SETTINGS && f.has(ACK) == ack)
            };
            settings(true) && settings(false)
        })
        .await;
        h2
    }

    async fn send(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let len = payload.len();
        assert!(len < 1 << 14, "frame too large");
        let mut frame = Vec::with_capacity(9 + len);
        frame.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
        frame.push(kind);
        frame.push(flags);
        frame.extend_from_slice(&(stream & MAX_STREAM_ID).to_be_bytes());
        frame.extend_from_slice(payload);
        self.io.write_all(&frame).await.expect("write a frame");
        self.io.flush().await.expect("flush");
    }

    /// Opens stream `stream` with `GET path` (END_STREAM: no request body).
    async fn get(&mut self, stream: u32, path: &str) {
        // :method GET, :scheme http (static table, indexed).
        let mut block = vec![0x82, 0x86];
        if path == "/" {
            block.push(0x84);
        } else {
            // :path, literal without indexing, name index 4.
            assert!(path.len() < 127);
            block.extend_from_slice(&[0x04, path.len() as u8]);
            block.extend_from_slice(path.as_bytes());
        }
        // :authority, literal without indexing, name index 1.
        block.extend_from_slice(&[0x01, 4]);
        block.extend_from_slice(b"test");
        self.send(HEADERS, END_HEADERS | END_STREAM, stream, &block)
            .await;
    }

    /// Opens stream `stream` with a bodiless gRPC-like `POST path`
    /// (`content-type: application/grpc`).
    async fn grpc_post(&mut self, stream: u32, path: &str) {
        // :method POST, :scheme http (static table, indexed).
        let mut block = vec![0x83, 0x86];
        assert!(path.len() < 127);
        block.extend_from_slice(&[0x04, path.len() as u8]);
        block.extend_from_slice(path.as_bytes());
        block.extend_from_slice(&[0x01, 4]);
        block.extend_from_slice(b"test");
        // content-type, literal without indexing, name index 31 (4-bit prefix: 15 + 16).
        let value = b"application/grpc";
        block.extend_from_slice(&[0x0f, 0x10, value.len() as u8]);
        block.extend_from_slice(value);
        self.send(HEADERS, END_HEADERS | END_STREAM, stream, &block)
            .await;
    }

    async fn ping(&mut self, payload: [u8; 8]) {
        self.send(PING, 0, 0, &payload).await;
    }

    async fn ping_ack(&mut self, payload: &[u8]) {
        self.send(PING, ACK, 0, payload).await;
    }

    /// Reads the next frame (`Ok(None)` at EOF), records it, and answers SETTINGS (and
    /// PINGs if `answer_pings`). Panics after [`BOUND`].
    async fn next(&mut self) -> Result<Option<Frame>, io::ErrorKind> {
        let frame = tokio::time::timeout(BOUND, read_frame(&mut self.io))
            .await
            .expect("no frame nor EOF in time")?;
        let Some(frame) = frame else {
            return Ok(None);
        };
        if frame.kind == SETTINGS && !frame.has(ACK) {
            self.send(SETTINGS, ACK, 0, &[]).await;
        }
        if frame.is_ping() && self.answer_pings {
            self.ping_ack(&frame.payload.clone()).await;
        }
        self.frames.push(frame.clone());
        Ok(Some(frame))
    }

    /// Reads frames until `done` holds; panics on EOF or a read error.
    async fn until(&mut self, done: impl Fn(&Self) -> bool) {
        while !done(self) {
            match self.next().await {
                Ok(Some(_)) => {}
                other => panic!("connection ended early ({other:?}); frames: {self:#?}"),
            }
        }
    }

    /// Reads frames until EOF or a read error.
    async fn read_to_eof(&mut self) -> End {
        loop {
            match self.next().await {
                Ok(Some(_)) => {}
                Ok(None) => return End::Eof,
                Err(kind) => return End::Error(kind),
            }
        }
    }

    /// The DATA received on `stream` so far.
    fn body(&self, stream: u32) -> String {
        let bytes: Vec<u8> = self
            .frames
            .iter()
            .filter(|f| f.kind == DATA && f.stream == stream)
            .flat_map(|f| f.data().to_vec())
            .collect();
        String::from_utf8(bytes).unwrap()
    }

    /// The frame that ended `stream` (END_STREAM on DATA or trailing HEADERS).
    fn end_of(&self, stream: u32) -> Option<&Frame> {
        self.frames.iter().find(|f| {
            f.stream == stream && (f.kind == DATA || f.kind == HEADERS) && f.has(END_STREAM)
        })
    }

    fn on_stream(&self, stream: u32) -> Vec<&Frame> {
        self.frames.iter().filter(|f| f.stream == stream).collect()
    }

    fn of_kind(&self, kind: u8) -> Vec<&Frame> {
        self.frames.iter().filter(|f| f.kind == kind).collect()
    }

    fn goaways(&self) -> Vec<(u32, u32)> {
        self.frames
            .iter()
            .filter(|f| f.is_goaway())
            .map(Frame::goaway)
            .collect()
    }

    /// Index of the first recorded frame matching `pred`.
    fn position(&self, pred: impl Fn(&Frame) -> bool) -> Option<usize> {
        self.frames.iter().position(pred)
    }
}

impl<S> std::fmt::Debug for H2<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let frames: Vec<String> = self
            .frames
            .iter()
            .map(|fr| {
                let name = match fr.kind {
                    DATA => "DATA",
                    HEADERS => "HEADERS",
                    RST_STREAM => "RST_STREAM",
                    SETTINGS => "SETTINGS",
                    PING => "PING",
                    GOAWAY => "GOAWAY",
                    0x8 => "WINDOW_UPDATE",
                    _ => "OTHER",
                };
                let detail = match fr.kind {
                    DATA => format!("{:?}", String::from_utf8_lossy(fr.data())),
                    GOAWAY => format!("{:?}", fr.goaway()),
                    _ => format!("{:?}", fr.payload),
                };
                format!("{name} stream={} flags={:#x} {detail}", fr.stream, fr.flags)
            })
            .collect();
        f.debug_struct("H2").field("frames", &frames).finish()
    }
}

/// Reads one frame: `Ok(None)` at EOF on a frame boundary.
async fn read_frame<S: AsyncRead + Unpin>(io: &mut S) -> Result<Option<Frame>, io::ErrorKind> {
    let mut head = [0u8; 9];
    let n = io.read(&mut head).await.map_err(|e| e.kind())?;
    if n == 0 {
        return Ok(None);
    }
    io.read_exact(&mut head[n..]).await.map_err(|e| e.kind())?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    io.read_exact(&mut payload).await.map_err(|e| e.kind())?;
    Ok(Some(Frame {
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & MAX_STREAM_ID,
        payload,
        at: Instant::now(),
    }))
}

/// B24: streams in flight at drain start complete with their whole body and no
/// RST_STREAM. The server sends a two-step GOAWAY (last-stream-id 2^31-1 and a PING, then,
/// once the PING is ACKed, NO_ERROR with the highest stream the client opened), and closes
/// the connection once the streams have ended; `serve` reports a drained shutdown.
#[tokio::test]
async fn in_flight_streams_complete_after_a_two_step_goaway() {
    let shutdown = shutdown(Duration::from_secs(30));
    let (addr, server) = start(app(Arc::default()), &shutdown).await;
    let mut h2 = H2::handshake(tcp(addr).await, true).await;
    h2.get(1, "/slow?ms=300").await;
    h2.get(3, "/slow?ms=300").await;
    h2.until(|h2| h2.body(1) == "start\n" && h2.body(3) == "start\n")
        .await;
    assert_eq!((shutdown.in_flight(), shutdown.connections()), (2, 1));

    let before = h2.frames.len();
    let t0 = Instant::now();
    shutdown.trigger();
    let end = h2.read_to_eof().await;
    let eof_after = t0.elapsed();

    let goaways = h2.goaways();
    assert!(goaways.len() >= 2, "no two-step GOAWAY: {h2:#?}");
    assert_eq!(goaways[0], (MAX_STREAM_ID, NO_ERROR), "{h2:#?}");
    assert!(
        goaways[1..].iter().all(|g| *g == (3, NO_ERROR)),
        "the final GOAWAY must name stream 3 with NO_ERROR: {h2:#?}"
    );
    let first_goaway = h2.position(Frame::is_goaway).unwrap();
    let shutdown_ping = h2.position(Frame::is_ping).expect("no shutdown PING");
    assert!(
        first_goaway >= before && shutdown_ping > first_goaway,
        "{h2:#?}"
    );
    assert!(
        h2.of_kind(RST_STREAM).is_empty(),
        "RST_STREAM sent: {h2:#?}"
    );
    for stream in [1, 3] {
        assert_eq!(h2.body(stream), "start\nend\n", "stream {stream}: {h2:#?}");
        let end_of = h2
            .position(|f| f.stream == stream && f.has(END_STREAM) && f.kind == DATA)
            .unwrap_or_else(|| panic!("stream {stream} not ended: {h2:#?}"));
        assert!(end_of > first_goaway, "{h2:#?}");
    }
    assert_eq!(end, End::Eof, "{h2:#?}");
    assert!(eof_after >= Duration::from_millis(250), "{eof_after:?}");

    let report = served_in_time(server).await;
    let at = |i: usize| h2.frames[i].at - t0;
    let final_goaway = h2.position(Frame::is_final_goaway).unwrap();
    eprintln!(
        "h2 in flight: trigger -> GOAWAY(2^31-1) {:?}, -> final GOAWAY {:?}, -> last END_STREAM {:?}, -> EOF {eof_after:?}; {} GOAWAYs; {report}",
        at(first_goaway),
        at(final_goaway),
        [1, 3].map(|s| h2.end_of(s).unwrap().at - t0).iter().max().unwrap(),
        goaways.len(),
    );
    assert_eq!(report.outcome(), Outcome::Drained, "{report}");
    assert_eq!(report.requests_at_drain(), 2, "{report}");
    assert_eq!(
        report.connections_at_drain(),
        1,
        "streams are not connections: {report}"
    );
}

/// B24: a stream the client opens after the first GOAWAY (2^31-1) but before it answers
/// the shutdown PING is still served: the final GOAWAY names it, and its handler runs.
#[tokio::test]
async fn a_stream_opened_before_the_final_goaway_is_served() {
    let hits = Arc::new(AtomicUsize::new(0));
    let shutdown = shutdown(Duration::from_secs(30));
    let (addr, server) = start(counting_app(hits.clone()), &shutdown).await;
    let mut h2 = H2::handshake(tcp(addr).await, false).await;
    h2.get(1, "/slow?ms=300").await;
    h2.until(|h2| h2.body(1) == "start\n").await;

    shutdown.trigger();
    h2.until(|h2| h2.frames.iter().any(Frame::is_ping)).await;
    assert_eq!(h2.goaways(), [(MAX_STREAM_ID, NO_ERROR)], "{h2:#?}");
    // A request racing the GOAWAY: sent before the PING ACK, so read before it.
    h2.get(3, "/hit").await;
    let ping = h2.frames[h2.position(Frame::is_ping).unwrap()]
        .payload
        .clone();
    h2.ping_ack(&ping).await;

    let end = h2.read_to_eof().await;
    assert_eq!(
        h2.goaways(),
        [(MAX_STREAM_ID, NO_ERROR), (3, NO_ERROR)],
        "{h2:#?}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    assert_eq!(h2.body(3), "hit", "{h2:#?}");
    assert!(h2.end_of(3).is_some(), "{h2:#?}");
    assert_eq!(h2.body(1), "start\nend\n", "{h2:#?}");
    assert!(h2.end_of(1).is_some(), "{h2:#?}");
    assert!(
        h2.of_kind(RST_STREAM).is_empty(),
        "RST_STREAM sent: {h2:#?}"
    );
    assert_eq!(end, End::Eof, "{h2:#?}");
    let report = served_in_time(server).await;
    assert_eq!(report.outcome(), Outcome::Drained, "{report}");
}

/// B24: a stream opened after the final GOAWAY (its id above the last-stream-id) is not
/// processed: its handler is not called and no frame comes back for it, while the stream
/// in flight completes. A PING sent after the HEADERS proves the server read them: frames
/// are processed in order.
#[tokio::test]
async fn a_stream_opened_after_the_final_goaway_is_not_processed() {
    let hits = Arc::new(AtomicUsize::new(0));
    let shutdown = shutdown(Duration::from_secs(30));
    let (addr, server) = start(counting_app(hits.clone()), &shutdown).await;
    let mut h2 = H2::handshake(tcp(addr).await, true).await;
    // The handler is observable.
    h2.get(1, "/hit").await;
    h2.until(|h2| h2.end_of(1).is_some()).await;
    assert_eq!(
        (h2.body(1).as_str(), hits.load(Ordering::SeqCst)),
        ("hit", 1)
    );
    h2.get(3, "/slow?ms=500").await;
    h2.until(|h2| h2.body(3) == "start\n").await;

    shutdown.trigger();
    h2.until(|h2| h2.frames.iter().any(Frame::is_final_goaway))
        .await;
    assert_eq!(
        h2.goaways(),
        [(MAX_STREAM_ID, NO_ERROR), (3, NO_ERROR)],
        "{h2:#?}"
    );
    h2.get(5, "/hit").await;
    h2.ping(*b"probe-05").await;
    h2.until(|h2| {
        h2.frames
            .iter()
            .any(|f| f.kind == PING && f.has(ACK) && f.payload == b"probe-05")
    })
    .await;
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "the late stream's handler ran"
    );
    assert!(h2.on_stream(5).is_empty(), "{h2:#?}");

    let end = h2.read_to_eof().await;
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "the late stream's handler ran"
    );
    assert!(h2.on_stream(5).is_empty(), "late stream answered: {h2:#?}");
    assert_eq!(h2.body(3), "start\nend\n", "{h2:#?}");
    assert!(h2.end_of(3).is_some(), "{h2:#?}");
    assert!(
        h2.of_kind(RST_STREAM).is_empty(),
        "RST_STREAM sent: {h2:#?}"
    );
    assert_eq!(end, End::Eof, "{h2:#?}");
    let report = served_in_time(server).await;
    assert_eq!(report.outcome(), Outcome::Drained, "{report}");
    assert_eq!(report.requests_at_drain(), 1, "{report}");
}

/// B24 on paused time: idle h2 connections (one that never opened a stream, one whose
/// only stream has ended) get the two-step GOAWAY and close at drain start; the shutdown
/// is drained at once, nowhere near the 30 s stop deadline.
#[tokio::test(start_paused = true)]
async fn idle_h2_connections_close_promptly_at_drain_start() {
    let shutdown = shutdown(Duration::from_secs(30));
    let (listener, connector) = channel_listener();
    let server =
        tokio::spawn(httpdown::serve(listener, app(Arc::default()), &shutdown).into_future());
    let mut fresh = H2::handshake(connector.connect(), true).await;
    let mut used = H2::handshake(connector.connect(), true).await;
    used.get(1, "/").await;
    used.until(|h2| h2.end_of(1).is_some()).await;
    assert_eq!(used.body(1), "hello");
    // Let the stream's task finish and release its count.
    tokio::time::timeout(BOUND, async {
        while shutdown.in_flight() != 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    assert_eq!(shutdown.connections(), 2);

    let t0 = Instant::now();
    shutdown.trigger();
    for (name, h2, last) in [("fresh", &mut fresh, 0), ("used", &mut used, 1)] {
        let before = h2.frames.len();
        let end = h2.read_to_eof().await;
        let closed = t0.elapsed();
        eprintln!("idle h2 ({name}): EOF {closed:?} after the trigger (paused time)");
        assert_eq!(end, End::Eof, "{name}: {h2:#?}");
        assert_eq!(
            h2.goaways(),
            [(MAX_STREAM_ID, NO_ERROR), (last, NO_ERROR)],
            "{name}: {h2:#?}"
        );
        assert!(h2.position(Frame::is_goaway).unwrap() >= before);
        assert!(h2.of_kind(RST_STREAM).is_empty(), "{name}: {h2:#?}");
        assert!(
            closed <= Duration::from_millis(10),
            "{name}: closed {closed:?} after the trigger"
        );
    }
    let report = served_in_time(server).await;
    eprintln!("idle h2: {report}");
    assert_eq!(report.outcome(), Outcome::Drained, "{report}");
    assert_eq!(report.connections_at_drain(), 2, "{report}");
    assert!(report.total() <= Duration::from_millis(10), "{report}");
}

/// B24 over a real socket: an idle h2 connection gets the two-step GOAWAY and closes at
/// drain start; `serve` reports a drained shutdown.
#[tokio::test]
async fn an_idle_h2_tcp_connection_closes_promptly_at_drain_start() {
    let shutdown = shutdown(Duration::from_secs(30));
    let (addr, server) = start(app(Arc::default()), &shutdown).await;
    let mut h2 = H2::handshake(tcp(addr).await, true).await;
    assert_eq!(shutdown.connections(), 1);
    let t0 = Instant::now();
    shutdown.trigger();
    let end = h2.read_to_eof().await;
    let eof_after = t0.elapsed();
    assert_eq!(end, End::Eof, "{h2:#?}");
    assert_eq!(
        h2.goaways(),
        [(MAX_STREAM_ID, NO_ERROR), (0, NO_ERROR)],
        "{h2:#?}"
    );
    let report = served_in_time(server).await;
    let goaway_after = h2.frames[h2.position(Frame::is_goaway).unwrap()].at - t0;
    eprintln!(
        "idle h2 over TCP: trigger -> GOAWAY {goaway_after:?}, -> EOF {eof_after:?}; {report}"
    );
    assert_eq!(report.outcome(), Outcome::Drained, "{report}");
    assert!(report.total() < Duration::from_secs(5), "{report}");
}

/// B24 on paused time: an idle h2 peer that reads everything but never answers the
/// shutdown PING gets no final GOAWAY, and its connection is closed exactly at the stop
/// deadline (5 s), not before and not never; the shutdown is reported as forced.
#[tokio::test(start_paused = true)]
async fn a_peer_that_never_answers_the_shutdown_ping_is_closed_at_the_stop_deadline() {
    let shutdown = shutdown(Duration::from_secs(5));
    let (listener, connector) = channel_listener();
    let server =
        tokio::spawn(httpdown::serve(listener, app(Arc::default()), &shutdown).into_future());
    let mut h2 = H2::handshake(connector.connect(), false).await;
    assert_eq!(shutdown.connections(), 1);

    let t0 = Instant::now();
    shutdown.trigger();
    let end = h2.read_to_eof().await;
    assert_eq!(t0.elapsed(), Duration::from_secs(5), "{h2:#?}");
    assert!(matches!(end, End::Eof | End::Error(_)), "{end:?}: {h2:#?}");
    assert_eq!(h2.goaways(), [(MAX_STREAM_ID, NO_ERROR)], "{h2:#?}");
    assert!(h2.frames.iter().any(Frame::is_ping), "{h2:#?}");
    assert_eq!(h2.frames.last().unwrap().at, t0, "{h2:#?}");

    let report = served_in_time(server).await;
    eprintln!("unanswered PING, idle: client saw {end:?}; {report}");
    assert!(
        matches!(report.outcome(), Outcome::ForceClosed { requests: 0, .. }),
        "{report}"
    );
    assert_eq!(report.drain(), Duration::from_secs(5), "{report}");
    assert_eq!(report.total(), Duration::from_secs(5), "{report}");
}

/// B24 on paused time: with a peer that never answers the shutdown PING, a stream in
/// flight at drain start still completes (at 1 s, no RST_STREAM), and the connection is
/// then closed at the stop deadline (5 s).
#[tokio::test(start_paused = true)]
async fn a_stream_completes_for_a_peer_that_never_answers_the_ping_and_the_connection_closes_at_the_stop_deadline(
) {
    let shutdown = shutdown(Duration::from_secs(5));
    let (listener, connector) = channel_listener();
    let server =
        tokio::spawn(httpdown::serve(listener, app(Arc::default()), &shutdown).into_future());
    let mut h2 = H2::handshake(connector.connect(), false).await;
    h2.get(1, "/slow?ms=1000").await;
    h2.until(|h2| h2.body(1) == "start\n").await;

    let t0 = Instant::now();
    shutdown.trigger();
    let end = h2.read_to_eof().await;
    assert_eq!(t0.elapsed(), Duration::from_secs(5), "{h2:#?}");
    assert!(matches!(end, End::Eof | End::Error(_)), "{end:?}: {h2:#?}");
    assert_eq!(h2.goaways(), [(MAX_STREAM_ID, NO_ERROR)], "{h2:#?}");
    assert_eq!(h2.body(1), "start\nend\n", "{h2:#?}");
    let ended = h2.end_of(1).expect("stream 1 not ended").at - t0;
    assert_eq!(ended, Duration::from_secs(1), "{h2:#?}");
    assert!(
        h2.of_kind(RST_STREAM).is_empty(),
        "RST_STREAM sent: {h2:#?}"
    );

    let report = served_in_time(server).await;
    eprintln!(
        "unanswered PING, stream of 1 s: stream ended at {ended:?}, client saw {end:?}; {report}"
    );
    assert!(
        matches!(report.outcome(), Outcome::ForceClosed { requests: 0, .. }),
        "{report}"
    );
    assert_eq!(report.requests_at_drain(), 1, "{report}");
    assert_eq!(report.drain(), Duration::from_secs(5), "{report}");
}

/// The header-read timeout is HTTP/1's: an HTTP/2 connection idle for longer than it
/// stays open and serves its next stream.
#[tokio::test(start_paused = true)]
async fn an_idle_h2_connection_outlives_the_header_read_timeout() {
    let shutdown = shutdown(Duration::from_secs(30));
    let (listener, connector) = channel_listener();
    let server = tokio::spawn(
        httpdown::serve(listener, app(Arc::default()), &shutdown)
            .header_read_timeout(Duration::from_secs(1))
            .into_future(),
    );
    let mut h2 = H2::handshake(connector.connect(), true).await;
    h2.get(1, "/").await;
    h2.until(|h2| h2.end_of(1).is_some()).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    h2.get(3, "/").await;
    h2.until(|h2| h2.end_of(3).is_some()).await;
    assert_eq!(h2.body(3), "hello", "{h2:#?}");
    shutdown.trigger();
    served(server).await;
}

/// A plain (not gRPC) HTTP/2 response still streaming at the stop deadline is cut: its
/// stream never ends cleanly (no END_STREAM, no trailers), so the client cannot take it
/// for a complete response; also on a connection that carried gRPC too (whose close waits
/// for gRPC trailers to be flushed).
#[tokio::test(start_paused = true)]
async fn a_plain_h2_stream_cut_at_the_stop_deadline_never_ends_cleanly() {
    for with_grpc in [false, true] {
        let shutdown = shutdown(Duration::from_secs(1));
        let (listener, connector) = channel_listener();
        let server =
            tokio::spawn(httpdown::serve(listener, app(Arc::default()), &shutdown).into_future());
        let mut h2 = H2::handshake(connector.connect(), true).await;
        if with_grpc {
            h2.grpc_post(1, "/").await;
            h2.until(|h2| h2.end_of(1).is_some()).await;
        }
        h2.get(3, "/stream").await;
        h2.until(|h2| h2.body(3).contains("tick\n")).await;
        shutdown.trigger();
        let _ = h2.read_to_eof().await;
        assert!(
            h2.end_of(3).is_none(),
            "with_grpc {with_grpc}: the cut stream ended as if complete: {:#?}",
            h2.on_stream(3)
        );
        served(server).await;
    }
}

/// B66: a connection older than `max_connection_age` (less up to a tenth) gets GOAWAY:
/// a stream still streaming finishes, the connection then ends, and the client opens a
/// new one for its next requests; before that age, it is left alone.
#[tokio::test(start_paused = true)]
async fn an_h2_connection_past_its_max_age_gets_goaway_and_its_streams_finish() {
    let shutdown = shutdown(Duration::from_secs(30));
    let (connector, server) = serve_pipe_with(&shutdown, |serve| {
        serve.max_connection_age(Duration::from_secs(10))
    });
    let opened = Instant::now();
    let mut h2 = H2::handshake(connector.connect(), true).await;
    h2.get(1, "/").await;
    h2.until(|h2| h2.end_of(1).is_some()).await;
    tokio::time::sleep(Duration::from_millis(8_900)).await;
    assert!(h2.goaways().is_empty(), "no GOAWAY at 8.9 s: {h2:#?}");
    // A response that runs across the age limit.
    h2.get(3, "/slow?ms=3000").await;
    h2.until(|h2| !h2.goaways().is_empty()).await;
    let goaway_at = opened.elapsed();
    assert!(
        goaway_at >= Duration::from_secs(9) && goaway_at <= Duration::from_secs(10),
        "GOAWAY {goaway_at:?} after the connection opened"
    );
    assert_eq!(h2.read_to_eof().await, End::Eof, "{h2:#?}");
    assert_eq!(h2.body(3), "start\nend\n", "the stream finished: {h2:#?}");
    shutdown.trigger();
    served(server).await;
}

/// B66: an HTTP/2 connection with no stream open for its idle timeout gets GOAWAY and
/// closes, counted from its last stream's end (a stream running longer than the timeout
/// keeps it open; PINGs do not count as use).
#[tokio::test(start_paused = true)]
async fn an_idle_h2_connection_gets_goaway_at_its_idle_timeout() {
    let shutdown = shutdown(Duration::from_secs(30));
    let (connector, server) = serve_pipe_with(&shutdown, |serve| {
        serve.idle_timeout(Duration::from_secs(5))
    });
    let mut h2 = H2::handshake(connector.connect(), true).await;
    // A stream of 8 s: longer than the idle timeout, which does not count while it runs.
    h2.get(1, "/slow?ms=8000").await;
    h2.until(|h2| h2.end_of(1).is_some()).await;
    assert!(h2.goaways().is_empty(), "GOAWAY under a stream: {h2:#?}");
    let ended = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    h2.ping(*b"stillup!").await;
    h2.until(|h2| !h2.goaways().is_empty()).await;
    let goaway_at = ended.elapsed();
    assert!(
        goaway_at >= Duration::from_secs(5) && goaway_at < Duration::from_millis(5_010),
        "GOAWAY {goaway_at:?} after the last stream ended"
    );
    assert_eq!(h2.read_to_eof().await, End::Eof, "{h2:#?}");
    assert_eq!(h2.body(1), "start\nend\n", "{h2:#?}");
    shutdown.trigger();
    served(server).await;
}

/// B66: the idle timeout counts from a stream's end, a reset one's too: a stream running
/// past the timeout and then reset by its client is followed by GOAWAY exactly the idle
/// timeout after the reset.
#[tokio::test(start_paused = true)]
async fn an_h2_connection_idle_after_a_reset_stream_gets_goaway_at_its_idle_timeout() {
    let shutdown = shutdown(Duration::from_secs(30));
    let (connector, server) = serve_pipe_with(&shutdown, |serve| {
        serve.idle_timeout(Duration::from_secs(5))
    });
    let mut h2 = H2::handshake(connector.connect(), true).await;
    h2.get(1, "/stream").await;
    h2.until(|h2| h2.body(1).contains("tick\n")).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    h2.send(RST_STREAM, 0, 1, &8u32.to_be_bytes()).await;
    let reset = Instant::now();
    let goaway = tokio::time::timeout(
        Duration::from_secs(60),
        h2.until(|h2| !h2.goaways().is_empty()),
    )
    .await;
    assert!(
        goaway.is_ok(),
        "no GOAWAY within 60 s of the reset: {h2:#?}"
    );
    let goaway_at = reset.elapsed();
    assert!(
        goaway_at >= Duration::from_secs(5) && goaway_at < Duration::from_millis(5_010),
        "GOAWAY {goaway_at:?} after the reset"
    );
    shutdown.trigger();
    served(server).await;
}

/// B66: an HTTP/2 connection that never opens a stream gets GOAWAY at its idle timeout
/// from its accept; a client that does not answer the GOAWAY's PING (gone, or deaf) is
/// dropped a second later rather than held until TCP gives up or the stop deadline.
#[tokio::test(start_paused = true)]
async fn an_idle_h2_connection_whose_client_never_answers_is_dropped_after_its_goaway() {
    let shutdown = shutdown(Duration::from_secs(30));
    let (connector, server) = serve_pipe_with(&shutdown, |serve| {
        serve.idle_timeout(Duration::from_secs(5))
    });
    let opened = Instant::now();
    let mut h2 = H2::handshake(connector.connect(), false).await;
    h2.until(|h2| !h2.goaways().is_empty()).await;
    let goaway_at = opened.elapsed();
    assert_eq!(h2.read_to_eof().await, End::Eof, "{h2:#?}");
    let closed_at = opened.elapsed();
    assert!(
        goaway_at >= Duration::from_secs(5) && goaway_at < Duration::from_millis(5_010),
        "GOAWAY {goaway_at:?} after the connection opened"
    );
    assert!(
        closed_at >= Duration::from_secs(6) && closed_at < Duration::from_millis(6_010),
        "dropped {closed_at:?} after the connection opened"
    );
    shutdown.trigger();
    let report = served(server).await;
    assert!(
        matches!(report.outcome(), Outcome::Drained),
        "nothing left for the shutdown: {report}"
    );
    assert_eq!(report.connections_at_drain(), 0, "{report}");
}
