//! Services: VIPs, ports, endpoints and waypoint binding.
//!
//! Endpoints come from the Service's EndpointSlices. When a Service has a
//! selector but no EndpointSlice at all (the files registry, where no
//! endpoints controller runs), its endpoints are the pods it selects.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{
    Pod, Service as KubeService, ServicePort as KubeServicePort, ServiceSpec,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use weft_api::config::{Endpoint, HealthStatus, Service, ServicePort, Workload};

use super::ModelConfig;
use super::labels::SERVICE_NAME_LABEL;
use super::waypoints::{self, WaypointFor, WaypointIndex};
use super::workloads::{is_addressable, workload_uid};
use crate::registry::{ClusterState, ObjectKey};

/// A Service spec's cluster IPs (none for headless Services).
pub fn cluster_ips(spec: &ServiceSpec) -> Vec<String> {
    let mut ips: Vec<String> = spec.cluster_ips.clone().unwrap_or_default();
    if let Some(ip) = &spec.cluster_ip
        && !ips.contains(ip)
    {
        ips.insert(0, ip.clone());
    }
    ips.retain(|ip| !ip.is_empty() && ip != "None");
    ips
}

pub(crate) fn build(
    state: &ClusterState,
    config: &ModelConfig,
    waypoints: &WaypointIndex,
    workloads: &BTreeMap<String, Workload>,
) -> BTreeMap<String, Service> {
    // EndpointSlices by the Service they belong to.
    let mut slices: HashMap<ObjectKey, Vec<&EndpointSlice>> = HashMap::new();
    for slice in state.endpoint_slices.values() {
        if let Some(svc) = slice.labels().get(SERVICE_NAME_LABEL) {
            let key = ObjectKey::new(slice.namespace().unwrap_or_default(), svc.clone());
            slices.entry(key).or_default().push(slice);
        }
    }
    // Workload uid by pod IP, for slice endpoints without a Pod targetRef.
    let mut by_ip: HashMap<&str, &str> = HashMap::new();
    for w in workloads.values() {
        for ip in &w.addresses {
            by_ip.insert(ip, &w.uid);
        }
    }
    let mut out = BTreeMap::new();
    for (key, svc) in &state.services {
        let Some(spec) = &svc.spec else { continue };
        if spec.type_.as_deref() == Some("ExternalName") {
            continue;
        }
        let kube_ports = spec.ports.clone().unwrap_or_default();
        let ports = kube_ports.iter().map(service_port).collect();
        let endpoints = match slices.get(key) {
            Some(slices) => from_slices(state, &kube_ports, slices, workloads, &by_ip),
            None => from_selector(state, svc, &kube_ports, workloads),
        };
        let namespace = state
            .namespaces
            .get(&ObjectKey::new("", key.namespace.clone()));
        let waypoint = waypoints::resolve(
            waypoints::requested_waypoint(svc.labels(), &key.namespace),
            namespace.and_then(|ns| waypoints::requested_waypoint(ns.labels(), &key.namespace)),
            waypoints,
            WaypointFor::serves_services,
        )
        // A waypoint's own Service is never sent through a waypoint.
        .filter(|_| !waypoints.contains_key(key));
        out.insert(
            key.to_string(),
            Service {
                name: key.name.clone(),
                namespace: key.namespace.clone(),
                hostname: format!(
                    "{}.{}.svc.{}",
                    key.name, key.namespace, config.cluster_domain
                ),
                vips: cluster_ips(spec),
                ports,
                endpoints,
                waypoint,
                prefer_same_node: matches!(
                    spec.traffic_distribution.as_deref(),
                    Some("PreferClose" | "PreferSameNode")
                ),
            },
        );
    }
    out
}

fn service_port(p: &KubeServicePort) -> ServicePort {
    ServicePort {
        name: p.name.clone().unwrap_or_default(),
        service_port: port_u32(p.port),
        target_port: match &p.target_port {
            None => port_u32(p.port),
            Some(IntOrString::Int(i)) => port_u32(*i),
            Some(IntOrString::String(s)) => s.parse().unwrap_or(0),
        },
        app_protocol: p.app_protocol.clone().unwrap_or_default(),
    }
}

fn port_u32(p: i32) -> u32 {
    u32::try_from(p).unwrap_or(0)
}

fn from_slices(
    state: &ClusterState,
    kube_ports: &[KubeServicePort],
    slices: &[&EndpointSlice],
    workloads: &BTreeMap<String, Workload>,
    by_ip: &HashMap<&str, &str>,
) -> Vec<Endpoint> {
    let mut out: BTreeMap<String, Endpoint> = BTreeMap::new();
    for slice in slices {
        // service port -> target port, by the port's name.
        let slice_ports: HashMap<String, i32> = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| Some((p.name.clone().unwrap_or_default(), p.port?)))
            .collect();
        let ports: BTreeMap<u32, u32> = kube_ports
            .iter()
            .filter_map(|p| {
                let target = slice_ports.get(p.name.as_deref().unwrap_or(""))?;
                Some((port_u32(p.port), port_u32(*target)))
            })
            .collect();
        for ep in slice.endpoints.iter().flatten() {
            let from_ref = ep
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| {
                    let key = ObjectKey::new(
                        r.namespace
                            .clone()
                            .unwrap_or_else(|| slice.namespace().unwrap_or_default()),
                        r.name.clone().unwrap_or_default(),
                    );
                    state.pods.get(&key).map(|p| workload_uid(p))
                });
            let uid = from_ref.or_else(|| {
                ep.addresses
                    .iter()
                    .find_map(|a| by_ip.get(a.as_str()).map(|u| u.to_string()))
            });
            let Some(uid) = uid.filter(|u| workloads.contains_key(u)) else {
                continue;
            };
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            out.insert(
                uid.clone(),
                Endpoint {
                    workload_uid: uid,
                    ports: ports.clone().into_iter().collect(),
                    status: if ready {
                        HealthStatus::Healthy
                    } else {
                        HealthStatus::Unhealthy
                    } as i32,
                },
            );
        }
    }
    out.into_values().collect()
}

fn from_selector(
    state: &ClusterState,
    svc: &KubeService,
    kube_ports: &[KubeServicePort],
    workloads: &BTreeMap<String, Workload>,
) -> Vec<Endpoint> {
    let Some(selector) = svc.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
        return Vec::new();
    };
    if selector.is_empty() {
        return Vec::new();
    }
    let namespace = svc.namespace().unwrap_or_default();
    let mut out = Vec::new();
    for pod in state.pods.values() {
        if pod.namespace().as_deref() != Some(namespace.as_str())
            || !is_addressable(pod)
            || !selector.iter().all(|(k, v)| pod.labels().get(k) == Some(v))
        {
            continue;
        }
        let uid = workload_uid(pod);
        let Some(workload) = workloads.get(&uid) else {
            continue;
        };
        let ports = kube_ports
            .iter()
            .filter_map(|p| Some((port_u32(p.port), target_port_on(pod, p)?)))
            .collect();
        out.push(Endpoint {
            workload_uid: uid,
            ports,
            status: workload.status,
        });
    }
    out
}

/// A Service port's target on one pod: a number, or a named container port.
fn target_port_on(pod: &Pod, p: &KubeServicePort) -> Option<u32> {
    match &p.target_port {
        None => Some(port_u32(p.port)),
        Some(IntOrString::Int(i)) => Some(port_u32(*i)),
        Some(IntOrString::String(name)) => pod
            .spec
            .as_ref()?
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .find(|cp| cp.name.as_deref() == Some(name.as_str()))
            .map(|cp| port_u32(cp.container_port)),
    }
}
