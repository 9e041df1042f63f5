//! `weft-bench controller`: the controller's memory, and how fast a pod
//! change reaches every proxy, as the cluster grows.
//!
//! This process runs the controller's real pipeline and TLS gRPC server; the
//! subscribers, which behave like ztunnels (one HTTP/2 connection each,
//! every response decoded and ACKed), run in a child process
//! (`controller-load`), so that this process's `VmRSS` and `VmHWM` are the
//! controller's alone. The cluster has `pods` pods on `proxies` nodes behind
//! `services` Services (with EndpointSlices). Once every subscriber holds its
//! snapshot and the process has idled for `settle_secs`, one pod changes per
//! `interval_ms` for `duration_secs`; a change's propagation runs from the
//! registry update to the moment the last subscriber has decoded it.
//!
//! With `--sizes 2000:200,10000:1000,...` the bench runs itself once per
//! point, each in a fresh process (a point's memory must not carry over to
//! the next), and reports how memory and propagation grow between points.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::watch;
use weft_cluster::model::{self, Model, ModelConfig};
use weft_cluster::registry::{AnyObject, ClusterState, Kind};
use weft_controller::auth::AllowAll;
use weft_controller::pipeline::{self, Debounce};
use weft_controller::server::{self, ConfigServer, ConnectionLimits, ServerTls};
use weft_hbone::CertificateAuthority;

use crate::controller_load::unix_nanos;
use crate::proc_status;
use crate::stats::round2;

/// Flags of `weft-bench controller`.
#[derive(Clone, Debug, clap::Args)]
pub struct ControllerBenchArgs {
    /// Pods in the cluster.
    #[arg(long, default_value_t = 10_000)]
    pub pods: usize,
    /// Services (each with an EndpointSlice over pods/services pods);
    /// default: one per 10 pods.
    #[arg(long)]
    pub services: Option<usize>,
    /// Proxies: ztunnels, one per node, each on its own connection.
    #[arg(long, alias = "subscribers", default_value_t = 1_000)]
    pub proxies: usize,
    /// Several points, `pods:proxies` separated by commas (e.g.
    /// `2000:200,10000:1000,50000:5000`), each run in a fresh process;
    /// overrides `--pods` and `--proxies`.
    #[arg(long)]
    pub sizes: Option<String>,
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
    /// Idle time after the initial sync before the idle RSS is read.
    #[arg(long, default_value_t = 3)]
    pub settle_secs: u64,
    /// Give up (rather than push a shared machine into swap or the OOM
    /// killer) when the controller's RSS passes this many MiB.
    #[arg(long, default_value_t = 12_288)]
    pub max_rss_mib: u64,
}

impl ControllerBenchArgs {
    fn services(&self) -> usize {
        self.services.unwrap_or(self.pods / 10).max(1)
    }
}

const NAMESPACES: usize = 100;

