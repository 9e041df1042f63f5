//! The one state store: workloads, services, policies, trust bundles (and,
//! for waypoints, L7 routes), indexed for the lookups the proxy paths make
//! (by uid, by pod IP, by service VIP). The config source writes it;
//! connection handling only reads it.
//!
//! An update is validated as a whole before anything changes, so a bad
//! update (NACKed) leaves the last good config in place.

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use tokio::sync::watch;
use weft_api::config::{
    Authorization, PolicyScope, ResourceType, Route, Service, TrustBundle, Workload, resource,
};
use weft_hbone::SpiffeId;
use weft_hbone::identity::DEFAULT_TRUST_DOMAIN;

/// One batch of changes from a config source.
#[derive(Debug, Default, Clone)]
pub struct ConfigUpdate {
    pub version: u64,
    /// Everything not in this update is gone.
    pub full_snapshot: bool,
    pub resources: Vec<resource::Kind>,
    pub removed: Vec<(ResourceType, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("workload {uid:?}: {problem}")]
    Workload { uid: String, problem: String },
    #[error("service {key:?}: {problem}")]
    Service { key: String, problem: String },
    #[error("authorization policy {key:?}: {problem}")]
    Policy { key: String, problem: String },
    #[error("trust bundle {domain:?}: {problem}")]
    TrustBundle { domain: String, problem: String },
    #[error("route {key:?}: {problem}")]
    Route { key: String, problem: String },
}

/// A workload in the set keyed by its own uid, so the key is not stored a
/// second time.
#[derive(Clone)]
struct ByUid(Arc<Workload>);

impl std::borrow::Borrow<str> for ByUid {
    fn borrow(&self) -> &str {
        &self.0.uid
    }
}

impl std::hash::Hash for ByUid {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // Must hash exactly as `str` does, for lookups by `&str`.
        self.0.uid.as_str().hash(state);
    }
}

impl PartialEq for ByUid {
    fn eq(&self, other: &Self) -> bool {
        self.0.uid == other.0.uid
    }
}

impl Eq for ByUid {}

/// The policies that apply to a workload, in (namespace, name) order: a
/// stable order makes the deciding rule deterministic.
pub type PolicyList = Arc<[Arc<Authorization>]>;

fn by_namespace_name(a: &Authorization, b: &Authorization) -> Ordering {
    (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name))
}

/// A policy ordered as [`PolicyList`] orders them. Two stored policies never
/// compare equal: the same (namespace, name) is the same store key.
#[derive(Clone)]
struct Ordered(Arc<Authorization>);

impl Ord for Ordered {
    fn cmp(&self, other: &Self) -> Ordering {
        by_namespace_name(&self.0, &other.0)
    }
}

