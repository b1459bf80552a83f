//! Helpers shared by the integration tests: a test app, raw HTTP/1 clients, an in-memory
//! listener for paused-time tests.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::IntoFuture;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::routing::get;
use axum::Router;
use futures_util::{stream, StreamExt};
use httpdown::{Error, Listener, Report, Shutdown};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

/// Upper bound for any single wait in a real-socket test.
pub const BOUND: Duration = Duration::from_secs(10);

/// The test app:
/// - `/` answers `hello` (with a `Content-Length`);
/// - `/slow?ms=N` streams `start\n`, waits N ms, then `end\n` (chunked);
/// - `/wait` answers `done` once the test calls `release.notify_one()`;
/// - `/stream` sends `tick\n` every 50 ms forever.
pub fn app(release: Arc<Notify>) -> Router {
    Router::new()
        .route("/", get(|| async { "hello" }))
        .route("/slow", get(slow))
        .route(
            "/wait",
            get(|State(release): State<Arc<Notify>>| async move {
                release.notified().await;
                "done"
            }),
        )
        .route("/stream", get(endless))
        .with_state(release)
}

async fn slow(Query(q): Query<HashMap<String, u64>>) -> Body {
    let ms = q.get("ms").copied().unwrap_or(0);
    let first = stream::once(async { Ok::<_, Infallible>(Bytes::from_static(b"start\n")) });
    let last = stream::once(async move {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(Bytes::from_static(b"end\n"))
    });
    Body::from_stream(first.chain(last))
}

async fn endless() -> Body {
    let ticks = stream::unfold((), |()| async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        Some((Ok::<_, Infallible>(Bytes::from_static(b"tick\n")), ()))
    });
    Body::from_stream(ticks)
}

/// A controller with `stop` as its stop timeout and a 1 s kill timeout.
pub fn shutdown(stop: Duration) -> Shutdown {
    Shutdown::builder()
        .stop_timeout(stop)
        .kill_timeout(Duration::from_secs(1))
        .build()
}

/// Binds 127.0.0.1:0 and serves `app` in a task.
pub async fn start(
    app: Router,
    shutdown: &Shutdown,
) -> (SocketAddr, JoinHandle<Result<Report, Error>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(httpdown::serve(listener, app, shutdown).into_future());
    (addr, server)
}

/// Connects and sends `GET path` with keep-alive.
pub async fn get_request(addr: SocketAddr, path: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    send_get(&mut stream, path).await;
    stream
}

pub async fn send_get<S: AsyncWriteExt + Unpin>(stream: &mut S, path: &str) {
    let head = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
}

/// Reads until `needle` has been seen; panics on EOF or after [`BOUND`].
pub async fn read_until<S: AsyncReadExt + Unpin>(stream: &mut S, needle: &str) -> String {
    let mut seen = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            let n = stream.read(&mut buf).await.expect("read");
            assert!(
                n > 0,
                "EOF before {needle:?}; got {:?}",
                String::from_utf8_lossy(&seen)
            );
            seen.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&seen).contains(needle) {
                return;
            }
        }
    };
    tokio::time::timeout(BOUND, read)
        .await
        .unwrap_or_else(|_| panic!("no {needle:?} in time"));
    String::from_utf8(seen).unwrap()
}

/// How a read loop ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// Clean EOF.
    Eof,
    /// A read error (reset).
    Error(io::ErrorKind),
}

/// Reads everything until EOF or an error; panics after [`BOUND`].
pub async fn read_to_end<S: AsyncReadExt + Unpin>(stream: &mut S) -> (String, End) {
    let mut seen = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return End::Eof,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
                Err(e) => return End::Error(e.kind()),
            }
        }
    };
    let end = tokio::time::timeout(BOUND, read)
        .await
        .expect("connection not closed in time");
    (String::from_utf8_lossy(&seen).into_owned(), end)
}

/// An in-memory listener: each `connect` hands the server one end of a duplex pipe, so
/// tests can run the real `serve` on paused time.
#[derive(Debug)]
pub struct ChannelListener {
    rx: mpsc::UnboundedReceiver<io::Result<DuplexStream>>,
}

#[derive(Clone)]
pub struct Connector {
    tx: mpsc::UnboundedSender<io::Result<DuplexStream>>,
}

pub fn channel_listener() -> (ChannelListener, Connector) {
    let (tx, rx) = mpsc::unbounded_channel();
    (ChannelListener { rx }, Connector { tx })
}

/// Serves the test app over in-memory pipes (paused time), with `options` applied to the
/// server.
pub fn serve_pipe_with(
    shutdown: &Shutdown,
    options: impl FnOnce(
        httpdown::Serve<ChannelListener, Router>,
    ) -> httpdown::Serve<ChannelListener, Router>,
) -> (Connector, JoinHandle<Result<Report, Error>>) {
    let (listener, connector) = channel_listener();
    let serving = options(httpdown::serve(listener, app(Arc::default()), shutdown));
    (connector, tokio::spawn(serving.into_future()))
}

