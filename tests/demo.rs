//! Black-box tests of `examples/httpdown_example.rs` (SPEC section 4): the demo binary is
//! spawned, driven with raw TCP (and an h2c client), and stopped with real signals.
//!
//! Durations measured here are printed (`cargo test --test demo -- --nocapture`), never
//! asserted tightly: only bounds far from the expected figure (a stop deadline that was
//! not waited for, a process that must end within seconds) are asserted.

#![cfg(unix)]

mod common;

use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{demo_binary, read_to_end, read_until, send_get, End};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// Upper bound for the demo to start or exit.
const BOUND: Duration = Duration::from_secs(20);

struct Demo {
    child: Child,
    addr: SocketAddr,
    pid: u32,
    https: bool,
}

impl Demo {
    /// Starts the demo on 127.0.0.1:0 with `flags` and waits for its start line.
    async fn start(flags: &[&str]) -> Demo {
        let mut child = Command::new(demo_binary())
            .args(["--addr", "127.0.0.1:0"])
            .args(flags)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn demo");
        let pid = child.id().expect("pid");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        tokio::time::timeout(BOUND, stdout.read_line(&mut line))
            .await
            .expect("no start line in time")
            .expect("read start line");
        let line = line.trim_end();
        let rest = line
            .strip_prefix("serving on http://")
            .or_else(|| line.strip_prefix("serving on https://"))
            .unwrap_or_else(|| panic!("unexpected start line {line:?}"));
        let (addr, tail) = rest.split_once("/ with pid ").expect("start line shape");
        assert_eq!(tail, pid.to_string(), "start line pid: {line:?}");
        let addr: SocketAddr = addr.parse().expect("start line address");
        assert_eq!(addr.ip().to_string(), "127.0.0.1");
        assert_ne!(
            addr.port(),
            0,
            "the bound port is printed, not the requested one"
        );
        let https = line.starts_with("serving on https://");
        Demo {
            child,
            addr,
            pid,
            https,
        }
    }

    fn signal(&self, signal: &str) {
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("kill -{signal} {}", self.pid))
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the process to exit; returns its status, its stderr and the instant it
    /// was seen to exit.
    async fn exit(mut self) -> (ExitStatus, String, Instant) {
        let status = tokio::time::timeout(BOUND, self.child.wait())
            .await
            .expect("demo did not exit in time")
            .expect("wait demo");
        let exited = Instant::now();
        let mut stderr = String::new();
        let mut pipe = self.child.stderr.take().unwrap();
        pipe.read_to_string(&mut stderr).await.unwrap();
        // The panic hook's message, or httpdown's own line for a panic it caught.
        assert!(
            !stderr.contains("panicked"),
            "a task in the demo panicked:\n{stderr}"
        );
        (status, stderr, exited)
    }

    /// Returns once every connection made so far has been accepted by the demo:
    /// connections are accepted in the order they completed, so once a later one has
    /// been served, the earlier ones are in (not waiting in the accept queue, where the
    /// listener's close would reset them).
    async fn accepted_so_far(&self) {
        let mut probe = self.get("/?duration=0s").await;
        read_until(&mut probe, "0\r\n\r\n").await;
    }

    async fn get(&self, path: &str) -> TcpStream {
        let mut stream = TcpStream::connect(self.addr).await.expect("connect");
        send_get(&mut stream, path).await;
        stream
    }
}

fn report_line(stderr: &str) -> &str {
    stderr
        .lines()
        .rev()
        .find(|line| line.starts_with("shutdown "))
        .unwrap_or_else(|| panic!("no report line in stderr:\n{stderr}"))
}

/// Runs the demo without a server, for flag errors.
async fn run_to_exit(flags: &[&str]) -> std::process::Output {
    let child = Command::new(demo_binary())
        .args(flags)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn demo");
    tokio::time::timeout(BOUND, child.wait_with_output())
        .await
        .expect("demo did not exit in time")
        .expect("wait demo")
}

