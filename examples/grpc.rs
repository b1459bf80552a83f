//! gRPC with tonic, served by `httpdown::serve` over h2c.
//!
//! ```text
//! cargo run --example grpc
//! grpcurl -plaintext 127.0.0.1:50051 grpc.health.v1.Health/Check
//! grpcurl -plaintext 127.0.0.1:50051 grpc.health.v1.Health/Watch   # an endless stream
//! kill -TERM <pid>
//! ```
//!
//! At SIGTERM the health service reports NOT_SERVING (during the 2 s drain delay, load
//! balancers stop sending calls), calls in flight complete, and a call still running at
//! the stop deadline (the `Watch` stream here) ends with `grpc-status: 14` (UNAVAILABLE),
//! which gRPC retry policies retry.

use std::time::Duration;

use httpdown::Shutdown;
use tonic_health::ServingStatus;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    let shutdown = Shutdown::builder()
        .drain_delay(Duration::from_secs(2))
        .stop_timeout(Duration::from_secs(5))
        .kill_timeout(Duration::from_secs(1))
        .build();
    shutdown.trigger_on_signals()?;

    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    // NOT_SERVING from the trigger of a real stop on, while requests are still served (a
    // handover to a new generation of the process keeps the address served).
    let triggered = shutdown.triggered();
    let stopping = shutdown.clone();
    tokio::spawn(async move {
        triggered.await;
        if stopping.is_handover() {
            return;
        }
        reporter
            .set_service_status("", ServingStatus::NotServing)
            .await;
    });

    // Any tonic service works the same; `Routes` gathers them into one app.
    let app = tonic::service::Routes::new(health).into_axum_router();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:50051").await?;
    println!(
        "gRPC on http://{}/ with pid {}",
        listener.local_addr()?,
        std::process::id()
    );
    let report = httpdown::serve(listener, app, &shutdown).await?;
    eprintln!("{report}");
    Ok(())
}
