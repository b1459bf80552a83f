//! The demo server: a slow handler and a graceful shutdown on SIGTERM or SIGINT.
//!
//! ```text
//! cargo run --example httpdown_example -- --addr 127.0.0.1:8080 --stop-timeout 10s --kill-timeout 1s --drain-delay 0s
//! cargo run --example httpdown_example -- --tls-self-signed      # HTTPS (or --tls-cert/--tls-key)
//! curl 'http://127.0.0.1:8080/?duration=20s'   # in a second terminal
//! kill -TERM <pid>                              # in a third: the request still completes
//! ```
//!
//! Routes:
//! - `GET /healthz`: readiness, `200 ready` until the signal, `503 draining` from then on
//!   (during `--drain-delay` too).
//! - `GET /sse`: Server-Sent Events, `data: tick N` every 100 ms; at drain start an
//!   `event: shutdown` with `data: bye`, then the stream ends cleanly.
//! - `GET /ws`: a WebSocket echo server; at drain start it sends a Close frame with code
//!   1001 and ends once the client answers (or at the stop deadline).
//! - `GET /download?size=N`: N bytes (`x`s ending in a newline), streamed in 64 KiB
//!   chunks as fast as the client takes them: a response whose length is set by the
//!   network (a slow or vanished client), not by the handler.
//! - any other path, any method: `?duration=D` writes `going to sleep D with pid PID`,
//!   sleeps D, then writes `slept D with pid PID` (a request body is read and discarded
//!   first).
//!
//! Zero-downtime restart: `kill -HUP <pid>` runs the executable again with the same
//! arguments and the listening socket; the new process prints its own `serving on` line,
//! and only then does this one drain. Started by systemd socket activation (for example
//! `systemd-socket-activate -l 127.0.0.1:8080 target/debug/examples/httpdown_example`),
//! it serves the inherited socket.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::IntoFuture;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::Query;
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use clap::Parser;
use futures_util::{stream, Stream, StreamExt};
use httpdown::axum::GracefulWebSocket;
use httpdown::restart::Upgrader;
use httpdown::tls::rustls::pki_types::PrivatePkcs8KeyDer;
use httpdown::tls::rustls::ServerConfig;
use httpdown::tls::TlsListener;
use httpdown::{Drain, IdleClose, Shutdown};
use tokio::signal::unix::SignalKind;

/// Serves a slow handler and shuts down gracefully on SIGTERM or SIGINT.
#[derive(Debug, Parser)]
#[command(name = "httpdown_example")]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Time from drain start until what is left is force-closed (e.g. 250ms, 10s, 1m).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    stop_timeout: Duration,
    /// Time after the stop deadline before giving up on what is left.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    kill_timeout: Duration,
    /// Time after the signal during which the server still accepts and serves while
    /// `/healthz` answers 503, before the drain starts.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    drain_delay: Duration,
    /// Serve HTTPS with this PEM certificate chain (needs --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key for --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve HTTPS with a certificate for localhost and 127.0.0.1 generated at start.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    tls_self_signed: bool,
    /// When idle keep-alive connections close during the drain: `immediately`,
    /// `min-idle-age=DUR` or `after-next-request=DUR` (absent: the library's defaults).
    #[arg(long, value_parser = parse_idle_close)]
    idle_close: Option<IdleClose>,
    /// How long a new process started by SIGHUP has to be ready before it is killed and
    /// this one keeps serving.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    upgrade_timeout: Duration,
    /// Write the serving process's pid to this file (atomically).
    #[arg(long, value_name = "PATH")]
    pid_file: Option<PathBuf>,
    /// Upgrade with SO_REUSEPORT: each generation binds its own socket on the address
    /// instead of passing it on (see net.ipv4.tcp_migrate_req).
    #[arg(long)]
    reuse_port: bool,
    /// Wait this long before serving, as an application with a slow start-up would (a
    /// new generation is ready only after it).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    startup_delay: Duration,
    /// Expect a PROXY protocol header (v1 or v2, HAProxy's `send-proxy` or
    /// `send-proxy-v2`) on every connection, before TLS if any; connections without one
    /// are closed.
    #[arg(long)]
    proxy_protocol: bool,
}

