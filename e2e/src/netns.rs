//! Named network namespaces (`ip netns`): create, enter, inspect, delete.
//!
//! `setns` moves only the calling thread, so code never enters a namespace
//! on a thread it shares: [`Netns::run`] uses a fresh thread that ends
//! afterwards, and [`Netns::command`] enters in the forked child just before
//! `exec`.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};
use crate::exec;

/// Where `ip netns` keeps its bind mounts.
pub const NETNS_DIR: &str = "/var/run/netns";

/// An open, named network namespace. Holding it keeps the namespace alive,
/// but not its name: [`Netns::delete`] removes the name.
#[derive(Debug)]
pub struct Netns {
    name: String,
    fd: OwnedFd,
    inode: u64,
}

impl Netns {
    /// Creates `name` (it must not exist) with its loopback up, as every
    /// runtime does for a sandbox.
    pub fn create(name: &str) -> Result<Netns> {
        exec::sh("ip", &["netns", "add", name])?;
        let ns = Netns::open(name)?;
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Opens the existing namespace `name`.
    pub fn open(name: &str) -> Result<Netns> {
        let path = Netns::path_of(name);
        let file = std::fs::File::open(&path).map_err(|e| Error::Netns {
            name: name.to_string(),
            message: format!("cannot open {}: {e}", path.display()),
        })?;
        let inode = file.metadata().map_err(Error::io(&path))?.ino();
        Ok(Netns {
            name: name.to_string(),
            fd: OwnedFd::from(file),
            inode,
        })
    }

    /// The bind mount of `name`.
    pub fn path_of(name: &str) -> PathBuf {
        Path::new(NETNS_DIR).join(name)
    }

    /// True when a namespace called `name` exists.
    pub fn exists(name: &str) -> bool {
        Netns::path_of(name).exists()
    }

    /// The names of all namespaces `ip netns` knows.
    pub fn list() -> Result<Vec<String>> {
        let dir = Path::new(NETNS_DIR);
        if !dir.exists() {
            return Ok(Vec::new());
        }
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map_err(Error::io(dir))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        names.sort();
        Ok(names)
    }

    /// Removes the name `name`; the namespace itself goes away with the last
    /// process or open handle inside it. Deleting a missing name is fine.
    pub fn delete(name: &str) -> Result<()> {
        if !Netns::exists(name) {
            return Ok(());
        }
        exec::sh("ip", &["netns", "del", name]).map(|_| ())
    }

    /// The inode of `name`'s namespace, if it exists.
    pub fn inode_of(name: &str) -> Option<u64> {
        std::fs::metadata(Netns::path_of(name))
            .ok()
            .map(|m| m.ino())
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its bind mount, the path a runtime passes as `CNI_NETNS`.
    pub fn path(&self) -> PathBuf {
        Netns::path_of(&self.name)
    }

    /// Its inode (`net:[inode]` in `/proc/<pid>/ns/net`).
    pub fn inode(&self) -> u64 {
        self.inode
    }

    /// `ip -n <name> args...`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        exec::sh("ip", &full)
    }

    /// A command that runs inside this namespace.
    #[allow(unsafe_code)]
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        let fd = self.fd.as_raw_fd();
        // SAFETY: runs in the forked child before exec and makes only the
        // async-signal-safe setns syscall, on an fd the child inherited (it
        // stays open until exec: it is close-on-exec).
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    /// Runs `program args...` inside, failing on a non-zero exit; returns
    /// stdout.
    pub fn sh(&self, program: &str, args: &[&str]) -> Result<String> {
        let out = exec::run(self.command(program).args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `f` on a new thread inside this namespace.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> Result<R> {
        std::thread::scope(|scope| {
            let handle = scope.spawn(|| {
                nix::sched::setns(&self.fd, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                    Error::Netns {
                        name: self.name.clone(),
                        message: format!("setns: {e}"),
                    }
                })?;
                Ok(f())
            });
            handle.join().map_err(|_| Error::Netns {
                name: self.name.clone(),
                message: "the code run inside panicked".into(),
            })?
        })
    }

    /// Sets a sysctl under `/proc/sys/net` for this namespace, e.g.
    /// `ipv4/ip_forward`.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = Path::new("/proc/sys/net").join(key);
        self.run(|| std::fs::write(&path, value))?
            .map_err(Error::io(path))
    }

    /// The TCP ports something listens on inside, IPv4 and IPv6.
    pub fn listening_tcp_ports(&self) -> Result<Vec<u16>> {
        let tables = self.run(|| {
            ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"]
                .iter()
                .map(|p| std::fs::read_to_string(p).unwrap_or_default())
                .collect::<Vec<_>>()
        })?;
        let mut ports: Vec<u16> = tables
            .iter()
            .flat_map(|t| t.lines().skip(1))
            .filter_map(parse_listening_port)
            .collect();
        ports.sort_unstable();
        ports.dedup();
        Ok(ports)
    }
}

/// One line of `/proc/net/tcp`: `sl local_address rem_address st ...`, with
/// the address as `HEX:PORT` and state `0A` for LISTEN.
fn parse_listening_port(line: &str) -> Option<u16> {
    let mut fields = line.split_whitespace();
    let local = fields.nth(1)?;
    let state = fields.nth(1)?;
    if state != "0A" {
        return None;
    }
    let port = local.rsplit(':').next()?;
    u16::from_str_radix(port, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_lines_parse() {
        let listen = "   0: 0100007F:3A98 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0";
        let established = "   1: 0100007F:3A98 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0";
        assert_eq!(parse_listening_port(listen), Some(15000));
        assert_eq!(parse_listening_port(established), None);
        assert_eq!(parse_listening_port("garbage"), None);
    }
}
