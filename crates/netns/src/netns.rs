//! Network namespaces: open one, run code or a command inside it, read
//! what listens there.
//!
//! `setns` changes the namespace of the calling *thread*. weft's processes
//! are multi-threaded tokio processes, so code enters a namespace either on
//! a fresh thread that exits afterwards ([`NetNs::run`]), or for one short
//! synchronous step on the current thread that returns home right after or
//! aborts the process ([`NetNs::run_here`], how ztunnel creates sockets in
//! pods); a command enters it in the forked child just before `exec`
//! ([`NetNs::command`], as `nsenter` does).

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::sched::CloneFlags;

/// Why a namespace could not be opened or entered.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The path could not be opened.
    #[error("cannot open network namespace {path}: {source}")]
    Open {
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The path is not a network namespace.
    #[error("{0} is not a network namespace")]
    NotANetns(PathBuf),
    /// `setns` failed.
    #[error("cannot enter network namespace {path}: {source}")]
    Enter {
        /// The namespace's path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The thread running code in the namespace panicked.
    #[error("the task inside network namespace {0} panicked")]
    Panicked(PathBuf),
}

/// An open network namespace. Holding it keeps the namespace alive.
#[derive(Debug)]
pub struct NetNs {
    fd: OwnedFd,
    path: PathBuf,
    inode: u64,
}

impl NetNs {
    /// Opens the namespace at `path` (`/var/run/netns/<name>`,
    /// `/proc/<pid>/ns/net`, or a CNI_NETNS path).
    pub fn open(path: impl Into<PathBuf>) -> Result<NetNs, NetnsError> {
        let path = path.into();
        let file = fs::File::open(&path).map_err(|source| NetnsError::Open {
            path: path.clone(),
            source,
        })?;
        NetNs::from_fd(OwnedFd::from(file), path)
    }

    /// A namespace from an fd (e.g. received from the node agent); `label`
    /// names it in errors and logs.
    pub fn from_fd(fd: OwnedFd, label: impl Into<PathBuf>) -> Result<NetNs, NetnsError> {
        let path = label.into();
        // Entering a non-netns fd would fail later with EINVAL; say so now,
        // instead of installing rules or binding sockets in the wrong place.
        let stat = nix::sys::statfs::fstatfs(&fd).map_err(|e| NetnsError::Open {
            path: path.clone(),
            source: e.into(),
        })?;
        if stat.filesystem_type() != nix::sys::statfs::NSFS_MAGIC {
            return Err(NetnsError::NotANetns(path));
        }
        let inode = nix::sys::stat::fstat(&fd)
            .map_err(|e| NetnsError::Open {
                path: path.clone(),
                source: e.into(),
            })?
            .st_ino;
        Ok(NetNs { fd, path, inode })
    }

    /// The namespace of the calling thread.
    pub fn current() -> Result<NetNs, NetnsError> {
        NetNs::open("/proc/thread-self/ns/net")
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The namespace's inode: two `NetNs` with the same inode are the same
    /// namespace.
    pub fn inode(&self) -> u64 {
        self.inode
    }

    /// Another handle on the same namespace (e.g. to hand to ztunnel).
    pub fn try_clone(&self) -> io::Result<NetNs> {
        Ok(NetNs {
            fd: self.fd.try_clone()?,
            path: self.path.clone(),
            inode: self.inode,
        })
    }

    /// Runs `f` on a new thread inside this namespace and returns its result.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> Result<R, NetnsError> {
        std::thread::scope(|scope| {
            let handle = scope.spawn(|| {
                nix::sched::setns(&self.fd, CloneFlags::CLONE_NEWNET).map_err(|e| {
                    NetnsError::Enter {
                        path: self.path.clone(),
                        source: e.into(),
                    }
                })?;
                Ok(f())
            });
            handle
                .join()
                .map_err(|_| NetnsError::Panicked(self.path.clone()))?
        })
    }

    /// The kernel's cookie for this namespace (`SO_NETNS_COOKIE`): what a
    /// BPF program reads with `bpf_get_netns_cookie` to tell namespaces
    /// apart. Unlike the inode it is never reused while the kernel runs.
    pub fn cookie(&self) -> Result<u64, NetnsError> {
        let cookie = self.run(|| -> io::Result<u64> {
            let socket = std::net::UdpSocket::bind(("127.0.0.1", 0))?;
            socket_cookie(socket.as_fd())
        })?;
        cookie.map_err(|source| NetnsError::Enter {
            path: self.path.clone(),
            source,
        })
    }

    /// Runs `f` on the current thread inside this namespace, then returns to
    /// `home`. For short synchronous steps only (creating a socket: a socket
    /// stays in the namespace it was created in). If the thread cannot
    /// return home the process aborts: a runtime thread stranded in another
    /// namespace would put every later socket in the wrong place.
    pub fn run_here<T>(&self, home: &NetNs, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        nix::sched::setns(&self.fd, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        let result = f();
        if let Err(e) = nix::sched::setns(&home.fd, CloneFlags::CLONE_NEWNET) {
            tracing::error!(error = %e, netns = %home.path.display(), "cannot return to the home network namespace; aborting");
            std::process::abort();
        }
        result
    }

    /// The TCP ports something listens on inside, IPv4 and IPv6 (read from
    /// `/proc/thread-self/net/tcp*` on a thread inside: no connection is
    /// made).
    pub fn listening_tcp_ports(&self) -> Result<BTreeSet<u16>, NetnsError> {
        self.run(|| {
            let mut ports = BTreeSet::new();
            for file in ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"] {
                // tcp6 is absent when IPv6 is disabled.
                if let Ok(text) = fs::read_to_string(file) {
                    ports.extend(listening_ports(&text));
                }
            }
            ports
        })
    }

    /// A command that runs inside this namespace.
    #[allow(unsafe_code)]
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        let raw = self.fd.as_raw_fd();
        // SAFETY: the closure runs in the forked child before exec and only
        // makes the async-signal-safe setns syscall on an fd inherited from
        // the parent (open until exec, as it is close-on-exec).
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(raw, libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }
}

impl AsFd for NetNs {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Ports in state LISTEN (`0A`) in a `/proc/net/tcp` table.
pub fn listening_ports(table: &str) -> BTreeSet<u16> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            let local = cols.nth(1)?;
            let state = cols.nth(1)?;
            if state != "0A" {
                return None;
            }
            let port = local.rsplit_once(':')?.1;
            u16::from_str_radix(port, 16).ok()
        })
        .collect()
}

/// `SO_NETNS_COOKIE` of a socket: its namespace's cookie.
#[allow(unsafe_code)]
fn socket_cookie(socket: BorrowedFd<'_>) -> io::Result<u64> {
    // Linux's value on every architecture weft builds for (libc does not
    // export it on all of them).
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`, which
    // outlives the call, and `socket` is a valid open fd.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_tcp() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:3A99 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 0100007F:3A9E 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 100 0 0 10 0
   2: 0100007F:3A99 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 20 4 30 10 -1
   garbage line
";
        assert_eq!(listening_ports(table), BTreeSet::from([15001, 15006]));
        assert!(listening_ports("").is_empty());
    }

    #[test]
    fn open_rejects_non_netns() {
        let tmp = tempfile::NamedTempFile::new().expect("tmp");
        assert!(matches!(
            NetNs::open(tmp.path()),
            Err(NetnsError::NotANetns(_))
        ));
        assert!(matches!(
            NetNs::open("/nonexistent/ns"),
            Err(NetnsError::Open { .. })
        ));
    }
}
