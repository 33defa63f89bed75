//! How a client in another process wakes the runtime that owns a SQLite journal, so
//! that the runtime applies a command at once without polling the journal while idle:
//! a datagram on a Unix socket in Linux's abstract namespace, named after the journal
//! file's identity (its device and inode), so every name of the file reaches the same
//! socket and nothing is created on disk.
//!
//! The datagram carries nothing: it only says "read the command table". Anyone may
//! send one; the worst it does is a read that finds nothing new. Where there is no
//! abstract namespace (other systems), the runtime reads the table every
//! [`POLL`] instead.

use std::path::Path;
use std::time::Duration;

/// How often a runtime that has no wake socket reads the command table.
pub(crate) const POLL: Duration = Duration::from_millis(500);

/// The socket's name for the journal at `path`; `None` if the file cannot be looked at.
#[cfg(target_os = "linux")]
fn name(path: &Path) -> Option<String> {
    let (dev, ino) = super::identity::file_id(path)?;
    Some(format!("durable-journal-{dev:x}-{ino:x}"))
}

/// The owner's end: a socket bound to the journal's name, or nothing (then it polls).
#[derive(Debug)]
pub(crate) struct Doorbell {
    #[cfg(target_os = "linux")]
    socket: Option<tokio::net::UnixDatagram>,
}

impl Doorbell {
    /// Binds the journal's name, if it can; a runtime that cannot polls.
    #[cfg(target_os = "linux")]
    pub(crate) fn bind(path: &Path) -> Doorbell {
        use std::os::linux::net::SocketAddrExt;
        let addr = name(path).and_then(|name| {
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).ok()
        });
        let Some(addr) = addr else {
            return Doorbell { socket: None };
        };
        // A runtime of this process that closed a moment ago may still hold the name.
        for attempt in 0..20 {
            match std::os::unix::net::UnixDatagram::bind_addr(&addr) {
                Ok(socket) => {
                    let socket = socket
                        .set_nonblocking(true)
                        .and_then(|()| tokio::net::UnixDatagram::from_std(socket));
                    return Doorbell {
                        socket: socket.ok(),
                    };
                }
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && attempt < 19 => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => {
                    tracing::debug!(
                        journal = %path.display(),
                        "no wake socket for commands ({e}); reading them every {POLL:?}"
                    );
                    break;
                }
            }
        }
        Doorbell { socket: None }
    }

    /// Without an abstract namespace: nothing to bind, the owner polls.
    #[cfg(not(target_os = "linux"))]
    pub(crate) fn bind(_path: &Path) -> Doorbell {
        Doorbell {}
    }

    /// Returns when a client may have written a command: a datagram came (all those
    /// waiting are taken), or, without a socket, [`POLL`] passed.
    pub(crate) async fn rung(&mut self) {
        #[cfg(target_os = "linux")]
        if let Some(socket) = &self.socket {
            let mut buf = [0u8; 16];
            if socket.recv(&mut buf).await.is_ok() {
                while socket.try_recv(&mut buf).is_ok() {}
                return;
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The client's end: wakes the runtime that owns the journal at `path`, if one listens.
/// Best effort: a runtime that does not listen reads the command table at its open.
#[cfg(target_os = "linux")]
pub(crate) fn ring(path: &Path) {
    use std::os::linux::net::SocketAddrExt;
    let Some(name) = name(path) else { return };
    let Ok(addr) = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()) else {
        return;
    };
    if let Ok(socket) = std::os::unix::net::UnixDatagram::unbound() {
        let _ = socket.set_nonblocking(true);
        // A full queue of datagrams (WouldBlock) already holds a wake.
        let _ = socket.send_to_addr(&[1], &addr);
    }
}

/// Without an abstract namespace: the owner polls.
#[cfg(not(target_os = "linux"))]
pub(crate) fn ring(_path: &Path) {}
