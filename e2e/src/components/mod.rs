//! How each weft component is started in a cluster, and how the harness
//! knows it is ready: one module per component, each building the real
//! binary's command line from the cluster's layout.
//!
//! - [`controller`]: `weft-controller` in files mode, in its own namespace.
//! - [`node_agent`]: `weft-node-agent` in each node's namespace.
//! - [`ztunnel`]: `ztunnel` in each node's namespace.
//! - [`waypoint`]: `waypoint` in its own pod, one per waypoint Gateway.

pub mod controller;
pub mod node_agent;
pub mod waypoint;
pub mod ztunnel;

/// The environment every component's command gets: its log filter from
/// `WEFT_E2E_LOG` (default `info`), and plain log files without terminal
/// colours.
pub(crate) fn log_env(cmd: &mut std::process::Command) {
    cmd.env(
        "RUST_LOG",
        std::env::var("WEFT_E2E_LOG").unwrap_or_else(|_| "info".into()),
    )
    .env("NO_COLOR", "1");
}
