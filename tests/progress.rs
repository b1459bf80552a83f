//! Progress (B33): phase changes and periodic progress lines as `tracing` events.
//!
//! Alone in its own test binary: `tracing` caches per call site whether anyone listens,
//! and tests on other threads without a subscriber would race with that cache.

mod common;

use std::future::IntoFuture;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use httpdown::{Outcome, Shutdown};

/// Serves over a pipe with an endless stream in flight, triggers, and waits for the end.
async fn shut_down_with_an_endless_stream(shutdown: &Shutdown) -> httpdown::Report {
    let (listener, connector) = channel_listener();
    let server =
        tokio::spawn(httpdown::serve(listener, app(Arc::default()), shutdown).into_future());
    let mut conn = get_request_on(&connector, "/stream").await;
    read_until(&mut conn, "tick\n").await;
    shutdown.trigger();
    served(server).await
}

/// A `MakeWriter` that keeps what the subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    /// Captures this thread's `INFO` lines (without time or target) until the guard goes.
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let writer = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// B33: each phase change is logged, and while waiting a progress line every interval
/// says what is left and when the next deadline falls.
#[tokio::test(start_paused = true)]
async fn progress_lines_say_what_is_left_and_when_the_deadline_falls() {
    let captured = Captured::default();
    let _guard = captured.install();

    let shutdown = Shutdown::builder()
        .drain_delay(Duration::from_millis(1_500))
        .stop_timeout(Duration::from_secs(3))
        .kill_timeout(Duration::from_secs(2))
        .build();
    let report = shut_down_with_an_endless_stream(&shutdown).await;
    assert!(matches!(report.outcome(), Outcome::ForceClosed { .. }));

    let lines = captured.lines();
    let progress: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.split_once("INFO ").map(|(_, rest)| rest))
        .filter(|l| l.contains(" left, "))
        .map(|l| l.split(" requests=").next().unwrap_or(l))
        .collect();
    assert_eq!(
        progress,
        [
            "drain delay: 1 request, 1 connection left, drain start in 0.5s",
            "draining: 1 request, 1 connection left, stop deadline in 2.0s",
            "draining: 1 request, 1 connection left, stop deadline in 1.0s",
        ],
        "{lines:#?}"
    );
    let text = lines.join("\n");
    for phase in [
        "shutdown triggered",
        "drain delay: still serving",
        "drain started: listeners closed",
        "stop deadline: force-closing what is left",
        "shutdown done",
    ] {
        assert!(text.contains(phase), "no {phase:?} in:\n{text}");
    }

    // The same with progress lines turned off: phase changes only.
    captured.0.lock().unwrap().clear();
    let shutdown = Shutdown::builder()
        .stop_timeout(Duration::from_secs(3))
        .progress_interval(None)
        .build();
    shut_down_with_an_endless_stream(&shutdown).await;
    let lines = captured.lines();
    assert!(lines.iter().all(|l| !l.contains(" left, ")), "{lines:#?}");
    assert!(
        lines.iter().any(|l| l.contains("drain started")),
        "{lines:#?}"
    );
}

/// A chosen interval is the one used (lines 700 ms apart, not the default 1 s), and a
/// zero interval turns the lines off, as `None` does.
#[tokio::test(start_paused = true)]
async fn the_chosen_progress_interval_is_used_and_zero_turns_it_off() {
    let captured = Captured::default();
    let _guard = captured.install();
    let progress_lines = |captured: &Captured| -> Vec<String> {
        captured
            .lines()
            .iter()
            .filter_map(|l| l.split_once("INFO ").map(|(_, rest)| rest))
            .filter(|l| l.contains(" left, "))
            .map(|l| l.split(" requests=").next().unwrap_or(l).to_owned())
            .collect()
    };

    let shutdown = Shutdown::builder()
        .stop_timeout(Duration::from_secs(2))
        .kill_timeout(Duration::from_secs(1))
        .progress_interval(Duration::from_millis(700))
        .build();
    shut_down_with_an_endless_stream(&shutdown).await;
    assert_eq!(
        progress_lines(&captured),
        [
            "draining: 1 request, 1 connection left, stop deadline in 1.3s",
            "draining: 1 request, 1 connection left, stop deadline in 0.6s",
        ],
        "{:#?}",
        captured.lines()
    );

    captured.0.lock().unwrap().clear();
    let shutdown = Shutdown::builder()
        .stop_timeout(Duration::from_secs(2))
        .kill_timeout(Duration::from_secs(1))
        .progress_interval(Duration::ZERO)
        .build();
    shut_down_with_an_endless_stream(&shutdown).await;
    assert_eq!(progress_lines(&captured), Vec::<String>::new());
}
