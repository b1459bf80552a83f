//! Zero-downtime restart (feature `restart`, Unix): socket activation and self-upgrade.
//!
//! An [`Upgrader`], made first thing in `main`, finds the listening sockets the process
//! starts with: those of the previous generation of the process (a self-upgrade), those
//! systemd passes (socket activation: `LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`), or
//! none, and then [`tcp_listener`](Upgrader::tcp_listener) (or
//! [`unix_listener`](Upgrader::unix_listener)) takes a socket by name or binds one.
//! Once the process can serve, [`ready`](Upgrader::ready) tells the previous generation
//! (which then drains), writes the PID file and, with the `systemd` feature, notifies
//! systemd.
//!
//! [`upgrade`](Upgrader::upgrade) (or a signal, [`upgrade_on_signal`](Upgrader::upgrade_on_signal))
//! runs the executable the process was started from again, with the same arguments and
//! every listening socket. The new process accepts only once it has called `ready`; this
//! one then drains with its [`Shutdown`] as a handover
//! ([`Shutdown::trigger_handover`]): its listeners close without a single connection
//! refused or reset (the sockets stay open in the new process, and their queues with
//! them), idle keep-alive connections are kept for their next request. A new process that
//! exits, or is not ready within the upgrade timeout, is stopped (`SIGTERM`, then
//! `SIGKILL`), and this one keeps serving.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use httpdown::restart::Upgrader;
//! use httpdown::Shutdown;
//!
//! let shutdown = Shutdown::builder().build();
//! let upgrader = Upgrader::new(&shutdown)?;
//! let listener = upgrader.tcp_listener("http", "127.0.0.1:8080").await?;
//! let app = axum::Router::new();
//! let serving = std::future::IntoFuture::into_future(httpdown::serve(listener, app, &shutdown));
//! shutdown.trigger_on_signals()?;
//! upgrader.upgrade_on_signal(tokio::signal::unix::SignalKind::hangup())?;
//! upgrader.ready()?;
//! let report = serving.await?;
//! eprintln!("{report}");
//! # Ok(()) }
//! ```

mod handover;
mod sockets;

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, ToSocketAddrs, UnixListener};
use tokio::time::Instant;

use self::handover::{Rendezvous, Socket, HANDOVER_ENV};
use self::sockets::Inherited;
use crate::Shutdown;

/// How long a new generation has to be ready unless told otherwise.
pub const DEFAULT_UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a new generation that failed gets to exit after `SIGTERM` before `SIGKILL`.
const TERM_GRACE: Duration = Duration::from_secs(1);

/// How long a new generation waits for the old one at start.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the sockets a process starts with could not be taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InheritError {
    /// `LISTEN_FDS` is set without `LISTEN_PID`: the sockets may be meant for another
    /// process. Tools that do not set it need [`UpgraderBuilder::require_listen_pid`]`(false)`.
    #[error(
        "LISTEN_FDS is set but LISTEN_PID is not: set LISTEN_PID to this process's pid, or \
         allow it with require_listen_pid(false) for tools that do not set it"
    )]
    MissingListenPid,
    /// An inherited socket is not a TCP or Unix stream socket.
    #[error(
        "inherited socket {index} ({name:?}) is not a TCP or Unix stream socket: check the \
         socket unit (ListenStream=)"
    )]
    WrongType {
        /// Its position in `LISTEN_FDS`.
        index: usize,
        /// Its name from `LISTEN_FDNAMES`.
        name: String,
    },
    /// An inherited socket is a connection, not a listening socket.
    #[error(
        "inherited socket {index} ({name:?}) is not listening: socket units must use \
         Accept=no"
    )]
    NotListening {
        /// Its position in `LISTEN_FDS`.
        index: usize,
        /// Its name from `LISTEN_FDNAMES`.
        name: String,
    },
    /// The environment is malformed.
    #[error("{0}")]
    Invalid(String),
    /// The previous generation could not be reached or sent something unexpected.
    #[error("taking the sockets of the previous generation failed: {0}")]
    Handover(#[source] io::Error),
}