/// Puts the bench's cluster into `state`, object by object (a 50k-pod
/// cluster's JSON all at once would weigh on the controller's peak RSS).
fn populate(state: &mut ClusterState, args: &ControllerBenchArgs) -> anyhow::Result<()> {
    for n in 0..NAMESPACES {
        insert(
            state,
            json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": format!("ns-{n}"), "labels": {"weft.dev/dataplane-mode": "ambient"}}}),
        )?;
    }
    for i in 0..args.pods {
        insert(state, pod(i, args, 0))?;
    }
    let services = args.services();
    let per_service = (args.pods / services).max(1);
    for s in 0..services {
        let ns = format!("ns-{}", s % NAMESPACES);
        insert(
            state,
            json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("svc-{s}"), "namespace": ns},
            "spec": {"clusterIP": format!("10.96.{}.{}", s / 250, s % 250 + 1),
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
        )?;
        // Pods i with i % NAMESPACES == s % NAMESPACES live in the same namespace.
        let endpoints: Vec<serde_json::Value> = (0..per_service)
            .map(|k| (s % NAMESPACES) + NAMESPACES * ((s / NAMESPACES) * per_service + k))
            .filter(|i| *i < args.pods)
            .map(|i| json!({"addresses": [pod_ip(i)],
                            "targetRef": {"kind": "Pod", "name": format!("pod-{i}"), "namespace": ns}}))
            .collect();
        insert(
            state,
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("svc-{s}-x"), "namespace": ns,
                         "labels": {"kubernetes.io/service-name": format!("svc-{s}")}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}], "endpoints": endpoints}),
        )?;
    }
    Ok(())
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
        "spec": {"nodeName": format!("node-{}", i % args.proxies.max(1)), "serviceAccountName": "app",
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

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Runs the benchmark: one point, or every point of `--sizes` each in its
/// own process, and returns the report.
pub async fn run(args: ControllerBenchArgs) -> anyhow::Result<serde_json::Value> {
    match &args.sizes {
        Some(sizes) => sweep(&args, &parse_sizes(sizes)?).await,
        None => point(args).await,
    }
}

fn parse_sizes(sizes: &str) -> anyhow::Result<Vec<(usize, usize)>> {
    sizes
        .split(',')
        .map(|p| {
            let (pods, proxies) = p
                .trim()
                .split_once(':')
                .with_context(|| format!("size {p:?} is not pods:proxies"))?;
            Ok((pods.parse()?, proxies.parse()?))
        })
        .collect()
}

/// One process per point; then how each figure grows from point to point,
/// beside how the input grew.
async fn sweep(
    args: &ControllerBenchArgs,
    sizes: &[(usize, usize)],
) -> anyhow::Result<serde_json::Value> {
    let exe = std::env::current_exe()?;
    let mut points = Vec::new();
    for &(pods, proxies) in sizes {
        eprintln!("controller: point {pods} pods / {proxies} proxies");
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.args(["--no-files", "controller"])
            .args(["--pods", &pods.to_string()])
            .args(["--proxies", &proxies.to_string()])
            .args(["--duration-secs", &args.duration_secs.to_string()])
            .args(["--interval-ms", &args.interval_ms.to_string()])
            .args(["--debounce-ms", &args.debounce_ms.to_string()])
            .args([
                "--connect-concurrency",
                &args.connect_concurrency.to_string(),
            ])
            .args(["--settle-secs", &args.settle_secs.to_string()])
            .args(["--max-rss-mib", &args.max_rss_mib.to_string()])
            .stderr(Stdio::inherit());
        if let Some(services) = args.services {
            // A fixed count would not grow with the cluster; scale it.
            let scaled = services * pods / args.pods.max(1);
            cmd.args(["--services", &scaled.max(1).to_string()]);
        }
        let output = cmd.output().await?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        anyhow::ensure!(
            output.status.success(),
            "point {pods}:{proxies} failed ({})",
            output.status
        );
        let last = stdout.lines().last().context("point printed nothing")?;
        // Each point as it completes: a later point failing loses nothing.
        eprintln!("controller: {last}");
        points.push(serde_json::from_str::<serde_json::Value>(last)?);
    }
    let f = |p: &serde_json::Value, key: &str| p[key].as_f64().unwrap_or(f64::NAN);
    let growth: Vec<serde_json::Value> = points
        .windows(2)
        .map(|w| {
            let (a, b) = (&w[0], &w[1]);
            let ratio = |key: &str| round2(f(b, key) / f(a, key));
            let added_proxies = f(b, "proxies") - f(a, "proxies");
            json!({
                "from": format!("{}:{}", a["pods"], a["proxies"]),
                "to": format!("{}:{}", b["pods"], b["proxies"]),
                "pods_ratio": ratio("pods"),
                "proxies_ratio": ratio("proxies"),
                "snapshot_bytes_ratio": ratio("snapshot_bytes"),
                "idle_rss_ratio": ratio("idle_rss_mib"),
                "peak_rss_ratio": ratio("peak_rss_mib"),
                "p50_propagation_ratio": ratio("p50_propagation_ms"),
                "p99_propagation_ratio": ratio("p99_propagation_ms"),
                // What one more proxy (with its 10 pods) costs, at the margin.
                "idle_rss_kib_per_added_proxy": round2(
                    (f(b, "idle_rss_mib") - f(a, "idle_rss_mib")) * 1024.0 / added_proxies),
            })
        })
        .collect();
    Ok(json!({ "bench": "controller", "points": points, "growth": growth }))
}

/// One point: this process is the controller, the subscribers are a child.
async fn point(args: ControllerBenchArgs) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(
        args.pods > 0 && args.proxies > 0,
        "pods and proxies must be > 0"
    );
    let me = std::process::id().to_string();
    let changes = usize::try_from(args.duration_secs * 1000 / args.interval_ms.max(1)).unwrap_or(0);
    let mut state = ClusterState {
        synced: true,
        ..ClusterState::default()
    };
    populate(&mut state, &args)?;
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
    // One connection per proxy: above the default cap (4096), as an
    // operator of a 5k-node cluster sets `--max-connections`.
    let limits = ConnectionLimits {
        max_connections: ConnectionLimits::default()
            .max_connections
            .max(args.proxies + 64),
        ..ConnectionLimits::default()
    };
    let server_task = tokio::spawn(server::serve_with(
        listener,
        config_server,
        None,
        Some(ServerTls { chain_pem, key_pem }),
        limits,
        async {
            let _ = stop_rx.await;
        },
    ));
    let ca_file = std::env::temp_dir().join(format!("weft-bench-controller-ca-{me}.pem"));
    std::fs::write(&ca_file, ca.root_pem())?;
    let _remove_ca = RemoveOnDrop(ca_file.clone());

    // Above --max-rss-mib the point gives up: with one encoded snapshot
    // per subscriber, 50k pods / 5k proxies would take tens of GiB.
    let watchdog = {
        let (me, max) = (me.clone(), args.max_rss_mib as f64);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let rss = status_mib(&me, "VmRSS");
                if rss > max {
                    return rss;
                }
            }
        })
    };

    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .arg("controller-load")
        .args(["--addr", &addr.to_string()])
        .arg("--ca-file")
        .arg(&ca_file)
        .args(["--proxies", &args.proxies.to_string()])
        .args(["--changes", &changes.to_string()])
        .args([
            "--connect-concurrency",
            &args.connect_concurrency.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let child_pid = child
        .id()
        .context("subscriber process has no pid")?
        .to_string();
    let mut lines = BufReader::new(child.stdout.take().context("child stdout")?).lines();
    let connect_started = Instant::now();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let completed: Arc<Vec<AtomicU64>> =
        Arc::new((0..=changes).map(|_| AtomicU64::new(0)).collect());
    let reader = {
        let completed = completed.clone();
        tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                let mut words = line.split_whitespace();
                match (words.next(), words.next(), words.next()) {
                    (Some("ready"), _, _) => {
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    (Some("gen"), Some(g), Some(at)) => {
                        if let (Ok(g), Ok(at)) = (g.parse::<usize>(), at.parse::<u64>())
                            && let Some(slot) = completed.get(g)
                        {
                            slot.store(at, Ordering::Release);
                        }
                    }
                    _ => eprintln!("controller-load: {line}"),
                }
            }
        })
    };
    let mut watchdog = watchdog;
    tokio::select! {
        r = ready_rx => r.context("the subscriber process ended before every snapshot arrived")?,
        rss = &mut watchdog => anyhow::bail!("controller RSS {} MiB passed --max-rss-mib", rss.unwrap_or(f64::NAN)),
    }
    let snapshot_seconds = connect_started.elapsed().as_secs_f64();
    let rss_after_snapshots = status_mib(&me, "VmRSS");
    let snapshot_bytes = models.borrow().model.encoded_len();
    eprintln!(
        "controller: {} proxies synced in {snapshot_seconds:.1}s; settling {}s",
        args.proxies, args.settle_secs
    );
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    let idle_rss = status_mib(&me, "VmRSS");
    let idle_hwm = status_mib(&me, "VmHWM");
    let load_rss = status_mib(&child_pid, "VmRSS");

    // One pod change per interval, on a pod chosen round-robin.
    let mut change_times = vec![0u64; changes + 1];
    let mut ticker = tokio::time::interval(Duration::from_millis(args.interval_ms.max(1)));
    ticker.tick().await;
    for (generation, changed_at) in change_times.iter_mut().enumerate().skip(1) {
        ticker.tick().await;
        anyhow::ensure!(
            !watchdog.is_finished(),
            "controller RSS passed --max-rss-mib"
        );
        let i = (generation * 7919) % args.pods;
        let mut next = (**states_tx.borrow()).clone();
        insert(&mut next, pod(i, &args, generation as u64))?;
        *changed_at = u64::try_from(unix_nanos()).unwrap_or(0);
        states_tx.send_replace(Arc::new(next));
    }
    // Let the last change arrive (bounded).
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && completed[changes].load(Ordering::Acquire) == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut propagation = Vec::with_capacity(changes);
    let mut incomplete = 0;
    for (done, changed_at) in completed.iter().zip(&change_times).skip(1) {
        match done.load(Ordering::Acquire) {
            0 => incomplete += 1,
            at => propagation.push(at.saturating_sub(*changed_at) as f64 / 1e6),
        }
    }
    propagation.sort_by(|a, b| a.total_cmp(b));
    let rss = status_mib(&me, "VmRSS");
    let peak_rss = status_mib(&me, "VmHWM");
    watchdog.abort();
    drop(child.stdin.take());
    let _ = child.kill().await;
    reader.abort();
    let _ = stop_tx.send(());
    let _ = server_task.await;
    let per = |mib: f64, n: usize| round2(mib * 1024.0 / n as f64);
    Ok(json!({
        "bench": "controller",
        "pods": args.pods,
        "services": args.services(),
        "proxies": args.proxies,
        "changes": changes,
        "changes_not_everywhere": incomplete,
        "snapshot_seconds": round2(snapshot_seconds),
        "snapshot_bytes": snapshot_bytes,
        "model_build_ms": round2(model_build_ms),
        // The controller process alone; the subscribers' process is
        // `load_rss_mib`.
        "rss_mib_after_snapshots": rss_after_snapshots,
        "idle_rss_mib": idle_rss,
        "idle_hwm_mib": idle_hwm,
        "rss_mib": rss,
        "peak_rss_mib": peak_rss,
        "idle_rss_kib_per_proxy": per(idle_rss, args.proxies),
        "idle_rss_kib_per_pod": per(idle_rss, args.pods),
        "load_rss_mib": load_rss,
        "max_propagation_ms": round2(propagation.last().copied().unwrap_or(f64::NAN)),
        "p50_propagation_ms": round2(quantile(&propagation, 0.50)),
        "p99_propagation_ms": round2(quantile(&propagation, 0.99)),
    }))
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `field` (`VmRSS`, `VmHWM`) of `/proc/<pid>/status`, in MiB.
fn status_mib(pid: &str, field: &str) -> f64 {
    proc_status::status_mib(pid, field)
        .map(|mib| (mib * 10.0).round() / 10.0)
        .unwrap_or(f64::NAN)
}
