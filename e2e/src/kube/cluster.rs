//! A Kubernetes cluster made of the netns nodes: the control plane in a
//! namespace of its own on the underlay (at the controller's address), and
//! per node a kubelet ([`super::kubelet`]) and kube-proxy, the upstream one,
//! so that pods run where the scheduler puts them and Services route. What
//! runs on it is what is applied to it: `deploy/` with kubectl, and the
//! tests' own workloads.
//!
//! ```no_run
//! use weft_e2e::kube::{KubeCluster, KubeClusterConfig};
//! let cluster = KubeCluster::up(KubeClusterConfig::default())?;
//! cluster.kubectl().run(&["get", "nodes"])?;
//! # Ok::<(), weft_e2e::Error>(())
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::control_plane::{ControlPlane, Placement};
use super::kubectl::Kubectl;
use super::kubelet::{self, Images, Kubelet, KubeletConfig, NodeFs, NodeIdentity};
use super::toolchain::Toolchain;
use crate::addresses::{self, CONTROLLER_IP, MAX_NODES};
use crate::binaries::Binaries;
use crate::capture::Capture;
use crate::cleanup;
use crate::cluster::Progress;
use crate::cni;
use crate::error::{Error, Result};
use crate::exec;
use crate::names::{self, RunId};
use crate::netns::Netns;
use crate::pod::{Pod, PodInner};
use crate::process::ManagedProcess;
use crate::signals;
use crate::state::RunState;
use crate::topology;
use weft_image::archive::ImageSpec;
use weft_image::base::Base;

/// The pod network of every node together (kube-proxy's cluster CIDR).
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";

/// How to build a kube cluster.
#[derive(Clone)]
pub struct KubeClusterConfig {
    /// How many nodes (1 to 200).
    pub nodes: usize,
    /// Where run directories go.
    pub root: PathBuf,
    /// The binaries the images stand for (default: beside this executable).
    pub binaries: Option<Binaries>,
    /// Progress messages.
    pub progress: Progress,
    /// Images the kubelets can run besides weft's, the e2e app's and
    /// CoreDNS's (e.g. the conformance suite's echo), each on its base.
    pub images: Vec<(Base, ImageSpec)>,
}

impl Default for KubeClusterConfig {
    fn default() -> KubeClusterConfig {
        KubeClusterConfig {
            nodes: 2,
            root: names::root_dir(),
            binaries: None,
            progress: Arc::new(|msg| eprintln!("[weft-e2e] {msg}")),
            images: Vec::new(),
        }
    }
}

/// One node of the cluster.
pub struct KubeNode {
    name: String,
    index: usize,
    netns: Netns,
    fs: NodeFs,
    kubelet: Option<Kubelet>,
    /// kube-proxy and the kubelet's streaming endpoints.
    daemons: Vec<ManagedProcess>,
}

impl KubeNode {
    /// Its name (`node-1`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its 1-based index.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Its network namespace.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// Its filesystem (hostPath volumes).
    pub fn fs(&self) -> &NodeFs {
        &self.fs
    }

    /// Its CNI configuration directory (`/etc/cni/net.d` of the node).
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.fs.host_path("/etc/cni/net.d")
    }

    /// Its CNI plugin directory (`/opt/cni/bin` of the node).
    pub fn cni_bin_dir(&self) -> PathBuf {
        self.fs.host_path("/opt/cni/bin")
    }
}

/// A running kube cluster; dropping it tears everything down.
pub struct KubeCluster {
    config: KubeClusterConfig,
    bins: Binaries,
    underlay: Option<Netns>,
    state: RunState,
    plane: Option<ControlPlane>,
    nodes: Vec<KubeNode>,
    done: bool,
}

fn check_tools() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::NotRoot);
    }
    crate::cluster::preflight()?;
    for tool in [kubelet::runtime::RUNC, "conntrack"] {
        if !exec::on_path(tool) {
            return Err(Error::Missing {
                what: tool.into(),
                hint: "apt-get install -y runc conntrack (or `make deps`)".into(),
            });
        }
    }
    Ok(())
}