/// Why an upgrade did not happen. In every case this process keeps serving.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpgradeError {
    /// Another upgrade is under way.
    #[error("an upgrade is already in progress")]
    InProgress,
    /// This process is shutting down (or has handed over already).
    #[error("the process is shutting down")]
    ShuttingDown,
    /// The new process could not be started.
    #[error("starting {program} failed: {source}")]
    Spawn {
        /// The executable.
        program: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The new process exited before it was ready.
    #[error("the new process (pid {pid}) exited before it was ready: {status}")]
    Exited {
        /// Its pid.
        pid: u32,
        /// How it ended.
        status: ExitStatus,
    },
    /// The new process was not ready within the upgrade timeout.
    #[error("the new process (pid {pid}) was not ready within {timeout:?}; it was stopped")]
    NotReady {
        /// Its pid.
        pid: u32,
        /// The upgrade timeout.
        timeout: Duration,
    },
    /// Handing the sockets over failed.
    #[error("handing the sockets to the new process (pid {pid}) failed: {source}")]
    Handover {
        /// Its pid.
        pid: u32,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Preparing the upgrade failed (the rendezvous socket, a socket's duplicate).
    #[error("preparing the upgrade failed: {0}")]
    Prepare(#[source] io::Error),
}

/// Builds an [`Upgrader`].
#[derive(Debug, Clone)]
pub struct UpgraderBuilder {
    program: Option<PathBuf>,
    args: Option<Vec<OsString>>,
    timeout: Duration,
    pid_file: Option<PathBuf>,
    require_listen_pid: bool,
    reuse_port: bool,
}

impl Default for UpgraderBuilder {
    fn default() -> Self {
        UpgraderBuilder {
            program: None,
            args: None,
            timeout: DEFAULT_UPGRADE_TIMEOUT,
            pid_file: None,
            require_listen_pid: true,
            reuse_port: false,
        }
    }
}

impl UpgraderBuilder {
    /// The executable an upgrade runs (default: the one this process was started from,
    /// as it was at start: after a deploy replaces the file, `/proc/self/exe` would name
    /// the deleted one).
    pub fn program(mut self, program: impl Into<PathBuf>) -> Self {
        self.program = Some(program.into());
        self
    }

    /// Its arguments (default: this process's own, without the program name).
    pub fn args<I, A>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = A>,
        A: Into<OsString>,
    {
        self.args = Some(args.into_iter().map(Into::into).collect());
        self
    }

    /// How long a new process has, from its start, to call [`Upgrader::ready`]
    /// (default [`DEFAULT_UPGRADE_TIMEOUT`], 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// A PID file, written atomically (a temporary file renamed over it) by whichever
    /// process serves, at [`Upgrader::ready`], and removed at a final stop.
    pub fn pid_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.pid_file = Some(path.into());
        self
    }

    /// Whether `LISTEN_FDS` without `LISTEN_PID` is an error (default `true`, as systemd
    /// always sets both; `false` for tools that set only `LISTEN_FDS`). A `LISTEN_PID`
    /// naming another process always means the sockets are not this process's.
    pub fn require_listen_pid(mut self, require: bool) -> Self {
        self.require_listen_pid = require;
        self
    }

    /// `SO_REUSEPORT` mode (Linux, off by default): TCP listeners bound by
    /// [`Upgrader::tcp_listener`] get `SO_REUSEPORT` and are not handed over; the next
    /// generation binds its own socket on the same address, and once it is ready this
    /// one closes its own. With `net.ipv4.tcp_migrate_req = 1` the kernel moves the
    /// connections queued on the closing socket (and handshakes under way) to the new
    /// one, and nothing waits. With `0`, the Linux default (warned about at build), the
    /// old socket closes as at a final stop: new handshakes hashed to it are dropped (the
    /// client's SYN retransmit, a second later, reaches the new socket), and what it had
    /// queued is accepted and served, so no connection is reset, but a few connects take
    /// a second. Passing the sockets on (the default) has neither cost.
    pub fn reuse_port(mut self, reuse_port: bool) -> Self {
        self.reuse_port = reuse_port;
        self
    }

    /// Takes the sockets this process starts with (see [`Upgrader`]). Call it first
    /// thing in `main`, inside the tokio runtime: it reads (and clears) environment
    /// variables, and an error says what is wrong with what was inherited.
    pub fn build(self, shutdown: &Shutdown) -> Result<Upgrader, InheritError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            InheritError::Invalid(
                "an Upgrader must be built inside a tokio runtime: it closes the sockets it \
                 keeps for the next generation when the shutdown starts"
                    .to_owned(),
            )
        })?;
        let program = match self.program {
            Some(program) => program,
            None => std::env::current_exe().map_err(|e| {
                InheritError::Invalid(format!("cannot find this process's executable: {e}"))
            })?,
        };
        let args = self
            .args
            .unwrap_or_else(|| std::env::args_os().skip(1).collect());
        let upgraded_from = handover_from_env();
        let upgraded = upgraded_from.is_some();
        let (inherited, parent) = match upgraded_from {
            Some(name) => {
                let (inherited, parent) = receive(&name).map_err(InheritError::Handover)?;
                (inherited, Some(parent))
            }
            None => (sockets::from_systemd(self.require_listen_pid)?, None),
        };
        for socket in &inherited {
            if let Some(fd) = &socket.fd {
                sockets::prepare(fd).map_err(|e| {
                    InheritError::Invalid(format!("inherited socket {:?}: {e}", socket.name))
                })?;
            }
        }
        if !inherited.is_empty() {
            let names: Vec<&str> = inherited.iter().map(|s| s.name.as_str()).collect();
            tracing::info!(
                ?names,
                from = if parent.is_some() {
                    "the previous generation"
                } else {
                    "systemd"
                },
                "inherited listening sockets"
            );
        }
        let inner = Arc::new(Inner {
            shutdown: shutdown.clone(),
            program,
            args,
            timeout: self.timeout,
            pid_file: self.pid_file,
            reuse_port: self.reuse_port,
            upgraded,
            inherited: Mutex::new(inherited),
            sockets: Mutex::new(Vec::new()),
            parent: Mutex::new(parent),
            upgrading: AtomicBool::new(false),
            failed: AtomicU64::new(0),
            ready: AtomicBool::new(false),
        });
        if inner.reuse_port && !tcp_migrate_req() {
            tracing::warn!(
                "SO_REUSEPORT handover with net.ipv4.tcp_migrate_req = 0: connects that \
                 reach the old socket as it closes wait for their SYN retransmit (about 1 s); \
                 set it to 1, or pass the sockets on instead"
            );
        }
        watch_the_end(&inner, &runtime);
        Ok(Upgrader { inner })
    }
}

