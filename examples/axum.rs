//! `GracefulLayer` with plain `axum::serve`: the layer alone bounds the shutdown.
//!
//! ```text
//! cargo run --example axum
//! curl -N http://127.0.0.1:3000/stream   # an endless stream
//! kill -TERM <pid>                        # axum alone would wait forever; here the
//!                                         # stream is cut at the 5 s stop deadline
//! ```

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::routing::get;
use axum::Router;
use futures_util::stream;
use httpdown::{Drain, Shutdown};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter("info")
        .init();

    let shutdown = Shutdown::builder()
        .stop_timeout(Duration::from_secs(5))
        .kill_timeout(Duration::from_secs(1))
        .build();
    shutdown.trigger_on_signals()?;

    let app = Router::new()
        .route("/", get(|| async { "hello\n" }))
        .route(
            "/phase",
            get(|drain: Drain| async move { format!("{}\n", drain.phase()) }),
        )
        .route("/stream", get(endless))
        .layer(shutdown.layer());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}/", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.drain_started())
        .await?;
    // axum has returned: every connection closed. The report says how.
    let report = shutdown.wait().await;
    eprintln!("{report}");
    Ok(())
}

/// A stream that never ends on its own.
async fn endless() -> Body {
    let ticks = stream::unfold(0u64, |n| async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        Some((
            Ok::<_, Infallible>(Bytes::from(format!("tick {n}\n"))),
            n + 1,
        ))
    });
    Body::from_stream(ticks)
}
