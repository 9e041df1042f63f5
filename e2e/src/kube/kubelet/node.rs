//! The kubelet's Node: registered with its address and pod CIDR, reported
//! Ready with a capacity the scheduler can place pods against, and kept
//! alive by renewing its Lease in `kube-node-lease`, which the node
//! lifecycle controller watches.

use std::net::Ipv4Addr;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

/// How often the Lease is renewed (a real kubelet's default).
pub const LEASE_RENEW: Duration = Duration::from_secs(10);

/// How long the Lease lasts without renewal (a real kubelet's default).
pub const LEASE_SECONDS: i32 = 40;

/// The kubelet version the Node reports.
pub const KUBELET_VERSION: &str = "v1.37.2-weft-e2e";

/// The time now, as the API server writes it.
pub fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// The port the API server reaches a node's kubelet on (its streaming
/// endpoints).
pub const KUBELET_PORT: u16 = 10250;

/// Who the node is.
#[derive(Clone, Debug)]
pub struct NodeIdentity {
    /// Its name.
    pub name: String,
    /// Its address on the underlay.
    pub ip: Ipv4Addr,
    /// Its pod CIDR.
    pub pod_cidr: String,
}

fn kube_error(what: &str) -> impl FnOnce(kube::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Creates the Node (or keeps the one a previous kubelet made) and reports
/// it Ready.
pub async fn register(client: &kube::Client, node: &NodeIdentity) -> Result<(), String> {
    let nodes: Api<Node> = Api::all(client.clone());
    let object: Node = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node.name,
            "labels": {
                "kubernetes.io/hostname": node.name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
            },
        },
        "spec": {"podCIDR": node.pod_cidr, "podCIDRs": [node.pod_cidr]},
    }))
    .map_err(|e| format!("the Node object: {e}"))?;
    match nodes.create(&PostParams::default(), &object).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(e) => return Err(format!("registering Node {}: {e}", node.name)),
    }
    report_status(client, node).await
}

/// Reports the node Ready (also the heartbeat of its status).
pub async fn report_status(client: &kube::Client, node: &NodeIdentity) -> Result<(), String> {
    let nodes: Api<Node> = Api::all(client.clone());
    let now = now();
    let condition = |kind: &str, status: &str, reason: &str, message: &str| {
        json!({
            "type": kind, "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": now, "lastTransitionTime": now,
        })
    };
    let capacity = json!({"cpu": "2", "memory": "8Gi", "pods": "110", "ephemeral-storage": "20Gi"});
    let status = json!({
        "status": {
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                condition("Ready", "True", "KubeletReady", "the weft-e2e kubelet is posting ready status"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": node.ip.to_string()},
                {"type": "Hostname", "address": node.name},
            ],
            "capacity": capacity,
            "allocatable": capacity,
            "daemonEndpoints": {"kubeletEndpoint": {"Port": KUBELET_PORT}},
            "nodeInfo": {
                "machineID": node.name, "systemUUID": node.name, "bootID": node.name,
                "kernelVersion": "", "osImage": "weft-e2e netns node",
                "containerRuntimeVersion": "runc://1", "kubeletVersion": KUBELET_VERSION,
                "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64",
            },
        }
    });
    nodes
        .patch_status(&node.name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .map_err(kube_error("reporting the Node's status"))?;
    Ok(())
}

/// Renews the node's Lease (creating it on first use).
pub async fn renew_lease(client: &kube::Client, node: &NodeIdentity) -> Result<(), String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": node.name},
        "spec": {
            "holderIdentity": node.name,
            "leaseDurationSeconds": LEASE_SECONDS,
            "renewTime": k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string(),
        },
    });
    match leases
        .get_opt(&node.name)
        .await
        .map_err(kube_error("reading the node Lease"))?
    {
        Some(_) => {
            leases
                .patch(&node.name, &PatchParams::default(), &Patch::Merge(&lease))
                .await
                .map_err(kube_error("renewing the node Lease"))?;
        }
        None => {
            let object: Lease =
                serde_json::from_value(lease).map_err(|e| format!("the Lease object: {e}"))?;
            leases
                .create(&PostParams::default(), &object)
                .await
                .map_err(kube_error("creating the node Lease"))?;
        }
    }
    Ok(())
}
