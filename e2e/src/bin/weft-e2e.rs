//! `weft-e2e`: a local weft cluster made of network namespaces.
//!
//! ```text
//! weft-e2e up [--nodes 2] [--keep]   bring a cluster up (until Ctrl-C, or left running with --keep)
//! weft-e2e down [RUN_ID] [--force]   tear down kept runs and leftovers of killed ones
//! weft-e2e status [RUN_ID]           what runs exist and what they hold
//! weft-e2e demo [--netns [--keep]]   the narrated tour
//! ```

use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use weft_e2e::cluster::{ClusterConfig, ZtunnelMode};
use weft_e2e::names::{self, RunId};
use weft_e2e::narrate::Narrator;
use weft_e2e::{Cluster, cleanup, demo, signals, summary};

#[derive(Parser)]
#[command(
    name = "weft-e2e",
    version,
    about = "a local weft cluster made of network namespaces"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Bring a cluster up; it runs until Ctrl-C, or stays up with --keep.
    Up {
        /// How many nodes.
        #[arg(long, default_value_t = 2)]
        nodes: usize,
        /// Leave the cluster running when this command exits (`down` removes it).
        #[arg(long)]
        keep: bool,
        /// Run without ztunnel (the CNI chain and node agents only).
        #[arg(long)]
        no_ztunnel: bool,
        /// The node agents' rule backend: auto, nftables or iptables.
        #[arg(long, default_value = "auto")]
        backend: String,
    },
    /// Tear down kept runs and whatever killed runs left behind.
    Down {
        /// Only this run (default: every run whose harness is gone).
        run_id: Option<String>,
        /// Also runs whose harness is still alive.
        #[arg(long)]
        force: bool,
    },
    /// Show the runs on this machine.
    Status {
        /// Only this run.
        run_id: Option<String>,
    },
    /// The narrated demo: weft installed with kubectl on a real control
    /// plane whose two nodes are network namespaces; traffic, mTLS on the
    /// wire, policy, a waypoint.
    Demo {
        /// The first wave's demo instead: the nodes, controller and proxies
        /// as processes in network namespaces, with a files registry.
        #[arg(long)]
        netns: bool,
        /// Leave the cluster running afterwards (with --netns).
        #[arg(long, requires = "netns")]
        keep: bool,
    },
}

fn parse_id(id: Option<String>) -> anyhow::Result<Option<RunId>> {
    id.map(|s| RunId::parse(&s).with_context(|| format!("{s:?} is not a run id (weft-xxxx)")))
        .transpose()
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Up {
            nodes,
            keep,
            no_ztunnel,
            backend,
        } => {
            let narrator = Arc::new(Narrator::new());
            let config = ClusterConfig {
                nodes,
                ztunnel: if no_ztunnel {
                    ZtunnelMode::Off
                } else {
                    ZtunnelMode::Auto
                },
                backend,
                progress: narrator.progress(),
                ..ClusterConfig::default()
            };
            let cluster = Cluster::up(config)?;
            let text = summary::how_to_reach(cluster.state(), cluster.binaries());
            if keep {
                cluster.keep()?;
                println!("\n{text}");
                return Ok(());
            }
            println!("\n{text}\nPress Ctrl-C to tear it down.");
            // The signal watcher tears the cluster down and exits; keep the
            // cluster alive (not dropped) until then.
            let _cluster = cluster;
            signals::wait_forever()
        }
        Cmd::Down { run_id, force } => {
            let only = parse_id(run_id)?;
            let (reports, skipped) = cleanup::down(&names::root_dir(), only.as_ref(), force);
            for id in &skipped {
                println!("{id}: its harness is still running (stop it, or use --force)");
            }
            let mut failed = false;
            for r in &reports {
                let id = r.run_id.as_ref().map(RunId::as_str).unwrap_or("?");
                println!(
                    "{id}: stopped {} process(es), killed {} stray(s), deleted {} namespace(s)",
                    r.stopped.len(),
                    r.strays.len(),
                    r.netns.len()
                );
                for e in &r.errors {
                    failed = true;
                    println!("{id}: {e}");
                }
            }
            if reports.is_empty() && skipped.is_empty() {
                println!("nothing to tear down");
            }
            if failed {
                bail!("some of the teardown failed");
            }
            Ok(())
        }
        Cmd::Status { run_id } => {
            let only = parse_id(run_id)?;
            let runs: Vec<_> = cleanup::find_runs(&names::root_dir())
                .into_iter()
                .filter(|r| only.as_ref().is_none_or(|id| *id == r.state.run_id))
                .collect();
            if runs.is_empty() {
                println!("no runs");
            }
            for run in runs {
                println!("{}", summary::status(&run));
            }
            Ok(())
        }
        Cmd::Demo { netns: true, keep } => Ok(demo::run(keep)?),
        Cmd::Demo { netns: false, .. } => Ok(weft_e2e::kube::demo::run()?),
    }
}
