//! `weft-bench controller`: how fast a pod change reaches every proxy.
//!
//! One process runs the controller's real pipeline and gRPC server (TLS) and
//! N subscribers that behave like ztunnels: they subscribe over their own
//! HTTP/2 connection, decode every response and ACK it. The cluster has
//! `pods` pods on `subscribers` nodes behind `services` Services (with
//! EndpointSlices). Once every subscriber holds the snapshot, one pod changes
//! per `interval_ms` for `duration_secs`; a change's propagation time runs
//! from the registry update to the moment the last subscriber has decoded it.
//! The last line is JSON with `p50_propagation_ms`, `p99_propagation_ms` and
//! `rss_mib` (the whole process: server and all subscribers; each subscriber
//! keeps a receive buffer the size of the snapshot, `snapshot_bytes`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use weft_api::config::config_discovery_client::ConfigDiscoveryClient;
use weft_api::config::{
    Ack, ConfigRequest, ProxyInfo, ProxyKind, ResourceType, Subscribe, config_request, resource,
};
use weft_cluster::model::{self, Model, ModelConfig};
use weft_cluster::registry::{AnyObject, ClusterState, Kind};
use weft_controller::auth::AllowAll;
use weft_controller::pipeline::{self, Debounce};
use weft_controller::server::{self, ConfigServer, ServerTls};
use weft_hbone::CertificateAuthority;

/// Flags of `weft-bench controller`.
#[derive(Clone, Debug, clap::Args)]
pub struct ControllerBenchArgs {
    /// Pods in the cluster.
    #[arg(long, default_value_t = 10_000)]
    pub pods: usize,
    /// Services (each with an EndpointSlice over pods/services pods).
    #[arg(long, default_value_t = 1_000)]
    pub services: usize,
    /// Subscribers (ztunnels, one per node, each on its own connection).
    #[arg(long, default_value_t = 1_000)]
    pub subscribers: usize,
    /// How long to keep changing pods, in seconds.
    #[arg(long, default_value_t = 60)]
    pub duration_secs: u64,
    /// Time between two pod changes, in milliseconds.
    #[arg(long, default_value_t = 1_000)]
    pub interval_ms: u64,
    /// The controller's debounce (quiet time), in milliseconds.
    #[arg(long, default_value_t = 20)]
    pub debounce_ms: u64,
    /// Subscribers that may be receiving their snapshot at once.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
}

const NAMESPACES: usize = 100;

fn manifests(args: &ControllerBenchArgs) -> Vec<serde_json::Value> {
    let mut out = Vec::with_capacity(NAMESPACES + args.pods + 2 * args.services);
    for n in 0..NAMESPACES {
        out.push(json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": format!("ns-{n}"), "labels": {"weft.dev/dataplane-mode": "ambient"}}}));
    }
    for i in 0..args.pods {
        out.push(pod(i, args, 0));
    }
    let per_service = (args.pods / args.services.max(1)).max(1);
    for s in 0..args.services {
        let ns = format!("ns-{}", s % NAMESPACES);
        out.push(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("svc-{s}"), "namespace": ns},
            "spec": {"clusterIP": format!("10.96.{}.{}", s / 250, s % 250 + 1),
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}));
        // Pods i with i % NAMESPACES == s % NAMESPACES live in the same namespace.
        let endpoints: Vec<serde_json::Value> = (0..per_service)
            .map(|k| (s % NAMESPACES) + NAMESPACES * ((s / NAMESPACES) * per_service + k))
            .filter(|i| *i < args.pods)
            .map(|i| json!({"addresses": [pod_ip(i)],
                            "targetRef": {"kind": "Pod", "name": format!("pod-{i}"), "namespace": ns}}))
            .collect();
        out.push(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("svc-{s}-x"), "namespace": ns,
                         "labels": {"kubernetes.io/service-name": format!("svc-{s}")}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}], "endpoints": endpoints}));
    }
    out
}

fn pod_ip(i: usize) -> String {
    format!("10.{}.{}.{}", 128 + i / 65536, (i / 256) % 256, i % 256)
}

