//! B44: hand-written accept loops hand their hyper connections to the `Shutdown`
//! (`watch`, with or without the IO wrapper), background work is registered with it, and
//! axum's `Listener` types work with `serve`.

mod common;

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use httpdown::{Outcome, Shutdown};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::DuplexStream;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Serves one in-memory connection the way a hand-written accept loop does: hyper-util's
/// auto builder, the app behind the layer, and the connection handed to `watch` (through
/// the IO wrapper if `wrap_io`).
fn serve_by_hand(shutdown: &Shutdown, io: DuplexStream, release: Arc<Notify>, wrap_io: bool) {
    let app = app(release).layer(shutdown.layer());
    let service = TowerToHyperService::new(app);
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        let builder = auto::Builder::new(TokioExecutor::new());
        if wrap_io {
            let mut watcher = shutdown.watcher();
            let io = TokioIo::new(watcher.io(io));
            let conn = builder.serve_connection_with_upgrades(io, service);
            let _ = watcher.watch(conn).await;
        } else {
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
            let _ = shutdown.watch(conn).await;
        }
    });
}

/// A watched connection is counted, finishes its request across drain start, and an idle
/// one closes at once; the report counts them.
#[tokio::test(start_paused = true)]
async fn a_watched_connection_drains_like_one_of_serve() {
    for wrap_io in [false, true] {
        let shutdown = shutdown(Duration::from_secs(30));
        let release = Arc::new(Notify::new());
        let (mut busy, server_side) = tokio::io::duplex(64 * 1024);
        serve_by_hand(&shutdown, server_side, Arc::clone(&release), wrap_io);
        let (mut idle, server_side) = tokio::io::duplex(64 * 1024);
        serve_by_hand(&shutdown, server_side, Arc::clone(&release), wrap_io);
        send_get(&mut idle, "/").await;
        read_until(&mut idle, "hello").await;
        send_get(&mut busy, "/wait").await;
        tokio::task::yield_now().await;
        assert_eq!(shutdown.connections(), 2, "wrap_io {wrap_io}");

        let t0 = Instant::now();
        shutdown.trigger();
        let (text, end) = read_to_end(&mut idle).await;
        assert_eq!((text.as_str(), end), ("", End::Eof), "the idle one closes");
        assert_eq!(Instant::now(), t0);
        tokio::time::sleep(Duration::from_secs(1)).await;
        release.notify_one();
        let (text, end) = read_to_end(&mut busy).await;
        assert!(text.ends_with("done"), "{text:?}");
        assert!(
            text.to_ascii_lowercase().contains("connection: close"),
            "{text:?}"
        );
        assert_eq!(end, End::Eof);
        let report = no_panics(shutdown.wait().await);
        assert_eq!(
            report.outcome(),
            Outcome::Drained,
            "wrap_io {wrap_io}: {report}"
        );
        assert_eq!(report.connections_at_drain(), 2);
        assert_eq!(report.requests_at_drain(), 1);
        assert_eq!(report.total(), Duration::from_secs(1));
        let stats = shutdown.stats();
        assert_eq!((stats.accepted, stats.closed), (2, 2), "{stats:?}");
    }
}

/// At the stop deadline a watched connection is dropped, to the millisecond, and counted
/// as force-closed.
#[tokio::test(start_paused = true)]
async fn a_watched_connection_is_force_closed_at_the_stop_deadline() {
    let shutdown = shutdown(Duration::from_secs(3));
    let (mut client, server_side) = tokio::io::duplex(64 * 1024);
    serve_by_hand(&shutdown, server_side, Arc::default(), true);
    send_get(&mut client, "/stream").await;
    read_until(&mut client, "tick\n").await;
    let t0 = Instant::now();
    shutdown.trigger();
    let (rest, _) = read_to_end(&mut client).await;
    assert_eq!(Instant::now() - t0, Duration::from_secs(3));
    assert!(!rest.ends_with("0\r\n\r\n"), "no clean end: {rest:?}");
    let report = no_panics(shutdown.wait().await);
    assert_eq!(
        report.outcome(),
        Outcome::ForceClosed {
            connections: 1,
            requests: 1
        }
    );
    let stats = shutdown.stats();
    assert_eq!((stats.closed, stats.force_closed), (1, 1), "{stats:?}");
}

