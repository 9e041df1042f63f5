//! The node agent's state and reconciliation.
//!
//! Inputs: the registry's view of this node's pods and all namespaces
//! ([`NodeAgent::sync`], typed k8s-openapi objects, whichever registry feeds
//! them), and the plugin's requests ([`NodeAgent::handle`]). From them the
//! agent computes which pods belong in the mesh ([`weft_cni::enrollment::decide`])
//! and converges: a pod that should be enrolled gets its netns found, the
//! redirect rules installed and is handed to ztunnel; a pod that should not
//! (label removed, pod deleted) has its rules removed and ztunnel told. Pods
//! need no restart either way.
//!
//! Reconciliation is serialized by one async lock: rule changes are a few
//! forks per pod, rare enough that ordering matters more than parallelism.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use tokio::sync::Mutex;
use weft_api::nodeagent::PodIdentity;

use weft_cni::cni::PodRef;
use weft_cni::report::{AckStatus, CoverageReport, PodCoverage};

use crate::coverage;
use crate::handoff::{HandoffHub, HandoffPod};
use crate::netns::{self, NetNs};
use crate::redirect::{RedirectError, Redirector};
use weft_cni::enrollment::{
    AgentRequest, AgentResponse, DATAPLANE_MODE_LABEL, EnrollmentCache, LOCAL_BYPASS_LABEL,
    NETNS_ANNOTATION, PodAttachment, decide,
};

/// How the agent finds the netns of a pod it did not see attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetnsDiscovery {
    /// Local mode: the `weft.dev/netns` annotation the harness writes.
    Annotation,
    /// Kubernetes: scan `/proc` under this root for the pod's UID.
    ProcScan(PathBuf),
}

/// The agent's settings.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// This node's name (`spec.nodeName` of its pods).
    pub node: String,
    /// How to find running pods' namespaces.
    pub discovery: NetnsDiscovery,
    /// Where to write the enrollment cache for the plugin (none: don't).
    pub enrollment_cache: Option<PathBuf>,
    /// The rules to install.
    pub redirector: Redirector,
    /// How long a CNI ADD for a pod that will be enrolled waits for the
    /// registry to list it: its service account is its identity, and a pod
    /// is never handed to ztunnel under a guessed one. The pod object exists
    /// before its sandbox, so this only covers a lagging watch; it must end
    /// within the plugin's own timeout.
    pub identity_wait: std::time::Duration,
    /// The SNAT that brings the kubelet's probes to enrolled pods from the
    /// probe source (none: leave the node's rules alone, e.g. in tests).
    pub host_probes: Option<crate::probes::HostProbes>,
    /// The local-leg bypass enrolled pods are added to.
    pub local_bypass: Arc<crate::bypass::Bypass>,
}

/// What the agent knows about one pod on its node.
#[derive(Clone, Debug, Default)]
struct PodView {
    namespace: String,
    name: String,
    uid: String,
    service_account: String,
    mode: Option<String>,
    ips: Vec<String>,
    netns_annotation: Option<String>,
    /// Labelled `weft.dev/local-bypass: off`: its local legs stay on TCP
    /// even where the node runs the bypass.
    bypass_opt_out: bool,
    /// From the registry (as opposed to only from a CNI ADD).
    in_registry: bool,
    /// Host-network or finished: never enrolled.
    ineligible: bool,
    /// The netns path the runtime gave on ADD.
    cni_netns: Option<String>,
    /// The TCP ports its probes connect to (see [`crate::probes`]).
    probe_ports: Vec<u16>,
}

impl PodView {
    fn pod_ref(&self) -> PodRef {
        PodRef {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            uid: Some(self.uid.clone()),
        }
    }
}

struct Enrolled {
    netns_path: PathBuf,
    /// Kept open so rules can be removed even after the runtime deleted the
    /// namespace's bind mount.
    netns: NetNs,
    /// The service account and addresses ztunnel was given: a pod enrolled
    /// at CNI ADD before the registry showed it was handed over with the
    /// `default` service account, and must be handed over again once its
    /// real one is known.
    handed_over: (String, Vec<String>),
    /// The netns cookie the local-leg bypass knows the pod by.
    bypass_cookie: Option<u64>,
}