/// Pod `i`; `generation` goes into a label that the workload's canonical
/// name reflects, so subscribers can tell which change they received.
fn pod(i: usize, args: &ControllerBenchArgs, generation: u64) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("pod-{i}"), "namespace": format!("ns-{}", i % NAMESPACES),
                     "uid": format!("uid-{i}"), "labels": {"app": format!("gen-{generation}")}},
        "spec": {"nodeName": format!("node-{}", i % args.subscribers.max(1)), "serviceAccountName": "app",
                 "containers": [{"name": "app"}]},
        "status": {"podIP": pod_ip(i)}})
}

fn insert(state: &mut ClusterState, obj: serde_json::Value) -> anyhow::Result<()> {
    let api_version = obj["apiVersion"].as_str().unwrap_or_default().to_string();
    let kind = obj["kind"].as_str().unwrap_or_default().to_string();
    let kind =
        Kind::from_type_meta(&api_version, &kind).context("bench manifest of unknown kind")?;
    AnyObject::from_value(kind, obj)?.insert_into(state);
    Ok(())
}

/// Per change: how many subscribers have it, and when the last one got it.
struct Arrivals {
    start: Instant,
    counts: Vec<AtomicUsize>,
    last_nanos: Vec<AtomicU64>,
    snapshots: AtomicUsize,
}

impl Arrivals {
    fn record(&self, generation: u64) {
        let Some(i) = usize::try_from(generation)
            .ok()
            .filter(|i| *i < self.counts.len())
        else {
            return;
        };
        let now = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_nanos[i].fetch_max(now, Ordering::Relaxed);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
    }
}

