//! ztunnel's flags; each can also come from the environment.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{ArgGroup, Parser, ValueEnum};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// weft's node proxy: captures the traffic of enrolled pods inside their
/// network namespaces and carries it over HBONE (mTLS + HTTP/2 CONNECT on
/// port 15008), enforcing L4 authorization.
///
/// Config comes from the controller's stream (`--controller`) or, in local
/// mode, from a YAML file (`--config-file`); certificates come from the
/// controller's CA, or in local mode from a CA root on disk (`--ca-dir`).
#[derive(Clone, Debug, Parser)]
#[command(name = "ztunnel", version)]
#[command(group(ArgGroup::new("config").required(true).args(["controller", "config_file"])))]
#[command(group(ArgGroup::new("certs").required(true).args(["controller", "ca_dir"])))]
pub struct Options {
    /// The node this ztunnel serves.
    #[arg(long, env = "NODE_NAME")]
    pub node: String,

    /// The controller's gRPC address (config stream and CA), e.g.
    /// https://10.0.0.1:15012.
    #[arg(long, env = "WEFT_CONTROLLER", requires_all = ["controller_ca", "token_file"])]
    pub controller: Option<String>,
    /// PEM root that the controller's serving certificate chains to.
    #[arg(long, env = "WEFT_CONTROLLER_CA")]
    pub controller_ca: Option<PathBuf>,
    /// Bearer token for the controller (re-read on every call).
    #[arg(long, env = "WEFT_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// Local mode: the config model as YAML (reloaded when it changes).
    #[arg(long, env = "WEFT_CONFIG_FILE", conflicts_with = "controller")]
    pub config_file: Option<PathBuf>,
    /// Local mode: a directory with root-cert.pem and root-key.pem; ztunnel
    /// signs its pods' certificates itself. For local clusters and tests.
    #[arg(long, env = "WEFT_CA_DIR")]
    pub ca_dir: Option<PathBuf>,
    /// Local mode: lifetime of the certificates it signs, in seconds.
    #[arg(long, default_value_t = 24 * 3600)]
    pub cert_ttl_seconds: u64,

    /// SPIFFE trust domain of the pods' identities.
    #[arg(long, env = "WEFT_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,

    /// The node agent's handoff socket (SEQPACKET).
    #[arg(
        long,
        env = "WEFT_HANDOFF_SOCKET",
        default_value = "/var/run/weft/ztunnel.sock"
    )]
    pub handoff_socket: PathBuf,

    /// Admin API (JSON) on TCP; keep it on loopback.
    #[arg(long, env = "WEFT_ADMIN_ADDR", default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,
    /// Admin API on a unix socket too, for a CLI outside this network namespace.
    #[arg(
        long,
        env = "WEFT_ADMIN_SOCKET",
        default_value = "/var/run/weft/ztunnel-admin.sock"
    )]
    pub admin_socket: PathBuf,
    /// Prometheus metrics.
    #[arg(long, env = "WEFT_METRICS_ADDR", default_value = "0.0.0.0:15020")]
    pub metrics_addr: SocketAddr,
    /// Readiness (`/healthz/ready`).
    #[arg(long, env = "WEFT_READINESS_ADDR", default_value = "0.0.0.0:15021")]
    pub readiness_addr: SocketAddr,

    /// On SIGTERM, how long open connections may take to finish, in seconds.
    #[arg(long, env = "WEFT_DRAIN_SECONDS", default_value_t = 30)]
    pub drain_seconds: u64,
    /// Threads that run the proxy (default: half the CPUs ztunnel may run
    /// on, at least one). ztunnel shares the node's cores with the workloads
    /// it serves; each thread beyond what the load needs costs cross-thread
    /// wake-ups on every connection (docs/benchmarks.md, `l4`).
    #[arg(long, env = "WEFT_WORKER_THREADS")]
    pub worker_threads: Option<std::num::NonZeroUsize>,
    /// How long a connection waits for its pod's first certificate, in seconds.
    #[arg(long, default_value_t = 10)]
    pub cert_wait_seconds: u64,

    /// Log format.
    #[arg(long, env = "WEFT_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Log filter (tracing syntax); `RUST_LOG` works too.
    #[arg(long, env = "WEFT_LOG", default_value = "info")]
    pub log: String,
}

impl Options {
    /// `--worker-threads`, or half the CPUs this process may run on (its
    /// affinity mask and cgroup quota, as the standard library reads them),
    /// at least one.
    pub fn worker_threads(&self) -> usize {
        self.worker_threads.map(|n| n.get()).unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get() / 2)
                .unwrap_or(1)
                .max(1)
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::Options;

    fn parse(extra: &[&str]) -> Options {
        let base = [
            "ztunnel",
            "--node",
            "node-1",
            "--config-file",
            "/dev/null",
            "--ca-dir",
            "/tmp",
        ];
        Options::try_parse_from(base.iter().chain(extra)).expect("flags parse")
    }

    #[test]
    fn worker_threads_are_the_flag_or_half_the_cpus_and_never_zero() {
        assert_eq!(parse(&["--worker-threads", "3"]).worker_threads(), 3);
        if std::env::var_os("WEFT_WORKER_THREADS").is_none() {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            assert_eq!(parse(&[]).worker_threads(), (cpus / 2).max(1));
        }
        assert!(Options::try_parse_from(["ztunnel", "--worker-threads", "0"]).is_err());
    }
}
