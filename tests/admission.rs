//! B29: the admission race, property-tested over random interleavings on paused time.
//!
//! Requests start and end at random instants (many of them at the same instant as the
//! trigger or drain start, in random task order); for every schedule the shutdown must
//! wait for every request counted before it finished, finish exactly when the last one
//! ended (no lost wake-up), and never see a count below zero or above the number started.

mod common;

use common::no_panics;
use std::convert::Infallible;
use std::time::Duration;

use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use httpdown::{Outcome, Shutdown};
use tokio::time::Instant;
use tower::{service_fn, Layer, ServiceExt};

/// xorshift64*: a small deterministic generator, so a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const MS: Duration = Duration::from_millis(1);

#[tokio::test(start_paused = true)]
async fn requests_counted_before_the_end_are_always_waited_for() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for case in 0..2000 {
        let stop = 40 + rng.below(60);
        let delay = [0, 0, 5, 10][rng.below(4) as usize];
        let shutdown = Shutdown::builder()
            .drain_delay(MS * delay as u32)
            .stop_timeout(MS * stop as u32)
            .kill_timeout(Duration::from_secs(1))
            .build();
        let trigger_at = rng.below(20);
        let n = 1 + rng.below(8) as usize;
        // Start and end instants, in ms from t0; coarse so that many coincide.
        let schedule: Vec<(u64, u64)> = (0..n)
            .map(|_| {
                let start = rng.below(30);
                (start, start + rng.below(120))
            })
            .collect();

        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for &(start, end) in &schedule {
            let svc = shutdown
                .layer()
                .layer(service_fn(move |_req: Request<()>| async move {
                    tokio::time::sleep_until(t0 + MS * end as u32).await;
                    Ok::<_, Infallible>(Response::new(Full::new(bytes::Bytes::from_static(b"x"))))
                }));
            let shutdown_seen = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep_until(t0 + MS * start as u32).await;
                let counted_at = Instant::now();
                let response = svc.oneshot(Request::new(())).await.unwrap();
                let seen = shutdown_seen.in_flight();
                // A cut response fails; a complete one reads to its end.
                let _ = response.into_body().collect().await;
                (counted_at, seen.max(shutdown_seen.in_flight()))
            }));
        }
        let trigger = {
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(t0 + MS * trigger_at as u32).await;
                shutdown.trigger();
            })
        };
        let report = no_panics(shutdown.wait().await);
        let done = (Instant::now() - t0).as_millis() as u64;
        trigger.await.unwrap();
        let mut counted = Vec::new();
        let mut max_seen = 0;
        for task in tasks {
            let (counted_at, seen) = task.await.unwrap();
            counted.push((counted_at - t0).as_millis() as u64);
            max_seen = max_seen.max(seen);
        }
        let drain_at = trigger_at + delay;
        let deadline = drain_at + stop;
        let ctx = format!(
            "case {case}: trigger {trigger_at} delay {delay} stop {stop} schedule {schedule:?} done {done} {report}"
        );

        assert!(max_seen <= n, "count above the number started: {ctx}");
        assert!(done >= drain_at, "done before drain start: {ctx}");
        // Requests counted strictly before the shutdown finished.
        let admitted: Vec<_> = schedule
            .iter()
            .zip(&counted)
            .filter(|(_, &c)| c < done)
            .map(|(&(_, end), _)| end)
            .collect();
        match report.outcome() {
            Outcome::Drained => {
                for &end in &admitted {
                    assert!(done >= end, "a counted request was not waited for: {ctx}");
                }
                let last = admitted.iter().copied().max().unwrap_or(0).max(drain_at);
                assert_eq!(done, last, "done late or early (lost wake-up): {ctx}");
                assert!(done <= deadline, "drained past the deadline: {ctx}");
            }
            Outcome::ForceClosed { requests, .. } => {
                assert_eq!(done, deadline, "forced off the stop deadline: {ctx}");
                // A request ending at the very instant of the deadline may go either way.
                let open = admitted.iter().filter(|&&end| end > deadline).count();
                let tied = admitted.iter().filter(|&&end| end == deadline).count();
                assert!(
                    requests >= open.max(1) && requests <= open + tied,
                    "forced count {requests} vs {open} open and {tied} tied: {ctx}"
                );
            }
            other => panic!("unexpected outcome {other:?}: {ctx}"),
        }
        assert_eq!(shutdown.in_flight(), 0, "count leaked: {ctx}");
    }
}