/// Connects through `connector` and sends `GET path` with keep-alive.
pub async fn get_request_on(connector: &Connector, path: &str) -> DuplexStream {
    let mut conn = connector.connect();
    send_get(&mut conn, path).await;
    conn
}

impl Connector {
    pub fn connect(&self) -> DuplexStream {
        let (client, server) = tokio::io::duplex(64 * 1024);
        self.tx.send(Ok(server)).expect("listener gone");
        client
    }

    /// Makes the listener's next `accept` fail with `error`.
    pub fn fail(&self, error: io::Error) {
        self.tx.send(Err(error)).expect("listener gone");
    }
}

impl Listener for ChannelListener {
    type Io = DuplexStream;
    type Addr = &'static str;

    async fn accept(&mut self) -> io::Result<(Self::Io, Self::Addr)> {
        match self.rx.recv().await {
            Some(result) => result.map(|io| (io, "duplex")),
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok("duplex")
    }
}

/// Awaits a server task: `serve` returned its report, and no task it spawned panicked.
pub async fn served(server: JoinHandle<Result<Report, Error>>) -> Report {
    let report = server
        .await
        .expect("the server task failed")
        .expect("serve returned an error");
    no_panics(report)
}

/// Passes `report` on after checking that no task spawned by httpdown panicked: a panic
/// in a connection, an HTTP/2 stream or the driver otherwise looks like a closed
/// connection and a clean drain.
#[track_caller]
pub fn no_panics(report: Report) -> Report {
    assert_eq!(
        report.panics(),
        0,
        "a task spawned by httpdown panicked (its message is above): {report}"
    );
    report
}

/// [`served`], bounded by [`BOUND`] (for real-time tests).
pub async fn served_in_time(server: JoinHandle<Result<Report, Error>>) -> Report {
    tokio::time::timeout(BOUND, served(server))
        .await
        .expect("serve did not return in time")
}

/// The demo binary, which `cargo test` builds next to this test (it builds every
/// example). It is not built here: a nested cargo would wait on the lock the running
/// `cargo test` may hold. A missing or stale binary (for example after
/// `cargo test --test demo` alone, which builds no example) is a clear failure.
pub fn demo_binary() -> &'static PathBuf {
    static BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BINARY.get_or_init(|| {
        let exe = std::env::current_exe().expect("current_exe");
        // target/<profile>/deps/demo-HASH -> target/<profile>/examples/httpdown_example
        let profile_dir = exe
            .parent()
            .and_then(|deps| deps.parent())
            .expect("target dir");
        let binary = profile_dir.join("examples").join("httpdown_example");
        let hint = "run `cargo test --all-features` (which builds the examples), or \
                    `cargo build --all-features --example httpdown_example` first";
        let built = std::fs::metadata(&binary)
            .and_then(|m| m.modified())
            .unwrap_or_else(|_| panic!("no demo binary at {}: {hint}", binary.display()));
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let newest_source = newest_mtime(&root.join("src"))
            .into_iter()
            .chain(newest_mtime(&root.join("examples/httpdown_example.rs")))
            .max();
        if let Some(source) = newest_source {
            assert!(
                built >= source,
                "the demo binary at {} is older than the sources: {hint}",
                binary.display()
            );
        }
        binary
    })
}

/// The newest modification time of `path` or any file under it.
pub fn newest_mtime(path: &std::path::Path) -> Option<std::time::SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.is_dir() {
        std::fs::read_dir(path)
            .ok()?
            .filter_map(|entry| newest_mtime(&entry.ok()?.path()))
            .max()
    } else {
        meta.modified().ok()
    }
}

/// A self-signed certificate for `localhost` and `127.0.0.1`, and a server config for it
/// (made once per test binary).
pub struct Pki {
    pub server: Arc<httpdown::tls::rustls::ServerConfig>,
    pub cert: httpdown::tls::rustls::pki_types::CertificateDer<'static>,
}

pub fn pki() -> &'static Pki {
    use httpdown::tls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    static PKI: std::sync::OnceLock<Pki> = std::sync::OnceLock::new();
    PKI.get_or_init(|| {
        let certified = rcgen::generate_simple_self_signed(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ])
        .unwrap();
        let cert = certified.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            certified.signing_key.serialize_der(),
        ));
        let server = httpdown::tls::config(vec![cert.clone()], key).unwrap();
        Pki { server, cert }
    })
}

/// A TLS client that trusts [`pki`]'s certificate and offers `alpn`.
pub fn tls_connector(alpn: &[u8]) -> tokio_rustls::TlsConnector {
    use httpdown::tls::rustls::{self, ClientConfig, RootCertStore};
    let mut roots = RootCertStore::empty();
    roots.add(pki().cert.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// `program` on `PATH`, or in the system directories a user's `PATH` may lack.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// A port free a moment ago on 127.0.0.1, for a program that binds it itself.
pub fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().port()
}
