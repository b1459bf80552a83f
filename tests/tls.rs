//! B13: the same drain over rustls. Certificates are made with rcgen; the clients are
//! tokio-rustls (raw HTTP/1 bytes) and hyper's HTTP/2 client over TLS.

#![cfg(feature = "tls")]

mod common;

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http_body_util::BodyExt;
use httpdown::tls::rustls::pki_types::ServerName;
use httpdown::tls::TlsListener;
use httpdown::{Outcome, Shutdown};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

async fn tls_connect<S>(io: S, alpn: &[u8]) -> tokio_rustls::client::TlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tls_connector(alpn)
        .connect(ServerName::try_from("localhost").unwrap(), io)
        .await
        .expect("TLS handshake")
}

async fn start_tls(
    shutdown: &Shutdown,
) -> (
    std::net::SocketAddr,
    tokio::task::JoinHandle<Result<httpdown::Report, httpdown::Error>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let listener = TlsListener::new(listener, pki().server.clone());
    let server =
        tokio::spawn(httpdown::serve(listener, app(Arc::default()), shutdown).into_future());
    (addr, server)
}

/// An in-flight response completes over TLS across the trigger (the original's
/// `TestTLS`), and the connection then ends with a `close_notify` (a clean EOF for
/// rustls, not an "unexpected EOF" error).
#[tokio::test]
async fn an_in_flight_response_completes_over_tls() {
    let shutdown = shutdown(Duration::from_secs(10));
    let (addr, server) = start_tls(&shutdown).await;
    let mut conn = tls_connect(TcpStream::connect(addr).await.unwrap(), b"http/1.1").await;
    send_get(&mut conn, "/slow?ms=300").await;
    read_until(&mut conn, "start\n").await;
    shutdown.trigger();
    let (rest, end) = read_to_end(&mut conn).await;
    assert!(
        rest.contains("end\n") && rest.ends_with("0\r\n\r\n"),
        "{rest:?}"
    );
    assert_eq!(end, End::Eof, "closed with close_notify");
    let report = served(server).await;
    assert_eq!(report.outcome(), Outcome::Drained, "{report}");
}

/// An idle TLS connection closes at drain start, with a `close_notify`.
#[tokio::test]
async fn an_idle_tls_connection_closes_at_once_with_close_notify() {
    let shutdown = shutdown(Duration::from_secs(30));
    let (addr, server) = start_tls(&shutdown).await;
    let mut conn = tls_connect(TcpStream::connect(addr).await.unwrap(), b"http/1.1").await;
    send_get(&mut conn, "/").await;
    read_until(&mut conn, "hello").await;
    let t0 = Instant::now();
    shutdown.trigger();
    let (rest, end) = read_to_end(&mut conn).await;
    assert_eq!((rest.as_str(), end), ("", End::Eof));
    let report = served(server).await;
    eprintln!(
        "idle TLS connection: serve returned {:?} after the trigger",
        t0.elapsed()
    );
    assert_eq!(report.outcome(), Outcome::Drained);
    assert!(report.total() < Duration::from_secs(5), "{report}");
}

/// HTTP/2 negotiated by ALPN drains like h2c: the stream in flight completes.
#[tokio::test]
async fn http2_over_tls_drains() {
    let shutdown = shutdown(Duration::from_secs(10));
    let (addr, server) = start_tls(&shutdown).await;
    let tls = tls_connect(TcpStream::connect(addr).await.unwrap(), b"h2").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let request = http::Request::get("https://localhost/slow?ms=300")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "start\n");
    shutdown.trigger();
    let rest = tokio::time::timeout(BOUND, body.collect())
        .await
        .unwrap()
        .expect("the stream completes without a reset")
        .to_bytes();
    assert_eq!(rest, "end\n");
    let report = served(server).await;
    assert_eq!(report.outcome(), Outcome::Drained, "{report}");
}

