//! The admin API's unix socket, and the rule for its path that ztunnel and
//! the waypoint share.
//!
//! A restarting proxy binds the path while its predecessor still drains
//! (the new one takes the path over). At exit a proxy removes the path only
//! if it still leads to its own socket: removing it unconditionally would
//! cut the replacement off from every CLI.

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

/// Who may use the admin socket: its owner only. The socket carries the
/// mutating endpoints (`POST /logging`), so a directory's permissions are
/// not enough on their own.
const SOCKET_MODE: u32 = 0o600;

/// A bound admin socket; [`AdminSocket::release`] removes the path if it
/// is still ours.
#[derive(Debug)]
pub struct AdminSocket {
    path: PathBuf,
    inode: u64,
}

impl AdminSocket {
    /// Binds `path` (creating its directory; taking over a socket left by a
    /// previous run or held by the proxy being replaced), owner-only.
    pub fn bind(path: &Path) -> io::Result<(AdminSocket, UnixListener)> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))?;
        let inode = inode_of(path).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "admin socket vanished after bind")
        })?;
        Ok((
            AdminSocket {
                path: path.to_owned(),
                inode,
            },
            listener,
        ))
    }

    /// Removes the path if it still leads to this socket.
    pub fn release(self) {
        if inode_of(&self.path) == Some(self.inode) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn inode_of(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// Waits for SIGTERM or SIGINT: the start of a drain.
pub async fn wait_for_signal() -> io::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_proxy_leaves_the_path_to_its_replacement() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("run/admin.sock");
        let (old, _old_listener) = AdminSocket::bind(&path).expect("bind");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, SOCKET_MODE);
        // The replacement takes the path over while the old one drains...
        let (new, _new_listener) = AdminSocket::bind(&path).expect("bind again");
        // ...and the old one's exit leaves it alone.
        old.release();
        assert!(
            path.exists(),
            "the old proxy removed its replacement's socket"
        );
        new.release();
        assert!(!path.exists());
    }
}
