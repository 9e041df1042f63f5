//! Long-running processes of a cluster (controller, node agents, ztunnels,
//! workloads): each one's stdout and stderr go to its own log file, it runs
//! in a process group of its own (so a Ctrl-C at the terminal reaches only
//! the harness, which then stops everything in order), and waiting for it
//! to become ready fails early, with its last log lines, if it exits.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::error::{Error, Result};
use crate::{exec, procs};

/// How many log lines errors quote.
pub const TAIL_LINES: usize = 25;

/// A started process, stopped (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct ManagedProcess {
    name: String,
    child: Child,
    pid: u32,
    started: u64,
    log: PathBuf,
    exited: Option<ExitStatus>,
    detached: bool,
}

impl ManagedProcess {
    /// Starts `cmd` as `name`, appending its output to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<ManagedProcess> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(Error::io(log))?;
        let err = file.try_clone().map_err(Error::io(log))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err))
            .process_group(0);
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            command: exec::describe(&cmd),
            source,
        })?;
        let pid = child.id();
        Ok(ManagedProcess {
            name: name.to_string(),
            child,
            pid,
            started: procs::start_time(pid).unwrap_or_default(),
            log: log.to_path_buf(),
            exited: None,
            detached: false,
        })
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its start time (see [`procs::start_time`]).
    pub fn started(&self) -> u64 {
        self.started
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Its exit status, if it has exited (reaping it).
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// Fails with its status and log tail if it has exited.
    pub fn check_running(&mut self) -> Result<()> {
        match self.exit_status() {
            None => Ok(()),
            Some(status) => Err(Error::Exited {
                name: self.name.clone(),
                status: status.to_string(),
                log_tail: self.log_tail(TAIL_LINES),
            }),
        }
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    /// Sends `signal` (if it still runs).
    pub fn signal(&mut self, signal: Signal) {
        if self.exit_status().is_none() {
            procs::signal(self.pid, signal);
        }
    }

    /// Waits for it to exit (bounded); `None` if it did not.
    pub fn wait_timeout(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exit_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL. Returns the exit status.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        self.signal(Signal::SIGTERM);
        if let Some(status) = self.wait_timeout(grace) {
            return Some(status);
        }
        self.signal(Signal::SIGKILL);
        self.wait_timeout(Duration::from_secs(5))
    }

    /// Waits until `ready` says yes, failing early if the process exits and
    /// after `limit` with its log tail. `what` names the condition.
    pub fn wait_ready(
        &mut self,
        what: &str,
        limit: Duration,
        mut ready: impl FnMut() -> bool,
    ) -> Result<()> {
        let start = Instant::now();
        loop {
            if ready() {
                return Ok(());
            }
            self.check_running()?;
            if start.elapsed() >= limit {
                return Err(Error::NotReady {
                    what: format!("{} ({what})", self.name),
                    waited: limit,
                    log_tail: self.log_tail(TAIL_LINES),
                });
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl ManagedProcess {
    /// Lets it run on after this handle is gone (`up --keep`): it is then
    /// stopped by `weft-e2e down`, through the state file.
    pub fn detach(mut self) {
        self.detached = true;
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        if !self.detached {
            self.stop(Duration::from_secs(3));
        }
    }
}

/// The last `lines` lines of the file at `path` (empty if unreadable).
pub fn log_tail(path: &Path, lines: usize) -> String {
    const WINDOW: u64 = 16 * 1024;
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(WINDOW)));
    let mut buf = Vec::new();
    let _ = file.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Polls `ready` until it says yes or `limit` passes.
pub fn wait_until(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    loop {
        if ready() {
            return Ok(());
        }
        if start.elapsed() >= limit {
            return Err(Error::NotReady {
                what: what.to_string(),
                waited: limit,
                log_tail: String::new(),
            });
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}