/// A handshake stalled at drain start never holds the shutdown: the connection, which
/// has not sent a request, is closed when its new-connection grace ends (B20), on paused
/// time.
#[tokio::test(start_paused = true)]
async fn a_stalled_handshake_does_not_hold_the_shutdown() {
    let shutdown = shutdown(Duration::from_secs(5));
    let (listener, connector) = channel_listener();
    let listener = TlsListener::new(listener, pki().server.clone());
    let server =
        tokio::spawn(httpdown::serve(listener, app(Arc::default()), &shutdown).into_future());
    let accepted = Instant::now();
    let mut stalled = connector.connect();
    // The start of a TLS record header, then nothing.
    stalled.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(shutdown.connections(), 1);
    shutdown.trigger();
    let report = served(server).await;
    assert_eq!(
        accepted.elapsed(),
        httpdown::DEFAULT_NEW_CONNECTION_GRACE,
        "closed when its grace from the accept ends"
    );
    assert_eq!(report.outcome(), Outcome::Drained, "{report}");
    let (_, end) = read_to_end(&mut stalled).await;
    assert_eq!(end, End::Eof);
}

/// The handshake timeout closes a connection that never completes its handshake, while
/// serving, on paused time to the millisecond.
#[tokio::test(start_paused = true)]
async fn the_handshake_timeout_closes_a_silent_connection() {
    let shutdown = shutdown(Duration::from_secs(5));
    let (listener, connector) = channel_listener();
    let listener = TlsListener::new(listener, pki().server.clone())
        .handshake_timeout(Duration::from_millis(2_500));
    let server =
        tokio::spawn(httpdown::serve(listener, app(Arc::default()), &shutdown).into_future());
    let t0 = Instant::now();
    let mut silent = connector.connect();
    let (_, end) = read_to_end(&mut silent).await;
    assert_eq!(Instant::now() - t0, Duration::from_millis(2_500));
    assert_eq!(end, End::Eof);
    // A good client still gets served.
    let mut conn = tls_connect(connector.connect(), b"http/1.1").await;
    send_get(&mut conn, "/").await;
    read_until(&mut conn, "hello").await;
    drop(conn);
    shutdown.trigger();
    served(server).await;
}

/// At the stop deadline a TLS connection is force-closed like a plain one: the client
/// sees the stream end without `close_notify` (an error), exactly at the deadline.
#[tokio::test(start_paused = true)]
async fn a_tls_stream_is_force_closed_at_the_stop_deadline() {
    let shutdown = shutdown(Duration::from_secs(3));
    let (listener, connector) = channel_listener();
    let listener = TlsListener::new(listener, pki().server.clone());
    let server =
        tokio::spawn(httpdown::serve(listener, app(Arc::default()), &shutdown).into_future());
    let mut conn = tls_connect(connector.connect(), b"http/1.1").await;
    send_get(&mut conn, "/stream").await;
    read_until(&mut conn, "tick\n").await;
    let t0 = Instant::now();
    shutdown.trigger();
    let (rest, end) = read_to_end(&mut conn).await;
    assert_eq!(Instant::now() - t0, Duration::from_secs(3));
    assert!(!rest.contains("0\r\n\r\n"), "{rest:?}");
    assert_eq!(
        end,
        End::Error(std::io::ErrorKind::UnexpectedEof),
        "no close_notify"
    );
    let report = served(server).await;
    assert_eq!(
        report.outcome(),
        Outcome::ForceClosed {
            connections: 1,
            requests: 1
        }
    );
}

/// Bad certificate files are clear errors naming the file.
#[test]
fn bad_pem_files_are_clear_errors() {
    let dir = std::env::temp_dir().join(format!("httpdown-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let missing = dir.join("missing.pem");

    let err = httpdown::tls::config_from_pem_files(&missing, &empty).unwrap_err();
    assert!(err.to_string().contains("missing.pem"), "{err}");
    let err = httpdown::tls::config_from_pem_files(&empty, &empty).unwrap_err();
    assert!(err.to_string().contains("no PEM certificate in"), "{err}");

    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = dir.join("cert.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    let err = httpdown::tls::config_from_pem_files(&cert, &empty).unwrap_err();
    assert!(
        err.to_string().contains("cannot read a private key from"),
        "{err}"
    );
    let key = dir.join("key.pem");
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    httpdown::tls::config_from_pem_files(&cert, &key).expect("good files load");
    let _ = std::fs::remove_dir_all(&dir);
}

/// B55 over TLS: the TLS listener stops new handshakes on its TCP listener at drain start
/// (on Linux, the SYN filter), as plain TCP does.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_tls_listener_stops_new_handshakes_like_tcp() {
    use httpdown::Listener;
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let mut listener = TlsListener::new(tcp, pki().server.clone());
    assert!(
        listener.stop_handshakes().unwrap(),
        "the filter is attached"
    );
    let connect = tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr));
    assert!(connect.await.is_err(), "a new handshake was answered");
}
