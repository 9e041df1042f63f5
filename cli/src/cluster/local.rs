//! A local cluster of the e2e harness, found through its run directory
//! (`/tmp/weft-e2e/<run id>/` unless `WEFT_E2E_ROOT` says otherwise).
//!
//! The harness's layout (e2e/src: `names`, `state`, `components`):
//!
//! ```text
//! <run>/state.json                     run_id, nodes (names), netns, pods, services, ...
//! <run>/manifests/                     the controller's files registry
//! <run>/nodes/<node>/ztunnel-admin.sock
//! <run>/nodes/<node>/cni.sock          the node agent's request socket
//! <run>/nodes/<node>/cni/net.d/        the node's CNI config (the agent appends weft-cni)
//! <run>/nodes/<node>/cni/bin/          CNI plugin binaries (weft-cni)
//! netns <run id>-ctl                   the controller; debug API on 127.0.0.1:15000 inside
//! ```
//!
//! Entries of `state.json` may override any of this (see docs/weftctl.md):
//! a node may be an object with `ztunnelAdminSocket`, `agentSocket`,
//! `cniConfDir`, `cniBinDir`; `controller` may give `adminSocket`, or
//! `adminAddress` with `netns`; `waypoints` may list admin sockets.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::exit::{CliError, Result};

/// The name of the state file in a run directory.
pub const STATE_FILE: &str = "state.json";
/// Where the harness keeps runs by default.
pub const DEFAULT_E2E_ROOT: &str = "/tmp/weft-e2e";
/// The controller's debug API inside its namespace.
const CONTROLLER_DEBUG: ([u8; 4], u16) = ([127, 0, 0, 1], 15000);

/// How to reach one admin API: a unix socket, or TCP (inside a netns).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct Reach {
    /// A unix socket serving the API.
    pub admin_socket: Option<PathBuf>,
    /// A TCP address serving the API.
    pub admin_address: Option<SocketAddr>,
    /// The netns `admin_address` lives in.
    pub netns: Option<PathBuf>,
}

/// One node of the run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeState {
    /// Its name (`spec.nodeName` of its pods).
    pub name: String,
    /// ztunnel's admin API.
    pub ztunnel: Reach,
    /// The node agent's request socket.
    pub agent_socket: Option<PathBuf>,
    /// The CNI config directory the runtime reads.
    pub cni_conf_dir: Option<PathBuf>,
    /// The CNI plugin binaries directory.
    pub cni_bin_dir: Option<PathBuf>,
}

/// One waypoint instance.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct WaypointState {
    /// The Gateway's namespace.
    pub namespace: String,
    /// The Gateway's name.
    pub name: String,
    /// Its admin API.
    #[serde(flatten)]
    pub reach: Reach,
}

/// What weftctl knows about a run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunState {
    /// The run directory.
    pub dir: PathBuf,
    /// The controller's manifest directory.
    pub manifests: Option<PathBuf>,
    /// SPIFFE trust domain of the run, if it says.
    pub trust_domain: Option<String>,
    /// Root namespace, if it says.
    pub root_namespace: Option<String>,
    /// The controller's debug API.
    pub controller: Option<Reach>,
    /// The nodes.
    pub nodes: Vec<NodeState>,
    /// Running waypoints and their admin APIs.
    pub waypoints: Vec<WaypointState>,
}

/// `state.json` as the harness writes it, read leniently: unknown keys are
/// ignored and every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StateFile {
    run_id: Option<String>,
    nodes: Vec<NodeEntry>,
    netns: Vec<String>,
    #[serde(alias = "trustDomain")]
    trust_domain: Option<String>,
    #[serde(alias = "rootNamespace")]
    root_namespace: Option<String>,
    manifests: Option<PathBuf>,
    controller: Option<Reach>,
    waypoints: Vec<WaypointState>,
}

/// A node: its name (the harness's form), or an object with overrides.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum NodeEntry {
    Name(String),
    Detailed(NodeOverrides),
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct NodeOverrides {
    name: String,
    ztunnel_admin_socket: Option<PathBuf>,
    agent_socket: Option<PathBuf>,
    cni_conf_dir: Option<PathBuf>,
    cni_bin_dir: Option<PathBuf>,
}

fn under(dir: &Path, path: Option<PathBuf>) -> Option<PathBuf> {
    path.map(|p| if p.is_relative() { dir.join(p) } else { p })
}