#[derive(Default)]
struct AgentState {
    /// Namespace name -> its `weft.dev/dataplane-mode` label.
    namespaces: HashMap<String, Option<String>>,
    /// Pod key (uid, or `namespace/name` without one) -> view.
    pods: BTreeMap<String, PodView>,
    enrolled: HashMap<String, Enrolled>,
    /// The first synced view has been swept for leftover rules.
    swept: bool,
    /// The probe SNAT targets last installed (`None`: not yet).
    probe_targets: Option<BTreeSet<(std::net::Ipv4Addr, u16)>>,
}

impl AgentState {
    fn should_enroll(&self, pod: &PodView) -> bool {
        !pod.ineligible
            && decide(
                pod.mode.as_deref(),
                self.namespaces
                    .get(&pod.namespace)
                    .and_then(|m| m.as_deref()),
            )
    }

    /// The registry lists the pod (not only a CNI ADD).
    fn registry_knows(&self, pod: &PodRef) -> bool {
        self.key_of(pod)
            .and_then(|k| self.pods.get(&k))
            .is_some_and(|v| v.in_registry)
    }

    fn key_of(&self, pod: &PodRef) -> Option<String> {
        if let Some(uid) = pod.uid.as_ref().filter(|u| self.pods.contains_key(*u)) {
            return Some(uid.clone());
        }
        self.pods
            .iter()
            .find(|(_, v)| v.namespace == pod.namespace && v.name == pod.name)
            .map(|(k, _)| k.clone())
    }

    fn cache(&self) -> EnrollmentCache {
        let mut cache = EnrollmentCache::default();
        for (ns, mode) in &self.namespaces {
            if mode.as_deref() == Some(weft_cni::enrollment::AMBIENT) {
                cache.ambient_namespaces.insert(ns.clone());
            }
        }
        for pod in self.pods.values() {
            if let Some(mode) = &pod.mode {
                cache
                    .pod_modes
                    .insert(format!("{}/{}", pod.namespace, pod.name), mode.clone());
            }
        }
        cache
    }
}

