//! Fitting what users already have (SPEC section 6): `serve` takes what `axum::serve`
//! takes (B40), and a plain tower service or a make service of one's own.

mod common;

use std::convert::Infallible;
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::routing::get;
use axum::Router;
use common::*;
use httpdown::{IncomingConnection, Outcome};
use tokio::net::{TcpListener, TcpStream};

/// Serves `app` (anything `serve` takes) on 127.0.0.1:0, GETs `/` and returns the body.
async fn get_body_from<M>(app: M) -> (String, SocketAddr)
where
    M: httpdown::MakeService<TcpListener>,
{
    let shutdown = shutdown(Duration::from_secs(5));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(httpdown::serve(listener, app, &shutdown).into_future());
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let local = conn.local_addr().unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut conn,
        b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let (text, _) = read_to_end(&mut conn).await;
    let (_, body) = text.split_once("\r\n\r\n").expect("a response");
    let body = body.to_owned();
    shutdown.trigger();
    let report = served_in_time(server).await;
    assert_eq!(report.outcome(), Outcome::Drained, "{report}");
    (body, local)
}

fn peer_app() -> Router {
    Router::new().route(
        "/",
        get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { format!("[{peer}]") }),
    )
}

/// B40: `into_make_service_with_connect_info::<SocketAddr>()`, exactly as with
/// `axum::serve`: handlers extracting `ConnectInfo<SocketAddr>` get the peer.
#[tokio::test]
async fn connect_info_reaches_handlers() {
    let (body, client) =
        get_body_from(peer_app().into_make_service_with_connect_info::<SocketAddr>()).await;
    assert_eq!(body, format!("[{client}]"));
}

/// B40: a `Router` and `router.into_make_service()` are served as they are.
#[tokio::test]
async fn a_router_and_its_make_service_are_served() {
    let app = || Router::new().route("/", get(|| async { "[hello]" }));
    assert_eq!(get_body_from(app()).await.0, "[hello]");
    assert_eq!(get_body_from(app().into_make_service()).await.0, "[hello]");
    // A router without ConnectInfo is an error for that extractor, not a panic.
    let (body, _) = get_body_from(peer_app()).await;
    assert!(body.contains("Missing request extension"), "{body}");
}

/// Without axum: a tower service through `tower::make::Shared`, and a make service of
/// one's own that reads the peer's address from the `IncomingConnection`.
#[tokio::test]
async fn plain_tower_services_and_make_services_are_served() {
    let hello = tower::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
        Ok::<_, Infallible>(http::Response::new(String::from("[plain]")))
    });
    assert_eq!(
        get_body_from(tower::make::Shared::new(hello)).await.0,
        "[plain]"
    );

    let make = tower::service_fn(|conn: IncomingConnection<'_, TcpListener>| {
        let peer = *conn.remote_addr();
        let service = tower::service_fn(
            move |_req: http::Request<hyper::body::Incoming>| async move {
                Ok::<_, Infallible>(http::Response::new(format!("[{peer}]")))
            },
        );
        async move { Ok::<_, Infallible>(service) }
    });
    let (body, client) = get_body_from(make).await;
    assert_eq!(body, format!("[{client}]"));
}

