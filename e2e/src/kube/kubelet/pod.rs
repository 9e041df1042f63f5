//! One pod's life on the node, as the kubelet drives it: the sandbox (a
//! network namespace attached by the node's real CNI chain, or the node's
//! own for `hostNetwork`), volumes, init containers in order, then the
//! containers with their restart policy and probes, `pods/status` kept
//! current, and on deletion the grace period honoured before the sandbox
//! goes and the Pod object is released.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod, Probe, Service};
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use serde_json::{Value, json};
use tokio::process::Child;
use tokio::sync::watch;

use super::Context;
use super::env::{self, PodFacts, Sources};
use super::node::now;
use super::probes::{self, Outcome};
use super::runtime;
use super::spec::{self, Bind};
use super::volumes::{self, Keys, Prepared, Reader};
use crate::cni::{self, CniCommand, CniPod};
use crate::netns::Netns;

/// How often the worker looks at its containers.
const TICK: Duration = Duration::from_millis(250);

/// Restart back-off: the first delay and the cap (a real kubelet uses 10 s
/// and 5 min; tests restart processes on purpose and wait for them).
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_CAP: Duration = Duration::from_secs(30);

/// How long a container that cannot be made yet waits before the next try
/// (a ConfigMap it reads may be created a moment later).
const RETRY_CONFIG: Duration = Duration::from_secs(2);

/// The grace period when neither the deletion nor the spec gives one.
const DEFAULT_GRACE: i64 = 30;

fn key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

fn terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// The grace period of a pod being deleted.
fn grace(pod: &Pod) -> Duration {
    let seconds = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .unwrap_or(DEFAULT_GRACE);
    Duration::from_secs(seconds.max(0) as u64)
}

/// The network a pod's containers join.
struct Sandbox {
    netns_name: Option<String>,
    netns_path: PathBuf,
    ip: Ipv4Addr,
    cni_result: Option<String>,
}

/// A probe's running tally.
#[derive(Default)]
struct ProbeState {
    successes: i32,
    failures: i32,
    next: Option<Instant>,
    last: Option<String>,
}

impl ProbeState {
    fn due(&mut self, probe: &Probe, started: Instant) -> bool {
        let now = Instant::now();
        let next = *self.next.get_or_insert(
            started + Duration::from_secs(probe.initial_delay_seconds.unwrap_or(0).max(0) as u64),
        );
        if now < next {
            return false;
        }
        self.next =
            Some(now + Duration::from_secs(probe.period_seconds.unwrap_or(10).max(1) as u64));
        true
    }

    fn record(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Success => {
                self.successes += 1;
                self.failures = 0;
                self.last = None;
            }
            Outcome::Failure(why) => {
                self.failures += 1;
                self.successes = 0;
                self.last = Some(why);
            }
        }
    }
}

struct Running {
    id: String,
    child: Child,
    started: Instant,
    started_at: String,
}

struct Terminated {
    exit_code: i32,
    reason: String,
    started_at: String,
    finished_at: String,
}

/// One container's state in the worker.
struct ContainerRun {
    spec: Container,
    init: bool,
    running: Option<Running>,
    restarts: i32,
    last: Option<Terminated>,
    waiting: Option<(String, String)>,
    next_start: Instant,
    backoff: Duration,
    ready: bool,
    done: bool,
    readiness: ProbeState,
    liveness: ProbeState,
    startup_passed: bool,
    startup: ProbeState,
}

impl ContainerRun {
    fn new(spec: Container, init: bool) -> ContainerRun {
        ContainerRun {
            spec,
            init,
            running: None,
            restarts: 0,
            last: None,
            waiting: Some(("ContainerCreating".into(), String::new())),
            next_start: Instant::now(),
            backoff: BACKOFF_FIRST,
            ready: false,
            done: false,
            readiness: ProbeState::default(),
            liveness: ProbeState::default(),
            startup_passed: false,
            startup: ProbeState::default(),
        }
    }

    fn status(&self, image_id: &str) -> Value {
        let state = match (&self.running, &self.last, &self.waiting) {
            (Some(r), _, _) => json!({"running": {"startedAt": r.started_at}}),
            (None, Some(t), _) if self.done => terminated(t),
            (None, _, Some((reason, message))) => {
                json!({"waiting": {"reason": reason, "message": message}})
            }
            (None, Some(t), None) => terminated(t),
            (None, None, None) => json!({"waiting": {"reason": "ContainerCreating"}}),
        };
        let mut status = json!({
            "name": self.spec.name,
            "image": self.spec.image.clone().unwrap_or_default(),
            "imageID": image_id,
            "ready": self.ready,
            "restartCount": self.restarts,
            "started": self.running.is_some(),
            "state": state,
        });
        if let Some(r) = &self.running {
            status["containerID"] = json!(format!("runc://{}", r.id));
        }
        if let (Some(t), true) = (&self.last, self.running.is_some() || self.waiting.is_some()) {
            status["lastState"] = terminated(t);
        }
        status
    }
}

