//! The waypoint's flags; each can also come from the environment (the
//! controller's deployer sets `WEFT_CONTROLLER`, `WEFT_CONTROLLER_CA`,
//! `WEFT_TOKEN_FILE`, `WEFT_WAYPOINT_NAMESPACE`, `WEFT_WAYPOINT_NAME`,
//! `POD_NAME`, `NODE_NAME`). The flags every proxy takes are
//! `weft_runtime::flags::ProxyFlags`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use weft_runtime::flags::ProxyFlags;

/// weft's waypoint: the L7 proxy of a Gateway of class weft-waypoint.
/// Accepts HBONE tunnels (mTLS + HTTP/2 CONNECT) on 15008 for the Services
/// and workloads bound to it, enforces L7 authorization, routes by
/// HTTPRoute/GRPCRoute and forwards to endpoints over HBONE with its own
/// identity.
///
/// Config comes from the controller's stream (`--controller`) or, in local
/// mode, from a YAML file (`--config-file`); its certificate from the
/// controller's CA, or in local mode from a CA root on disk (`--ca-dir`).
#[derive(Clone, Debug, Parser)]
#[command(name = "waypoint", version)]
pub struct Options {
    /// The namespace of this waypoint's Gateway.
    #[arg(long, env = "WEFT_WAYPOINT_NAMESPACE")]
    pub namespace: String,
    /// The name of this waypoint's Gateway.
    #[arg(long, env = "WEFT_WAYPOINT_NAME")]
    pub name: String,
    /// The service account it runs as (its identity); by default the one the
    /// deployer makes, `<name>-weft-waypoint` (docs/design.md §5). The
    /// deployer also passes its pod's own.
    #[arg(long, env = "WEFT_WAYPOINT_SERVICE_ACCOUNT")]
    pub service_account: Option<String>,
    /// The node it runs on (informational; sent to the controller).
    #[arg(long, env = "NODE_NAME", default_value = "")]
    pub node: String,
    /// Its pod's name (names the config stream subscriber).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,

    #[command(flatten)]
    pub proxy: ProxyFlags,

    /// Inbound HBONE.
    #[arg(long, env = "WEFT_HBONE_ADDR", default_value = "0.0.0.0:15008")]
    pub hbone_addr: SocketAddr,
    /// The HBONE port of destination ztunnels.
    #[arg(long, default_value_t = 15008)]
    pub upstream_hbone_port: u16,
    /// How long a client of a port without appProtocol may stay silent
    /// before its tunnel is treated as TCP, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub sniff_timeout_ms: u64,

    /// Admin API on a unix socket too, for a CLI outside this network
    /// namespace.
    #[arg(long, env = "WEFT_ADMIN_SOCKET")]
    pub admin_socket: Option<PathBuf>,
    /// No access log line per request.
    #[arg(long, env = "WEFT_NO_ACCESS_LOG")]
    pub no_access_log: bool,
}