/// Why one pod could not be enrolled.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// Its netns could not be found.
    #[error("no network namespace known for pod {0}")]
    NoNetns(String),
    /// Its netns could not be opened.
    #[error(transparent)]
    Netns(#[from] netns::NetnsError),
    /// The path names the agent's own network namespace, not a pod's.
    #[error("{0} is the node agent's own network namespace, not a pod's")]
    OwnNetns(String),
    /// The rules could not be installed.
    #[error(transparent)]
    Redirect(#[from] RedirectError),
    /// The blocking task failed.
    #[error("rule task failed: {0}")]
    Task(String),
}

/// One node's agent.
pub struct NodeAgent {
    config: AgentConfig,
    hub: Arc<HandoffHub>,
    state: Mutex<AgentState>,
    /// Woken after every sync, for ADDs waiting for their pod.
    synced: tokio::sync::Notify,
}

impl NodeAgent {
    /// A new agent publishing enrolled pods to `hub`.
    pub fn new(config: AgentConfig, hub: Arc<HandoffHub>) -> Arc<NodeAgent> {
        Arc::new(NodeAgent {
            config,
            hub,
            state: Mutex::new(AgentState::default()),
            synced: tokio::sync::Notify::new(),
        })
    }

    /// The handoff hub (what ztunnel is given).
    pub fn hub(&self) -> &Arc<HandoffHub> {
        &self.hub
    }

    /// Writes an empty-but-present enrollment cache if none exists yet, so
    /// that before the first sync the plugin fails closed only for pods the
    /// previous run knew to be enrolled. Call at startup.
    pub async fn publish_cache(&self) {
        let state = self.state.lock().await;
        self.store_cache(&state);
    }

    /// Replaces the agent's view with the registry's current pods and
    /// namespaces, and converges. Pods of other nodes are ignored.
    pub async fn sync<'a>(
        &self,
        pods: impl IntoIterator<Item = &'a Pod>,
        namespaces: impl IntoIterator<Item = &'a Namespace>,
    ) {
        let mut state = self.state.lock().await;
        state.namespaces = namespaces
            .into_iter()
            .filter_map(|ns| {
                Some((
                    ns.metadata.name.clone()?,
                    label(&ns.metadata.labels, DATAPLANE_MODE_LABEL),
                ))
            })
            .collect();
        let mut next: BTreeMap<String, PodView> = BTreeMap::new();
        for pod in pods {
            let Some(mut view) = self.view_of(pod) else {
                continue;
            };
            if let Some(old) = state.pods.get(&view.uid) {
                view.cni_netns = old.cni_netns.clone();
                if view.ips.is_empty() {
                    view.ips = old.ips.clone();
                }
            }
            next.insert(view.uid.clone(), view);
        }
        // Pods only known from a CNI ADD stay until their DEL, unless the
        // registry now lists them under their uid.
        for (key, old) in std::mem::take(&mut state.pods) {
            if !old.in_registry && !next.contains_key(&key) {
                let listed = next
                    .values()
                    .any(|v| v.namespace == old.namespace && v.name == old.name);
                if !listed {
                    next.insert(key, old);
                }
            }
        }
        state.pods = next;
        self.store_cache(&state);
        self.converge(&mut state).await;
        if !state.swept {
            state.swept = true;
            self.sweep_leftovers(&state).await;
        }
        drop(state);
        // ztunnels get snapshots from now on: before, one would be missing
        // every pod, and a reconnecting ztunnel would drop them all.
        self.hub.mark_synced();
        self.synced.notify_waiters();
    }

    /// Removes rules left in pods outside the mesh, e.g. by a previous agent
    /// that stopped before it could unenroll them. Run once, on the first
    /// registry view: later, the agent itself removes what it installed.
    async fn sweep_leftovers(&self, state: &AgentState) {
        for (key, view) in &state.pods {
            if state.enrolled.contains_key(key) || state.should_enroll(view) {
                continue;
            }
            let Some(ns) = self.find_netns(view).and_then(|p| NetNs::open(p).ok()) else {
                continue;
            };
            let redirector = self.config.redirector.clone();
            let result = blocking(move || {
                if redirector.inspect(&ns)?.empty() {
                    return Ok(false);
                }
                redirector.remove(&ns)?;
                Ok(true)
            })
            .await;
            match result {
                Ok(true) => {
                    tracing::info!(pod = %key, "removed leftover redirect rules from a pod outside the mesh")
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(pod = %key, error = %e, "cannot check a pod for leftover rules")
                }
            }
        }
    }

    /// Converges again (retries pods whose netns was not found yet, repairs
    /// rules someone removed). Call periodically.
    pub async fn resync(&self) {
        let mut state = self.state.lock().await;
        self.converge(&mut state).await;
    }

    /// Takes every pod out of the mesh and removes the probe SNAT: weft is
    /// leaving the node, so nothing must stay redirected to a ztunnel that
    /// will not come back. Pods keep running, uncaptured.
    pub async fn release_all(&self) {
        let mut state = self.state.lock().await;
        let keys: Vec<String> = state.enrolled.keys().cloned().collect();
        for key in keys {
            self.unenroll(&mut state, &key).await;
        }
        if let Some(probes) = self.config.host_probes.clone() {
            match blocking(move || probes.remove().map_err(EnrollError::from)).await {
                Ok(()) => state.probe_targets = None,
                Err(e) => tracing::warn!(error = %e, "cannot remove the probe SNAT"),
            }
        }
    }

    /// Answers one plugin (or CLI) request.
    pub async fn handle(&self, request: AgentRequest) -> AgentResponse {
        match request {
            AgentRequest::Add(attachment) => self.cni_add(attachment).await,
            AgentRequest::Del { pod, .. } => {
                let mut state = self.state.lock().await;
                if let Some(key) = state.key_of(&pod) {
                    self.unenroll(&mut state, &key).await;
                    if let Some(view) = state.pods.get_mut(&key) {
                        view.cni_netns = None;
                    }
                    if state.pods.get(&key).is_some_and(|v| !v.in_registry) {
                        state.pods.remove(&key);
                    }
                }
                AgentResponse::Ok
            }
            AgentRequest::Check { pod } => {
                let report = self.coverage().await;
                match report
                    .pods
                    .iter()
                    .find(|p| p.namespace == pod.namespace && p.name == pod.name)
                {
                    Some(p) if !p.problems.is_empty() => AgentResponse::Error {
                        message: p.problems.join("; "),
                    },
                    _ => AgentResponse::Ok,
                }
            }
            AgentRequest::Coverage => AgentResponse::Coverage(self.coverage().await),
        }
    }

    async fn cni_add(&self, a: PodAttachment) -> AgentResponse {
        let deadline = tokio::time::Instant::now() + self.config.identity_wait;
        let mut state = loop {
            // Registered before the lock is released, so a sync in between
            // is not missed.
            let synced = self.synced.notified();
            let state = self.state.lock().await;
            let unlisted = PodView {
                namespace: a.pod.namespace.clone(),
                ..PodView::default()
            };
            if state.registry_knows(&a.pod) || !state.should_enroll(&unlisted) {
                break state;
            }
            drop(state);
            if tokio::time::timeout_at(deadline, synced).await.is_err() {
                return AgentResponse::Error {
                    message: format!(
                        "pod {} is not in the node agent's registry after {:?}: its service account (its identity) is unknown, so it is not handed to ztunnel under a guessed one; the runtime retries",
                        a.pod, self.config.identity_wait
                    ),
                };
            }
        };
        let key = state.key_of(&a.pod).unwrap_or_else(|| {
            a.pod
                .uid
                .clone()
                .unwrap_or_else(|| format!("{}/{}", a.pod.namespace, a.pod.name))
        });
        let view = state.pods.entry(key.clone()).or_insert_with(|| PodView {
            namespace: a.pod.namespace.clone(),
            name: a.pod.name.clone(),
            uid: key.clone(),
            service_account: "default".into(),
            ..PodView::default()
        });
        view.cni_netns = Some(a.netns.clone());
        if view.ips.is_empty() {
            view.ips = a.ips.iter().map(IpAddr::to_string).collect();
        }
        let view = view.clone();
        if !state.should_enroll(&view) {
            return AgentResponse::Skipped {
                reason: format!("pod {} is not enrolled by its labels", a.pod),
            };
        }
        // A sandbox re-created under the same pod (new netns): start over.
        if state
            .enrolled
            .get(&key)
            .is_some_and(|e| e.netns_path != Path::new(&a.netns))
        {
            self.unenroll(&mut state, &key).await;
        }
        match self.enroll(&mut state, &key).await {
            Ok(()) => AgentResponse::Enrolled,
            Err(e) => AgentResponse::Error {
                message: e.to_string(),
            },
        }
    }

    async fn converge(&self, state: &mut AgentState) {
        let desired: Vec<String> = state
            .pods
            .iter()
            .filter(|(_, v)| state.should_enroll(v))
            .map(|(k, _)| k.clone())
            .collect();
        let stale: Vec<String> = state
            .enrolled
            .keys()
            .filter(|k| !desired.contains(k))
            .cloned()
            .collect();
        for key in stale {
            self.unenroll(state, &key).await;
        }
        for key in desired {
            if let Err(e) = self.enroll(state, &key).await {
                tracing::warn!(pod = %key, error = %e, "cannot enroll pod");
            }
        }
        self.update_probes(state).await;
    }

    /// Points the probe SNAT at the enrolled pods' probed ports.
    async fn update_probes(&self, state: &mut AgentState) {
        let Some(probes) = self.config.host_probes.clone() else {
            return;
        };
        let targets: BTreeSet<(std::net::Ipv4Addr, u16)> = state
            .enrolled
            .keys()
            .filter_map(|k| state.pods.get(k))
            .flat_map(|v| {
                let ips: Vec<std::net::Ipv4Addr> =
                    v.ips.iter().filter_map(|ip| ip.parse().ok()).collect();
                ips.into_iter()
                    .flat_map(|ip| v.probe_ports.iter().map(move |p| (ip, *p)))
                    .collect::<Vec<_>>()
            })
            .collect();
        if state.probe_targets.as_ref() == Some(&targets) {
            return;
        }
        let wanted = targets.clone();
        match blocking(move || probes.apply(&wanted).map_err(EnrollError::from)).await {
            Ok(()) => {
                tracing::info!(targets = targets.len(), "probe SNAT updated");
                state.probe_targets = Some(targets);
            }
            Err(e) => tracing::warn!(error = %e, "cannot update the probe SNAT"),
        }
    }

    /// Enrolls `key`, or repairs its rules if already enrolled.
    async fn enroll(&self, state: &mut AgentState, key: &str) -> Result<(), EnrollError> {
        let Some(view) = state.pods.get(key).cloned() else {
            return Ok(());
        };
        let redirector = self.config.redirector.clone();
        if let Some(enrolled) = state.enrolled.get_mut(key) {
            let now = (view.service_account.clone(), view.ips.clone());
            if enrolled.handed_over != now {
                // An AddPod for a uid ztunnel has replaces it.
                self.hub.add(HandoffPod {
                    identity: PodIdentity {
                        uid: view.uid.clone(),
                        name: view.name.clone(),
                        namespace: view.namespace.clone(),
                        service_account: view.service_account.clone(),
                    },
                    addresses: view.ips.clone(),
                    netns: enrolled
                        .netns
                        .try_clone()
                        .map_err(|e| EnrollError::Task(e.to_string()))?,
                });
                tracing::info!(pod = %view.pod_ref(), service_account = %view.service_account, "pod handed over again with its updated identity");
                enrolled.handed_over = now;
            }
            let ns = enrolled
                .netns
                .try_clone()
                .map_err(|e| EnrollError::Task(e.to_string()))?;
            return blocking(move || {
                if !redirector.inspect(&ns)?.complete() {
                    tracing::warn!(netns = %ns.path().display(), "redirect rules missing: re-applying");
                    redirector.apply(&ns)?;
                }
                Ok(())
            })
            .await;
        }
        let path = self
            .find_netns(&view)
            .ok_or_else(|| EnrollError::NoNetns(format!("{}/{}", view.namespace, view.name)))?;
        let ns = NetNs::open(&path)?;
        // A request naming the agent's own namespace (the host's, for a
        // hostNetwork agent) would put redirect rules on the node itself.
        if NetNs::current().is_ok_and(|own| own.inode() == ns.inode()) {
            return Err(EnrollError::OwnNetns(path.display().to_string()));
        }
        let ns_for_rules = ns
            .try_clone()
            .map_err(|e| EnrollError::Task(e.to_string()))?;
        let backend = blocking(move || Ok(redirector.apply(&ns_for_rules)?)).await?;
        let handoff_ns = ns
            .try_clone()
            .map_err(|e| EnrollError::Task(e.to_string()))?;
        self.hub.add(HandoffPod {
            identity: PodIdentity {
                uid: view.uid.clone(),
                name: view.name.clone(),
                namespace: view.namespace.clone(),
                service_account: view.service_account.clone(),
            },
            addresses: view.ips.clone(),
            netns: handoff_ns,
        });
        let bypass_cookie = self.bypass_enroll(&ns, &view).await;
        tracing::info!(pod = %view.pod_ref(), netns = %path.display(), ?backend, bypass = bypass_cookie.is_some(), "pod enrolled");
        state.enrolled.insert(
            key.to_string(),
            Enrolled {
                netns_path: path,
                netns: ns,
                handed_over: (view.service_account.clone(), view.ips.clone()),
                bypass_cookie,
            },
        );
        Ok(())
    }

    /// Adds the pod to the local-leg bypass, if it runs. A pod the bypass
    /// cannot take keeps TCP local legs; that is never an enrollment error.
    async fn bypass_enroll(&self, ns: &NetNs, view: &PodView) -> Option<u64> {
        self.config.local_bypass.running()?;
        if view.bypass_opt_out {
            tracing::info!(pod = %view.pod_ref(), "pod opted out of the local-leg bypass ({LOCAL_BYPASS_LABEL}=off)");
            return None;
        }
        let ns = ns.try_clone().ok()?;
        let bypass = self.config.local_bypass.clone();
        let pod = view.pod_ref();
        tokio::task::spawn_blocking(move || {
            let running = bypass.running()?;
            let added = crate::bypass::netns_cookie(&ns)
                .and_then(|cookie| running.enroll(cookie).map(|()| cookie));
            added
                .inspect_err(|e| tracing::warn!(%pod, error = %e, "pod's local legs stay on TCP"))
                .ok()
        })
        .await
        .ok()
        .flatten()
    }

    async fn unenroll(&self, state: &mut AgentState, key: &str) {
        let Some(enrolled) = state.enrolled.remove(key) else {
            return;
        };
        self.hub.delete(key);
        if let (Some(cookie), Some(bypass)) =
            (enrolled.bypass_cookie, self.config.local_bypass.running())
        {
            bypass.forget(cookie);
        }
        let redirector = self.config.redirector.clone();
        let path = enrolled.netns_path.clone();
        let ns = enrolled.netns;
        match blocking(move || Ok(redirector.remove(&ns)?)).await {
            Ok(()) => {
                tracing::info!(pod = %key, netns = %path.display(), "pod left the mesh: rules removed")
            }
            Err(e) => tracing::warn!(pod = %key, error = %e, "cannot remove redirect rules"),
        }
    }

    fn find_netns(&self, view: &PodView) -> Option<PathBuf> {
        if let Some(path) = &view.cni_netns {
            return Some(PathBuf::from(path));
        }
        match &self.config.discovery {
            NetnsDiscovery::Annotation => view.netns_annotation.as_ref().map(PathBuf::from),
            NetnsDiscovery::ProcScan(root) => netns::find_pod_netns(root, &view.uid).ok().flatten(),
        }
    }

    /// Checks every pod of the node: see [`crate::coverage`].
    pub async fn coverage(&self) -> CoverageReport {
        let state = self.state.lock().await;
        let mut report = CoverageReport {
            node: self.config.node.clone(),
            ztunnels_connected: self.hub.connected(),
            pods: Vec::new(),
            local_legs: self.config.local_bypass.report(),
        };
        for (key, view) in &state.pods {
            let should = state.should_enroll(view);
            let enrolled = state.enrolled.get(key);
            let mut pod = PodCoverage {
                namespace: view.namespace.clone(),
                name: view.name.clone(),
                uid: key.clone(),
                should_enroll: should,
                enrolled: enrolled.is_some(),
                netns: enrolled
                    .map(|e| e.netns_path.display().to_string())
                    .or_else(|| view.cni_netns.clone()),
                ..PodCoverage::default()
            };
            let ns = match enrolled {
                Some(e) => e.netns.try_clone().ok(),
                None => view.cni_netns.as_ref().and_then(|p| NetNs::open(p).ok()),
            };
            if let Some(ns) = ns {
                let redirector = self.config.redirector.clone();
                let (rules, listeners) = tokio::task::spawn_blocking(move || {
                    (redirector.inspect(&ns).ok(), coverage::listeners(&ns).ok())
                })
                .await
                .unwrap_or((None, None));
                pod.rules = rules;
                pod.listeners = listeners;
            }
            if should {
                pod.handoff = self.hub.ack_status(key);
                if enrolled.is_none() {
                    pod.problems.push("should be enrolled but is not".into());
                }
                if pod.netns.is_none() {
                    pod.problems.push("network namespace not found".into());
                }
                if pod.rules.as_ref().is_some_and(|r| !r.complete()) {
                    pod.problems.push("redirect rules incomplete".into());
                }
                if pod.listeners.is_some_and(|l| !l.complete()) {
                    pod.problems
                        .push("ztunnel is not listening on 15001/15006/15008 in the pod".into());
                }
                match &pod.handoff {
                    Some(AckStatus::Failed(e)) => {
                        pod.problems.push(format!("ztunnel refused the pod: {e}"))
                    }
                    Some(AckStatus::Pending) | None if enrolled.is_some() => {
                        pod.problems.push("not yet acknowledged by ztunnel".into())
                    }
                    _ => {}
                }
            } else if pod.rules.as_ref().is_some_and(|r| !r.empty()) {
                pod.problems
                    .push("outside the mesh but redirect rules are present".into());
            }
            report.pods.push(pod);
        }
        report
    }

    /// Whether the pod `key` (uid) is enrolled.
    pub async fn is_enrolled(&self, uid: &str) -> bool {
        self.state.lock().await.enrolled.contains_key(uid)
    }

    fn store_cache(&self, state: &AgentState) {
        if let Some(path) = &self.config.enrollment_cache
            && let Err(e) = state.cache().store(path)
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the enrollment cache");
        }
    }

    fn view_of(&self, pod: &Pod) -> Option<PodView> {
        let meta = &pod.metadata;
        let spec = pod.spec.as_ref()?;
        if spec.node_name.as_deref() != Some(self.config.node.as_str()) {
            return None;
        }
        let status = pod.status.as_ref();
        let phase = status.and_then(|s| s.phase.as_deref());
        let mut ips: Vec<String> = status
            .and_then(|s| s.pod_ips.as_ref())
            .map(|ips| ips.iter().map(|ip| ip.ip.clone()).collect())
            .unwrap_or_default();
        if ips.is_empty()
            && let Some(ip) = status.and_then(|s| s.pod_ip.clone())
        {
            ips.push(ip);
        }
        let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
        let name = meta.name.clone()?;
        Some(PodView {
            uid: meta
                .uid
                .clone()
                .unwrap_or_else(|| format!("{namespace}/{name}")),
            namespace,
            name,
            service_account: spec
                .service_account_name
                .clone()
                .unwrap_or_else(|| "default".into()),
            mode: label(&meta.labels, DATAPLANE_MODE_LABEL),
            ips,
            netns_annotation: label(&meta.annotations, NETNS_ANNOTATION),
            bypass_opt_out: label(&meta.labels, LOCAL_BYPASS_LABEL).as_deref() == Some("off"),
            in_registry: true,
            // A pod being deleted stays enrolled until its containers have
            // exited (its phase is terminal or it is gone): during its
            // grace period it still talks, and must do so through the mesh.
            ineligible: spec.host_network == Some(true)
                || matches!(phase, Some("Succeeded" | "Failed")),
            cni_netns: None,
            probe_ports: crate::probes::ports(pod),
        })
    }
}

