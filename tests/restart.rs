//! Zero-downtime restart (SPEC section 7): the demo upgraded in place by SIGHUP under
//! load (B51, B53), rollback of a new process that fails (B52), the PID file, and
//! socket activation (B50).

#![cfg(target_os = "linux")]

mod common;

use std::collections::BTreeSet;
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{demo_binary, free_port, which};
use httpdown::restart::{UpgradeError, Upgrader};
use httpdown::Shutdown;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// Upper bound for a start, an upgrade or an exit.
const BOUND: Duration = Duration::from_secs(20);

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("httpdown-restart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Whether `pid` is gone (or a zombie waiting for its parent to read its exit status).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

async fn wait_gone(pid: u32) {
    tokio::time::timeout(BOUND, async {
        while !gone(pid) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("pid {pid} still runs"));
}

/// Makes this test process the parent of the orphans its descendants leave (a child
/// subreaper), so that an old generation, whose parent exited before it, becomes this
/// process's zombie on exit: [`reap`] then reads its exit status, and no zombie is left to
/// whatever init the machine runs.
fn adopt_orphans() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
            .expect("PR_SET_CHILD_SUBREAPER");
    });
}

/// Reads the exit status of `pid`, an exited descendant adopted by [`adopt_orphans`]
/// (blocks until it exits). Its code if it exited, else the signal that killed it.
fn reap(pid: u32) -> Result<i32, String> {
    let raw = rustix::process::Pid::from_raw(pid as i32).expect("a pid");
    match rustix::process::waitpid(Some(raw), rustix::process::WaitOptions::empty()) {
        Ok(Some((_, status))) => match status.exit_status() {
            Some(code) => Ok(code),
            None => Err(format!("pid {pid} ended by {status:?}")),
        },
        Ok(None) => Err(format!("pid {pid}: no status")),
        Err(e) => Err(format!("pid {pid} is not this process's to reap: {e}")),
    }
}

/// Kills the processes a test started, should the test fail before it stops them.
#[derive(Default)]
struct Reaper(Mutex<Vec<u32>>);