impl KubeCluster {
    /// Builds the cluster: underlay, control plane, nodes with their
    /// kubelets (registered, Ready) and kube-proxies.
    pub fn up(config: KubeClusterConfig) -> Result<KubeCluster> {
        check_tools()?;
        if config.nodes == 0 || config.nodes > MAX_NODES {
            return Err(Error::Invalid(format!(
                "a cluster has 1 to {MAX_NODES} nodes, not {}",
                config.nodes
            )));
        }
        let bins = match &config.binaries {
            Some(b) => b.clone(),
            None => Binaries::locate()?,
        };
        let toolchain = Toolchain::locate()?;
        std::fs::create_dir_all(&config.root).map_err(Error::io(&config.root))?;
        let id = RunId::generate(&config.root);
        let dir = config.root.join(id.as_str());
        std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
        let state = RunState::new(id.clone(), dir.clone());
        state.save()?;
        signals::register(dir.clone());
        (config.progress)(&format!("run {id} (kube): files in {}", dir.display()));
        let mut cluster = KubeCluster {
            config,
            bins: bins.clone(),
            underlay: None,
            state,
            plane: None,
            nodes: Vec::new(),
            done: false,
        };
        // On failure, dropping the half-built cluster tears it down.
        cluster.assemble(&toolchain, &bins)?;
        Ok(cluster)
    }

    fn create_netns(&mut self, role: &str) -> Result<Netns> {
        let name = self.state.run_id.netns(role);
        self.state.netns.push(name.clone());
        self.state.save()?;
        Netns::create(&name)
    }

    fn assemble(&mut self, toolchain: &Toolchain, bins: &Binaries) -> Result<()> {
        let progress = self.config.progress.clone();
        let dir = self.state.dir.clone();
        let underlay = self.create_netns("underlay")?;
        topology::build_underlay(&underlay)?;

        progress(&format!(
            "control plane: a namespace on the underlay at {CONTROLLER_IP}"
        ));
        let cp = self.create_netns("cp")?;
        topology::attach(&underlay, &cp, "cp", CONTROLLER_IP)?;
        let placement = Placement::Netns {
            netns: cp.name().to_string(),
            ip: CONTROLLER_IP,
        };
        let plane = ControlPlane::start(
            toolchain,
            &placement,
            &dir.join("kube"),
            &mut self.state,
            &*progress,
        )?;
        self.plane = Some(plane);

        let count = self.config.nodes;
        progress("images: assembling and caching the OCI archives (weft-image)");
        let images = Images::assemble(
            bins,
            (super::dns::IMAGE, toolchain.dns_binary()),
            &self.config.images,
            &dir.join("images"),
        )?;
        for index in 1..=count {
            let name = addresses::node_name(index);
            progress(&format!(
                "{name}: namespace at {}, pods {}",
                addresses::node_ip(index),
                addresses::pod_cidr(index)
            ));
            let ns = self.create_netns(&name)?;
            topology::attach(&underlay, &ns, &name, addresses::node_ip(index))?;
            topology::build_node(&ns, index, count)?;
            topology::route_pods(&cp, index)?;
            // Routed Service traffic between pods of one bridge must pass
            // kube-proxy's rules, as on any node running kube-proxy.
            ns.sysctl("bridge/bridge-nf-call-iptables", "1")?;
            // A node's own connections to a cluster IP need a route for it
            // before kube-proxy's DNAT rewrites the destination (a real
            // node's default route plays this part).
            ns.ip(&[
                "route",
                "add",
                super::control_plane::SERVICE_CIDR,
                "dev",
                topology::UPLINK,
                "src",
                &addresses::node_ip(index).to_string(),
            ])?;
            self.state.nodes.push(name.clone());
            self.state.save()?;
            let node = self.start_node(index, &name, ns, &images)?;
            self.nodes.push(node);
        }
        self.underlay = Some(underlay);
        progress("cluster DNS: CoreDNS as kube-dns");
        super::dns::install(self.plane()?.kubectl())?;
        Ok(())
    }

