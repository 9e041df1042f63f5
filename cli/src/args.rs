//! The command line. Every doc comment here is `--help` text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// See into a weft mesh and drive it.
///
/// weftctl talks to a local cluster of the e2e harness (--run-dir, or
/// WEFT_RUN_DIR) or to a Kubernetes cluster (the current kubeconfig context,
/// or --kubeconfig / --context). Reads print tables for people and JSON or
/// YAML for scripts (-o json|yaml).
///
/// Exit codes: 0 ok (explain: allowed), 1 unexpected error, 2 bad command
/// line, 3 a component is unreachable, 4 not found, 5 check found problems,
/// 6 explain: denied, 7 some nodes could not be read (partial output).
#[derive(Debug, Parser)]
#[command(name = "weftctl", version, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Output format: a table for people, or a document for scripts.
    #[arg(short, long, global = true, value_enum, default_value = "table")]
    pub output: Format,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Seconds to wait for each component (connect and answer).
    #[arg(long, global = true, default_value_t = 5.0, value_name = "SECONDS")]
    pub timeout: f64,
}

impl GlobalArgs {
    /// The timeout as a duration (at least a millisecond).
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.timeout.max(0.001))
    }
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns.
    Table,
    /// Aligned columns, with more of them.
    Wide,
    /// JSON (one document; with --watch, one per line).
    Json,
    /// YAML (with --watch, `---`-separated documents).
    Yaml,
}

/// Which cluster.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// A local cluster of the e2e harness: its run directory (holds
    /// state.json, or manifests/ and one directory per node).
    #[arg(long, global = true, env = "WEFT_RUN_DIR", value_name = "DIR")]
    pub run_dir: Option<PathBuf>,
    /// The controller's manifest directory (files registry), when it is not
    /// the run directory's.
    #[arg(long, global = true, env = "WEFT_MANIFESTS", value_name = "DIR")]
    pub manifests: Option<PathBuf>,
    /// Kubernetes: the kubeconfig file (default: $KUBECONFIG, ~/.kube/config).
    #[arg(long, global = true, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubernetes: the kubeconfig context (default: the current one).
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// Kubernetes: where weft runs (ztunnel, node agent, controller).
    #[arg(long, global = true, default_value = "weft-system", value_name = "NS")]
    pub system_namespace: String,
    /// The SPIFFE trust domain (default: the run's, else cluster.local).
    #[arg(long, global = true, value_name = "DOMAIN")]
    pub trust_domain: Option<String>,
    /// Where mesh-wide policies live (default: the run's, else weft-system).
    #[arg(long, global = true, value_name = "NS")]
    pub root_namespace: Option<String>,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Live tunnels through each ztunnel: source and destination workload and
    /// identity, the waypoint they pass, bytes each way, age.
    Tunnels(ReadArgs),
    /// The workloads of the mesh (pods): identity, node, addresses, protocol,
    /// waypoint.
    Workloads(ModelReadArgs),
    /// The services: VIPs, ports, endpoints, waypoint.
    Services(ModelReadArgs),
    /// Authorization policies, as the proxies enforce them (scope, action, the
    /// L4 form ztunnel applies and why it differs from the written rules).
    Policies(ModelReadArgs),
    /// Certificates each ztunnel holds: identity, serial, expiry, time to
    /// rotation.
    Certs(ReadArgs),
    /// The config each proxy runs: the version its controller last sent it,
    /// the one it acknowledged, the one it refused and why. A proxy is
    /// `synced`, `pending` (a push on its way), `stale` (behind for 30 s or
    /// more) or `nacked` (it refused the last version and runs an older
    /// one); `weftctl check` fails on the last two.
    ProxyStatus(WatchArgs),
    /// A live stream of connection events (open, close, deny; requests and
    /// status codes seen by waypoints). Bounded on the proxy side: a slow
    /// reader loses events (counted), never slows traffic.
    Tap(TapArgs),
    /// Would this connection or request be allowed? The verdict, the policy
    /// and rule that decided it, where it is enforced, and warnings.
    ///
    /// The model is built by the controller's own model builder from the
    /// cluster's objects (plus --with-file), and evaluated by the same code
    /// ztunnel and waypoints run. Exit code 0 when allowed, 6 when denied.
    Explain(ExplainArgs),
    /// Enroll a namespace in the mesh (label weft.dev/dataplane-mode=ambient).
    /// Running pods are redirected without a restart.
    Enroll(NamespaceArg),
    /// Take a namespace out of the mesh (remove weft.dev/dataplane-mode).
    Unenroll(NamespaceArg),
    /// Waypoints: L7 proxies for a namespace (Gateways of class weft-waypoint).
    #[command(subcommand)]
    Waypoint(WaypointCommand),
    /// Preflight and health: CNI plugin installed, node agents and ztunnels
    /// ready, every pod that should be in the mesh redirected, certificates
    /// not near expiry, controller reachable. Exit code 5 on any problem.
    Check(CheckArgs),
    /// Install weft: the manifests embedded in weftctl (deploy/base, the Helm
    /// chart's default rendering), applied server-side as field manager
    /// `weftctl`, then wait for the rollouts. Needs cluster-admin and the
    /// Gateway API CRDs.
    Install(InstallArgs),
    /// Upgrade an installed weft to the manifests of this weftctl (from a
    /// kubectl, Helm or weftctl install), then wait for the rollouts.
    Upgrade(InstallArgs),
    /// Remove weft: everything the manifests made but the CRDs (unless
    /// --crds), then wait until the node agents have restored every node's
    /// CNI config and weft's namespace is gone.
    Uninstall(UninstallArgs),
    /// Collect what a bug report needs into one .tar.gz: every component's
    /// admin documents (config dumps, workloads, certificates, connections,
    /// proxy status, the model), versions, recent logs and `check`'s
    /// report, with private keys, tokens and other secrets replaced by
    /// `<redacted>`. Exit code 7 when some component could not be read (the
    /// archive has the rest, and errors.json says what is missing).
    BugReport(BugReportArgs),
    /// Who talks to whom: per pair of workloads, connections or requests per
    /// second, the share answered 5xx, p99 latency, bytes per second, and
    /// whether it is mutual TLS. From two reads of every ztunnel's and
    /// waypoint's own counters (Istio's standard series), `--window`
    /// apart: TCP as the destination's ztunnel counts it, HTTP as the
    /// waypoint does. `-o wide` adds totals and refusals.
    Top(TopArgs),
    /// The same pairs as a picture: a Graphviz graph (DOT on stdout, the
    /// default: `weftctl graph | dot -Tsvg > mesh.svg`) or, with `--format
    /// svg`, an SVG drawn by weftctl itself, no Graphviz needed (`weftctl
    /// graph --format svg > mesh.svg`). Mutual TLS in green, plaintext red
    /// and dashed.
    Graph(GraphArgs),
    /// Print a shell completion script: `weftctl completion bash > /etc/bash_completion.d/weftctl`.
    Completion(CompletionArgs),
}

