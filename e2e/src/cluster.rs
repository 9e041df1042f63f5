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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::addresses::{self, CONTROLLER_IP, MAX_NODES};
use crate::binaries::{self, Binaries};
use crate::capture::Capture;
use crate::cleanup::{self, Report};
use crate::cni::{self, CniCommand, CniPod};
use crate::components::controller::{self, Controller};
use crate::components::node_agent::{self, NodeLayout};
use crate::components::ztunnel;
use crate::error::{Error, Result};
use crate::exec;
use crate::manifests::{self, DATAPLANE_MODE, Manifests, PodObject};
use crate::names::{self, RunId};
use crate::netns::Netns;
use crate::node::Node;
use crate::pod::{ECHO_HTTP_PORT, ECHO_TCP_PORT, Pod, PodInner, PodSpec};
use crate::process::{self, ManagedProcess};
use crate::service::{Service, ServiceSpec};
use crate::signals;
use crate::state::{ControllerRecord, PodRecord, ProcessRecord, RunState, ServiceRecord};
use crate::topology;

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
    state.processes.push(ProcessRecord {
        name: p.name().to_string(),
        pid: p.pid(),
        started: p.started(),
        log: p.log().to_path_buf(),
    });
    state.save()
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
            let p = node.start_agent(bins, &manifests, &config.backend)?;
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

    // ---- namespaces ------------------------------------------------------------

    /// Creates namespace `name`, enrolled in the mesh if `ambient`.
    pub fn add_namespace(&mut self, name: &str, ambient: bool) -> Result<()> {
        let mut labels = BTreeMap::new();
        if ambient {
            labels.insert(DATAPLANE_MODE.to_string(), "ambient".to_string());
        }
        self.write_namespace(name, labels)
    }

    /// Sets (`Some`) or removes (`None`) a label of namespace `name`, as
    /// `kubectl label` would: running pods are not restarted.
    pub fn label_namespace(&mut self, name: &str, key: &str, value: Option<&str>) -> Result<()> {
        let mut labels = self
            .namespaces
            .get(name)
            .cloned()
            .ok_or_else(|| Error::Invalid(format!("no namespace {name}")))?;
        match value {
            Some(v) => labels.insert(key.to_string(), v.to_string()),
            None => labels.remove(key),
        };
        self.write_namespace(name, labels)
    }

    /// Writes the Namespace and returns once every node agent has seen it
    /// (its enrollment cache says whether the namespace is ambient): in a
    /// real cluster a namespace exists long before its pods, so the pods
    /// created next are decided at their CNI ADD, not later.
    fn write_namespace(&mut self, name: &str, labels: BTreeMap<String, String>) -> Result<()> {
        self.manifests.write(
            &manifests::namespace_stem(name),
            &[manifests::namespace(name, &labels)],
        )?;
        let ambient = labels.get(DATAPLANE_MODE).is_some_and(|v| v == "ambient");
        self.namespaces.insert(name.to_string(), labels);
        for node in &self.nodes {
            let cache = node.layout().enrollment_cache();
            process::wait_until(
                &format!("{}'s agent seeing namespace {name}", node.name()),
                AGENT_SYNC,
                || {
                    enrollment_cache(&cache).is_some_and(|c| {
                        c["ambientNamespaces"]
                            .as_array()
                            .is_some_and(|a| a.iter().any(|n| n == name) == ambient)
                    })
                },
            )?;
        }
        Ok(())
    }

    // ---- pods --------------------------------------------------------------------

    /// Creates a pod as Kubernetes would: the scheduler's Pod object (with
    /// `spec.nodeName`), then the sandbox — a network namespace attached by
    /// the node's real CNI chain (bridge, host-local, weft-cni) — then the
    /// kubelet's status update (`status.podIP`, Running, and the netns
    /// annotation), then its container (the echo server, if asked for).
    pub fn add_pod(&mut self, spec: PodSpec) -> Result<Pod> {
        if !self.namespaces.contains_key(&spec.namespace) {
            return Err(Error::Invalid(format!(
                "pod {}/{}: no namespace {} (add it first)",
                spec.namespace, spec.name, spec.namespace
            )));
        }
        if self.pod(&spec.namespace, &spec.name).is_some() {
            return Err(Error::Invalid(format!(
                "pod {}/{} exists",
                spec.namespace, spec.name
            )));
        }
        let index = spec
            .node
            .checked_sub(1)
            .filter(|i| *i < self.nodes.len())
            .ok_or_else(|| Error::Invalid(format!("no node {}", spec.node)))?;
        // A field borrow, so the state can be updated meanwhile.
        let node = &self.nodes[index];
        let node_name = node.name().to_string();
        let layout = node.layout().clone();
        let host_ip = node.ip().to_string();
        let key = format!("{}/{}", spec.namespace, spec.name);
        (self.config.progress)(&format!("pod {key}: scheduled to {node_name}"));

        let uid = new_uid();
        let stem = manifests::pod_stem(&spec.namespace, &spec.name);
        let netns_role = format!("pod-{}-{}", spec.namespace, spec.name);
        let netns_path = Netns::path_of(&self.state.run_id.netns(&netns_role));
        let object = |ip: Option<&str>| {
            let mut pod = manifests::pod(&PodObject {
                namespace: &spec.namespace,
                name: &spec.name,
                uid: &uid,
                labels: &spec.labels,
                service_account: &spec.service_account,
                node: &node_name,
                host_ip: &host_ip,
                ip: ip.unwrap_or_default(),
                netns_path: &netns_path,
                ports: if spec.echo_server {
                    &[ECHO_TCP_PORT, ECHO_HTTP_PORT]
                } else {
                    &[]
                },
            });
            if ip.is_none() {
                // Scheduled, sandbox not created yet.
                pod["status"] = serde_json::json!({"phase": "Pending", "hostIP": host_ip});
                if let Some(annotations) = pod["metadata"].as_object_mut() {
                    annotations.remove("annotations");
                }
            }
            pod
        };
        self.manifests.write(&stem, &[object(None)])?;
        if let Some(mode) = spec.labels.get(DATAPLANE_MODE) {
            // As for namespaces: the pod object exists before its sandbox,
            // so the agent knows the pod's own label at its CNI ADD.
            let cache = layout.enrollment_cache();
            process::wait_until(
                &format!("{node_name}'s agent seeing pod {key}"),
                AGENT_SYNC,
                || {
                    enrollment_cache(&cache)
                        .is_some_and(|c| c["podModes"][key.as_str()] == mode.as_str())
                },
            )?;
        }

        let netns = create_netns(&mut self.state, &netns_role)?;
        let cni_pod = CniPod {
            namespace: &spec.namespace,
            name: &spec.name,
            uid: &uid,
            netns_path: &netns.path(),
        };
        let attached = cni::active_conflist(&layout.cni_conf_dir()).and_then(|(_, conflist)| {
            cni::run_chain(
                node.netns(),
                &conflist,
                &layout.cni_path(),
                CniCommand::Add,
                &cni_pod,
                None,
            )
        });
        let chain = match attached {
            Ok(chain) => chain,
            Err(e) => {
                // The runtime gives up on the sandbox: no netns, no pod.
                drop(netns);
                let name = self.state.run_id.netns(&netns_role);
                let _ = Netns::delete(&name);
                self.state.netns.retain(|n| *n != name);
                self.state.save()?;
                self.manifests.remove(&stem)?;
                return Err(e);
            }
        };
        let ip = cni::result_ipv4(&chain.result)?;
        (self.config.progress)(&format!(
            "pod {key}: CNI ADD through {} gave {ip}",
            chain.plugins.join(" → ")
        ));
        self.manifests
            .write(&stem, &[object(Some(&ip.to_string()))])?;

        let pod = Pod {
            inner: Arc::new(PodInner {
                namespace: spec.namespace.clone(),
                name: spec.name.clone(),
                uid,
                node: node_name.clone(),
                service_account: spec.service_account.clone(),
                labels: spec.labels.clone(),
                ip,
                netns,
                app: self.bins.path(binaries::APP),
                cni_result: chain.result,
                echo_server: spec.echo_server,
            }),
        };
        self.state.pods.push(PodRecord {
            namespace: spec.namespace.clone(),
            name: spec.name.clone(),
            node: node_name,
            ip: ip.to_string(),
            netns: pod.netns().name().to_string(),
            echo_server: spec.echo_server,
        });
        self.state.save()?;
        self.pods.push(pod.clone());
        self.pod_labels.insert(key.clone(), spec.labels.clone());

        if spec.echo_server {
            let log = self
                .dir()
                .join("pods")
                .join(format!("{}-{}.log", spec.namespace, spec.name));
            if let Some(parent) = log.parent() {
                std::fs::create_dir_all(parent).map_err(Error::io(parent))?;
            }
            let mut cmd = pod.app_command();
            cmd.args(["serve", "--name", &key]);
            let mut p = ManagedProcess::spawn(&key, cmd, &log)?;
            record(&mut self.state, &p)?;
            let ns = pod.netns();
            p.wait_ready("echo server listening", Duration::from_secs(10), || {
                ns.listening_tcp_ports().is_ok_and(|ports| {
                    ports.contains(&ECHO_TCP_PORT) && ports.contains(&ECHO_HTTP_PORT)
                })
            })?;
            self.apps.push((key, p));
        }
        Ok(pod)
    }

    /// Sets (`Some`) or removes (`None`) a label of a running pod.
    pub fn label_pod(&mut self, pod: &Pod, key: &str, value: Option<&str>) -> Result<()> {
        let labels = self
            .pod_labels
            .get_mut(&pod.key())
            .ok_or_else(|| Error::Invalid(format!("no pod {}", pod.key())))?;
        match value {
            Some(v) => labels.insert(key.to_string(), v.to_string()),
            None => labels.remove(key),
        };
        let labels = labels.clone();
        let node = self
            .nodes
            .iter()
            .find(|n| n.name() == pod.node())
            .ok_or_else(|| Error::Invalid(format!("no node {}", pod.node())))?;
        let object = manifests::pod(&PodObject {
            namespace: pod.namespace(),
            name: pod.name(),
            uid: pod.uid(),
            labels: &labels,
            service_account: pod.service_account(),
            node: pod.node(),
            host_ip: &node.ip().to_string(),
            ip: &pod.ip().to_string(),
            netns_path: &pod.netns().path(),
            ports: if pod.inner.echo_server {
                &[ECHO_TCP_PORT, ECHO_HTTP_PORT]
            } else {
                &[]
            },
        });
        self.manifests
            .write(&manifests::pod_stem(pod.namespace(), pod.name()), &[object])?;
        Ok(())
    }

    /// Deletes a pod as Kubernetes would: its container stops, the runtime
    /// runs CNI DEL and removes the sandbox, the object goes away.
    pub fn delete_pod(&mut self, pod: &Pod) -> Result<()> {
        let key = pod.key();
        self.say(&format!("pod {key}: deleting"));
        if let Some(i) = self.apps.iter().position(|(k, _)| *k == key) {
            let (_, mut p) = self.apps.remove(i);
            p.stop(Duration::from_secs(3));
        }
        let node = self
            .nodes
            .iter()
            .find(|n| n.name() == pod.node())
            .ok_or_else(|| Error::Invalid(format!("no node {}", pod.node())))?;
        let layout = node.layout();
        let (_, conflist) = cni::active_conflist(&layout.cni_conf_dir())?;
        let path = pod.netns().path();
        cni::run_chain(
            node.netns(),
            &conflist,
            &layout.cni_path(),
            CniCommand::Del,
            &CniPod {
                namespace: pod.namespace(),
                name: pod.name(),
                uid: pod.uid(),
                netns_path: &path,
            },
            Some(pod.cni_result()),
        )?;
        Netns::delete(pod.netns().name())?;
        self.manifests
            .remove(&manifests::pod_stem(pod.namespace(), pod.name()))?;
        let netns_name = pod.netns().name().to_string();
        self.state.netns.retain(|n| *n != netns_name);
        self.state
            .pods
            .retain(|p| !(p.namespace == pod.namespace() && p.name == pod.name()));
        self.state.save()?;
        self.pods.retain(|p| p.key() != key);
        self.pod_labels.remove(&key);
        Ok(())
    }

    /// Starts `args` of the sample workload inside `pod` as a long-running
    /// process (e.g. `load`), logging to `<run>/pods/<ns>-<pod>-<name>.log`.
    /// The caller owns it; teardown stops it too if it is still running.
    pub fn spawn_app(&mut self, pod: &Pod, name: &str, args: &[&str]) -> Result<ManagedProcess> {
        let log =
            self.dir()
                .join("pods")
                .join(format!("{}-{}-{name}.log", pod.namespace(), pod.name()));
        if let Some(parent) = log.parent() {
            std::fs::create_dir_all(parent).map_err(Error::io(parent))?;
        }
        let mut cmd = pod.app_command();
        cmd.args(args);
        let p = ManagedProcess::spawn(&format!("{}/{name}", pod.key()), cmd, &log)?;
        record(&mut self.state, &p)?;
        Ok(p)
    }

    // ---- services and other objects -------------------------------------------

    /// Creates a Service with the next free cluster IP.
    pub fn add_service(&mut self, spec: ServiceSpec) -> Result<Service> {
        if !self.namespaces.contains_key(&spec.namespace) {
            return Err(Error::Invalid(format!(
                "service {}/{}: no namespace {}",
                spec.namespace, spec.name, spec.namespace
            )));
        }
        let vip = addresses::vip(self.services.len() as u32);
        self.manifests.write(
            &manifests::service_stem(&spec.namespace, &spec.name),
            &[manifests::service(
                &spec.namespace,
                &spec.name,
                &spec.labels,
                &spec.selector,
                &vip.to_string(),
                &spec.ports,
            )],
        )?;
        let service = Service {
            namespace: spec.namespace.clone(),
            name: spec.name.clone(),
            vip,
            ports: spec.ports.clone(),
        };
        self.say(&format!(
            "service {}/{}: cluster IP {vip}",
            spec.namespace, spec.name
        ));
        self.state.services.push(ServiceRecord {
            namespace: spec.namespace,
            name: spec.name,
            vip: vip.to_string(),
        });
        self.state.save()?;
        self.services.push(service.clone());
        Ok(service)
    }

    /// Applies Kubernetes YAML (policies, Gateways, ...) as `<name>.yaml` in
    /// the manifest directory, like `kubectl apply -f`; applying the same
    /// name again replaces it.
    pub fn apply(&self, name: &str, yaml: &str) -> Result<PathBuf> {
        self.manifests.write_text(&format!("applied-{name}"), yaml)
    }

    /// Removes what [`Cluster::apply`] wrote under `name`.
    pub fn unapply(&self, name: &str) -> Result<()> {
        self.manifests.remove(&format!("applied-{name}"))
    }

    // ---- waiting for the mesh ----------------------------------------------------

    /// Waits until the controller's model satisfies `check`.
    pub fn wait_for_model(
        &self,
        what: &str,
        limit: Duration,
        mut check: impl FnMut(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value> {
        let mut last = serde_json::Value::Null;
        let result =
            process::wait_until(&format!("controller model: {what}"), limit, || {
                match self.controller.model() {
                    Ok(model) => {
                        let ok = check(&model);
                        last = model;
                        ok
                    }
                    Err(_) => false,
                }
            });
        result.map(|()| last)
    }

    /// Waits until `pod`'s redirect rules are present (`true`) or gone.
    pub fn wait_redirected(&self, pod: &Pod, present: bool, limit: Duration) -> Result<()> {
        let what = format!(
            "redirect rules {} in pod {}",
            if present { "installed" } else { "removed" },
            pod.key()
        );
        process::wait_until(&what, limit, || {
            pod.redirect_rules()
                .is_ok_and(|r| if present { r.present() } else { r.absent() })
        })
    }

    /// GET `path` (`/workloads`, `/connections`, `/certs`, `/policies`...)
    /// from node `index`'s ztunnel admin API, as JSON.
    pub fn ztunnel_admin(&self, index: usize, path: &str) -> Result<serde_json::Value> {
        let node = self.node(index)?;
        let response = ztunnel::admin(node.layout(), path)?;
        if response.status != 200 {
            return Err(Error::Invalid(format!(
                "{} ztunnel {path} answered {}: {}",
                node.name(),
                response.status,
                response.body.trim()
            )));
        }
        response.json()
    }

    /// Waits until every ztunnel's admin `path` satisfies `check`.
    pub fn wait_for_ztunnels(
        &self,
        what: &str,
        path: &str,
        limit: Duration,
        mut check: impl FnMut(&serde_json::Value) -> bool,
    ) -> Result<()> {
        if !self.ztunnel {
            return Err(Error::Invalid("this cluster runs no ztunnel".into()));
        }
        process::wait_until(&format!("every ztunnel: {what}"), limit, || {
            (1..=self.nodes.len()).all(|i| self.ztunnel_admin(i, path).is_ok_and(|v| check(&v)))
        })
    }

    /// Waits until `pod` is fully in the mesh: its redirect rules are in
    /// place, ztunnel listens inside it (15001, 15006, 15008), its node's
    /// ztunnel holds its certificate, and every ztunnel knows it as an HBONE
    /// workload (so no client treats it as outside the mesh).
    pub fn wait_in_mesh(&self, pod: &Pod, limit: Duration) -> Result<()> {
        self.wait_redirected(pod, true, limit)?;
        if !self.ztunnel {
            return Ok(());
        }
        process::wait_until(
            &format!("ztunnel listening in pod {}", pod.key()),
            limit,
            || {
                pod.netns()
                    .listening_tcp_ports()
                    .is_ok_and(|p| [15001, 15006, 15008].iter().all(|port| p.contains(port)))
            },
        )?;
        let uid = pod.uid().to_string();
        self.wait_for_ztunnels(
            &format!("{} is an HBONE workload", pod.key()),
            "/workloads",
            limit,
            |v| {
                v["workloads"].as_array().is_some_and(|ws| {
                    ws.iter().any(|w| {
                        w["uid"] == uid.as_str() && w["protocol"] == "TUNNEL_PROTOCOL_HBONE"
                    })
                })
            },
        )?;
        let identity = format!(
            "spiffe://cluster.local/ns/{}/sa/{}",
            pod.namespace(),
            pod.service_account()
        );
        let index = self
            .nodes
            .iter()
            .position(|n| n.name() == pod.node())
            .map(|i| i + 1)
            .ok_or_else(|| Error::Invalid(format!("no node {}", pod.node())))?;
        process::wait_until(
            &format!("{} holds a certificate for {identity}", pod.node()),
            limit,
            || {
                self.ztunnel_admin(index, "/certs").is_ok_and(|v| {
                    v["certificates"].as_array().is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c["identity"] == identity.as_str() && c["state"] == "valid")
                    })
                })
            },
        )
    }

    /// Waits until every ztunnel knows `pod` (mesh or not) by its IP.
    pub fn wait_known(&self, pod: &Pod, limit: Duration) -> Result<()> {
        let ip = pod.ip().to_string();
        self.wait_for_ztunnels(
            &format!("{} is known", pod.key()),
            "/workloads",
            limit,
            |v| {
                v["workloads"].as_array().is_some_and(|ws| {
                    ws.iter().any(|w| {
                        w["addresses"]
                            .as_array()
                            .is_some_and(|a| a.iter().any(|x| x == ip.as_str()))
                    })
                })
            },
        )
    }

    /// Starts a packet capture of everything nodes send each other over
    /// the underlay (see [`Capture`]); files `<run>/<name>-<node>.pcap`.
    pub fn capture(&self, name: &str) -> Result<Capture> {
        let ports: Vec<String> = self.nodes.iter().map(|n| n.name().to_string()).collect();
        Capture::start(&self.underlay, self.dir(), name, &ports)
    }

    /// The underlay's namespace.
    pub fn underlay(&self) -> &Netns {
        &self.underlay
    }

    /// Node `index`'s agent coverage report, and whether it reports no drift.
    pub fn coverage(&self, index: usize) -> Result<(serde_json::Value, bool)> {
        let node = self.node(index)?;
        node_agent::coverage(&self.bins.require(binaries::NODE_AGENT)?, node.layout())
    }

    // ---- disruptions -------------------------------------------------------------

    /// Stops the controller (the data plane keeps its last config).
    pub fn stop_controller(&mut self) {
        self.say("controller: stopping");
        self.controller.stop();
    }

    /// Starts the controller again (same root CA, same tokens).
    pub fn start_controller(&mut self) -> Result<()> {
        self.say("controller: starting");
        let p = self.controller.start()?;
        record(&mut self.state, p)
    }

    /// Restarts node `index`'s ztunnel the way a DaemonSet rollout with
    /// surge does: the new one starts beside the old one (binding the same
    /// listeners with SO_REUSEPORT) and becomes ready, then the old one gets
    /// SIGTERM and drains for up to `drain`.
    pub fn restart_ztunnel(&mut self, index: usize, drain: Duration) -> Result<()> {
        if !self.ztunnel {
            return Err(Error::Invalid("this cluster runs no ztunnel".into()));
        }
        let bins = self.bins.clone();
        let name = self.node(index)?.name().to_string();
        self.say(&format!(
            "{name}: starting a new ztunnel beside the old one"
        ));
        let node = index
            .checked_sub(1)
            .and_then(|i| self.nodes.get_mut(i))
            .ok_or_else(|| Error::Invalid(format!("no node {index}")))?;
        let new = node.start_ztunnel(&bins, &self.controller)?;
        record(&mut self.state, &new)?;
        let node = self.node_mut(index)?;
        if let Some(mut old) = node.set_ztunnel(Some(new)) {
            (self.config.progress)(&format!("{name}: old ztunnel draining"));
            old.stop(drain);
        }
        Ok(())
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

/// A random pod uid in the usual 8-4-4-4-12 form.
fn new_uid() -> String {
    use rand::Rng;
    let b: [u8; 16] = rand::rng().random();
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}