fn terminated(t: &Terminated) -> Value {
    json!({"terminated": {
        "exitCode": t.exit_code, "reason": t.reason,
        "startedAt": t.started_at, "finishedAt": t.finished_at,
    }})
}

/// A pod the worker runs.
struct Worker {
    ctx: Arc<Context>,
    pod: Pod,
    key: String,
    uid: String,
    dir: PathBuf,
    sandbox: Option<Sandbox>,
    volumes: BTreeMap<String, Prepared>,
    containers: Vec<ContainerRun>,
    start_time: String,
    last_status: Option<Value>,
    last_record: Option<Value>,
    transitions: BTreeMap<String, (bool, String)>,
    failure: Option<(String, String)>,
}

/// Runs the pod the channel carries until it is gone: `None` in the channel
/// means the Pod object was deleted outright.
pub async fn run(ctx: Arc<Context>, mut updates: watch::Receiver<Option<Pod>>) {
    let Some(pod) = updates.borrow_and_update().clone() else {
        return;
    };
    if terminal(&pod) && pod.metadata.deletion_timestamp.is_none() {
        return;
    }
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let mut worker = Worker {
        dir: ctx.dir.join("pods").join(&uid),
        key: key(&pod),
        uid,
        containers: Vec::new(),
        ctx,
        pod,
        sandbox: None,
        volumes: BTreeMap::new(),
        start_time: now(),
        last_status: None,
        last_record: None,
        transitions: BTreeMap::new(),
        failure: None,
    };
    if worker.live(&mut updates).await == End::Stop {
        worker.terminate().await;
    }
}

/// Why a worker's pod stops being run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// Deleted, done, or gone from the API: stop it.
    Stop,
    /// The kubelet itself stopped: the pod keeps running, as when a real
    /// kubelet restarts.
    Abandon,
}

impl Worker {
    fn say(&self, msg: &str) {
        (self.ctx.progress)(&format!("{}: pod {}: {msg}", self.ctx.node.name, self.key));
    }

    fn deleting(&self) -> bool {
        self.pod.metadata.deletion_timestamp.is_some()
    }

    fn spec(&self) -> k8s_openapi::api::core::v1::PodSpec {
        self.pod.spec.clone().unwrap_or_default()
    }

    /// Until the pod is deleted or done, or the kubelet stops.
    async fn live(&mut self, updates: &mut watch::Receiver<Option<Pod>>) -> End {
        if self.deleting() {
            return End::Stop;
        }
        loop {
            if self.sandbox.is_none() {
                // As a kubelet does, a sandbox that failed is tried again
                // (the CNI plugin's agent may not be up yet) until the pod
                // is deleted.
                match self.start_sandbox().await {
                    Ok(()) => self.failure = None,
                    Err(e) => {
                        if self.failure.as_ref().map(|f| &f.1) != Some(&e) {
                            self.say(&format!("sandbox failed: {e}"));
                        }
                        self.failure = Some(("FailedCreatePodSandBox".into(), e));
                        self.publish().await;
                        tokio::select! {
                            changed = updates.changed() => {
                                if let Some(end) = self.follow(changed, updates) {
                                    return end;
                                }
                            }
                            _ = tokio::time::sleep(RETRY_CONFIG) => {}
                        }
                        continue;
                    }
                }
            }
            self.step().await;
            self.publish().await;
            if self.finished() {
                self.say("all containers exited: the pod is done");
                return End::Stop;
            }
            tokio::select! {
                changed = updates.changed() => {
                    if let Some(end) = self.follow(changed, updates) {
                        return end;
                    }
                }
                _ = tokio::time::sleep(TICK) => {}
            }
        }
    }

    /// Takes the channel's news; `Some` when the pod must no longer run.
    fn follow(
        &mut self,
        changed: Result<(), watch::error::RecvError>,
        updates: &mut watch::Receiver<Option<Pod>>,
    ) -> Option<End> {
        if changed.is_err() {
            return Some(End::Abandon);
        }
        match updates.borrow_and_update().clone() {
            Some(pod) => self.pod = pod,
            None => return Some(End::Stop),
        }
        self.deleting().then_some(End::Stop)
    }

