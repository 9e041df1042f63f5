//! Teardown: removes every process, namespace and file of a run, from its
//! state file alone, so the same code serves the harness's drop guard, the
//! Ctrl-C handler and `weft-e2e down` after a killed run.
//!
//! Links, rules and routes need no step of their own: all of them live in
//! the run's namespaces and vanish with them. What could keep a namespace
//! alive after its name is gone is a process inside it or holding it open
//! (the node agent and ztunnel hold pods' namespaces), so before deleting,
//! every such process is found through `/proc` and killed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::names::RunId;
use crate::netns::Netns;
use crate::procs;
use crate::state::RunState;

/// How long processes get to exit on SIGTERM before SIGKILL.
pub const GRACE: Duration = Duration::from_secs(3);

/// What a teardown did.
#[derive(Debug, Default)]
pub struct Report {
    /// The run.
    pub run_id: Option<RunId>,
    /// Processes stopped, by name.
    pub stopped: Vec<String>,
    /// Other processes killed because they were inside a namespace of the run.
    pub strays: Vec<u32>,
    /// Namespaces deleted.
    pub netns: Vec<String>,
    /// Where the logs were copied, if asked to (`WEFT_E2E_KEEP_LOGS`).
    pub logs_kept: Option<PathBuf>,
    /// Steps that failed (teardown goes on after a failure).
    pub errors: Vec<String>,
}

/// The namespaces of `run`: those the state lists, plus any other whose name
/// carries the run id (created just before a crash, before the state file
/// said so).
fn run_namespaces(state: &RunState) -> Vec<String> {
    let mut names = state.netns.clone();
    if let Ok(all) = Netns::list() {
        for name in all {
            if RunId::of_netns(&name).as_ref() == Some(&state.run_id) && !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names
}

/// Where a run's kubelets keep runc's state.
pub fn runc_root(run_dir: &Path) -> PathBuf {
    run_dir.join("runc")
}

/// Tears the run of `state` down. Never fails: what could not be removed is
/// listed in the report.
pub fn teardown(state: &RunState) -> Report {
    let mut report = Report {
        run_id: Some(state.run_id.clone()),
        ..Report::default()
    };
    // 1. The processes the run started, politely.
    let recorded: Vec<(u32, u64)> = state
        .processes
        .iter()
        .filter(|p| p.alive())
        .map(|p| (p.pid, p.started))
        .collect();
    report.stopped = state
        .processes
        .iter()
        .filter(|p| p.alive())
        .map(|p| p.name.clone())
        .collect();
    procs::terminate(&recorded, GRACE);

    // 2. Anything else inside or holding one of the namespaces.
    let namespaces = run_namespaces(state);
    let inodes: BTreeSet<u64> = namespaces
        .iter()
        .filter_map(|n| Netns::inode_of(n))
        .collect();
    let strays = procs::holders_of(&inodes);
    for &pid in &strays {
        procs::signal(pid, Signal::SIGKILL);
    }
    let stray_ids: Vec<(u32, u64)> = strays
        .iter()
        .filter_map(|&pid| Some((pid, procs::start_time(pid)?)))
        .collect();
    procs::wait_gone(&stray_ids, Duration::from_secs(5));
    report.strays = strays;
    // The kube-mode kubelets' containers: their processes are gone with the
    // namespaces' holders; runc's records and cgroups go here.
    report
        .errors
        .extend(crate::kube::kubelet::runtime::delete_all(&runc_root(
            &state.dir,
        )));
    report
        .errors
        .extend(crate::kube::kubelet::runtime::remove_cgroups(&state.run_id));

    // 3. The namespaces, newest first (pods before their nodes).
    for name in namespaces.iter().rev() {
        match Netns::delete(name) {
            Ok(()) => report.netns.push(name.clone()),
            Err(e) => report.errors.push(e.to_string()),
        }
    }

    // 4. Mounts under the run (the node agents' BPF filesystems, where the
    // local-leg bypass pins its programs: unmounting detaches them).
    report.errors.extend(unmount_under(&state.dir));

    // 5. The files; the logs first, if someone wants them.
    if let Some(dest) = std::env::var_os("WEFT_E2E_KEEP_LOGS") {
        let dest = PathBuf::from(dest).join(state.run_id.as_str());
        match copy_logs(&state.dir, &dest) {
            Ok(()) => report.logs_kept = Some(dest),
            Err(e) => report.errors.push(format!("keeping logs: {e}")),
        }
    }
    if state.dir.exists()
        && let Err(e) = std::fs::remove_dir_all(&state.dir)
    {
        report
            .errors
            .push(format!("removing {}: {e}", state.dir.display()));
    }
    report
}

/// Lazily unmounts every mount point under `dir`, deepest first.
fn unmount_under(dir: &Path) -> Vec<String> {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    // The fifth field is the mount point (octal escapes aside, which run
    // directories never contain).
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points
        .iter()
        .filter_map(|p| {
            nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH)
                .err()
                .map(|e| format!("unmounting {}: {e}", p.display()))
        })
        .collect()
}

/// Copies every `*.log` under `dir` to `dest`, flattening paths.
fn copy_logs(dir: &Path, dest: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dest)?;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)?.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "log") {
                let rel = path.strip_prefix(dir).unwrap_or(&path);
                let flat = rel.to_string_lossy().replace('/', "_");
                std::fs::copy(&path, dest.join(flat))?;
            }
        }
    }
    Ok(())
}

