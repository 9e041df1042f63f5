//! `idle-tunnels`: ztunnel's memory under many concurrent idle tunnels.
//!
//! The e2e harness's cluster (as `l4`): two nodes, one enrolled namespace, a
//! server pod on node 2 and a client pod on node 1, both running this
//! binary's load generator. The client (`load-client --mode hold`) opens
//! connections to the server through the mesh (client → ztunnel → HBONE →
//! ztunnel → server), exchanges one byte each way on each so the tunnel is
//! fully set up, and keeps them open and idle, stepping up to each of
//! `--steps`; at each step, after `--settle` seconds, both ztunnels' `VmRSS`
//! and open descriptors are read. Bytes per tunnel: the RSS above the step-0
//! baseline over the tunnels held. Last line: JSON with `points`
//! (`connections`, `client_ztunnel_rss_mib`, `server_ztunnel_rss_mib`,
//! `client_bytes_per_tunnel`, `server_bytes_per_tunnel`, ...) and
//! `idle_rss_mib` (client node's, server node's ztunnel, with the pods and
//! before any connection).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use weft_e2e::{Cluster, ClusterConfig, Pod, PodSpec, ZtunnelMode};

use crate::stats::round2;

/// Runs `"$0" "$@"` with the open-files limit raised to
/// `$WEFT_BENCH_NOFILE` (the hard one too: the bench runs as root), or to
/// the hard limit where that is refused. The shell's `ulimit` rather than
/// `setrlimit` in the load generator: the workspace forbids `unsafe`, and
/// nix's `resource` feature would rebuild every crate that uses nix.
const WITH_NOFILE: &str =
    r#"ulimit -n "$WEFT_BENCH_NOFILE" 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$0" "$@""#;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Tunnels held at each measurement (running totals; 0, the baseline,
    /// is added when missing).
    #[arg(long, value_delimiter = ',', default_value = "0,1000,2500,5000,10000")]
    steps: Vec<usize>,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 100)]
    concurrency: usize,
    /// Seconds between a step's last connection and its measurement.
    #[arg(long, default_value_t = 1.0)]
    settle: f64,
}

/// The load generator's processes in the pods, killed when the bench ends,
/// on an error too.
struct InPods(Vec<Child>);

impl Drop for InPods {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// This binary in `pod` with `args`, its open-files limit raised to `nofile`.
fn in_pod(pod: &Pod, nofile: usize, args: &[&str]) -> anyhow::Result<Command> {
    let mut cmd = pod.command("sh");
    cmd.arg("-c")
        .arg(WITH_NOFILE)
        .arg(std::env::current_exe()?)
        .args(args)
        .env("WEFT_BENCH_NOFILE", nofile.to_string())
        .stderr(Stdio::inherit());
    Ok(cmd)
}

/// The pid of node `index`'s ztunnel.
fn ztunnel_pid(cluster: &Cluster, index: usize) -> anyhow::Result<u32> {
    let name = format!("{}/ztunnel", cluster.node(index)?.name());
    let process = cluster.state().processes.iter().find(|p| p.name == name);
    process.map(|p| p.pid).with_context(|| format!("no {name}"))
}

/// `VmRSS` of `pid`, in MiB.
fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    crate::proc_status::status_mib(pid, "VmRSS").with_context(|| format!("no VmRSS for {pid}"))
}

/// The descriptors `pid` has open.
fn open_fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// `pid`'s open-files limit, `{soft, hard}`.
fn nofile_limit(pid: u32) -> Value {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap_or_default();
    let line = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"));
    // Numbers, or null for `unlimited`.
    let values: Vec<Option<u64>> = (line.unwrap_or_default().split_whitespace())
        .map(|v| v.parse().ok())
        .collect();
    json!({ "soft": values.first().copied().flatten(), "hard": values.get(1).copied().flatten() })
}

/// Bytes per tunnel above the baseline; none at 0 tunnels.
fn per_tunnel(rss: f64, baseline: f64, tunnels: u64) -> Value {
    match tunnels {
        0 => Value::Null,
        n => json!(((rss - baseline) * 1024.0 * 1024.0 / n as f64).round()),
    }
}