    async fn start_sandbox(&mut self) -> Result<(), String> {
        std::fs::create_dir_all(self.dir.join("logs"))
            .map_err(|e| format!("{}: {e}", self.dir.display()))?;
        let spec = self.spec();
        let sandbox = if spec.host_network == Some(true) {
            Sandbox {
                netns_name: None,
                netns_path: Netns::path_of(&self.ctx.netns),
                ip: self.ctx.node.ip,
                cni_result: None,
            }
        } else {
            let ctx = self.ctx.clone();
            let (namespace, name, uid) = (
                self.pod.metadata.namespace.clone().unwrap_or_default(),
                self.pod.metadata.name.clone().unwrap_or_default(),
                self.uid.clone(),
            );
            tokio::task::spawn_blocking(move || add_network(&ctx, &namespace, &name, &uid))
                .await
                .map_err(|e| format!("the sandbox task: {e}"))??
        };
        self.say(&format!("sandbox at {}", sandbox.ip));
        self.sandbox = Some(sandbox);
        for c in spec.init_containers.clone().unwrap_or_default() {
            self.containers.push(ContainerRun::new(c, true));
        }
        for c in spec.containers {
            self.containers.push(ContainerRun::new(c, false));
        }
        self.write_etc_files()
    }

    fn facts(&self) -> PodFacts {
        PodFacts {
            pod_ip: self
                .sandbox
                .as_ref()
                .map(|s| s.ip.to_string())
                .unwrap_or_default(),
            host_ip: self.ctx.node.ip.to_string(),
        }
    }

    fn hostname(&self) -> String {
        self.spec()
            .hostname
            .unwrap_or_else(|| self.pod.metadata.name.clone().unwrap_or_default())
    }

    /// The pod's `/etc/resolv.conf`: the cluster DNS with the namespace's
    /// search path (`ClusterFirst`, and `ClusterFirstWithHostNet` for a
    /// host-network pod), else the machine's.
    fn resolv_conf(&self, namespace: &str) -> String {
        let spec = self.spec();
        let host_network = spec.host_network == Some(true);
        let cluster = match spec.dns_policy.as_deref().unwrap_or("ClusterFirst") {
            "ClusterFirstWithHostNet" => true,
            "ClusterFirst" => !host_network,
            _ => false,
        };
        match (cluster, self.ctx.cluster_dns) {
            (true, Some(dns)) => format!(
                "nameserver {dns}\nsearch {namespace}.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
            ),
            _ => std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        }
    }