    fn start_node(
        &mut self,
        index: usize,
        name: &str,
        ns: Netns,
        images: &Images,
    ) -> Result<KubeNode> {
        let node_dir = self.state.dir.join("nodes").join(name);
        let fs = NodeFs {
            root: node_dir.join("root"),
        };
        let conf_dir = fs.host_path("/etc/cni/net.d");
        let bin_dir = fs.host_path("/opt/cni/bin");
        let run = fs.host_path("/run/weft");
        for d in [&conf_dir, &bin_dir, &run] {
            std::fs::create_dir_all(d).map_err(Error::io(d))?;
        }
        // The node's network provider: Debian's bridge and host-local.
        let conflist = cni::primary_conflist(
            &addresses::pod_cidr(index),
            addresses::pod_gateway(index),
            &fs.host_path("/var/lib/cni/networks"),
        );
        let path = conf_dir.join(cni::PRIMARY_CONFLIST);
        let text =
            serde_json::to_string_pretty(&conflist).map_err(|e| Error::decode("a conflist", e))?;
        std::fs::write(&path, text).map_err(Error::io(&path))?;

        let plane = self.plane()?;
        let kubelet_config = plane.identity_kubeconfig(
            &format!("kubelet-{name}"),
            &format!("system:node:{name}"),
            &["system:nodes"],
        )?;
        let proxy_config =
            plane.identity_kubeconfig(&format!("kube-proxy-{name}"), "system:kube-proxy", &[])?;
        let toolchain = plane.toolchain().in_netns(ns.name());
        let kubelet = Kubelet::start(KubeletConfig {
            node: NodeIdentity {
                name: name.to_string(),
                ip: addresses::node_ip(index),
                pod_cidr: addresses::pod_cidr(index),
            },
            netns: ns.name().to_string(),
            kubeconfig: kubelet_config,
            dir: node_dir.join("kubelet"),
            run_id: self.state.run_id.clone(),
            runc_root: cleanup::runc_root(&self.state.dir),
            images: images.clone(),
            fs: fs.clone(),
            cni_conf_dir: conf_dir,
            cni_path: vec![bin_dir, PathBuf::from(cni::DEBIAN_CNI_DIR)],
            cluster_dns: Some(super::dns::CLUSTER_DNS),
            progress: self.config.progress.clone(),
        })?;
        let serving = plane.kubelet_serving_cert(name, addresses::node_ip(index))?;
        let ca = plane.ca().to_path_buf();
        let runc_root = cleanup::runc_root(&self.state.dir);
        let proxy = start_kube_proxy(&toolchain, &node_dir, name, &proxy_config)?;
        self.state.record_process(&proxy)?;
        let mut daemons = vec![proxy];
        let ip = addresses::node_ip(index);
        let streams =
            start_kubelet_streams(&toolchain, &node_dir, name, ip, &serving, &ca, &runc_root)?;
        self.state.record_process(&streams)?;
        daemons.push(streams);
        Ok(KubeNode {
            name: name.to_string(),
            index,
            netns: ns,
            fs,
            kubelet: Some(kubelet),
            daemons,
        })
    }

    fn plane(&self) -> Result<&ControlPlane> {
        self.plane
            .as_ref()
            .ok_or_else(|| Error::Invalid("the control plane is not running".into()))
    }

    /// The control plane.
    pub fn control_plane(&self) -> &ControlPlane {
        // Set by `up` before a cluster is returned.
        self.plane
            .as_ref()
            .expect("a running cluster has a control plane")
    }

    /// kubectl as the cluster admin (run inside the control plane's
    /// namespace, where the API server is).
    pub fn kubectl(&self) -> &Kubectl {
        self.control_plane().kubectl()
    }

    /// The nodes.
    pub fn nodes(&self) -> &[KubeNode] {
        &self.nodes
    }

    /// Node `index` (1-based).
    pub fn node(&self, index: usize) -> Result<&KubeNode> {
        index
            .checked_sub(1)
            .and_then(|i| self.nodes.get(i))
            .ok_or_else(|| Error::Invalid(format!("no node {index}")))
    }

    /// The run's state.
    pub fn state(&self) -> &RunState {
        &self.state
    }

    /// The run directory.
    pub fn dir(&self) -> &Path {
        &self.state.dir
    }