/// The name of the previous generation's rendezvous, if this process was started by an
/// upgrade. The variable is removed, so that processes this one starts (other than its
/// own upgrades, which get their own) do not take themselves for a new generation.
fn handover_from_env() -> Option<String> {
    let name = std::env::var(HANDOVER_ENV)
        .ok()
        .filter(|name| !name.is_empty());
    std::env::remove_var(HANDOVER_ENV);
    name
}

/// Takes the sockets the previous generation sends.
fn receive(name: &str) -> io::Result<(Vec<Inherited>, StdUnixStream)> {
    let stream = handover::connect(name, CONNECT_TIMEOUT)?;
    let received = handover::receive_sockets(&stream)?;
    let inherited = received
        .into_iter()
        .map(|socket| Inherited {
            name: socket.name,
            fd: Some(socket.fd),
            shared: socket.shared,
        })
        .collect();
    Ok((inherited, stream))
}

/// Zero-downtime restart for one process: the sockets it starts with, its readiness, and
/// upgrades to the next generation. See the [module docs](self).
///
/// Cheap to clone: clones share the process's state.
#[derive(Clone)]
pub struct Upgrader {
    inner: Arc<Inner>,
}

struct Inner {
    shutdown: Shutdown,
    program: PathBuf,
    args: Vec<OsString>,
    timeout: Duration,
    pid_file: Option<PathBuf>,
    /// TCP listeners are bound with `SO_REUSEPORT` and not handed over.
    reuse_port: bool,
    /// Started by an upgrade.
    upgraded: bool,
    /// Received at start, until a listener takes them.
    inherited: Mutex<Vec<Inherited>>,
    /// Duplicates of the listening sockets in use, for the next generation; dropped at
    /// drain start, so that a final stop closes them.
    sockets: Mutex<Vec<Socket>>,
    /// The previous generation, until `ready` tells it.
    parent: Mutex<Option<StdUnixStream>>,
    upgrading: AtomicBool,
    failed: AtomicU64,
    ready: AtomicBool,
}

