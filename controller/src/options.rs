//! The controller's flags (every one also readable from the environment).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// Where the cluster state comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RegistryKind {
    /// An API server (in-cluster config or kubeconfig).
    Kubernetes,
    /// A directory of Kubernetes YAML (`--manifests`).
    Files,
}

/// weft's control plane: registry → model → config stream, and the CA.
#[derive(Clone, Debug, Parser)]
#[command(name = "weft-controller", version)]
pub struct Options {
    /// Where cluster state comes from.
    #[arg(long, env = "WEFT_REGISTRY", value_enum, default_value = "kubernetes")]
    pub registry: RegistryKind,
    /// The manifest directory (files registry).
    #[arg(long, env = "WEFT_MANIFESTS", required_if_eq("registry", "files"))]
    pub manifests: Option<PathBuf>,
    /// gRPC (config stream + CA), TLS.
    #[arg(long, env = "WEFT_GRPC_ADDR", default_value = "0.0.0.0:15012")]
    pub grpc_addr: SocketAddr,
    /// Prometheus metrics.
    #[arg(long, env = "WEFT_METRICS_ADDR", default_value = "0.0.0.0:15014")]
    pub metrics_addr: SocketAddr,
    /// Debug API; keep it on loopback.
    #[arg(long, env = "WEFT_DEBUG_ADDR", default_value = "127.0.0.1:15000")]
    pub debug_addr: SocketAddr,
    /// SPIFFE trust domain.
    #[arg(long, env = "WEFT_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// DNS suffix of Services.
    #[arg(long, env = "WEFT_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,
    /// The namespace of mesh-wide policies, and where the controller runs.
    #[arg(long, env = "WEFT_ROOT_NAMESPACE", default_value = "weft-system")]
    pub root_namespace: String,
    /// Files mode: the directory holding root-cert.pem and root-key.pem
    /// (created on first start). Proxies verify the gRPC server with
    /// root-cert.pem.
    #[arg(long, env = "WEFT_CA_DIR", required_if_eq("registry", "files"))]
    pub ca_dir: Option<PathBuf>,
    /// Kubernetes: the Secret (in the root namespace) holding the root.
    #[arg(long, env = "WEFT_CA_SECRET", default_value = "weft-ca")]
    pub ca_secret: String,
    /// Files mode: bootstrap tokens, `<dir>/nodes/<node>` and
    /// `<dir>/waypoints/<namespace>/<serviceaccount>`.
    #[arg(
        long,
        env = "WEFT_BOOTSTRAP_TOKENS",
        required_if_eq("registry", "files")
    )]
    pub bootstrap_tokens: Option<PathBuf>,
    /// Kubernetes: the ztunnel DaemonSet's ServiceAccount, `namespace/name`.
    #[arg(long, env = "WEFT_ZTUNNEL_SA", default_value = "weft-system/ztunnel")]
    pub ztunnel_service_account: String,
    /// Kubernetes: audiences the proxies' tokens must carry (one is
    /// enough). The default is weft's own, which the waypoints the deployer
    /// creates request; the ztunnel DaemonSet must mount a projected
    /// ServiceAccount token with it. An empty value accepts the API server's
    /// default audience, i.e. every pod's automounted token (not
    /// recommended).
    #[arg(
        long,
        env = "WEFT_TOKEN_AUDIENCES",
        value_delimiter = ',',
        default_value = crate::auth::CONTROLLER_AUDIENCE
    )]
    pub token_audiences: Vec<String>,
    /// DNS names on the gRPC serving certificate.
    #[arg(
        long,
        env = "WEFT_SERVING_DNS",
        value_delimiter = ',',
        default_value = "weft-controller.weft-system.svc,weft-controller.weft-system.svc.cluster.local,localhost"
    )]
    pub serving_dns: Vec<String>,
    /// IP addresses on the gRPC serving certificate.
    #[arg(
        long,
        env = "WEFT_SERVING_IPS",
        value_delimiter = ',',
        default_value = "127.0.0.1"
    )]
    pub serving_ips: Vec<IpAddr>,
    /// Longest (and default) workload certificate lifetime, in seconds.
    #[arg(long, env = "WEFT_CERT_TTL_SECONDS", default_value_t = 24 * 3600)]
    pub cert_ttl_seconds: u64,
    /// Quiet time before a change is pushed, in milliseconds.
    #[arg(long, env = "WEFT_DEBOUNCE_MS", default_value_t = 20)]
    pub debounce_ms: u64,
    /// Full snapshots in flight at once (bounds memory when many proxies
    /// reconnect together).
    #[arg(long, env = "WEFT_CONCURRENT_SNAPSHOTS", default_value_t = crate::server::DEFAULT_CONCURRENT_SNAPSHOTS)]
    pub concurrent_snapshots: usize,
    /// Full snapshots one caller (a node's ztunnel, a waypoint's
    /// ServiceAccount) may have in flight at once, so that one caller cannot
    /// take every slot of --concurrent-snapshots and stall new proxies.
    #[arg(long, env = "WEFT_SNAPSHOTS_PER_CALLER", default_value_t = crate::server::DEFAULT_SNAPSHOTS_PER_CALLER)]
    pub snapshots_per_caller: usize,
    /// Config streams one caller may have open at once; the next is refused
    /// with RESOURCE_EXHAUSTED. Every replica of a waypoint counts against
    /// its ServiceAccount: raise this above a waypoint's replica count.
    #[arg(long, env = "WEFT_MAX_STREAMS_PER_CALLER", default_value_t = crate::server::DEFAULT_STREAMS_PER_CALLER)]
    pub max_streams_per_caller: usize,
    /// Seconds a client has to complete its TLS handshake on the gRPC port
    /// before the connection is closed.
    #[arg(long, env = "WEFT_TLS_HANDSHAKE_TIMEOUT_SECONDS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub tls_handshake_timeout_seconds: u64,
    /// TLS handshakes in progress at once on the gRPC port; beyond it the
    /// oldest handshake is closed at once to make room (a real client's
    /// takes milliseconds).
    #[arg(long, env = "WEFT_MAX_PENDING_HANDSHAKES", default_value_t = crate::server::DEFAULT_MAX_PENDING_HANDSHAKES)]
    pub max_pending_handshakes: usize,
    /// TLS handshakes in progress at once from one source address (one /64
    /// for IPv6); a connection beyond it is closed at once.
    #[arg(long, env = "WEFT_MAX_PENDING_HANDSHAKES_PER_SOURCE", default_value_t = crate::server::DEFAULT_MAX_PENDING_HANDSHAKES_PER_SOURCE)]
    pub max_pending_handshakes_per_source: usize,
    /// Open connections on the gRPC port (handshaking or established); a
    /// connection beyond it is closed at once. Lowered at start to fit the
    /// process's open-file limit.
    #[arg(long, env = "WEFT_MAX_CONNECTIONS", default_value_t = crate::server::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Kubernetes: elect a leader on a Lease; only the leader deploys
    /// waypoints and writes status.
    #[arg(long, env = "WEFT_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// The Lease's name (in the root namespace).
    #[arg(long, env = "WEFT_LEASE_NAME", default_value = "weft-controller")]
    pub lease_name: String,
    /// How long the Lease holds without renewal, in seconds: a replica that
    /// stops renewing (it crashed) is replaced after at most this long.
    #[arg(long, env = "WEFT_LEASE_DURATION_SECONDS", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(2..))]
    pub lease_duration_seconds: u64,
    /// The leader renews this long before the Lease would expire, in
    /// seconds (tolerated clock skew); less than the duration.
    #[arg(long, env = "WEFT_LEASE_GRACE_SECONDS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub lease_grace_seconds: u64,
    /// This replica's name in the Lease (default: the host name).
    #[arg(long, env = "POD_NAME")]
    pub replica: Option<String>,
    /// The waypoint proxy image the deployer uses.
    #[arg(
        long,
        env = "WEFT_WAYPOINT_IMAGE",
        default_value = "ghcr.io/weft-mesh/waypoint:latest"
    )]
    pub waypoint_image: String,
    /// The address proxies use to reach this controller (waypoint env).
    #[arg(
        long,
        env = "WEFT_CONTROLLER_ADDRESS",
        default_value = "https://weft-controller.weft-system.svc:15012"
    )]
    pub controller_address: String,
    /// Tracing in the waypoints the deployer creates: their OTLP/gRPC
    /// collector (`WEFT_OTLP_ENDPOINT` in each waypoint Deployment, e.g.
    /// `http://collector.observability:4317`). Unset: waypoints trace
    /// nothing.
    #[arg(long, env = "WEFT_WAYPOINT_OTLP_ENDPOINT", value_parser = non_empty)]
    pub waypoint_otlp_endpoint: Option<String>,
    /// The share of new traces the waypoints record, 0.0 to 1.0
    /// (`WEFT_TRACE_SAMPLING` in each waypoint Deployment). Unset: the
    /// waypoint's own default, every trace.
    #[arg(long, env = "WEFT_WAYPOINT_TRACE_SAMPLING", value_parser = sampling_ratio)]
    pub waypoint_trace_sampling: Option<f64>,
    /// Log as JSON.
    #[arg(long, env = "WEFT_LOG_JSON")]
    pub log_json: bool,
}

