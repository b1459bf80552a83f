//! Shutdown latency and memory per idle connection, `httpdown::serve` next to
//! `axum::serve` (`with_graceful_shutdown`, `TCP_NODELAY` on accepted sockets), on the same
//! axum `Router`. `bash benches/run.sh` runs every mode and writes BENCHMARKS.md.
//!
//! ```text
//! cargo run --release --example bench_shutdown -- idle --conns 100,1000,10000 --reps 5
//! cargo run --release --example bench_shutdown -- last-response --reps 10
//! cargo run --release --example bench_shutdown -- force --in-flight 100,1000 --reps 5
//! cargo run --release --example bench_shutdown -- memory --server httpdown --conns 10000
//! ```
//!
//! The servers run on a two-worker tokio runtime. The clients are plain blocking sockets,
//! so an idle client costs nothing: the slow request's client is a thread of the same
//! process; the many idle or hanging connections are held by a child process (this
//! program with the `client` subcommand), so each process needs only one descriptor per
//! connection.
//! Each mode prints one tab-separated line per measurement on standard output:
//!
//! - `idle KIND N MS`: N idle keep-alive connections (each has completed one request),
//!   time from the trigger until the server's future returned;
//! - `last KIND MS_CLIENT MS_HANDLER`: one slow request in flight at the trigger; time
//!   from the client reading the last byte of its response (and from the handler
//!   returning) until the server's future returned, negative if it returned first;
//! - `force KIND N MS_RETURN MS_CLOSED`: N requests that never finish; time past the stop
//!   deadline until the server's future returned, and until every client saw its
//!   connection closed;
//! - `mem KIND N BASE_KB AFTER_KB BYTES_PER_CONN`: VmRSS before and after opening N idle
//!   connections. Run it in a fresh process per measurement.
//!
//! Raise the open-file limit first (`ulimit -n 65536`, or as far as the hard limit
//! allows): each process needs a little more than one descriptor per connection.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::serve::ListenerExt;
use axum::Router;
use clap::{Parser, Subcommand, ValueEnum};
use tokio::sync::oneshot;

/// Which server serves the router.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Kind {
    /// `httpdown::serve`, with the layer.
    Httpdown,
    /// `axum::serve` with `TCP_NODELAY` and `with_graceful_shutdown`.
    Axum,
    /// The same `axum::serve` with the layer, drained by `Shutdown::drain_started`.
    AxumLayer,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Httpdown => "httpdown",
            Kind::Axum => "axum",
            Kind::AxumLayer => "axum+layer",
        }
    }
}

/// Measures shutdown latency and memory per idle connection.
#[derive(Debug, Parser)]
#[command(name = "bench_shutdown")]
struct Args {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Trigger -> return with N idle keep-alive connections, both servers alternated.
    Idle {
        /// Numbers of idle connections, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "100,1000,10000")]
        conns: Vec<usize>,
        /// Repetitions of each case.
        #[arg(long, default_value_t = 5)]
        reps: usize,
    },
    /// Last response ending -> return, one slow request in flight at the trigger.
    LastResponse {
        /// Repetitions of each case.
        #[arg(long, default_value_t = 10)]
        reps: usize,
        /// How long the slow handler takes.
        #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
        slow: Duration,
    },
    /// Lateness of the force-close after the stop deadline, N requests in flight.
    Force {
        /// Requests in flight (one per connection) that never finish, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1000")]
        in_flight: Vec<usize>,
        /// Repetitions of each case.
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// The stop timeout.
        #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
        stop_timeout: Duration,
    },
    /// The client process the other modes start: opens and holds connections on
    /// commands read from standard input (`idle ADDR N`, `hang ADDR N`, `wait-closed`,
    /// `drop`), answering each with one line.
    Client,
    /// VmRSS per idle connection (one measurement: run it in a fresh process each time).
    Memory {
        /// Which server.
        #[arg(long, value_enum)]
        server: Kind,
        /// Number of idle connections.
        #[arg(long, default_value_t = 10_000)]
        conns: usize,
    },
}

static SLOW_STARTED: AtomicUsize = AtomicUsize::new(0);
static SLOW_RETURNED: Mutex<Option<Instant>> = Mutex::new(None);
static HANGING: AtomicUsize = AtomicUsize::new(0);

fn app(slow: Duration) -> Router {
    Router::new()
        .route("/", get(|| async { "Hello, World!" }))
        .route(
            "/slow",
            get(move || async move {
                SLOW_STARTED.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(slow).await;
                *SLOW_RETURNED.lock().unwrap() = Some(Instant::now());
                "slow"
            }),
        )
        .route(
            "/hang",
            get(|| async {
                HANGING.fetch_add(1, Ordering::SeqCst);
                std::future::pending::<()>().await;
                "never"
            }),
        )
}

/// A server running on the current runtime.
struct Running {
    addr: SocketAddr,
    trigger: Box<dyn FnOnce() + Send>,
    /// When the server's future returned.
    returned: oneshot::Receiver<Instant>,
}

