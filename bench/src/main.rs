//! `weft-bench`: side-by-side benchmarks. Every run measures its own baseline
//! (plain TCP, no mesh, ...) on the same machine in the same run, and prints
//! a JSON object with the ratios as its last line.

mod controller;
mod controller_load;
mod crypto;
mod hbone_loopback;
mod idle_tunnels;
mod l4;
mod loadgen;
mod plot;
mod policy_lookup;
mod proc_status;
mod stats;
mod store_memory;
mod waypoint;

use clap::{Parser, Subcommand};

// As in the proxies: glibc's malloc returns large freed buffers to the OS
// and page-faults them back in on the next frame; jemalloc keeps them.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Where the report (`<bench>.json`) and its SVG plots are written.
    #[arg(long, global = true, default_value = "bench/results")]
    out: std::path::PathBuf,
    /// Print the report only; write no files (a `controller --sizes`
    /// point, run as a child, leaves that to its parent).
    #[arg(long, global = true, hide = true)]
    no_files: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// HBONE client -> server on loopback vs plain TCP on loopback: bulk
    /// throughput on one connection and 1 KiB request/response latency.
    HboneLoopback(hbone_loopback::Args),
    /// The tunnel with ring, aws-lc-rs, and aws-lc-rs with post-quantum key
    /// exchange, side by side: bulk throughput and new connections/s.
    HboneCrypto(crypto::Args),
    /// The controller alone (its subscribers in a child process): RSS and
    /// propagation of pod changes to every proxy over real gRPC, at one
    /// cluster size or several (`--sizes`).
    Controller(controller::ControllerBenchArgs),
    /// The subscribers of `controller` (run as its child).
    #[command(hide = true)]
    ControllerLoad(controller_load::LoadArgs),
    /// Pod to pod across two nodes, without the mesh and through ztunnel
    /// (HBONE): throughput, request/response latency, connection rate, RSS.
    L4(l4::Args),
    /// ztunnel's RSS under many concurrent idle tunnels (pod → pod across
    /// two nodes, up to 10k): bytes per tunnel on each side.
    IdleTunnels(idle_tunnels::Args),
    /// The load generator's server (run inside a pod by `l4`, `idle-tunnels`).
    #[command(hide = true)]
    LoadServer,
    /// The load generator's client (run inside a pod by `l4`, `idle-tunnels`).
    #[command(hide = true)]
    LoadClient(loadgen::ClientArgs),
    /// The waypoint vs HAProxy: requests/s and p99 with an L7 policy on.
    Waypoint(waypoint::Args),
    /// The per-connection policy lookup: the store's index vs the full scan
    /// it replaced (10k workloads, 1/10/100 policies per namespace).
    PolicyLookup(policy_lookup::Args),
    /// ztunnel's state store: allocated bytes per known workload.
    StoreMemory {
        /// Workloads to load (plus one Service per 10).
        #[arg(long, default_value_t = 100_000)]
        workloads: u32,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // This binary compiles two providers (ring is `hbone-crypto`'s
    // baseline), so rustls cannot pick a default by itself for the
    // libraries that ask it for one (tonic, kube): weft's, explicitly.
    weft_hbone::tls::install_process_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = match cli.command {
        Command::HboneLoopback(args) => runtime.block_on(hbone_loopback::run(args))?,
        Command::HboneCrypto(args) => runtime.block_on(crypto::run(args))?,
        Command::StoreMemory { workloads } => store_memory::measure(workloads)?,
        Command::PolicyLookup(args) => policy_lookup::run(args)?,
        Command::Controller(args) => runtime.block_on(controller::run(args))?,
        Command::ControllerLoad(args) => {
            runtime.block_on(controller_load::run(args))?;
            return Ok(());
        }
        Command::L4(args) => l4::run(args)?,
        Command::IdleTunnels(args) => idle_tunnels::run(args)?,
        Command::Waypoint(args) => runtime.block_on(waypoint::run(args))?,
        Command::LoadServer => {
            runtime.block_on(loadgen::server())?;
            return Ok(());
        }
        Command::LoadClient(args) => runtime.block_on(loadgen::client(args))?,
    };
    // The report goes out first: a plot that fails must not lose it.
    println!("{}", serde_json::to_string(&report)?);
    // The load generator's reports (inside the pods) are not a bench's.
    let is_load = report["bench"].is_null();
    if !cli.no_files && !is_load {
        for file in plot::write(&cli.out, &report)? {
            eprintln!("wrote {}", file.display());
        }
    }
    Ok(())
}
