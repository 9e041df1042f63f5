//! ztunnel: one per node, in the node's namespace (hostNetwork, as the
//! DaemonSet runs), taking pods from the node agent's handoff socket and its
//! config and certificates from the controller, authenticated by the node's
//! bootstrap token.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::components::node_agent::NodeLayout;
use crate::error::Result;
use crate::http;
use crate::netns::Netns;
use crate::process::ManagedProcess;

/// Admin API (JSON), 127.0.0.1 in the node's namespace.
pub const ADMIN_PORT: u16 = 15000;
/// Prometheus metrics.
pub const METRICS_PORT: u16 = 15020;
/// Readiness (`/healthz/ready`).
pub const READINESS_PORT: u16 = 15021;

/// How long ztunnel may take to connect to the agent and the controller.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// What ztunnel needs to know.
#[derive(Clone, Debug)]
pub struct ZtunnelLaunch<'a> {
    /// The node's name.
    pub node: &'a str,
    /// The node's files.
    pub layout: &'a NodeLayout,
    /// The ztunnel binary.
    pub binary: &'a Path,
    /// Which instance of the node's ztunnel this is (0, then one more per
    /// restart).
    pub instance: u32,
    /// The controller's URL.
    pub controller_url: &'a str,
    /// The controller's root certificate.
    pub controller_ca: &'a Path,
    /// The node's bootstrap token file.
    pub token_file: &'a Path,
}

/// ztunnel's command line, run inside `node`.
pub fn command(node: &Netns, launch: &ZtunnelLaunch<'_>) -> Command {
    let l = launch.layout;
    let mut cmd = node.command(launch.binary);
    cmd.args(["--node", launch.node])
        .arg("--handoff-socket")
        .arg(l.handoff_socket())
        .arg("--admin-socket")
        .arg(l.ztunnel_instance_socket(launch.instance))
        .args([
            "--admin-addr",
            &format!("127.0.0.1:{ADMIN_PORT}"),
            "--metrics-addr",
            &format!("0.0.0.0:{METRICS_PORT}"),
            "--readiness-addr",
            &format!("0.0.0.0:{READINESS_PORT}"),
            "--controller",
            launch.controller_url,
        ])
        .arg("--controller-ca")
        .arg(launch.controller_ca)
        .arg("--token-file")
        .arg(launch.token_file);
    super::log_env(&mut cmd);
    cmd
}

/// Waits until this instance says it is ready on its own admin socket (the
/// readiness port is shared with an instance still running beside it, so
/// it could answer for the old one), then points the node's stable admin
/// socket name at it.
pub fn wait_ready(process: &mut ManagedProcess, layout: &NodeLayout, instance: u32) -> Result<()> {
    let socket = layout.ztunnel_instance_socket(instance);
    process.wait_ready("ready on /healthz/ready", READY_TIMEOUT, || {
        http::get_unix(&socket, "/healthz/ready").is_ok_and(|r| r.status == 200)
    })?;
    let link = layout.ztunnel_admin_socket();
    let tmp = layout.dir.join(".ztunnel-admin.sock.tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&socket, &tmp).map_err(crate::error::Error::io(&tmp))?;
    std::fs::rename(&tmp, &link).map_err(crate::error::Error::io(&link))
}

/// GET `/healthz/ready` on the readiness port.
pub fn readiness(node: &Netns) -> Result<http::Response> {
    http::get(
        Some(node),
        SocketAddr::from(([127, 0, 0, 1], READINESS_PORT)),
        "/healthz/ready",
    )
}

/// GET `path` from the admin API, over its unix socket.
pub fn admin(layout: &NodeLayout, path: &str) -> Result<http::Response> {
    http::get_unix(&layout.ztunnel_admin_socket(), path)
}