/// Reads from the ztunnels.
#[derive(Debug, Clone, Args)]
pub struct ReadArgs {
    /// Only this node's ztunnel.
    #[arg(long, value_name = "NODE")]
    pub node: Option<String>,
    /// Only entries that involve this namespace.
    #[arg(short, long, value_name = "NS")]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub watch: WatchArgs,
}

/// Reads of the model.
#[derive(Debug, Clone, Args)]
pub struct ModelReadArgs {
    #[command(flatten)]
    pub read: ReadArgs,
    /// Where to read: the controller's model, or what each ztunnel holds.
    #[arg(long = "from", value_enum, default_value = "controller")]
    pub source: ModelSource,
}

/// Whose view of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModelSource {
    /// The controller's published model (its debug API).
    Controller,
    /// Each ztunnel's config (its admin API); with --node, one node's.
    Ztunnel,
}

/// `--watch`.
#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// Re-render every --interval until interrupted.
    #[arg(short, long)]
    pub watch: bool,
    /// Seconds between renders with --watch.
    #[arg(long, default_value_t = 2.0, value_name = "SECONDS")]
    pub interval: f64,
}

/// `tap`.
#[derive(Debug, Clone, Args)]
pub struct TapArgs {
    /// Only events of workloads in this namespace.
    #[arg(short, long, value_name = "NS")]
    pub namespace: Option<String>,
    /// Only connections to this service (`NAME` in --namespace, or `NS/NAME`).
    #[arg(long, value_name = "SERVICE")]
    pub to: Option<String>,
    /// Only this node's ztunnel.
    #[arg(long, value_name = "NODE")]
    pub node: Option<String>,
    /// Stop after this many events.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<f64>,
}