/// An empty endpoint is a mistake (a chart value rendered empty), not "off":
/// refuse it rather than hand every waypoint an endpoint it cannot use.
fn non_empty(text: &str) -> Result<String, String> {
    if text.trim().is_empty() {
        Err("empty (leave the flag out to turn tracing off)".to_string())
    } else {
        Ok(text.to_string())
    }
}

/// What the waypoint's `--trace-sampling` accepts (weft-runtime's flags),
/// checked here so that a bad value stops the controller at start rather
/// than every waypoint it deploys.
fn sampling_ratio(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
        Ok(ratio) => Err(format!("{ratio} is not between 0.0 and 1.0")),
        Err(e) => Err(e.to_string()),
    }
}

impl Options {
    /// This replica's name: in the Lease, and in what its debug API says
    /// (`--replica`, else the host name, else the process id).
    pub fn replica_name(&self) -> String {
        self.replica.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| format!("weft-controller-{}", std::process::id()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waypoint_tracing_is_off_by_default_and_the_ratio_is_checked() {
        let options = Options::try_parse_from(["weft-controller"]).expect("defaults parse");
        assert_eq!(options.waypoint_otlp_endpoint, None);
        assert_eq!(options.waypoint_trace_sampling, None);
        let options = Options::try_parse_from([
            "weft-controller",
            "--waypoint-otlp-endpoint",
            "http://collector:4317",
            "--waypoint-trace-sampling",
            "0.25",
        ])
        .expect("parses");
        assert_eq!(
            options.waypoint_otlp_endpoint.as_deref(),
            Some("http://collector:4317")
        );
        assert_eq!(options.waypoint_trace_sampling, Some(0.25));
        for bad in [
            ["--waypoint-trace-sampling", "1.5"],
            ["--waypoint-trace-sampling", "-0.1"],
            ["--waypoint-trace-sampling", "half"],
            ["--waypoint-otlp-endpoint", ""],
        ] {
            assert!(
                Options::try_parse_from([&["weft-controller"][..], &bad[..]].concat()).is_err(),
                "{bad:?} must be refused"
            );
        }
    }

    /// The deployer's default is the chart's waypoint image (the one image
    /// table, crates/image/src/names.rs), so a controller started without
    /// the chart's `WEFT_WAYPOINT_IMAGE` deploys the same image.
    #[test]
    fn the_default_waypoint_image_is_the_charts() {
        let options = Options::try_parse_from(["weft-controller"]).expect("defaults parse");
        let chart = weft_image::ImageNames::chart();
        assert_eq!(
            options.waypoint_image,
            chart
                .reference("waypoint")
                .expect("the chart names the waypoint")
        );
    }
}
