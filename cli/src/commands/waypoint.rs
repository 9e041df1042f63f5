//! `weftctl waypoint apply|list|delete`: waypoints are Gateways of class
//! `weft-waypoint` with the HBONE listener (docs/design.md §2); the controller
//! deploys them (Kubernetes) or the e2e harness starts them (local runs).

use std::collections::BTreeMap;

use gateway_api::gateways::Gateway;
use kube::ResourceExt;
use serde::Serialize;
use serde_json::{Value, json};
use weft_cluster::model::labels::{
    GATEWAY_NAME, HBONE_PORT, USE_WAYPOINT, WAYPOINT_CLASS, WAYPOINT_FOR,
};
use weft_cluster::model::waypoints::is_waypoint_gateway;
use weft_cluster::registry::{ClusterState, ObjectKey};

use crate::args::{
    GlobalArgs, WaypointApplyArgs, WaypointCommand, WaypointDeleteArgs, WaypointListArgs,
};
use crate::cluster::Cluster;
use crate::exit::{CliError, Outcome, Result};
use crate::output::{self, Table, cell};

/// Runs a `waypoint` subcommand.
pub async fn run(global: &GlobalArgs, command: &WaypointCommand) -> Result<Outcome> {
    let cluster = Cluster::connect(global).await?;
    match command {
        WaypointCommand::Apply(args) => apply(&cluster, args).await,
        WaypointCommand::List(args) => list(global, &cluster, args).await,
        WaypointCommand::Delete(args) => delete(&cluster, args).await,
    }
}

/// The Gateway `waypoint apply` writes.
pub fn gateway_manifest(namespace: &str, name: &str, serves: &str) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": { WAYPOINT_FOR: serves },
        },
        "spec": {
            "gatewayClassName": WAYPOINT_CLASS,
            "listeners": [{ "name": "mesh", "port": HBONE_PORT, "protocol": "HBONE" }],
        },
    })
}

async fn apply(cluster: &Cluster, args: &WaypointApplyArgs) -> Result<Outcome> {
    let state = cluster.state().await?;
    if !state
        .namespaces
        .contains_key(&ObjectKey::new("", args.namespace.clone()))
    {
        return Err(CliError::NotFound(format!(
            "namespace {:?}: not found",
            args.namespace
        )));
    }
    let manifest = gateway_manifest(&args.namespace, &args.name, args.serves.label());
    cluster
        .apply_gateway(&args.namespace, &args.name, &manifest)
        .await?;
    let mut message = format!(
        "gateway/{} applied in {} (class {WAYPOINT_CLASS}, {WAYPOINT_FOR}={})\n",
        args.name,
        args.namespace,
        args.serves.label()
    );
    if args.enroll_namespace {
        cluster
            .label_namespace(&args.namespace, USE_WAYPOINT, Some(&args.name))
            .await?;
        message.push_str(&format!(
            "namespace/{} now uses it ({USE_WAYPOINT}={})\n",
            args.namespace, args.name
        ));
    }
    output::print(&message);
    Ok(Outcome::Ok)
}

async fn delete(cluster: &Cluster, args: &WaypointDeleteArgs) -> Result<Outcome> {
    cluster.delete_gateway(&args.namespace, &args.name).await?;
    output::print(&format!(
        "gateway/{} deleted from {}\n",
        args.name, args.namespace
    ));
    Ok(Outcome::Ok)
}

/// One waypoint as `waypoint list` shows it.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WaypointStatus {
    /// Gateway namespace.
    pub namespace: String,
    /// Gateway name.
    pub name: String,
    /// `weft.dev/waypoint-for`.
    pub serves: String,
    /// Addresses ztunnels send to (Service VIP, status address, else its
    /// pods' IPs), as the model builder picks them.
    pub addresses: Vec<String>,
    /// Its pods (`ready/total`).
    pub pods_ready: usize,
    /// Its pods.
    pub pods: usize,
    /// True when it has an address and a ready pod.
    pub ready: bool,
    /// Its Gateway's `Programmed` condition, if reported.
    pub programmed: Option<String>,
    /// What binds to it: `namespace/x`, `service/ns/x`, `pod/ns/x`.
    pub bound: Vec<String>,
}