/// With the IO wrapper, a WebSocket upgraded on a watched connection stays counted after
/// hyper lets go of it, and its socket fails at the stop deadline.
#[tokio::test(start_paused = true)]
async fn an_upgrade_on_a_watched_io_stays_counted_and_is_force_closed() {
    use axum::extract::ws::WebSocketUpgrade;
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let shutdown = shutdown(Duration::from_secs(5));
    let app = axum::Router::new()
        .route(
            "/ws",
            axum::routing::get(|ws: WebSocketUpgrade| async move {
                ws.on_upgrade(|mut socket| async move {
                    while let Some(Ok(message)) = socket.recv().await {
                        if socket.send(message).await.is_err() {
                            break;
                        }
                    }
                })
            }),
        )
        .layer(shutdown.layer());
    let (client, server_side) = tokio::io::duplex(64 * 1024);
    let mut watcher = shutdown.watcher();
    let io = watcher.io(server_side);
    let debug = format!("{io:?}");
    assert!(
        debug.starts_with("WatchedIo {") && debug.contains("open: true"),
        "{debug}"
    );
    let io = TokioIo::new(io);
    tokio::spawn(async move {
        let builder = auto::Builder::new(TokioExecutor::new());
        let conn = builder.serve_connection_with_upgrades(io, TowerToHyperService::new(app));
        let _ = watcher.watch(conn).await;
    });
    let (mut ws, _) = tokio_tungstenite::client_async("ws://test/ws", client)
        .await
        .unwrap();
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hi"));
    assert_eq!(shutdown.connections(), 1, "counted after the upgrade");
    let t0 = Instant::now();
    shutdown.trigger();
    let end = ws.next().await;
    assert_eq!(Instant::now() - t0, Duration::from_secs(5), "{end:?}");
    let report = no_panics(shutdown.wait().await);
    assert!(
        matches!(
            report.outcome(),
            Outcome::ForceClosed { connections: 1, .. }
        ),
        "{report}"
    );
}

/// Background work: told at drain start (here it ends itself), waited for, counted; work
/// that ignores the drain is dropped at the stop deadline.
#[tokio::test(start_paused = true)]
async fn background_work_is_drained_and_force_closed_like_requests() {
    let shutdown = shutdown(Duration::from_secs(2));
    let polite = shutdown
        .spawn(|drain| async move {
            drain.started().await;
            tokio::time::sleep(Duration::from_millis(500)).await; // a last flush
            "flushed"
        })
        .unwrap();
    let stubborn = shutdown
        .spawn(|_drain| async move {
            std::future::pending::<()>().await;
        })
        .unwrap();
    tokio::task::yield_now().await;
    let t0 = Instant::now();
    shutdown.trigger();
    assert_eq!(polite.await.unwrap(), Some("flushed"));
    assert_eq!(Instant::now() - t0, Duration::from_millis(500));
    assert_eq!(
        stubborn.await.unwrap(),
        None,
        "dropped at the stop deadline"
    );
    assert_eq!(Instant::now() - t0, Duration::from_secs(2));
    let report = no_panics(shutdown.wait().await);
    assert_eq!(report.background_at_drain(), 2, "{report}");
    assert_eq!(report.background_force_closed(), 1, "{report}");
    assert_eq!(
        report.outcome(),
        Outcome::ForceClosed {
            connections: 0,
            requests: 0
        }
    );
    assert!(
        report
            .to_string()
            .contains("2 background tasks (1 force-closed)"),
        "{report}"
    );

    // Outside a runtime: a clear error.
    let err = std::thread::spawn(|| Shutdown::builder().build().spawn(|_| async {}).err())
        .join()
        .unwrap();
    assert!(
        matches!(
            err,
            Some(httpdown::Error::Config(httpdown::ConfigError::NoRuntime))
        ),
        "{err:?}"
    );
}

/// axum's listeners (and `tap_io`) work with `serve`, `ConnectInfo` included.
#[tokio::test]
async fn axum_listeners_work_with_serve() {
    use axum::extract::ConnectInfo;
    use axum::serve::ListenerExt;
    use httpdown::axum::AxumListener;
    use std::net::SocketAddr;

    let shutdown = shutdown(Duration::from_secs(5));
    let tapped = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = Arc::clone(&tapped);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .tap_io(move |tcp| {
            tcp.set_nodelay(true).unwrap();
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
    let addr = axum::serve::Listener::local_addr(&listener).unwrap();
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move {
            format!("peer {peer}")
        }),
    );
    let server = tokio::spawn(
        httpdown::serve(
            AxumListener(listener),
            app.into_make_service_with_connect_info::<SocketAddr>(),
            &shutdown,
        )
        .into_future(),
    );
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let local = conn.local_addr().unwrap();
    send_get(&mut conn, "/").await;
    read_until(&mut conn, &format!("peer {local}")).await;
    assert_eq!(tapped.load(std::sync::atomic::Ordering::SeqCst), 1);
    drop(conn);
    shutdown.trigger();
    let report = served_in_time(server).await;
    assert_eq!(report.outcome(), Outcome::Drained);
}
