//! The handover between two generations of a process: a Unix socket the old one listens
//! on and the new one connects to (its name in [`HANDOVER_ENV`]), over which the old one
//! sends every listening socket (with their names, as `SCM_RIGHTS`) and the new one says
//! when it is ready.
//!
//! No descriptor number crosses `exec`: the new process owns only what it receives, so
//! nothing here needs `unsafe`, and a process that was not started for a handover (an
//! environment variable left behind) finds no socket to connect to.

use std::io::{self, IoSlice, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// The variable that tells a new generation where to reach the old one.
pub(crate) const HANDOVER_ENV: &str = "HTTPDOWN_HANDOVER";

/// What the new generation sends once it accepts.
pub(crate) const READY: &[u8] = b"READY\n";

/// The most sockets one handover carries.
pub(crate) const MAX_SOCKETS: usize = 64;

/// The protocol's first line, so a stray connection is refused.
const HELLO: &str = "httpdown-handover/1";

/// A socket, private to this process's user, that the next generation connects to.
pub(crate) struct Rendezvous {
    listener: UnixListener,
    name: String,
    /// The path to remove, for a rendezvous in the file system.
    path: Option<std::path::PathBuf>,
}

impl Rendezvous {
    /// Binds a fresh rendezvous: in Linux's abstract namespace (nothing in the file
    /// system), elsewhere a socket file in the temporary directory.
    pub(crate) fn bind() -> io::Result<Rendezvous> {
        let name = format!("httpdown-handover-{}-{:016x}", std::process::id(), nonce());
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            let listener = UnixListener::bind_addr(&addr)?;
            Ok(Rendezvous {
                listener,
                name: format!("@{name}"),
                path: None,
            })
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        {
            let path = std::env::temp_dir().join(format!("{name}.sock"));
            let listener = UnixListener::bind(&path)?;
            Ok(Rendezvous {
                listener,
                name: path.display().to_string(),
                path: Some(path),
            })
        }
    }

    /// Where the new generation connects (the value of [`HANDOVER_ENV`]).
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The listener, to wait for the new generation's connection.
    pub(crate) fn into_listener(mut self) -> io::Result<UnixListener> {
        let listener = self.listener.try_clone()?;
        self.path.take().map(std::fs::remove_file);
        Ok(listener)
    }
}

impl Drop for Rendezvous {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Some bits that differ between runs, to make the rendezvous name unguessable enough not
/// to collide (authentication is the peer's pid, checked on accept).
fn nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    hasher.finish()
}

/// Connects to the old generation at `name` (`@name` for the abstract namespace).
pub(crate) fn connect(name: &str, timeout: Duration) -> io::Result<UnixStream> {
    let stream = match name.strip_prefix('@') {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        Some(abstract_name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)?;
            UnixStream::connect_addr(&addr)?
        }
        _ => UnixStream::connect(name)?,
    };
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok(stream)
}

/// One listening socket as it crosses a handover.
#[derive(Debug)]
pub(crate) struct Socket {
    pub(crate) name: String,
    pub(crate) fd: OwnedFd,
    /// Held by systemd as well (see [`sockets`](super::sockets)).
    pub(crate) shared: bool,
}

/// Sends `sockets` over `stream`: one message, a line per socket (its name and whether it
/// is shared) as text and the descriptors as `SCM_RIGHTS`.
pub(crate) fn send_sockets(stream: &UnixStream, sockets: &[Socket]) -> io::Result<()> {
    if sockets.len() > MAX_SOCKETS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("at most {MAX_SOCKETS} sockets can be handed over"),
        ));
    }
    let mut text = format!("{HELLO}\n{}\n", sockets.len());
    for socket in sockets {
        text.push_str(&socket.name);
        text.push_str(if socket.shared { "\tshared\n" } else { "\n" });
    }
    let fds: Vec<_> = sockets.iter().map(|socket| socket.fd.as_fd()).collect();
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(io::Error::other("no room for the descriptors"));
    }
    let sent = sendmsg(
        stream,
        &[IoSlice::new(text.as_bytes())],
        &mut control,
        SendFlags::empty(),
    )?;
    if sent != text.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "the handover message was cut short",
        ));
    }
    Ok(())
}

/// Receives the sockets [`send_sockets`] sent (close-on-exec).
pub(crate) fn receive_sockets(stream: &UnixStream) -> io::Result<Vec<Socket>> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = recvmsg(
        stream,
        &mut [IoSliceMut::new(&mut buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    let text = std::str::from_utf8(&buf[..received.bytes])
        .map_err(|_| invalid("the handover message is not text"))?;
    let mut lines = text.lines();
    if lines.next() != Some(HELLO) {
        return Err(invalid("not a handover from httpdown"));
    }
    let count: usize = lines
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| invalid("no socket count in the handover message"))?;
    let entries: Vec<&str> = lines.collect();
    if entries.len() != count || fds.len() != count {
        return Err(invalid(format!(
            "the handover announced {count} sockets, and carried {} names and {} descriptors",
            entries.len(),
            fds.len()
        )));
    }
    Ok(entries
        .into_iter()
        .zip(fds)
        .map(|(entry, fd)| {
            let (name, shared) = match entry.strip_suffix("\tshared") {
                Some(name) => (name, true),
                None => (entry, false),
            };
            Socket {
                name: name.to_owned(),
                fd,
                shared,
            }
        })
        .collect())
}

/// Tells the old generation this one accepts now.
pub(crate) fn send_ready(mut stream: &UnixStream) -> io::Result<()> {
    stream.write_all(READY)
}

/// Waits for [`send_ready`] (blocking, within the stream's read timeout).
#[cfg(test)]
fn receive_ready(mut stream: &UnixStream) -> io::Result<()> {
    use std::io::Read;
    let mut buf = [0u8; READY.len()];
    stream.read_exact(&mut buf)?;
    if buf != READY {
        return Err(invalid(
            "the new generation sent something other than READY",
        ));
    }
    Ok(())
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_and_their_names_cross_a_unix_socket() {
        let (old, new) = UnixStream::pair().unwrap();
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let sockets = vec![
            Socket {
                name: "http".to_owned(),
                fd: OwnedFd::from(a),
                shared: false,
            },
            Socket {
                name: "admin".to_owned(),
                fd: OwnedFd::from(b),
                shared: true,
            },
        ];
        send_sockets(&old, &sockets).unwrap();
        let received = receive_sockets(&new).unwrap();
        let names: Vec<_> = received
            .iter()
            .map(|socket| (socket.name.as_str(), socket.shared))
            .collect();
        assert_eq!(names, [("http", false), ("admin", true)]);
        let addrs: Vec<_> = received
            .into_iter()
            .map(|socket| std::net::TcpListener::from(socket.fd).local_addr().unwrap())
            .collect();
        assert_eq!(addrs, [a_addr, b_addr], "the same listening sockets");

        send_ready(&new).unwrap();
        receive_ready(&old).unwrap();
    }

    #[test]
    fn a_stray_message_is_refused() {
        let (mut old, new) = UnixStream::pair().unwrap();
        old.write_all(b"hello\n").unwrap();
        let err = receive_sockets(&new).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }

    #[test]
    fn a_rendezvous_is_reached_by_its_name() {
        let rendezvous = Rendezvous::bind().unwrap();
        let name = rendezvous.name().to_owned();
        let listener = rendezvous.into_listener().unwrap();
        let client = connect(&name, Duration::from_secs(1)).unwrap();
        let (server, _) = listener.accept().unwrap();
        send_ready(&client).unwrap();
        receive_ready(&server).unwrap();
    }
}