impl Reaper {
    fn watch(&self, pid: u32) {
        self.0.lock().unwrap().push(pid);
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in self.0.lock().unwrap().iter() {
            if !gone(*pid) {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

/// Waits until the PID file names `pid` (the serving process writes it right after its
/// start line).
async fn pid_file_names(path: &Path, pid: u32) {
    tokio::time::timeout(BOUND, async {
        while read_pid_file(path) != Some(pid) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the PID file never named {pid}: {:?}", read_pid_file(path)));
}

fn kill(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// The demo's generations, on one stdout: each prints `serving on http://ADDR/ with pid
/// PID` once it accepts.
struct Generations {
    first: Child,
    lines: mpsc::UnboundedReceiver<(SocketAddr, u32)>,
    stderr: PathBuf,
}

impl Generations {
    async fn start(flags: &[&str]) -> (Generations, SocketAddr, u32) {
        Generations::start_with(flags, &[]).await
    }

    async fn start_with(flags: &[&str], env: &[(&str, &str)]) -> (Generations, SocketAddr, u32) {
        let default_addr: &[&str] = if flags.contains(&"--addr") {
            &[]
        } else {
            &["--addr", "127.0.0.1:0"]
        };
        let mut command = Command::new(demo_binary());
        command
            .args(default_addr)
            .args(flags)
            .envs(env.iter().copied());
        let mut generations = Generations::spawn(command);
        let (addr, pid) = generations.next().await;
        assert_eq!(Some(pid), generations.first.id());
        (generations, addr, pid)
    }

    /// Runs `command` (the demo, or a tool that runs it), reading its stdout's start
    /// lines; waits for none.
    fn spawn(mut command: Command) -> Generations {
        // Before any generation exists: each one whose parent exits becomes this
        // process's child.
        adopt_orphans();
        let stderr = scratch(&format!("stderr-{}", rand_tag()));
        let mut first = command
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn demo");
        let stdout = first.stdout.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut stdout = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = stdout.next_line().await {
                let parsed = line
                    .strip_prefix("serving on http://")
                    .and_then(|rest| rest.split_once("/ with pid "))
                    .and_then(|(addr, pid)| Some((addr.parse().ok()?, pid.parse().ok()?)));
                match parsed {
                    Some(parsed) => {
                        let _ = tx.send(parsed);
                    }
                    None => panic!("unexpected line on stdout: {line:?}"),
                }
            }
        });
        Generations {
            first,
            lines,
            stderr,
        }
    }

    /// The next generation's start line.
    async fn next(&mut self) -> (SocketAddr, u32) {
        tokio::time::timeout(BOUND, self.lines.recv())
            .await
            .expect("no start line in time")
            .expect("stdout closed")
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

fn rand_tag() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u8(0);
    format!("{:x}", hasher.finish())
}

/// What the load client saw.
#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    refused: AtomicUsize,
    /// Reset or EOF before the whole response, after the connect succeeded.
    cut: AtomicUsize,
    /// A response that is not the demo's 200.
    bad: AtomicUsize,
    timeouts: AtomicUsize,
    pids: Mutex<BTreeSet<u32>>,
    errors: Mutex<Vec<String>>,
    /// Each quick one-shot request's start and time, from its connect to its
    /// response's end.
    latencies: Mutex<Vec<(std::time::Instant, Duration)>>,
}

impl Tally {
    fn record(&self, outcome: Result<u32, (&AtomicUsize, String)>) {
        match outcome {
            Ok(pid) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                self.pids.lock().unwrap().insert(pid);
            }
            Err((counter, error)) => {
                counter.fetch_add(1, Ordering::Relaxed);
                let mut errors = self.errors.lock().unwrap();
                if errors.len() < 20 {
                    errors.push(error);
                }
            }
        }
    }

    fn failures(&self) -> usize {
        [&self.refused, &self.cut, &self.bad, &self.timeouts]
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    fn summary(&self) -> String {
        format!(
            "ok {}, refused {}, cut {}, bad {}, timeouts {}, pids {:?}, first errors {:?}",
            self.ok.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
            self.cut.load(Ordering::Relaxed),
            self.bad.load(Ordering::Relaxed),
            self.timeouts.load(Ordering::Relaxed),
            self.pids.lock().unwrap(),
            self.errors.lock().unwrap(),
        )
    }
}

/// Reads one response to `GET /?duration=D` and returns the pid that served it.
async fn read_response<S: AsyncReadExt + Unpin>(
    stream: &mut S,
) -> Result<u32, (&'static str, String)> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&seen).into_owned();
        if let Some(head_end) = text.find("\r\n\r\n") {
            if !text.starts_with("HTTP/1.1 200 ") {
                return Err(("bad", text));
            }
            if text[head_end..].contains("\r\n0\r\n\r\n") {
                let pid = text
                    .split("slept ")
                    .nth(1)
                    .and_then(|rest| rest.split(" with pid ").nth(1))
                    .and_then(|rest| rest.split('\n').next())
                    .and_then(|pid| pid.trim().parse().ok());
                return pid.ok_or(("bad", text));
            }
        }
        match stream.read(&mut buf).await {
            Ok(0) => return Err(("cut", format!("EOF after {text:?}"))),
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e) => return Err(("cut", format!("{e} after {text:?}"))),
        }
    }
}

fn counter<'a>(tally: &'a Tally, class: &str) -> &'a AtomicUsize {
    match class {
        "bad" => &tally.bad,
        _ => &tally.cut,
    }
}

/// A new connection per request.
async fn one_shot(addr: SocketAddr, path: &str, tally: &Tally) {
    let exchange = async {
        let mut stream = match TcpStream::connect(addr).await {
            Ok(stream) => stream,
            Err(e) => return Err((&tally.refused, format!("connect: {e}"))),
        };
        let head = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        if let Err(e) = stream.write_all(head.as_bytes()).await {
            return Err((&tally.cut, format!("write: {e}")));
        }
        read_response(&mut stream)
            .await
            .map_err(|(class, e)| (counter(tally, class), e))
    };
    let started = std::time::Instant::now();
    let outcome = tokio::time::timeout(BOUND, exchange)
        .await
        .unwrap_or_else(|_| Err((&tally.timeouts, format!("{path}: no response in time"))));
    if path.ends_with("=0s") {
        let latency = (started, started.elapsed());
        tally.latencies.lock().unwrap().push(latency);
    }
    tally.record(outcome);
}

/// Keep-alive POSTs on one connection, reconnecting when the server closes it after a
/// response (`Connection: close`), as HTTP clients do.
async fn keep_alive(addr: SocketAddr, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    let mut conn: Option<TcpStream> = None;
    while !stop.load(Ordering::Relaxed) {
        let stream = match conn.take() {
            Some(stream) => stream,
            None => match TcpStream::connect(addr).await {
                Ok(stream) => stream,
                Err(e) => {
                    tally.record(Err((&tally.refused, format!("connect: {e}"))));
                    continue;
                }
            },
        };
        let mut stream = stream;
        let body = "x".repeat(100);
        let head = format!(
            "POST /?duration=0s HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let exchange = async {
            stream
                .write_all(head.as_bytes())
                .await
                .map_err(|e| ("cut", format!("write: {e}")))?;
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let text = String::from_utf8_lossy(&seen).into_owned();
                if let Some(end) = text.find("\r\n0\r\n\r\n") {
                    let close = text[..end]
                        .to_ascii_lowercase()
                        .contains("connection: close");
                    let pid = text
                        .split(" with pid ")
                        .nth(2)
                        .and_then(|rest| rest.split('\n').next())
                        .and_then(|pid| pid.trim().parse::<u32>().ok());
                    if !text.starts_with("HTTP/1.1 200 ") {
                        return Err(("bad", text));
                    }
                    return pid.map(|pid| (pid, close)).ok_or(("bad", text));
                }
                match stream.read(&mut buf).await {
                    Ok(0) => return Err(("cut", format!("EOF after {text:?}"))),
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                    Err(e) => return Err(("cut", format!("{e} after {text:?}"))),
                }
            }
        };
        match tokio::time::timeout(BOUND, exchange).await {
            Ok(Ok((pid, close))) => {
                tally.record(Ok(pid));
                if !close {
                    conn = Some(stream);
                }
            }
            Ok(Err((class, e))) => tally.record(Err((counter(&tally, class), e))),
            Err(_) => tally.record(Err((&tally.timeouts, "keep-alive: no response".into()))),
        }
    }
}

