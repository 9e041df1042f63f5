//! What only the leader writes to the API server: waypoint Deployments,
//! Gateway / GatewayClass status, AuthorizationPolicy status.
//!
//! Every replica serves the config stream and the CA; writers run only while
//! this replica holds the Lease, so two replicas never fight over an object.

pub mod deployer;
pub mod status;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use gateway_api::gatewayclasses::GatewayClass;
use gateway_api::gateways::Gateway;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource, ResourceExt};
use kube_lease_manager::LeaseManagerBuilder;
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::options::Options;
use crate::pipeline::ModelVersion;
use deployer::{DeployerConfig, waypoint_objects, with_type_meta};
use weft_cluster::crd::AuthorizationPolicy;
use weft_cluster::model::labels::{WAYPOINT_CLASS, WAYPOINT_CONTROLLER};
use weft_cluster::model::waypoints::{is_waypoint_gateway, made_by_deployer, requested_waypoint};
use weft_cluster::registry::{ClusterState, ObjectKey};

/// The ConfigMap holding the root certificate (key `root-cert.pem`) in the
/// root namespace and in every namespace with a waypoint.
pub const ROOT_CONFIG_MAP: &str = "weft-ca-root";

/// The field manager of everything the controller applies.
pub const FIELD_MANAGER: &str = "weft-controller";

