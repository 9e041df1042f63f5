//! The flags every proxy takes (ztunnel and the waypoint flatten
//! [`ProxyFlags`] into their own): where config and certificates come from,
//! the admin, metrics and readiness addresses, the drain deadline and
//! logging. Each can also come from the environment, under the same name
//! for both proxies.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{ArgGroup, Args, ValueEnum};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Config and certificates come from the controller, or (local mode) from
/// a YAML file and a CA root on disk.
#[derive(Clone, Debug, Args)]
#[command(group(ArgGroup::new("config").required(true).args(["controller", "config_file"])))]
#[command(group(ArgGroup::new("certs").required(true).args(["controller", "ca_dir"])))]
pub struct ProxyFlags {
    /// The controller's gRPC address (config stream and CA), e.g.
    /// https://weft-controller.weft-system.svc:15012.
    #[arg(long, env = "WEFT_CONTROLLER", requires = "controller_ca")]
    pub controller: Option<String>,
    /// PEM root that the controller's serving certificate chains to.
    #[arg(long, env = "WEFT_CONTROLLER_CA")]
    pub controller_ca: Option<PathBuf>,
    /// Bearer token for the controller, re-read on every call: in
    /// Kubernetes a ServiceAccount token bound to the proxy's pod; in files
    /// mode a bootstrap token.
    #[arg(
        long,
        env = "WEFT_TOKEN_FILE",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    )]
    pub token_file: PathBuf,

    /// Local mode: the config model as YAML (reloaded when it changes).
    #[arg(long, env = "WEFT_CONFIG_FILE", conflicts_with = "controller")]
    pub config_file: Option<PathBuf>,
    /// Local mode: a directory with root-cert.pem and root-key.pem; the
    /// proxy signs its certificates itself. For local clusters and tests.
    #[arg(long, env = "WEFT_CA_DIR")]
    pub ca_dir: Option<PathBuf>,
    /// Local mode: lifetime of the certificates it signs, in seconds.
    #[arg(long, default_value_t = 24 * 3600)]
    pub cert_ttl_seconds: u64,

    /// SPIFFE trust domain.
    #[arg(long, env = "WEFT_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,

    /// Admin API (JSON) on TCP, read-only endpoints; keep it on loopback.
    #[arg(long, env = "WEFT_ADMIN_ADDR", default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,
    /// Prometheus metrics.
    #[arg(long, env = "WEFT_METRICS_ADDR", default_value = "0.0.0.0:15020")]
    pub metrics_addr: SocketAddr,
    /// Readiness (`/healthz/ready`).
    #[arg(long, env = "WEFT_READINESS_ADDR", default_value = "0.0.0.0:15021")]
    pub readiness_addr: SocketAddr,
    /// Metric names: `weft` (`weft_*`), `istio` (`istio_*` with Istio's
    /// standard labels, what Istio's Grafana dashboards and Kiali read) or
    /// `both` (docs/observability.md).
    #[arg(long, env = "WEFT_METRIC_NAMES", value_enum, default_value = "both")]
    pub metric_names: crate::standard_metrics::MetricNames,
    /// The cluster's name in Istio's `source_cluster` and
    /// `destination_cluster` labels.
    #[arg(long, env = "WEFT_CLUSTER_ID", default_value = crate::standard_metrics::DEFAULT_CLUSTER)]
    pub cluster_id: String,

    /// Threads that run the proxy (default: half the CPUs it may run on, at
    /// least one). Each thread beyond what the load needs costs cross-thread
    /// wake-ups on every connection and request, which on a VM are
    /// interrupts to halted vCPUs (docs/benchmarks.md, `l4` and `waypoint`).
    #[arg(long, env = "WEFT_WORKER_THREADS")]
    pub worker_threads: Option<std::num::NonZeroUsize>,

    /// On SIGTERM, how long open connections may take to finish, in seconds.
    #[arg(long, env = "WEFT_DRAIN_SECONDS", default_value_t = 30)]
    pub drain_seconds: u64,

    /// Log format.
    #[arg(long, env = "WEFT_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Log filter (tracing syntax); `RUST_LOG` works too.
    #[arg(long, env = "WEFT_LOG", default_value = "info")]
    pub log: String,

    /// Send OpenTelemetry spans to this OTLP/gRPC collector, e.g.
    /// `http://collector:4317` (docs/observability.md, Tracing). Unset: no
    /// tracing.
    #[arg(long, env = "WEFT_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// The share of new traces recorded, 0.0 to 1.0; a caller's sampled or
    /// unsampled `traceparent` decides for its own.
    #[arg(long, env = "WEFT_TRACE_SAMPLING", default_value_t = 1.0, value_parser = sampling_ratio)]
    pub trace_sampling: f64,
}

impl ProxyFlags {
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

    /// The runtime the proxy runs on, with [`Self::worker_threads`] threads.
    ///
    /// One thread is tokio's current-thread scheduler, not the multi-thread
    /// one with a single worker: its run queue is first in, first out, so a
    /// task woken by another (an HTTP/2 connection's task, woken by each
    /// stream that sends) runs after the tasks already ready, and writes
    /// what all of them sent in one go instead of one frame, TLS record and
    /// system call each. The multi-thread scheduler runs the woken task
    /// next (its LIFO slot). Measured on the waypoint: 20% less CPU per
    /// request, and less for its clients too (docs/benchmarks.md).
    pub fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        let threads = self.worker_threads();
        let mut builder = if threads == 1 {
            tokio::runtime::Builder::new_current_thread()
        } else {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(threads);
            builder
        };
        builder.enable_all().build()
    }
}

fn sampling_ratio(text: &str) -> Result<f64, String> {
    let ratio: f64 = text.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&ratio) {
        Ok(ratio)
    } else {
        Err(format!("{ratio} is not between 0.0 and 1.0"))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use tokio::runtime::RuntimeFlavor;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        proxy: ProxyFlags,
    }

    fn parse(threads: &str) -> Result<Cli, clap::Error> {
        let args = ["proxy", "--config-file", "c.yaml", "--ca-dir", "ca"];
        Cli::try_parse_from(args.into_iter().chain(["--worker-threads", threads]))
    }

    fn flags(threads: &str) -> ProxyFlags {
        parse(threads).expect("valid flags").proxy
    }

    #[test]
    fn one_thread_is_the_current_thread_scheduler() {
        let runtime = flags("1").runtime().expect("runtime");
        assert_eq!(
            runtime.handle().runtime_flavor(),
            RuntimeFlavor::CurrentThread
        );
        // Timers and I/O are enabled: a proxy needs both.
        runtime.block_on(async {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
        });
    }

    #[test]
    fn more_threads_are_the_multi_thread_scheduler() {
        let runtime = flags("3").runtime().expect("runtime");
        assert_eq!(
            runtime.handle().runtime_flavor(),
            RuntimeFlavor::MultiThread
        );
        assert_eq!(runtime.metrics().num_workers(), 3);
    }

    #[test]
    fn zero_threads_is_refused() {
        assert!(parse("0").is_err());
    }
}