/// An SSE client of the demo's `/sse`: on its goodbye (`event: shutdown`, sent by a
/// generation that drains) it reconnects; a stream that ends or stalls without it is a cut.
async fn sse_client(
    addr: SocketAddr,
    tally: Arc<Tally>,
    goodbyes: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        let mut stream = match TcpStream::connect(addr).await {
            Ok(stream) => stream,
            Err(e) => {
                tally.record(Err((&tally.refused, format!("sse connect: {e}"))));
                continue;
            }
        };
        let head = b"GET /sse HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n";
        if let Err(e) = stream.write_all(head).await {
            tally.record(Err((&tally.cut, format!("sse write: {e}"))));
            continue;
        }
        let mut seen = String::new();
        let mut buf = [0u8; 4096];
        loop {
            let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
            match read {
                Ok(Ok(n)) if n > 0 => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
                Ok(_) if seen.contains("event: shutdown") => {
                    goodbyes.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Ok(Ok(_)) => {
                    let error = format!("sse ended without a goodbye: {seen:?}");
                    tally.record(Err((&tally.cut, error)));
                    break;
                }
                Ok(Err(e)) => {
                    tally.record(Err((&tally.cut, format!("sse: {e} after {seen:?}"))));
                    break;
                }
                Err(_) => {
                    tally.record(Err((&tally.timeouts, "sse stalled 5 s".into())));
                    break;
                }
            }
            if stop.load(Ordering::Relaxed) {
                return;
            }
        }
    }
}