/// How long a stopping replica waits for its Lease release to reach the API
/// server before it exits anyway (the follower then waits for expiry).
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the writers while this replica leads (always, without election),
/// until `stop` fires. If the Lease cannot be reached, the replica does not
/// write and tries the election again later; serving is unaffected. A
/// stopping leader releases the Lease before returning, so the next replica
/// takes over at once instead of after the lease duration.
pub async fn run(
    client: Client,
    options: Options,
    models: watch::Receiver<Arc<ModelVersion>>,
    states: watch::Receiver<Arc<ClusterState>>,
    root_pem: String,
    stop: CancellationToken,
) {
    let deployer = DeployerConfig {
        image: options.waypoint_image.clone(),
        controller_address: options.controller_address.clone(),
        root_namespace: options.root_namespace.clone(),
        root_pem,
        token_audience: crate::app::token_audiences(&options).into_iter().next(),
        otlp_endpoint: options.waypoint_otlp_endpoint.clone(),
        trace_sampling: options.waypoint_trace_sampling,
    };
    if !options.leader_elect {
        let (_always, leading) = watch::channel(true);
        tokio::select! {
            _ = lead_while(leading, None, &client, &deployer, &models, &states) => {}
            _ = stop.cancelled() => {}
        }
        return;
    }
    let identity = options.replica_name();
    let fence = Fence {
        leases: Api::namespaced(client.clone(), &options.root_namespace),
        name: options.lease_name.clone(),
        identity: identity.clone(),
        duration: Duration::from_secs(options.lease_duration_seconds),
    };
    loop {
        let manager = LeaseManagerBuilder::new(client.clone(), options.lease_name.clone())
            .with_namespace(options.root_namespace.clone())
            .with_identity(identity.clone())
            .with_duration(options.lease_duration_seconds)
            .with_grace(options.lease_grace_seconds)
            .build()
            .await;
        match manager {
            Ok(manager) => {
                let (leading, election) = manager.watch().await;
                tokio::select! {
                    _ = lead_while(leading, Some(&fence), &client, &deployer, &models, &states) => {
                        tracing::warn!("leader election stopped; retrying");
                    }
                    _ = stop.cancelled() => {
                        // `leading` is gone with the writers' future: the
                        // election task sees nobody listening, releases the
                        // Lease if it holds it, and ends.
                        match tokio::time::timeout(RELEASE_TIMEOUT, election).await {
                            Ok(Ok(Ok(_))) => tracing::info!("left the leader election"),
                            Ok(Ok(Err(e))) => tracing::warn!("releasing the Lease failed: {e}"),
                            Ok(Err(e)) => tracing::warn!("leader election task failed: {e}"),
                            Err(_) => tracing::warn!(
                                "the Lease release did not finish in {RELEASE_TIMEOUT:?}; the next leader waits for it to expire"
                            ),
                        }
                        return;
                    }
                }
            }
            Err(e) => tracing::error!("leader election unavailable, not writing: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// The check a leader makes before each round of writes. The election says
/// "leader" until a renewal is refused by a conflict; a renewal that fails
/// otherwise (a 500, a timeout) leaves it saying so while the Lease runs out
/// and another replica takes it. Writing only while the Lease itself shows
/// this replica with an unexpired renewal keeps two replicas from writing at
/// once.
struct Fence {
    leases: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

impl Fence {
    async fn holds(&self) -> Result<(), String> {
        let lease = self
            .leases
            .get(&self.name)
            .await
            .map_err(|e| format!("cannot read the Lease: {e}"))?;
        let spec = lease.spec.unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Err(format!(
                "the Lease is held by {}",
                spec.holder_identity.as_deref().unwrap_or("nobody")
            ));
        }
        let renewed = spec
            .renew_time
            .map(|t| t.0)
            .ok_or("the Lease has no renewal time")?;
        let expires = jiff::SignedDuration::try_from(self.duration)
            .ok()
            .and_then(|d| renewed.checked_add(d).ok())
            .ok_or("the Lease duration is out of range")?;
        if expires <= jiff::Timestamp::now() {
            return Err(format!("the Lease expired at {expires} without renewal"));
        }
        Ok(())
    }
}

/// Writes while `leading` says so (and `fence`, if any, confirms it);
/// returns when the election ends.
async fn lead_while(
    mut leading: watch::Receiver<bool>,
    fence: Option<&Fence>,
    client: &Client,
    deployer: &DeployerConfig,
    models: &watch::Receiver<Arc<ModelVersion>>,
    states: &watch::Receiver<Arc<ClusterState>>,
) {
    loop {
        if !*leading.borrow_and_update() {
            tracing::info!("not the leader; waiting");
            if leading.changed().await.is_err() {
                return;
            }
            continue;
        }
        tracing::info!("leading: deploying waypoints and writing status");
        let mut writer = Writer::new(client.clone(), deployer.clone());
        let mut models = models.clone();
        let mut states = states.clone();
        loop {
            let state = states.borrow_and_update().clone();
            let model = models.borrow_and_update().clone();
            let holds = match fence {
                Some(fence) => fence.holds().await,
                None => Ok(()),
            };
            match holds {
                Ok(()) => writer.reconcile(&state, &model).await,
                Err(why) => tracing::warn!("not writing: {why}"),
            }
            tokio::select! {
                r = leading.changed() => {
                    if r.is_err() { return }
                    if !*leading.borrow() { break }
                }
                r = states.changed() => if r.is_err() { return },
                r = models.changed() => if r.is_err() { return },
                // Retry failed writes and catch drift.
                _ = tokio::time::sleep(Duration::from_secs(30)) => {}
            }
            // Let bursts settle; status writes are not latency-critical.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Whether a waypoint's ServiceAccount is the deployer's to write.
enum Claim {
    /// The deployer made it (now or before).
    Ours,
    /// Someone else's, and why that stops the waypoint.
    Taken(String),
    /// Not known yet (an API error, a race): the next pass decides.
    Retry,
}

/// Applies desired objects and status, remembering what it wrote so that an
/// unchanged object is not written again.
pub struct Writer {
    client: Client,
    deployer: DeployerConfig,
    written: HashMap<String, serde_json::Value>,
    events: Recorder,
    /// The binding Events last published, by object: the note, so an
    /// unchanged refusal is announced once, not on every pass.
    announced: HashMap<String, String>,
}

impl Writer {
    /// A writer with an empty memory.
    pub fn new(client: Client, deployer: DeployerConfig) -> Writer {
        let reporter = Reporter {
            controller: "weft-controller".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Writer {
            events: Recorder::new(client.clone(), reporter),
            client,
            deployer,
            written: HashMap::new(),
            announced: HashMap::new(),
        }
    }

    /// One pass over the cluster state and model.
    pub async fn reconcile(&mut self, state: &ClusterState, model: &ModelVersion) {
        if !state.synced {
            return;
        }
        // Proxies verify the controller's TLS with the root: ztunnels in the
        // root namespace, waypoints in their own.
        let mut root_namespaces: Vec<String> = vec![self.deployer.root_namespace.clone()];
        root_namespaces.extend(
            state
                .gateways
                .values()
                .filter(|gw| is_waypoint_gateway(gw))
                .filter_map(|gw| gw.namespace()),
        );
        root_namespaces.sort();
        root_namespaces.dedup();
        for ns in root_namespaces {
            self.root_config_map(&ns).await;
        }
        for class in state.gateway_classes.values() {
            if class.spec.controller_name == WAYPOINT_CONTROLLER {
                self.gateway_class_status(class).await;
            }
        }
        for (key, gw) in &state.gateways {
            if is_waypoint_gateway(gw) {
                let conflict = self.deploy(key, gw, state).await;
                self.gateway_status(
                    gw,
                    state.services.get(key).map(AsRef::as_ref),
                    conflict.as_deref(),
                )
                .await;
            }
        }
        if model.version > 0 {
            for (key, svc) in &state.services {
                self.binding_status(key, svc, state, &model.model).await;
            }
            self.binding_events(state, &model.model).await;
            for (key, policy) in &state.authorization_policies {
                if let Some(report) = model.model.policy_reports.get(&key.to_string()) {
                    self.policy_status(key, policy, report).await;
                }
            }
            for (key, report) in &model.model.route_reports {
                self.route_status(key, report, state).await;
            }
        }
    }

    async fn apply_once<K>(
        &mut self,
        api: Api<K>,
        name: &str,
        body: serde_json::Value,
        status: bool,
    ) where
        K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let memo = format!("{}/{}/{name}/{status}", K::kind(&()), api.resource_url());
        // The state a pass reads may not show what the last pass wrote yet;
        // a condition that differs only in its time is the same write.
        if self
            .written
            .get(&memo)
            .is_some_and(|w| without_transition_times(w) == without_transition_times(&body))
        {
            return;
        }
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let result = if status {
            api.patch_status(name, &params, &Patch::Apply(&body)).await
        } else {
            api.patch(name, &params, &Patch::Apply(&body)).await
        };
        match result {
            Ok(_) => {
                self.written.insert(memo, body);
            }
            Err(e) => {
                metrics::counter!("weft_writer_errors_total", "kind" => K::kind(&()).into_owned())
                    .increment(1);
                tracing::warn!("apply {} {name}: {e}", K::kind(&()));
            }
        }
    }

    /// Deploys `gw`'s waypoint, unless its ServiceAccount name is taken by
    /// one the deployer did not make: then nothing is written, and the
    /// reason is returned for the Gateway's status.
    async fn deploy(
        &mut self,
        key: &ObjectKey,
        gw: &Gateway,
        state: &ClusterState,
    ) -> Option<String> {
        let ns = gw.namespace().unwrap_or_default();
        let objects = waypoint_objects(gw, &self.deployer);
        let sa_name = objects.service_account.name_any();
        let known = state
            .service_accounts
            .get(&ObjectKey::new(ns.clone(), sa_name.clone()))
            .is_some_and(|sa| made_by_deployer(gw, sa));
        if !known {
            match self
                .claim_service_account(gw, &objects.service_account)
                .await
            {
                Claim::Ours => {}
                Claim::Taken(reason) => {
                    tracing::warn!("waypoint {key} not deployed: {reason}");
                    return Some(reason);
                }
                Claim::Retry => return None,
            }
        }
        self.apply_once(
            Api::<ServiceAccount>::namespaced(self.client.clone(), &ns),
            &sa_name,
            with_type_meta(&objects.service_account),
            false,
        )
        .await;
        self.apply_once(
            Api::<Deployment>::namespaced(self.client.clone(), &ns),
            &gw.name_any(),
            with_type_meta(&objects.deployment),
            false,
        )
        .await;
        self.apply_once(
            Api::<Service>::namespaced(self.client.clone(), &ns),
            &gw.name_any(),
            with_type_meta(&objects.service),
            false,
        )
        .await;
        self.apply_once(
            Api::<PodDisruptionBudget>::namespaced(self.client.clone(), &ns),
            &gw.name_any(),
            with_type_meta(&objects.disruption_budget),
            false,
        )
        .await;
        None
    }

    /// Makes sure the waypoint's ServiceAccount is the deployer's before
    /// anything is applied to it: a forced apply would adopt a
    /// ServiceAccount someone else created under that name (adding the
    /// Gateway as its owner), and every pod already running as it would
    /// become the waypoint. So it is created, never taken over.
    async fn claim_service_account(&mut self, gw: &Gateway, wanted: &ServiceAccount) -> Claim {
        let ns = gw.namespace().unwrap_or_default();
        let name = wanted.name_any();
        let api = Api::<ServiceAccount>::namespaced(self.client.clone(), &ns);
        let taken = || {
            Claim::Taken(format!(
                "ServiceAccount {ns}/{name} exists and was not made by the waypoint deployer \
                 for this Gateway; the deployer does not take it over (delete or rename it)"
            ))
        };
        let failed = |what: &str, e: kube::Error| {
            metrics::counter!("weft_writer_errors_total", "kind" => "ServiceAccount").increment(1);
            tracing::warn!("{what} ServiceAccount {ns}/{name}: {e}");
            Claim::Retry
        };
        match api.get_opt(&name).await {
            Ok(Some(existing)) if made_by_deployer(gw, &existing) => Claim::Ours,
            Ok(Some(_)) => taken(),
            Ok(None) => match api.create(&PostParams::default(), wanted).await {
                Ok(_) => Claim::Ours,
                // Created by someone else since the read: the next pass
                // reads it and decides.
                Err(kube::Error::Api(status)) if status.code == 409 => Claim::Retry,
                Err(e) => failed("create", e),
            },
            Err(e) => failed("read", e),
        }
    }

    async fn root_config_map(&mut self, namespace: &str) {
        let body = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": ROOT_CONFIG_MAP, "namespace": namespace},
            "data": {"root-cert.pem": self.deployer.root_pem},
        });
        self.apply_once(
            Api::<ConfigMap>::namespaced(self.client.clone(), namespace),
            ROOT_CONFIG_MAP,
            body,
            false,
        )
        .await;
    }

    async fn gateway_class_status(&mut self, class: &GatewayClass) {
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let mut accepted = [status::condition(
            "Accepted",
            true,
            "Accepted",
            format!("handled by {WAYPOINT_CONTROLLER} as {WAYPOINT_CLASS}"),
            class.metadata.generation,
            now,
        )];
        let current = class
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        if status::settle(&current, &mut accepted) {
            return;
        }
        let body = json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
            "metadata": {"name": class.name_any()},
            "status": {"conditions": accepted},
        });
        self.apply_once(
            Api::<GatewayClass>::all(self.client.clone()),
            &class.name_any(),
            body,
            true,
        )
        .await;
    }

    async fn gateway_status(
        &mut self,
        gw: &Gateway,
        service: Option<&Service>,
        conflict: Option<&str>,
    ) {
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let addresses = status::gateway_addresses(service);
        let generation = gw.metadata.generation;
        let mut conditions = vec![
            status::condition(
                "Accepted",
                true,
                "Accepted",
                "waypoint".into(),
                generation,
                now.clone(),
            ),
            if let Some(reason) = conflict {
                status::condition(
                    "Programmed",
                    false,
                    "Invalid",
                    reason.to_string(),
                    generation,
                    now,
                )
            } else if addresses.is_empty() {
                status::condition(
                    "Programmed",
                    false,
                    "Pending",
                    "waiting for the waypoint Service".into(),
                    generation,
                    now,
                )
            } else {
                status::condition(
                    "Programmed",
                    true,
                    "Programmed",
                    "waypoint deployed".into(),
                    generation,
                    now,
                )
            },
        ];
        let current = gw
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        let current_addresses: Vec<String> = gw
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .map(|a| a.iter().map(|a| a.value.clone()).collect())
            .unwrap_or_default();
        if status::settle(&current, &mut conditions) && current_addresses == addresses {
            return;
        }
        let body = json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": gw.name_any(), "namespace": gw.namespace()},
            "status": {
                "conditions": conditions,
                "addresses": addresses.iter().map(|a| json!({"type": "IPAddress", "value": a})).collect::<Vec<_>>(),
            },
        });
        let ns = gw.namespace().unwrap_or_default();
        self.apply_once(
            Api::<Gateway>::namespaced(self.client.clone(), &ns),
            &gw.name_any(),
            body,
            true,
        )
        .await;
    }

    /// The `weft.dev/WaypointBound` condition of a Service bound to a
    /// waypoint, so that a binding that fails closed says why where the
    /// user looks (`kubectl describe service`). A Service that was bound and
    /// is no longer loses the condition; one never bound is not written.
    async fn binding_status(
        &mut self,
        key: &ObjectKey,
        svc: &Service,
        state: &ClusterState,
        model: &weft_cluster::model::Model,
    ) {
        let binding = model
            .services
            .get(&key.to_string())
            .and_then(|s| s.waypoint.as_ref());
        let current: Vec<_> = svc
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|c| c.type_ == status::WAYPOINT_BOUND)
            .collect();
        let mut conditions = match binding {
            None if current.is_empty() => return,
            None => Vec::new(),
            Some(r) => {
                let gateway = ObjectKey::new(r.namespace.clone(), r.name.clone());
                let found = state
                    .gateways
                    .get(&gateway)
                    .is_some_and(|gw| is_waypoint_gateway(gw));
                let refused = format!(
                    "{}; connections to this Service are refused until it is fixed",
                    r.unavailable
                );
                let (binding_state, message) = match (r.unavailable.is_empty(), found) {
                    (true, _) => (
                        status::BindingState::Bound,
                        format!("traffic to this Service passes waypoint {gateway}"),
                    ),
                    (false, false) => (status::BindingState::WaypointNotFound, refused),
                    (false, true) => (status::BindingState::WaypointNotReady, refused),
                };
                vec![status::binding_condition(
                    binding_state,
                    message,
                    Time(k8s_openapi::jiff::Timestamp::now()),
                )]
            }
        };
        if status::settle(&current, &mut conditions) {
            return;
        }
        // Server-side apply merges conditions by type: only ours is touched.
        let body = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": key.name, "namespace": key.namespace},
            "status": {"conditions": conditions},
        });
        self.apply_once(
            Api::<Service>::namespaced(self.client.clone(), &key.namespace),
            &key.name,
            body,
            true,
        )
        .await;
    }

    /// A Warning Event (`WaypointUnavailable`) on every pod and namespace
    /// whose waypoint binding fails closed — Services carry a condition
    /// instead — so `kubectl describe` says why their traffic is refused.
    /// Published when the refusal starts or its reason changes, not on
    /// every pass.
    async fn binding_events(&mut self, state: &ClusterState, model: &weft_cluster::model::Model) {
        let mut refused: HashMap<String, (ObjectReference, String)> = HashMap::new();
        for pod in state.pods.values() {
            let Some(uid) = pod.metadata.uid.as_deref() else {
                continue;
            };
            let Some(reason) = model
                .workloads
                .get(uid)
                .and_then(|w| w.waypoint.as_ref())
                .map(|r| r.unavailable.as_str())
                .filter(|r| !r.is_empty())
            else {
                continue;
            };
            refused.insert(
                format!("pod/{uid}"),
                (
                    pod.object_ref(&()),
                    format!("{reason}; connections to this pod are refused until it is fixed"),
                ),
            );
        }
        for ns in state.namespaces.values() {
            let name = ns.name_any();
            let Some(Some(target)) = requested_waypoint(ns.labels(), &name) else {
                continue;
            };
            // The reason its pods carry; with no pods yet, whether the
            // Gateway exists at all.
            let carried = model
                .workloads
                .values()
                .filter(|w| w.namespace == name)
                .filter_map(|w| w.waypoint.as_ref())
                .find(|r| {
                    !r.unavailable.is_empty()
                        && r.namespace == target.namespace
                        && r.name == target.name
                })
                .map(|r| r.unavailable.clone());
            let missing = || {
                (!state
                    .gateways
                    .get(&target)
                    .is_some_and(|gw| is_waypoint_gateway(gw)))
                .then(|| format!("Gateway {target} of class {WAYPOINT_CLASS} does not exist"))
            };
            if let Some(reason) = carried.or_else(missing) {
                refused.insert(
                    format!("namespace/{name}"),
                    (
                        ns.object_ref(&()),
                        format!("{reason}; connections to this namespace's pods bound to it are refused until it is fixed"),
                    ),
                );
            }
        }
        for (key, (reference, note)) in &refused {
            if self.announced.get(key) == Some(note) {
                continue;
            }
            let event = Event {
                type_: EventType::Warning,
                reason: "WaypointUnavailable".into(),
                note: Some(note.clone()),
                action: "RefuseTraffic".into(),
                secondary: None,
            };
            match self.events.publish(&event, reference).await {
                Ok(()) => {
                    self.announced.insert(key.clone(), note.clone());
                }
                Err(e) => {
                    tracing::warn!(object = %key, error = %e, "cannot publish the binding Event")
                }
            }
        }
        self.announced.retain(|key, _| refused.contains_key(key));
    }

    /// A route's status: per parent weft serves, `Accepted` and
    /// `ResolvedRefs`. `status.parents` is an atomic list, so other
    /// controllers' entries (their Gateways' parents) are written back as
    /// they are.
    async fn route_status(
        &mut self,
        key: &str,
        report: &weft_cluster::model::route_report::RouteReport,
        state: &ClusterState,
    ) {
        let Some((namespace, name)) = key.split_once('/') else {
            return;
        };
        let object_key = ObjectKey::new(namespace, name);
        let current = if report.grpc {
            state
                .grpc_routes
                .get(&object_key)
                .and_then(|r| serde_json::to_value(&r.status).ok())
        } else {
            state
                .http_routes
                .get(&object_key)
                .and_then(|r| serde_json::to_value(&r.status).ok())
        };
        let current_parents = current
            .as_ref()
            .and_then(|s| s.get("parents"))
            .and_then(|p| p.as_array())
            .cloned()
            .unwrap_or_default();
        let (ours, others): (Vec<_>, Vec<_>) = current_parents
            .into_iter()
            .partition(|p| p["controllerName"] == WAYPOINT_CONTROLLER);
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let mut unchanged = ours.len() == report.parents.len();
        let mut entries = Vec::with_capacity(report.parents.len());
        for parent in &report.parents {
            let parent_ref = status::parent_ref(&parent.parent_ref);
            let mut conditions = status::route_conditions(parent, report.generation, now.clone());
            let current: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> = ours
                .iter()
                .find(|p| p["parentRef"] == parent_ref)
                .and_then(|p| serde_json::from_value(p["conditions"].clone()).ok())
                .unwrap_or_default();
            unchanged &= status::settle(&current, &mut conditions);
            entries.push(json!({
                "parentRef": parent_ref,
                "controllerName": WAYPOINT_CONTROLLER,
                "conditions": conditions,
            }));
        }
        if unchanged {
            return;
        }
        let parents: Vec<serde_json::Value> = others.into_iter().chain(entries).collect();
        let (api_version, kind) = if report.grpc {
            ("gateway.networking.k8s.io/v1", "GRPCRoute")
        } else {
            ("gateway.networking.k8s.io/v1", "HTTPRoute")
        };
        let body = json!({
            "apiVersion": api_version, "kind": kind,
            "metadata": {"name": name, "namespace": namespace},
            "status": {"parents": parents},
        });
        if report.grpc {
            let api = Api::<gateway_api::grpcroutes::GrpcRoute>::namespaced(
                self.client.clone(),
                namespace,
            );
            self.apply_once(api, name, body, true).await;
        } else {
            let api = Api::<gateway_api::httproutes::HttpRoute>::namespaced(
                self.client.clone(),
                namespace,
            );
            self.apply_once(api, name, body, true).await;
        }
    }

    async fn policy_status(
        &mut self,
        key: &ObjectKey,
        policy: &AuthorizationPolicy,
        report: &weft_cluster::model::PolicyReport,
    ) {
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let mut conditions = status::policy_conditions(report, policy.metadata.generation, now);
        let current = policy
            .status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default();
        if status::settle(&current, &mut conditions) {
            return;
        }
        let body = json!({
            "apiVersion": "security.weft.dev/v1alpha1", "kind": "AuthorizationPolicy",
            "metadata": {"name": key.name, "namespace": key.namespace},
            "status": {"conditions": conditions},
        });
        self.apply_once(
            Api::<AuthorizationPolicy>::namespaced(self.client.clone(), &key.namespace),
            &key.name,
            body,
            true,
        )
        .await;
    }
}

/// `body` with its conditions' transition times removed, for comparing what
/// a write would say.
fn without_transition_times(body: &serde_json::Value) -> serde_json::Value {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                map.remove("lastTransitionTime");
                map.values_mut().for_each(strip);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut body = body.clone();
    // Conditions sit in `status.conditions`, or per parent of a route.
    if let Some(status) = body.get_mut("status") {
        strip(status);
    }
    body
}