/// A run found on this machine.
#[derive(Debug)]
pub struct FoundRun {
    /// Its state (read from its state file, or pieced together from the
    /// namespaces that carry its id when the file is gone).
    pub state: RunState,
    /// Whether a state file was found.
    pub has_state_file: bool,
}

/// Every run on this machine: state files under `root`, and namespaces named
/// like a run's.
pub fn find_runs(root: &Path) -> Vec<FoundRun> {
    let mut runs: Vec<FoundRun> = Vec::new();
    if let Ok(entries) = std::fs::read_dir(root) {
        for entry in entries.flatten() {
            let Some(id) = entry.file_name().to_str().and_then(RunId::parse) else {
                continue;
            };
            let dir = entry.path();
            match RunState::load(&dir) {
                Ok(state) => runs.push(FoundRun {
                    state,
                    has_state_file: true,
                }),
                Err(_) => runs.push(FoundRun {
                    state: orphan_state(id, dir),
                    has_state_file: false,
                }),
            }
        }
    }
    for name in Netns::list().unwrap_or_default() {
        let Some(id) = RunId::of_netns(&name) else {
            continue;
        };
        if !runs.iter().any(|r| r.state.run_id == id) {
            runs.push(FoundRun {
                state: orphan_state(id.clone(), root.join(id.as_str())),
                has_state_file: false,
            });
        }
    }
    runs.sort_by(|a, b| a.state.run_id.as_str().cmp(b.state.run_id.as_str()));
    runs
}

fn orphan_state(id: RunId, dir: PathBuf) -> RunState {
    let mut state = RunState::new(id, dir);
    state.owner = None;
    state
}

/// `weft-e2e down`: tears down `only` (any run if `None`), skipping runs whose
/// harness is still alive unless `force`. Returns what was done, and the ids
/// skipped as in use.
pub fn down(root: &Path, only: Option<&RunId>, force: bool) -> (Vec<Report>, Vec<RunId>) {
    let mut reports = Vec::new();
    let mut skipped = Vec::new();
    for run in find_runs(root) {
        if only.is_some_and(|id| *id != run.state.run_id) {
            continue;
        }
        if run.state.owned_by_live_harness() && !force {
            skipped.push(run.state.run_id.clone());
            continue;
        }
        reports.push(teardown(&run.state));
    }
    (reports, skipped)
}

/// What is left of run `id` on this machine: namespaces, its directory, live
/// processes of its state file. Empty after a clean teardown.
pub fn leftovers(id: &RunId, dir: &Path, recorded: &[crate::state::ProcessRecord]) -> Vec<String> {
    let mut left: Vec<String> = Netns::list()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| RunId::of_netns(n).as_ref() == Some(id))
        .map(|n| format!("network namespace {n}"))
        .collect();
    if dir.exists() {
        left.push(format!("directory {}", dir.display()));
    }
    left.extend(
        recorded
            .iter()
            .filter(|p| p.alive())
            .map(|p| format!("process {} (pid {})", p.name, p.pid)),
    );
    left
}