impl fmt::Debug for Upgrader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upgrader")
            .field("program", &self.inner.program)
            .field("args", &self.inner.args)
            .field("timeout", &self.inner.timeout)
            .field("pid_file", &self.inner.pid_file)
            .field("upgrading", &self.inner.upgrading.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Upgrader {
    /// An upgrader with the defaults (see [`UpgraderBuilder`]).
    pub fn new(shutdown: &Shutdown) -> Result<Upgrader, InheritError> {
        Upgrader::builder().build(shutdown)
    }

    /// A builder, to set the program, its arguments, the upgrade timeout or a PID file.
    pub fn builder() -> UpgraderBuilder {
        UpgraderBuilder::default()
    }

    /// Whether this process was started by an upgrade of a previous generation.
    pub fn is_upgrade(&self) -> bool {
        self.inner.upgraded
    }

    /// The TCP listener named `name`: the inherited one of that name; else, when
    /// systemd passed sockets, the first inherited TCP socket not taken yet; else one
    /// bound to `addr`. Either way it is handed to the next generation at an upgrade.
    ///
    /// An error names the listener and says what failed.
    pub async fn tcp_listener(
        &self,
        name: &str,
        addr: impl ToSocketAddrs + fmt::Debug,
    ) -> Result<TcpListener, crate::Error> {
        let failed = |source| crate::Error::Bind {
            addr: format!("{addr:?} (listener {name:?})"),
            source,
        };
        check_name(name).map_err(failed)?;
        let (listener, shared) = match self.take(name, |fd| is_family(fd, Family::Tcp)) {
            Some((fd, shared)) => {
                let listener =
                    TcpListener::from_std(std::net::TcpListener::from(fd)).map_err(failed)?;
                if shared {
                    if let Ok(addr) = listener.local_addr() {
                        crate::serve::mark_shared(addr);
                    }
                }
                (listener, shared)
            }
            None if self.inner.reuse_port => {
                // Not handed over: the next generation binds its own.
                return bind_reuse_port(&addr).await.map_err(failed);
            }
            None => (TcpListener::bind(&addr).await.map_err(failed)?, false),
        };
        self.register(name, &listener, shared).map_err(failed)?;
        Ok(listener)
    }

    /// The Unix listener named `name`: inherited (as for
    /// [`tcp_listener`](Self::tcp_listener)), or bound at `path` with
    /// [`bind_unix`](crate::bind_unix). A socket file handed over is never removed by
    /// the process that handed it over.
    pub fn unix_listener(
        &self,
        name: &str,
        path: impl AsRef<Path>,
    ) -> Result<UnixListener, crate::Error> {
        let path = path.as_ref();
        let failed = |source| crate::Error::Bind {
            addr: format!("{} (listener {name:?})", path.display()),
            source,
        };
        check_name(name).map_err(failed)?;
        let (listener, shared) = match self.take(name, |fd| is_family(fd, Family::Unix)) {
            Some((fd, shared)) => {
                let std = std::os::unix::net::UnixListener::from(fd);
                (UnixListener::from_std(std).map_err(failed)?, shared)
            }
            None => (crate::bind_unix(path)?, false),
        };
        self.register(name, &listener, shared).map_err(failed)?;
        Ok(listener)
    }

    /// Takes the inherited socket `name`, or the first unnamed-by-us systemd socket that
    /// fits.
    fn take(&self, name: &str, fits: impl Fn(&OwnedFd) -> bool) -> Option<(OwnedFd, bool)> {
        let mut inherited = lock(&self.inner.inherited);
        let by_name = inherited
            .iter()
            .position(|s| s.name == name && s.fd.as_ref().is_some_and(&fits));
        let any_systemd = || {
            inherited
                .iter()
                .position(|s| s.shared && s.fd.as_ref().is_some_and(&fits))
        };
        let index = by_name.or_else(any_systemd)?;
        let socket = &mut inherited[index];
        socket.fd.take().map(|fd| (fd, socket.shared))
    }

    /// Hands `listener` (a listening socket this process opened some other way) to the
    /// next generation too, as `name`. The listeners from
    /// [`tcp_listener`](Self::tcp_listener) and [`unix_listener`](Self::unix_listener)
    /// are handed over already.
    pub fn add_listener(&self, name: &str, listener: &impl AsFd) -> io::Result<()> {
        check_name(name)?;
        self.register(name, listener, false)
    }

    fn register(&self, name: &str, listener: &impl AsFd, shared: bool) -> io::Result<()> {
        let fd = listener.as_fd().try_clone_to_owned()?;
        let mut sockets = lock(&self.inner.sockets);
        if sockets.iter().any(|socket| socket.name == name) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("a listener named {name:?} was taken already: give each its own name"),
            ));
        }
        sockets.push(Socket {
            name: name.to_owned(),
            fd,
            shared,
        });
        Ok(())
    }

    /// This process serves: tells the previous generation (which then drains), writes
    /// the PID file, and with the `systemd` feature sends `READY=1` (with `MAINPID` when
    /// this process was started by an upgrade). Call it once every listener is taken
    /// and the servers are built; calling it again does nothing.
    ///
    /// Inherited sockets no listener took are closed here.
    pub fn ready(&self) -> io::Result<()> {
        if self.inner.ready.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let unused: Vec<String> = lock(&self.inner.inherited)
            .drain(..)
            .filter(|s| s.fd.is_some())
            .map(|s| s.name)
            .collect();
        if !unused.is_empty() {
            tracing::warn!(
                ?unused,
                "inherited listening sockets no listener took: closed"
            );
        }
        if let Some(path) = &self.inner.pid_file {
            write_pid_file(path)?;
        }
        let parent = lock(&self.inner.parent).take();
        if let Some(parent) = parent {
            handover::send_ready(&parent).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("telling the previous generation failed: {e}"),
                )
            })?;
        }
        notify::ready(self.is_upgrade());
        Ok(())
    }

    /// Upgrades: runs the program again with every listening socket and waits until it
    /// is ready (or exits, or the timeout passes); then triggers this process's shutdown
    /// as a handover and returns the new pid. On an error this process keeps serving and
    /// the next upgrade may be tried at once.
    pub async fn upgrade(&self) -> Result<u32, UpgradeError> {
        let inner = &self.inner;
        if inner.shutdown.is_triggered() {
            return Err(UpgradeError::ShuttingDown);
        }
        if inner.upgrading.swap(true, Ordering::AcqRel) {
            return Err(UpgradeError::InProgress);
        }
        let result = self.run_upgrade().await;
        match &result {
            Ok(pid) => {
                tracing::info!(pid, "upgraded: the new process serves; draining this one");
                counted(true);
            }
            Err(UpgradeError::ShuttingDown) => {}
            Err(error) => {
                inner.failed.fetch_add(1, Ordering::Relaxed);
                counted(false);
                notify::upgrade_failed(error);
                tracing::error!(%error, "upgrade failed; this process keeps serving");
            }
        }
        inner.upgrading.store(false, Ordering::Release);
        result
    }

    /// Upgrades failed so far (also the `failed` label of
    /// [`metric_names::UPGRADES`](crate::metric_names::UPGRADES)).
    pub fn failed_upgrades(&self) -> u64 {
        self.inner.failed.load(Ordering::Relaxed)
    }

    async fn run_upgrade(&self) -> Result<u32, UpgradeError> {
        let inner = &self.inner;
        let sockets = lock(&inner.sockets)
            .iter()
            .map(|socket| {
                Ok(Socket {
                    name: socket.name.clone(),
                    fd: socket.fd.try_clone()?,
                    shared: socket.shared,
                })
            })
            .collect::<io::Result<Vec<_>>>()
            .map_err(UpgradeError::Prepare)?;
        let rendezvous = Rendezvous::bind().map_err(UpgradeError::Prepare)?;
        let mut command = tokio::process::Command::new(&inner.program);
        command
            .args(&inner.args)
            .env(HANDOVER_ENV, rendezvous.name())
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES");
        let listener = rendezvous
            .into_listener()
            .and_then(|listener| {
                listener.set_nonblocking(true)?;
                tokio::net::UnixListener::from_std(listener)
            })
            .map_err(UpgradeError::Prepare)?;
        notify::reloading();
        let mut child = command.spawn().map_err(|source| UpgradeError::Spawn {
            program: inner.program.clone(),
            source,
        })?;
        let pid = child.id().unwrap_or_default();
        tracing::info!(pid, program = %inner.program.display(), "upgrade: new process started");
        let deadline = Instant::now().checked_add(inner.timeout);
        let handover = async {
            let (stream, _) = listener.accept().await?;
            let peer = stream.peer_cred()?.pid();
            if peer.and_then(|p| u32::try_from(p).ok()) != Some(pid) {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("the handover socket was reached by pid {peer:?}, not {pid}"),
                ));
            }
            let stream = stream.into_std()?;
            stream.set_nonblocking(false)?;
            stream.set_write_timeout(Some(CONNECT_TIMEOUT))?;
            handover::send_sockets(&stream, &sockets)?;
            drop(sockets);
            stream.set_nonblocking(true)?;
            let mut stream = tokio::net::UnixStream::from_std(stream)?;
            let mut ready = [0u8; handover::READY.len()];
            stream.read_exact(&mut ready).await?;
            if ready != handover::READY {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the new process sent something other than READY",
                ));
            }
            Ok(())
        };
        let outcome = tokio::select! {
            done = async {
                match deadline {
                    Some(deadline) => tokio::time::timeout_at(deadline, handover).await.ok(),
                    None => Some(handover.await),
                }
            } => match done {
                Some(Ok(())) => None,
                Some(Err(source)) => Some(UpgradeError::Handover { pid, source }),
                None => Some(UpgradeError::NotReady { pid, timeout: inner.timeout }),
            },
            status = child.wait() => Some(match status {
                Ok(status) => UpgradeError::Exited { pid, status },
                Err(source) => UpgradeError::Handover { pid, source },
            }),
            () = inner.shutdown.triggered() => Some(UpgradeError::ShuttingDown),
        };
        match outcome {
            None => {
                // The new process serves: it becomes the main one.
                notify::handed_over(pid);
                // With SO_REUSEPORT and no migration of queued connections, this
                // process's own sockets close with a final stop's care.
                let sockets_shared = !inner.reuse_port || tcp_migrate_req();
                inner.shutdown.trigger_handover_with(sockets_shared);
                Ok(pid)
            }
            Some(error) => {
                stop(&mut child, pid).await;
                Err(error)
            }
        }
    }

    /// Upgrades on every `signal` (the demo: `SIGHUP`), logging the outcome; a signal
    /// while an upgrade is under way is refused with a log line. Needs a tokio runtime.
    pub fn upgrade_on_signal(
        &self,
        signal: tokio::signal::unix::SignalKind,
    ) -> Result<(), crate::Error> {
        let mut signals = tokio::signal::unix::signal(signal).map_err(crate::Error::Signal)?;
        let upgrader = self.clone();
        let shutdown = self.inner.shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    received = signals.recv() => {
                        if received.is_none() {
                            return;
                        }
                    }
                    () = shutdown.drain_started() => return,
                }
                let upgrader = upgrader.clone();
                tokio::spawn(async move {
                    match upgrader.upgrade().await {
                        Err(UpgradeError::InProgress) => {
                            tracing::warn!("upgrade signal ignored: an upgrade is in progress");
                        }
                        Err(UpgradeError::ShuttingDown) => {
                            tracing::warn!("upgrade signal ignored: shutting down");
                        }
                        // Logged by `upgrade`.
                        Ok(_) | Err(_) => {}
                    }
                });
            }
        });
        Ok(())
    }
}

