//! What ztunnel's state costs per known workload: build a config of N
//! workloads (and a Service per 10), apply it to the same `WorkloadStore`
//! ztunnel uses, and read jemalloc's allocated-bytes counter before and
//! after. Target (docs/design.md §10): ≤ 1 KiB per workload at 100k workloads.

use weft_api::config::{
    Endpoint, HealthStatus, Service, ServicePort, TunnelProtocol, Workload, resource,
};
use weft_runtime::store::{ConfigUpdate, WorkloadStore};

fn allocated() -> anyhow::Result<u64> {
    tikv_jemalloc_ctl::epoch::advance().map_err(|e| anyhow::anyhow!("jemalloc epoch: {e}"))?;
    let bytes = tikv_jemalloc_ctl::stats::allocated::read()
        .map_err(|e| anyhow::anyhow!("jemalloc stats: {e}"))?;
    Ok(bytes as u64)
}

/// A workload shaped like a real pod: a UUID, generated names, one IP.
fn workload(i: u32) -> Workload {
    let ns = format!("team-{}", i % 50);
    let app = format!("app-{}", i / 10);
    Workload {
        uid: format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            i,
            i % 65536,
            i % 4096,
            (i / 7) % 4096,
            u64::from(i) * 2_654_435_761 % (1 << 48)
        ),
        name: format!("{app}-{:05x}-{:05x}", i % 100_000, (i * 31) % 100_000),
        namespace: ns,
        service_account: app.clone(),
        trust_domain: String::new(),
        node: format!("node-{}", i % 200),
        addresses: vec![format!(
            "10.{}.{}.{}",
            64 + (i >> 16) % 64,
            (i >> 8) & 255,
            i & 255
        )],
        protocol: TunnelProtocol::Hbone as i32,
        waypoint: None,
        status: HealthStatus::Healthy as i32,
        mtls_mode: 0,
        authorization_policies: Vec::new(),
        canonical_name: app,
        is_waypoint: false,
    }
}

/// Measures the store's allocated bytes per workload for `n` workloads.
pub fn measure(n: u32) -> anyhow::Result<serde_json::Value> {
    // Everything allocated from here on and still held at the end is the
    // store's: the update is consumed by `apply`.
    let baseline = allocated()?;
    let workloads: Vec<Workload> = (0..n).map(workload).collect();
    let services: Vec<Service> = (0..n / 10)
        .map(|s| Service {
            name: format!("app-{s}"),
            namespace: format!("team-{}", (s * 10) % 50),
            hostname: format!("app-{s}.team-{}.svc.cluster.local", (s * 10) % 50),
            vips: vec![format!("10.96.{}.{}", (s >> 8) & 255, s & 255)],
            ports: vec![ServicePort {
                name: "http".into(),
                service_port: 80,
                target_port: 8080,
                app_protocol: String::new(),
            }],
            endpoints: (0..10)
                .map(|k| Endpoint {
                    workload_uid: workloads[(s * 10 + k) as usize].uid.clone(),
                    ports: [(80, 8080)].into_iter().collect(),
                    status: HealthStatus::Healthy as i32,
                })
                .collect(),
            waypoint: None,
            prefer_same_node: false,
        })
        .collect();
    let resources: Vec<resource::Kind> = workloads
        .into_iter()
        .map(resource::Kind::Workload)
        .chain(services.into_iter().map(resource::Kind::Service))
        .collect();
    let update = ConfigUpdate {
        version: 1,
        full_snapshot: true,
        resources,
        removed: Vec::new(),
    };
    let store = WorkloadStore::default();
    store.apply(update).map_err(|e| anyhow::anyhow!("{e}"))?;
    let held = allocated()?.saturating_sub(baseline);
    let (w, s, _) = store.counts();
    eprintln!(
        "store holds {w} workloads and {s} services in {:.1} MiB",
        held as f64 / 1048576.0
    );
    let per_workload = held as f64 / f64::from(n);
    Ok(serde_json::json!({
        "workloads": n,
        "services": n / 10,
        "store_bytes": held,
        "bytes_per_workload": per_workload.round(),
    }))
}