    /// The kubelet's `/etc/hosts`, `/etc/hostname` and `/etc/resolv.conf`.
    fn write_etc_files(&self) -> Result<(), String> {
        let etc = self.dir.join("etc");
        std::fs::create_dir_all(&etc).map_err(|e| format!("{}: {e}", etc.display()))?;
        let ip = self.facts().pod_ip;
        let hostname = self.hostname();
        let namespace = self.pod.metadata.namespace.clone().unwrap_or_default();
        let files = [
            (
                "hosts",
                format!(
                    "# Kubernetes-managed hosts file (weft-e2e kubelet).\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{ip}\t{hostname}\n"
                ),
            ),
            ("hostname", format!("{hostname}\n")),
            ("resolv.conf", self.resolv_conf(&namespace)),
        ];
        for (name, text) in files {
            let path = etc.join(name);
            std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(())
    }

    /// One pass over the containers: reap, start, probe.
    async fn step(&mut self) {
        let policy = self
            .spec()
            .restart_policy
            .unwrap_or_else(|| "Always".into());
        // Init containers run one at a time, in order, to success.
        let init_pending = self.containers.iter().position(|c| c.init && !c.done);
        for i in 0..self.containers.len() {
            let blocked = match init_pending {
                Some(first) => i != first,
                None => false,
            };
            self.reap(i, &policy).await;
            if self.containers[i].done || blocked {
                continue;
            }
            if self.containers[i].running.is_none() {
                if Instant::now() >= self.containers[i].next_start {
                    self.start_container(i).await;
                }
                continue;
            }
            self.probe(i).await;
        }
    }

    /// Notices an exited container and decides on its restart.
    async fn reap(&mut self, i: usize, policy: &str) {
        let c = &mut self.containers[i];
        let Some(running) = c.running.as_mut() else {
            return;
        };
        let status = match running.child.try_wait() {
            Ok(Some(status)) => status,
            Ok(None) => return,
            Err(_) => return,
        };
        let Some(running) = c.running.take() else {
            return;
        };
        self.ctx.runc.delete(&running.id).await;
        let c = &mut self.containers[i];
        let exit_code = status.code().unwrap_or(137);
        c.ready = false;
        c.readiness = ProbeState::default();
        c.liveness = ProbeState::default();
        c.last = Some(Terminated {
            exit_code,
            reason: if exit_code == 0 {
                "Completed".into()
            } else {
                "Error".into()
            },
            started_at: running.started_at,
            finished_at: now(),
        });
        let restart = match policy {
            "Never" => false,
            "OnFailure" => exit_code != 0,
            _ => !(c.init && exit_code == 0),
        };
        if restart {
            c.restarts += 1;
            c.next_start = Instant::now() + c.backoff;
            c.backoff = (c.backoff * 2).min(BACKOFF_CAP);
            c.waiting = Some((
                "CrashLoopBackOff".into(),
                format!("exited with {exit_code}; restarting after back-off"),
            ));
        } else {
            c.done = true;
            c.waiting = None;
        }
        let name = c.spec.name.clone();
        self.say(&format!(
            "container {name} exited with {exit_code}{}",
            if restart { ", restarting" } else { "" }
        ));
    }

    async fn start_container(&mut self, i: usize) {
        let restart = self.containers[i].restarts;
        let spec = self.containers[i].spec.clone();
        match self.launch(&spec, restart).await {
            Ok(running) => {
                let c = &mut self.containers[i];
                c.waiting = None;
                c.running = Some(running);
                c.startup_passed = spec.startup_probe.is_none();
                if spec.readiness_probe.is_none() && !c.init {
                    c.ready = true;
                }
                self.say(&format!("container {} started", spec.name));
            }
            Err((reason, message)) => {
                let c = &mut self.containers[i];
                if c.waiting.as_ref().map(|w| &w.1) != Some(&message) {
                    self.say(&format!("container {}: {reason}: {message}", spec.name));
                }
                let c = &mut self.containers[i];
                c.waiting = Some((reason, message));
                c.next_start = Instant::now() + RETRY_CONFIG;
            }
        }
    }

    /// The pod's volumes, made once.
    async fn volumes(&mut self) -> Result<(), String> {
        if !self.volumes.is_empty() {
            return Ok(());
        }
        let reader = Reader::new(
            self.ctx.client.clone(),
            self.pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        let facts = self.facts();
        let mut made = BTreeMap::new();
        for volume in self.spec().volumes.unwrap_or_default() {
            let prepared = volumes::prepare(
                &reader,
                &self.pod,
                &facts,
                &volume,
                &self.dir.join("volumes"),
                &self.ctx.fs,
            )
            .await?;
            made.insert(volume.name.clone(), prepared);
        }
        self.volumes = made;
        Ok(())
    }

    /// The variables the kubelet itself sets: the Services of the pod's
    /// namespace and the API server's.
    async fn service_env(&self) -> Result<Vec<(String, String)>, String> {
        let namespace = self.pod.metadata.namespace.as_deref().unwrap_or("default");
        let mut services: Vec<Service> = Vec::new();
        if self.spec().enable_service_links != Some(false) {
            let api: Api<Service> = Api::namespaced(self.ctx.client.clone(), namespace);
            services.extend(
                api.list(&ListParams::default())
                    .await
                    .map_err(|e| format!("listing Services of {namespace}: {e}"))?
                    .items
                    .into_iter()
                    .filter(|s| s.metadata.name.as_deref() != Some("kubernetes")),
            );
        }
        let default: Api<Service> = Api::namespaced(self.ctx.client.clone(), "default");
        if let Some(api) = default
            .get_opt("kubernetes")
            .await
            .map_err(|e| format!("reading Service default/kubernetes: {e}"))?
        {
            services.push(api);
        }
        Ok(env::service_env(&services))
    }

    async fn sources(&self) -> Result<Sources, String> {
        let reader = Reader::new(
            self.ctx.client.clone(),
            self.pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        let (config_maps, secrets) = env::referenced(&self.pod);
        let mut sources = Sources::default();
        for (kind, names, into) in [
            (Keys::ConfigMap, config_maps, &mut sources.config_maps),
            (Keys::Secret, secrets, &mut sources.secrets),
        ] {
            for name in names {
                if let Some(data) = reader.read(kind, &name).await? {
                    let text = data
                        .into_iter()
                        .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()));
                    into.insert(name, text.collect());
                }
            }
        }
        Ok(sources)
    }

    /// Makes the container's bundle and starts it.
    async fn launch(&mut self, c: &Container, restart: i32) -> Result<Running, (String, String)> {
        let config_error = |e: String| ("CreateContainerConfigError".to_string(), e);
        let image = self
            .ctx
            .images
            .resolve(c.image.as_deref().unwrap_or_default())
            .map_err(|e| ("ErrImagePull".to_string(), e))?;
        self.volumes().await.map_err(config_error)?;
        let sources = self.sources().await.map_err(config_error)?;
        let base = self.service_env().await.map_err(config_error)?;
        let env =
            env::resolve(&self.pod, c, &self.facts(), &sources, &base).map_err(config_error)?;
        let mut binds = Vec::new();
        for mount in c.volume_mounts.iter().flatten() {
            let volume = self.volumes.get(&mount.name).ok_or_else(|| {
                config_error(format!(
                    "volumeMount {}: the pod has no volume {}",
                    mount.mount_path, mount.name
                ))
            })?;
            let source = match mount.sub_path.as_deref().filter(|s| !s.is_empty()) {
                Some(sub) if sub.split('/').any(|p| p == "..") => {
                    return Err(config_error(format!("subPath {sub:?} leaves its volume")));
                }
                Some(sub) => volume.source.join(sub),
                None => volume.source.clone(),
            };
            binds.push(Bind {
                destination: mount.mount_path.clone(),
                source,
                read_only: volume.read_only || mount.read_only == Some(true),
                host_to_container: matches!(
                    mount.mount_propagation.as_deref(),
                    Some("HostToContainer" | "Bidirectional")
                ),
            });
        }
        for file in ["hosts", "hostname", "resolv.conf"] {
            binds.push(Bind {
                destination: format!("/etc/{file}"),
                source: self.dir.join("etc").join(file),
                read_only: true,
                host_to_container: false,
            });
        }
        let Some(sandbox) = &self.sandbox else {
            return Err(config_error("no sandbox".into()));
        };
        let pod_security = self.spec().security_context;
        let hostname = self.hostname();
        let id = format!(
            "{}-{}-{restart}",
            &self.uid[..self.uid.len().min(8)],
            c.name
        );
        // Named like a kubelet's cgroupfs-driver cgroups (the node agent
        // finds running pods by the `pod<uid>` in them), under the run.
        let cgroup = format!(
            "{}/kubepods/besteffort/pod{}/{id}",
            runtime::cgroup_root(&self.ctx.run_id),
            self.uid
        );
        let bundle = self
            .dir
            .join("containers")
            .join(format!("{}-{restart}", c.name));
        let rootfs = bundle.join("rootfs");
        // A retried start lays the root out afresh.
        let _ = std::fs::remove_dir_all(&bundle);
        spec::make_rootfs(&rootfs, &image)
            .map_err(|e| config_error(format!("laying out {}: {e}", rootfs.display())))?;
        let image_user = image.config.image_user(&rootfs).map_err(config_error)?;
        let inputs = spec::Inputs {
            image: &image,
            image_user,
            env: &env,
            binds: &binds,
            netns: &sandbox.netns_path,
            hostname: &hostname,
            pod_security: pod_security.as_ref(),
            cgroup: &cgroup,
        };
        spec::user(c, pod_security.as_ref(), image_user).map_err(config_error)?;
        // The program must be in the image and executable by its user, as
        // a runtime's exec would find: else the start fails, with the file.
        let runtime = spec::runtime_spec(c, &inputs, &rootfs)
            .map_err(|e| ("RunContainerError".to_string(), e))?;
        let config = bundle.join("config.json");
        let text = serde_json::to_vec_pretty(&runtime).map_err(|e| config_error(e.to_string()))?;
        std::fs::write(&config, text)
            .map_err(|e| config_error(format!("{}: {e}", config.display())))?;
        let log = self.log_path(&c.name);
        let child = self
            .ctx
            .runc
            .run(&id, &bundle, &log)
            .map_err(|e| ("RunContainerError".to_string(), format!("runc run: {e}")))?;
        Ok(Running {
            id,
            child,
            started: Instant::now(),
            started_at: now(),
        })
    }

    /// Runs the container's due probes.
    async fn probe(&mut self, i: usize) {
        let Some(ip) = self.sandbox.as_ref().map(|s| IpAddr::V4(s.ip)) else {
            return;
        };
        let c = &self.containers[i];
        let Some(running) = &c.running else { return };
        let (id, started) = (running.id.clone(), running.started);
        let spec = c.spec.clone();
        if !c.startup_passed {
            if let Some(probe) = &spec.startup_probe
                && self.containers[i].startup.due(probe, started)
            {
                let outcome = probes::run(probe, &spec, ip, &self.ctx.runc, &id).await;
                let state = &mut self.containers[i].startup;
                state.record(outcome);
                if state.successes >= 1 {
                    self.containers[i].startup_passed = true;
                } else if state.failures >= probe.failure_threshold.unwrap_or(3) {
                    self.kill_for("startup", i, &id).await;
                }
            }
            return;
        }
        if let Some(probe) = &spec.liveness_probe
            && self.containers[i].liveness.due(probe, started)
        {
            let outcome = probes::run(probe, &spec, ip, &self.ctx.runc, &id).await;
            self.containers[i].liveness.record(outcome);
            if self.containers[i].liveness.failures >= probe.failure_threshold.unwrap_or(3) {
                self.kill_for("liveness", i, &id).await;
                return;
            }
        }
        if let Some(probe) = &spec.readiness_probe
            && self.containers[i].readiness.due(probe, started)
        {
            let outcome = probes::run(probe, &spec, ip, &self.ctx.runc, &id).await;
            let c = &mut self.containers[i];
            c.readiness.record(outcome);
            let was = c.ready;
            if c.readiness.successes >= probe.success_threshold.unwrap_or(1) {
                c.ready = true;
            } else if c.readiness.failures >= probe.failure_threshold.unwrap_or(3) {
                c.ready = false;
            }
            if was != c.ready {
                let why = c.readiness.last.clone().unwrap_or_default();
                let name = c.spec.name.clone();
                let now_ready = c.ready;
                self.say(&format!(
                    "container {name} {}{why}",
                    if now_ready { "ready" } else { "not ready: " }
                ));
            }
        }
    }

    async fn kill_for(&mut self, probe: &str, i: usize, id: &str) {
        let name = self.containers[i].spec.name.clone();
        let why = match probe {
            "liveness" => self.containers[i].liveness.last.clone(),
            _ => self.containers[i].startup.last.clone(),
        };
        self.say(&format!(
            "container {name} failed its {probe} probe ({}): restarting it",
            why.unwrap_or_default()
        ));
        self.ctx.runc.kill(id, "KILL").await;
    }

    fn finished(&self) -> bool {
        !self.containers.is_empty() && self.containers.iter().all(|c| c.done)
    }

    fn phase(&self) -> &'static str {
        if self.finished() {
            let failed = self
                .containers
                .iter()
                .any(|c| c.last.as_ref().is_some_and(|t| t.exit_code != 0));
            return if failed { "Failed" } else { "Succeeded" };
        }
        if self.failure.is_some() || self.sandbox.is_none() {
            return "Pending";
        }
        let app_started = self
            .containers
            .iter()
            .filter(|c| !c.init)
            .any(|c| c.running.is_some() || c.last.is_some());
        if app_started { "Running" } else { "Pending" }
    }