impl PartialOrd for Ordered {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Ordered {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Ordered {}

/// Merges two lists that are each in (namespace, name) order.
fn merge_ordered(a: &[Arc<Authorization>], b: &[Arc<Authorization>]) -> PolicyList {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if by_namespace_name(&a[i], &b[j]) == Ordering::Greater {
            out.push(b[j].clone());
            j += 1;
        } else {
            out.push(a[i].clone());
            i += 1;
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out.into()
}

/// The L4 policies a workload gets for being where it is: mesh-wide ones,
/// and those of its namespace. `policies_for` runs on every inbound
/// connection; scanning every policy in the mesh there costs O(all policies)
/// per connection, so the answer is built once per config change instead.
///
/// Selector-scoped policies are not here: a workload names them itself
/// (`authorization_policies`), so they are looked up by key per call and
/// stay right when the workload's list or the policy changes. Waypoint-scoped
/// policies never apply at L4.
#[derive(Default)]
struct PolicyIndex {
    mesh: BTreeSet<Ordered>,
    by_namespace: HashMap<String, BTreeSet<Ordered>>,
    /// `mesh` as a list: what a workload in a namespace without namespace
    /// policies gets.
    mesh_list: PolicyList,
    /// Per namespace with namespace policies: mesh ∪ namespace, in order.
    merged: HashMap<String, PolicyList>,
    /// Changed since the lists were last built; rebuilt once per update,
    /// not once per policy in it.
    dirty: HashSet<String>,
    mesh_dirty: bool,
}

impl PolicyIndex {
    fn add(&mut self, p: &Arc<Authorization>) {
        match PolicyScope::try_from(p.scope) {
            Ok(PolicyScope::Mesh) => {
                self.mesh.insert(Ordered(p.clone()));
                self.mesh_dirty = true;
            }
            Ok(PolicyScope::Namespace) => {
                self.by_namespace
                    .entry(p.namespace.clone())
                    .or_default()
                    .insert(Ordered(p.clone()));
                self.dirty.insert(p.namespace.clone());
            }
            _ => {}
        }
    }

    fn remove(&mut self, p: &Arc<Authorization>) {
        let key = Ordered(p.clone());
        match PolicyScope::try_from(p.scope) {
            Ok(PolicyScope::Mesh) => {
                self.mesh.remove(&key);
                self.mesh_dirty = true;
            }
            Ok(PolicyScope::Namespace) => {
                if let Some(set) = self.by_namespace.get_mut(&p.namespace) {
                    set.remove(&key);
                    if set.is_empty() {
                        self.by_namespace.remove(&p.namespace);
                    }
                }
                self.dirty.insert(p.namespace.clone());
            }
            _ => {}
        }
    }

    fn rebuild(&mut self) {
        if self.mesh_dirty {
            self.mesh_dirty = false;
            self.mesh_list = self.mesh.iter().map(|p| p.0.clone()).collect();
            // Every merged list holds the mesh policies.
            self.merged.clear();
            self.dirty.clear();
            self.dirty.extend(self.by_namespace.keys().cloned());
        }
        for ns in std::mem::take(&mut self.dirty) {
            match self.by_namespace.get(&ns) {
                Some(set) => {
                    let local: Vec<_> = set.iter().map(|p| p.0.clone()).collect();
                    let list = merge_ordered(&self.mesh_list, &local);
                    self.merged.insert(ns, list);
                }
                None => {
                    self.merged.remove(&ns);
                }
            }
        }
    }

    fn base_for(&self, namespace: &str) -> &PolicyList {
        self.merged.get(namespace).unwrap_or(&self.mesh_list)
    }
}

#[derive(Default)]
struct Inner {
    workloads: HashSet<ByUid>,
    // Indexes hold the Arc, not another copy of the key: at 100k workloads
    // a second uid string per entry is a tenth of the budget.
    by_ip: HashMap<IpAddr, Arc<Workload>>,
    services: HashMap<String, Arc<Service>>,
    by_vip: HashMap<IpAddr, Arc<Service>>,
    policies: HashMap<String, Arc<Authorization>>,
    policy_index: PolicyIndex,
    bundles: HashMap<String, Arc<TrustBundle>>,
    // Only a waypoint subscribes to routes; ztunnel's stays empty.
    routes: HashMap<String, Arc<Route>>,
}

/// The store. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct WorkloadStore {
    inner: Arc<RwLock<Inner>>,
    version: Arc<watch::Sender<u64>>,
}

impl Default for WorkloadStore {
    fn default() -> Self {
        WorkloadStore {
            inner: Arc::default(),
            version: Arc::new(watch::channel(0).0),
        }
    }
}

pub fn service_key(s: &Service) -> String {
    format!("{}/{}", s.namespace, s.name)
}

pub fn policy_key(p: &Authorization) -> String {
    format!("{}/{}", p.namespace, p.name)
}

pub fn route_key(r: &Route) -> String {
    format!("{}/{}", r.namespace, r.name)
}

/// A workload's SPIFFE identity.
pub fn workload_identity(w: &Workload) -> Result<SpiffeId, weft_hbone::identity::IdentityError> {
    let td = if w.trust_domain.is_empty() {
        DEFAULT_TRUST_DOMAIN
    } else {
        &w.trust_domain
    };
    SpiffeId::new(td, &w.namespace, &w.service_account)
}

fn parse_ips<'a>(addrs: impl IntoIterator<Item = &'a String>) -> Result<Vec<IpAddr>, String> {
    addrs
        .into_iter()
        .map(|a| a.parse().map_err(|_| format!("address {a:?} is not an IP")))
        .collect()
}

fn validate(resource: &resource::Kind) -> Result<(), StoreError> {
    match resource {
        resource::Kind::Workload(w) => {
            let bad = |problem: String| StoreError::Workload {
                uid: w.uid.clone(),
                problem,
            };
            if w.uid.is_empty() {
                return Err(bad("empty uid".into()));
            }
            parse_ips(&w.addresses).map_err(bad)?;
            workload_identity(w).map_err(|e| bad(e.to_string()))?;
            if let Some(wp) = &w.waypoint {
                parse_ips(&wp.addresses).map_err(bad)?;
                // An unavailable binding names no identity: it is refused.
                if wp.unavailable.is_empty() {
                    wp.identity
                        .parse::<SpiffeId>()
                        .map_err(|e| bad(format!("waypoint identity: {e}")))?;
                }
            }
        }
        resource::Kind::Service(s) => {
            let bad = |problem: String| StoreError::Service {
                key: service_key(s),
                problem,
            };
            if s.name.is_empty() || s.namespace.is_empty() {
                return Err(bad("empty name or namespace".into()));
            }
            parse_ips(&s.vips).map_err(bad)?;
            for p in &s.ports {
                if p.service_port == 0 || p.service_port > 65535 || p.target_port > 65535 {
                    return Err(bad(format!(
                        "port {} -> {} out of range",
                        p.service_port, p.target_port
                    )));
                }
            }
            if let Some(wp) = &s.waypoint {
                parse_ips(&wp.addresses).map_err(bad)?;
                // An unavailable binding names no identity: it is refused.
                if wp.unavailable.is_empty() {
                    wp.identity
                        .parse::<SpiffeId>()
                        .map_err(|e| bad(format!("waypoint identity: {e}")))?;
                }
            }
        }
        resource::Kind::Authorization(p) => {
            if p.name.is_empty() || p.namespace.is_empty() {
                return Err(StoreError::Policy {
                    key: policy_key(p),
                    problem: "empty name or namespace".into(),
                });
            }
        }
        resource::Kind::TrustBundle(b) => {
            weft_hbone::TrustBundle::from_pems(&b.trust_domain, &b.roots_pem).map_err(|e| {
                StoreError::TrustBundle {
                    domain: b.trust_domain.clone(),
                    problem: e.to_string(),
                }
            })?;
        }
        resource::Kind::Route(r) => {
            if r.name.is_empty() || r.namespace.is_empty() {
                return Err(StoreError::Route {
                    key: route_key(r),
                    problem: "empty name or namespace".into(),
                });
            }
        }
    }
    Ok(())
}

impl Inner {
    fn insert(&mut self, resource: resource::Kind) {
        match resource {
            resource::Kind::Workload(w) => {
                self.remove_workload(&w.uid.clone());
                let w = Arc::new(w);
                for ip in parse_ips(&w.addresses).unwrap_or_default() {
                    self.by_ip.insert(ip, w.clone());
                }
                self.workloads.insert(ByUid(w));
            }
            resource::Kind::Service(s) => {
                let key = service_key(&s);
                self.remove_service(&key);
                let s = Arc::new(s);
                for ip in parse_ips(&s.vips).unwrap_or_default() {
                    self.by_vip.insert(ip, s.clone());
                }
                self.services.insert(key, s);
            }
            resource::Kind::Authorization(p) => {
                let p = Arc::new(p);
                if let Some(old) = self.policies.insert(policy_key(&p), p.clone()) {
                    // First: the new one may sort as the old one did.
                    self.policy_index.remove(&old);
                }
                self.policy_index.add(&p);
            }
            resource::Kind::TrustBundle(b) => {
                self.bundles.insert(b.trust_domain.clone(), Arc::new(b));
            }
            resource::Kind::Route(r) => {
                self.routes.insert(route_key(&r), Arc::new(r));
            }
        }
    }