impl RunState {
    /// Reads the run in `dir`.
    pub fn load(dir: &Path) -> Result<RunState> {
        if !dir.is_dir() {
            return Err(CliError::unreachable(
                format!("run directory {}", dir.display()),
                "not a directory",
                "bring a local cluster up with the e2e harness, or point --run-dir (WEFT_RUN_DIR) at its run directory",
            ));
        }
        let path = dir.join(STATE_FILE);
        let file = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<StateFile>(&bytes).map_err(|e| {
                CliError::other(format!("{} is not a run state: {e}", path.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => StateFile::default(),
            Err(e) => {
                return Err(CliError::other(format!(
                    "cannot read {}: {e}",
                    path.display()
                )));
            }
        };
        Ok(RunState::from_file(dir, file))
    }

    fn from_file(dir: &Path, file: StateFile) -> RunState {
        let run_id = file.run_id.clone().or_else(|| {
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .filter(|n| n.starts_with("weft-"))
        });
        let netns_path = |role: &str| -> Option<PathBuf> {
            let name = format!("{}-{role}", run_id.as_deref()?);
            Some(Path::new("/var/run/netns").join(name))
        };
        let mut node_entries = file.nodes;
        if node_entries.is_empty() {
            // No state file (or no nodes in it): every directory under nodes/.
            let mut names: Vec<String> = std::fs::read_dir(dir.join("nodes"))
                .map(|rd| {
                    rd.flatten()
                        .filter(|e| e.path().is_dir())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            names.sort();
            node_entries = names.into_iter().map(NodeEntry::Name).collect();
        }
        let nodes = node_entries
            .into_iter()
            .map(|entry| {
                let o = match entry {
                    NodeEntry::Name(name) => NodeOverrides {
                        name,
                        ..NodeOverrides::default()
                    },
                    NodeEntry::Detailed(o) => o,
                };
                let node_dir = dir.join("nodes").join(&o.name);
                NodeState {
                    ztunnel: Reach {
                        admin_socket: under(dir, o.ztunnel_admin_socket)
                            .or_else(|| Some(node_dir.join("ztunnel-admin.sock"))),
                        ..Reach::default()
                    },
                    agent_socket: under(dir, o.agent_socket)
                        .or_else(|| Some(node_dir.join("cni.sock"))),
                    cni_conf_dir: under(dir, o.cni_conf_dir)
                        .or_else(|| Some(node_dir.join("cni/net.d"))),
                    cni_bin_dir: under(dir, o.cni_bin_dir)
                        .or_else(|| Some(node_dir.join("cni/bin"))),
                    name: o.name,
                }
            })
            .collect();
        let fix_reach = |mut r: Reach| {
            r.admin_socket = under(dir, r.admin_socket);
            r.netns = under(dir, r.netns);
            r
        };
        let controller = file.controller.map(fix_reach).or_else(|| {
            // The harness's controller namespace, when the run has one.
            let role_name = format!("{}-ctl", run_id.as_deref()?);
            let listed = file.netns.is_empty() || file.netns.contains(&role_name);
            listed.then(|| Reach {
                admin_socket: None,
                admin_address: Some(SocketAddr::from(CONTROLLER_DEBUG)),
                netns: netns_path("ctl"),
            })
        });
        let waypoints = file
            .waypoints
            .into_iter()
            .map(|mut w| {
                w.reach = fix_reach(w.reach);
                w
            })
            .collect();
        RunState {
            dir: dir.to_path_buf(),
            manifests: under(dir, file.manifests).or_else(|| Some(dir.join("manifests"))),
            trust_domain: file.trust_domain,
            root_namespace: file.root_namespace,
            controller,
            nodes,
            waypoints,
        }
    }

    /// The newest run of the harness under `root` that has a state file, and
    /// how many there are.
    pub fn newest_run(root: &Path) -> Option<(PathBuf, usize)> {
        let mut runs: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(root)
            .ok()?
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("weft-"))
            .filter_map(|e| {
                let state = e.path().join(STATE_FILE);
                let modified = std::fs::metadata(&state).ok()?.modified().ok()?;
                Some((modified, e.path()))
            })
            .collect();
        runs.sort();
        let count = runs.len();
        runs.pop().map(|(_, dir)| (dir, count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn harness_state_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join(STATE_FILE),
            r#"{"run_id": "weft-ab12", "dir": "/x", "owner": null, "nodes": ["node-1", "node-2"],
                "netns": ["weft-ab12-underlay", "weft-ab12-ctl", "weft-ab12-node-1"],
                "processes": [], "pods": [], "services": []}"#,
        )
        .expect("write");
        let s = RunState::load(dir.path()).expect("load");
        assert_eq!(s.manifests, Some(dir.path().join("manifests")));
        assert_eq!(s.nodes.len(), 2);
        assert_eq!(
            s.nodes[1].ztunnel.admin_socket,
            Some(dir.path().join("nodes/node-2/ztunnel-admin.sock"))
        );
        assert_eq!(
            s.nodes[0].agent_socket,
            Some(dir.path().join("nodes/node-1/cni.sock"))
        );
        assert_eq!(
            s.nodes[0].cni_conf_dir,
            Some(dir.path().join("nodes/node-1/cni/net.d"))
        );
        let c = s.controller.expect("controller");
        assert_eq!(c.netns, Some(PathBuf::from("/var/run/netns/weft-ab12-ctl")));
        assert_eq!(
            c.admin_address,
            Some("127.0.0.1:15000".parse().expect("addr"))
        );
    }

    #[test]
    fn overrides_and_relative_paths() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join(STATE_FILE),
            r#"{"manifests": "m", "trustDomain": "td",
                "controller": {"adminSocket": "c.sock"},
                "nodes": [{"name": "n1", "ztunnelAdminSocket": "z.sock", "agentSocket": "/abs/cni.sock"}],
                "waypoints": [{"namespace": "a", "name": "w", "adminSocket": "w.sock"}]}"#,
        )
        .expect("write");
        let s = RunState::load(dir.path()).expect("load");
        assert_eq!(s.manifests, Some(dir.path().join("m")));
        assert_eq!(s.trust_domain.as_deref(), Some("td"));
        assert_eq!(
            s.nodes[0].ztunnel.admin_socket,
            Some(dir.path().join("z.sock"))
        );
        assert_eq!(
            s.nodes[0].agent_socket,
            Some(PathBuf::from("/abs/cni.sock"))
        );
        assert_eq!(
            s.controller.and_then(|c| c.admin_socket),
            Some(dir.path().join("c.sock"))
        );
        assert_eq!(
            s.waypoints[0].reach.admin_socket,
            Some(dir.path().join("w.sock"))
        );
    }

    #[test]
    fn without_state_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("nodes/node-b")).expect("mkdir");
        std::fs::create_dir_all(dir.path().join("nodes/node-a")).expect("mkdir");
        let s = RunState::load(dir.path()).expect("load");
        let names: Vec<_> = s.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["node-a", "node-b"]);
        assert!(s.controller.is_none());
        assert!(RunState::load(&dir.path().join("nope")).is_err());
    }
}