/// A WebSocket client of the demo's `/ws`: a message, its echo, again; on a Close with
/// 1001 (going away) it reconnects; any other end is a cut.
async fn ws_client(
    addr: SocketAddr,
    tally: Arc<Tally>,
    goodbyes: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::Message;
    while !stop.load(Ordering::Relaxed) {
        let mut ws = match tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await {
            Ok((ws, _)) => ws,
            Err(e) => {
                tally.record(Err((&tally.refused, format!("ws connect: {e}"))));
                continue;
            }
        };
        loop {
            if stop.load(Ordering::Relaxed) {
                let _ = ws.close(None).await;
                return;
            }
            if let Err(e) = ws.send(Message::text("ping")).await {
                tally.record(Err((&tally.cut, format!("ws send: {e}"))));
                break;
            }
            match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
                Ok(Some(Ok(Message::Text(text)))) if text.as_str() == "ping" => {}
                Ok(Some(Ok(Message::Close(Some(frame))))) if frame.code == CloseCode::Away => {
                    goodbyes.fetch_add(1, Ordering::Relaxed);
                    // Reading on answers the Close; the server then ends the connection.
                    let _ = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
                    break;
                }
                other => {
                    tally.record(Err((&tally.cut, format!("ws: {other:?}"))));
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Quick requests (`GET /?duration=0s`, a new connection each) from a few tasks until
/// stopped.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    tally: Arc<Tally>,
}

impl Load {
    fn start(addr: SocketAddr, workers: usize) -> Load {
        let (stop, tally) = (Arc::new(AtomicBool::new(false)), Arc::new(Tally::default()));
        let tasks = (0..workers)
            .map(|_| {
                let (tally, stop) = (Arc::clone(&tally), Arc::clone(&stop));
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        one_shot(addr, "/?duration=0s", &tally).await;
                    }
                })
            })
            .collect();
        Load { stop, tasks, tally }
    }

    /// Stops the clients and returns what they saw.
    async fn stop(self) -> Arc<Tally> {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            tokio::time::timeout(BOUND, task)
                .await
                .unwrap_or_else(|_| panic!("the load did not stop: {}", self.tally.summary()))
                .unwrap();
        }
        self.tally
    }
}

/// Upgrades the newest generation by SIGHUP `times` times, `every` apart: each time the
/// next start line (on `addr`), then the old process gone. Returns, for each upgrade, the
/// time from the signal to the new start line.
async fn upgrade(
    generations: &mut Generations,
    addr: SocketAddr,
    pids: &mut Vec<u32>,
    reaper: &Reaper,
    times: usize,
    every: Duration,
) -> Vec<Duration> {
    let mut took = Vec::new();
    for upgrade in 0..times {
        tokio::time::sleep(every).await;
        let old = *pids.last().unwrap();
        let signalled = std::time::Instant::now();
        kill(old, "HUP");
        let (new_addr, new_pid) = generations.next().await;
        took.push(signalled.elapsed());
        assert_eq!(new_addr, addr, "upgrade {upgrade}: the same address");
        assert_ne!(new_pid, old);
        reaper.watch(new_pid);
        pids.push(new_pid);
        wait_gone(old).await;
        reap_orphan(generations, old);
    }
    took
}

/// Reads the exit status of `pid`, a generation other than the first (the test's own
/// child, which `Child::wait` reads), adopted by this process: it must be 0.
fn reap_orphan(generations: &Generations, pid: u32) {
    if generations.first.id() != Some(pid) {
        assert_eq!(reap(pid), Ok(0), "generation {pid} exits 0 after its drain");
    }
}

/// Stops the last of `pids` with SIGTERM and checks that every generation exited 0 and
/// none is left in the process table (no zombie).
async fn stop_all(generations: &mut Generations, pids: &[u32]) {
    let status = tokio::time::timeout(BOUND, generations.first.wait())
        .await
        .expect("the first generation exits")
        .unwrap();
    assert!(status.success(), "the first generation exits 0: {status}");
    let last = *pids.last().unwrap();
    kill(last, "TERM");
    wait_gone(last).await;
    if pids.len() > 1 {
        assert_eq!(reap(last), Ok(0), "the last generation exits 0 on SIGTERM");
    }
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} is still in the process table"
        );
    }
}

/// Every generation in `pids` served, and nothing failed.
fn assert_all_served(tally: &Tally, pids: &[u32]) {
    assert_eq!(tally.failures(), 0, "{}", tally.summary());
    let served_by = tally.pids.lock().unwrap().clone();
    assert_eq!(
        served_by,
        pids.iter().copied().collect(),
        "every generation served: {}",
        tally.summary()
    );
}

