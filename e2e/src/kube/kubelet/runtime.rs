//! The container runtime: runc (Debian's), one bundle per container, all of
//! a run's containers under one state directory so that teardown finds
//! them even after the harness died (see [`delete_all`]).
//!
//! runc rather than crun: Debian's crun refuses a machine whose cgroups are
//! in hybrid mode (v1 controllers beside an empty v2 hierarchy), which these
//! machines are.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// The runc binary.
pub const RUNC: &str = "runc";

/// runc with the run's state directory.
#[derive(Clone, Debug)]
pub struct Runc {
    root: PathBuf,
}

impl Runc {
    /// runc keeping its state in `root`.
    pub fn new(root: &Path) -> Runc {
        Runc {
            root: root.to_path_buf(),
        }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(RUNC);
        cmd.arg("--root").arg(&self.root);
        cmd
    }

    /// Starts container `id` from `bundle` in the foreground: the returned
    /// child exits with the container's status. Its output goes to `log`.
    pub fn run(&self, id: &str, bundle: &Path, log: &Path) -> std::io::Result<Child> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let err = out.try_clone()?;
        let mut cmd = self.command();
        cmd.arg("run")
            .arg("--bundle")
            .arg(bundle)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Out of the harness' process group: a Ctrl-C at the terminal
            // reaches the harness, which stops containers in order.
            .process_group(0);
        cmd.spawn()
    }

    /// Sends `signal` (`TERM`, `KILL`) to container `id`'s processes.
    pub async fn kill(&self, id: &str, signal: &str) {
        let _ = self
            .command()
            .args(["kill", "--all", id, signal])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
    }

    /// Removes container `id`, killing what is left of it.
    pub async fn delete(&self, id: &str) {
        let _ = self
            .command()
            .args(["delete", "--force", id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
    }

    /// Runs `argv` inside container `id` (an exec probe): whether it exited
    /// 0 within `timeout`, and what it printed.
    pub async fn exec(
        &self,
        id: &str,
        argv: &[String],
        timeout: Duration,
    ) -> Result<(bool, String), String> {
        let mut cmd = self.command();
        cmd.arg("exec")
            .arg(id)
            .args(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        match tokio::time::timeout(timeout, cmd.output()).await {
            Ok(Ok(out)) => Ok((
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            )),
            Ok(Err(e)) => Err(format!("runc exec: {e}")),
            Err(_) => Err(format!("timed out after {timeout:?}")),
        }
    }
}

/// The cgroup under which run `run`'s containers live (one per controller
/// of the machine's cgroup hierarchies; [`remove_cgroups`] removes it).
pub fn cgroup_root(run: &crate::names::RunId) -> String {
    format!("/weft-e2e/{}", run.as_str())
}

/// Removes run `run`'s cgroups, deepest first, from every hierarchy (once
/// its processes are gone). Returns the failures.
pub fn remove_cgroups(run: &crate::names::RunId) -> Vec<String> {
    let mut errors = Vec::new();
    let rel = cgroup_root(run);
    let hierarchies = std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten();
    for hierarchy in hierarchies {
        let top = hierarchy.path().join(rel.trim_start_matches('/'));
        if !top.is_dir() {
            continue;
        }
        let mut dirs = Vec::new();
        let mut stack = vec![top];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(entry.path());
                }
            }
            dirs.push(d);
        }
        // Children were pushed after their parents.
        for d in dirs.iter().rev() {
            if let Err(e) = std::fs::remove_dir(d) {
                errors.push(format!("removing cgroup {}: {e}", d.display()));
            }
        }
    }
    errors
}

/// Removes every container under runc state directory `root` (teardown:
/// kills what still runs and removes its cgroups). Returns the failures.
pub fn delete_all(root: &Path) -> Vec<String> {
    if !root.exists() {
        return Vec::new();
    }
    let list = std::process::Command::new(RUNC)
        .arg("--root")
        .arg(root)
        .args(["list", "-q"])
        .output();
    let ids = match list {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
        Ok(out) => {
            return vec![format!(
                "runc list: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )];
        }
        Err(e) => return vec![format!("runc list: {e}")],
    };
    let mut errors = Vec::new();
    for id in ids.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let out = std::process::Command::new(RUNC)
            .arg("--root")
            .arg(root)
            .args(["delete", "--force", id])
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => errors.push(format!(
                "runc delete {id}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => errors.push(format!("runc delete {id}: {e}")),
        }
    }
    errors
}
