//! Waypoints (Gateways of class `weft-waypoint`) and what binds to them.

use std::collections::{BTreeMap, HashMap};

use gateway_api::gateways::Gateway;
use kube::ResourceExt;
use weft_api::config::WaypointRef;

use super::ModelConfig;
use super::labels::{
    GATEWAY_NAME, HBONE_PORT, USE_WAYPOINT, USE_WAYPOINT_NAMESPACE, WAYPOINT_CLASS, WAYPOINT_FOR,
};
use crate::registry::{ClusterState, ObjectKey};

/// What traffic a waypoint serves (label `weft.dev/waypoint-for`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaypointFor {
    /// Traffic addressed to a Service (the default).
    Service,
    /// Traffic addressed to a workload directly.
    Workload,
    /// Both.
    All,
    /// Neither: the Gateway exists but nothing binds to it.
    None,
}

impl WaypointFor {
    fn parse(value: Option<&String>) -> WaypointFor {
        match value.map(String::as_str) {
            Some("workload") => WaypointFor::Workload,
            Some("all") => WaypointFor::All,
            Some("none") => WaypointFor::None,
            // Unknown values fall back to the default, as an unset label does.
            _ => WaypointFor::Service,
        }
    }

    /// True when Services may bind to it.
    pub fn serves_services(self) -> bool {
        matches!(self, WaypointFor::Service | WaypointFor::All)
    }

    /// True when workloads may bind to it.
    pub fn serves_workloads(self) -> bool {
        matches!(self, WaypointFor::Workload | WaypointFor::All)
    }
}

/// One waypoint, as the data plane reaches it.
#[derive(Clone, Debug, PartialEq)]
pub struct Waypoint {
    /// Its Gateway.
    pub key: ObjectKey,
    /// What it serves.
    pub serves: WaypointFor,
    /// How ztunnels reach it.
    pub reference: WaypointRef,
    /// Its service account (the deployer names it after the Gateway).
    pub service_account: String,
}

/// The waypoints of the cluster, by Gateway key.
pub(crate) type WaypointIndex = BTreeMap<ObjectKey, Waypoint>;

/// True for a Gateway that is a weft waypoint.
pub fn is_waypoint_gateway(gw: &Gateway) -> bool {
    gw.spec.gateway_class_name == WAYPOINT_CLASS
}

/// The service account a waypoint runs as: the deployer names it after its
/// Gateway.
pub fn waypoint_service_account(gw: &Gateway) -> String {
    gw.name_any()
}

/// The waypoint Gateways in `namespace` that run as service account
/// `service_account`. A ServiceAccount is a waypoint's exactly when this is
/// not empty; the CA (which identity it may obtain) and the config stream
/// (whether it may subscribe, and as which Gateway) both decide with it, so
/// the two can never disagree about who is a waypoint.
pub fn waypoints_run_by<'a>(
    state: &'a ClusterState,
    namespace: &'a str,
    service_account: &'a str,
) -> impl Iterator<Item = &'a ObjectKey> + 'a {
    state
        .gateways
        .iter()
        .filter(move |(key, gw)| {
            is_waypoint_gateway(gw)
                && key.namespace == namespace
                && waypoint_service_account(gw) == service_account
        })
        .map(|(key, _)| key)
}

pub(crate) fn index(state: &ClusterState, config: &ModelConfig) -> WaypointIndex {
    // Pod IPs of each waypoint, for waypoints without a Service VIP yet.
    let mut pod_ips: HashMap<ObjectKey, Vec<String>> = HashMap::new();
    for pod in state.pods.values() {
        if let Some(gw) = pod.labels().get(GATEWAY_NAME) {
            let key = ObjectKey::new(pod.namespace().unwrap_or_default(), gw.clone());
            pod_ips
                .entry(key)
                .or_default()
                .extend(super::workloads::pod_ips(pod));
        }
    }
    state
        .gateways
        .iter()
        .filter(|(_, gw)| is_waypoint_gateway(gw))
        .map(|(key, gw)| {
            let service_account = waypoint_service_account(gw);
            let mut addresses: Vec<String> = state
                .services
                .get(key)
                .and_then(|svc| svc.spec.as_ref())
                .map(super::services::cluster_ips)
                .unwrap_or_default();
            if addresses.is_empty() {
                addresses = gw
                    .status
                    .as_ref()
                    .and_then(|s| s.addresses.as_ref())
                    .map(|a| a.iter().map(|a| a.value.clone()).collect())
                    .unwrap_or_default();
            }
            if addresses.is_empty() {
                addresses = pod_ips.get(key).cloned().unwrap_or_default();
            }
            let waypoint = Waypoint {
                key: key.clone(),
                serves: WaypointFor::parse(gw.labels().get(WAYPOINT_FOR)),
                reference: WaypointRef {
                    namespace: key.namespace.clone(),
                    name: key.name.clone(),
                    addresses,
                    hbone_port: HBONE_PORT,
                    identity: format!(
                        "spiffe://{}/ns/{}/sa/{}",
                        config.trust_domain, key.namespace, service_account
                    ),
                    unavailable: String::new(),
                },
                service_account,
            };
            (key.clone(), waypoint)
        })
        .collect()
}

/// The waypoint an object's own labels ask for: `Some(None)` when they opt
/// out (`none`), `None` when they say nothing.
pub fn requested_waypoint(
    labels: &BTreeMap<String, String>,
    own_namespace: &str,
) -> Option<Option<ObjectKey>> {
    let name = labels.get(USE_WAYPOINT)?;
    if name == "none" || name.is_empty() {
        return Some(None);
    }
    let namespace = labels
        .get(USE_WAYPOINT_NAMESPACE)
        .cloned()
        .unwrap_or_else(|| own_namespace.to_string());
    Some(Some(ObjectKey::new(namespace, name.clone())))
}

/// Resolves a binding: the object's own label, else its namespace's, and the
/// waypoint must serve this kind of traffic (a namespace bound to a waypoint
/// for Services leaves its pods' direct traffic alone).
///
/// A binding that names a Gateway which does not exist (never created,
/// deleted, or not of class `weft-waypoint`), or one with no address yet,
/// cannot be honoured; it is kept, marked `unavailable` with the reason, so
/// that the proxies refuse the traffic rather than send it around the
/// waypoint's L7 policy.
pub(crate) fn resolve(
    own: Option<Option<ObjectKey>>,
    namespace: Option<Option<ObjectKey>>,
    waypoints: &WaypointIndex,
    serves: fn(WaypointFor) -> bool,
) -> Option<WaypointRef> {
    let key = match own {
        Some(explicit) => explicit?,
        None => namespace.flatten()?,
    };
    let Some(waypoint) = waypoints.get(&key) else {
        return Some(unavailable(
            &key,
            format!("Gateway {key} of class {WAYPOINT_CLASS} does not exist"),
        ));
    };
    if !serves(waypoint.serves) {
        return None;
    }
    if waypoint.reference.addresses.is_empty() {
        let mut reference = unavailable(
            &key,
            format!("waypoint {key} has no address yet (no Service cluster IP, no running pod)"),
        );
        reference.identity = waypoint.reference.identity.clone();
        return Some(reference);
    }
    Some(waypoint.reference.clone())
}

/// A binding to `key` that cannot be honoured, and why.
fn unavailable(key: &ObjectKey, reason: String) -> WaypointRef {
    WaypointRef {
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        addresses: Vec::new(),
        hbone_port: HBONE_PORT,
        identity: String::new(),
        unavailable: reason,
    }
}
