//! Upgraded connections (B25) and the axum integration: WebSockets are tracked by the
//! drain, told to go away with a Close frame (1001) by `GracefulWebSocket`, and
//! force-closed at the stop deadline when they ignore the drain.

mod common;

use std::future::IntoFuture;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use common::*;
use futures_util::{SinkExt, StreamExt};
use httpdown::axum::GracefulWebSocket;
use httpdown::{Drain, Outcome};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Echo with the crate's helper: closes with 1001 at drain start.
async fn graceful_echo(ws: WebSocketUpgrade, drain: Drain) -> Response {
    ws.on_upgrade(move |socket| async move {
        let mut socket = GracefulWebSocket::new(socket, drain);
        while let Some(Ok(message)) = socket.recv().await {
            if let Message::Text(_) | Message::Binary(_) = message {
                if socket.send(message).await.is_err() {
                    break;
                }
            }
        }
    })
}

/// Echo that ignores the drain.
async fn plain_echo(ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(|mut socket| async move {
        while let Some(Ok(message)) = socket.recv().await {
            if let Message::Text(_) | Message::Binary(_) = message {
                if socket.send(message).await.is_err() {
                    break;
                }
            }
        }
    })
}

fn ws_app() -> Router {
    Router::new()
        .route("/graceful", get(graceful_echo))
        .route("/plain", get(plain_echo))
        .route(
            "/phase",
            get(|drain: Drain| async move { drain.phase().to_string() }),
        )
}

/// B25 with the helper, over a real socket: the client gets a Close frame with 1001, answers
/// it, and the drain ends as soon as the socket closes, long before the stop deadline.
#[tokio::test]
async fn a_websocket_is_told_to_go_away_with_1001_and_the_drain_waits_for_it() {
    let shutdown = shutdown(Duration::from_secs(30));
    let (addr, server) = start(ws_app(), &shutdown).await;
    let (mut client, response) = tokio_tungstenite::connect_async(format!("ws://{addr}/graceful"))
        .await
        .expect("websocket handshake");
    assert_eq!(response.status(), 101);
    client.send(WsMessage::text("hello")).await.unwrap();
    let echo = tokio::time::timeout(BOUND, client.next()).await.unwrap();
    assert_eq!(echo.unwrap().unwrap(), WsMessage::text("hello"));
    // The upgraded connection is still counted, though hyper is done with it.
    assert_eq!(shutdown.connections(), 1);
    assert_eq!(shutdown.in_flight(), 0);
    let stats = shutdown.stats();
    assert_eq!(stats.connections.upgraded, 1, "{stats:?}");
    assert_eq!(stats.connections.total(), 1, "{stats:?}");

    let t0 = Instant::now();
    shutdown.trigger();
    let close = tokio::time::timeout(BOUND, client.next()).await.unwrap();
    match close {
        Some(Ok(WsMessage::Close(Some(frame)))) => {
            assert_eq!(frame.code, CloseCode::Away);
            assert_eq!(frame.reason.as_str(), httpdown::axum::GOING_AWAY_REASON);
        }
        other => panic!("expected a Close frame with 1001, got {other:?}"),
    }
    // Reading on sends our Close answer; then the server closes the connection.
    let end = tokio::time::timeout(BOUND, client.next()).await.unwrap();
    assert!(end.is_none() || matches!(end, Some(Err(_))), "{end:?}");
    let report = served(server).await;
    eprintln!("websocket: drained {:?} after the trigger", t0.elapsed());
    let stats = shutdown.stats();
    assert_eq!(
        (stats.connections.total(), stats.closed),
        (0, 1),
        "{stats:?}"
    );
    assert_eq!(report.outcome(), Outcome::Drained, "{report}");
    assert_eq!(report.connections_at_drain(), 1);
    assert!(report.total() < Duration::from_secs(10), "{report}");
}