/// B51, B53: five upgrades by SIGHUP under load (new connections, keep-alive POSTs,
/// requests straddling the handover): not one request refused, reset, cut or failed;
/// every generation served, every old one exited 0 after its drain, the PID file names
/// the serving process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_upgrades_under_load_lose_nothing() {
    const UPGRADES: usize = 20;
    let pid_file = scratch("demo.pid");
    let (mut generations, addr, first_pid) = Generations::start(&[
        "--pid-file",
        pid_file.to_str().unwrap(),
        "--stop-timeout",
        "10s",
    ])
    .await;
    let reaper = Reaper::default();
    reaper.watch(first_pid);
    pid_file_names(&pid_file, first_pid).await;

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for i in 0..6 {
        let (tally, stop) = (Arc::clone(&tally), Arc::clone(&stop));
        // Most requests are quick; one in three takes 300 ms and straddles a handover.
        let path = if i % 3 == 0 {
            "/?duration=300ms"
        } else {
            "/?duration=0s"
        };
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                one_shot(addr, path, &tally).await;
            }
        }));
    }
    for _ in 0..3 {
        load.push(tokio::spawn(keep_alive(
            addr,
            Arc::clone(&tally),
            Arc::clone(&stop),
        )));
    }
    let sse_goodbyes = Arc::new(AtomicUsize::new(0));
    let ws_goodbyes = Arc::new(AtomicUsize::new(0));
    load.push(tokio::spawn(sse_client(
        addr,
        Arc::clone(&tally),
        Arc::clone(&sse_goodbyes),
        Arc::clone(&stop),
    )));
    load.push(tokio::spawn(ws_client(
        addr,
        Arc::clone(&tally),
        Arc::clone(&ws_goodbyes),
        Arc::clone(&stop),
    )));

    let mut pids = vec![first_pid];
    let mut first_upgrade = None;
    for upgrade in 0..UPGRADES {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let old = *pids.last().unwrap();
        first_upgrade.get_or_insert_with(std::time::Instant::now);
        kill(old, "HUP");
        let (new_addr, new_pid) = generations.next().await;
        assert_eq!(new_addr, addr, "upgrade {upgrade}: the same socket");
        assert_ne!(new_pid, old);
        reaper.watch(new_pid);
        pids.push(new_pid);
        wait_gone(old).await;
        reap_orphan(&generations, old);
        pid_file_names(&pid_file, new_pid).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        tokio::time::timeout(BOUND, task)
            .await
            .unwrap_or_else(|_| panic!("the load did not stop: {}", tally.summary()))
            .unwrap();
    }

    stop_all(&mut generations, &pids).await;
    let stderr = generations.stderr();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        stderr.matches("shutdown triggered by a handover").count(),
        UPGRADES,
        "{stderr}"
    );
    assert_eq!(
        tally.failures(),
        0,
        "requests lost across the upgrades: {}",
        tally.summary()
    );
    let served_by = tally.pids.lock().unwrap().clone();
    assert_eq!(
        served_by,
        pids.iter().copied().collect(),
        "every generation served: {}",
        tally.summary()
    );
    assert!(
        !pid_file.exists(),
        "the last process's final stop removes its PID file"
    );
    // Each generation that handed over said goodbye to the stream and the WebSocket it
    // held, and both came back to the next one.
    assert_eq!(
        sse_goodbyes.load(Ordering::Relaxed),
        UPGRADES,
        "SSE goodbyes"
    );
    assert_eq!(
        ws_goodbyes.load(Ordering::Relaxed),
        UPGRADES,
        "WebSocket 1001s"
    );
    // Reported: quick requests' p99 before the first upgrade and across the upgrades.
    let first_upgrade = first_upgrade.unwrap();
    let p99 = |mut latencies: Vec<Duration>| {
        latencies.sort();
        latencies
            .get(latencies.len() * 99 / 100)
            .copied()
            .unwrap_or_default()
    };
    let (steady, upgrading): (Vec<_>, Vec<_>) = tally
        .latencies
        .lock()
        .unwrap()
        .iter()
        .partition(|(started, _)| *started < first_upgrade);
    let steady = p99(steady.into_iter().map(|(_, l)| l).collect());
    let upgrading = p99(upgrading.into_iter().map(|(_, l)| l).collect());
    eprintln!(
        "{UPGRADES} upgrades under load: {}; SSE and WebSocket reconnected after each \
         goodbye; p99 {steady:?} steady, {upgrading:?} across the upgrades",
        tally.summary()
    );
}

fn read_pid_file(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Serves a tiny app on an inherited-or-bound listener, in this process.
async fn serve_here(
    upgrader: &Upgrader,
    shutdown: &Shutdown,
) -> (
    SocketAddr,
    std::os::fd::OwnedFd,
    tokio::task::JoinHandle<Result<httpdown::Report, httpdown::Error>>,
) {
    let listener = upgrader.tcp_listener("http", "127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fd = std::os::fd::AsFd::as_fd(&listener)
        .try_clone_to_owned()
        .unwrap();
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "here" }));
    let server = tokio::spawn(httpdown::serve(listener, app, shutdown).into_future());
    upgrader.ready().unwrap();
    (addr, fd, server)
}