async fn slow_request_across(signal: &str) {
    let demo = Demo::start(&["--stop-timeout", "10s"]).await;
    let pid = demo.pid;
    let mut conn = demo.get("/?duration=1s").await;
    let head = read_until(&mut conn, &format!("going to sleep 1s with pid {pid}\n")).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let signalled = Instant::now();
    demo.signal(signal);
    let (rest, end) = read_to_end(&mut conn).await;
    let last_byte = Instant::now();
    assert!(
        rest.contains(&format!("slept 1s with pid {pid}\n")),
        "{rest:?}"
    );
    assert!(
        rest.ends_with("0\r\n\r\n"),
        "complete chunked body: {rest:?}"
    );
    assert_eq!(
        end,
        End::Eof,
        "the connection closes cleanly after the response"
    );
    let (status, stderr, exited) = demo.exit().await;
    assert!(status.success(), "{status}: {stderr}");
    assert!(
        report_line(&stderr).starts_with("shutdown drained"),
        "{stderr}"
    );
    assert!(
        last_byte - signalled >= Duration::from_millis(500),
        "the request was waited for"
    );
    eprintln!(
        "measured ({signal}): last response byte -> process exit {:?}",
        exited.saturating_duration_since(last_byte)
    );
}

#[tokio::test]
async fn a_slow_request_completes_across_sigterm_and_the_process_exits_after_it() {
    slow_request_across("TERM").await;
}

#[tokio::test]
async fn sigint_behaves_like_sigterm() {
    slow_request_across("INT").await;
}

#[tokio::test]
async fn the_handler_writes_two_lines_and_rejects_bad_durations() {
    let demo = Demo::start(&[]).await;
    let pid = demo.pid;

    // Zero does not wait; any path is accepted.
    let mut conn = demo.get("/any/path?duration=0s").await;
    let text = read_until(&mut conn, "0\r\n\r\n").await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(
        text.contains(&format!("going to sleep 0s with pid {pid}\n"))
            && text.contains(&format!("slept 0s with pid {pid}\n")),
        "{text}"
    );

    for path in ["/?duration=bogus", "/", "/?duration=-1s"] {
        let mut conn = demo.get(path).await;
        let text = read_until(&mut conn, "invalid duration").await;
        assert!(
            text.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{path}: {text}"
        );
    }

    // A malformed request gets a 400 from the server, not a crash.
    let mut conn = TcpStream::connect(demo.addr).await.unwrap();
    conn.write_all(b"NOT A REQUEST\r\n\r\n").await.unwrap();
    let (text, _) = read_to_end(&mut conn).await;
    assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text:?}");

    demo.signal("TERM");
    let (status, stderr, _) = demo.exit().await;
    assert!(status.success(), "{status}: {stderr}");
}

#[tokio::test]
async fn a_bad_flag_exits_with_status_2_and_a_message() {
    for flags in [
        &["--stop-timeout", "ten"][..],
        &["--kill-timeout", "1 fortnight"][..],
        &["--addr", "not-an-address"][..],
        &["--no-such-flag"][..],
    ] {
        let output = run_to_exit(flags).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{flags:?}: {stderr}");
        assert!(stderr.contains("error"), "{flags:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{flags:?}: nothing served");
    }
}

#[tokio::test]
async fn an_address_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let output = run_to_exit(&["--addr", &addr]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("failed to bind {addr}")),
        "{stderr}"
    );
}

