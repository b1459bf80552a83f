//! Operations: the drain delay and readiness (B31), several listeners under one shutdown
//! (B30) and statistics (B12). Progress lines (B33) are in `tests/progress.rs`.

mod common;

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use common::*;
use httpdown::{Liveness, Outcome, Phase, Shutdown};
use tokio::time::Instant;

fn health_app(shutdown: &Shutdown) -> Router {
    app(Arc::default())
        .route_service("/readyz", shutdown.readiness())
        .route_service("/livez", Liveness)
}

/// Sends `GET path` on a new connection and returns the whole response.
async fn fetch(connector: &Connector, path: &str) -> String {
    let mut conn = connector.connect();
    let head = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    tokio::io::AsyncWriteExt::write_all(&mut conn, head.as_bytes())
        .await
        .unwrap();
    read_to_end(&mut conn).await.0
}

/// B31 and the drain delay: during the delay the listener stays open and requests are
/// served normally (no `Connection: close`), the phase reads draining, readiness answers
/// 503 from the trigger on and liveness stays 200; the stop timer starts only when the
/// delay ends.
#[tokio::test(start_paused = true)]
async fn during_the_drain_delay_readiness_fails_and_requests_are_served_normally() {
    let shutdown = Shutdown::builder()
        .drain_delay(Duration::from_secs(2))
        .stop_timeout(Duration::from_secs(1))
        .build();
    let (listener, connector) = channel_listener();
    let server =
        tokio::spawn(httpdown::serve(listener, health_app(&shutdown), &shutdown).into_future());
    let ready = fetch(&connector, "/readyz").await;
    assert!(
        ready.starts_with("HTTP/1.1 200 OK\r\n") && ready.ends_with("ready\n"),
        "{ready}"
    );
    assert!(!shutdown.is_triggered());

    // In flight across the whole delay: it ends 0.5 s after drain start, within the 1 s
    // stop timeout only if the stop timer starts at drain start, not at the trigger.
    let mut slow = get_request_on(&connector, "/slow?ms=2500").await;
    read_until(&mut slow, "start\n").await;

    let t0 = Instant::now();
    shutdown.trigger();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(shutdown.phase(), Phase::Draining);
    assert!(!shutdown.is_drain_started());
    assert!(shutdown.is_triggered());
    let ready = fetch(&connector, "/readyz").await;
    assert!(
        ready.starts_with("HTTP/1.1 503 Service Unavailable\r\n") && ready.ends_with("draining\n"),
        "{ready}"
    );
    let live = fetch(&connector, "/livez").await;
    assert!(
        live.starts_with("HTTP/1.1 200 OK\r\n") && live.ends_with("alive\n"),
        "{live}"
    );

    // A new keep-alive connection during the delay is served normally.
    let mut conn = get_request_on(&connector, "/").await;
    let text = read_until(&mut conn, "hello").await;
    assert!(
        !text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );

    let (rest, end) = read_to_end(&mut slow).await;
    assert!(
        rest.contains("end\n") && rest.ends_with("0\r\n\r\n"),
        "{rest:?}"
    );
    assert_eq!(end, End::Eof);
    let report = served(server).await;
    assert_eq!(Instant::now() - t0, Duration::from_millis(2_500));
    assert_eq!(report.outcome(), Outcome::Drained, "{report}");
    assert_eq!(report.drain_delay(), Duration::from_secs(2));
    assert_eq!(report.drain(), Duration::from_millis(500));
}

