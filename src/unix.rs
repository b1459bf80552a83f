//! Unix domain sockets: binding a path that an earlier run left behind.

use std::io;
use std::path::Path;

use tokio::net::UnixListener;

use crate::Error;

/// Binds a Unix socket at `path`, for [`serve`](crate::serve()).
///
/// A socket file stays behind when a process ends (its listener closes, the file does
/// not), and binding it again fails with "Address already in use". This removes such a
/// stale file first, but only when nobody is listening on it (a connect is refused);
/// with a live server behind the path it fails as it should.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), httpdown::Error> {
/// # let dir = std::env::temp_dir().join(format!("httpdown-doc-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir).unwrap();
/// let path = dir.join("app.sock");
/// let first = httpdown::bind_unix(&path)?;
/// drop(first); // the file stays behind, as after a crash
/// let again = httpdown::bind_unix(&path)?; // stale: removed and bound again
/// assert!(httpdown::bind_unix(&path).is_err(), "someone listens: not removed");
/// # drop(again);
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # Ok(()) }
/// ```
///
/// # Errors
/// [`Error::Bind`] if the path cannot be bound, or another process listens on it.
pub fn bind_unix(path: impl AsRef<Path>) -> Result<UnixListener, Error> {
    let path = path.as_ref();
    let error = |source: io::Error| Error::Bind {
        addr: path.display().to_string(),
        source,
    };
    match UnixListener::bind(path) {
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {}
        bound => return bound.map_err(error),
    }
    // In use: by a live server, or a file left behind by one that ended?
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(error(io::Error::new(
            io::ErrorKind::AddrInUse,
            "another process is listening on this socket",
        ))),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "removing a stale socket file");
            std::fs::remove_file(path).map_err(error)?;
            UnixListener::bind(path).map_err(error)
        }
        Err(e) => Err(error(e)),
    }
}
