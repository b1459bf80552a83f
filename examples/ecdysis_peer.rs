//! The peer of the restart benchmark (`benches/restart.sh`): a hello-world hyper server
//! that upgrades itself on SIGHUP with the `ecdysis` crate, as its users run it.
//!
//! ```text
//! cargo run --release --example ecdysis_peer -- --addr 127.0.0.1:8080
//! kill -HUP <pid>     # a new process takes the socket over; this one drains and exits
//! ```
//!
//! On start it prints `serving on http://ADDR/ with pid PID`, like the demo. Every
//! request gets `200 hello from pid PID`. The connections are served by hyper-util's
//! `auto::Builder` and drained with its `GracefulShutdown` (keep-alive switched off,
//! HTTP/2 GOAWAY) once ecdysis reports the upgrade, for at most `--drain-timeout`.
//! `--startup-delay` sleeps between taking the socket and telling the old process it is
//! ready, as an application that initializes after it binds. Unix only.

#[cfg(unix)]
mod peer {
    use std::convert::Infallible;
    use std::io::Write;
    use std::net::SocketAddr;
    use std::time::Duration;

    use clap::Parser;
    use ecdysis::tokio_ecdysis::{SignalKind, StopOnShutdown, TokioEcdysisBuilder};
    use futures_util::StreamExt;
    use http_body_util::Full;
    use hyper::body::{Bytes, Incoming};
    use hyper::{Request, Response};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto;
    use hyper_util::server::graceful::GracefulShutdown;

    /// A hello-world server that upgrades itself on SIGHUP with `ecdysis`.
    #[derive(Debug, Parser)]
    #[command(name = "ecdysis_peer")]
    struct Args {
        /// Address to listen on (the same on every generation: the arguments are reused).
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: SocketAddr,
        /// How long an old process waits for its connections after an upgrade.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        drain_timeout: Duration,
        /// Sleep between taking the socket and reporting ready.
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        startup_delay: Duration,
    }

    async fn hello(_: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
        let body = format!("hello from pid {}\n", std::process::id());
        Ok(Response::new(Full::new(Bytes::from(body))))
    }

    pub(crate) async fn main() -> Result<(), Box<dyn std::error::Error>> {
        let args = Args::parse();
        let mut builder = TokioEcdysisBuilder::new(SignalKind::hangup())?;
        builder.stop_on_signal(SignalKind::terminate())?;
        let mut connections =
            builder.build_listen_tcp(StopOnShutdown::Yes, args.addr, |socket, addr| {
                socket.set_reuse_address(true)?;
                socket.bind(&addr.into())?;
                socket.listen(1024)?;
                Ok(socket.into())
            })?;
        let drain_timeout = args.drain_timeout;
        let serve = async move {
            let graceful = GracefulShutdown::new();
            let http = auto::Builder::new(TokioExecutor::new());
            // The stream of connections ends once ecdysis stops listening.
            while let Some(accepted) = connections.next().await {
                let Ok(stream) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let connection = http
                    .serve_connection_with_upgrades(
                        TokioIo::new(stream),
                        hyper::service::service_fn(hello),
                    )
                    .into_owned();
                tokio::spawn(graceful.watch(connection));
            }
            if tokio::time::timeout(drain_timeout, graceful.shutdown())
                .await
                .is_err()
            {
                eprintln!("pid {}: drain timed out", std::process::id());
            }
        };
        let serve = tokio::spawn(serve);
        tokio::time::sleep(args.startup_delay).await;
        let (_ecdysis, upgraded) = builder.ready()?;
        {
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "serving on http://{}/ with pid {}",
                args.addr,
                std::process::id()
            )?;
            out.flush()?;
        }
        let reason = upgraded.await;
        eprintln!("pid {}: {reason:?}, draining", std::process::id());
        serve.await?;
        Ok(())
    }
}

#[cfg(unix)]
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    peer::main().await
}

#[cfg(not(unix))]
fn main() {
    eprintln!("ecdysis_peer runs on Unix only");
}
