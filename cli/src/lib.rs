//! weftctl: see into a weft mesh and drive it.
//!
//! - [`args`]: the command line (clap derive); `weftctl --help` is generated
//!   from it.
//! - [`exit`]: errors and the exit codes scripts can rely on.
//! - [`output`]: tables for people, JSON and YAML for scripts, `--watch`.
//! - [`cluster`]: where the mesh is: the local cluster of the e2e harness (a
//!   run directory: manifests, admin and agent unix sockets) or a Kubernetes
//!   cluster (kubeconfig; admin APIs through the API server's port-forward).
//! - [`admin`]: a small HTTP/1 client for the admin APIs (ztunnel, waypoint,
//!   controller debug) over any byte stream.
//! - [`install`]: weft's own manifests, embedded; applying, deleting and
//!   waiting for rollouts.
//! - [`manifests`]: atomic edits of a directory of Kubernetes YAML (files mode
//!   writes).
//! - [`commands`]: one module per command.

pub mod admin;
pub mod args;
pub mod cluster;
pub mod commands;
pub mod exit;
pub mod format;
pub mod install;
pub mod manifests;
pub mod output;

use args::{Cli, Command};
use exit::{CliError, Outcome};

/// Runs one invocation of weftctl.
pub async fn run(cli: Cli) -> Result<Outcome, CliError> {
    let global = &cli.global;
    match &cli.command {
        Command::Completion(args) => commands::completion::run(args),
        Command::Tunnels(args) => commands::tunnels::run(global, args).await,
        Command::Certs(args) => commands::certs::run(global, args).await,
        Command::ProxyStatus(args) => commands::proxy_status::run(global, args).await,
        Command::Workloads(args) => commands::resources::workloads(global, args).await,
        Command::Services(args) => commands::resources::services(global, args).await,
        Command::Policies(args) => commands::resources::policies(global, args).await,
        Command::Tap(args) => commands::tap::run(global, args).await,
        Command::Explain(args) => commands::explain::run(global, args).await,
        Command::Enroll(args) => commands::enroll::run(global, args, true).await,
        Command::Unenroll(args) => commands::enroll::run(global, args, false).await,
        Command::Waypoint(cmd) => commands::waypoint::run(global, cmd).await,
        Command::Check(args) => commands::check::run(global, args).await,
        Command::BugReport(args) => commands::bug_report::run(global, args).await,
        Command::Top(args) => commands::top::top(global, args).await,
        Command::Graph(args) => commands::top::graph(global, args).await,
        Command::Install(args) => commands::install::install(global, args, false).await,
        Command::Upgrade(args) => commands::install::install(global, args, true).await,
        Command::Uninstall(args) => commands::install::uninstall(global, args).await,
    }
}
