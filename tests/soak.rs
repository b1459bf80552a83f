//! Soak: 200 start / serve / shutdown cycles in one process, with traffic (keep-alive,
//! streaming, idle and silent connections, some cycles forced at the stop deadline). Open
//! file descriptors, live tokio tasks and resident memory must not grow beyond noise.
//!
//! `cargo test --release --test soak -- --nocapture` prints the figures.

#![cfg(target_os = "linux")]

mod common;

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use httpdown::{Outcome, Shutdown};
use tokio::net::TcpStream;

const CYCLES: usize = 200;
const WARM_UP: usize = 20;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

async fn cycle(n: usize) {
    let forced = n % 10 == 9;
    let shutdown = Shutdown::builder()
        .stop_timeout(Duration::from_millis(if forced { 30 } else { 2_000 }))
        .kill_timeout(Duration::from_secs(1))
        .progress_interval(None)
        .build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server =
        tokio::spawn(httpdown::serve(listener, app(Arc::default()), &shutdown).into_future());

    let mut idle = get_request(addr, "/").await;
    read_until(&mut idle, "hello").await;
    let mut again = get_request(addr, "/slow?ms=1").await;
    read_until(&mut again, "0\r\n\r\n").await;
    let _silent = TcpStream::connect(addr).await.unwrap();
    let mut busy = get_request(addr, if forced { "/stream" } else { "/slow?ms=20" }).await;
    read_until(&mut busy, if forced { "tick\n" } else { "start\n" }).await;

    shutdown.trigger();
    let report = served_in_time(server).await;
    let expected = if forced {
        matches!(report.outcome(), Outcome::ForceClosed { .. })
    } else {
        report.outcome() == Outcome::Drained
    };
    assert!(expected, "cycle {n}: {report}");
    for conn in [&mut idle, &mut again, &mut busy] {
        read_to_end(conn).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_cycles_leak_no_descriptors_tasks_or_memory() {
    for n in 0..WARM_UP {
        cycle(n).await;
    }
    // Let tasks that end after `serve` returns (lingering closes) finish.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (fds0, tasks0, rss0) = (open_fds(), alive_tasks(), rss_kib());
    for n in WARM_UP..CYCLES {
        cycle(n).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (fds1, tasks1, rss1) = (open_fds(), alive_tasks(), rss_kib());
    eprintln!(
        "soak: {CYCLES} cycles; after warm-up -> end: open fds {fds0} -> {fds1}, \
         alive tasks {tasks0} -> {tasks1}, RSS {rss0} KiB -> {rss1} KiB"
    );
    assert!(fds1 <= fds0 + 2, "file descriptors leak: {fds0} -> {fds1}");
    assert!(tasks1 <= tasks0, "tasks leak: {tasks0} -> {tasks1}");
    // 180 cycles with 4 connections each: a leak of even one small buffer per connection
    // would show; allocator noise stays well under this.
    assert!(
        rss1 <= rss0 + 8 * 1024,
        "memory grows: {rss0} KiB -> {rss1} KiB"
    );
}