async fn get_here(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /?duration=0s HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    text
}

/// B52: a new process that exits, or that is not ready in time, is stopped and reaped;
/// this process keeps serving; the errors are typed; one upgrade at a time; and the next
/// upgrade, to a real new generation, works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upgrade_rolls_back_and_the_next_one_works() {
    let shutdown = Shutdown::builder()
        .stop_timeout(Duration::from_secs(5))
        .build();
    let exits = Upgrader::builder()
        .program("sh")
        .args(["-c", "exit 3"])
        .build(&shutdown)
        .unwrap();
    let (addr, socket, server) = serve_here(&exits, &shutdown).await;
    match exits.upgrade().await {
        Err(UpgradeError::Exited { status, .. }) => assert_eq!(status.code(), Some(3)),
        other => panic!("expected Exited, got {other:?}"),
    }
    assert!(get_here(addr).await.ends_with("here"), "still serving");
    assert!(!shutdown.is_triggered());
    assert_eq!(exits.failed_upgrades(), 1);

    // A process that never says it is ready, and ignores SIGTERM: killed at the timeout.
    let hangs = Upgrader::builder()
        .program("sh")
        .args(["-c", "trap '' TERM; exec sleep 60"])
        .timeout(Duration::from_millis(500))
        .build(&shutdown)
        .unwrap();
    hangs.add_listener("http", &socket).unwrap();
    let (first, second) = tokio::join!(hangs.upgrade(), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        hangs.upgrade().await
    });
    assert!(
        matches!(second, Err(UpgradeError::InProgress)),
        "one upgrade at a time: {second:?}"
    );
    let pid = match first {
        Err(UpgradeError::NotReady { pid, timeout }) => {
            assert_eq!(timeout, Duration::from_millis(500));
            pid
        }
        other => panic!("expected NotReady, got {other:?}"),
    };
    assert!(gone(pid), "the hung process was killed and reaped");
    assert!(get_here(addr).await.ends_with("here"), "still serving");

    // The real next generation: the demo, taking the socket named "http".
    let upgrades = Upgrader::builder()
        .program(demo_binary())
        .args(["--addr", "127.0.0.1:1"])
        .build(&shutdown)
        .unwrap();
    upgrades.add_listener("http", &socket).unwrap();
    drop(socket);
    let new_pid = upgrades.upgrade().await.expect("upgrade to the demo");
    let reaper = Reaper::default();
    reaper.watch(new_pid);
    assert!(shutdown.is_handover());
    let report = tokio::time::timeout(BOUND, server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(report.outcome(), httpdown::Outcome::Drained);
    let text = get_here(addr).await;
    assert!(
        text.contains(&format!("with pid {new_pid}")),
        "the demo serves the address now: {text}"
    );
    kill(new_pid, "TERM");
    wait_gone(new_pid).await;
}

/// B50: a `LISTEN_FDS` without `LISTEN_PID` is refused with a message that says what to
/// do (the sockets may be another process's).
#[tokio::test]
async fn listen_fds_without_listen_pid_is_a_clear_error() {
    let output = Command::new(demo_binary())
        .args(["--addr", "127.0.0.1:0"])
        .env("LISTEN_FDS", "1")
        .env_remove("LISTEN_PID")
        .output();
    let output = tokio::time::timeout(BOUND, output).await.unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("LISTEN_PID"), "{stderr}");
}

