//! The PROXY protocol (v1 and v2) on real sockets: raw TCP clients write the exact
//! header bytes, an axum handler answers with the `ConnectInfo<SocketAddr>` it sees.
//! Ends with HAProxy itself in front (`send-proxy`, `send-proxy-v2`) when installed.

#![cfg(feature = "proxy-protocol")]

mod common;

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::routing::get;
use axum::Router;
use common::*;
use httpdown::proxy_protocol::ProxyProtocolListener;
use httpdown::{Error, Listener, Outcome, Report, Shutdown};
use ppp::v2;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// What a client behind the proxy asks: the address the handler sees, then close.
const GET_PEER: &[u8] = b"GET /peer HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n";

/// `/peer` answers with the peer address the handler sees; the rest is the common test
/// app (`/slow`, ...).
fn peer_app() -> Router {
    Router::new()
        .route(
            "/peer",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
        )
        .merge(app(Arc::default()))
}

/// Serves [`peer_app`] on `listener` (made from a TCP listener on 127.0.0.1:0).
async fn start_with(
    shutdown: &Shutdown,
    listener: impl FnOnce(TcpListener) -> ProxyProtocolListener<TcpListener>,
) -> (SocketAddr, JoinHandle<Result<Report, Error>>) {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let app = peer_app().into_make_service_with_connect_info::<SocketAddr>();
    let server = tokio::spawn(httpdown::serve(listener(tcp), app, shutdown).into_future());
    (addr, server)
}

/// [`start_with`] the defaults: a header required, 5 s to send it.
async fn start(shutdown: &Shutdown) -> (SocketAddr, JoinHandle<Result<Report, Error>>) {
    start_with(shutdown, ProxyProtocolListener::new).await
}

/// Connects, writes `header` and the `/peer` request in one write, and returns the
/// response's body and the client's own address.
async fn ask_peer(addr: SocketAddr, header: &[u8]) -> (String, SocketAddr) {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let local = conn.local_addr().unwrap();
    conn.write_all(&[header, GET_PEER].concat()).await.unwrap();
    let (response, _) = read_to_end(&mut conn).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response:?}");
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    (body.to_owned(), local)
}

/// Writes `bytes` and expects the connection to be closed with no response.
async fn closed_unanswered(addr: SocketAddr, bytes: &[u8]) {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(bytes).await.unwrap();
    let (response, end) = read_to_end(&mut conn).await;
    assert_eq!(response, "", "{bytes:?}: answered ({end:?})");
}