    fn condition(&mut self, kind: &str, status: bool, reason: Option<&str>) -> Value {
        let now = now();
        let entry = self
            .transitions
            .entry(kind.to_string())
            .or_insert((status, now.clone()));
        if entry.0 != status {
            *entry = (status, now);
        }
        let mut c = json!({
            "type": kind,
            "status": if status { "True" } else { "False" },
            "lastTransitionTime": entry.1,
        });
        if let Some(reason) = reason {
            c["reason"] = json!(reason);
        }
        c
    }

    /// Patches `pods/status` when it changed.
    async fn publish(&mut self) {
        let phase = self.phase();
        let app: Vec<&ContainerRun> = self.containers.iter().filter(|c| !c.init).collect();
        let all_ready = !app.is_empty() && app.iter().all(|c| c.ready);
        let initialized = self.containers.iter().filter(|c| c.init).all(|c| c.done);
        let has_sandbox = self.sandbox.is_some();
        let conditions = vec![
            self.condition("PodReadyToStartContainers", has_sandbox, None),
            self.condition(
                "Initialized",
                initialized,
                (!initialized).then_some("ContainersNotInitialized"),
            ),
            self.condition(
                "ContainersReady",
                all_ready,
                (!all_ready).then_some("ContainersNotReady"),
            ),
            self.condition(
                "Ready",
                all_ready,
                (!all_ready).then_some("ContainersNotReady"),
            ),
            self.condition("PodScheduled", true, None),
        ];
        let image_ids: Vec<String> = self
            .containers
            .iter()
            .map(|c| {
                self.ctx
                    .images
                    .image_id(c.spec.image.as_deref().unwrap_or_default())
            })
            .collect();
        let statuses = |init: bool| -> Vec<Value> {
            self.containers
                .iter()
                .zip(&image_ids)
                .filter(|(c, _)| c.init == init)
                .map(|(c, id)| c.status(id))
                .collect()
        };
        let host = self.ctx.node.ip.to_string();
        let mut status = json!({
            "phase": phase,
            "hostIP": host,
            "hostIPs": [{"ip": host}],
            "startTime": self.start_time,
            "conditions": conditions,
            "containerStatuses": statuses(false),
        });
        let init = statuses(true);
        if !init.is_empty() {
            status["initContainerStatuses"] = json!(init);
        }
        if let Some(sandbox) = &self.sandbox {
            status["podIP"] = json!(sandbox.ip.to_string());
            status["podIPs"] = json!([{"ip": sandbox.ip.to_string()}]);
        }
        if let Some((reason, message)) = &self.failure {
            status["reason"] = json!(reason);
            status["message"] = json!(message);
        }
        self.record_streams();
        if self.last_status.as_ref() == Some(&status) {
            return;
        }
        let api: Api<Pod> = Api::namespaced(
            self.ctx.client.clone(),
            self.pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        let name = self.pod.metadata.name.clone().unwrap_or_default();
        match api
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": status})),
            )
            .await
        {
            Ok(_) => self.last_status = Some(status),
            Err(kube::Error::Api(s)) if s.code == 404 => self.last_status = Some(status),
            Err(e) => self.say(&format!("patching its status: {e}")),
        }
    }

