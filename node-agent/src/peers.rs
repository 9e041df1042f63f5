//! Who may use the node agent's sockets (the plugin's request socket and
//! ztunnel's handoff socket): root — the container runtime that runs the
//! plugin, and ztunnel — or the agent's own user. The sockets are also
//! owner-only (mode 0600); the credential check holds even if a mode or a
//! directory is loosened, and names the refused caller.

use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use nix::sys::socket::{getsockopt, sockopt};

/// The mode of the agent's sockets.
pub const SOCKET_MODE: u32 = 0o600;

/// A caller the agent does not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refused: peer uid {uid} (pid {pid}) is neither root nor the node agent's user")]
pub struct PeerRefused {
    pub uid: u32,
    pub pid: i32,
}

/// Whether a peer with `uid` may talk to the agent.
pub fn admit(uid: u32, pid: i32) -> Result<(), PeerRefused> {
    let own = nix::unistd::geteuid().as_raw();
    if uid == 0 || uid == own {
        Ok(())
    } else {
        Err(PeerRefused { uid, pid })
    }
}

/// Checks the peer of a connected unix socket.
pub fn check(fd: impl AsFd) -> io::Result<Result<(), PeerRefused>> {
    let cred = getsockopt(&fd, sockopt::PeerCredentials).map_err(io::Error::from)?;
    Ok(admit(cred.uid(), cred.pid()))
}

/// Makes a socket file owner-only.
pub fn restrict(path: &Path) -> io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_our_own_user_only() {
        let own = nix::unistd::geteuid().as_raw();
        assert_eq!(admit(0, 1), Ok(()));
        assert_eq!(admit(own, 1), Ok(()));
        let stranger = if own == 65534 { 65533 } else { 65534 };
        let refused = admit(stranger, 42).unwrap_err();
        assert!(
            refused
                .to_string()
                .contains(&format!("uid {stranger} (pid 42)"))
        );
    }
}