/// Stops a new process that failed: `SIGTERM`, then `SIGKILL` after [`TERM_GRACE`];
/// always reaped.
async fn stop(child: &mut tokio::process::Child, pid: u32) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    if tokio::time::timeout(TERM_GRACE, child.wait())
        .await
        .is_err()
    {
        tracing::warn!(pid, "the new process ignored SIGTERM: killed");
        let _ = child.kill().await;
    }
}

/// At drain start, the duplicates kept for an upgrade go (so a final stop closes the
/// sockets); at a final stop the PID file goes too.
fn watch_the_end(inner: &Arc<Inner>, runtime: &tokio::runtime::Handle) {
    let weak = Arc::downgrade(inner);
    let shutdown = inner.shutdown.clone();
    runtime.spawn(async move {
        shutdown.drain_started().await;
        let Some(inner) = weak.upgrade() else {
            return;
        };
        lock(&inner.sockets).clear();
        lock(&inner.inherited).clear();
        if shutdown.is_handover() {
            return;
        }
        if let Some(path) = &inner.pid_file {
            remove_pid_file(path);
        }
        drop(inner);
        notify::stopping(&shutdown).await;
    });
}

/// Binds `addr` with `SO_REUSEPORT` (and `SO_REUSEADDR`), as tokio's `bind` would
/// otherwise: each resolved address in turn, the first that binds.
async fn bind_reuse_port(addr: impl ToSocketAddrs) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut last = None;
    for addr in tokio::net::lookup_host(addr).await? {
        let bound = (|| {
            let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
            socket.set_reuse_address(true)?;
            #[cfg(not(any(target_os = "solaris", target_os = "illumos", target_os = "cygwin")))]
            socket.set_reuse_port(true)?;
            socket.set_nonblocking(true)?;
            socket.bind(&addr.into())?;
            socket.listen(1024)?;
            TcpListener::from_std(socket.into())
        })();
        match bound {
            Ok(listener) => return Ok(listener),
            Err(error) => last = Some(error),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "the address resolved to nothing",
        )
    }))
}