    /// Pod `namespace/name` as it runs: its object's facts, and its network
    /// namespace to run the sample workload in (as the pod, so its traffic
    /// is captured like the pod's own).
    pub fn pod(&self, namespace: &str, name: &str) -> Result<Pod> {
        let object = self.kubectl().get_json(&["pod", "-n", namespace, name])?;
        let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
        let ip = object["status"]["podIP"]
            .as_str()
            .and_then(|ip| ip.parse().ok())
            .ok_or_else(|| Error::Invalid(format!("pod {namespace}/{name} has no IP yet")))?;
        let labels = object["metadata"]["labels"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), text(v))).collect())
            .unwrap_or_default();
        let netns = Netns::open(&self.state.run_id.netns(&format!("pod-{namespace}-{name}")))?;
        Ok(Pod {
            inner: Arc::new(PodInner {
                namespace: namespace.to_string(),
                name: name.to_string(),
                uid: text(&object["metadata"]["uid"]),
                node: text(&object["spec"]["nodeName"]),
                service_account: text(&object["spec"]["serviceAccountName"]),
                labels,
                ip,
                netns,
                app: self.bins.path(crate::binaries::APP),
                cni_result: String::new(),
                echo_server: true,
            }),
        })
    }

    /// Starts a packet capture of everything nodes send each other over
    /// the underlay; files `<run>/<name>-<node>.pcap`.
    pub fn capture(&self, name: &str) -> Result<Capture> {
        let underlay = self
            .underlay
            .as_ref()
            .ok_or_else(|| Error::Invalid("no underlay".into()))?;
        let ports: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
        Capture::start(underlay, self.dir(), name, &ports)
    }

    /// GET `path` of node `index`'s ztunnel admin API (its unix socket on
    /// the node, `/var/run/weft/ztunnel-admin.sock`), as JSON.
    pub fn ztunnel_admin(&self, index: usize, path: &str) -> Result<serde_json::Value> {
        let socket = self
            .node(index)?
            .fs
            .host_path("/run/weft/ztunnel-admin.sock");
        crate::http::get_unix(&socket, path)?.json()
    }

    /// weftctl as a user runs it: the cluster's build of it with the admin
    /// kubeconfig, in the control plane's network namespace (where the API
    /// server is reachable), with nothing chosen by the caller's environment.
    pub fn weftctl(&self, args: &[&str]) -> Result<std::process::Output> {
        let binary = self.bins.require(crate::binaries::WEFTCTL)?;
        let plane = self.plane()?;
        let mut cmd = std::process::Command::new("ip");
        if let Some(netns) = plane.toolchain().netns() {
            cmd.args(["netns", "exec", netns]);
        }
        cmd.arg(binary)
            .arg("--kubeconfig")
            .arg(plane.kubectl().kubeconfig())
            .args(args);
        for var in ["WEFT_RUN_DIR", "WEFT_MANIFESTS", "KUBECONFIG"] {
            cmd.env_remove(var);
        }
        exec::output(&mut cmd)
    }

    /// Stops node `index`'s kubelet (its pods keep running; the node goes
    /// NotReady once its Lease expires).
    pub fn stop_kubelet(&mut self, index: usize) -> Result<()> {
        let node = index
            .checked_sub(1)
            .and_then(|i| self.nodes.get_mut(i))
            .ok_or_else(|| Error::Invalid(format!("no node {index}")))?;
        if let Some(mut k) = node.kubelet.take() {
            k.stop();
        }
        Ok(())
    }

    /// The log of container `container` of pod `namespace/name` on the node
    /// running it, if any.
    pub fn container_log(&self, namespace: &str, name: &str, container: &str) -> Result<String> {
        let pod = self.kubectl().get_json(&["pod", "-n", namespace, name])?;
        let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
        let node = pod["spec"]["nodeName"].as_str().unwrap_or_default();
        let path = self
            .state
            .dir
            .join("nodes")
            .join(node)
            .join("kubelet/pods")
            .join(uid)
            .join("logs")
            .join(format!("{container}.log"));
        std::fs::read_to_string(&path).map_err(Error::io(&path))
    }

    /// Prints the end of every component's and container's log.
    pub fn print_logs(&self) {
        if let Some(plane) = &self.plane {
            for (name, tail) in plane.log_tails(30) {
                eprintln!("----- {name} (last lines) -----\n{tail}");
            }
        }
        for node in &self.nodes {
            for p in &node.daemons {
                eprintln!("----- {} (last lines) -----\n{}", p.name(), p.log_tail(15));
            }
            let pods = self
                .state
                .dir
                .join("nodes")
                .join(&node.name)
                .join("kubelet/pods");
            for log in logs_under(&pods) {
                eprintln!(
                    "----- {} (last lines) -----\n{}",
                    log.display(),
                    crate::process::log_tail(&log, 30)
                );
            }
        }
    }

    fn teardown_inner(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        if std::thread::panicking() {
            self.print_logs();
        }
        (self.config.progress)(&format!("run {}: tearing down", self.state.run_id));
        for node in &mut self.nodes {
            if let Some(mut k) = node.kubelet.take() {
                k.stop();
            }
            for mut p in node.daemons.drain(..) {
                p.stop(Duration::from_secs(2));
            }
        }
        if let Some(mut plane) = self.plane.take() {
            plane.stop();
        }
        let report = cleanup::teardown(&self.state);
        signals::unregister(&self.state.dir);
        for e in &report.errors {
            (self.config.progress)(&format!("teardown: {e}"));
        }
    }

    /// What is left of this run on the machine (empty after teardown).
    pub fn leftovers(&self) -> Vec<String> {
        cleanup::leftovers(&self.state.run_id, &self.state.dir, &self.state.processes)
    }
}