    fn remove_workload(&mut self, uid: &str) {
        if let Some(ByUid(old)) = self.workloads.take(uid) {
            for ip in parse_ips(&old.addresses).unwrap_or_default() {
                // Another workload may have taken the IP over already.
                if self.by_ip.get(&ip).is_some_and(|w| w.uid == uid) {
                    self.by_ip.remove(&ip);
                }
            }
        }
    }

    fn remove_service(&mut self, key: &str) {
        if let Some(old) = self.services.remove(key) {
            for ip in parse_ips(&old.vips).unwrap_or_default() {
                if self.by_vip.get(&ip).is_some_and(|s| service_key(s) == key) {
                    self.by_vip.remove(&ip);
                }
            }
        }
    }

    fn remove(&mut self, kind: ResourceType, key: &str) {
        match kind {
            ResourceType::Workload => self.remove_workload(key),
            ResourceType::Service => self.remove_service(key),
            ResourceType::Authorization => {
                if let Some(old) = self.policies.remove(key) {
                    self.policy_index.remove(&old);
                }
            }
            ResourceType::TrustBundle => {
                self.bundles.remove(key);
            }
            ResourceType::Route => {
                self.routes.remove(key);
            }
            ResourceType::Unspecified => {}
        }
    }
}

impl WorkloadStore {
    /// Applies an update, or changes nothing and says why.
    pub fn apply(&self, update: ConfigUpdate) -> Result<(), StoreError> {
        for r in &update.resources {
            validate(r)?;
        }
        {
            let mut inner = self.write();
            if update.full_snapshot {
                *inner = Inner::default();
            }
            for (kind, key) in &update.removed {
                inner.remove(*kind, key);
            }
            for r in update.resources {
                inner.insert(r);
            }
            inner.policy_index.rebuild();
        }
        self.version.send_replace(update.version);
        Ok(())
    }