/// B40 on a Unix socket: `ConnectInfo<tokio::net::unix::SocketAddr>`.
#[cfg(unix)]
#[tokio::test]
async fn connect_info_on_a_unix_socket() {
    use tokio::net::unix::SocketAddr as UnixAddr;
    use tokio::net::{UnixListener, UnixStream};

    let dir = std::env::temp_dir().join(format!("httpdown-uds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("connect-info.sock");
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    let app = Router::new().route(
        "/",
        get(|ConnectInfo(peer): ConnectInfo<UnixAddr>| async move {
            format!("[unnamed {}]", peer.is_unnamed())
        }),
    );
    let shutdown = shutdown(Duration::from_secs(5));
    let server = tokio::spawn(
        httpdown::serve(
            listener,
            app.into_make_service_with_connect_info::<UnixAddr>(),
            &shutdown,
        )
        .into_future(),
    );
    let mut conn = UnixStream::connect(&path).await.unwrap();
    send_get(&mut conn, "/").await;
    read_until(&mut conn, "[unnamed true]").await;
    drop(conn);
    shutdown.trigger();
    served_in_time(server).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// B42: hyper's HTTP/1 settings reach hyper: a request with more header fields than
/// `max_headers` gets 431; keep-alive off closes after the response.
#[tokio::test]
async fn http1_settings_reach_hyper() {
    use httpdown::Http1Settings;
    use tokio::io::AsyncWriteExt;

    let shutdown = shutdown(Duration::from_secs(5));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route("/", get(|| async { "hello" }));
    let server = tokio::spawn(
        httpdown::serve(listener, app, &shutdown)
            .http1(Http1Settings::new().max_headers(4).keep_alive(false))
            .into_future(),
    );
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n")
        .await
        .unwrap();
    let (text, _) = read_to_end(&mut conn).await;
    assert!(text.starts_with("HTTP/1.1 431 "), "{text}");

    let mut conn = get_request(addr, "/").await;
    let (text, end) = read_to_end(&mut conn).await;
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    assert_eq!(end, End::Eof, "keep-alive off: closed after the response");
    shutdown.trigger();
    served_in_time(server).await;
}

/// The server's first SETTINGS frame on a new HTTP/2 connection: (id, value) pairs.
async fn server_settings(addr: SocketAddr) -> Vec<(u16, u32)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let mut head = [0u8; 9];
    conn.read_exact(&mut head).await.unwrap();
    assert_eq!(head[3], 0x4, "a SETTINGS frame first");
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let mut payload = vec![0u8; len];
    conn.read_exact(&mut payload).await.unwrap();
    payload
        .chunks(6)
        .map(|e| {
            (
                u16::from_be_bytes([e[0], e[1]]),
                u32::from_be_bytes([e[2], e[3], e[4], e[5]]),
            )
        })
        .collect()
}

/// B42: hyper's HTTP/2 settings reach the wire; extended CONNECT (B43) is on by default
/// and can be turned off.
#[tokio::test]
async fn http2_settings_reach_the_wire() {
    use httpdown::Http2Settings;

    const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    const MAX_FRAME_SIZE: u16 = 0x5;
    const ENABLE_CONNECT_PROTOCOL: u16 = 0x8;
    let shutdown = shutdown(Duration::from_secs(5));
    let app = || Router::new().route("/", get(|| async { "hello" }));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tuned = listener.local_addr().unwrap();
    let server = tokio::spawn(
        httpdown::serve(listener, app(), &shutdown)
            .http2(
                Http2Settings::new()
                    .max_concurrent_streams(7)
                    .max_frame_size(32_768),
            )
            .into_future(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plain = listener.local_addr().unwrap();
    let server2 = tokio::spawn(
        httpdown::serve(listener, app(), &shutdown)
            .http2(Http2Settings::new().enable_connect_protocol(false))
            .into_future(),
    );
    let settings = server_settings(tuned).await;
    assert!(
        settings.contains(&(MAX_CONCURRENT_STREAMS, 7)),
        "{settings:?}"
    );
    assert!(settings.contains(&(MAX_FRAME_SIZE, 32_768)), "{settings:?}");
    assert!(
        settings.contains(&(ENABLE_CONNECT_PROTOCOL, 1)),
        "{settings:?}"
    );
    let settings = server_settings(plain).await;
    assert!(
        !settings.contains(&(ENABLE_CONNECT_PROTOCOL, 1)),
        "{settings:?}"
    );
    shutdown.trigger();
    served_in_time(server).await;
    served_in_time(server2).await;
}

/// Settings hyper would panic on are configuration errors, reported when the server is
/// awaited, with a message that says what is allowed.
#[tokio::test]
async fn out_of_range_settings_are_configuration_errors() {
    use httpdown::{ConfigError, Error, Http1Settings, Http2Settings};

    let shutdown = shutdown(Duration::from_secs(5));
    let app = || Router::new().route("/", get(|| async { "hello" }));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = httpdown::serve(listener, app(), &shutdown)
        .http2(Http2Settings::new().max_frame_size(1))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Config(ConfigError::OutOfRange { .. })),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "invalid configuration: http2 max_frame_size must be in 16384..=16777215"
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = httpdown::serve(listener, app(), &shutdown)
        .http1(Http1Settings::new().max_buf_size(10))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid configuration: http1 max_buf_size must be at least 8192"
    );
}

/// A Unix socket served and shut down leaves its file behind; the next start binds it
/// again (the file is stale: nobody listens), while a live server's path is refused.
#[cfg(unix)]
#[tokio::test]
async fn a_unix_socket_can_be_served_again_after_a_shutdown() {
    use tokio::net::UnixStream;

    let dir = std::env::temp_dir().join(format!("httpdown-restart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("app.sock");
    for round in 0..2 {
        let listener = httpdown::bind_unix(&path).expect("bound, stale file or not");
        assert!(
            httpdown::bind_unix(&path).is_err(),
            "round {round}: live, not removed"
        );
        let shutdown = shutdown(Duration::from_secs(5));
        let app = Router::new().route("/", get(|| async { "over uds" }));
        let server = tokio::spawn(httpdown::serve(listener, app, &shutdown).into_future());
        let mut conn = UnixStream::connect(&path).await.unwrap();
        send_get(&mut conn, "/").await;
        read_until(&mut conn, "over uds").await;
        drop(conn);
        shutdown.trigger();
        served_in_time(server).await;
        assert!(path.exists(), "round {round}: the file stays behind");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A service with backpressure (tower's concurrency limit, which must be polled ready
/// before each call) is driven as tower requires: `serve` asks it to be ready first.
#[tokio::test]
async fn a_service_with_backpressure_is_polled_ready_before_each_call() {
    let limited = tower::ServiceBuilder::new()
        .concurrency_limit(1)
        .service(Router::new().route("/", axum::routing::get(|| async { "hello" })));
    let (body, _) = get_body_from(tower::make::Shared::new(limited)).await;
    assert_eq!(body, "hello");
}
