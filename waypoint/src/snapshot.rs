//! The waypoint's view of one config version: compiled route tables, the
//! policies that apply at this waypoint per Service, and caches of what
//! requests look up often (a workload's own policies, a Service's
//! endpoints). Built from the shared state store when its version moves, so
//! the request path never scans the whole config.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use tracing::warn;
use weft_api::authz::applies_at_waypoint;
use weft_api::config::{Authorization, Service, ServicePort, Workload};
use weft_runtime::lb::Candidate;
use weft_runtime::lb::service_candidates;
use weft_runtime::store::WorkloadStore;

use crate::destination::WaypointName;
use crate::routing::Routes;
use crate::service_map::ServiceMap;

/// Policies in `namespace/name` order, as evaluated.
pub type PolicySet = Arc<[Arc<Authorization>]>;

/// Endpoints by service port.
type EndpointsByPort = HashMap<u32, Arc<[Candidate]>>;

/// One config version, compiled.
pub struct Snapshot {
    pub version: u64,
    pub routes: Routes,
    /// Route compilation problems (also logged once).
    pub warnings: Vec<String>,
    /// Policies targeting this waypoint's Gateway.
    gateway_policies: PolicySet,
    /// Gateway policies plus those targeting the Service, per Service.
    service_policies: ServiceMap<PolicySet>,
    workload_policies: RwLock<HashMap<String, PolicySet>>,
    candidates: RwLock<ServiceMap<EndpointsByPort>>,
}

impl Snapshot {
    fn build(store: &WorkloadStore, me: &WaypointName) -> Snapshot {
        let version = store.version();
        let mut gateway = Vec::new();
        let mut by_service: ServiceMap<Vec<Arc<Authorization>>> = ServiceMap::default();
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
                    .entry(&target.namespace, &target.name)
                    .push(policy);
            }
        }
        let mut service_policies = ServiceMap::default();
        for ((ns, name), specific) in by_service.into_entries() {
            let mut set: Vec<Arc<Authorization>> =
                gateway.iter().cloned().chain(specific).collect();
            set.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
            *service_policies.entry(&ns, &name) = set.into();
        }
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
            workload_policies: RwLock::default(),
            candidates: RwLock::default(),
        }
    }

    /// The waypoint-scoped policies for traffic addressed to `service` (or
    /// to a workload, when `None`).
    pub fn waypoint_policies(&self, service: Option<(&str, &str)>) -> PolicySet {
        service
            .and_then(|(ns, name)| self.service_policies.get(ns, name).cloned())
            .unwrap_or_else(|| self.gateway_policies.clone())
    }

    /// The policies of the workload itself (mesh, namespace, selector), in
    /// full form: the waypoint enforces them with the real client's identity.
    pub fn workload_policies(&self, store: &WorkloadStore, workload: &Workload) -> PolicySet {
        if let Some(set) = read(&self.workload_policies).get(&workload.uid) {
            return set.clone();
        }
        let set = store.policies_for(workload);
        write(&self.workload_policies).insert(workload.uid.clone(), set.clone());
        set
    }

    /// The healthy endpoints of `service` for `port`.
    pub fn candidates(
        &self,
        store: &WorkloadStore,
        service: &Service,
        port: &ServicePort,
    ) -> Arc<[Candidate]> {
        let cached = read(&self.candidates)
            .get(&service.namespace, &service.name)
            .and_then(|ports| ports.get(&port.service_port).cloned());
        if let Some(candidates) = cached {
            return candidates;
        }
        let candidates: Arc<[Candidate]> = service_candidates(store, service, port).into();
        write(&self.candidates)
            .entry(&service.namespace, &service.name)
            .insert(port.service_port, candidates.clone());
        candidates
    }
}

// Caches only: a panic elsewhere cannot leave them inconsistent.
fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|e| e.into_inner())
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
        let _guard = self.rebuilding.lock();
        let current = self.current.load_full();
        if current.version == self.store.version() {
            return current;
        }
        let next = Arc::new(Snapshot::build(&self.store, &self.me));
        self.current.store(next.clone());
        next
    }
}