    pub fn version(&self) -> u64 {
        *self.version.borrow()
    }

    /// Notified after every applied update.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    pub fn workload(&self, uid: &str) -> Option<Arc<Workload>> {
        self.read().workloads.get(uid).map(|w| w.0.clone())
    }

    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<Arc<Workload>> {
        self.read().by_ip.get(&ip).cloned()
    }

    /// A Service by `namespace/name`.
    pub fn service(&self, key: &str) -> Option<Arc<Service>> {
        self.read().services.get(key).cloned()
    }

    pub fn service_by_vip(&self, ip: IpAddr) -> Option<Arc<Service>> {
        self.read().by_vip.get(&ip).cloned()
    }

    /// The policies that apply to `workload` at L4 (those
    /// [`weft_api::authz::applies_to`] accepts), in (namespace, name) order.
    /// Costs a clone of a shared list, plus, for a workload that names
    /// selector policies, a lookup and a merge of those.
    pub fn policies_for(&self, workload: &Workload) -> PolicyList {
        let inner = self.read();
        let base = inner.policy_index.base_for(&workload.namespace);
        if workload.authorization_policies.is_empty() {
            return base.clone();
        }
        let mut selected: Vec<Arc<Authorization>> = workload
            .authorization_policies
            .iter()
            .filter_map(|key| inner.policies.get(key.as_str()))
            .filter(|p| p.scope == PolicyScope::WorkloadSelector as i32)
            .cloned()
            .collect();
        if selected.is_empty() {
            return base.clone();
        }
        // Only the workload's own few names are sorted, and a name listed
        // twice is still one policy.
        selected.sort_by(|a, b| by_namespace_name(a, b));
        selected.dedup_by(|a, b| Arc::ptr_eq(a, b));
        merge_ordered(base, &selected)
    }

    /// The scan `policies_for` replaced, kept as the reference it must agree
    /// with.
    #[cfg(test)]
    fn policies_for_by_scan(&self, workload: &Workload) -> Vec<Arc<Authorization>> {
        let mut out: Vec<_> = self
            .read()
            .policies
            .values()
            .filter(|p| weft_api::authz::applies_to(p, workload))
            .cloned()
            .collect();
        out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        out
    }

    pub fn trust_bundle(&self, trust_domain: &str) -> Option<Arc<TrustBundle>> {
        self.read().bundles.get(trust_domain).cloned()
    }

    pub fn workloads(&self) -> Vec<Arc<Workload>> {
        let mut all: Vec<_> = self.read().workloads.iter().map(|w| w.0.clone()).collect();
        all.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        all
    }

    pub fn services(&self) -> Vec<Arc<Service>> {
        let mut all: Vec<_> = self.read().services.values().cloned().collect();
        all.sort_by_key(|s| service_key(s));
        all
    }

    pub fn policies(&self) -> Vec<Arc<Authorization>> {
        let mut all: Vec<_> = self.read().policies.values().cloned().collect();
        all.sort_by_key(|p| policy_key(p));
        all
    }

    /// HTTPRoutes and GRPCRoutes (a waypoint's subscription only).
    pub fn routes(&self) -> Vec<Arc<Route>> {
        let mut all: Vec<_> = self.read().routes.values().cloned().collect();
        all.sort_by_key(|r| route_key(r));
        all
    }

