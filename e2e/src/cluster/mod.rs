//! The cluster: brings the topology and every component up, creates
//! namespaces, pods and Services the way Kubernetes would, and tears it all
//! down — when dropped (also while a failed assertion unwinds), on Ctrl-C,
//! or later with `weft-e2e down`.
//!
//! ```no_run
//! use weft_e2e::{Cluster, ClusterConfig, PodSpec};
//! let mut cluster = Cluster::up(ClusterConfig::default())?;
//! cluster.add_namespace("demo", false)?;
//! let server = cluster.add_pod(PodSpec::new("demo", "server").on_node(2).echo_server())?;
//! let client = cluster.add_pod(PodSpec::new("demo", "client").on_node(1))?;
//! let reply = client.tcp_echo(server.echo_tcp(), "hi")?;
//! assert_eq!(reply.peer.ip(), client.ip());
//! # Ok::<(), weft_e2e::Error>(())
//! ```
//!
//! Here: bring-up, what the cluster is, teardown. The rest of `Cluster`'s
//! methods, by concern: [`objects`] (namespaces, Services, applied YAML),
//! [`pods`], [`waypoints`] (the harness as the waypoints' deployer),
//! [`mesh`] (waiting for and looking at the mesh), [`disruption`]
//! (controller and ztunnel restarts).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::addresses::{self, CONTROLLER_IP, MAX_NODES};
use crate::binaries::{self, Binaries};
use crate::cleanup::{self, Report};
use crate::cni;
use crate::components::controller::{self, Controller};
use crate::components::node_agent::NodeLayout;
use crate::error::{Error, Result};
use crate::exec;
use crate::manifests::Manifests;
use crate::names::{self, RunId};
use crate::netns::Netns;
use crate::node::Node;
use crate::pod::Pod;
use crate::process::ManagedProcess;
use crate::service::Service;
use crate::signals;
use crate::state::{ControllerRecord, RunState};
use crate::topology;

pub mod disruption;
pub mod mesh;
pub mod objects;
pub mod pods;
pub mod waypoints;

/// Where progress messages go.
pub type Progress = Arc<dyn Fn(&str) + Send + Sync>;

/// Whether nodes run ztunnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZtunnelMode {
    /// When the `ztunnel` binary exists.
    Auto,
    /// Never (the CNI chain and the agent alone).
    Off,
    /// Always; fail if it is missing.
    On,
}

/// How to build a cluster.
#[derive(Clone)]
pub struct ClusterConfig {
    /// How many nodes (1 to 200).
    pub nodes: usize,
    /// Where run directories go (default `/tmp/weft-e2e`, or `WEFT_E2E_ROOT`).
    pub root: PathBuf,
    /// Whether nodes run ztunnel.
    pub ztunnel: ZtunnelMode,
    /// The node agents' rule backend: `auto`, `nftables` or `iptables`.
    pub backend: String,
    /// Build the binaries with cargo first (see [`Binaries::build`]).
    pub build: bool,
    /// Where the binaries are (default: beside this executable).
    pub binaries: Option<Binaries>,
    /// Progress messages (default: stderr, which tests show on failure).
    pub progress: Progress,
    /// Run the node agents with `--local-bypass auto` (default: off, as
    /// the agent ships).
    pub local_bypass: bool,
}

