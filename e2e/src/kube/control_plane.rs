//! The control plane of a kube-mode run: etcd, kube-apiserver,
//! kube-controller-manager and kube-scheduler, the upstream programs
//! (docs/e2e.md), on the harness' loopback or, for a cluster with nodes,
//! inside a namespace of its own on the cluster's underlay.
//!
//! The API server serves TLS with a CA made for the run, authorizes with
//! `Node,RBAC`, runs the default admission chain, and signs ServiceAccount
//! tokens that may carry weft's own audience. Each component authenticates
//! as its own identity, so a missing RBAC verb in what weft ships fails a
//! test exactly as it would on a real cluster.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::kubeconfig::{self, Credentials};
use super::kubectl::Kubectl;
use super::pki::{CertFiles, Pki};
use super::toolchain::Toolchain;
use crate::error::{Error, Result};
use crate::process::ManagedProcess;
use crate::state::RunState;

/// The ServiceAccount token issuer, as on most clusters.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// The audiences the API server accepts on tokens: its own and weft's (the
/// controller's CA requires the latter on the proxies' tokens).
pub const AUDIENCES: &[&str] = &[ISSUER, "weft.dev/controller"];

/// The Service CIDR (the `kubernetes` Service takes its first address).
pub const SERVICE_CIDR: &str = "10.96.0.0/16";

/// The controllers of kube-controller-manager weft relies on: Services'
/// EndpointSlices, ServiceAccounts and their tokens, the CA ConfigMap every
/// projected token volume reads, garbage collection of owned objects,
/// namespace deletion, and the workload controllers that make the pods of
/// weft's Deployments and DaemonSets.
pub const CONTROLLERS: &[&str] = &[
    "endpointslice-controller",
    "endpointslice-mirroring-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "garbage-collector-controller",
    "namespace-controller",
    "deployment-controller",
    "replicaset-controller",
    "daemonset-controller",
    "pod-garbage-collector-controller",
    "clusterrole-aggregation-controller",
    // PodDisruptionBudgets' status (the controller's budget).
    "disruption-controller",
    // Lifts the not-ready taint admission puts on a new Node once its
    // kubelet reports Ready, and marks a node whose kubelet stops renewing
    // its Lease NotReady.
    "node-lifecycle-controller",
];

/// How long the API server may take to become ready (cold: a few seconds).
const READY_WITHIN: Duration = Duration::from_secs(90);

/// Where the control plane runs and serves.
#[derive(Clone, Debug)]
pub enum Placement {
    /// On the harness' loopback: tests that need no nodes.
    Loopback,
    /// Inside network namespace `netns`, serving on `ip`: nodes and pods
    /// reach it over the underlay, and the `kubernetes` Service has it as its
    /// endpoint, as on a real cluster.
    Netns {
        /// The namespace's name.
        netns: String,
        /// Its address on the underlay.
        ip: Ipv4Addr,
    },
}

/// The API server's port when it has a namespace of its own.
pub const API_PORT: u16 = 6443;

/// A running control plane.
pub struct ControlPlane {
    toolchain: Toolchain,
    dir: PathBuf,
    pki: Pki,
    server: String,
    admin: Kubectl,
    // Stopped in reverse order of start: the API server before etcd.
    processes: Vec<ManagedProcess>,
}

fn free_port() -> Result<u16> {
    Ok(super::free_loopback_addr()?.port())
}

fn spawn(
    state: &mut RunState,
    dir: &Path,
    toolchain: &Toolchain,
    component: &str,
    args: &[String],
) -> Result<ManagedProcess> {
    let mut cmd = toolchain.command(component);
    cmd.args(args);
    let p = ManagedProcess::spawn(component, cmd, &dir.join(format!("{component}.log")))?;
    state.record_process(&p)?;
    Ok(p)
}

