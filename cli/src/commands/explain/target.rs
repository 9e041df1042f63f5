//! What `--from` and `--to` name, resolved against the model.

use std::net::IpAddr;

use serde::Serialize;
use weft_api::config::{Service, ServicePort, TunnelProtocol, Workload};
use weft_cluster::model::Model;
use weft_cluster::model::workloads::workload_uid;
use weft_cluster::registry::{ClusterState, ObjectKey};

use crate::exit::{CliError, Result};

/// The client of the connection.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Client {
    /// `pod ns/name` or `service account ns/sa`.
    pub description: String,
    /// Its SPIFFE ID, when it is in the mesh.
    pub identity: Option<String>,
    /// Its namespace.
    pub namespace: String,
    /// Its address, when known (a pod's).
    pub address: Option<IpAddr>,
    /// Its node, when known.
    pub node: Option<String>,
    /// Its traffic is captured and tunnelled (HBONE).
    pub in_mesh: bool,
    /// Its workload, for a pod: routing never sends a waypoint's own
    /// connections back to it.
    #[serde(skip)]
    pub workload: Option<Workload>,
}

/// One workload the connection may land on.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// The workload.
    pub workload: Workload,
    /// The port on it.
    pub port: u16,
}

/// The destination of the connection.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    /// `service ns/name:port` or `pod ns/name:port`.
    pub description: String,
    /// `service` or `pod`.
    pub kind: &'static str,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The port asked for (the Service port for a Service).
    pub port: u16,
    /// The Service's hostname (or the pod's name).
    pub host: String,
    /// The Service's first VIP, when it has one.
    pub vip: Option<IpAddr>,
    /// The Service port's `appProtocol` (a pod port declares none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
    /// The workloads it may land on.
    #[serde(skip)]
    pub endpoints: Vec<Endpoint>,
    /// The Service (for a Service destination).
    #[serde(skip)]
    pub service: Option<Service>,
}

fn spiffe(w: &Workload) -> String {
    format!(
        "spiffe://{}/ns/{}/sa/{}",
        w.trust_domain, w.namespace, w.service_account
    )
}

/// A workload's first address.
pub fn first_ip(w: &Workload) -> Option<IpAddr> {
    w.addresses.iter().find_map(|a| a.parse().ok())
}

fn in_mesh(w: &Workload) -> bool {
    w.protocol == TunnelProtocol::Hbone as i32
}

/// `ns/name` of a pod or a name in `default_ns`; strips `prefix/` if given.
fn split_name<'a>(spec: &'a str, default_ns: &'a str) -> (&'a str, &'a str) {
    match spec.split_once('/') {
        Some((ns, name)) => (ns, name),
        None => (default_ns, spec),
    }
}

fn pod_workload<'m>(
    state: &ClusterState,
    model: &'m Model,
    ns: &str,
    name: &str,
) -> Result<Option<&'m Workload>> {
    let Some(pod) = state.pods.get(&ObjectKey::new(ns, name)) else {
        return Ok(None);
    };
    model
        .workloads
        .get(&workload_uid(pod))
        .map(Some)
        .ok_or_else(|| {
            CliError::other(format!(
                "pod {ns}/{name} has no address yet (not scheduled, not running, or host network)"
            ))
        })
}

/// Resolves `--from`.
pub fn resolve_client(
    spec: &str,
    default_ns: &str,
    state: &ClusterState,
    model: &Model,
    trust_domain: &str,
) -> Result<Client> {
    let from_pod = |w: &Workload| Client {
        description: format!("pod {}/{}", w.namespace, w.name),
        identity: in_mesh(w).then(|| spiffe(w)),
        namespace: w.namespace.clone(),
        address: first_ip(w),
        node: Some(w.node.clone()).filter(|n| !n.is_empty()),
        in_mesh: in_mesh(w),
        workload: Some(w.clone()),
    };
    let from_sa = |ns: &str, sa: &str| Client {
        description: format!("service account {ns}/{sa}"),
        identity: Some(format!("spiffe://{trust_domain}/ns/{ns}/sa/{sa}")),
        namespace: ns.to_string(),
        address: None,
        node: None,
        in_mesh: true,
        workload: None,
    };
    if let Some(id) = spec.strip_prefix("spiffe://") {
        let ns = super::super::identity_namespace(spec).ok_or_else(|| {
            CliError::Usage(format!(
                "--from {spec}: a SPIFFE ID must be spiffe://<td>/ns/<ns>/sa/<sa>"
            ))
        })?;
        let sa = id.rsplit('/').next().unwrap_or_default();
        let mut c = from_sa(ns, sa);
        c.identity = Some(spec.to_string());
        return Ok(c);
    }
    if let Some(rest) = spec.strip_prefix("sa/") {
        let (ns, sa) = split_name(rest, default_ns);
        return Ok(from_sa(ns, sa));
    }
    if let Some(rest) = spec.strip_prefix("pod/") {
        let (ns, name) = split_name(rest, default_ns);
        return pod_workload(state, model, ns, name)?
            .map(from_pod)
            .ok_or_else(|| CliError::NotFound(format!("pod {ns}/{name}: not found")));
    }
    let explicit_ns = spec.contains('/');
    let (ns, name) = split_name(spec, default_ns);
    if let Some(w) = pod_workload(state, model, ns, name)? {
        return Ok(from_pod(w));
    }
    if explicit_ns {
        // Not a pod: a service account, as `ns/sa`.
        return Ok(from_sa(ns, name));
    }
    Err(CliError::NotFound(format!(
        "pod {ns}/{name}: not found (a service account is written NS/SA or sa/NS/SA)"
    )))
}