/// B25 without the helper: a WebSocket that ignores the drain keeps the shutdown waiting
/// (it is counted) and is force-closed exactly at the stop deadline; the client sees the
/// connection end without a Close handshake.
#[tokio::test(start_paused = true)]
async fn an_upgraded_connection_is_counted_and_force_closed_at_the_stop_deadline() {
    let shutdown = shutdown(Duration::from_secs(5));
    let (listener, connector) = channel_listener();
    let server = tokio::spawn(httpdown::serve(listener, ws_app(), &shutdown).into_future());
    let (mut client, _) = tokio_tungstenite::client_async("ws://test/plain", connector.connect())
        .await
        .expect("websocket handshake");
    client.send(WsMessage::text("ping")).await.unwrap();
    assert_eq!(
        client.next().await.unwrap().unwrap(),
        WsMessage::text("ping")
    );

    let t0 = Instant::now();
    shutdown.trigger();
    // The echo still works during the drain.
    tokio::time::sleep(Duration::from_secs(4)).await;
    client.send(WsMessage::text("still here")).await.unwrap();
    assert_eq!(
        client.next().await.unwrap().unwrap(),
        WsMessage::text("still here")
    );
    assert_eq!(shutdown.connections(), 1);

    let end = client.next().await;
    assert_eq!(
        Instant::now() - t0,
        Duration::from_secs(5),
        "cut at the stop deadline"
    );
    assert!(
        !matches!(end, Some(Ok(WsMessage::Close(_)))),
        "a forced close is not a Close handshake: {end:?}"
    );
    let report = served(server).await;
    assert_eq!(
        report.outcome(),
        Outcome::ForceClosed {
            connections: 1,
            requests: 0
        }
    );
    assert_eq!(report.total(), Duration::from_secs(5));
}

/// B25 with the helper and a client that never answers the Close frame: the client gets
/// the Close frame with 1001 at drain start, and the goodbye is bounded by the stop
/// deadline. The client speaks raw WebSocket bytes, so nothing answers the Close for it.
#[tokio::test(start_paused = true)]
async fn a_client_that_never_answers_the_close_is_cut_at_the_stop_deadline() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let shutdown = shutdown(Duration::from_secs(5));
    let (listener, connector) = channel_listener();
    let server = tokio::spawn(httpdown::serve(listener, ws_app(), &shutdown).into_future());
    let mut client = connector.connect();
    client
        .write_all(
            b"GET /graceful HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\n\
              Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
              Sec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
    let head = read_until(&mut client, "\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head:?}");

    let t0 = Instant::now();
    shutdown.trigger();
    // The server's Close frame: FIN + opcode 8, unmasked, payload = code 1001 + reason.
    let mut frame = [0u8; 2];
    client.read_exact(&mut frame).await.unwrap();
    assert_eq!(frame[0], 0x88, "a Close frame: {frame:?}");
    let mut payload = vec![0u8; usize::from(frame[1])];
    client.read_exact(&mut payload).await.unwrap();
    assert_eq!(Instant::now(), t0, "the Close frame is sent at drain start");
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1001);
    assert_eq!(&payload[2..], httpdown::axum::GOING_AWAY_REASON.as_bytes());

    // Never answered: the connection is cut at the stop deadline, not before.
    let mut rest = Vec::new();
    let end = client.read_to_end(&mut rest).await;
    assert_eq!(
        Instant::now() - t0,
        Duration::from_secs(5),
        "{end:?} {rest:?}"
    );
    assert!(rest.is_empty(), "nothing after the Close frame: {rest:?}");
    let report = served(server).await;
    assert_eq!(report.total(), Duration::from_secs(5));
    assert_eq!(
        report.outcome(),
        Outcome::ForceClosed {
            connections: 1,
            requests: 0
        },
        "{report}"
    );
}

/// The `Drain` extractor reads the phase; without the layer it is a clear 500.
#[tokio::test]
async fn the_drain_extractor_needs_the_layer_or_serve() {
    use tower::ServiceExt;

    let shutdown = shutdown(Duration::from_secs(5));
    let (addr, server) = start(ws_app(), &shutdown).await;
    let mut conn = get_request(addr, "/phase").await;
    read_until(&mut conn, "running").await;
    drop(conn);
    shutdown.trigger();
    served(server).await;

    let response = ws_app()
        .oneshot(
            http::Request::get("/phase")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert!(
        String::from_utf8_lossy(&body).contains("add httpdown::GracefulLayer"),
        "{body:?}"
    );
}

/// Opens a WebSocket over HTTP/2 (RFC 8441 extended CONNECT) on `io`, as a browser does.
async fn h2_websocket<I>(
    io: I,
    path: &str,
) -> tokio_tungstenite::WebSocketStream<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(io),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let mut request = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("http://test{path}"))
        .header("sec-websocket-version", "13")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    request
        .extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200, "extended CONNECT accepted");
    let upgraded = hyper::upgrade::on(response).await.unwrap();
    tokio_tungstenite::WebSocketStream::from_raw_socket(
        hyper_util::rt::TokioIo::new(upgraded),
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await
}

