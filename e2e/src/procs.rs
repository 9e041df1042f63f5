//! What `/proc` says about processes: are they (still) the ones we started,
//! and which of them sit in, or hold, one of our network namespaces.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A process's start time in clock ticks since boot (field 22 of
/// `/proc/<pid>/stat`). With the pid it identifies a process for good: a
/// reused pid has another start time.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses; fields
    // are counted after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// True when `pid` is the process started at `started` and has not exited
/// (a zombie counts as exited).
pub fn is_alive(pid: u32, started: u64) -> bool {
    if start_time(pid) != Some(started) {
        return false;
    }
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 1..];
            rest.split_whitespace().next().map(str::to_string)
        });
    !matches!(state.as_deref(), Some("Z") | Some("X") | None)
}

/// The pids whose network namespace is one of `inodes`, or that hold an fd
/// on one of them (the node agent and ztunnel keep pods' namespaces open).
pub fn holders_of(inodes: &BTreeSet<u64>) -> Vec<u32> {
    if inodes.is_empty() {
        return Vec::new();
    }
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let dir = entry.path();
        if netns_inode(&dir.join("ns/net")).is_some_and(|i| inodes.contains(&i))
            || holds_netns_fd(&dir, inodes)
        {
            pids.push(pid);
        }
    }
    pids
}

fn netns_inode(link: &Path) -> Option<u64> {
    let target = std::fs::read_link(link).ok()?;
    let s = target.to_str()?;
    s.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

fn holds_netns_fd(dir: &Path, inodes: &BTreeSet<u64>) -> bool {
    let Ok(fds) = std::fs::read_dir(dir.join("fd")) else {
        return false;
    };
    fds.flatten()
        .any(|fd| netns_inode(&fd.path()).is_some_and(|i| inodes.contains(&i)))
}

/// Sends `signal` to `pid`, ignoring a process that is already gone.
pub fn signal(pid: u32, signal: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(pid), signal);
    }
}

/// Waits until none of `pids` runs any more (bounded); returns those still
/// running.
pub fn wait_gone(pids: &[(u32, u64)], limit: Duration) -> Vec<(u32, u64)> {
    let deadline = Instant::now() + limit;
    loop {
        let left: Vec<(u32, u64)> = pids
            .iter()
            .copied()
            .filter(|&(pid, started)| is_alive(pid, started))
            .collect();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops processes: SIGTERM, up to `grace` to exit, then SIGKILL.
pub fn terminate(pids: &[(u32, u64)], grace: Duration) {
    for &(pid, started) in pids {
        if is_alive(pid, started) {
            signal(pid, Signal::SIGTERM);
        }
    }
    for (pid, started) in wait_gone(pids, grace) {
        if is_alive(pid, started) {
            signal(pid, Signal::SIGKILL);
        }
    }
    wait_gone(pids, Duration::from_secs(5));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive() {
        let me = std::process::id();
        let started = start_time(me).expect("own start time");
        assert!(is_alive(me, started));
        assert!(!is_alive(me, started + 1));
    }
}
