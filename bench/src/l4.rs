//! `l4`: pod → pod across two namespace "nodes", without the mesh and through
//! it (pod → ztunnel → HBONE → ztunnel → pod), in the same cluster and run.
//!
//! The cluster is the e2e harness's (docs/design.md §8): real CNI chain, node agents,
//! controller and ztunnels. One namespace is enrolled, one is not; each has a
//! client pod on node 1 and a server pod on node 2 running this binary's load
//! generator. Rounds alternate between the two paths; the median of each is
//! reported. Last line: JSON with `throughput_ratio`, `conn_rate_ratio`
//! (mesh / no mesh), `p50_added_us`, `p99_added_us` and `rss_mib`.

use std::process::{Child, Stdio};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use weft_cni::enrollment::LOCAL_BYPASS_LABEL;
use weft_e2e::binaries::{self, Binaries};
use weft_e2e::{Cluster, ClusterConfig, Pod, PodSpec, ZtunnelMode};

use crate::stats::{median, round2};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Rounds per path (alternating); medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Requests per second of the request/response test.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Parallel connections of the connection-rate test.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Only these modes (bulk, rr, conn), e.g. to profile one.
    #[arg(long, value_delimiter = ',', default_value = "bulk,rr,conn")]
    modes: Vec<String>,
    /// Only the mesh path (for profiling ztunnel).
    #[arg(long)]
    mesh_only: bool,
    /// The cargo profile ztunnel is built with. `dist` (fat LTO, one codegen
    /// unit) is how it ships, so its figures are the ones that count;
    /// `release` reuses the build the rest of the cluster runs.
    #[arg(long, default_value = "dist")]
    ztunnel_profile: String,
    /// Skip the third path: the mesh with the node agents' local-leg bypass
    /// (BPF sockmap between the pods' sockets and ztunnel's). Measured by
    /// default, beside the mesh on TCP legs (pods labelled
    /// `weft.dev/local-bypass=off`) in the same cluster and run.
    #[arg(long)]
    no_bypass: bool,
    /// Then measure new connections on the mesh path again with this many
    /// more workloads in every ztunnel's store (pods of no real node),
    /// between two measurements with the store as small as the cluster:
    /// the per-connection cost with a production-sized store. 0 skips it.
    #[arg(long, default_value_t = 0)]
    store_workloads: usize,
}

/// The load server, killed when the bench ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server(pod: &Pod) -> anyhow::Result<Server> {
    let exe = std::env::current_exe()?;
    let mut child = pod
        .command(&exe.to_string_lossy())
        .arg("load-server")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the load server")?;
    let mut ready = String::new();
    use std::io::BufRead;
    let stdout = child.stdout.take().context("server stdout")?;
    std::io::BufReader::new(stdout).read_line(&mut ready)?;
    if ready.trim() != "ready" {
        bail!("load server did not start: {ready:?}");
    }
    Ok(Server(child))
}

