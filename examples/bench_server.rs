//! The hello-world server of the load benchmark (`benches/load.sh`).
//!
//! ```text
//! cargo run --release --example bench_server -- --server httpdown --addr 127.0.0.1:0
//! ```
//!
//! Prints the bound address on its first line of standard output, then serves
//! `GET /` -> `Hello, World!` over HTTP/1.1 and HTTP/2 (h2c, prior knowledge) until
//! SIGTERM or SIGINT, which shut it down cleanly. The same axum `Router` is served by one of:
//!
//! - `httpdown`: `httpdown::serve` (which counts every request itself);
//! - `axum`: `axum::serve` with `TCP_NODELAY` set on every accepted socket and
//!   `with_graceful_shutdown`, as users run it;
//! - `axum-layer`: the same `axum::serve`, with `Shutdown::layer` added to the router
//!   (the cost of the layer alone).

use std::io::Write;
use std::net::SocketAddr;

use axum::routing::get;
use axum::serve::ListenerExt;
use axum::Router;
use clap::{Parser, ValueEnum};

/// Which server serves the router.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Server {
    /// `httpdown::serve`.
    Httpdown,
    /// `axum::serve` with `TCP_NODELAY` and `with_graceful_shutdown`.
    Axum,
    /// `axum::serve` with `TCP_NODELAY`, `with_graceful_shutdown` and the layer.
    AxumLayer,
}

/// Serves a hello-world router for load tests.
#[derive(Debug, Parser)]
#[command(name = "bench_server")]
struct Args {
    /// Which server to run.
    #[arg(long, value_enum)]
    server: Server,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: SocketAddr,
    /// Tokio worker threads (default: one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// For `httpdown`: turn off the header-read timeout (to measure what it costs).
    #[arg(long)]
    no_header_read_timeout: bool,
}

fn app() -> Router {
    Router::new().route("/", get(|| async { "Hello, World!" }))
}

async fn run(args: Args) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", listener.local_addr()?)?;
    out.flush()?;
    drop(out);

    // SIGTERM/SIGINT end every server cleanly (so a profiler writes its results).
    let shutdown = httpdown::Shutdown::new();
    shutdown
        .trigger_on_signals()
        .map_err(std::io::Error::other)?;
    match args.server {
        Server::Httpdown => {
            let timeout =
                (!args.no_header_read_timeout).then_some(httpdown::DEFAULT_HEADER_READ_TIMEOUT);
            httpdown::serve(listener, app(), &shutdown)
                .header_read_timeout(timeout)
                .await
                .map_err(std::io::Error::other)?;
        }
        Server::Axum => {
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(listener, app())
                .with_graceful_shutdown(shutdown.drain_started())
                .await?;
        }
        Server::AxumLayer => {
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(listener, app().layer(shutdown.layer()))
                .with_graceful_shutdown(shutdown.drain_started())
                .await?;
        }
    }
    Ok(())
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(workers) = args.workers {
        runtime.worker_threads(workers);
    }
    runtime.build()?.block_on(run(args))
}
