//! Named network namespaces (`ip netns`): create, enter, inspect, delete.
//!
//! `setns` moves only the calling thread, so code never enters a namespace
//! on a thread it shares: [`Netns::run`] uses a fresh thread that ends
//! afterwards, and [`Netns::command`] enters in the forked child just before
//! `exec`.

use std::os::unix::fs::MetadataExt;
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
    ns: weft_netns::NetNs,
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
        let ns = weft_netns::NetNs::open(Netns::path_of(name)).map_err(|e| Error::Netns {
            name: name.to_string(),
            message: e.to_string(),
        })?;
        Ok(Netns {
            name: name.to_string(),
            ns,
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
        self.ns.inode()
    }

    /// `ip -n <name> args...`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        exec::sh("ip", &full)
    }

    /// A command that runs inside this namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        self.ns.command(program)
    }

    /// Runs `program args...` inside, failing on a non-zero exit; returns
    /// stdout.
    pub fn sh(&self, program: &str, args: &[&str]) -> Result<String> {
        let out = exec::run(self.command(program).args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `f` on a new thread inside this namespace.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> Result<R> {
        self.ns.run(f).map_err(|e| Error::Netns {
            name: self.name.clone(),
            message: e.to_string(),
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
        let ports = self.ns.listening_tcp_ports().map_err(|e| Error::Netns {
            name: self.name.clone(),
            message: e.to_string(),
        })?;
        Ok(ports.into_iter().collect())
    }
}
