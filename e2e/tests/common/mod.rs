//! Shared by the scenario tests: a mesh cluster (ztunnel required, so a
//! missing ztunnel fails loudly instead of passing vacuously), one cluster
//! at a time per test binary (the machines have 2 cores), and the waits.

#![allow(dead_code)]

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use weft_e2e::app::protocol::LoadReport;
use weft_e2e::{Cluster, ClusterConfig, Pod, ZtunnelMode};

/// How long the mesh may take to converge after a change.
pub const CONVERGE: Duration = Duration::from_secs(20);

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Holds the per-binary cluster lock.
pub fn serial() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// A two-node cluster with ztunnel on every node.
pub fn mesh_cluster() -> Cluster {
    Cluster::up(ClusterConfig {
        ztunnel: ZtunnelMode::On,
        ..ClusterConfig::default()
    })
    .expect("cluster up")
}

/// Runs the load generator in `from` against `to` for `seconds` at `rate`
/// new connections per second, and returns its report.
pub fn load(from: &Pod, to: std::net::SocketAddr, rate: u32, seconds: u32) -> LoadReport {
    let out = from
        .app_command()
        .args([
            "load",
            &to.to_string(),
            "--rate",
            &rate.to_string(),
            "--duration-seconds",
            &seconds.to_string(),
        ])
        .output()
        .expect("run load");
    assert!(
        out.status.success(),
        "load: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("load report")
}

/// The identity of a pod.
pub fn identity(pod: &Pod) -> String {
    format!(
        "spiffe://cluster.local/ns/{}/sa/{}",
        pod.namespace(),
        pod.service_account()
    )
}