    fn log_path(&self, container: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{container}.log"))
    }

    /// Writes what the kubelet's streaming endpoints need to reach the pod
    /// (see [`super::streams_record`]): its namespace and running containers.
    fn record_streams(&mut self) {
        let Some(sandbox) = &self.sandbox else {
            return;
        };
        let containers: BTreeMap<&str, &str> = self
            .containers
            .iter()
            .filter_map(|c| {
                c.running
                    .as_ref()
                    .map(|r| (c.spec.name.as_str(), r.id.as_str()))
            })
            .collect();
        let logs: BTreeMap<&str, PathBuf> = self
            .containers
            .iter()
            .map(|c| (c.spec.name.as_str(), self.log_path(&c.spec.name)))
            .collect();
        let netns = match sandbox.netns_name {
            Some(_) => sandbox.netns_path.display().to_string(),
            None => String::new(),
        };
        let record =
            json!({"uid": self.uid, "netns": netns, "containers": containers, "logs": logs});
        if self.last_record.as_ref() == Some(&record) {
            return;
        }
        let path = super::streams_record(&self.ctx.dir, &self.pod);
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&path, record.to_string()));
        match written {
            Ok(()) => self.last_record = Some(record),
            Err(e) => self.say(&format!("writing {}: {e}", path.display())),
        }
    }

    /// Stops the containers within the grace period, removes the sandbox
    /// and, for a deleted pod, releases the Pod object.
    async fn terminate(&mut self) {
        let deleting = self.deleting();
        let grace = if deleting {
            grace(&self.pod)
        } else {
            Duration::ZERO
        };
        let running: Vec<String> = self
            .containers
            .iter()
            .filter_map(|c| c.running.as_ref().map(|r| r.id.clone()))
            .collect();
        if !running.is_empty() {
            self.say(&format!(
                "stopping {} container(s), grace period {grace:?}",
                running.len()
            ));
            for id in &running {
                self.ctx.runc.kill(id, "TERM").await;
            }
            let deadline = Instant::now() + grace;
            loop {
                let mut left = 0;
                for c in &mut self.containers {
                    if let Some(r) = c.running.as_mut() {
                        if matches!(r.child.try_wait(), Ok(Some(_))) {
                            c.running = None;
                        } else {
                            left += 1;
                        }
                    }
                }
                if left == 0 || Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(TICK).await;
            }
            for id in &running {
                self.ctx.runc.kill(id, "KILL").await;
                self.ctx.runc.delete(id).await;
            }
            for c in &mut self.containers {
                if let Some(mut r) = c.running.take() {
                    let _ = r.child.wait().await;
                }
            }
        }
        if let Some(sandbox) = self.sandbox.take()
            && let Some(netns) = sandbox.netns_name.clone()
        {
            let ctx = self.ctx.clone();
            let (namespace, name, uid) = (
                self.pod.metadata.namespace.clone().unwrap_or_default(),
                self.pod.metadata.name.clone().unwrap_or_default(),
                self.uid.clone(),
            );
            let result = sandbox.cni_result.clone();
            let outcome = tokio::task::spawn_blocking(move || {
                remove_network(&ctx, &namespace, &name, &uid, &netns, result.as_deref())
            })
            .await;
            if let Ok(Err(e)) = outcome {
                self.say(&format!("removing the sandbox: {e}"));
            }
        }
        let _ = std::fs::remove_dir_all(self.dir.join("containers"));
        let _ = std::fs::remove_file(super::streams_record(&self.ctx.dir, &self.pod));
        if deleting {
            let api: Api<Pod> = Api::namespaced(
                self.ctx.client.clone(),
                self.pod.metadata.namespace.as_deref().unwrap_or("default"),
            );
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(self.uid.clone()),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            let name = self.pod.metadata.name.clone().unwrap_or_default();
            match api.delete(&name, &params).await {
                Ok(_) => self.say("stopped and released"),
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => self.say(&format!("releasing the Pod object: {e}")),
            }
        } else {
            // Done on its own: the final status says so.
            self.publish().await;
        }
    }
}