    pub fn counts(&self) -> (usize, usize, usize) {
        let inner = self.read();
        (
            inner.workloads.len(),
            inner.services.len(),
            inner.policies.len(),
        )
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        // Writers validate before mutating and mutate without panicking
        // paths, so a poisoned lock still holds a consistent store.
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use weft_api::config::WaypointRef;

    fn wl(uid: &str, ip: &str) -> resource::Kind {
        resource::Kind::Workload(Workload {
            uid: uid.into(),
            name: uid.into(),
            namespace: "ns".into(),
            service_account: "sa".into(),
            addresses: vec![ip.into()],
            ..Default::default()
        })
    }

    #[test]
    fn indexes_follow_updates() {
        let store = WorkloadStore::default();
        store
            .apply(ConfigUpdate {
                version: 1,
                full_snapshot: true,
                resources: vec![wl("a", "10.0.0.1"), wl("b", "10.0.0.2")],
                removed: vec![],
            })
            .unwrap();
        assert_eq!(
            store
                .workload_by_ip("10.0.0.1".parse().unwrap())
                .unwrap()
                .uid,
            "a"
        );
        // `a` moves to a new IP; the old one no longer resolves.
        store
            .apply(ConfigUpdate {
                version: 2,
                resources: vec![wl("a", "10.0.0.9")],
                ..Default::default()
            })
            .unwrap();
        assert!(store.workload_by_ip("10.0.0.1".parse().unwrap()).is_none());
        assert_eq!(
            store
                .workload_by_ip("10.0.0.9".parse().unwrap())
                .unwrap()
                .uid,
            "a"
        );
        store
            .apply(ConfigUpdate {
                version: 3,
                removed: vec![(ResourceType::Workload, "b".into())],
                ..Default::default()
            })
            .unwrap();
        assert!(store.workload("b").is_none());
        assert_eq!(store.version(), 3);
    }

    #[test]
    fn routes_are_kept_for_a_waypoint() {
        let store = WorkloadStore::default();
        let route = |name: &str| {
            resource::Kind::Route(Route {
                name: name.into(),
                namespace: "ns".into(),
                ..Default::default()
            })
        };
        store
            .apply(ConfigUpdate {
                version: 1,
                full_snapshot: true,
                resources: vec![route("b"), route("a")],
                removed: vec![],
            })
            .unwrap();
        let names: Vec<_> = store.routes().iter().map(|r| r.name.clone()).collect();
        assert_eq!(names, ["a", "b"]);
        store
            .apply(ConfigUpdate {
                version: 2,
                removed: vec![(ResourceType::Route, "ns/a".into())],
                ..Default::default()
            })
            .unwrap();
        assert_eq!(store.routes().len(), 1);
        let err = store
            .apply(ConfigUpdate {
                version: 3,
                resources: vec![route("")],
                ..Default::default()
            })
            .unwrap_err();
        assert!(err.to_string().contains("route"), "{err}");
    }

    /// Policy namespaces include `a/b`, so `a/b` + `x` and `a` + `b/x` share
    /// the store key `a/b/x`: the index must follow the map, not the name.
    const POLICY_NAMESPACES: [&str; 4] = ["a", "b", "c", "a/b"];
    const POLICY_NAMES: [&str; 3] = ["x", "y", "b/x"];
    // A workload's namespace must make a valid SPIFFE id.
    const WORKLOAD_NAMESPACES: [&str; 3] = ["a", "b", "c"];

    fn policy_keys() -> Vec<String> {
        POLICY_NAMESPACES
            .iter()
            .flat_map(|ns| POLICY_NAMES.iter().map(move |n| format!("{ns}/{n}")))
            .collect()
    }

    fn arb_policy() -> impl Strategy<Value = Authorization> {
        // Scope 4 is no known scope: it applies nowhere.
        (
            prop::sample::select(&POLICY_NAMESPACES[..]),
            prop::sample::select(&POLICY_NAMES[..]),
            0..5i32,
        )
            .prop_map(|(ns, name, scope)| Authorization {
                namespace: ns.into(),
                name: name.into(),
                scope,
                ..Default::default()
            })
    }

    fn arb_workload() -> impl Strategy<Value = Workload> {
        (
            0..6u8,
            prop::sample::select(&WORKLOAD_NAMESPACES[..]),
            prop::sample::select(&["sa", "sb"][..]),
            // Repeats and names of absent policies included.
            prop::collection::vec(prop::sample::select(policy_keys()), 0..4),
        )
            .prop_map(|(uid, ns, sa, selected)| Workload {
                uid: format!("w{uid}"),
                name: format!("w{uid}"),
                namespace: ns.into(),
                service_account: sa.into(),
                authorization_policies: selected,
                ..Default::default()
            })
    }

    fn arb_update() -> impl Strategy<Value = ConfigUpdate> {
        let resource = prop_oneof![
            arb_policy().prop_map(resource::Kind::Authorization),
            arb_workload().prop_map(resource::Kind::Workload),
        ];
        let removal = prop_oneof![
            prop::sample::select(policy_keys()).prop_map(|k| (ResourceType::Authorization, k)),
            (0..6u8).prop_map(|u| (ResourceType::Workload, format!("w{u}"))),
        ];
        (
            prop::bool::weighted(0.1),
            prop::collection::vec(resource, 0..6),
            prop::collection::vec(removal, 0..3),
        )
            .prop_map(|(full_snapshot, resources, removed)| ConfigUpdate {
                version: 0,
                full_snapshot,
                resources,
                removed,
            })
    }

    fn names(list: &[Arc<Authorization>]) -> Vec<(String, String)> {
        list.iter()
            .map(|p| (p.namespace.clone(), p.name.clone()))
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn indexed_policies_equal_the_scan(
            updates in prop::collection::vec(arb_update(), 1..12),
            probes in prop::collection::vec(arb_workload(), 0..4),
        ) {
            let store = WorkloadStore::default();
            for update in updates {
                store.apply(update).map_err(|e| TestCaseError::fail(e.to_string()))?;
                // Workloads not in the store too: callers may hold an older
                // copy of one.
                let all = store.workloads().into_iter().chain(probes.iter().cloned().map(Arc::new));
                for w in all {
                    let indexed = store.policies_for(&w);
                    let scanned = store.policies_for_by_scan(&w);
                    prop_assert_eq!(names(&indexed), names(&scanned), "workload {:?}", w);
                    for (a, b) in indexed.iter().zip(&scanned) {
                        prop_assert!(Arc::ptr_eq(a, b), "stale policy for {:?}", w);
                    }
                }
            }
        }
    }

    #[test]
    fn policies_follow_scope_changes() {
        let store = WorkloadStore::default();
        let policy = |ns: &str, name: &str, scope: PolicyScope| {
            resource::Kind::Authorization(Authorization {
                namespace: ns.into(),
                name: name.into(),
                scope: scope as i32,
                ..Default::default()
            })
        };
        let w = Workload {
            namespace: "ns".into(),
            authorization_policies: vec!["ns/sel".into()],
            ..Default::default()
        };
        store
            .apply(ConfigUpdate {
                full_snapshot: true,
                resources: vec![
                    policy("ns", "b", PolicyScope::Namespace),
                    policy("root", "m", PolicyScope::Mesh),
                    policy("ns", "sel", PolicyScope::WorkloadSelector),
                    policy("other", "a", PolicyScope::Namespace),
                ],
                ..Default::default()
            })
            .unwrap();
        assert_eq!(
            names(&store.policies_for(&w)),
            [("ns", "b"), ("ns", "sel"), ("root", "m")].map(|(a, b)| (a.into(), b.into()))
        );
        // The mesh policy becomes a namespace one elsewhere: it leaves `ns`.
        store
            .apply(ConfigUpdate {
                resources: vec![policy("root", "m", PolicyScope::Namespace)],
                removed: vec![(ResourceType::Authorization, "ns/b".into())],
                ..Default::default()
            })
            .unwrap();
        assert_eq!(
            names(&store.policies_for(&w)),
            [("ns".to_string(), "sel".to_string())]
        );
    }

    #[test]
    fn a_bad_update_changes_nothing() {
        let store = WorkloadStore::default();
        store
            .apply(ConfigUpdate {
                version: 1,
                full_snapshot: true,
                resources: vec![wl("a", "10.0.0.1")],
                removed: vec![],
            })
            .unwrap();
        let mut bad = Workload {
            uid: "c".into(),
            namespace: "ns".into(),
            service_account: "sa".into(),
            addresses: vec!["10.0.0.3".into()],
            ..Default::default()
        };
        bad.waypoint = Some(WaypointRef {
            identity: "not-spiffe".into(),
            ..Default::default()
        });
        let err = store
            .apply(ConfigUpdate {
                version: 2,
                full_snapshot: true,
                resources: vec![wl("b", "10.0.0.2"), resource::Kind::Workload(bad)],
                removed: vec![],
            })
            .unwrap_err();
        assert!(err.to_string().contains("waypoint identity"), "{err}");
        assert!(store.workload("a").is_some(), "last good config kept");
        assert!(store.workload("b").is_none());
        assert_eq!(store.version(), 1);
    }
}
