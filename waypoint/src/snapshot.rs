//! The waypoint's view of one config version: compiled route tables, the
//! policies that apply at this waypoint per Service, and caches of what
//! requests look up often (a workload's own policies, a Service's
//! endpoints). Built from the shared state store when its version moves, so
//! the request path never scans the whole config.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tracing::warn;
use weft_api::authz::applies_at_waypoint;
use weft_api::config::{Authorization, Service, ServicePort, Workload};
use weft_ztunnel::proxy::lb::Candidate;
use weft_ztunnel::proxy::route::service_candidates;
use weft_ztunnel::state::WorkloadStore;

use crate::destination::WaypointName;
use crate::routing::Routes;

/// Policies in `namespace/name` order, as evaluated.
pub type PolicySet = Arc<[Arc<Authorization>]>;

/// A Service port: namespace, name, port.
type ServicePortKey = (String, String, u32);

/// One config version, compiled.
pub struct Snapshot {
    pub version: u64,
    pub routes: Routes,
    /// Route compilation problems (also logged once).
    pub warnings: Vec<String>,
    /// Policies targeting this waypoint's Gateway.
    gateway_policies: PolicySet,
    /// Gateway policies plus those targeting the Service, per Service.
    service_policies: HashMap<(String, String), PolicySet>,
    workload_policies: Mutex<HashMap<String, PolicySet>>,
    candidates: Mutex<HashMap<ServicePortKey, Arc<[Candidate]>>>,
}

impl Snapshot {
    fn build(store: &WorkloadStore, me: &WaypointName) -> Snapshot {
        let version = store.version();
        let mut gateway = Vec::new();
        let mut by_service: HashMap<(String, String), Vec<Arc<Authorization>>> = HashMap::new();
        // `policies()` is in namespace/name order; the sets keep it.
        for policy in store.policies() {
            if applies_at_waypoint(&policy, &me.namespace, &me.name, None) {
                gateway.push(policy);
            } else if let Some(target) = &policy.target
                && applies_at_waypoint(
                    &policy,
                    &me.namespace,
                    &me.name,
                    Some((&target.namespace, &target.name)),
                )
            {
                by_service
                    .entry((target.namespace.clone(), target.name.clone()))
                    .or_default()
                    .push(policy);
            }
        }
        let service_policies = by_service
            .into_iter()
            .map(|(service, specific)| {
                let mut set: Vec<Arc<Authorization>> =
                    gateway.iter().cloned().chain(specific).collect();
                set.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
                (service, set.into())
            })
            .collect();
        let (routes, warnings) = Routes::build(&store.routes(), me);
        for w in &warnings {
            warn!(version, "{w}");
        }
        Snapshot {
            version,
            routes,
            warnings,
            gateway_policies: gateway.into(),
            service_policies,
            workload_policies: Mutex::default(),
            candidates: Mutex::default(),
        }
    }

    /// The waypoint-scoped policies for traffic addressed to `service` (or
    /// to a workload, when `None`).
    pub fn waypoint_policies(&self, service: Option<(&str, &str)>) -> PolicySet {
        service
            .and_then(|(ns, name)| {
                self.service_policies
                    .get(&(ns.to_owned(), name.to_owned()))
                    .cloned()
            })
            .unwrap_or_else(|| self.gateway_policies.clone())
    }

    /// The policies of the workload itself (mesh, namespace, selector), in
    /// full form: the waypoint enforces them with the real client's identity.
    pub fn workload_policies(&self, store: &WorkloadStore, workload: &Workload) -> PolicySet {
        let mut cache = lock(&self.workload_policies);
        cache
            .entry(workload.uid.clone())
            .or_insert_with(|| store.policies_for(workload).into())
            .clone()
    }

    /// The healthy endpoints of `service` for `port`.
    pub fn candidates(
        &self,
        store: &WorkloadStore,
        service: &Service,
        port: &ServicePort,
    ) -> Arc<[Candidate]> {
        let key = (
            service.namespace.clone(),
            service.name.clone(),
            port.service_port,
        );
        let mut cache = lock(&self.candidates);
        cache
            .entry(key)
            .or_insert_with(|| service_candidates(store, service, port).into())
            .clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Caches only: a panic elsewhere cannot leave them inconsistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The store and its current compiled view, rebuilt on first use after the
/// store's version moves.
pub struct ConfigView {
    pub store: WorkloadStore,
    me: WaypointName,
    current: ArcSwap<Snapshot>,
    rebuilding: Mutex<()>,
}

impl ConfigView {
    pub fn new(store: WorkloadStore, me: WaypointName) -> ConfigView {
        let first = Snapshot::build(&store, &me);
        ConfigView {
            store,
            me,
            current: ArcSwap::from_pointee(first),
            rebuilding: Mutex::new(()),
        }
    }

    /// The view of the store's current version.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        let current = self.current.load_full();
        if current.version == self.store.version() {
            return current;
        }
        // One rebuild at a time; the others take its result.
        let _guard = lock(&self.rebuilding);
        let current = self.current.load_full();
        if current.version == self.store.version() {
            return current;
        }
        let next = Arc::new(Snapshot::build(&self.store, &self.me));
        self.current.store(next.clone());
        next
    }
}
