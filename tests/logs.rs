//! B47: the logs tell the truth. Each line says what this crate did: under `axum::serve`
//! (the layer alone) no line claims listeners or connections the crate does not own; an
//! escalation is logged (and reported) as one; one trigger, one line.

mod common;

use std::future::IntoFuture;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use httpdown::{Outcome, Shutdown};

/// A `tracing` subscriber for this thread that writes into a buffer.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Runs `test` on a current-thread runtime (every task on this thread) with the
    /// crate's `INFO` lines captured.
    fn capture<F: std::future::Future<Output = ()>>(test: F) -> String {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || writer.clone())
            .finish();
        on_this_thread(subscriber, test);
        logs.text()
    }
}

/// Runs `test` on a current-thread runtime with paused time (every task on this thread)
/// under `subscriber`.
fn on_this_thread<F: std::future::Future<Output = ()>>(
    subscriber: impl tracing::Subscriber + Send + Sync + 'static,
    test: F,
) {
    let _guard = tracing::subscriber::set_default(subscriber);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
        .block_on(test);
}

fn count(text: &str, needle: &str) -> usize {
    text.lines().filter(|line| line.contains(needle)).count()
}

/// Under `axum::serve`, with the layer alone, the crate closes nothing: its drain line
/// says it waits for requests, not that it closed listeners or told connections anything.
#[test]
fn the_layer_alone_claims_no_listener_or_connection() {
    let text = Logs::capture(async {
        let shutdown = shutdown(Duration::from_secs(5));
        let app = app(Arc::default()).layer(shutdown.layer());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = tokio::spawn(
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.drain_started())
                .into_future(),
        );
        shutdown.trigger();
        no_panics(shutdown.wait().await);
        server.await.unwrap().unwrap();
    });
    assert_eq!(
        count(&text, "drain started: waiting for requests in flight"),
        1,
        "{text}"
    );
    assert_eq!(count(&text, "listeners closed"), 0, "{text}");
    assert_eq!(count(&text, "connections told to finish"), 0, "{text}");
    assert_eq!(
        count(&text, "shutdown triggered"),
        1,
        "one trigger, one line: {text}"
    );
}

/// `serve` does close its listener and tell its connections.
#[test]
fn serve_says_it_closed_its_listeners() {
    let text = Logs::capture(async {
        let shutdown = shutdown(Duration::from_secs(5));
        let (listener, connector) = channel_listener();
        let server =
            tokio::spawn(httpdown::serve(listener, app(Arc::default()), &shutdown).into_future());
        let mut conn = connector.connect();
        send_get(&mut conn, "/").await;
        read_until(&mut conn, "hello").await;
        shutdown.trigger();
        shutdown.trigger();
        served(server).await;
    });
    assert_eq!(
        count(
            &text,
            "drain started: listeners closed, connections told to finish"
        ),
        1,
        "{text}"
    );
    assert_eq!(count(&text, "shutdown triggered"), 1, "{text}");
}

/// An escalation is logged as an escalation, never as the stop deadline, and the report
/// says so.
#[test]
fn an_escalation_is_logged_as_one() {
    let text = Logs::capture(async {
        let shutdown = Shutdown::builder()
            .stop_timeout(Duration::from_secs(60))
            .kill_timeout(Duration::from_secs(1))
            .build();
        let (listener, connector) = channel_listener();
        let server =
            tokio::spawn(httpdown::serve(listener, app(Arc::default()), &shutdown).into_future());
        let mut conn = connector.connect();
        send_get(&mut conn, "/stream").await;
        read_until(&mut conn, "tick").await;
        shutdown.trigger();
        tokio::time::sleep(Duration::from_millis(10)).await;
        shutdown.escalate();
        let report = served(server).await;
        assert!(
            matches!(report.outcome(), Outcome::ForceClosed { requests: 1, .. }),
            "{report}"
        );
        assert_eq!(report.escalated(), Some(Duration::from_millis(10)));
        assert!(report.to_string().contains("on escalation"), "{report}");
    });
    assert_eq!(
        count(&text, "escalated: force-closing what is left now"),
        1,
        "{text}"
    );
    assert_eq!(count(&text, "stop deadline"), 0, "{text}");
}

/// A hand-written accept loop that hands its connections to the shutdown (`watch`): the
/// drain line says the connections were told to finish, and claims no listener.
#[test]
fn watched_connections_are_told_to_finish_and_no_listener_is_claimed() {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto;
    use hyper_util::service::TowerToHyperService;
    let text = Logs::capture(async {
        let shutdown = shutdown(Duration::from_secs(5));
        let (client, server) = tokio::io::duplex(64 * 1024);
        let app = app(Arc::default()).layer(shutdown.layer());
        let watched = {
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let builder = auto::Builder::new(TokioExecutor::new());
                let service = TowerToHyperService::new(app);
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(server), service);
                let _ = shutdown.watch(conn).await;
            })
        };
        let mut client = client;
        send_get(&mut client, "/").await;
        read_until(&mut client, "hello").await;
        shutdown.trigger();
        no_panics(shutdown.wait().await);
        watched.await.unwrap();
    });
    assert_eq!(
        count(&text, "drain started: connections told to finish"),
        1,
        "{text}"
    );
    assert_eq!(count(&text, "listeners closed"), 0, "{text}");
}

/// A `tracing` subscriber at `INFO` whose every event panics, as tracing-subscriber's
/// `fmt` does when its writer fails (stderr a closed pipe: it reports the failure with
/// `eprintln!`, which panics).
struct PanickingLogs;

impl tracing::Subscriber for PanickingLogs {
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        *metadata.level() <= tracing::Level::INFO
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {
        panic!("failed printing to stderr: Broken pipe (os error 32)");
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// A log line that panics (a subscriber whose writer failed) changes nothing in a
/// shutdown: the stream still running is force-closed at the stop deadline, exactly, and
/// `serve` returns its report (it hung for ever when the trigger's line panicked).
#[test]
fn a_panicking_log_line_never_leaves_the_shutdown_hanging() {
    on_this_thread(PanickingLogs, async {
        let shutdown = shutdown(Duration::from_secs(5));
        let (listener, connector) = channel_listener();
        let server =
            tokio::spawn(httpdown::serve(listener, app(Arc::default()), &shutdown).into_future());
        let mut conn = connector.connect();
        send_get(&mut conn, "/stream").await;
        read_until(&mut conn, "tick").await;
        shutdown.trigger();
        let report = tokio::time::timeout(Duration::from_secs(60), server)
            .await
            .expect("serve returned")
            .unwrap()
            .unwrap();
        assert!(
            matches!(
                report.outcome(),
                Outcome::ForceClosed {
                    connections: 1,
                    requests: 1
                }
            ),
            "{report}"
        );
        assert_eq!(report.total(), Duration::from_secs(5), "{report}");
        assert_eq!(report.panics(), 0, "{report}");
    });
}
