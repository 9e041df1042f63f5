//! ztunnel's flags; each can also come from the environment.

use std::path::PathBuf;

use clap::Parser;
use weft_runtime::flags::ProxyFlags;

/// weft's node proxy: captures the traffic of enrolled pods inside their
/// network namespaces and carries it over HBONE (mTLS + HTTP/2 CONNECT on
/// port 15008), enforcing L4 authorization.
///
/// Config comes from the controller's stream (`--controller`) or, in local
/// mode, from a YAML file (`--config-file`); certificates come from the
/// controller's CA, or in local mode from a CA root on disk (`--ca-dir`).
#[derive(Clone, Debug, Parser)]
#[command(name = "ztunnel", version)]
pub struct Options {
    /// The node this ztunnel serves.
    #[arg(long, env = "NODE_NAME")]
    pub node: String,

    #[command(flatten)]
    pub proxy: ProxyFlags,

    /// The node agent's handoff socket (SEQPACKET).
    #[arg(
        long,
        env = "WEFT_HANDOFF_SOCKET",
        default_value = "/var/run/weft/ztunnel.sock"
    )]
    pub handoff_socket: PathBuf,

    /// Admin API on a unix socket too, for a CLI outside this network namespace.
    #[arg(
        long,
        env = "WEFT_ADMIN_SOCKET",
        default_value = "/var/run/weft/ztunnel-admin.sock"
    )]
    pub admin_socket: PathBuf,
    /// How long a connection waits for its pod's first certificate, in seconds.
    #[arg(long, default_value_t = 10)]
    pub cert_wait_seconds: u64,
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
        assert_eq!(parse(&["--worker-threads", "3"]).proxy.worker_threads(), 3);
        if std::env::var_os("WEFT_WORKER_THREADS").is_none() {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            assert_eq!(parse(&[]).proxy.worker_threads(), (cpus / 2).max(1));
        }
        assert!(Options::try_parse_from(["ztunnel", "--worker-threads", "0"]).is_err());
    }

    #[test]
    fn tracing_is_off_without_an_endpoint_and_sampling_is_a_ratio() {
        use weft_runtime::otel::TracingSettings;
        if std::env::var_os("WEFT_OTLP_ENDPOINT").is_none() {
            assert!(TracingSettings::from_flags(&parse(&[]).proxy, "ztunnel").is_none());
        }
        let on = parse(&[
            "--otlp-endpoint",
            "http://c:4317",
            "--trace-sampling",
            "0.25",
        ]);
        let settings = TracingSettings::from_flags(&on.proxy, "ztunnel").expect("tracing on");
        assert_eq!(
            (settings.endpoint.as_str(), settings.sampling),
            ("http://c:4317", 0.25)
        );
        let base = [
            "ztunnel",
            "--node",
            "n",
            "--config-file",
            "/dev/null",
            "--ca-dir",
            "/tmp",
        ];
        for bad in ["1.5", "-0.1", "x"] {
            let args = base.iter().copied().chain(["--trace-sampling", bad]);
            assert!(Options::try_parse_from(args).is_err(), "{bad}");
        }
    }
}