fn parse_idle_close(value: &str) -> Result<IdleClose, String> {
    let duration = |d: &str| humantime::parse_duration(d).map_err(|e| e.to_string());
    match value.split_once('=') {
        None if value == "immediately" => Ok(IdleClose::Immediately),
        Some(("min-idle-age", d)) => duration(d).map(IdleClose::MinIdleAge),
        Some(("after-next-request", d)) => duration(d).map(IdleClose::AfterNextRequest),
        _ => Err(format!(
            "{value:?}: expected immediately, min-idle-age=DUR or after-next-request=DUR"
        )),
    }
}

/// The TLS configuration the flags ask for, if any.
fn tls_config(args: &Args) -> Result<Option<Arc<ServerConfig>>, String> {
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        return httpdown::tls::config_from_pem_files(cert, key)
            .map(Some)
            .map_err(|e| e.to_string());
    }
    if !args.tls_self_signed {
        return Ok(None);
    }
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let certified = rcgen::generate_simple_self_signed(names)
        .map_err(|e| format!("cannot generate a certificate: {e}"))?;
    let key = PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
    httpdown::tls::config(vec![certified.cert.der().clone()], key.into())
        .map(Some)
        .map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let tls = match tls_config(&args) {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("httpdown_example: {e}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // A closed stderr (a log collector gone) must not turn every log line into a
        // panic: the lines are dropped, and the shutdown goes on.
        .log_internal_errors(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    let shutdown = Shutdown::builder()
        .stop_timeout(args.stop_timeout)
        .kill_timeout(args.kill_timeout)
        .drain_delay(args.drain_delay)
        .build();
    // First: it takes the sockets of a previous generation or of systemd, if any.
    let mut upgrader = Upgrader::builder()
        .timeout(args.upgrade_timeout)
        .reuse_port(args.reuse_port);
    if let Some(path) = &args.pid_file {
        upgrader = upgrader.pid_file(path);
    }
    let upgrader = match upgrader.build(&shutdown) {
        Ok(upgrader) => upgrader,
        Err(e) => {
            eprintln!("httpdown_example: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Before the start line: a signal sent as soon as the line is read is handled.
    let signals = shutdown
        .trigger_on_signals()
        .and_then(|()| upgrader.upgrade_on_signal(SignalKind::hangup()));
    if let Err(e) = signals {
        eprintln!("httpdown_example: {e}");
        return ExitCode::FAILURE;
    }
    let listener = match upgrader.tcp_listener("http", args.addr).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("httpdown_example: {e}");
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().unwrap_or(args.addr);
    let scheme = if tls.is_some() { "https" } else { "http" };
    let app = Router::new()
        .route("/sse", get(sse))
        .route("/ws", get(ws))
        .route("/download", get(download))
        .route_service("/healthz", shutdown.readiness())
        .fallback(sleep);
    // Built before the start line: a signal sent as soon as the line is read drains this
    // server instead of finishing the shutdown before it starts.
    let idle_close = args.idle_close;
    // One future whatever the listener, with the `--idle-close` asked for.
    fn start<L: httpdown::Listener>(
        serve: httpdown::Serve<L, Router>,
        idle_close: Option<IdleClose>,
    ) -> httpdown::ServeFuture
    where
        Router: httpdown::MakeService<L>,
    {
        match idle_close {
            Some(idle_close) => serve.idle_close(idle_close).into_future(),
            None => serve.into_future(),
        }
    }
    use httpdown::proxy_protocol::ProxyProtocolListener;
    let serving = match (tls, args.proxy_protocol) {
        (Some(config), false) => start(
            httpdown::serve(TlsListener::new(listener, config), app, &shutdown),
            idle_close,
        ),
        (Some(config), true) => {
            // The header comes first, then the TLS handshake.
            let listener = TlsListener::new(ProxyProtocolListener::new(listener), config);
            start(httpdown::serve(listener, app, &shutdown), idle_close)
        }
        (None, false) => start(httpdown::serve(listener, app, &shutdown), idle_close),
        (None, true) => start(
            httpdown::serve(ProxyProtocolListener::new(listener), app, &shutdown),
            idle_close,
        ),
    };
    if !args.startup_delay.is_zero() {
        tokio::time::sleep(args.startup_delay).await;
    }
    let mut stdout = std::io::stdout();
    let _ = writeln!(
        stdout,
        "serving on {scheme}://{addr}/ with pid {}",
        std::process::id()
    );
    let _ = stdout.flush();
    // Accepting from here: a previous generation drains now.
    if let Err(e) = upgrader.ready() {
        eprintln!("httpdown_example: {e}");
    }
    let served = serving.await;
    match served {
        Ok(report) => {
            let _ = writeln!(std::io::stderr(), "{report}");
            if report.is_complete() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("httpdown_example: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `GET /?duration=D`: writes `going to sleep D with pid PID`, flushes, sleeps D, then
/// writes `slept D with pid PID`.
async fn sleep(Query(query): Query<HashMap<String, String>>, body: Body) -> Response {
    // Read and discard the body first, so the connection can be reused after the answer.
    let mut body = body.into_data_stream();
    while let Some(Ok(_)) = body.next().await {}
    let raw = query.get("duration").cloned().unwrap_or_default();
    let duration = match humantime::parse_duration(&raw) {
        Ok(duration) => duration,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("invalid duration {raw:?}: {e}\n"),
            )
                .into_response()
        }
    };
    let pid = std::process::id();
    let first = Bytes::from(format!("going to sleep {raw} with pid {pid}\n"));
    let last = Bytes::from(format!("slept {raw} with pid {pid}\n"));
    let body =
        stream::once(async move { Ok::<_, Infallible>(first) }).chain(stream::once(async move {
            if !duration.is_zero() {
                tokio::time::sleep(duration).await;
            }
            Ok(last)
        }));
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(body),
    )
        .into_response()
}

/// `GET /download?size=N`: N bytes in 64 KiB chunks, the last one a newline.
async fn download(Query(query): Query<HashMap<String, String>>) -> Response {
    const CHUNK: usize = 64 * 1024;
    let raw = query.get("size").map(String::as_str).unwrap_or_default();
    let size: usize = match raw.parse() {
        Ok(size) if size > 0 => size,
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                format!("invalid size {raw:?}: a number of bytes above 0\n"),
            )
                .into_response()
        }
    };
    let full = Bytes::from(vec![b'x'; CHUNK]);
    let chunks = stream::unfold(size, move |left| {
        let full = full.clone();
        async move {
            if left == 0 {
                return None;
            }
            let n = left.min(CHUNK);
            let mut chunk = full.slice(..n);
            if n == left {
                let mut last = chunk.to_vec();
                last[n - 1] = b'\n';
                chunk = Bytes::from(last);
            }
            Some((Ok::<_, Infallible>(chunk), left - n))
        }
    });
    (
        [
            (header::CONTENT_TYPE, "text/plain".to_string()),
            (header::CONTENT_LENGTH, size.to_string()),
        ],
        Body::from_stream(chunks),
    )
        .into_response()
}

/// `GET /sse`: `data: tick N` every 100 ms; at drain start `event: shutdown` / `data: bye`,
/// then the end of the stream.
async fn sse(drain: Drain) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let ticks = stream::unfold(0u64, |n| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Some((Ok(Event::default().data(format!("tick {n}"))), n + 1))
    });
    let bye = Event::default().event("shutdown").data("bye");
    Sse::new(drain.until_drain(ticks).with_final(Ok(bye)))
}

/// `GET /ws`: echoes text and binary messages; at drain start, closes with 1001.
async fn ws(upgrade: WebSocketUpgrade, drain: Drain) -> Response {
    upgrade.on_upgrade(move |socket| async move {
        let mut socket = GracefulWebSocket::new(socket, drain);
        while let Some(Ok(message)) = socket.recv().await {
            if let Message::Text(_) | Message::Binary(_) = message {
                if socket.send(message).await.is_err() {
                    break;
                }
            }
        }
    })
}
