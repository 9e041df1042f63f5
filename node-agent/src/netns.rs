//! Network namespaces: open one, run code or a command inside it, find a
//! running pod's.
//!
//! `setns` changes the namespace of the calling *thread*. The agent is a
//! multi-threaded tokio process, so code never enters a pod namespace on a
//! shared thread: [`NetNs::run`] uses a fresh thread that exits afterwards,
//! and [`NetNs::command`] enters the namespace in the forked child just
//! before `exec` (as `nsenter` does).

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
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
        let fd = OwnedFd::from(file);
        // Entering a non-netns fd would fail later with EINVAL; say so now
        // with the path, instead of installing rules in the wrong place.
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

/// Finds the network namespace of a running Kubernetes pod by its UID, by
/// scanning `/proc` (`proc_root`) for a process whose cgroup path names the
/// pod (`pod<uid>`, with `-` or, under the systemd cgroup driver, `_`) and
/// whose namespace is not the host's (host-network pods have none of their
/// own). Returns a `/proc/<pid>/ns/net` path.
pub fn find_pod_netns(proc_root: &Path, pod_uid: &str) -> io::Result<Option<PathBuf>> {
    if pod_uid.is_empty() {
        return Ok(None);
    }
    let needles = [
        format!("pod{pod_uid}"),
        format!("pod{}", pod_uid.replace('-', "_")),
    ];
    let host_inode = fs::metadata(proc_root.join("self/ns/net"))
        .map(|m| m.ino())
        .ok();
    let mut pids: Vec<u32> = fs::read_dir(proc_root)?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    // Lowest pid first: the sandbox (pause) process starts before the
    // containers, so it is found first when several match.
    pids.sort_unstable();
    for pid in pids {
        let dir = proc_root.join(pid.to_string());
        // Processes come and go while we scan; a vanished one is skipped.
        let Ok(cgroup) = fs::read_to_string(dir.join("cgroup")) else {
            continue;
        };
        if !needles.iter().any(|n| cgroup.contains(n.as_str())) {
            continue;
        }
        let ns = dir.join("ns/net");
        let Ok(meta) = fs::metadata(&ns) else {
            continue;
        };
        if Some(meta.ino()) == host_inode {
            continue;
        }
        return Ok(Some(ns));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_scan_finds_pod_by_uid() {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = tmp.path();
        let mk = |pid: &str, cgroup: &str| {
            let d = root.join(pid);
            fs::create_dir_all(d.join("ns")).expect("mkdir");
            fs::write(d.join("cgroup"), cgroup).expect("cgroup");
            fs::write(d.join("ns/net"), pid).expect("ns");
        };
        fs::create_dir_all(root.join("self/ns")).expect("mkdir");
        fs::write(root.join("self/ns/net"), "host").expect("host ns");
        mk("1", "0::/init.scope\n");
        mk(
            "40",
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1234_abcd.slice/cri-containerd-x.scope\n",
        );
        mk("300", "0::/kubepods/besteffort/pod9999-0000/abc\n");
        fs::create_dir_all(root.join("notapid")).expect("mkdir");
        assert_eq!(
            find_pod_netns(root, "1234-abcd").expect("scan"),
            Some(root.join("40/ns/net"))
        );
        assert_eq!(
            find_pod_netns(root, "9999-0000").expect("scan"),
            Some(root.join("300/ns/net"))
        );
        assert_eq!(find_pod_netns(root, "nope").expect("scan"), None);
        assert_eq!(find_pod_netns(root, "").expect("scan"), None);
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