/// Whether Linux moves a closing `SO_REUSEPORT` listener's connections to another one
/// (`net.ipv4.tcp_migrate_req`).
fn tcp_migrate_req() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req")
        .is_ok_and(|value| value.trim() == "1")
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Names travel one per line in the handover.
fn check_name(name: &str) -> io::Result<()> {
    if name.is_empty() || name.contains(['\n', '\t', ':']) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a listener name must be non-empty, without newlines, tabs or colons: {name:?}"
            ),
        ));
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    Tcp,
    Unix,
}

fn is_family(fd: &OwnedFd, family: Family) -> bool {
    let socket = socket2::SockRef::from(fd);
    let Ok(addr) = socket.local_addr() else {
        return false;
    };
    match family {
        Family::Tcp => addr.as_socket().is_some(),
        Family::Unix => addr.is_unix(),
    }
}

fn write_pid_file(path: &Path) -> io::Result<()> {
    let pid = std::process::id();
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{pid}.tmp"));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, format!("{pid}\n"))
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io::Error::new(
                e.kind(),
                format!("writing the PID file {}: {e}", path.display()),
            )
        })
}

/// Removes the PID file if it still names this process.
fn remove_pid_file(path: &Path) {
    let ours = std::fs::read_to_string(path)
        .is_ok_and(|text| text.trim().parse() == Ok(std::process::id()));
    if ours {
        let _ = std::fs::remove_file(path);
    }
}

