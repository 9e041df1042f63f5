//! The run's state file, `<run dir>/state.json`: everything the run created
//! that teardown must remove. It is rewritten (atomically) after every
//! change, before the next step, so that `weft-e2e down`, the Ctrl-C handler
//! and `weft-e2e status` — which all read it instead of the harness's memory
//! — see every namespace and process even if the harness was killed a
//! moment later.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::names::RunId;
use crate::procs;

/// The state file's name inside the run directory.
pub const STATE_FILE: &str = "state.json";

/// A process the run started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    /// What it is (`controller`, `node-1/node-agent`, `mesh/server`).
    pub name: String,
    /// Its pid.
    pub pid: u32,
    /// Its start time, so a reused pid is never mistaken for it.
    pub started: u64,
    /// Its log file.
    pub log: PathBuf,
}

impl ProcessRecord {
    /// True while it runs.
    pub fn alive(&self) -> bool {
        procs::is_alive(self.pid, self.started)
    }
}

/// A pod of the run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    /// Its Kubernetes namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its node.
    pub node: String,
    /// Its IP.
    pub ip: String,
    /// Its network namespace.
    pub netns: String,
    /// Whether it runs the sample echo server (TCP 9000, HTTP 8080).
    #[serde(default)]
    pub echo_server: bool,
}

/// A Service of the run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// Its Kubernetes namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its cluster IP.
    pub vip: String,
}

/// A waypoint of the run (the harness plays deployer and kubelet for each
/// Gateway of class `weft-waypoint`). `weftctl --run-dir` reads these.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WaypointRecord {
    /// The Gateway's namespace.
    pub namespace: String,
    /// The Gateway's name.
    pub name: String,
    /// Its pod's name (in the Gateway's namespace).
    pub pod: String,
    /// Its node.
    pub node: String,
    /// Its pod's IP (where ztunnels send HBONE).
    pub ip: String,
    /// Its SPIFFE identity.
    pub identity: String,
    /// Its admin API's unix socket.
    pub admin_socket: PathBuf,
    /// Its bootstrap token file (removed when it stops).
    pub token_file: PathBuf,
}

/// How to reach the controller's debug API (read by `weftctl --run-dir`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ControllerRecord {
    /// The debug API's address inside `netns`.
    pub admin_address: String,
    /// The controller's netns path.
    pub netns: PathBuf,
}

/// Everything a run created.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunState {
    /// The run.
    pub run_id: RunId,
    /// Its directory.
    pub dir: PathBuf,
    /// The harness process that owns the run; `None` once a `--keep` run's
    /// harness has exited and left it to `weft-e2e down`.
    pub owner: Option<ProcessRecord>,
    /// Node names, in order.
    pub nodes: Vec<String>,
    /// Every namespace created, in creation order.
    pub netns: Vec<String>,
    /// Every long-running process started (and still expected to run).
    pub processes: Vec<ProcessRecord>,
    /// The pods.
    pub pods: Vec<PodRecord>,
    /// The Services.
    pub services: Vec<ServiceRecord>,
    /// The waypoints running.
    #[serde(default)]
    pub waypoints: Vec<WaypointRecord>,
    /// The controller's manifest directory (the files registry).
    #[serde(default)]
    pub manifests: Option<PathBuf>,
    /// The controller's debug API.
    #[serde(default)]
    pub controller: Option<ControllerRecord>,
    /// The SPIFFE trust domain.
    #[serde(default)]
    pub trust_domain: Option<String>,
}

impl RunState {
    /// A fresh state owned by this process.
    pub fn new(run_id: RunId, dir: PathBuf) -> RunState {
        let me = std::process::id();
        RunState {
            run_id,
            dir,
            owner: Some(ProcessRecord {
                name: "harness".into(),
                pid: me,
                started: procs::start_time(me).unwrap_or_default(),
                log: PathBuf::new(),
            }),
            nodes: Vec::new(),
            netns: Vec::new(),
            processes: Vec::new(),
            pods: Vec::new(),
            services: Vec::new(),
            waypoints: Vec::new(),
            manifests: None,
            controller: None,
            trust_domain: None,
        }
    }

    /// The state file of the run in `dir`.
    pub fn path_in(dir: &Path) -> PathBuf {
        dir.join(STATE_FILE)
    }

    /// Reads the state file of the run in `dir`.
    pub fn load(dir: &Path) -> Result<RunState> {
        let path = RunState::path_in(dir);
        let text = std::fs::read_to_string(&path).map_err(Error::io(&path))?;
        serde_json::from_str(&text).map_err(|e| Error::decode(path.display().to_string(), e))
    }

    /// Writes the state file (write a temporary file, then rename).
    pub fn save(&self) -> Result<()> {
        let path = RunState::path_in(&self.dir);
        let tmp = self.dir.join(".state.json.tmp");
        let text =
            serde_json::to_string_pretty(self).map_err(|e| Error::decode("the run state", e))?;
        std::fs::write(&tmp, text).map_err(Error::io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(Error::io(&path))
    }

    /// Records a process just started (and saves), so that teardown stops
    /// it even if the harness dies a moment later.
    pub fn record_process(&mut self, p: &crate::process::ManagedProcess) -> Result<()> {
        self.processes.push(ProcessRecord {
            name: p.name().to_string(),
            pid: p.pid(),
            started: p.started(),
            log: p.log().to_path_buf(),
        });
        self.save()
    }

    /// True while the harness that owns the run is alive.
    pub fn owned_by_live_harness(&self) -> bool {
        self.owner.as_ref().is_some_and(ProcessRecord::alive)
    }
}