/// Every waypoint of the cluster and whether it can serve.
pub fn waypoint_statuses(
    state: &ClusterState,
    config: &weft_cluster::model::ModelConfig,
) -> Vec<WaypointStatus> {
    let model = weft_cluster::model::build(state, config);
    let mut pods: BTreeMap<ObjectKey, (usize, usize, Vec<String>)> = BTreeMap::new();
    for w in model.workloads.values().filter(|w| w.is_waypoint) {
        let gw = state
            .pods
            .get(&ObjectKey::new(w.namespace.clone(), w.name.clone()))
            .and_then(|p| p.labels().get(GATEWAY_NAME).cloned())
            .unwrap_or_default();
        let entry = pods
            .entry(ObjectKey::new(w.namespace.clone(), gw))
            .or_default();
        entry.1 += 1;
        entry.2.extend(w.addresses.iter().cloned());
        if w.status == weft_api::config::HealthStatus::Healthy as i32 {
            entry.0 += 1;
        }
    }
    let mut bound: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for w in model.workloads.values() {
        if let Some(r) = &w.waypoint {
            bound
                .entry((r.namespace.clone(), r.name.clone()))
                .or_default()
                .push(format!("pod/{}/{}", w.namespace, w.name));
        }
    }
    for s in model.services.values() {
        if let Some(r) = &s.waypoint {
            bound
                .entry((r.namespace.clone(), r.name.clone()))
                .or_default()
                .push(format!("service/{}/{}", s.namespace, s.name));
        }
    }
    state
        .gateways
        .iter()
        .filter(|(_, gw)| is_waypoint_gateway(gw))
        .map(|(key, gw)| status_of(key, gw, &pods, &bound, state))
        .collect()
}

fn status_of(
    key: &ObjectKey,
    gw: &Gateway,
    pods: &BTreeMap<ObjectKey, (usize, usize, Vec<String>)>,
    bound: &BTreeMap<(String, String), Vec<String>>,
    state: &ClusterState,
) -> WaypointStatus {
    let (ready_pods, total, pod_ips) = pods.get(key).cloned().unwrap_or_default();
    let mut addresses: Vec<String> = state
        .services
        .get(key)
        .and_then(|s| s.spec.as_ref())
        .map(weft_cluster::model::services_cluster_ips)
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
        // No VIP yet: ztunnels send to the waypoint's pods directly.
        addresses = pod_ips;
    }
    let programmed = gw
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Programmed"))
        .map(|c| c.status.clone());
    let mut binds: Vec<String> = state
        .namespaces
        .values()
        .filter(|ns| {
            ns.labels().get(USE_WAYPOINT) == Some(&key.name)
                && ns
                    .labels()
                    .get(weft_cluster::model::labels::USE_WAYPOINT_NAMESPACE)
                    .is_none_or(|n| *n == key.namespace)
        })
        .map(|ns| format!("namespace/{}", ns.name_any()))
        .collect();
    binds.extend(
        bound
            .get(&(key.namespace.clone(), key.name.clone()))
            .cloned()
            .unwrap_or_default(),
    );
    WaypointStatus {
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        serves: gw
            .labels()
            .get(WAYPOINT_FOR)
            .cloned()
            .unwrap_or_else(|| "service".into()),
        ready: ready_pods > 0 && programmed.as_deref() != Some("False"),
        addresses,
        pods_ready: ready_pods,
        pods: total,
        programmed,
        bound: binds,
    }
}

async fn list(global: &GlobalArgs, cluster: &Cluster, args: &WaypointListArgs) -> Result<Outcome> {
    let state = cluster.state().await?;
    let mut view = waypoint_statuses(&state, cluster.model_config());
    view.retain(|w| args.namespace.as_ref().is_none_or(|ns| *ns == w.namespace));
    let text = output::render(global.output, &view, |wide| {
        let mut header = vec!["NAMESPACE", "NAME", "FOR", "ADDRESSES", "PODS", "READY"];
        if wide {
            header.extend(["PROGRAMMED", "BOUND"]);
        }
        let mut t = Table::new(header);
        for w in &view {
            let mut row = vec![
                w.namespace.clone(),
                w.name.clone(),
                w.serves.clone(),
                cell(w.addresses.join(",")),
                format!("{}/{}", w.pods_ready, w.pods),
                if w.ready { "yes" } else { "no" }.to_string(),
            ];
            if wide {
                row.extend([
                    cell(w.programmed.clone().unwrap_or_default()),
                    cell(w.bound.join(",")),
                ]);
            }
            t.row(row);
        }
        t
    })?;
    output::print(&text);
    Ok(Outcome::Ok)
}