impl ControlPlane {
    /// Starts the control plane with its files under `dir` (created);
    /// every process is recorded in `state` for teardown.
    pub fn start(
        toolchain: &Toolchain,
        placement: &Placement,
        dir: &Path,
        state: &mut RunState,
        progress: &dyn Fn(&str),
    ) -> Result<ControlPlane> {
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        // In a namespace of its own every port is free; on the harness'
        // loopback, ports are picked free.
        let (toolchain, bind, ports) = match placement {
            Placement::Loopback => (
                toolchain.clone(),
                Ipv4Addr::LOCALHOST,
                [free_port()?, free_port()?, free_port()?],
            ),
            Placement::Netns { netns, ip } => {
                (toolchain.in_netns(netns), *ip, [2379, 2380, API_PORT])
            }
        };
        let toolchain = &toolchain;
        let started = Instant::now();
        let pki = Pki::create(&dir.join("pki"))?;
        let sa_key = pki.service_account_key()?;
        let mut processes = Vec::new();

        // etcd: plain HTTP on loopback, reachable only from this machine.
        // No fsync: a test's cluster state never outlives the run.
        let [client, peer, port] = ports;
        let etcd_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let etcd_args: Vec<String> = [
            "--name=default".to_string(),
            format!("--data-dir={}", dir.join("etcd").display()),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=default={peer_url}"),
            "--unsafe-no-fsync=true".to_string(),
            "--log-level=warn".to_string(),
        ]
        .into();
        processes.push(spawn(state, dir, toolchain, "etcd", &etcd_args)?);

        let server = format!("https://{bind}:{port}");
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let mut serving_ips = vec![loopback, IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1))];
        if bind != Ipv4Addr::LOCALHOST {
            serving_ips.push(IpAddr::V4(bind));
        }
        let serving = pki.server(
            "kube-apiserver",
            &[
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
            &serving_ips,
        )?;
        // The API server's client identity towards kubelets (logs, exec,
        // port-forward).
        let kubelet_client = pki.client(
            "apiserver-kubelet-client",
            Self::KUBELET_CLIENT_USER,
            &["kubeadm:cluster-admins"],
        )?;
        let ca = pki.ca().display().to_string();
        let mut apiserver_args: Vec<String> = [
            format!("--etcd-servers={etcd_url}"),
            format!("--bind-address={bind}"),
            format!("--advertise-address={bind}"),
            format!("--secure-port={port}"),
            format!("--tls-cert-file={}", serving.cert.display()),
            format!("--tls-private-key-file={}", serving.key.display()),
            format!("--client-ca-file={ca}"),
            format!("--kubelet-certificate-authority={ca}"),
            format!(
                "--kubelet-client-certificate={}",
                kubelet_client.cert.display()
            ),
            format!("--kubelet-client-key={}", kubelet_client.key.display()),
            // Nodes have no DNS names the API server could resolve.
            "--kubelet-preferred-address-types=InternalIP".to_string(),
            format!("--service-account-issuer={ISSUER}"),
            format!("--service-account-key-file={}", sa_key.cert.display()),
            format!(
                "--service-account-signing-key-file={}",
                sa_key.key.display()
            ),
            format!("--api-audiences={}", AUDIENCES.join(",")),
            "--authorization-mode=Node,RBAC".to_string(),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            // weft's node components need privileges; PodSecurity still
            // applies per namespace.
            "--allow-privileged=true".to_string(),
            format!("--cert-dir={}", dir.join("apiserver-certs").display()),
            "--profiling=false".to_string(),
        ]
        .into();
        if bind == Ipv4Addr::LOCALHOST {
            // A loopback address cannot be the `kubernetes` Service's
            // endpoint.
            apiserver_args.push("--endpoint-reconciler-type=none".to_string());
        }
        progress("control plane: starting etcd and kube-apiserver");
        processes.push(spawn(
            state,
            dir,
            toolchain,
            "kube-apiserver",
            &apiserver_args,
        )?);

        let admin_files = pki.client("admin", "weft-e2e-admin", &["system:masters"])?;
        let admin_config = kubeconfig::write(
            &dir.join("admin.kubeconfig"),
            &server,
            pki.ca(),
            "weft-e2e-admin",
            &Credentials::Certificate(admin_files),
        )?;
        let admin = Kubectl::new(toolchain, &admin_config);
        let mut plane = ControlPlane {
            toolchain: toolchain.clone(),
            dir: dir.to_path_buf(),
            pki,
            server,
            admin,
            processes,
        };
        plane.wait_ready()?;

        // The components, each as the identity the built-in RBAC expects.
        let kcm_config = plane
            .component_kubeconfig("kube-controller-manager", "system:kube-controller-manager")?;
        let kcm_args: Vec<String> = [
            format!("--kubeconfig={}", kcm_config.display()),
            format!("--controllers={}", CONTROLLERS.join(",")),
            format!(
                "--service-account-private-key-file={}",
                sa_key.key.display()
            ),
            format!("--root-ca-file={ca}"),
            // Each controller acts as its own ServiceAccount, as on a real
            // cluster.
            "--use-service-account-credentials=true".to_string(),
            "--leader-elect=false".to_string(),
            "--secure-port=0".to_string(),
        ]
        .into();
        let kcm = spawn(state, dir, toolchain, "kube-controller-manager", &kcm_args)?;
        plane.processes.push(kcm);

        let scheduler_config =
            plane.component_kubeconfig("kube-scheduler", "system:kube-scheduler")?;
        let scheduler_args: Vec<String> = [
            format!("--kubeconfig={}", scheduler_config.display()),
            format!("--authentication-kubeconfig={}", scheduler_config.display()),
            format!("--authorization-kubeconfig={}", scheduler_config.display()),
            "--leader-elect=false".to_string(),
            "--secure-port=0".to_string(),
        ]
        .into();
        let scheduler = spawn(state, dir, toolchain, "kube-scheduler", &scheduler_args)?;
        plane.processes.push(scheduler);

        // Ready for tests once a namespace gets its ServiceAccount: that
        // proves kube-controller-manager is acting, with its own identity.
        plane.wait_for_service_account("default", "default")?;
        progress(&format!(
            "control plane: ready at {} in {:.1} s",
            plane.server,
            started.elapsed().as_secs_f64()
        ));
        Ok(plane)
    }

    fn component_kubeconfig(&self, file: &str, user: &str) -> Result<PathBuf> {
        self.identity_kubeconfig(file, user, &[])
    }

    /// A kubeconfig authenticating by client certificate as `user` in
    /// `groups` (a node's kubelet is `system:node:<name>` in
    /// `system:nodes`), written as `<file>.kubeconfig`.
    pub fn identity_kubeconfig(&self, file: &str, user: &str, groups: &[&str]) -> Result<PathBuf> {
        let files = self.pki.client(file, user, groups)?;
        kubeconfig::write(
            &self.dir.join(format!("{file}.kubeconfig")),
            &self.server,
            self.pki.ca(),
            user,
            &Credentials::Certificate(files),
        )
    }

    /// A kubelet's serving certificate for node `name` at `ip`, from the
    /// CA the API server checks kubelets against.
    pub fn kubelet_serving_cert(&self, name: &str, ip: Ipv4Addr) -> Result<CertFiles> {
        self.pki.server(
            &format!("kubelet-{name}-serving"),
            &[name],
            &[IpAddr::V4(ip)],
        )
    }

    /// The user the API server authenticates as towards kubelets.
    pub const KUBELET_CLIENT_USER: &str = "kube-apiserver-kubelet-client";

    fn process_mut(&mut self, name: &str) -> Option<&mut ManagedProcess> {
        self.processes.iter_mut().find(|p| p.name() == name)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let admin = self.admin.clone();
        let ready = move || {
            admin
                .output(&["get", "--raw", "/readyz"])
                .is_ok_and(|o| o.status.success())
        };
        let apiserver = self
            .process_mut("kube-apiserver")
            .ok_or_else(|| Error::Invalid("kube-apiserver was not started".into()))?;
        apiserver.wait_ready("/readyz", READY_WITHIN, ready)
    }

    /// Waits until `namespace/name` exists (ServiceAccounts are made by
    /// kube-controller-manager shortly after their namespace).
    pub fn wait_for_service_account(&mut self, namespace: &str, name: &str) -> Result<()> {
        let admin = self.admin.clone();
        let (ns, sa) = (namespace.to_string(), name.to_string());
        let exists = move || {
            admin
                .output(&["get", "serviceaccount", "-n", &ns, &sa])
                .is_ok_and(|o| o.status.success())
        };
        let kcm = self
            .process_mut("kube-controller-manager")
            .ok_or_else(|| Error::Invalid("kube-controller-manager was not started".into()))?;
        kcm.wait_ready(
            &format!("ServiceAccount {namespace}/{name}"),
            READY_WITHIN,
            exists,
        )
    }

    /// The API server's URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The CA certificate clients trust.
    pub fn ca(&self) -> &Path {
        self.pki.ca()
    }

    /// kubectl as the cluster admin.
    pub fn kubectl(&self) -> &Kubectl {
        &self.admin
    }

    /// The control plane's binaries and CRDs.
    pub fn toolchain(&self) -> &Toolchain {
        &self.toolchain
    }

    /// A token for ServiceAccount `namespace/name` from the TokenRequest API,
    /// with `audiences`, optionally bound to pod `bound_pod` (in the same
    /// namespace): exactly what the kubelet projects into a pod.
    pub fn token(
        &self,
        namespace: &str,
        name: &str,
        audiences: &[&str],
        bound_pod: Option<&str>,
    ) -> Result<String> {
        let mut args = vec!["create", "token", name, "-n", namespace, "--duration=10m"];
        let audience_args: Vec<String> = audiences
            .iter()
            .map(|a| format!("--audience={a}"))
            .collect();
        args.extend(audience_args.iter().map(String::as_str));
        if let Some(pod) = bound_pod {
            args.extend(["--bound-object-kind=Pod", "--bound-object-name", pod]);
        }
        Ok(self.admin.run(&args)?.trim().to_string())
    }

    /// A kubeconfig (written under the run) authenticating as
    /// ServiceAccount `namespace/name` with a fresh token: how a test runs a
    /// weft component under exactly the RBAC deploy/ grants it.
    pub fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> Result<PathBuf> {
        let token = self.token(namespace, name, &[ISSUER], None)?;
        kubeconfig::write(
            &self.dir.join(format!("sa-{namespace}-{name}.kubeconfig")),
            &self.server,
            self.pki.ca(),
            &format!("system:serviceaccount:{namespace}:{name}"),
            &Credentials::Token(token),
        )
    }

    /// The last lines of every component's log (a failing test prints them).
    pub fn log_tails(&self, lines: usize) -> Vec<(String, String)> {
        self.processes
            .iter()
            .map(|p| (p.name().to_string(), p.log_tail(lines)))
            .collect()
    }

    /// Stops every component, the API server's clients first and etcd last.
    pub fn stop(&mut self) {
        while let Some(mut p) = self.processes.pop() {
            p.stop(Duration::from_secs(5));
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}
