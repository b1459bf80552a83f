//! B32: real SIGTERM/SIGINT sent to this test process. The first signal triggers the
//! shutdown; a second one escalates to the force-close step, or is ignored when so
//! configured, and the shutdown still ends by its deadlines.
//!
//! One test in its own binary: the signals go to the whole process.

#![cfg(unix)]

mod common;

use common::no_panics;
use std::time::Duration;

use http_body_util::BodyExt;
use httpdown::{Outcome, Phase, SecondSignal, Shutdown};
use tower::{Layer, ServiceExt};

fn raise(signal: &str) {
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("kill -{signal} {}", std::process::id()))
        .status()
        .expect("run kill");
    assert!(status.success());
}

async fn until(what: &str, cond: impl Fn() -> bool) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: not in time"));
}

/// A request held open by keeping its response body.
async fn held_request(
    shutdown: &Shutdown,
) -> httpdown::ResponseBody<http_body_util::Full<bytes::Bytes>> {
    let svc = shutdown
        .layer()
        .layer(tower::service_fn(|_: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                bytes::Bytes::from_static(b"held"),
            )))
        }));
    svc.oneshot(http::Request::new(()))
        .await
        .unwrap()
        .into_body()
}

/// The crate's log lines, for this whole test process.
#[derive(Clone, Default)]
struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn install() -> Logs {
        let logs = Logs::default();
        let writer = logs.clone();
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || writer.clone())
            .init();
        logs
    }

    fn count(&self, needle: &str) -> usize {
        let text = String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned();
        text.lines().filter(|line| line.contains(needle)).count()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_escalates_or_is_ignored_as_configured() {
    let logs = Logs::install();
    // Ignore: the second signal changes nothing; the drain goes on.
    let ignoring = Shutdown::builder()
        .stop_timeout(Duration::from_secs(30))
        .kill_timeout(Duration::from_secs(1))
        .on_second_signal(SecondSignal::Ignore)
        .build();
    ignoring.trigger_on_signals().unwrap();
    // Installing twice listens once: each signal is handled, and logged, once (B47).
    ignoring.trigger_on_signals().unwrap();
    let held = held_request(&ignoring).await;
    raise("TERM");
    until("first signal triggers", || ignoring.is_triggered()).await;
    raise("INT");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        ignoring.phase(),
        Phase::Draining,
        "the second signal was not ignored"
    );
    assert_eq!(ignoring.in_flight(), 1);
    drop(held);
    let report = no_panics(ignoring.wait().await);
    assert_eq!(report.outcome(), Outcome::Drained);
    assert_eq!(logs.count("shutdown triggered by SIGTERM"), 1);
    assert_eq!(logs.count("shutdown already under way"), 1);

    // Escalate (the default): the second signal force-closes at once, long before the
    // 60 s stop deadline, and the shutdown ends by the kill deadline.
    let escalating = Shutdown::builder()
        .stop_timeout(Duration::from_secs(60))
        .kill_timeout(Duration::from_secs(1))
        .build();
    escalating.trigger_on_signals().unwrap();
    // A handler that never answers.
    let svc = escalating
        .layer()
        .layer(tower::service_fn(|_: http::Request<()>| {
            std::future::pending::<
                Result<
                    http::Response<http_body_util::Empty<bytes::Bytes>>,
                    std::convert::Infallible,
                >,
            >()
        }));
    let reader = tokio::spawn(async move {
        let response = svc.oneshot(http::Request::new(())).await.unwrap();
        assert_eq!(response.status(), 503);
        response.into_body().collect().await.map(|_| ())
    });
    until("request counted", || escalating.in_flight() == 1).await;
    raise("INT");
    until("first signal triggers", || escalating.is_triggered()).await;
    assert_eq!(escalating.phase(), Phase::Draining);
    raise("TERM");
    let report = tokio::time::timeout(Duration::from_secs(5), escalating.wait())
        .await
        .expect("escalated shutdown did not end by the kill deadline");
    assert_eq!(
        report.outcome(),
        Outcome::ForceClosed {
            connections: 0,
            requests: 1
        }
    );
    assert!(report.total() < Duration::from_secs(5), "{report}");
    assert!(
        report.escalated().is_some(),
        "reported as an escalation: {report}"
    );
    assert_eq!(logs.count("second signal: escalating"), 1);
    assert_eq!(logs.count("escalated: force-closing"), 1);
    assert!(
        reader.await.unwrap().is_err(),
        "the held body is cut, not completed"
    );
}