/// `name:port` → (name, port).
fn split_port(spec: &str) -> Result<(&str, u16)> {
    let (name, port) = spec
        .rsplit_once(':')
        .ok_or_else(|| CliError::Usage(format!("--to {spec}: give a port, e.g. {spec}:80")))?;
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| CliError::Usage(format!("--to {spec}: {port:?} is not a port")))?;
    Ok((name, port))
}

fn service_destination(
    model: &Model,
    ns: &str,
    name: &str,
    port: u16,
) -> Result<Option<Destination>> {
    let Some(svc) = model.services.get(&format!("{ns}/{name}")) else {
        return Ok(None);
    };
    let service_port: &ServicePort = svc
        .ports
        .iter()
        .find(|p| p.service_port == u32::from(port))
        .ok_or_else(|| {
            let ports: Vec<String> = svc
                .ports
                .iter()
                .map(|p| p.service_port.to_string())
                .collect();
            CliError::NotFound(format!(
                "service {ns}/{name} has no port {port} (ports: {})",
                ports.join(", ")
            ))
        })?;
    let endpoints = svc
        .endpoints
        .iter()
        .filter_map(|ep| {
            let workload = model.workloads.get(&ep.workload_uid)?.clone();
            let target = ep
                .ports
                .get(&u32::from(port))
                .copied()
                .filter(|p| *p != 0)
                .unwrap_or(if service_port.target_port != 0 {
                    service_port.target_port
                } else {
                    u32::from(port)
                });
            Some(Endpoint {
                workload,
                port: u16::try_from(target).unwrap_or(port),
            })
        })
        .collect();
    Ok(Some(Destination {
        description: format!("service {ns}/{name}:{port}"),
        kind: "service",
        namespace: ns.to_string(),
        name: name.to_string(),
        port,
        host: svc.hostname.clone(),
        vip: svc.vips.iter().find_map(|v| v.parse().ok()),
        app_protocol: Some(service_port.app_protocol.clone()).filter(|p| !p.is_empty()),
        endpoints,
        service: Some(svc.clone()),
    }))
}

fn pod_destination(
    model: &Model,
    state: &ClusterState,
    ns: &str,
    name: &str,
    port: u16,
) -> Result<Option<Destination>> {
    let Some(w) = pod_workload(state, model, ns, name)? else {
        return Ok(None);
    };
    Ok(Some(Destination {
        description: format!("pod {ns}/{name}:{port}"),
        kind: "pod",
        namespace: ns.to_string(),
        name: name.to_string(),
        port,
        host: first_ip(w).map(|ip| ip.to_string()).unwrap_or_default(),
        vip: None,
        app_protocol: None,
        endpoints: vec![Endpoint {
            workload: w.clone(),
            port,
        }],
        service: None,
    }))
}

/// Resolves `--to`.
pub fn resolve_destination(
    spec: &str,
    default_ns: &str,
    state: &ClusterState,
    model: &Model,
) -> Result<Destination> {
    let (name_part, port) = split_port(spec)?;
    if let Some(rest) = name_part.strip_prefix("pod/") {
        let (ns, name) = split_name(rest, default_ns);
        return pod_destination(model, state, ns, name, port)?
            .ok_or_else(|| CliError::NotFound(format!("pod {ns}/{name}: not found")));
    }
    if let Some(rest) = name_part
        .strip_prefix("svc/")
        .or_else(|| name_part.strip_prefix("service/"))
    {
        let (ns, name) = split_name(rest, default_ns);
        return service_destination(model, ns, name, port)?
            .ok_or_else(|| CliError::NotFound(format!("service {ns}/{name}: not found")));
    }
    // A Service hostname: name.ns.svc[.domain].
    if let Some((name, rest)) = name_part.split_once('.')
        && let Some((ns, tail)) = rest.split_once('.')
        && (tail == "svc" || tail.starts_with("svc."))
    {
        return service_destination(model, ns, name, port)?
            .ok_or_else(|| CliError::NotFound(format!("service {ns}/{name}: not found")));
    }
    let (ns, name) = split_name(name_part, default_ns);
    if let Some(d) = service_destination(model, ns, name, port)? {
        return Ok(d);
    }
    pod_destination(model, state, ns, name, port)?
        .ok_or_else(|| CliError::NotFound(format!("no service or pod {ns}/{name}")))
}