fn v2_header(command: v2::Command, addresses: impl Into<v2::Addresses>) -> Vec<u8> {
    v2::Builder::with_addresses(v2::Version::Two | command, v2::Protocol::Stream, addresses)
        .build()
        .unwrap()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Triggers the shutdown and checks that `serve` drained and returned.
async fn finish(shutdown: &Shutdown, server: JoinHandle<Result<Report, Error>>) -> Report {
    shutdown.trigger();
    let report = served_in_time(server).await;
    assert_eq!(report.outcome(), Outcome::Drained, "{report}");
    report
}

/// v1 `TCP4`, `TCP6`: the header's source is the peer address; `UNKNOWN`: the
/// socket's. The request comes in the same write as the header, so it is read with it
/// and must be served from what was read past the header.
#[tokio::test]
async fn v1_tcp4_tcp6_and_unknown() {
    let shutdown = shutdown(Duration::from_secs(5));
    let (server_addr, server) = start(&shutdown).await;

    let (peer, _) = ask_peer(
        server_addr,
        b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 80\r\n",
    )
    .await;
    assert_eq!(peer, "192.0.2.1:56324");
    let (peer, _) = ask_peer(
        server_addr,
        b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 80\r\n",
    )
    .await;
    assert_eq!(peer, "[2001:db8::1]:4000");
    let (peer, client) = ask_peer(server_addr, b"PROXY UNKNOWN\r\n").await;
    assert_eq!(peer, client.to_string(), "UNKNOWN: the socket's peer");

    finish(&shutdown, server).await;
}

/// v2 `PROXY` over TCP4 and TCP6 gives the header's source; `LOCAL` (a proxy's health
/// check) the socket's peer.
#[tokio::test]
async fn v2_proxy_tcp4_tcp6_and_local() {
    let shutdown = shutdown(Duration::from_secs(5));
    let (server_addr, server) = start(&shutdown).await;

    let tcp4 = v2_header(
        v2::Command::Proxy,
        (addr("203.0.113.7:40000"), addr("198.51.100.2:443")),
    );
    assert_eq!(ask_peer(server_addr, &tcp4).await.0, "203.0.113.7:40000");
    let tcp6 = v2_header(
        v2::Command::Proxy,
        (addr("[2001:db8::7]:40001"), addr("[2001:db8::2]:443")),
    );
    assert_eq!(ask_peer(server_addr, &tcp6).await.0, "[2001:db8::7]:40001");
    let local = v2_header(v2::Command::Local, v2::Addresses::Unspecified);
    let (peer, client) = ask_peer(server_addr, &local).await;
    assert_eq!(peer, client.to_string(), "LOCAL: the socket's peer");

    finish(&shutdown, server).await;
}

/// A header sent in pieces, with pauses between them (a v1 line cut in its ports, a v2
/// header cut in its fixed part and in its addresses), is read in full.
#[tokio::test]
async fn a_header_split_across_writes_is_read() {
    let shutdown = shutdown(Duration::from_secs(5));
    let (server_addr, server) = start(&shutdown).await;

    let v1 = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 80\r\n";
    let v2 = v2_header(
        v2::Command::Proxy,
        (addr("203.0.113.7:40000"), addr("198.51.100.2:443")),
    );
    for (header, cuts, expected) in [
        (&v1[..], [3, 40], "192.0.2.1:56324"),
        (&v2[..], [7, 20], "203.0.113.7:40000"),
    ] {
        let mut conn = TcpStream::connect(server_addr).await.unwrap();
        let pieces = [
            &header[..cuts[0]],
            &header[cuts[0]..cuts[1]],
            &header[cuts[1]..],
        ];
        for piece in pieces {
            conn.write_all(piece).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        conn.write_all(GET_PEER).await.unwrap();
        let (response, _) = read_to_end(&mut conn).await;
        assert!(response.ends_with(expected), "{response:?}");
    }

    finish(&shutdown, server).await;
}

/// By default a connection without a header is closed unanswered (its client could
/// otherwise go around the proxy), and `serve` goes on: the next connection is served.
#[tokio::test]
async fn a_connection_without_a_header_is_closed_and_serve_goes_on() {
    let shutdown = shutdown(Duration::from_secs(5));
    let (server_addr, server) = start(&shutdown).await;

    closed_unanswered(server_addr, GET_PEER).await;
    closed_unanswered(server_addr, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    let (peer, _) = ask_peer(server_addr, b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\n").await;
    assert_eq!(peer, "192.0.2.1:1");

    finish(&shutdown, server).await;
}

/// With `optional(true)` a connection without a header is served, seen from the
/// socket's peer, and one with a header still from its header.
#[tokio::test]
async fn optional_serves_connections_without_a_header() {
    let shutdown = shutdown(Duration::from_secs(5));
    let (server_addr, server) = start_with(&shutdown, |tcp| {
        ProxyProtocolListener::new(tcp).optional(true)
    })
    .await;

    let (peer, client) = ask_peer(server_addr, b"").await;
    assert_eq!(peer, client.to_string());
    let (peer, _) = ask_peer(server_addr, b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\n").await;
    assert_eq!(peer, "192.0.2.1:1");
    closed_unanswered(
        server_addr,
        &[b"PROXY TCP4 nonsense\r\n", GET_PEER].concat(),
    )
    .await;

    finish(&shutdown, server).await;
}

/// Malformed headers and a v1 line longer than 107 bytes are closed at once, long before
/// the header timeout; `serve` goes on.
#[tokio::test]
async fn garbage_and_an_over_long_line_are_closed() {
    let shutdown = shutdown(Duration::from_secs(5));
    let (server_addr, server) = start_with(&shutdown, |tcp| {
        ProxyProtocolListener::new(tcp).header_timeout(Duration::from_secs(30))
    })
    .await;

    let mut wrong_version = v2_header(
        v2::Command::Proxy,
        (addr("203.0.113.7:40000"), addr("198.51.100.2:443")),
    );
    wrong_version[12] = 0x31;
    let over_long = [&b"PROXY UNKNOWN "[..], &[b'x'; 120]].concat();
    let t0 = Instant::now();
    for bad in [
        &b"PROXY TCP4 192.0.2.1 198.51.100.2 99999 80\r\n"[..],
        b"PROXY TCP4 192.0.2.1\r\n",
        b"PROXY tcp4 192.0.2.1 198.51.100.2 1 2\r\n",
        &wrong_version,
        &over_long,
        b"\r\n\r\n\0\r\nQUIT\n\xff\xff\xff\xff",
        b"PROXY \x00\x01\x02\xff\xfe\r\n",
    ] {
        closed_unanswered(server_addr, &[bad, GET_PEER].concat()).await;
    }
    // A v1 line that reaches 107 bytes without its CRLF, nothing after it.
    closed_unanswered(server_addr, &over_long).await;
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "closed at once, not at the timeout: {:?}",
        t0.elapsed()
    );
    let (peer, _) = ask_peer(server_addr, b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\n").await;
    assert_eq!(peer, "192.0.2.1:1");

    finish(&shutdown, server).await;
}

/// A header that never completes is closed at the header timeout; meanwhile other
/// connections are served (the accept loop does not wait for it).
#[tokio::test]
async fn a_stalled_header_is_closed_at_the_timeout_while_others_are_served() {
    const TIMEOUT: Duration = Duration::from_millis(1000);
    let shutdown = shutdown(Duration::from_secs(5));
    let (server_addr, server) = start_with(&shutdown, |tcp| {
        ProxyProtocolListener::new(tcp).header_timeout(TIMEOUT)
    })
    .await;

    let t0 = Instant::now();
    let mut stalled = TcpStream::connect(server_addr).await.unwrap();
    stalled.write_all(b"PROXY TCP4 192.0.2.1 ").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    for _ in 0..3 {
        let (peer, _) = ask_peer(server_addr, b"PROXY TCP4 192.0.2.9 192.0.2.2 9 2\r\n").await;
        assert_eq!(peer, "192.0.2.9:9");
    }
    let served_by = t0.elapsed();
    assert!(served_by < TIMEOUT / 2, "served after {served_by:?}");
    let mut byte = [0u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(20), stalled.read(&mut byte))
            .await
            .is_err(),
        "the stalled connection is still open"
    );

    let (response, _) = read_to_end(&mut stalled).await;
    let closed_after = t0.elapsed();
    assert_eq!(response, "");
    assert!(
        closed_after >= TIMEOUT - Duration::from_millis(100)
            && closed_after < TIMEOUT + Duration::from_secs(3),
        "closed after {closed_after:?}"
    );

    finish(&shutdown, server).await;
}

/// At `max_pending_headers`, the listener accepts no more until a header completes or
/// times out: here one stalled header holds the only place, and the next connection is
/// served once it has timed out.
#[tokio::test]
async fn max_pending_headers_bounds_the_headers_read_at_once() {
    const TIMEOUT: Duration = Duration::from_millis(500);
    let shutdown = shutdown(Duration::from_secs(5));
    let (server_addr, server) = start_with(&shutdown, |tcp| {
        ProxyProtocolListener::new(tcp)
            .header_timeout(TIMEOUT)
            .max_pending_headers(0) // taken as one
    })
    .await;

    let t0 = Instant::now();
    let mut stalled = TcpStream::connect(server_addr).await.unwrap();
    stalled.write_all(b"PROXY ").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (peer, _) = ask_peer(server_addr, b"PROXY TCP4 192.0.2.9 192.0.2.2 9 2\r\n").await;
    assert_eq!(peer, "192.0.2.9:9");
    let served_after = t0.elapsed();
    assert!(
        served_after >= TIMEOUT - Duration::from_millis(100),
        "served after {served_after:?}, before the stalled header timed out"
    );
    assert_eq!(read_to_end(&mut stalled).await.0, "");

    finish(&shutdown, server).await;
}

/// A request in flight on a proxied connection completes across the drain, and the
/// report counts it; a connection still sending its header at drain start is closed
/// without holding the shutdown.
#[tokio::test]
async fn a_proxied_request_in_flight_drains() {
    let shutdown = shutdown(Duration::from_secs(10));
    let (server_addr, server) = start_with(&shutdown, |tcp| {
        ProxyProtocolListener::new(tcp).header_timeout(Duration::from_secs(60))
    })
    .await;

    let mut conn = TcpStream::connect(server_addr).await.unwrap();
    conn.write_all(
        b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\nGET /slow?ms=300 HTTP/1.1\r\nHost: test\r\n\r\n",
    )
    .await
    .unwrap();
    read_until(&mut conn, "start\n").await;
    let mut half = TcpStream::connect(server_addr).await.unwrap();
    half.write_all(b"PROXY TCP4 192.0.2.1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;

    let t0 = Instant::now();
    shutdown.trigger();
    let (rest, end) = read_to_end(&mut conn).await;
    assert!(
        rest.contains("end\n") && rest.ends_with("0\r\n\r\n"),
        "{rest:?}"
    );
    assert_eq!(end, End::Eof);
    let (response, _) = read_to_end(&mut half).await;
    assert_eq!(response, "");
    let report = served_in_time(server).await;
    assert_eq!(report.outcome(), Outcome::Drained, "{report}");
    assert_eq!(report.requests_at_drain(), 1, "{report}");
    assert_eq!(report.connections_at_drain(), 1, "{report}");
    assert!(t0.elapsed() < Duration::from_secs(5), "{report}");
}

/// Dropping an `accept` future (as `serve` does at drain start, and between the quiet
/// windows after it) loses no connection whose header is being read.
#[tokio::test]
async fn accept_is_cancel_safe() {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server_addr = tcp.local_addr().unwrap();
    let mut listener = ProxyProtocolListener::new(tcp);
    let mut conn = TcpStream::connect(server_addr).await.unwrap();
    conn.write_all(b"PROXY TCP4 192.0.2.1 ").await.unwrap();
    let waited = tokio::time::timeout(Duration::from_millis(100), listener.accept()).await;
    assert!(waited.is_err(), "no header yet");
    assert_eq!(listener.pending_headers(), 1, "{listener:?}");
    conn.write_all(b"192.0.2.2 1 2\r\nGET").await.unwrap();
    let (mut io, peer) = tokio::time::timeout(BOUND, listener.accept())
        .await
        .expect("accepted in time")
        .unwrap();
    assert_eq!(peer, addr("192.0.2.1:1"));
    assert_eq!(io.remote_addr(), peer);
    assert_eq!(io.peer_addr(), conn.local_addr().unwrap());
    assert_eq!(io.destination_addr(), Some(addr("192.0.2.2:2")));
    assert_eq!(io.version(), Some(1));
    assert!(
        <ProxyProtocolListener<TcpListener> as Listener>::has_pending_input(&io),
        "bytes read past the header are pending input"
    );
    let mut start = [0u8; 3];
    io.read_exact(&mut start).await.unwrap();
    assert_eq!(&start, b"GET");
    assert_eq!(listener.pending_headers(), 0);
}

/// TLS over the PROXY protocol: the header comes first, then the handshake.
#[tokio::test]
async fn tls_over_proxy_protocol() {
    use httpdown::tls::TlsListener;

    let shutdown = shutdown(Duration::from_secs(5));
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server_addr = tcp.local_addr().unwrap();
    let listener = TlsListener::new(ProxyProtocolListener::new(tcp), tls::server_config());
    let app = peer_app().into_make_service_with_connect_info::<SocketAddr>();
    let server = tokio::spawn(httpdown::serve(listener, app, &shutdown).into_future());

    let header = v2_header(
        v2::Command::Proxy,
        (addr("203.0.113.7:40000"), addr("198.51.100.2:443")),
    );
    for header in [&header[..], b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\n"] {
        let mut tcp = TcpStream::connect(server_addr).await.unwrap();
        tcp.write_all(header).await.unwrap();
        let mut conn = tls::connect(tcp).await;
        conn.write_all(GET_PEER).await.unwrap();
        let (response, end) = read_to_end(&mut conn).await;
        assert_eq!(end, End::Eof, "closed with close_notify");
        let expected = if header.starts_with(b"PROXY") {
            "192.0.2.1:1"
        } else {
            "203.0.113.7:40000"
        };
        assert!(response.ends_with(expected), "{response:?}");
    }
    // Without a header, the TLS handshake never starts: the connection is closed.
    let mut tcp = TcpStream::connect(server_addr).await.unwrap();
    tcp.write_all(b"\x16\x03\x01\x00\x05hello").await.unwrap();
    let (response, _) = read_to_end(&mut tcp).await;
    assert_eq!(response, "");

    finish(&shutdown, server).await;
}

mod tls {
    use super::*;
    use httpdown::tls::rustls::pki_types::ServerName;
    use httpdown::tls::rustls::ServerConfig;
    use tokio_rustls::client::TlsStream;

    pub(super) fn server_config() -> Arc<ServerConfig> {
        pki().server.clone()
    }

    pub(super) async fn connect(tcp: TcpStream) -> TlsStream<TcpStream> {
        let connecting =
            tls_connector(b"http/1.1").connect(ServerName::try_from("localhost").unwrap(), tcp);
        tokio::time::timeout(BOUND, connecting)
            .await
            .expect("TLS handshake in time")
            .expect("TLS handshake")
    }
}

/// HAProxy in front, in `mode http`: through a `send-proxy-v2` server and a `send-proxy`
/// one, the handler sees the test client's own address (its port included), not the one
/// HAProxy connects from. Skipped, saying so, where HAProxy is not installed (CI
/// installs it).
#[tokio::test]
async fn haproxy_send_proxy_v1_and_v2() {
    let Some(haproxy) = which("haproxy") else {
        eprintln!(
            "haproxy_send_proxy_v1_and_v2: SKIPPED: no haproxy on PATH (apt-get install haproxy)"
        );
        return;
    };
    let shutdown = shutdown(Duration::from_secs(5));
    let (server_addr, server) = start(&shutdown).await;

    let v2_port = free_port();
    let v1_port = free_port();
    let dir = std::env::temp_dir().join(format!("httpdown-proxy-protocol-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("haproxy.cfg");
    std::fs::write(
        &config,
        format!(
            "global\n    maxconn 64\n\
             defaults\n    mode http\n    timeout connect 5s\n    timeout client 10s\n    timeout server 10s\n\
             frontend v2\n    bind 127.0.0.1:{v2_port}\n    default_backend v2\n\
             frontend v1\n    bind 127.0.0.1:{v1_port}\n    default_backend v1\n\
             backend v2\n    server s1 {server_addr} send-proxy-v2\n\
             backend v1\n    server s1 {server_addr} send-proxy\n"
        ),
    )
    .unwrap();
    let child = std::process::Command::new(haproxy)
        .arg("-db")
        .arg("-f")
        .arg(&config)
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("start haproxy");
    let _haproxy = Haproxy { child, dir };

    for port in [v2_port, v1_port] {
        let frontend = SocketAddr::from(([127, 0, 0, 1], port));
        let mut conn = connect_when_up(frontend).await;
        let client = conn.local_addr().unwrap();
        conn.write_all(GET_PEER).await.unwrap();
        let (response, _) = read_to_end(&mut conn).await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response:?}");
        let seen = response.split("\r\n\r\n").nth(1).unwrap_or_default();
        assert_eq!(
            seen,
            client.to_string(),
            "through HAProxy on port {port}: the client's own address"
        );
    }

    finish(&shutdown, server).await;
}

/// Kills HAProxy and removes its directory, even when the test fails.
struct Haproxy {
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Connects to `addr` once something listens there (within [`BOUND`]).
async fn connect_when_up(addr: SocketAddr) -> TcpStream {
    let deadline = Instant::now() + BOUND;
    loop {
        match TcpStream::connect(addr).await {
            Ok(conn) => return conn,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("nothing listening on {addr}: {e}"),
        }
    }
}

/// A connection taken off the socket whose header was still coming when the accept loop
/// stopped is served once its header completes within the new-connection grace: at
/// drain start, and in a handover, which takes nothing more from a socket passed on to
/// the next generation (B53); one whose header does not come within it is closed.
#[tokio::test]
async fn a_header_completed_just_after_the_accept_loop_stops_is_served() {
    for handover in [false, true] {
        let shutdown = shutdown(Duration::from_secs(10));
        let (server_addr, server) = start(&shutdown).await;
        let mut late = TcpStream::connect(server_addr).await.unwrap();
        late.write_all(b"PROXY TCP4 192.0.2.7 ").await.unwrap();
        let mut silent = TcpStream::connect(server_addr).await.unwrap();
        silent.write_all(b"PROXY TCP4 192.0.2.8 ").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;

        let t0 = Instant::now();
        if handover {
            assert!(shutdown.trigger_handover());
        } else {
            shutdown.trigger();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        late.write_all(&[&b"192.0.2.2 7 2\r\n"[..], GET_PEER].concat())
            .await
            .unwrap();
        let (response, _) = read_to_end(&mut late).await;
        assert!(
            response.starts_with("HTTP/1.1 200") && response.ends_with("192.0.2.7:7"),
            "handover {handover}: {response:?}"
        );
        let (response, _) = read_to_end(&mut silent).await;
        assert_eq!(response, "", "handover {handover}");
        let report = served_in_time(server).await;
        assert_eq!(report.outcome(), Outcome::Drained, "{report}");
        assert!(t0.elapsed() < Duration::from_secs(2), "{report}");
    }
}

/// `trusted_proxies`: a header is read only from a trusted peer. An untrusted one is
/// closed unanswered (header required), or served as it comes with the socket's address
/// (`optional`), its header then being the start of a bad request (400).
#[tokio::test]
async fn only_trusted_proxies_may_send_a_header() {
    let header = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 80\r\n";
    let shutdown = shutdown(Duration::from_secs(5));
    let (server_addr, server) = start_with(&shutdown, |tcp| {
        ProxyProtocolListener::new(tcp).trusted_proxies(|peer| peer.ip().is_loopback())
    })
    .await;
    let (peer, _) = ask_peer(server_addr, header).await;
    assert_eq!(peer, "192.0.2.1:56324", "a trusted proxy's header is read");
    finish(&shutdown, server).await;

    let shutdown = self::shutdown(Duration::from_secs(5));
    let (server_addr, server) = start_with(&shutdown, |tcp| {
        ProxyProtocolListener::new(tcp).trusted_proxies(|_| false)
    })
    .await;
    closed_unanswered(server_addr, &[&header[..], GET_PEER].concat()).await;
    finish(&shutdown, server).await;

    let shutdown = self::shutdown(Duration::from_secs(5));
    let (server_addr, server) = start_with(&shutdown, |tcp| {
        ProxyProtocolListener::new(tcp)
            .optional(true)
            .trusted_proxies(|_| false)
    })
    .await;
    let (body, local) = ask_peer(server_addr, b"").await;
    assert_eq!(body, local.to_string(), "served with the socket's address");
    let mut spoofing = TcpStream::connect(server_addr).await.unwrap();
    spoofing
        .write_all(&[&header[..], GET_PEER].concat())
        .await
        .unwrap();
    let (response, _) = read_to_end(&mut spoofing).await;
    assert!(
        response.starts_with("HTTP/1.1 400"),
        "an untrusted header is not believed: {response:?}"
    );
    finish(&shutdown, server).await;
}