impl Drop for KubeCluster {
    fn drop(&mut self) {
        self.teardown_inner();
    }
}

/// Every `*.log` under `dir`.
fn logs_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "log") {
                out.push(path);
            }
        }
    }
    out
}

/// The streaming endpoints (port-forward, exec, logs) of node `name`'s
/// kubelet: `weft-kube kubelet-streams` inside the node's namespace on the
/// kubelet port, serving only the API server, reading the pods the harness'
/// kubelet records ([`kubelet::streams_dir`]).
fn start_kubelet_streams(
    toolchain: &Toolchain,
    node_dir: &Path,
    name: &str,
    ip: std::net::Ipv4Addr,
    serving: &super::pki::CertFiles,
    ca: &Path,
    runc_root: &Path,
) -> Result<ManagedProcess> {
    let kubelet_dir = node_dir.join("kubelet");
    let streams = kubelet::streams_dir(&kubelet_dir);
    std::fs::create_dir_all(&streams).map_err(Error::io(&streams))?;
    // nsenter rather than `ip netns exec`, which mounts a sysfs of the
    // namespace over /sys and so hides the cgroup hierarchies that
    // `runc exec` must join.
    let mut cmd = std::process::Command::new("nsenter");
    if let Some(netns) = toolchain.netns() {
        cmd.arg(format!("--net={}", Netns::path_of(netns).display()));
    }
    cmd.arg(toolchain.binary()).arg("kubelet-streams");
    cmd.arg(format!("--listen={ip}:{}", kubelet::node::KUBELET_PORT))
        .arg(format!("--tls-cert-file={}", serving.cert.display()))
        .arg(format!("--tls-private-key-file={}", serving.key.display()))
        .arg(format!("--client-ca-file={}", ca.display()))
        .arg(format!(
            "--allow-user={}",
            ControlPlane::KUBELET_CLIENT_USER
        ))
        .arg(format!("--pods-dir={}", streams.display()))
        .arg(format!("--runc={}", kubelet::runtime::RUNC))
        .arg(format!("--runc-root={}", runc_root.display()));
    ManagedProcess::spawn(
        &format!("{name}/kubelet-streams"),
        cmd,
        &node_dir.join("kubelet-streams.log"),
    )
}

/// kube-proxy for node `name`, in nftables mode inside the node's
/// namespace, as user `system:kube-proxy` (bound to `system:node-proxier`
/// by the API server's bootstrap RBAC).
fn start_kube_proxy(
    toolchain: &Toolchain,
    node_dir: &Path,
    name: &str,
    kubeconfig: &Path,
) -> Result<ManagedProcess> {
    std::fs::create_dir_all(node_dir).map_err(Error::io(node_dir))?;
    let config = serde_json::json!({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": kubeconfig},
        "hostnameOverride": name,
        "mode": "nftables",
        "clusterCIDR": CLUSTER_CIDR,
        // Sysctls are the machine's, shared by every node: leave them.
        "conntrack": {
            "maxPerCore": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
        "metricsBindAddress": "127.0.0.1:10249",
        "healthzBindAddress": "127.0.0.1:10256",
    });
    let path = node_dir.join("kube-proxy.json");
    let text = serde_json::to_string_pretty(&config)
        .map_err(|e| Error::decode("kube-proxy's config", e))?;
    std::fs::write(&path, text).map_err(Error::io(&path))?;
    let mut cmd = toolchain.command("kube-proxy");
    cmd.arg(format!("--config={}", path.display()));
    ManagedProcess::spawn(
        &format!("{name}/kube-proxy"),
        cmd,
        &node_dir.join("kube-proxy.log"),
    )
}
