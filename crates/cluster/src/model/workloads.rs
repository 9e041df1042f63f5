//! Pods to Workloads: enrollment, identity, node, waypoint, mTLS, policies.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::ResourceExt;
use weft_api::config::{HealthStatus, TunnelProtocol, Workload};

use super::ModelConfig;
use super::authorization::CompiledPolicies;
use super::labels::{DATAPLANE_AMBIENT, DATAPLANE_MODE, DATAPLANE_NONE, GATEWAY_NAME};
use super::mtls::MtlsIndex;
use super::waypoints::{self, WaypointFor, WaypointIndex};
use crate::registry::{ClusterState, ObjectKey};

/// True when the pod is in the mesh: its own label says `ambient`, or its
/// namespace's does and the pod does not say `none`.
pub fn is_enrolled(pod: &Pod, namespace: Option<&Namespace>) -> bool {
    match pod.labels().get(DATAPLANE_MODE).map(String::as_str) {
        Some(DATAPLANE_AMBIENT) => true,
        Some(DATAPLANE_NONE) => false,
        _ => namespace
            .and_then(|ns| ns.labels().get(DATAPLANE_MODE))
            .is_some_and(|mode| mode == DATAPLANE_AMBIENT),
    }
}

/// The uid the config stream keys a pod's workload by. Pods from the files
/// registry may have no `metadata.uid`; they get a stable stand-in.
pub fn workload_uid(pod: &Pod) -> String {
    match pod.metadata.uid.as_deref() {
        Some(uid) if !uid.is_empty() => uid.to_string(),
        _ => format!(
            "pod/{}/{}",
            pod.namespace().unwrap_or_default(),
            pod.name_any()
        ),
    }
}

/// The pod's IPs, primary first.
pub fn pod_ips(pod: &Pod) -> Vec<String> {
    let Some(status) = &pod.status else {
        return Vec::new();
    };
    let mut ips: Vec<String> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|ip| ip.ip.clone())
        .collect();
    if let Some(ip) = &status.pod_ip
        && !ips.contains(ip)
    {
        ips.insert(0, ip.clone());
    }
    ips
}

/// The service account a pod runs as.
pub fn service_account(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".to_string())
}

/// The node a pod is scheduled to.
pub fn node_name(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref())
}

/// Pods that take part in addressing: scheduled, with an IP, not finished,
/// and not on the host network (their address is the node's). A pod being
/// deleted still is: its containers run through their grace period, and
/// what they send and receive meanwhile keeps its identity and policy
/// (its health says it takes no new load-balanced connections).
pub(crate) fn is_addressable(pod: &Pod) -> bool {
    let host_network = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    let finished = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed");
    let has_ip = pod.status.as_ref().is_some_and(|s| {
        s.pod_ip.as_deref().is_some_and(|ip| !ip.is_empty())
            || s.pod_ips.as_ref().is_some_and(|ips| !ips.is_empty())
    });
    !host_network && !finished && has_ip
}

fn health(pod: &Pod) -> HealthStatus {
    // Terminating: no new load-balanced connections, as the EndpointSlice
    // controller marks its endpoints not ready.
    if pod.metadata.deletion_timestamp.is_some() {
        return HealthStatus::Unhealthy;
    }
    let ready = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
    match ready {
        // A pod without a Ready condition (files mode) is taken as healthy.
        None => HealthStatus::Healthy,
        Some(c) if c.status == "True" => HealthStatus::Healthy,
        Some(_) => HealthStatus::Unhealthy,
    }
}

fn canonical_name(pod: &Pod) -> String {
    let labels = pod.labels();
    if let Some(name) = labels
        .get("app.kubernetes.io/name")
        .or_else(|| labels.get("app"))
    {
        return name.clone();
    }
    // A ReplicaSet's pods: strip the template hash to get the Deployment.
    if let Some(owner) = pod.owner_references().first() {
        if owner.kind == "ReplicaSet"
            && let Some(hash) = labels.get("pod-template-hash")
            && let Some(deployment) = owner.name.strip_suffix(&format!("-{hash}"))
        {
            return deployment.to_string();
        }
        return owner.name.clone();
    }
    pod.name_any()
}

pub(crate) fn build(
    state: &ClusterState,
    config: &ModelConfig,
    waypoints: &WaypointIndex,
    peer_auth: &MtlsIndex<'_>,
    policies: &CompiledPolicies,
) -> BTreeMap<String, Workload> {
    // Collected first and turned into a map at once: a sorted bulk build
    // moves each (large) Workload far less than one insert at a time.
    let mut out = Vec::with_capacity(state.pods.len());
    for pod in state.pods.values() {
        if !is_addressable(pod) {
            continue;
        }
        let namespace_name = pod.namespace().unwrap_or_default();
        let namespace = state
            .namespaces
            .get(&ObjectKey::new("", namespace_name.clone()));
        let enrolled = is_enrolled(pod, namespace.map(AsRef::as_ref));
        let is_waypoint = pod.labels().get(GATEWAY_NAME).is_some_and(|gw| {
            waypoints.contains_key(&ObjectKey::new(namespace_name.clone(), gw.clone()))
        });
        // A waypoint is never bound to a waypoint, and only enrolled pods are.
        let waypoint = if enrolled && !is_waypoint {
            waypoints::resolve(
                waypoints::requested_waypoint(pod.labels(), &namespace_name),
                namespace
                    .and_then(|ns| waypoints::requested_waypoint(ns.labels(), &namespace_name)),
                waypoints,
                WaypointFor::serves_workloads,
            )
        } else {
            None
        };
        let authorization_policies = policies
            .selectors
            .iter()
            .filter(|p| p.namespace.as_ref().is_none_or(|ns| *ns == namespace_name))
            .filter(|p| p.selector.matches(pod.labels()))
            .map(|p| p.key.clone())
            .collect();
        let workload = Workload {
            uid: workload_uid(pod),
            name: pod.name_any(),
            namespace: namespace_name.clone(),
            service_account: service_account(pod),
            trust_domain: config.trust_domain.clone(),
            node: node_name(pod).unwrap_or_default().to_string(),
            addresses: pod_ips(pod),
            protocol: if enrolled || is_waypoint {
                TunnelProtocol::Hbone as i32
            } else {
                TunnelProtocol::None as i32
            },
            waypoint,
            status: health(pod) as i32,
            mtls_mode: peer_auth.mode_for(&namespace_name, pod.labels()) as i32,
            authorization_policies,
            canonical_name: canonical_name(pod),
            is_waypoint,
        };
        out.push((workload.uid.clone(), workload));
    }
    out.into_iter().collect()
}
