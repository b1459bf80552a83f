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