fn h2_ws_app() -> Router {
    Router::new()
        .route("/graceful", axum::routing::any(graceful_echo))
        .route("/plain", axum::routing::any(plain_echo))
}

/// B43: a WebSocket over HTTP/2 is tracked (its connection counted as upgraded), told to
/// go away with 1001 at drain start, and the drain ends when it closes.
#[tokio::test(start_paused = true)]
async fn an_h2_websocket_is_told_to_go_away_with_1001() {
    let shutdown = shutdown(Duration::from_secs(30));
    let (listener, connector) = channel_listener();
    let server = tokio::spawn(httpdown::serve(listener, h2_ws_app(), &shutdown).into_future());
    let mut client = h2_websocket(connector.connect(), "/graceful").await;
    client.send(WsMessage::text("over h2")).await.unwrap();
    assert_eq!(
        client.next().await.unwrap().unwrap(),
        WsMessage::text("over h2")
    );
    let stats = shutdown.stats();
    assert_eq!(stats.connections.upgraded, 1, "{stats:?}");
    assert_eq!(stats.in_flight, 0, "{stats:?}");

    let t0 = Instant::now();
    shutdown.trigger();
    match client.next().await {
        Some(Ok(WsMessage::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("expected a Close frame with 1001, got {other:?}"),
    }
    // Reading on answers the Close; the stream ends and the drain with it.
    while let Some(Ok(_)) = client.next().await {}
    let report = served(server).await;
    assert_eq!(report.outcome(), Outcome::Drained, "{report}");
    assert_eq!(Instant::now(), t0, "no timer was waited for");
}

/// B43: a WebSocket over HTTP/2 that ignores the drain holds it and is force-closed at
/// the stop deadline, to the millisecond.
#[tokio::test(start_paused = true)]
async fn an_h2_websocket_that_ignores_the_drain_is_force_closed_at_the_stop_deadline() {
    let shutdown = shutdown(Duration::from_secs(5));
    let (listener, connector) = channel_listener();
    let server = tokio::spawn(httpdown::serve(listener, h2_ws_app(), &shutdown).into_future());
    let mut client = h2_websocket(connector.connect(), "/plain").await;
    client.send(WsMessage::text("ping")).await.unwrap();
    assert_eq!(
        client.next().await.unwrap().unwrap(),
        WsMessage::text("ping")
    );
    let t0 = Instant::now();
    shutdown.trigger();
    tokio::time::sleep(Duration::from_secs(4)).await;
    client.send(WsMessage::text("still here")).await.unwrap();
    assert_eq!(
        client.next().await.unwrap().unwrap(),
        WsMessage::text("still here")
    );
    let end = client.next().await;
    assert_eq!(Instant::now() - t0, Duration::from_secs(5), "{end:?}");
    assert!(!matches!(end, Some(Ok(WsMessage::Close(_)))), "{end:?}");
    let report = served(server).await;
    assert_eq!(
        report.outcome(),
        Outcome::ForceClosed {
            connections: 1,
            requests: 0
        },
        "{report}"
    );
}

/// The header-read timeout times HTTP/1 requests only: an upgraded connection idle for
/// longer than it keeps working.
#[tokio::test(start_paused = true)]
async fn an_idle_websocket_outlives_the_header_read_timeout() {
    let shutdown = shutdown(Duration::from_secs(5));
    let (listener, connector) = channel_listener();
    let server = tokio::spawn(
        httpdown::serve(listener, ws_app(), &shutdown)
            .header_read_timeout(Duration::from_secs(1))
            .into_future(),
    );
    let (mut client, _) = tokio_tungstenite::client_async("ws://test/plain", connector.connect())
        .await
        .expect("websocket handshake");
    tokio::time::sleep(Duration::from_secs(3)).await;
    client.send(WsMessage::text("ping")).await.unwrap();
    assert_eq!(
        client.next().await.unwrap().unwrap(),
        WsMessage::text("ping"),
        "still open after 3 s idle, with a 1 s header-read timeout"
    );
    shutdown.escalate();
    drop(client);
    served(server).await;
}