impl Default for ClusterConfig {
    fn default() -> ClusterConfig {
        ClusterConfig {
            nodes: 2,
            root: names::root_dir(),
            ztunnel: ZtunnelMode::Auto,
            backend: "auto".into(),
            build: true,
            binaries: None,
            progress: Arc::new(|msg| eprintln!("[weft-e2e] {msg}")),
            local_bypass: false,
        }
    }
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("nodes", &self.nodes)
            .field("root", &self.root)
            .field("ztunnel", &self.ztunnel)
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

/// A running cluster. Dropping it tears everything down.
pub struct Cluster {
    config: ClusterConfig,
    bins: Binaries,
    state: RunState,
    manifests: Manifests,
    controller: Controller,
    nodes: Vec<Node>,
    pods: Vec<Pod>,
    pod_labels: BTreeMap<String, BTreeMap<String, String>>,
    apps: Vec<(String, ManagedProcess)>,
    services: Vec<Service>,
    waypoints: Vec<waypoints::RunningWaypoint>,
    /// Where [`Cluster::apply_waypoint`] asked a waypoint to run.
    waypoint_nodes: BTreeMap<(String, String), usize>,
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    ztunnel: bool,
    done: bool,
    underlay: Netns,
}

/// Checks what a cluster needs before touching anything.
pub fn preflight() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::NotRoot);
    }
    for plugin in ["bridge", "host-local"] {
        let p = Path::new(cni::DEBIAN_CNI_DIR).join(plugin);
        if !p.is_file() {
            return Err(Error::Missing {
                what: p.display().to_string(),
                hint: "apt-get install -y containernetworking-plugins (or `make deps`)".into(),
            });
        }
    }
    for tool in ["ip", "nft", "iptables-save"] {
        if !exec::on_path(tool) {
            return Err(Error::Missing {
                what: tool.into(),
                hint: "apt-get install -y iproute2 nftables iptables (or `make deps`)".into(),
            });
        }
    }
    Ok(())
}

/// How long a node agent may take to see a change in the manifests.
const AGENT_SYNC: Duration = Duration::from_secs(10);

/// A node agent's enrollment cache (what it knows of namespace and pod
/// labels), if readable.
fn enrollment_cache(path: &Path) -> Option<serde_json::Value> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Records a namespace in the state before creating it, so a crash between
/// the two still leaves teardown a name to remove.
fn create_netns(state: &mut RunState, role: &str) -> Result<Netns> {
    let name = state.run_id.netns(role);
    state.netns.push(name.clone());
    state.save()?;
    Netns::create(&name)
}

fn record(state: &mut RunState, p: &ManagedProcess) -> Result<()> {
    state.record_process(p)
}

/// The pieces built by [`Cluster::up`] before they become a [`Cluster`].
struct Parts {
    underlay: Netns,
    manifests: Manifests,
    controller: Controller,
    nodes: Vec<Node>,
    ztunnel: bool,
}

impl Cluster {
    /// Builds a cluster: the underlay, the controller, the nodes with their
    /// node agents (and ztunnels), everything ready.
    pub fn up(config: ClusterConfig) -> Result<Cluster> {
        preflight()?;
        if config.nodes == 0 || config.nodes > MAX_NODES {
            return Err(Error::Invalid(format!(
                "a cluster has 1 to {MAX_NODES} nodes, not {}",
                config.nodes
            )));
        }
        let progress = config.progress.clone();
        let bins = match &config.binaries {
            Some(b) => b.clone(),
            None => Binaries::locate()?,
        };
        if config.build {
            bins.build(&*progress)?;
        }
        let ztunnel = match config.ztunnel {
            ZtunnelMode::Off => false,
            ZtunnelMode::On => {
                bins.require(binaries::ZTUNNEL)?;
                true
            }
            ZtunnelMode::Auto => bins.has(binaries::ZTUNNEL),
        };

        std::fs::create_dir_all(&config.root).map_err(Error::io(&config.root))?;
        let id = RunId::generate(&config.root);
        let dir = config.root.join(id.as_str());
        std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
        let mut state = RunState::new(id.clone(), dir.clone());
        state.save()?;
        signals::register(dir.clone());
        progress(&format!("run {id}: files in {}", dir.display()));

        match Cluster::assemble(&config, &bins, &mut state, ztunnel) {
            Ok(parts) => {
                state.save()?;
                progress(&format!(
                    "run {id}: {} node(s) up{}",
                    parts.nodes.len(),
                    if parts.ztunnel {
                        ""
                    } else {
                        " (without ztunnel)"
                    }
                ));
                Ok(Cluster {
                    config,
                    bins,
                    state,
                    manifests: parts.manifests,
                    controller: parts.controller,
                    nodes: parts.nodes,
                    pods: Vec::new(),
                    pod_labels: BTreeMap::new(),
                    apps: Vec::new(),
                    services: Vec::new(),
                    waypoints: Vec::new(),
                    waypoint_nodes: BTreeMap::new(),
                    namespaces: BTreeMap::new(),
                    ztunnel: parts.ztunnel,
                    done: false,
                    underlay: parts.underlay,
                })
            }
            Err(e) => {
                progress(&format!("run {id}: bring-up failed, tearing down: {e}"));
                let report = cleanup::teardown(&state);
                signals::unregister(&dir);
                for err in report.errors {
                    progress(&format!("teardown: {err}"));
                }
                Err(e)
            }
        }
    }