async fn start(kind: Kind, stop_timeout: Duration, slow: Duration) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (done, returned) = oneshot::channel();
    let shutdown = httpdown::Shutdown::builder()
        .stop_timeout(stop_timeout)
        .kill_timeout(Duration::from_secs(1))
        .build();
    let trigger: Box<dyn FnOnce() + Send> = match kind {
        Kind::Httpdown => {
            let app = app(slow).layer(shutdown.layer());
            let sd = shutdown.clone();
            tokio::spawn(async move {
                let report = httpdown::serve(listener, app, &sd).await;
                let at = Instant::now();
                let report = report.expect("serve");
                eprintln!("httpdown: {report}");
                let _ = done.send(at);
            });
            Box::new(move || shutdown.trigger())
        }
        Kind::Axum => {
            let (stop, stopped) = oneshot::channel::<()>();
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            tokio::spawn(async move {
                axum::serve(listener, app(slow))
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await
                    .expect("axum::serve");
                let _ = done.send(Instant::now());
            });
            Box::new(move || {
                let _ = stop.send(());
            })
        }
        Kind::AxumLayer => {
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            let app = app(slow).layer(shutdown.layer());
            let drain = shutdown.drain_started();
            tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(drain)
                    .await
                    .expect("axum::serve");
                let _ = done.send(Instant::now());
            });
            Box::new(move || shutdown.trigger())
        }
    };
    Running {
        addr,
        trigger,
        returned,
    }
}

/// Reads one response with a `Content-Length` body.
fn read_response(stream: &mut TcpStream) -> io::Result<()> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| io::Error::other("no content-length"))?;
        if buf.len() >= end + 4 + length {
            return Ok(());
        }
    }
}

fn send(stream: &mut TcpStream, path: &str) -> io::Result<()> {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n")
}

/// Opens `n` connections, each having completed one request, and keeps them idle.
fn open_idle(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|i| {
            let mut stream = TcpStream::connect(addr)
                .unwrap_or_else(|e| panic!("connection {i}: {e} (raise `ulimit -n`?)"));
            stream.set_nodelay(true).unwrap();
            send(&mut stream, "/").unwrap();
            read_response(&mut stream).unwrap();
            stream
        })
        .collect()
}

/// The `client` subcommand: holds connections for the parent process.
fn client() {
    let mut held: Vec<TcpStream> = Vec::new();
    let mut out = io::stdout().lock();
    for line in io::stdin().lines() {
        let line = line.expect("stdin");
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["idle", addr, n] => held.extend(open_idle(addr.parse().unwrap(), n.parse().unwrap())),
            ["hang", addr, n] => {
                let addr: SocketAddr = addr.parse().unwrap();
                for _ in 0..n.parse::<usize>().unwrap() {
                    let mut stream = TcpStream::connect(addr).expect("connect");
                    send(&mut stream, "/hang").unwrap();
                    held.push(stream);
                }
            }
            ["wait-closed"] => {
                // The last read returns once every connection has been closed.
                let mut buf = [0u8; 1024];
                for mut stream in held.drain(..) {
                    stream
                        .set_read_timeout(Some(Duration::from_secs(30)))
                        .unwrap();
                    while let Ok(1..) = stream.read(&mut buf) {}
                }
            }
            ["drop"] => held.clear(),
            _ => panic!("unknown command {line:?}"),
        }
        writeln!(out, "ok").unwrap();
        out.flush().unwrap();
    }
}

/// A child process holding connections (see [`client`]).
struct Clients {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl Clients {
    fn spawn() -> Clients {
        let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
            .arg("client")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the client process");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        use tokio::io::AsyncBufReadExt;
        Clients {
            child,
            stdin,
            stdout: tokio::io::BufReader::new(stdout).lines(),
        }
    }

    /// Sends one command and waits for its answer.
    async fn run(&mut self, command: &str) {
        use tokio::io::AsyncWriteExt;
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .unwrap();
        self.stdin.flush().await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(120), self.stdout.next_line())
            .await
            .expect("the client answers within 120 s")
            .unwrap();
        assert_eq!(
            answer.as_deref(),
            Some("ok"),
            "client answer to {command:?}"
        );
    }

    async fn close(mut self) {
        drop(self.stdin);
        let _ = self.child.wait().await;
    }
}

/// Milliseconds from `from` to `to`, negative if `to` came first.
fn ms(from: Instant, to: Instant) -> f64 {
    match to.checked_duration_since(from) {
        Some(d) => d.as_secs_f64() * 1e3,
        None => -(from.duration_since(to).as_secs_f64() * 1e3),
    }
}

async fn returned_at(returned: oneshot::Receiver<Instant>) -> Instant {
    tokio::time::timeout(Duration::from_secs(120), returned)
        .await
        .expect("the server returns within 120 s")
        .expect("the server task reports")
}

async fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Both kinds, in A B order on even repetitions and B A on odd ones.
fn pair(rep: usize) -> [Kind; 2] {
    if rep % 2 == 0 {
        [Kind::Httpdown, Kind::Axum]
    } else {
        [Kind::Axum, Kind::Httpdown]
    }
}

const NEVER: Duration = Duration::from_secs(3600);

async fn idle(conns: &[usize], reps: usize) {
    let mut clients = Clients::spawn();
    for rep in 0..reps {
        for &n in conns {
            for kind in pair(rep) {
                let server = start(kind, NEVER, NEVER).await;
                let addr = server.addr;
                clients.run(&format!("idle {addr} {n}")).await;
                // Let every connection go back to idle.
                tokio::time::sleep(Duration::from_millis(100)).await;
                let Running {
                    trigger, returned, ..
                } = server;
                let t0 = Instant::now();
                trigger();
                let t1 = returned_at(returned).await;
                println!("idle\t{}\t{n}\t{:.3}", kind.name(), ms(t0, t1));
                clients.run("drop").await;
            }
        }
    }
    clients.close().await;
}

async fn last_response(reps: usize, slow: Duration) {
    for rep in 0..reps {
        for kind in pair(rep) {
            let server = start(kind, NEVER, slow).await;
            let addr = server.addr;
            let started = SLOW_STARTED.load(Ordering::SeqCst);
            *SLOW_RETURNED.lock().unwrap() = None;
            let client = tokio::task::spawn_blocking(move || {
                let mut stream = TcpStream::connect(addr).unwrap();
                stream.set_nodelay(true).unwrap();
                send(&mut stream, "/slow").unwrap();
                read_response(&mut stream).unwrap();
                let at = Instant::now();
                drop(stream);
                at
            });
            wait_for("the slow request", || {
                SLOW_STARTED.load(Ordering::SeqCst) > started
            })
            .await;
            (server.trigger)();
            let ended = client.await.unwrap();
            let at = returned_at(server.returned).await;
            let handler = SLOW_RETURNED.lock().unwrap().expect("the handler returned");
            println!(
                "last\t{}\t{:.3}\t{:.3}",
                kind.name(),
                ms(ended, at),
                ms(handler, at)
            );
        }
    }
}

async fn force(counts: &[usize], reps: usize, stop_timeout: Duration) {
    let mut clients = Clients::spawn();
    for (rep, &in_flight) in (0..reps).flat_map(|rep| counts.iter().map(move |n| (rep, n))) {
        let kinds = if rep % 2 == 0 {
            [Kind::Httpdown, Kind::AxumLayer]
        } else {
            [Kind::AxumLayer, Kind::Httpdown]
        };
        for kind in kinds {
            HANGING.store(0, Ordering::SeqCst);
            let server = start(kind, stop_timeout, NEVER).await;
            let addr = server.addr;
            clients.run(&format!("hang {addr} {in_flight}")).await;
            wait_for("every request in flight", || {
                HANGING.load(Ordering::SeqCst) == in_flight
            })
            .await;
            let t0 = Instant::now();
            (server.trigger)();
            let deadline = t0 + stop_timeout;
            // The client reads every connection to its end and answers once all are
            // closed (the answer's trip through the pipe is included).
            let closed = async {
                clients.run("wait-closed").await;
                Instant::now()
            };
            let (at, closed) = tokio::join!(returned_at(server.returned), closed);
            println!(
                "force\t{}\t{in_flight}\t{:.3}\t{:.3}",
                kind.name(),
                ms(deadline, at),
                ms(deadline, closed)
            );
        }
    }
    clients.close().await;
}

fn vm_rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

async fn memory(kind: Kind, conns: usize) {
    let server = start(kind, NEVER, NEVER).await;
    let addr = server.addr;
    // Warm up: one connection, one request, closed.
    tokio::task::spawn_blocking(move || drop(open_idle(addr, 1)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let base = vm_rss_kb();
    let mut clients = Clients::spawn();
    clients.run(&format!("idle {addr} {conns}")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = vm_rss_kb();
    let per_conn = (after.saturating_sub(base) * 1024) as f64 / conns as f64;
    println!(
        "mem\t{}\t{conns}\t{base}\t{after}\t{per_conn:.0}",
        kind.name()
    );
    clients.close().await;
}

fn main() {
    let args = Args::parse();
    if let Mode::Client = args.mode {
        return client();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        match args.mode {
            Mode::Idle { conns, reps } => idle(&conns, reps).await,
            Mode::LastResponse { reps, slow } => last_response(reps, slow).await,
            Mode::Force {
                in_flight,
                reps,
                stop_timeout,
            } => force(&in_flight, reps, stop_timeout).await,
            Mode::Memory { server, conns } => memory(server, conns).await,
            Mode::Client => unreachable!("handled before the runtime starts"),
        }
    });
}