/// The pod's network namespace's name.
fn netns_name(ctx: &Context, namespace: &str, name: &str) -> String {
    ctx.run_id.netns(&format!("pod-{namespace}-{name}"))
}

/// The node directory CNI plugins see at its host path.
const NODE_RUN: &str = "/run/weft";

/// A pod as CNI names it.
struct PodRef<'a> {
    namespace: &'a str,
    name: &'a str,
    uid: &'a str,
}

/// Runs the node's CNI chain for `pod` in the namespace at `path`; returns
/// the ADD result.
fn chain(
    ctx: &Context,
    command: CniCommand,
    pod: &PodRef<'_>,
    path: &Path,
    prev: Option<&str>,
) -> Result<String, String> {
    let node = Netns::open(&ctx.netns).map_err(|e| e.to_string())?;
    let (_, conflist) = cni::active_conflist(&ctx.cni_conf_dir).map_err(|e| e.to_string())?;
    let cni_pod = CniPod {
        namespace: pod.namespace,
        name: pod.name,
        uid: pod.uid,
        netns_path: path,
    };
    // The one node directory a plugin reaches through a path in its
    // config: weft-cni's socket and enrollment cache under /run/weft.
    let view = [(ctx.fs.host_path(NODE_RUN), PathBuf::from(NODE_RUN))];
    cni::run_chain(
        &node,
        &view,
        &conflist,
        &ctx.cni_path,
        command,
        &cni_pod,
        prev,
    )
    .map(|out| out.result)
    .map_err(|e| e.to_string())
}

