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

/// What the debugging recorder recorded, summed over every look: its snapshots hand out
/// what changed since the last one (counters and gauges are swapped to zero).
#[derive(Clone)]
struct Recorded {
    snapshotter: Arc<Snapshotter>,
    totals: Arc<std::sync::Mutex<HashMap<String, DebugValue>>>,
}

impl Recorded {
    /// Every metric by name, labels in braces (`httpdown_connections{state=idle}`), as
    /// recorded so far.
    fn values(&self) -> HashMap<String, DebugValue> {
        let mut totals = self.totals.lock().unwrap();
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let (_, key) = key.into_parts();
            let labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            let name = if labels.is_empty() {
                key.name().to_owned()
            } else {
                format!("{}{{{}}}", key.name(), labels.join(","))
            };
            let total = match (totals.remove(&name), value) {
                (None, value) => value,
                (Some(DebugValue::Counter(a)), DebugValue::Counter(b)) => {
                    DebugValue::Counter(a + b)
                }
                (Some(DebugValue::Gauge(a)), DebugValue::Gauge(b)) => {
                    DebugValue::Gauge((a.into_inner() + b.into_inner()).into())
                }
                (Some(DebugValue::Histogram(mut a)), DebugValue::Histogram(b)) => {
                    a.extend(b);
                    DebugValue::Histogram(a)
                }
                (before, now) => panic!("{name} changed kind: {before:?} then {now:?}"),
            };
            totals.insert(name, total);
        }
        // `DebugValue` is not `Clone`.
        totals
            .iter()
            .map(|(name, value)| {
                let copy = match value {
                    DebugValue::Counter(n) => DebugValue::Counter(*n),
                    DebugValue::Gauge(g) => DebugValue::Gauge(*g),
                    DebugValue::Histogram(h) => DebugValue::Histogram(h.clone()),
                };
                (name.clone(), copy)
            })
            .collect()
    }

    /// The connection gauges by state, `[new, active, idle]` (0 for one never recorded).
    fn connection_gauges(&self) -> [f64; 3] {
        let values = self.values();
        ["new", "active", "idle"].map(|state| {
            match values.get(&format!("{}{{state={state}}}", names::CONNECTIONS)) {
                Some(DebugValue::Gauge(g)) => g.into_inner(),
                None => 0.0,
                other => panic!("{state}: {other:?}"),
            }
        })
    }
}

/// Runs `test` on a paused current-thread runtime with a debugging recorder installed
/// for this thread, and returns what it recorded. The test gets the same view, to look
/// at the figures on the way.
fn recorded<F: std::future::Future<Output = ()>>(test: impl FnOnce(Recorded) -> F) -> Recorded {
    let recorder = DebuggingRecorder::new();
    let recorded = Recorded {
        snapshotter: Arc::new(recorder.snapshotter()),
        totals: Arc::default(),
    };
    let during = recorded.clone();
    metrics::with_local_recorder(&recorder, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
            .block_on(test(during))
    });
    recorded
}

/// Lets every task that is ready run, without moving the paused clock.
async fn settle() {
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
}

#[test]
fn a_forced_shutdown_records_every_statistic() {
    let snapshotter = recorded(|during| async move {
        let shutdown = Shutdown::builder()
            .stop_timeout(Duration::from_secs(2))
            .kill_timeout(Duration::from_secs(1))
            .build();
        let (listener, connector) = channel_listener();
        let server =
            tokio::spawn(httpdown::serve(listener, app(Arc::default()), &shutdown).into_future());
        // Each connection moves through the states, and the gauge of each state says so.
        let mut idle = connector.connect();
        settle().await;
        assert_eq!(during.connection_gauges(), [1.0, 0.0, 0.0], "new");
        send_get(&mut idle, "/").await;
        read_until(&mut idle, "hello").await;
        settle().await;
        assert_eq!(during.connection_gauges(), [0.0, 0.0, 1.0], "idle");
        let mut streaming = connector.connect();
        send_get(&mut streaming, "/stream").await;
        read_until(&mut streaming, "tick\n").await;
        assert_eq!(during.connection_gauges(), [0.0, 1.0, 1.0], "active");
        assert_eq!(shutdown.stats().connections.active, 1);
        shutdown.trigger();
        let report = served(server).await;
        assert_eq!(
            report.outcome(),
            Outcome::ForceClosed {
                connections: 1,
                requests: 1
            }
        );
    });

    let values = snapshotter.values();
    let counter = |name: &str| match values.get(name) {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("{name}: {other:?} in {values:#?}"),
    };
    let gauge = |name: &str| match values.get(name) {
        Some(DebugValue::Gauge(g)) => g.into_inner(),
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
        Some(DebugValue::Histogram(samples)) => {
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

    let snapshotter = recorded(|_| async {
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
    assert_eq!(
        snapshotter.values().get(names::KILL_TIMEOUT),
        Some(&DebugValue::Counter(1)),
        "{} not counted",
        names::KILL_TIMEOUT
    );
}

/// The layer alone (under any server) keeps the request metrics too: the in-flight gauge
/// goes back to 0 when the response ends.
#[test]
fn the_layer_alone_keeps_the_request_metrics() {
    use http::{Request, Response};
    use tower::{service_fn, Layer, ServiceExt};
    let recorded = recorded(|_| async {
        let shutdown = Shutdown::new();
        let svc = shutdown
            .layer()
            .layer(service_fn(|_req: Request<()>| async {
                Ok::<_, std::convert::Infallible>(Response::new(String::from("hello")))
            }));
        let response = svc.oneshot(Request::new(())).await.unwrap();
        drop(response);
    });
    let values = recorded.values();
    assert!(
        matches!(values.get(names::REQUESTS), Some(DebugValue::Counter(1))),
        "{values:?}"
    );
    match values.get(names::IN_FLIGHT) {
        Some(DebugValue::Gauge(g)) => assert_eq!(g.into_inner(), 0.0, "{values:?}"),
        other => panic!("no in-flight gauge: {other:?}"),
    }
}

/// A panic in a task the crate spawns is counted through the facade too.
#[test]
fn a_panic_is_counted_as_a_metric() {
    use axum::routing::get;
    let recorded = recorded(|_| async {
        let shutdown = Shutdown::builder()
            .stop_timeout(Duration::from_secs(2))
            .build();
        let app = app(Arc::default()).route(
            "/panic",
            get(|| async {
                panic!("a handler panicked on purpose");
                #[allow(unreachable_code)]
                ""
            }),
        );
        let (listener, connector) = channel_listener();
        let server = tokio::spawn(httpdown::serve(listener, app, &shutdown).into_future());
        let mut conn = get_request_on(&connector, "/panic").await;
        let (text, _) = read_to_end(&mut conn).await;
        assert_eq!(text, "");
        shutdown.trigger();
        let report = server.await.unwrap().unwrap();
        assert_eq!(report.panics(), 1);
    });
    let values = recorded.values();
    assert!(
        matches!(values.get(names::PANICS), Some(DebugValue::Counter(1))),
        "{values:?}"
    );
}