/// B30: one shutdown coordinates two servers (a public and an admin port): both close
/// their listeners at drain start, both drain, and both return the same report.
#[tokio::test]
async fn one_shutdown_coordinates_several_listeners() {
    let shutdown = Shutdown::builder()
        .stop_timeout(Duration::from_secs(10))
        .build();
    let (public, public_server) = start(app(Arc::default()), &shutdown).await;
    let (admin, admin_server) = start(health_app(&shutdown), &shutdown).await;
    let mut on_public = get_request(public, "/slow?ms=1500").await;
    let mut on_admin = get_request(admin, "/slow?ms=2000").await;
    read_until(&mut on_public, "start\n").await;
    read_until(&mut on_admin, "start\n").await;
    assert_eq!(shutdown.connections(), 2);

    shutdown.trigger();
    // Each listener stops taking connections as its accept loop sees drain start, while
    // the responses (1.5 and 2 s) still stream: a connect is refused, or (its SYN dropped
    // by the listener's filter, B55) not answered.
    let taken = |addr| async move {
        let connect = tokio::net::TcpStream::connect(addr);
        matches!(
            tokio::time::timeout(Duration::from_millis(200), connect).await,
            Ok(Ok(_))
        )
    };
    for addr in [public, admin] {
        tokio::time::timeout(BOUND, async {
            while taken(addr).await {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{addr} still accepts after drain start"));
    }
    assert_eq!(
        shutdown.in_flight(),
        2,
        "refused only once the responses ended"
    );
    for conn in [&mut on_public, &mut on_admin] {
        let (rest, end) = read_to_end(conn).await;
        assert!(
            rest.contains("end\n") && rest.ends_with("0\r\n\r\n"),
            "{rest:?}"
        );
        assert_eq!(end, End::Eof);
    }
    let public_report = served(public_server).await;
    let admin_report = served(admin_server).await;
    assert_eq!(public_report, admin_report, "one shutdown, one report");
    assert_eq!(public_report.outcome(), Outcome::Drained);
    assert_eq!(public_report.connections_at_drain(), 2);
    assert_eq!(public_report.requests_at_drain(), 2);
}

/// B12: the snapshot follows each connection through its states and counts what was
/// accepted, closed and force-closed.
#[tokio::test(start_paused = true)]
async fn stats_follow_connections_through_their_states() {
    let shutdown = Shutdown::builder()
        .stop_timeout(Duration::from_secs(5))
        .build();
    let release = Arc::new(tokio::sync::Notify::new());
    let (listener, connector) = channel_listener();
    let server =
        tokio::spawn(httpdown::serve(listener, app(release.clone()), &shutdown).into_future());
    let stats = || shutdown.stats();

    let mut silent = connector.connect();
    let mut busy = get_request_on(&connector, "/wait").await;
    let mut idle = get_request_on(&connector, "/").await;
    read_until(&mut idle, "hello").await;
    let mut streaming = get_request_on(&connector, "/stream").await;
    read_until(&mut streaming, "tick\n").await;
    tokio::task::yield_now().await;

    let s = stats();
    assert_eq!(s.phase, Phase::Running);
    assert_eq!(
        (
            s.connections.new,
            s.connections.active,
            s.connections.idle,
            s.connections.upgraded
        ),
        (1, 2, 1, 0),
        "{s:?}"
    );
    assert_eq!(s.connections.total(), 4);
    assert_eq!((s.accepted, s.closed, s.force_closed), (4, 0, 0));
    assert_eq!((s.in_flight, s.requests), (2, 3));

    release.notify_one();
    read_until(&mut busy, "done").await;
    tokio::task::yield_now().await;
    let s = stats();
    assert_eq!((s.connections.active, s.connections.idle), (1, 2), "{s:?}");

    let t0 = Instant::now();
    shutdown.trigger();
    // Idle and silent connections close at drain start; the endless stream is cut at
    // the stop deadline.
    for conn in [&mut silent, &mut busy, &mut idle] {
        read_to_end(conn).await;
    }
    tokio::task::yield_now().await;
    let s = stats();
    assert_eq!(s.phase, Phase::Draining);
    assert_eq!(s.connections.total(), 1, "{s:?}");
    assert_eq!((s.closed, s.force_closed), (3, 0));

    read_to_end(&mut streaming).await;
    let report = served(server).await;
    assert_eq!(Instant::now() - t0, Duration::from_secs(5));
    assert!(matches!(
        report.outcome(),
        Outcome::ForceClosed {
            connections: 1,
            requests: 1
        }
    ));
    let s = stats();
    assert_eq!(s.phase, Phase::Done);
    assert_eq!(s.connections.total(), 0, "{s:?}");
    assert_eq!((s.accepted, s.closed, s.force_closed), (4, 4, 1));
    assert_eq!(s.in_flight, 0);
}
