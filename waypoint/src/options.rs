//! The waypoint's flags; each can also come from the environment (the
//! controller's deployer sets `WEFT_CONTROLLER_ADDRESS`,
//! `WEFT_WAYPOINT_NAMESPACE`, `WEFT_WAYPOINT_NAME`, `WEFT_CA_ROOT`,
//! `POD_NAME`, `NODE_NAME`).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{ArgGroup, Parser};
pub use weft_ztunnel::options::LogFormat;

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
#[command(group(ArgGroup::new("config").required(true).args(["controller", "config_file"])))]
#[command(group(ArgGroup::new("certs").required(true).args(["controller", "ca_dir"])))]
pub struct Options {
    /// The namespace of this waypoint's Gateway.
    #[arg(long, env = "WEFT_WAYPOINT_NAMESPACE")]
    pub namespace: String,
    /// The name of this waypoint's Gateway.
    #[arg(long, env = "WEFT_WAYPOINT_NAME")]
    pub name: String,
    /// The service account it runs as (its identity); the deployer names it
    /// after the Gateway, which is the default.
    #[arg(long, env = "WEFT_WAYPOINT_SERVICE_ACCOUNT")]
    pub service_account: Option<String>,
    /// SPIFFE trust domain.
    #[arg(long, env = "WEFT_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// The node it runs on (informational; sent to the controller).
    #[arg(long, env = "NODE_NAME", default_value = "")]
    pub node: String,
    /// Its pod's name (names the config stream subscriber).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,

    /// The controller's gRPC address (config stream and CA), e.g.
    /// https://weft-controller.weft-system.svc:15012.
    #[arg(long, env = "WEFT_CONTROLLER_ADDRESS", requires = "controller_ca")]
    pub controller: Option<String>,
    /// PEM root that the controller's serving certificate chains to.
    #[arg(long, env = "WEFT_CA_ROOT")]
    pub controller_ca: Option<PathBuf>,
    /// Bearer token for the controller, re-read on every call (its
    /// ServiceAccount token; in files mode the bootstrap token in
    /// `<tokens>/waypoints/<namespace>/<service account>`).
    #[arg(
        long,
        env = "WEFT_TOKEN_FILE",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    )]
    pub token_file: PathBuf,

    /// Local mode: the config model as YAML, as ztunnel's plus `routes:`
    /// (reloaded when it changes).
    #[arg(long, env = "WEFT_CONFIG_FILE", conflicts_with = "controller")]
    pub config_file: Option<PathBuf>,
    /// Local mode: a directory with root-cert.pem and root-key.pem; the
    /// waypoint signs its own certificate. For local runs and tests.
    #[arg(long, env = "WEFT_CA_DIR")]
    pub ca_dir: Option<PathBuf>,
    /// Local mode: lifetime of the certificate it signs, in seconds.
    #[arg(long, default_value_t = 24 * 3600)]
    pub cert_ttl_seconds: u64,

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

    /// Admin API (JSON); keep it on loopback.
    #[arg(long, env = "WEFT_ADMIN_ADDR", default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,
    /// Admin API on a unix socket too, for a CLI outside this network
    /// namespace.
    #[arg(long, env = "WEFT_ADMIN_SOCKET")]
    pub admin_socket: Option<PathBuf>,
    /// Prometheus metrics.
    #[arg(long, env = "WEFT_METRICS_ADDR", default_value = "0.0.0.0:15020")]
    pub metrics_addr: SocketAddr,
    /// Readiness (`/healthz/ready`).
    #[arg(long, env = "WEFT_READINESS_ADDR", default_value = "0.0.0.0:15021")]
    pub readiness_addr: SocketAddr,

    /// On SIGTERM, how long open tunnels may take to finish, in seconds.
    #[arg(long, env = "WEFT_DRAIN_SECONDS", default_value_t = 30)]
    pub drain_seconds: u64,
    /// No access log line per request.
    #[arg(long, env = "WEFT_NO_ACCESS_LOG")]
    pub no_access_log: bool,
    /// Log format.
    #[arg(long, env = "WEFT_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Log filter (tracing syntax); `RUST_LOG` works too.
    #[arg(long, env = "WEFT_LOG", default_value = "info")]
    pub log: String,
}