fn counted(ok: bool) {
    #[cfg(feature = "metrics")]
    metrics::counter!(
        crate::metric_names::UPGRADES,
        "result" => if ok { "ok" } else { "failed" }
    )
    .increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = ok;
}

/// sd_notify messages (feature `systemd`; nothing without it, or outside systemd).
mod notify {
    #[cfg(feature = "systemd")]
    use sd_notify::NotifyState;

    #[cfg(feature = "systemd")]
    fn send(states: &[NotifyState<'_>]) {
        if let Err(error) = sd_notify::notify(states) {
            tracing::debug!(%error, "sd_notify failed");
        }
    }

    /// `READY=1` (the new generation also says it is the main process).
    pub(super) fn ready(upgraded: bool) {
        #[cfg(feature = "systemd")]
        {
            let pid = std::process::id();
            if upgraded {
                send(&[NotifyState::MainPid(pid), NotifyState::Ready]);
            } else {
                send(&[NotifyState::Ready]);
            }
        }
        #[cfg(not(feature = "systemd"))]
        let _ = upgraded;
    }

    /// `RELOADING=1` with `MONOTONIC_USEC`, at upgrade start.
    pub(super) fn reloading() {
        #[cfg(feature = "systemd")]
        {
            let mut states = vec![NotifyState::Reloading];
            if let Ok(now) = NotifyState::monotonic_usec_now() {
                states.push(now);
            }
            states.push(NotifyState::Status("upgrading"));
            send(&states);
        }
    }

    /// The new process serves: `MAINPID=` it, then `READY=1`.
    pub(super) fn handed_over(pid: u32) {
        #[cfg(feature = "systemd")]
        send(&[
            NotifyState::MainPid(pid),
            NotifyState::Ready,
            NotifyState::Status("upgraded"),
        ]);
        #[cfg(not(feature = "systemd"))]
        let _ = pid;
    }

    /// The reload ended without a new process: `READY=1` again.
    pub(super) fn upgrade_failed(error: &super::UpgradeError) {
        #[cfg(feature = "systemd")]
        {
            let status = format!("upgrade failed: {error}");
            send(&[NotifyState::Ready, NotifyState::Status(&status)]);
        }
        #[cfg(not(feature = "systemd"))]
        let _ = error;
    }

    /// How often a draining process tells systemd it is still at work.
    #[cfg(feature = "systemd")]
    const EXTEND_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

    /// A real stop: `STOPPING=1`, then until the shutdown ends, every second,
    /// `EXTEND_TIMEOUT_USEC` (so `TimeoutStopSec` need not cover the worst drain) and
    /// `STATUS=` with what is left.
    pub(super) async fn stopping(shutdown: &crate::Shutdown) {
        #[cfg(feature = "systemd")]
        {
            send(&[NotifyState::Stopping, NotifyState::Status("draining")]);
            let done = shutdown.wait();
            tokio::pin!(done);
            let extend = u32::try_from((3 * EXTEND_EVERY).as_micros()).unwrap_or(u32::MAX);
            loop {
                tokio::select! {
                    _ = &mut done => return,
                    () = tokio::time::sleep(EXTEND_EVERY) => {}
                }
                let status = format!(
                    "draining: {} connections, {} requests in flight",
                    shutdown.connections(),
                    shutdown.in_flight()
                );
                send(&[
                    NotifyState::ExtendTimeoutUsec(extend),
                    NotifyState::Status(&status),
                ]);
            }
        }
        #[cfg(not(feature = "systemd"))]
        let _ = shutdown;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upgrader_outside_a_runtime_is_a_clear_error() {
        let shutdown = Shutdown::new();
        let error = Upgrader::new(&shutdown).unwrap_err();
        assert!(
            error.to_string().contains("inside a tokio runtime"),
            "{error}"
        );
    }

    #[test]
    fn listener_names_travel_one_per_line() {
        assert!(check_name("http").is_ok());
        for bad in ["", "a\nb", "a\tb", "a:b"] {
            let error = check_name(bad).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
    }
}