/// With a stop timeout (1m) far beyond the test's bound, an exit within the bound shows
/// nothing waited for the deadline.
async fn exits_without_waiting_for(demo: Demo, mut conn: TcpStream) {
    let signalled = Instant::now();
    demo.signal("TERM");
    let (status, stderr, exited) = demo.exit().await;
    assert!(status.success(), "{status}: {stderr}");
    assert!(
        report_line(&stderr).starts_with("shutdown drained"),
        "{stderr}"
    );
    let (_, end) = read_to_end(&mut conn).await;
    assert_eq!(end, End::Eof, "closed cleanly");
    eprintln!("measured: signal -> exit {:?}", exited - signalled);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_does_not_delay_exit() {
    let demo = Demo::start(&["--stop-timeout", "1m"]).await;
    let mut conn = demo.get("/?duration=0s").await;
    read_until(&mut conn, "0\r\n\r\n").await;
    exits_without_waiting_for(demo, conn).await;
}

#[tokio::test]
async fn a_silent_connection_does_not_delay_exit() {
    let demo = Demo::start(&["--stop-timeout", "1m"]).await;
    let conn = TcpStream::connect(demo.addr).await.unwrap();
    demo.accepted_so_far().await;
    exits_without_waiting_for(demo, conn).await;
}

/// The half head holds the drain until the stop deadline (B20 allows it), and no longer:
/// the report says forced (what was left closed at the stop deadline and then finished),
/// not given up at the kill deadline, which is set far out so the two cannot be confused.
#[tokio::test]
async fn a_half_sent_head_never_holds_exit_past_the_stop_deadline() {
    let demo = Demo::start(&["--stop-timeout", "1s", "--kill-timeout", "1m"]).await;
    let mut conn = TcpStream::connect(demo.addr).await.unwrap();
    conn.write_all(b"GET /?duration=0s HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    demo.accepted_so_far().await;
    let signalled = Instant::now();
    demo.signal("TERM");
    let (status, stderr, exited) = demo.exit().await;
    assert!(status.success(), "{status}: {stderr}");
    let took = exited - signalled;
    let report = report_line(&stderr);
    assert!(
        report.starts_with("shutdown forced") || report.starts_with("shutdown drained"),
        "held past the stop deadline: {report}"
    );
    // Exited (within the bound of `exit`, 20 s) long before the kill deadline (1 m 1 s).
    assert!(took < Duration::from_secs(30), "{took:?}");
    let (text, _) = read_to_end(&mut conn).await;
    assert!(
        !text.contains("slept"),
        "the half request was never served: {text:?}"
    );
    eprintln!(
        "measured: half head, signal -> exit {took:?} ({})",
        report_line(&stderr)
    );
}

/// Cut at the stop deadline (1 s), not before, and not at the kill deadline, which is
/// set a minute later so the two cannot be confused.
#[tokio::test]
async fn a_long_request_is_cut_at_the_stop_deadline_with_an_incomplete_body() {
    let demo = Demo::start(&["--stop-timeout", "1s", "--kill-timeout", "1m"]).await;
    let pid = demo.pid;
    let mut conn = demo.get("/?duration=30s").await;
    read_until(&mut conn, &format!("going to sleep 30s with pid {pid}\n")).await;
    let signalled = Instant::now();
    demo.signal("TERM");
    let (rest, _) = read_to_end(&mut conn).await;
    let cut = Instant::now();
    assert!(!rest.contains("slept"), "{rest:?}");
    assert!(
        !rest.contains("0\r\n\r\n"),
        "no terminating chunk on a cut body: {rest:?}"
    );
    let (status, stderr, exited) = demo.exit().await;
    assert!(
        status.success(),
        "forced is a designed outcome: {status}: {stderr}"
    );
    let report = report_line(&stderr);
    assert!(report.starts_with("shutdown forced"), "{stderr}");
    let to_cut = cut - signalled;
    assert!(
        to_cut >= Duration::from_millis(900),
        "cut before the stop deadline: {to_cut:?}"
    );
    assert!(
        to_cut < Duration::from_secs(30),
        "not cut at the stop deadline (1 s) but near the kill deadline (1 m 1 s): {to_cut:?}"
    );
    eprintln!(
        "measured: signal -> cut {to_cut:?} (stop timeout 1s), cut -> exit {:?}; {report}",
        exited.saturating_duration_since(cut)
    );
}

#[tokio::test]
async fn a_hundred_concurrent_slow_requests_all_complete() {
    let demo = Demo::start(&["--stop-timeout", "10s"]).await;
    let pid = demo.pid;
    let mut conns = Vec::new();
    for _ in 0..100 {
        conns.push(demo.get("/?duration=1s").await);
    }
    for conn in &mut conns {
        read_until(conn, &format!("going to sleep 1s with pid {pid}\n")).await;
    }
    demo.signal("TERM");
    let readers: Vec<_> = conns
        .into_iter()
        .map(|mut conn| tokio::spawn(async move { read_to_end(&mut conn).await }))
        .collect();
    let mut last_byte = Instant::now();
    for reader in readers {
        let (rest, end) = reader.await.unwrap();
        last_byte = Instant::now().max(last_byte);
        assert!(
            rest.contains(&format!("slept 1s with pid {pid}\n")),
            "{rest:?}"
        );
        assert!(rest.ends_with("0\r\n\r\n"), "{rest:?}");
        assert_eq!(end, End::Eof);
    }
    let (status, stderr, exited) = demo.exit().await;
    assert!(status.success(), "{status}: {stderr}");
    let report = report_line(&stderr);
    assert!(report.starts_with("shutdown drained"), "{stderr}");
    assert!(report.contains("100 requests at drain start"), "{report}");
    eprintln!(
        "measured: 100 requests, last byte -> exit {:?}",
        exited.saturating_duration_since(last_byte)
    );
}

#[tokio::test]
async fn a_second_signal_escalates_without_crashing_or_outlasting_the_deadlines() {
    let demo = Demo::start(&["--stop-timeout", "1m", "--kill-timeout", "1s"]).await;
    let pid = demo.pid;
    let mut conn = demo.get("/?duration=1m").await;
    read_until(&mut conn, &format!("going to sleep 1m with pid {pid}\n")).await;
    demo.signal("TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = Instant::now();
    demo.signal("INT");
    let (rest, _) = read_to_end(&mut conn).await;
    assert!(!rest.contains("0\r\n\r\n"), "cut, not completed: {rest:?}");
    let (status, stderr, exited) = demo.exit().await;
    assert!(status.success(), "{status}: {stderr}");
    assert!(
        report_line(&stderr).starts_with("shutdown forced"),
        "{stderr}"
    );
    // Without the escalation the drain would wait for the stop deadline, a minute away.
    let took = exited - second;
    assert!(
        took < Duration::from_secs(30),
        "second signal did not escalate: {took:?}"
    );
    eprintln!("measured: second signal -> exit {took:?}");
}

#[tokio::test]
async fn an_h2c_request_in_flight_completes() {
    use http_body_util::BodyExt;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let demo = Demo::start(&["--stop-timeout", "10s"]).await;
    let pid = demo.pid;
    let io = TokioIo::new(TcpStream::connect(demo.addr).await.unwrap());
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    let request = http::Request::get(format!("http://{}/?duration=1s", demo.addr))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.expect("h2 response");
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, format!("going to sleep 1s with pid {pid}\n"));
    demo.signal("TERM");
    let rest = tokio::time::timeout(BOUND, body.collect())
        .await
        .expect("body in time")
        .expect("the stream completes without a reset")
        .to_bytes();
    assert_eq!(rest, format!("slept 1s with pid {pid}\n"));
    let (status, stderr, _) = demo.exit().await;
    assert!(status.success(), "{status}: {stderr}");
    assert!(
        report_line(&stderr).starts_with("shutdown drained"),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_sse_route_ticks_then_says_bye_and_ends_cleanly() {
    let demo = Demo::start(&["--stop-timeout", "10s"]).await;
    let mut conn = demo.get("/sse").await;
    let head = read_until(&mut conn, "data: tick 1\n\n").await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(head.contains("data: tick 0\n\n"), "{head}");
    let signalled = Instant::now();
    demo.signal("TERM");
    let (rest, end) = read_to_end(&mut conn).await;
    assert!(rest.contains("event: shutdown\ndata: bye\n\n"), "{rest:?}");
    assert!(rest.ends_with("0\r\n\r\n"), "terminating chunk: {rest:?}");
    assert_eq!(end, End::Eof);
    let (status, stderr, exited) = demo.exit().await;
    assert!(status.success(), "{status}: {stderr}");
    assert!(
        report_line(&stderr).starts_with("shutdown drained"),
        "{stderr}"
    );
    eprintln!("measured: sse, signal -> exit {:?}", exited - signalled);
}

#[tokio::test]
async fn the_ws_route_echoes_then_closes_with_1001() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::Message;

    let demo = Demo::start(&["--stop-timeout", "10s"]).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", demo.addr))
        .await
        .expect("websocket handshake");
    ws.send(Message::text("echo me")).await.unwrap();
    let echo = tokio::time::timeout(BOUND, ws.next()).await.unwrap();
    assert_eq!(echo.unwrap().unwrap(), Message::text("echo me"));
    let signalled = Instant::now();
    demo.signal("TERM");
    match tokio::time::timeout(BOUND, ws.next()).await.unwrap() {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("expected a Close frame with 1001, got {other:?}"),
    }
    // Reading on answers the Close; the server then closes the connection.
    let end = tokio::time::timeout(BOUND, ws.next()).await.unwrap();
    assert!(end.is_none() || matches!(end, Some(Err(_))), "{end:?}");
    let (status, stderr, exited) = demo.exit().await;
    assert!(status.success(), "{status}: {stderr}");
    assert!(
        report_line(&stderr).starts_with("shutdown drained"),
        "{stderr}"
    );
    eprintln!(
        "measured: websocket, signal -> exit {:?}",
        exited - signalled
    );
}

#[tokio::test]
async fn healthz_fails_during_the_drain_delay_while_requests_are_still_served() {
    let demo = Demo::start(&["--drain-delay", "1500ms", "--stop-timeout", "10s"]).await;
    let pid = demo.pid;
    let mut conn = demo.get("/healthz").await;
    let text = read_until(&mut conn, "ready\n").await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    let mut slow = demo.get("/?duration=3s").await;
    read_until(&mut slow, "going to sleep 3s").await;

    let signalled = Instant::now();
    demo.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Still accepting during the delay, but not ready.
    let mut conn = demo.get("/healthz").await;
    let text = read_until(&mut conn, "draining\n").await;
    assert!(
        text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{text}"
    );
    let mut quick = demo.get("/?duration=0s").await;
    let text = read_until(&mut quick, "slept 0s").await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");

    let (rest, end) = read_to_end(&mut slow).await;
    assert!(
        rest.contains(&format!("slept 3s with pid {pid}\n")),
        "{rest:?}"
    );
    assert_eq!(end, End::Eof);
    let (status, stderr, exited) = demo.exit().await;
    assert!(status.success(), "{status}: {stderr}");
    assert!(
        report_line(&stderr).starts_with("shutdown drained"),
        "{stderr}"
    );
    // Progress lines on stderr while it waited (B33).
    assert!(stderr.contains("drain delay: 1 request, "), "{stderr}");
    assert!(
        stderr.contains("draining: 1 request, 1 connection left, stop deadline in "),
        "{stderr}"
    );
    let took = exited - signalled;
    assert!(took >= Duration::from_millis(2_500), "{took:?}");
}

/// Writes a certificate for localhost and its key to a temporary directory.
fn cert_files(tag: &str) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
    let dir = std::env::temp_dir().join(format!("httpdown-demo-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    (cert, key, certified.cert.der().to_vec())
}

#[tokio::test]
async fn over_tls_a_slow_request_completes_across_sigterm() {
    use httpdown::tls::rustls::pki_types::{CertificateDer, ServerName};
    use httpdown::tls::rustls::{self, ClientConfig, RootCertStore};

    let (cert, key, der) = cert_files("tls");
    let demo = Demo::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ])
    .await;
    assert!(demo.https, "the start line says https");
    let pid = demo.pid;
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(der)).unwrap();
    let config = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(demo.addr).await.unwrap();
    let mut conn = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake");
    send_get(&mut conn, "/?duration=1s").await;
    read_until(&mut conn, &format!("going to sleep 1s with pid {pid}\n")).await;
    demo.signal("TERM");
    let (rest, end) = read_to_end(&mut conn).await;
    assert!(
        rest.contains(&format!("slept 1s with pid {pid}\n")),
        "{rest:?}"
    );
    assert!(rest.ends_with("0\r\n\r\n"), "{rest:?}");
    assert_eq!(end, End::Eof, "closed with close_notify");
    let (status, stderr, _) = demo.exit().await;
    assert!(status.success(), "{status}: {stderr}");
    assert!(
        report_line(&stderr).starts_with("shutdown drained"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(cert.parent().unwrap());
}

#[tokio::test]
async fn tls_self_signed_serves_https_and_bad_tls_flags_exit_with_status_2() {
    let demo = Demo::start(&["--tls-self-signed"]).await;
    assert!(demo.https);
    demo.signal("TERM");
    let (status, stderr, _) = demo.exit().await;
    assert!(status.success(), "{status}: {stderr}");

    let (cert, _key, _) = cert_files("bad");
    let missing = cert.with_file_name("missing-key.pem");
    for (flags, needle) in [
        (
            vec![
                "--tls-cert",
                cert.to_str().unwrap(),
                "--tls-key",
                missing.to_str().unwrap(),
            ],
            "missing-key.pem",
        ),
        (
            vec![
                "--tls-cert",
                cert.to_str().unwrap(),
                "--tls-key",
                cert.to_str().unwrap(),
            ],
            "cannot read a private key",
        ),
        (vec!["--tls-cert", cert.to_str().unwrap()], "--tls-key"),
    ] {
        let output = run_to_exit(&flags).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{flags:?}: {stderr}");
        assert!(stderr.contains(needle), "{flags:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{flags:?}: nothing served");
    }
    let _ = std::fs::remove_dir_all(cert.parent().unwrap());
}
