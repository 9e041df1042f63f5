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
#[command(
    name = "ztunnel",
    version,
    after_help = "`ztunnel probe --help`: the kubelet's probe of a running ztunnel."
)]
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

    /// Readiness on a unix socket too, for `ztunnel probe`. In Kubernetes
    /// this is a path in the container's own emptyDir: on the host network
    /// the readiness port is shared with the ztunnel being replaced, and
    /// only this socket is sure to be answered by this process.
    #[arg(long, env = PROBE_SOCKET_ENV)]
    pub probe_socket: Option<PathBuf>,
}

/// Read by the proxy and by `ztunnel probe` alike, so the pod spec names
/// the path once.
const PROBE_SOCKET_ENV: &str = "WEFT_PROBE_SOCKET";

/// `ztunnel probe`: asks the ztunnel of this container whether it is
/// ready, over its `--probe-socket`; the kubelet's exec probe. Exits 0 if
/// it is, 1 with the reason if it is not or does not answer.
#[derive(Clone, Debug, Parser)]
#[command(name = "ztunnel probe", version)]
pub struct ProbeOptions {
    /// Alive is enough: any answer passes (the liveness probe; not being
    /// ready yet is no reason to restart).
    #[arg(long)]
    pub live: bool,
    /// The socket ztunnel serves readiness on (its `--probe-socket`).
    #[arg(long, env = PROBE_SOCKET_ENV)]
    pub socket: PathBuf,
    /// How long to wait for the answer, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
}

impl ProbeOptions {
    /// The probe's flags if `args` (a whole command line) are `ztunnel
    /// probe ...`; a separate parser, since the proxy's own flags are
    /// required and the probe needs none of them.
    pub fn from_command_line(
        args: impl IntoIterator<Item = std::ffi::OsString>,
    ) -> Option<Result<ProbeOptions, clap::Error>> {
        let mut args = args.into_iter().skip(1).peekable();
        if args.peek().map(|a| a.as_os_str()) != Some("probe".as_ref()) {
            return None;
        }
        Some(ProbeOptions::try_parse_from(
            std::iter::once("ztunnel probe".into()).chain(args.skip(1)),
        ))
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
    fn probe_runs_without_the_proxys_flags_but_needs_its_socket() {
        use super::ProbeOptions;
        let line = |args: &[&str]| {
            ProbeOptions::from_command_line(args.iter().map(std::ffi::OsString::from))
        };
        let probe = line(&["/usr/local/bin/ztunnel", "probe", "--socket", "/run/p.sock"])
            .expect("the probe's command line")
            .expect("no --node or config source needed");
        assert!(!probe.live);
        assert_eq!(probe.socket, std::path::PathBuf::from("/run/p.sock"));
        assert!(
            line(&["ztunnel", "probe", "--socket", "/p", "--live"])
                .is_some_and(|p| p.is_ok_and(|p| p.live))
        );
        if std::env::var_os("WEFT_PROBE_SOCKET").is_none() {
            let err = line(&["ztunnel", "probe"])
                .expect("probe")
                .expect_err("no socket");
            assert!(err.to_string().contains("--socket"), "{err}");
        }
        // Anything else is the proxy's, which still needs its flags.
        assert!(line(&["ztunnel", "--node", "probe"]).is_none());
        assert!(line(&["ztunnel"]).is_none());
        assert!(Options::try_parse_from(["ztunnel"]).is_err());
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
