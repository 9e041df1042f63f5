//! The waypoint: one `waypoint` process per Gateway of class
//! `weft-waypoint`, inside its own pod's namespace (as the deployer's
//! Deployment runs it), taking its config and its certificate from the
//! controller, authenticated by its bootstrap token
//! (`<run>/controller/tokens/waypoints/<ns>/<service account>`).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::error::Result;
use crate::http;
use crate::netns::Netns;
use crate::process::ManagedProcess;

/// Admin API (127.0.0.1, and a unix socket), metrics and readiness: the
/// same ports as ztunnel's (docs/design.md §3), in the waypoint's own pod.
pub use super::ztunnel::{ADMIN_PORT, METRICS_PORT, READINESS_PORT};

/// Inbound HBONE.
pub const HBONE_PORT: u16 = 15008;

/// How long a waypoint may take to get its config and certificate.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// What the waypoint needs to know (the deployer's environment).
#[derive(Clone, Debug)]
pub struct WaypointLaunch<'a> {
    /// The Gateway's namespace.
    pub namespace: &'a str,
    /// The Gateway's name.
    pub name: &'a str,
    /// The service account it runs as (its identity).
    pub service_account: &'a str,
    /// Its pod's name.
    pub pod: &'a str,
    /// Its node's name.
    pub node: &'a str,
    /// The waypoint binary.
    pub binary: &'a Path,
    /// The controller's URL.
    pub controller_url: &'a str,
    /// The controller's root certificate.
    pub controller_ca: &'a Path,
    /// Its bootstrap token file.
    pub token_file: &'a Path,
    /// Its admin API's unix socket (reachable from outside the pod).
    pub admin_socket: &'a Path,
}

/// The waypoint's command line, run inside its pod's namespace.
pub fn command(pod: &Netns, launch: &WaypointLaunch<'_>) -> Command {
    let mut cmd = pod.command(launch.binary);
    cmd.args(["--namespace", launch.namespace, "--name", launch.name])
        .args(["--service-account", launch.service_account])
        .args(["--pod-name", launch.pod, "--node", launch.node])
        .args(["--controller", launch.controller_url])
        .arg("--controller-ca")
        .arg(launch.controller_ca)
        .arg("--token-file")
        .arg(launch.token_file)
        .arg("--admin-socket")
        .arg(launch.admin_socket)
        .args([
            "--hbone-addr",
            &format!("0.0.0.0:{HBONE_PORT}"),
            "--admin-addr",
            &format!("127.0.0.1:{ADMIN_PORT}"),
            "--metrics-addr",
            &format!("0.0.0.0:{METRICS_PORT}"),
            "--readiness-addr",
            &format!("0.0.0.0:{READINESS_PORT}"),
            // A test's cluster goes away in seconds; so may its waypoints.
            "--drain-seconds",
            "2",
        ]);
    super::log_env(&mut cmd);
    cmd
}

/// Waits until the waypoint says it is ready (config and certificate in
/// hand) on its admin socket.
pub fn wait_ready(process: &mut ManagedProcess, admin_socket: &Path) -> Result<()> {
    process.wait_ready("ready on /healthz/ready", READY_TIMEOUT, || {
        http::get_unix(admin_socket, "/healthz/ready").is_ok_and(|r| r.status == 200)
    })
}

/// GET `path` from its admin API, over its unix socket.
pub fn admin(admin_socket: &Path, path: &str) -> Result<http::Response> {
    http::get_unix(admin_socket, path)
}

/// GET `/metrics` (Prometheus text) from inside its pod.
pub fn metrics(pod: &Netns) -> Result<http::Response> {
    http::get(
        Some(pod),
        SocketAddr::from(([127, 0, 0, 1], METRICS_PORT)),
        "/metrics",
    )
}
