//! B12 through the `metrics` facade: every statistic of Go's `httpdown` under its
//! documented name (`httpdown::metric_names`).

#![cfg(feature = "metrics")]

mod common;

use std::collections::HashMap;
use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use httpdown::{metric_names as names, Outcome, Shutdown};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::MetricKind;

/// Runs `test` on a paused current-thread runtime with a debugging recorder installed
/// for this thread, and returns what it recorded.
fn recorded(test: impl std::future::Future<Output = ()>) -> Snapshotter {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
            .block_on(test)
    });
    snapshotter
}

#[test]
fn a_forced_shutdown_records_every_statistic() {
    let snapshotter = recorded(async {
        let shutdown = Shutdown::builder()
            .stop_timeout(Duration::from_secs(2))
            .kill_timeout(Duration::from_secs(1))
            .build();
        let (listener, connector) = channel_listener();
        let server =
            tokio::spawn(httpdown::serve(listener, app(Arc::default()), &shutdown).into_future());
        let mut idle = connector.connect();
        send_get(&mut idle, "/").await;
        read_until(&mut idle, "hello").await;
        let mut streaming = connector.connect();
        send_get(&mut streaming, "/stream").await;
        read_until(&mut streaming, "tick\n").await;
        shutdown.trigger();
        let report = served(server).await;
        assert_eq!(
            report.outcome(),
            Outcome::Forced {
                connections: 1,
                requests: 1
            }
        );
    });

    let mut values = HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let (kind, key) = key.into_parts();
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        let name = if labels.is_empty() {
            key.name().to_owned()
        } else {
            format!("{}{{{}}}", key.name(), labels.join(","))
        };
        values.insert(name, (kind, value));
    }
    let counter = |name: &str| match values.get(name) {
        Some((MetricKind::Counter, DebugValue::Counter(n))) => *n,
        other => panic!("{name}: {other:?} in {values:#?}"),
    };
    let gauge = |name: &str| match values.get(name) {
        Some((MetricKind::Gauge, DebugValue::Gauge(g))) => g.into_inner(),
        other => panic!("{name}: {other:?} in {values:#?}"),
    };
    assert_eq!(counter(names::SERVE), 1);
    assert_eq!(counter(names::STOP), 1);
    assert_eq!(counter(names::KILL), 1);
    assert_eq!(counter(names::KILL_CONNECTIONS), 1);
    assert_eq!(counter(names::ACCEPTED), 2);
    assert_eq!(counter(names::CLOSED), 2);
    assert_eq!(counter(names::REQUESTS), 2);
    assert!(!values.contains_key(names::KILL_TIMEOUT), "did not give up");
    for state in ["new", "active", "idle"] {
        let name = format!("{}{{state={state}}}", names::CONNECTIONS);
        assert_eq!(gauge(&name), 0.0, "{name} back to zero");
    }
    assert_eq!(gauge(names::IN_FLIGHT), 0.0);
    match values.get(names::STOP_TIME) {
        Some((MetricKind::Histogram, DebugValue::Histogram(samples))) => {
            assert_eq!(samples.len(), 1);
            assert_eq!(samples[0].into_inner(), 2.0, "trigger to done, in seconds");
        }
        other => panic!("{}: {other:?}", names::STOP_TIME),
    }
}

/// Go's `kill.timeout`: a request that never lets go (its response body is kept and never
/// polled) makes the shutdown give up at the kill deadline.
#[test]
fn giving_up_at_the_kill_deadline_is_counted() {
    use tower::{Layer, ServiceExt};

    let snapshotter = recorded(async {
        let shutdown = Shutdown::builder()
            .stop_timeout(Duration::from_secs(1))
            .kill_timeout(Duration::from_secs(1))
            .build();
        let svc = shutdown
            .layer()
            .layer(tower::service_fn(|_: http::Request<()>| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                    bytes::Bytes::from_static(b"kept"),
                )))
            }));
        let kept = svc.oneshot(http::Request::new(())).await.unwrap();
        shutdown.trigger();
        let report = no_panics(shutdown.wait().await);
        assert!(matches!(
            report.outcome(),
            Outcome::GaveUp { requests: 1, .. }
        ));
        drop(kept);
    });
    let found = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .any(|(key, _, _, value)| {
            key.key().name() == names::KILL_TIMEOUT && value == DebugValue::Counter(1)
        });
    assert!(found, "{} not counted", names::KILL_TIMEOUT);
}
