//! The listening sockets a process starts with: inherited from the previous generation
//! (a handover), from systemd (socket activation), or bound here; and the ones it will
//! hand to the next generation.

use std::io;
use std::os::fd::OwnedFd;

use super::InheritError;

/// One inherited socket, until a listener takes it.
pub(crate) struct Inherited {
    pub(crate) name: String,
    pub(crate) fd: Option<OwnedFd>,
    /// Held by systemd as well: never filtered (it outlives this process).
    pub(crate) shared: bool,
}

/// Reads systemd's socket-activation variables (`LISTEN_FDS`, `LISTEN_PID`,
/// `LISTEN_FDNAMES`). `check_pid`: a missing `LISTEN_PID` is an error (a `LISTEN_PID`
/// naming another process always means the sockets are not this process's).
pub(crate) fn from_systemd(check_pid: bool) -> Result<Vec<Inherited>, InheritError> {
    let Some(count) = std::env::var_os("LISTEN_FDS") else {
        return Ok(Vec::new());
    };
    let count: usize = count
        .to_str()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| InheritError::Invalid(format!("LISTEN_FDS is not a number: {count:?}")))?;
    match std::env::var("LISTEN_PID") {
        Ok(pid) if pid.parse() == Ok(std::process::id()) => {}
        Ok(pid) => {
            tracing::debug!(%pid, "LISTEN_FDS is for another process (LISTEN_PID)");
            return Ok(Vec::new());
        }
        Err(_) if check_pid => return Err(InheritError::MissingListenPid),
        Err(_) => {}
    }
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|names| names.split(':').map(str::to_owned).collect())
        .unwrap_or_default();
    // listenfd reads (and clears) LISTEN_FDS and LISTEN_PID, checks each socket's type
    // and marks it close-on-exec.
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() != count {
        return Err(InheritError::Invalid(format!(
            "LISTEN_FDS says {count} sockets, {} were found",
            fds.len()
        )));
    }
    let mut inherited = Vec::with_capacity(count);
    for index in 0..count {
        let name = names
            .get(index)
            .cloned()
            .unwrap_or_else(|| "unknown".to_owned());
        let fd = match fds.take_tcp_listener(index) {
            Ok(Some(tcp)) => OwnedFd::from(tcp),
            _ => match fds.take_unix_listener(index) {
                Ok(Some(unix)) => OwnedFd::from(unix),
                _ => return Err(InheritError::WrongType { index, name }),
            },
        };
        check_listening(&fd, index, &name)?;
        inherited.push(Inherited {
            name,
            fd: Some(fd),
            shared: true,
        });
    }
    Ok(inherited)
}

/// An inherited stream socket must be listening (not a connection: `Accept=yes` units
/// pass those).
pub(crate) fn check_listening(fd: &OwnedFd, index: usize, name: &str) -> Result<(), InheritError> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let socket = socket2::SockRef::from(fd);
        if !socket.is_listener().unwrap_or(false) {
            return Err(InheritError::NotListening {
                index,
                name: name.to_owned(),
            });
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = (fd, index, name);
    Ok(())
}

/// Prepares an inherited socket for tokio: non-blocking (a blocking socket would hang
/// `accept` or make tokio panic), and without a socket filter an earlier process may have
/// left on it at its final stop.
pub(crate) fn prepare(fd: &OwnedFd) -> io::Result<()> {
    let socket = socket2::SockRef::from(fd);
    socket.set_nonblocking(true)?;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        // ENOENT: there was none.
        let _ = socket.detach_filter();
    }
    Ok(())
}