fn run_client(client: &Pod, server: &Pod, mode: &str, args: &Args) -> anyhow::Result<Value> {
    let exe = std::env::current_exe()?;
    let out = client
        .command(&exe.to_string_lossy())
        .args(["load-client", "--mode", mode, "--server"])
        .arg(server.ip().to_string())
        .args(["--seconds", &args.seconds.to_string()])
        .args(["--rate", &args.rate.to_string()])
        .args(["--concurrency", &args.concurrency.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .context("running the load client")?;
    if !out.status.success() {
        bail!(
            "load client ({mode}) failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let line = String::from_utf8_lossy(&out.stdout);
    let last = line
        .lines()
        .last()
        .context("no output from the load client")?;
    Ok(serde_json::from_str(last)?)
}

/// `field` of each ztunnel's `/proc/<pid>/status` (`VmRSS`, `RssAnon`), in
/// MiB.
fn ztunnel_status_mib(cluster: &Cluster, field: &str) -> Vec<f64> {
    cluster
        .state()
        .processes
        .iter()
        .filter(|p| p.name.ends_with("ztunnel"))
        .filter_map(|p| crate::proc_status::status_mib(p.pid, field))
        .collect()
}

pub fn run(args: Args) -> anyhow::Result<Value> {
    let progress = |line: &str| eprintln!("[weft-bench] {line}");
    let bins = Binaries::locate()?;
    bins.build(&progress)?;
    let bins = if args.ztunnel_profile == "release" {
        bins
    } else {
        bins.with_profile_build(
            "weft-ztunnel",
            binaries::ZTUNNEL,
            &args.ztunnel_profile,
            &progress,
        )?
    };
    eprintln!("ztunnel: {}", bins.path(binaries::ZTUNNEL).display());
    let mut cluster = Cluster::up(ClusterConfig {
        nodes: 2,
        ztunnel: ZtunnelMode::On,
        build: false,
        binaries: Some(bins),
        local_bypass: !args.no_bypass,
        ..ClusterConfig::default()
    })?;
    cluster.add_namespace("mesh", true)?;
    cluster.add_namespace("plain", false)?;
    // The mesh path keeps TCP local legs even where the agents run the
    // bypass, so the two mesh paths differ only by it.
    let tcp_legs = |spec: PodSpec| spec.label(LOCAL_BYPASS_LABEL, "off");
    let mesh_server = cluster.add_pod(tcp_legs(PodSpec::new("mesh", "server").on_node(2)))?;
    let mesh_client = cluster.add_pod(tcp_legs(PodSpec::new("mesh", "client").on_node(1)))?;
    let bypass = if args.no_bypass {
        None
    } else {
        cluster.add_namespace("bypass", true)?;
        let server = cluster.add_pod(PodSpec::new("bypass", "server").on_node(2))?;
        let client = cluster.add_pod(PodSpec::new("bypass", "client").on_node(1))?;
        Some((client, server))
    };
    let plain_server = cluster.add_pod(PodSpec::new("plain", "server").on_node(2))?;
    let plain_client = cluster.add_pod(PodSpec::new("plain", "client").on_node(1))?;
    let idle_rss = ztunnel_status_mib(&cluster, "VmRSS");
    let idle_anon = ztunnel_status_mib(&cluster, "RssAnon");
    eprintln!("ztunnel RSS, idle with pods: {idle_rss:?} MiB (anonymous {idle_anon:?})");
    let mut _servers = vec![start_server(&mesh_server)?, start_server(&plain_server)?];
    if let Some((_, server)) = &bypass {
        _servers.push(start_server(server)?);
    }
    // Let the certificates and first HBONE connections settle.
    let warmup = Args {
        seconds: 1.0,
        ..args.clone()
    };
    run_client(&mesh_client, &mesh_server, "conn", &warmup)?;

    let mut results: std::collections::BTreeMap<String, Vec<Value>> = Default::default();
    for round in 0..args.rounds {
        for mode in args.modes.iter().map(String::as_str) {
            let mut paths = vec![
                ("plain", &plain_client, &plain_server),
                ("mesh", &mesh_client, &mesh_server),
            ];
            if let Some((client, server)) = &bypass {
                paths.push(("bypass", client, server));
            }
            for (path, client, server) in paths {
                if args.mesh_only && path == "plain" {
                    continue;
                }
                let r = run_client(client, server, mode, &args)?;
                eprintln!("round {} {mode} {path}: {r}", round + 1);
                results.entry(format!("{mode}_{path}")).or_default().push(r);
            }
        }
    }
    let med = |key: &str, field: &str| {
        median(
            results
                .get(key)
                .map(|v| v.iter().filter_map(|r| r[field].as_f64()).collect())
                .unwrap_or_default(),
        )
    };
    let store = if args.store_workloads > 0 {
        Some(conns_with_a_loaded_store(
            &cluster,
            &mesh_client,
            &mesh_server,
            &args,
        )?)
    } else {
        None
    };
    let loaded_rss = ztunnel_status_mib(&cluster, "VmRSS");
    let rss = loaded_rss.iter().copied().fold(0.0, f64::max);
    let mut report = json!({
        "bench": "l4",
        "ztunnel_profile": args.ztunnel_profile,
        "plain_gbps": round2(med("bulk_plain", "gbps")),
        "mesh_gbps": round2(med("bulk_mesh", "gbps")),
        "throughput_ratio": round2(med("bulk_mesh", "gbps") / med("bulk_plain", "gbps")),
        "plain_conns_per_sec": round2(med("conn_plain", "conns_per_sec")),
        "mesh_conns_per_sec": round2(med("conn_mesh", "conns_per_sec")),
        "conn_rate_ratio": round2(med("conn_mesh", "conns_per_sec") / med("conn_plain", "conns_per_sec")),
        "plain_p50_us": round2(med("rr_plain", "p50_us")),
        "plain_p99_us": round2(med("rr_plain", "p99_us")),
        "mesh_p50_us": round2(med("rr_mesh", "p50_us")),
        "mesh_p99_us": round2(med("rr_mesh", "p99_us")),
        "p50_added_us": round2(med("rr_mesh", "p50_us") - med("rr_plain", "p50_us")),
        "p99_added_us": round2(med("rr_mesh", "p99_us") - med("rr_plain", "p99_us")),
        "rss_mib": round2(rss),
        "idle_rss_mib": round2(idle_rss.iter().copied().fold(0.0, f64::max)),
        // Of it, the heap and stacks; the rest is mapped files (the binary).
        "idle_rss_anon_mib": round2(idle_anon.iter().copied().fold(0.0, f64::max)),
        "rate": args.rate,
        "seconds": args.seconds,
        "rounds": args.rounds,
    });
    if let (Some(r), Some(Value::Object(s))) = (report.as_object_mut(), store) {
        r.extend(s);
    }
    if bypass.is_some() {
        let ratio = |mode: &str, field: &str| {
            round2(med(&format!("{mode}_bypass"), field) / med(&format!("{mode}_plain"), field))
        };
        let added = |field: &str| round2(med("rr_bypass", field) - med("rr_plain", field));
        let extra = json!({
            "bypass_gbps": round2(med("bulk_bypass", "gbps")),
            "bypass_throughput_ratio": ratio("bulk", "gbps"),
            "bypass_conns_per_sec": round2(med("conn_bypass", "conns_per_sec")),
            "bypass_conn_rate_ratio": ratio("conn", "conns_per_sec"),
            "bypass_p50_us": round2(med("rr_bypass", "p50_us")),
            "bypass_p99_us": round2(med("rr_bypass", "p99_us")),
            "bypass_p50_added_us": added("p50_us"),
            "bypass_p99_added_us": added("p99_us"),
            // Proof the bypass carried the third path: what each node's
            // agent reports for its local legs.
            "local_legs": (1..=2)
                .map(|node| cluster.coverage(node).map(|(r, _)| r["local_legs"].clone()))
                .collect::<Result<Vec<_>, _>>()?,
        });
        if let (Some(r), Some(e)) = (report.as_object_mut(), extra.as_object()) {
            r.extend(e.clone());
        }
    }
    drop(_servers);
    let _ = cluster.teardown();
    Ok(report)
}

/// New connections on the mesh path with the store as the cluster has it,
/// then with `--store-workloads` more workloads, then without them again:
/// the loaded rounds against the median of the small-store rounds before
/// and after (the store cannot alternate round by round: each change must
/// reach the ztunnels first).
fn conns_with_a_loaded_store(
    cluster: &Cluster,
    client: &Pod,
    server: &Pod,
    args: &Args,
) -> anyhow::Result<Value> {
    let n = args.store_workloads;
    let rounds = |label: &str| -> anyhow::Result<Vec<f64>> {
        (0..args.rounds)
            .map(|round| {
                let r = run_client(client, server, "conn", args)?;
                eprintln!("store {label}, round {}: {r}", round + 1);
                Ok(r["conns_per_sec"].as_f64().unwrap_or(f64::NAN))
            })
            .collect()
    };
    let mut small = rounds("small")?;
    let ghosts: Vec<Value> = (0..n).map(ghost_pod).collect();
    cluster.manifests().write("ghosts", &ghosts)?;
    let known = wait_for_store(cluster, |count| count >= n)?;
    eprintln!("store loaded: {known} workloads in node 1's ztunnel");
    let loaded = rounds("loaded")?;
    cluster.manifests().remove("ghosts")?;
    wait_for_store(cluster, |count| count < n)?;
    small.extend(rounds("small again")?);
    let (small, loaded) = (median(small), median(loaded));
    Ok(json!({
        "store_workloads": known,
        "conn_small_store_per_sec": round2(small),
        "conn_loaded_store_per_sec": round2(loaded),
        "store_loaded_conn_ratio": round2(loaded / small),
    }))
}

/// A running pod on no real node: a workload every ztunnel knows and no
/// agent enrolls.
fn ghost_pod(i: usize) -> Value {
    let ip = format!("10.{}.{}.{}", 200 + i / 65_536, (i / 256) % 256, i % 256);
    let (name, uid) = (format!("ghost-{i}"), format!("ghost-uid-{i}"));
    weft_e2e::manifests::pod(&weft_e2e::manifests::PodObject {
        namespace: "mesh",
        name: &name,
        uid: &uid,
        labels: &Default::default(),
        service_account: "ghost",
        node: "ghost-node",
        host_ip: "10.250.0.1",
        ip: &ip,
        netns_path: std::path::Path::new("/nonexistent"),
        ports: &[],
    })
}

/// Waits (2 minutes at most) until node 1's ztunnel holds a number of
/// workloads that `done` accepts; returns it.
fn wait_for_store(cluster: &Cluster, done: impl Fn(usize) -> bool) -> anyhow::Result<usize> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let dump = cluster.ztunnel_admin(1, "/workloads")?;
        let count = dump["workloads"].as_array().map_or(0, Vec::len);
        if done(count) {
            return Ok(count);
        }
        if std::time::Instant::now() > deadline {
            bail!("node 1's ztunnel still holds {count} workloads after 2 minutes");
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}