/// Creates the pod's network namespace and runs the node's CNI chain.
fn add_network(ctx: &Context, namespace: &str, name: &str, uid: &str) -> Result<Sandbox, String> {
    let netns = netns_name(ctx, namespace, name);
    if Netns::exists(&netns) {
        // A pod of the same name that was not torn down (a crash).
        let _ = Netns::delete(&netns);
    }
    let ns = Netns::create(&netns).map_err(|e| e.to_string())?;
    let path = ns.path();
    let pod = PodRef {
        namespace,
        name,
        uid,
    };
    let attached = chain(ctx, CniCommand::Add, &pod, &path, None).and_then(|result| {
        Ok((
            cni::result_ipv4(&result).map_err(|e| e.to_string())?,
            result,
        ))
    });
    match attached {
        Ok((ip, result)) => Ok(Sandbox {
            netns_name: Some(netns),
            netns_path: path,
            ip,
            cni_result: Some(result),
        }),
        Err(e) => {
            // As a runtime does after a failed ADD: DEL releases whatever
            // the plugins that succeeded took (the IPAM address above all),
            // so that the retry starts clean.
            let _ = chain(ctx, CniCommand::Del, &pod, &path, None);
            let _ = Netns::delete(&netns);
            Err(e)
        }
    }
}

/// CNI DEL, then the namespace.
fn remove_network(
    ctx: &Context,
    namespace: &str,
    name: &str,
    uid: &str,
    netns: &str,
    result: Option<&str>,
) -> Result<(), String> {
    let pod = PodRef {
        namespace,
        name,
        uid,
    };
    let outcome = chain(ctx, CniCommand::Del, &pod, &Netns::path_of(netns), result).map(|_| ());
    Netns::delete(netns).map_err(|e| e.to_string())?;
    outcome
}