pub fn run(args: Args) -> anyhow::Result<Value> {
    let mut steps = args.steps.clone();
    steps.push(0);
    steps.sort_unstable();
    steps.dedup();
    let most = steps.last().copied().unwrap_or(0);
    // A socket per tunnel in each load generator, and room for the rest.
    let nofile = (most + 1024).max(65_536);
    let settle = Duration::from_secs_f64(args.settle);

    let mut cluster = Cluster::up(ClusterConfig {
        nodes: 2,
        ztunnel: ZtunnelMode::On,
        ..ClusterConfig::default()
    })?;
    cluster.add_namespace("mesh", true)?;
    let server = cluster.add_pod(PodSpec::new("mesh", "server").on_node(2))?;
    let client = cluster.add_pod(PodSpec::new("mesh", "client").on_node(1))?;
    let ztunnels = [ztunnel_pid(&cluster, 1)?, ztunnel_pid(&cluster, 2)?];
    let idle = [rss_mib(ztunnels[0])?, rss_mib(ztunnels[1])?];
    eprintln!("ztunnel RSS (client node, server node), idle with pods: {idle:?} MiB");

    let mut pods = InPods(Vec::new());
    let mut load_server = in_pod(&server, nofile, &["load-server"])?
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the load server")?;
    let server_out = load_server.stdout.take().context("load server stdout")?;
    let server_pid = load_server.id();
    pods.0.push(load_server);
    let mut ready = String::new();
    BufReader::new(server_out).read_line(&mut ready)?;
    if ready.trim() != "ready" {
        bail!("load server did not start: {ready:?}");
    }

    let ip = server.ip().to_string();
    let concurrency = args.concurrency.to_string();
    let hold = |steps: &str| -> anyhow::Result<Command> {
        let args = ["load-client", "--mode", "hold", "--server", ip.as_str()];
        let mut cmd = in_pod(&client, nofile, &args)?;
        cmd.args(["--steps", steps, "--concurrency", &concurrency]);
        Ok(cmd)
    };
    // One tunnel, opened and closed: the certificates and the pooled HBONE
    // connection exist before the baseline.
    let warmup = hold("1")?.stdin(Stdio::null()).output()?;
    if !warmup.status.success() {
        bail!(
            "warm-up failed: {}",
            String::from_utf8_lossy(&warmup.stdout)
        );
    }
    std::thread::sleep(settle);

    let joined: Vec<String> = steps.iter().map(usize::to_string).collect();
    let mut holder = hold(&joined.join(","))?
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the hold client")?;
    let mut next = holder.stdin.take().context("hold client stdin")?;
    let mut lines = BufReader::new(holder.stdout.take().context("hold client stdout")?).lines();
    let client_pid = holder.id();
    pods.0.push(holder);

    let mut points = Vec::new();
    let mut baseline = [0.0; 2];
    let mut stopped = None;
    for (i, target) in steps.iter().enumerate() {
        let line = lines
            .next()
            .with_context(|| format!("the hold client ended before {target} tunnels"))??;
        let step: Value = serde_json::from_str(&line).with_context(|| line.clone())?;
        let held = step["connections"].as_u64().unwrap_or(0);
        std::thread::sleep(settle);
        let rss = [rss_mib(ztunnels[0])?, rss_mib(ztunnels[1])?];
        if i == 0 {
            baseline = rss;
        }
        let point = json!({
            "target": target,
            "connections": held,
            "client_ztunnel_rss_mib": round2(rss[0]),
            "server_ztunnel_rss_mib": round2(rss[1]),
            "client_bytes_per_tunnel": per_tunnel(rss[0], baseline[0], held),
            "server_bytes_per_tunnel": per_tunnel(rss[1], baseline[1], held),
            "client_ztunnel_fds": open_fds(ztunnels[0]),
            "server_ztunnel_fds": open_fds(ztunnels[1]),
            "open_secs": round2(step["seconds"].as_f64().unwrap_or(f64::NAN)),
        });
        eprintln!("{point}");
        points.push(point);
        if step["failed"].as_u64().unwrap_or(0) > 0 {
            let reason = format!(
                "stopped at {held} of {target} tunnels: {} connections failed (last: {})",
                step["failed"], step["error"]
            );
            eprintln!("{reason}");
            stopped = Some(reason);
            break;
        }
        if i + 1 < steps.len() {
            writeln!(next, "next")?;
        }
    }
    // What each ztunnel says it carries, read after the last measurement
    // (the answer for thousands of connections is itself megabytes).
    let reported = [1, 2].map(|node| {
        let answer = cluster.ztunnel_admin(node, "/connections").ok()?;
        let count = |key: &str| answer[key].as_array().map(Vec::len);
        Some(json!({ "tunnels": count("connections"), "hbone_connections": count("pool") }))
    });
    let report = json!({
        "bench": "idle-tunnels",
        "points": points,
        "idle_rss_mib": idle.map(round2),
        "ztunnel_connections_at_end": reported,
        "nofile": {
            "client_ztunnel": nofile_limit(ztunnels[0]),
            "server_ztunnel": nofile_limit(ztunnels[1]),
            "client": nofile_limit(client_pid),
            "server": nofile_limit(server_pid),
        },
        "stopped": stopped,
        "concurrency": args.concurrency,
        "settle_secs": args.settle,
    });
    // EOF: the client closes its connections and ends.
    drop(next);
    drop(pods);
    let _ = cluster.teardown();
    Ok(report)
}