/// `explain`.
#[derive(Debug, Clone, Args)]
pub struct ExplainArgs {
    /// The client: a pod (`NS/POD`, or `POD` with --namespace), or a service
    /// account (`NS/SA`, `sa/NS/SA`, or a SPIFFE ID). `pod/NS/POD` forces a
    /// pod.
    #[arg(long, value_name = "CLIENT")]
    pub from: String,
    /// The destination and port: a service (`SVC:PORT`, `NS/SVC:PORT`, or
    /// `svc/NS/SVC:PORT`) or a pod (`pod/NS/POD:PORT`, or `NS/POD:PORT` when
    /// no service has that name).
    #[arg(long, value_name = "DEST:PORT")]
    pub to: String,
    /// Namespace of names given without one.
    #[arg(short, long, default_value = "default", value_name = "NS")]
    pub namespace: String,
    /// HTTP method of the request (waypoints only).
    #[arg(long, value_name = "METHOD")]
    pub method: Option<String>,
    /// HTTP path of the request (waypoints only).
    #[arg(long, value_name = "PATH")]
    pub path: Option<String>,
    /// Host of the request (default: the service's hostname).
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    /// A request header, `NAME=VALUE` (repeatable).
    #[arg(long = "header", value_name = "NAME=VALUE")]
    pub headers: Vec<String>,
    /// What the client speaks, as a waypoint tells: `http` (requests, L7
    /// policy) or `tcp` (a byte stream: the policies' L4 form). Default: the
    /// Service port's `appProtocol`; HTTP when it declares none (the waypoint
    /// then tells by the first bytes).
    #[arg(long, value_enum, value_name = "PROTOCOL")]
    pub protocol: Option<AppProtocol>,
    /// Also consider the objects in this YAML file (typically an
    /// AuthorizationPolicy not applied yet); they replace objects of the same
    /// kind and name. Repeatable.
    #[arg(long = "with-file", value_name = "FILE")]
    pub with_files: Vec<PathBuf>,
}

/// A namespace argument.
#[derive(Debug, Clone, Args)]
pub struct NamespaceArg {
    /// The namespace.
    pub namespace: String,
}

/// `waypoint ...`.
#[derive(Debug, Subcommand)]
pub enum WaypointCommand {
    /// Create or update a waypoint: a Gateway of class weft-waypoint with the
    /// HBONE listener {name: mesh, port: 15008, protocol: HBONE}.
    Apply(WaypointApplyArgs),
    /// List waypoints and whether they are ready.
    List(WaypointListArgs),
    /// Delete a waypoint (its Gateway). Namespaces, services and pods that
    /// name it keep their label and lose their waypoint.
    Delete(WaypointDeleteArgs),
}

/// `waypoint apply`.
#[derive(Debug, Clone, Args)]
pub struct WaypointApplyArgs {
    /// The namespace of the waypoint.
    #[arg(short, long, value_name = "NS")]
    pub namespace: String,
    /// The Gateway's name.
    #[arg(long, default_value = "waypoint")]
    pub name: String,
    /// What traffic it serves (label weft.dev/waypoint-for).
    #[arg(long = "for", value_enum, default_value = "service")]
    pub serves: WaypointFor,
    /// Also bind the namespace to it (label weft.dev/use-waypoint=NAME on
    /// the namespace).
    #[arg(long)]
    pub enroll_namespace: bool,
}

/// What a connection carries, as a waypoint classifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AppProtocol {
    /// HTTP requests: the waypoint applies policy per request (L7).
    Http,
    /// Anything else: the waypoint applies the policies' L4 form.
    Tcp,
}

/// `weft.dev/waypoint-for`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WaypointFor {
    /// Traffic addressed to a Service.
    Service,
    /// Traffic addressed to a pod.
    Workload,
    /// Both.
    All,
}

impl WaypointFor {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            WaypointFor::Service => "service",
            WaypointFor::Workload => "workload",
            WaypointFor::All => "all",
        }
    }
}

/// `waypoint list`.
#[derive(Debug, Clone, Args)]
pub struct WaypointListArgs {
    /// Only this namespace.
    #[arg(short, long, value_name = "NS")]
    pub namespace: Option<String>,
}