/// B50 under `systemd-socket-activate` (Debian `systemd`): the demo serves the inherited
/// socket, prints its address, and a wrong socket type (a datagram socket) is a clear
/// error. Skipped, saying why, where the tool is missing.
#[tokio::test]
async fn socket_activation_serves_the_inherited_socket() {
    let Some(tool) = which("systemd-socket-activate") else {
        eprintln!("SKIPPED: systemd-socket-activate is not installed (Debian package systemd)");
        return;
    };
    let listen = free_address();
    let mut child = Command::new(&tool)
        .args(["-l", &listen, "--fdname=http"])
        .arg(demo_binary())
        .args(["--addr", "127.0.0.1:1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // systemd-socket-activate starts the program at the first connection, once it
    // listens itself.
    let text = tokio::time::timeout(BOUND, async {
        let mut stream = loop {
            match TcpStream::connect(&listen).await {
                Ok(stream) => break stream,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        stream
            .write_all(b"GET /?duration=0s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).await.unwrap();
        text
    })
    .await
    .unwrap();
    assert!(text.contains("slept 0s with pid"), "{text}");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .await
        .unwrap();
    assert!(
        line.starts_with(&format!("serving on http://{listen}/ with pid ")),
        "the inherited socket's address: {line:?}"
    );
    let _ = child.start_kill();
    let _ = child.wait().await;

    let output = Command::new(&tool)
        .args(["-l", &listen, "--datagram"])
        .arg(demo_binary())
        .kill_on_drop(true)
        .output();
    let mut child_output = tokio::spawn(output);
    // A datagram socket starts the program at the first datagram (sent until the tool
    // listens).
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let output = tokio::time::timeout(BOUND, async {
        loop {
            let _ = udp.send_to(b"x", &listen).await;
            tokio::select! {
                output = &mut child_output => break output,
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    })
    .await
    .unwrap()
    .unwrap()
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("is not a TCP or Unix stream socket"),
        "{stderr}"
    );
}

/// A loopback address whose port was free a moment ago, for a process that binds it
/// itself (port 0 would give each generation its own).
fn free_address() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// B54: what a `Type=notify-reload` unit hears, through a fake `NOTIFY_SOCKET`:
/// `READY=1` at start; at an upgrade `RELOADING=1` with `MONOTONIC_USEC`, the new
/// process's `MAINPID=` and `READY=1`, and no `STOPPING=1` from the old one; at a real
/// stop `STOPPING=1`, then `EXTEND_TIMEOUT_USEC` with a status while it drains.
#[cfg(feature = "systemd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_reloading_mainpid_and_stopping() {
    let path = scratch(&format!("notify-{}", rand_tag()));
    let socket = tokio::net::UnixDatagram::bind(&path).unwrap();
    let heard = Arc::new(Mutex::new(Vec::<String>::new()));
    let listening = {
        let heard = Arc::clone(&heard);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf).await {
                heard
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        })
    };
    let until_heard = |what: String| {
        let heard = Arc::clone(&heard);
        async move {
            tokio::time::timeout(BOUND, async {
                while !heard.lock().unwrap().iter().any(|m| m.contains(&what)) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("never heard {what:?}: {:?}", heard.lock().unwrap()));
        }
    };
    let (mut generations, addr, first) = Generations::start_with(
        &["--stop-timeout", "3s"],
        &[("NOTIFY_SOCKET", path.to_str().unwrap())],
    )
    .await;
    let reaper = Reaper::default();
    reaper.watch(first);
    until_heard("READY=1".into()).await;

    kill(first, "HUP");
    let (_, second) = generations.next().await;
    reaper.watch(second);
    until_heard(format!("MAINPID={second}\nREADY=1\nSTATUS=upgraded")).await;
    wait_gone(first).await;
    {
        let heard = heard.lock().unwrap();
        assert!(
            heard
                .iter()
                .any(|m| m.starts_with("RELOADING=1\nMONOTONIC_USEC=")),
            "{heard:?}"
        );
        assert!(
            heard
                .iter()
                .any(|m| *m == format!("MAINPID={second}\nREADY=1\n")),
            "the new process says it is the main one: {heard:?}"
        );
        assert!(
            !heard.iter().any(|m| m.contains("STOPPING=1")),
            "a handover is no stop: {heard:?}"
        );
    }

    // A request in flight keeps the real stop draining for a while.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /?duration=1500ms HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut first_line = [0u8; 12];
    slow.read_exact(&mut first_line).await.unwrap();
    kill(second, "TERM");
    until_heard("STOPPING=1".into()).await;
    until_heard(
        "EXTEND_TIMEOUT_USEC=3000000\nSTATUS=draining: 1 connections, 1 requests in flight".into(),
    )
    .await;
    wait_gone(second).await;
    listening.abort();
}

/// B56: the same upgrades in `SO_REUSEPORT` mode (each generation binds its own socket):
/// nothing refused, reset or lost. With `net.ipv4.tcp_migrate_req = 0` (the default) a
/// few connects reach the closing socket and wait for their SYN retransmit; they are
/// counted and reported, never failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuse_port_upgrades_lose_nothing() {
    let listen = free_address();
    let (mut generations, addr, first_pid) =
        Generations::start(&["--reuse-port", "--addr", &listen]).await;
    let reaper = Reaper::default();
    reaper.watch(first_pid);
    let load = Load::start(addr, 6);
    let mut pids = vec![first_pid];
    upgrade(
        &mut generations,
        addr,
        &mut pids,
        &reaper,
        3,
        Duration::from_millis(500),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let tally = load.stop().await;
    stop_all(&mut generations, &pids).await;
    let stderr = generations.stderr();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_all_served(&tally, &pids);
    // Connects that waited for their SYN retransmit (tcp_migrate_req = 0), reported.
    let slow_connects = tally
        .latencies
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, latency)| *latency > Duration::from_millis(500))
        .count();
    let migrate = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req").unwrap_or_default();
    eprintln!(
        "SO_REUSEPORT upgrades (tcp_migrate_req = {}): {}; requests over 500 ms: {slow_connects}",
        migrate.trim(),
        tally.summary()
    );
}

/// Issue 14's slow start-up: a new generation that takes 1 s to start (`--startup-delay`)
/// stalls nothing: the old one serves every request meanwhile (the new one holds the
/// sockets but accepts only once ready), nothing is lost, and no request waits for the
/// start-up. Also: the last generation holds as many descriptors as the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_start_up_stalls_nothing_and_leaks_no_descriptor() {
    let (mut generations, addr, first_pid) = Generations::start(&["--startup-delay", "1s"]).await;
    let reaper = Reaper::default();
    reaper.watch(first_pid);
    let fds_at_start = open_fds(first_pid);
    let load = Load::start(addr, 4);
    let mut pids = vec![first_pid];
    let took = upgrade(
        &mut generations,
        addr,
        &mut pids,
        &reaper,
        2,
        Duration::from_millis(300),
    )
    .await;
    assert!(
        took.iter().all(|took| *took >= Duration::from_secs(1)),
        "a new generation was ready before its start-up ended: {took:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let tally = load.stop().await;
    let last = *pids.last().unwrap();
    // The clients are gone; the server's side of their connections closes at once.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let fds_at_end = open_fds(last);
    kill(last, "TERM");
    wait_gone(last).await;

    assert_all_served(&tally, &pids);
    let mut latencies: Vec<Duration> = tally
        .latencies
        .lock()
        .unwrap()
        .iter()
        .map(|(_, latency)| *latency)
        .collect();
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    let max = *latencies.last().unwrap();
    assert!(
        max < Duration::from_millis(900),
        "a request waited for the new generation's start-up: max {max:?}, p99 {p99:?}"
    );
    assert_eq!(
        fds_at_end, fds_at_start,
        "descriptors of the last generation vs the first"
    );
    eprintln!(
        "slow start-up: {}; p99 {p99:?}, max {max:?}; fds {fds_at_start} -> {fds_at_end}",
        tally.summary()
    );
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| dir.count())
        .unwrap_or_else(|e| panic!("fds of {pid}: {e}"))
}

/// B50 with B51: a demo started by `systemd-socket-activate` upgrades like any other: 5
/// upgrades under load, nothing refused, reset or lost, every generation on the activated
/// socket. Skipped, saying why, where the tool is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activated_demo_upgrades_under_load() {
    const UPGRADES: usize = 5;
    let Some(tool) = which("systemd-socket-activate") else {
        eprintln!("SKIPPED: systemd-socket-activate is not installed (Debian package systemd)");
        return;
    };
    let listen = free_address();
    let mut command = Command::new(&tool);
    command
        .args(["-l", &listen, "--fdname=http"])
        .arg(demo_binary())
        .args(["--addr", "127.0.0.1:1"]);
    let mut generations = Generations::spawn(command);
    // The tool runs the demo at the first connection.
    let addr: SocketAddr = listen.parse().unwrap();
    tokio::time::timeout(BOUND, async {
        while TcpStream::connect(addr).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the tool listens");
    let (first_addr, first_pid) = generations.next().await;
    assert_eq!(first_addr, addr, "the demo serves the activated socket");
    let reaper = Reaper::default();
    reaper.watch(first_pid);
    let load = Load::start(addr, 4);
    let mut pids = vec![first_pid];
    upgrade(
        &mut generations,
        addr,
        &mut pids,
        &reaper,
        UPGRADES,
        Duration::from_millis(300),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let tally = load.stop().await;
    let last = *pids.last().unwrap();
    kill(last, "TERM");
    wait_gone(last).await;
    assert_all_served(&tally, &pids);
    eprintln!("activated, {UPGRADES} upgrades: {}", tally.summary());
}