    fn assemble(
        config: &ClusterConfig,
        bins: &Binaries,
        state: &mut RunState,
        ztunnel: bool,
    ) -> Result<Parts> {
        let progress = &config.progress;
        let dir = state.dir.clone();

        progress("underlay: a bridge in its own namespace");
        let underlay = create_netns(state, "underlay")?;
        topology::build_underlay(&underlay)?;

        let manifests = Manifests::create(&dir.join("manifests"))?;
        state.manifests = Some(manifests.dir().to_path_buf());
        state.trust_domain = Some("cluster.local".into());

        progress(&format!(
            "controller: namespace on the underlay at {CONTROLLER_IP}"
        ));
        let ctl_ns = create_netns(state, "ctl")?;
        state.controller = Some(ControllerRecord {
            admin_address: format!("127.0.0.1:{}", controller::DEBUG_PORT),
            netns: ctl_ns.path(),
        });
        topology::attach(&underlay, &ctl_ns, "ctl", CONTROLLER_IP)?;
        let mut controller = Controller::new(
            ctl_ns,
            &dir.join("controller"),
            manifests.dir(),
            &bins.require(binaries::CONTROLLER)?,
        )?;

        let mut nodes = Vec::new();
        for index in 1..=config.nodes {
            let name = addresses::node_name(index);
            progress(&format!(
                "{name}: namespace at {} with pod bridge {} for {}",
                addresses::node_ip(index),
                addresses::pod_gateway(index),
                addresses::pod_cidr(index)
            ));
            let ns = create_netns(state, &name)?;
            topology::attach(&underlay, &ns, &name, addresses::node_ip(index))?;
            topology::build_node(&ns, index, config.nodes)?;
            let layout = NodeLayout {
                dir: dir.join("nodes").join(&name),
            };
            nodes.push(Node::new(index, ns, layout)?);
            // Pods reach the controller (waypoints subscribe from their
            // pods): its replies go back through the pods' node.
            topology::route_pods(controller.netns(), index)?;
            controller.create_token(&name)?;
            state.nodes.push(name);
        }
        state.save()?;

        progress("controller: starting weft-controller (files registry)");
        let p = controller.start()?;
        record(state, p)?;

        for node in &mut nodes {
            progress(&format!(
                "{}: starting weft-node-agent (installs weft-cni into the node's conflist)",
                node.name()
            ));
            let p = node.start_agent(bins, &manifests, &config.backend, config.local_bypass)?;
            record(state, p)?;
        }
        if ztunnel {
            for node in &mut nodes {
                progress(&format!("{}: starting ztunnel", node.name()));
                let p = node.start_ztunnel(bins, &controller)?;
                record(state, &p)?;
                node.set_ztunnel(Some(p));
            }
        }
        Ok(Parts {
            underlay,
            manifests,
            controller,
            nodes,
            ztunnel,
        })
    }

    // ---- what the cluster is -------------------------------------------------

    /// The run id.
    pub fn run_id(&self) -> &RunId {
        &self.state.run_id
    }

