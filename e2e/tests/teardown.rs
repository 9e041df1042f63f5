//! Nothing of a run is left behind: after a panic (the drop guard), after
//! Ctrl-C (the signal handler), after the harness was killed (`weft-e2e
//! down`), and after `up --keep` (`weft-e2e down`). Needs root.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use weft_e2e::binaries::Binaries;
use weft_e2e::names::{self, RunId};
use weft_e2e::state::RunState;
use weft_e2e::{Cluster, ClusterConfig, PodSpec, ZtunnelMode, cleanup, netns::Netns};

fn weft_e2e() -> Command {
    // The binaries are built once by this process; the child must not run
    // cargo again.
    Binaries::locate()
        .expect("binaries")
        .build(&|_| {})
        .expect("build");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weft-e2e"));
    cmd.env("WEFT_E2E_NO_BUILD", "1");
    cmd
}

/// Asserts that nothing of `state`'s run is left: no namespace, no
/// directory, no process, and no process inside any of its namespaces.
fn assert_gone(state: &RunState) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = cleanup::leftovers(&state.run_id, &state.dir, &state.processes);
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "left behind: {left:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    for name in &state.netns {
        assert!(!Netns::exists(name), "{name} still exists");
    }
}

/// Runs `weft-e2e down <run>` when dropped, so a failing test does not
/// leave its cluster behind either.
struct DownOnDrop(RunId);

impl Drop for DownOnDrop {
    fn drop(&mut self) {
        let _ = cleanup::down(&names::root_dir(), Some(&self.0), true);
    }
}

/// Starts `weft-e2e up` and returns it once it says the cluster is up,
/// with the run's state.
fn up(args: &[&str]) -> (Child, RunState) {
    let mut child = weft_e2e()
        .arg("up")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("weft-e2e up");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut id = None;
    for line in lines.by_ref() {
        let line = line.expect("read");
        if let Some(rest) = line.strip_prefix("Cluster ") {
            id = rest.split_whitespace().next().and_then(RunId::parse);
            break;
        }
    }
    // Keep reading: a closed pipe would fail the harness's next print.
    std::thread::spawn(move || lines.for_each(drop));
    let id = id.expect("weft-e2e up printed its run id");
    let state = RunState::load(&names::root_dir().join(id.as_str())).expect("state");
    assert!(state.processes.iter().all(|p| p.alive()), "{state:?}");
    (child, state)
}

#[test]
fn a_panic_inside_a_test_leaves_nothing_behind() {
    let _one = serial();
    let seen: Mutex<Option<RunState>> = Mutex::new(None);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut c = Cluster::up(ClusterConfig {
            ztunnel: ZtunnelMode::On,
            ..ClusterConfig::default()
        })
        .expect("up");
        c.add_namespace("shop", true).expect("namespace");
        c.add_pod(PodSpec::new("shop", "web").echo_server())
            .expect("pod");
        *seen.lock().expect("lock") = Some(c.state().clone());
        panic!("a failed assertion");
    }));
    assert!(result.is_err());
    let state = seen
        .lock()
        .expect("lock")
        .take()
        .expect("the cluster came up");
    assert!(!state.pods.is_empty());
    assert_gone(&state);
}

#[test]
fn ctrl_c_tears_the_cluster_down() {
    let _one = serial();
    let (mut child, state) = up(&["--nodes", "1"]);
    let _guard = DownOnDrop(state.run_id.clone());
    weft_e2e::procs::signal(child.id(), nix::sys::signal::Signal::SIGINT);
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(130), "{status}");
    assert_gone(&state);
}

#[test]
fn down_cleans_up_after_a_killed_harness() {
    let _one = serial();
    let (mut child, state) = up(&["--nodes", "2"]);
    let _guard = DownOnDrop(state.run_id.clone());
    child.kill().expect("SIGKILL the harness");
    child.wait().expect("wait");
    // Its processes and namespaces outlive it...
    assert!(state.processes.iter().all(|p| p.alive()));
    assert!(state.netns.iter().all(|n| Netns::exists(n)));
    // ...until `down`.
    let out = weft_e2e()
        .args(["down", state.run_id.as_str()])
        .output()
        .expect("down");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_gone(&state);
}

#[test]
fn a_kept_cluster_shows_in_status_and_goes_with_down() {
    let _one = serial();
    let (mut child, state) = up(&["--nodes", "1", "--keep"]);
    let _guard = DownOnDrop(state.run_id.clone());
    assert!(child.wait().expect("wait").success());
    let status = weft_e2e()
        .args(["status", state.run_id.as_str()])
        .output()
        .expect("status");
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("kept"), "{text}");
    assert!(text.contains("node-1/node-agent"), "{text}");
    assert!(state.processes.iter().all(|p| p.alive()));
    let out = weft_e2e()
        .args(["down", state.run_id.as_str()])
        .output()
        .expect("down");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_gone(&state);
}