/// `waypoint delete`.
#[derive(Debug, Clone, Args)]
pub struct WaypointDeleteArgs {
    /// The namespace of the waypoint.
    #[arg(short, long, value_name = "NS")]
    pub namespace: String,
    /// The Gateway's name.
    #[arg(long, default_value = "waypoint")]
    pub name: String,
}

/// `check --cert-expiry-hours` when not given.
pub const DEFAULT_CERT_EXPIRY_HOURS: f64 = 2.0;

/// `check`.
#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// A certificate expiring within this many hours is a problem.
    #[arg(long, default_value_t = DEFAULT_CERT_EXPIRY_HOURS, value_name = "HOURS")]
    pub cert_expiry_hours: f64,
    /// Before install: what would not work (API server version, Gateway
    /// API CRDs, privileged pods in weft's namespace, and on every node the
    /// CNI config and plugins, nftables or iptables), checked by a
    /// short-lived pod per node.
    #[arg(long)]
    pub pre: bool,
}

/// `top`.
#[derive(Debug, Clone, Args)]
pub struct TopArgs {
    /// Only pairs with an end in this namespace.
    #[arg(short, long, value_name = "NS")]
    pub namespace: Option<String>,
    /// How long to count between the two reads (`5s`, `1m`).
    #[arg(long, default_value = "5s", value_parser = crate::commands::bug_report::parse_since)]
    pub window: std::time::Duration,
    #[command(flatten)]
    pub watch: WatchArgs,
}

/// `graph`.
#[derive(Debug, Clone, Args)]
pub struct GraphArgs {
    /// Only pairs with an end in this namespace.
    #[arg(short, long, value_name = "NS")]
    pub namespace: Option<String>,
    /// How long to count between the two reads (`5s`, `1m`).
    #[arg(long, default_value = "5s", value_parser = crate::commands::bug_report::parse_since)]
    pub window: std::time::Duration,
    /// What to print: `dot` (Graphviz's language, for `dot -Tsvg` or
    /// `-Tpng`) or `svg` (the picture itself, laid out by weftctl: workloads
    /// in columns from callers to callees, each arrow labelled with its
    /// rate, 5xx share, p99 and mTLS). Separate from the global `-o`, which
    /// picks tables or documents.
    #[arg(long, value_enum, default_value = "dot", value_name = "FORMAT")]
    pub format: GraphFormat,
}

/// `graph --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GraphFormat {
    /// Graphviz DOT.
    Dot,
    /// SVG, drawn without Graphviz.
    Svg,
}

/// `bug-report`.
#[derive(Debug, Clone, Args)]
pub struct BugReportArgs {
    /// Where to write the archive (default:
    /// `weft-bug-report-<UTC time>.tar.gz` in the current directory).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// How far back logs go: 90s, 30m, 1h, 2h30m, 1d (or seconds).
    #[arg(long, default_value = "1h", value_name = "DURATION",
          value_parser = crate::commands::bug_report::parse_since)]
    pub since: std::time::Duration,
    /// At most this many lines of each log (the newest).
    #[arg(long, default_value_t = 10000, value_name = "LINES")]
    pub tail: u64,
}

/// `install` and `upgrade`.
#[derive(Debug, Clone, Args)]
pub struct InstallArgs {
    /// Print the manifests (YAML; a JSON list with -o json) and change
    /// nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Seconds to wait for the controller and the DaemonSets to roll out
    /// (0: do not wait).
    #[arg(long, default_value_t = 300.0, value_name = "SECONDS")]
    pub wait: f64,
}

/// `uninstall`.
#[derive(Debug, Clone, Args)]
pub struct UninstallArgs {
    /// List what would be deleted and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Delete weft's CRDs too, and with them every AuthorizationPolicy and
    /// PeerAuthentication in the cluster.
    #[arg(long)]
    pub crds: bool,
    /// Seconds to wait for the node agents to restore the nodes' CNI
    /// configs and for weft's namespace to go (0: do not wait).
    #[arg(long, default_value_t = 300.0, value_name = "SECONDS")]
    pub wait: f64,
}

/// `completion`.
#[derive(Debug, Clone, Args)]
pub struct CompletionArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap checks a command line only when it is built: two arguments of
    /// one name (a flattened `--interval` and a command's own) would make
    /// that command panic for its users, not at compile time.
    #[test]
    fn every_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
