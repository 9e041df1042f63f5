//! Waypoints (Gateways of class `weft-waypoint`) and what binds to them.

use std::collections::{BTreeMap, HashMap};

use gateway_api::gateways::Gateway;
use k8s_openapi::api::core::v1::ServiceAccount;
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
    /// Its service account (the deployer names it after the Gateway,
    /// [`waypoint_service_account`]).
    pub service_account: String,
}

/// The waypoints of the cluster, by Gateway key.
pub(crate) type WaypointIndex = BTreeMap<ObjectKey, Waypoint>;

/// True for a Gateway that is a weft waypoint.
pub fn is_waypoint_gateway(gw: &Gateway) -> bool {
    gw.spec.gateway_class_name == WAYPOINT_CLASS
}

/// What the deployer appends to a Gateway's name to name its waypoint's
/// ServiceAccount.
pub const SERVICE_ACCOUNT_SUFFIX: &str = "-weft-waypoint";

/// The service account a waypoint runs as: `<gateway>-weft-waypoint`.
///
/// Not the Gateway's own name: a Gateway named like a ServiceAccount that
/// an application already runs as would otherwise make that application's
/// pods the waypoint (docs/design.md §5). The name alone proves nothing
/// either; [`made_by_deployer`] does.
pub fn waypoint_service_account(gw: &Gateway) -> String {
    format!("{}{SERVICE_ACCOUNT_SUFFIX}", gw.name_any())
}

/// True when `sa` is the ServiceAccount the deployer made for `gw`: named
/// [`waypoint_service_account`], in its namespace, labelled with its name,
/// and controlled by it (an owner reference to this Gateway, by uid, with
/// `controller: true`). The deployer never adopts a ServiceAccount it did
/// not create, so one a user made under that name is never a waypoint's.
pub fn made_by_deployer(gw: &Gateway, sa: &ServiceAccount) -> bool {
    let gw_uid = gw.metadata.uid.as_deref().unwrap_or_default();
    sa.metadata.name.as_deref() == Some(waypoint_service_account(gw).as_str())
        && sa.metadata.namespace == gw.metadata.namespace
        && sa.labels().get(GATEWAY_NAME) == Some(&gw.name_any())
        && sa.owner_references().iter().any(|o| {
            o.controller == Some(true)
                && o.kind == "Gateway"
                && o.api_version.starts_with("gateway.networking.k8s.io/")
                && o.name == gw.name_any()
                && o.uid == gw_uid
        })
}

/// The reason `gw`'s waypoint cannot be trusted yet, or `None` when its
/// ServiceAccount is the deployer's.
fn service_account_problem(state: &ClusterState, key: &ObjectKey, gw: &Gateway) -> Option<String> {
    let name = waypoint_service_account(gw);
    match state
        .service_accounts
        .get(&ObjectKey::new(key.namespace.clone(), name.clone()))
    {
        Some(sa) if made_by_deployer(gw, sa) => None,
        Some(_) => Some(format!(
            "ServiceAccount {}/{name} was not made by the waypoint deployer for Gateway {key}",
            key.namespace
        )),
        None => Some(format!(
            "waypoint {key} has no ServiceAccount {}/{name} from the deployer yet",
            key.namespace
        )),
    }
}

/// The waypoint Gateways in `namespace` that run as service account
/// `service_account`: those whose deployer-made ServiceAccount
/// ([`made_by_deployer`]) it is. A ServiceAccount is a waypoint's exactly
/// when this is not empty; the CA (which identity it may obtain) and the
/// config stream (whether it may subscribe, and as which Gateway) both
/// decide with it, so the two can never disagree about who is a waypoint.
pub fn waypoints_run_by<'a>(
    state: &'a ClusterState,
    namespace: &'a str,
    service_account: &'a str,
) -> impl Iterator<Item = &'a ObjectKey> + 'a {
    let sa = state
        .service_accounts
        .get(&ObjectKey::new(namespace, service_account));
    state
        .gateways
        .iter()
        .filter(move |(key, gw)| {
            is_waypoint_gateway(gw)
                && key.namespace == namespace
                && sa.is_some_and(|sa| made_by_deployer(gw, sa))
        })
        .map(|(key, _)| key)
}

/// True when `service_account` in `namespace` is named as some waypoint
/// Gateway's ServiceAccount, whoever made it. A ztunnel never obtains such
/// an identity for a pod: waypoints are not enrolled, and a pod that runs as
/// that name (the deployer's ServiceAccount, or one a user made before the
/// Gateway) must not present the waypoint's identity.
pub fn is_waypoint_service_account_name(
    state: &ClusterState,
    namespace: &str,
    service_account: &str,
) -> bool {
    state.gateways.iter().any(|(key, gw)| {
        is_waypoint_gateway(gw)
            && key.namespace == namespace
            && waypoint_service_account(gw) == service_account
    })
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
            let untrusted = service_account_problem(state, key, gw);
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
                    unavailable: untrusted.unwrap_or_default(),
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
        if waypoint.reference.unavailable.is_empty() {
            reference.identity = waypoint.reference.identity.clone();
        }
        return Some(reference);
    }
    // No identity: nobody passes for a waypoint whose ServiceAccount is not
    // the deployer's, not even a pod running under that name.
    if !waypoint.reference.unavailable.is_empty() {
        return Some(unavailable(&key, waypoint.reference.unavailable.clone()));
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