async fn subscriber(
    endpoint: tonic::transport::Endpoint,
    node: usize,
    arrivals: Arc<Arrivals>,
    snapshot_permits: Arc<Semaphore>,
) -> anyhow::Result<()> {
    let permit = snapshot_permits.acquire_owned().await?;
    let channel: Channel = endpoint.connect().await?;
    let mut client = ConfigDiscoveryClient::new(channel).max_decoding_message_size(256 << 20);
    let (tx, rx) = mpsc::channel(4);
    tx.send(ConfigRequest {
        kind: Some(config_request::Kind::Subscribe(Subscribe {
            proxy: Some(ProxyInfo {
                id: format!("ztunnel~node-{node}~bench"),
                kind: ProxyKind::Ztunnel as i32,
                node: format!("node-{node}"),
                ..ProxyInfo::default()
            }),
            types: vec![ResourceType::Workload as i32, ResourceType::Service as i32],
        })),
    })
    .await?;
    let mut responses = client
        .subscribe(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut permit = Some(permit);
    while let Some(response) = responses.message().await? {
        for r in &response.resources {
            if let Some(resource::Kind::Workload(w)) = &r.kind
                && let Some(generation) = w.canonical_name.strip_prefix("gen-")
                && let Ok(generation) = generation.parse::<u64>()
                && generation > 0
            {
                arrivals.record(generation);
            }
        }
        if response.full_snapshot {
            arrivals.snapshots.fetch_add(1, Ordering::Relaxed);
            permit.take();
        }
        tx.send(ConfigRequest {
            kind: Some(config_request::Kind::Ack(Ack {
                nonce: response.nonce,
            })),
        })
        .await?;
    }
    Ok(())
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| (kb / 1024.0 * 10.0).round() / 10.0)
        .unwrap_or(f64::NAN)
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Runs the benchmark and returns its report.
pub async fn run(args: ControllerBenchArgs) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(
        args.pods > 0 && args.subscribers > 0,
        "pods and subscribers must be > 0"
    );
    let changes = usize::try_from(args.duration_secs * 1000 / args.interval_ms.max(1)).unwrap_or(0);
    let mut state = ClusterState {
        synced: true,
        ..ClusterState::default()
    };
    for obj in manifests(&args) {
        insert(&mut state, obj)?;
    }
    let ca = CertificateAuthority::generate("cluster.local", Duration::from_secs(3600))?;
    // One full build and diff, outside the server, for the report.
    let build_started = Instant::now();
    let built = model::build(&state, &ModelConfig::default());
    let _ = Model::diff(&Model::default(), &built);
    let model_build_ms = build_started.elapsed().as_secs_f64() * 1000.0;
    drop(built);
    let (states_tx, states_rx) = watch::channel(Arc::new(state));
    let debounce = Debounce {
        quiet: Duration::from_millis(args.debounce_ms),
        max_delay: Duration::from_millis(args.debounce_ms.saturating_mul(5).max(50)),
    };
    let model_config = ModelConfig {
        roots_pem: vec![ca.root_pem().to_string()],
        ..ModelConfig::default()
    };
    let (models, _pipeline) = pipeline::spawn(states_rx, model_config, debounce);
    let config_server = ConfigServer::new(models.clone(), Arc::new(AllowAll));
    let (chain_pem, key_pem) = ca.issue_serving(
        &["localhost".to_string()],
        &["127.0.0.1".parse()?],
        Duration::from_secs(3600),
    )?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server_task = tokio::spawn(server::serve(
        listener,
        config_server,
        None,
        Some(ServerTls { chain_pem, key_pem }),
        async {
            let _ = stop_rx.await;
        },
    ));

    let arrivals = Arc::new(Arrivals {
        start: Instant::now(),
        counts: (0..=changes).map(|_| AtomicUsize::new(0)).collect(),
        last_nanos: (0..=changes).map(|_| AtomicU64::new(0)).collect(),
        snapshots: AtomicUsize::new(0),
    });
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.root_pem()))
        .domain_name("localhost");
    let endpoint = Channel::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .tcp_nodelay(true);
    let permits = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let connect_started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for node in 0..args.subscribers {
        clients.spawn(subscriber(
            endpoint.clone(),
            node,
            arrivals.clone(),
            permits.clone(),
        ));
    }
    while arrivals.snapshots.load(Ordering::Relaxed) < args.subscribers {
        if let Some(Ok(Err(e))) = clients.try_join_next() {
            anyhow::bail!("a subscriber failed before its snapshot: {e}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let snapshot_seconds = connect_started.elapsed().as_secs_f64();
    let snapshot_bytes = models.borrow().model.encoded_len();
    let rss_after_snapshots = rss_mib();

    // One pod change per interval, on a pod chosen round-robin.
    let mut change_times = vec![0u64; changes + 1];
    let mut ticker = tokio::time::interval(Duration::from_millis(args.interval_ms.max(1)));
    ticker.tick().await;
    for (generation, changed_at) in change_times.iter_mut().enumerate().skip(1) {
        ticker.tick().await;
        let i = (generation * 7919) % args.pods;
        let mut next = (**states_tx.borrow()).clone();
        insert(&mut next, pod(i, &args, generation as u64))?;
        *changed_at = u64::try_from(arrivals.start.elapsed().as_nanos()).unwrap_or(0);
        states_tx.send_replace(Arc::new(next));
    }
    // Let the last change arrive (bounded).
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline
        && arrivals.counts[changes].load(Ordering::Relaxed) < args.subscribers
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut propagation = Vec::with_capacity(changes);
    let mut incomplete = 0;
    let per_change = arrivals
        .counts
        .iter()
        .zip(&arrivals.last_nanos)
        .zip(&change_times);
    for ((count, last), changed_at) in per_change.skip(1) {
        if count.load(Ordering::Relaxed) < args.subscribers {
            incomplete += 1;
            continue;
        }
        let last = last.load(Ordering::Relaxed);
        propagation.push(last.saturating_sub(*changed_at) as f64 / 1e6);
    }
    propagation.sort_by(|a, b| a.total_cmp(b));
    let rss = rss_mib();
    let _ = stop_tx.send(());
    clients.abort_all();
    let _ = server_task.await;
    let round = |x: f64| (x * 100.0).round() / 100.0;
    Ok(json!({
        "bench": "controller",
        "pods": args.pods,
        "services": args.services,
        "subscribers": args.subscribers,
        "changes": changes,
        "changes_not_everywhere": incomplete,
        "snapshot_seconds": round(snapshot_seconds),
        // Each subscriber's gRPC decoder keeps a receive buffer as large as
        // the largest message it saw (the snapshot), so most of rss_mib is
        // the subscribers', not the controller's.
        "snapshot_bytes": snapshot_bytes,
        "model_build_ms": round(model_build_ms),
        "rss_mib_after_snapshots": rss_after_snapshots,
        "max_propagation_ms": round(propagation.last().copied().unwrap_or(f64::NAN)),
        "p50_propagation_ms": round(quantile(&propagation, 0.50)),
        "p99_propagation_ms": round(quantile(&propagation, 0.99)),
        "rss_mib": rss,
    }))
}