    /// The run directory.
    pub fn dir(&self) -> &Path {
        &self.state.dir
    }

    /// The state as the state file has it.
    pub fn state(&self) -> &RunState {
        &self.state
    }

    /// The binaries it runs.
    pub fn binaries(&self) -> &Binaries {
        &self.bins
    }

    /// The manifest directory (the files registry).
    pub fn manifests(&self) -> &Manifests {
        &self.manifests
    }

    /// The controller.
    pub fn controller(&self) -> &Controller {
        &self.controller
    }

    /// The nodes.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Node `index` (1-based).
    pub fn node(&self, index: usize) -> Result<&Node> {
        index
            .checked_sub(1)
            .and_then(|i| self.nodes.get(i))
            .ok_or_else(|| Error::Invalid(format!("no node {index}")))
    }

    fn node_mut(&mut self, index: usize) -> Result<&mut Node> {
        index
            .checked_sub(1)
            .and_then(|i| self.nodes.get_mut(i))
            .ok_or_else(|| Error::Invalid(format!("no node {index}")))
    }

    /// True when the nodes run ztunnel.
    pub fn has_ztunnel(&self) -> bool {
        self.ztunnel
    }

    /// The pods.
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// Pod `namespace/name`.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<&Pod> {
        self.pods
            .iter()
            .find(|p| p.namespace() == namespace && p.name() == name)
    }

    /// The Services.
    pub fn services(&self) -> &[Service] {
        &self.services
    }

    fn say(&self, msg: &str) {
        (self.config.progress)(msg);
    }

    // ---- the end -------------------------------------------------------------------

    /// Hands the cluster over to `weft-e2e down` (`up --keep`): its
    /// processes keep running after this process exits.
    pub fn keep(mut self) -> Result<RunState> {
        self.done = true;
        self.state.owner = None;
        self.state.save()?;
        for (_, p) in self.apps.drain(..) {
            p.detach();
        }
        for w in self.waypoints.drain(..) {
            w.process.detach();
        }
        for node in &mut self.nodes {
            node.detach_all();
        }
        self.controller.detach();
        signals::unregister(&self.state.dir);
        Ok(self.state.clone())
    }

    /// Tears everything down now and says what was done.
    pub fn teardown(mut self) -> Report {
        self.teardown_inner()
    }

    fn teardown_inner(&mut self) -> Report {
        if self.done {
            return Report::default();
        }
        self.done = true;
        if std::thread::panicking() {
            self.print_logs();
        }
        self.say(&format!("run {}: tearing down", self.state.run_id));
        for (_, mut p) in self.apps.drain(..) {
            p.stop(Duration::from_secs(2));
        }
        self.stop_waypoint_processes();
        for node in &mut self.nodes {
            node.stop_all();
        }
        self.controller.stop();
        let report = cleanup::teardown(&self.state);
        signals::unregister(&self.state.dir);
        for e in &report.errors {
            self.say(&format!("teardown: {e}"));
        }
        report
    }

    /// Prints the end of every process log (a failing test shows them).
    pub fn print_logs(&self) {
        let mut tails: Vec<(String, String)> = Vec::new();
        if let Some(p) = self.controller.process() {
            tails.push((p.name().to_string(), p.log_tail(40)));
        }
        for node in &self.nodes {
            tails.extend(node.log_tails(40));
        }
        for w in &self.waypoints {
            tails.push((w.process.name().to_string(), w.process.log_tail(40)));
        }
        for (name, p) in &self.apps {
            tails.push((name.clone(), p.log_tail(10)));
        }
        for (name, tail) in tails {
            eprintln!("----- {name} (last lines) -----\n{tail}");
        }
    }

    /// What is left of this run on the machine (empty after teardown).
    pub fn leftovers(&self) -> Vec<String> {
        cleanup::leftovers(&self.state.run_id, &self.state.dir, &self.state.processes)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.teardown_inner();
    }
}