fn label(map: &Option<BTreeMap<String, String>>, key: &str) -> Option<String> {
    map.as_ref().and_then(|m| m.get(key)).cloned()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, EnrollError> + Send + 'static,
) -> Result<T, EnrollError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| EnrollError::Task(e.to_string()))?
}

/// Default path of the agent's request socket (plugin and CLI).
pub use weft_cni::cni::DEFAULT_AGENT_SOCKET;

/// Serves plugin and CLI requests on the unix stream socket at `path` (one
/// JSON request per connection, see [`weft_cni::enrollment`]) until dropped.
pub async fn serve_requests(agent: Arc<NodeAgent>, path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    crate::peers::restrict(path)?;
    loop {
        let (stream, _) = listener.accept().await?;
        if let Err(refused) = crate::peers::check(&stream)? {
            tracing::warn!(error = %refused, "plugin request refused");
            tokio::spawn(refuse(stream, refused));
            continue;
        }
        let agent = agent.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(agent, stream).await {
                tracing::warn!(error = %e, "plugin request failed");
            }
        });
    }
}

/// Tells a refused caller why. Its request is read and discarded first
/// (bounded): closing with unread bytes would reset the connection and the
/// caller would see a reset instead of the reason.
async fn refuse(mut stream: tokio::net::UnixStream, refused: crate::peers::PeerRefused) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut discard = Vec::new();
    let mut limited = (&mut stream).take(weft_cni::enrollment::MAX_FRAME);
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(1),
        limited.read_to_end(&mut discard),
    )
    .await;
    let response = AgentResponse::Error {
        message: refused.to_string(),
    };
    if let Ok(reply) = serde_json::to_vec(&response) {
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(1), stream.write_all(&reply)).await;
    }
}

async fn answer(agent: Arc<NodeAgent>, mut stream: tokio::net::UnixStream) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut body = Vec::new();
    // A client that never finishes its request must not hold a task forever.
    let mut limited = (&mut stream).take(weft_cni::enrollment::MAX_FRAME);
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        limited.read_to_end(&mut body),
    )
    .await
    .map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::TimedOut, "request not received in time")
    })??;
    let response = match serde_json::from_slice::<AgentRequest>(&body) {
        Ok(request) => agent.handle(request).await,
        Err(e) => AgentResponse::Error {
            message: format!("invalid request: {e}"),
        },
    };
    let reply = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
    stream.write_all(&reply).await?;
    stream.shutdown().await
}
