//! The node agent: installs weft-cni, watches this node's pods and all
//! namespaces through the controller's registry (kubernetes or files), keeps
//! enrolled pods redirected, and hands their namespaces to ztunnel.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use weft_cluster::registry::{ClusterState, Kinds, Registry, RegistryConfig};
use weft_cni::cni::{DEFAULT_AGENT_SOCKET, DEFAULT_ENROLLMENT_CACHE};
use weft_cni::enrollment::{AgentRequest, AgentResponse, ask_agent};
use weft_node_agent::agent::{AgentConfig, NetnsDiscovery, NodeAgent, serve_requests};
use weft_node_agent::bypass::{Bypass, DEFAULT_CGROUP, DEFAULT_PIN_ROOT, LocalBypass};
use weft_node_agent::handoff::{DEFAULT_HANDOFF_SOCKET, HANDOVER_BOUND, HandoffHub, HandoffServer};
use weft_node_agent::install::{self, ConfInstaller};
use weft_node_agent::on_exit::{self, OnExit, OwnPod};
use weft_node_agent::probes::HostProbes;
use weft_node_agent::redirect::{Backend, DEFAULT_PROBE_SOURCE, Redirector};

#[derive(Parser)]
#[command(
    name = "weft-node-agent",
    version,
    about = "weft's node agent: CNI install, pod redirection, ztunnel handoff"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent.
    Run(Box<RunArgs>),
    /// Remove weft-cni from the CNI config and bin dirs, restoring the
    /// original config.
    Uninstall(InstallDirs),
    /// Before install: print (JSON) the node's active CNI config, its
    /// plugins missing from the bin dirs, and whether nftables and iptables
    /// work here.
    Preflight {
        /// Where the runtime reads network configs.
        #[arg(long, default_value = "/etc/cni/net.d")]
        cni_conf_dir: PathBuf,
        /// Where the runtime looks for plugins (repeat for several).
        #[arg(long = "cni-bin-dir", default_value = "/opt/cni/bin")]
        cni_bin_dirs: Vec<PathBuf>,
        /// After printing, wait for SIGTERM: the caller reads the report
        /// from the running pod's log, then deletes the pod.
        #[arg(long)]
        hold: bool,
    },
    /// Ask a running agent for its coverage report (JSON); exit 1 on drift.
    Coverage {
        /// The agent's request socket.
        #[arg(long, default_value = DEFAULT_AGENT_SOCKET)]
        agent_socket: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum RegistryKind {
    /// The Kubernetes API (in-cluster config or KUBECONFIG).
    Kubernetes,
    /// A directory of Kubernetes YAML (local mode, e2e).
    Files,
}

#[derive(Clone, Copy, ValueEnum)]
enum ExitMode {
    /// Uninstall if the cluster says weft is being removed (kubernetes
    /// registry with the pod's name and namespace); keep otherwise.
    Auto,
    /// Always leave the plugin and the rules in place.
    Keep,
    /// Always uninstall.
    Uninstall,
}

#[derive(Args)]
struct InstallDirs {
    /// Where the runtime looks for CNI plugin binaries.
    #[arg(long, env = "WEFT_CNI_BIN_DIR", default_value = "/opt/cni/bin")]
    cni_bin_dir: PathBuf,
    /// Where the runtime reads network configs.
    #[arg(long, env = "WEFT_CNI_CONF_DIR", default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    /// Where the agent keeps the original of the config it changed.
    #[arg(long, env = "WEFT_STATE_DIR", default_value = "/var/lib/weft")]
    state_dir: PathBuf,
}

#[derive(Args)]
struct RunArgs {
    /// This node's name (`spec.nodeName` of its pods).
    #[arg(long, env = "NODE_NAME")]
    node: String,
    /// Which registry to watch.
    #[arg(long, value_enum, default_value = "kubernetes")]
    registry: RegistryKind,
    /// The manifest directory of the files registry.
    #[arg(long, env = "WEFT_MANIFESTS", required_if_eq("registry", "files"))]
    manifests: Option<PathBuf>,
    #[command(flatten)]
    dirs: InstallDirs,
    /// The weft-cni binary to install (default: `weft-cni` beside this binary).
    #[arg(long)]
    plugin_binary: Option<PathBuf>,
    /// Do not install the plugin (someone else does).
    #[arg(long)]
    no_install: bool,
    /// What a stop (SIGTERM) does to the plugin: `auto` asks the API server
    /// whether the agent's DaemonSet (or namespace) is being removed and
    /// uninstalls only then; `keep` never uninstalls; `uninstall` always
    /// does. While the agent merely restarts, enrolled pods must keep
    /// failing closed.
    #[arg(long, value_enum, default_value = "auto")]
    on_exit: ExitMode,
    /// The agent's pod (downward API), for `--on-exit auto`.
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// The agent's namespace (downward API), for `--on-exit auto`.
    #[arg(long, env = "POD_NAMESPACE")]
    pod_namespace: Option<String>,
    /// The request socket the plugin and the CLI use.
    #[arg(long, default_value = DEFAULT_AGENT_SOCKET)]
    agent_socket: PathBuf,
    /// The SEQPACKET socket ztunnel connects to.
    #[arg(long, default_value = DEFAULT_HANDOFF_SOCKET)]
    handoff_socket: PathBuf,
    /// The enrollment cache the plugin falls back on.
    #[arg(long, default_value = DEFAULT_ENROLLMENT_CACHE)]
    enrollment_cache: PathBuf,
    /// How the rules are programmed.
    #[arg(long, value_enum, default_value = "auto")]
    backend: Backend,
    /// The source address of the node's health probes (passes uncaptured).
    #[arg(long, default_value_t = DEFAULT_PROBE_SOURCE)]
    probe_source: Ipv4Addr,
    /// Do not SNAT the node's connections to enrolled pods' probe ports to
    /// the probe source (then the kubelet's probes of enrolled pods are
    /// captured like any plaintext, and fail under STRICT or ALLOW policies).
    #[arg(long)]
    no_probe_snat: bool,
    /// Namespaces the plugin never enrolls nor fails closed for.
    #[arg(long = "exclude-namespace", default_value = "kube-system")]
    exclude_namespaces: Vec<String>,
    /// The plugin's timeout for the agent, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    plugin_timeout_ms: u64,
    /// Where /proc is (pod netns discovery in kubernetes mode).
    #[arg(long, default_value = "/proc")]
    proc_root: PathBuf,
    /// How often to re-check enrolled pods and retry failures, in seconds.
    #[arg(long, default_value_t = 10)]
    resync_seconds: u64,
    /// How long ztunnel may take to ack a handoff message, in seconds.
    #[arg(long, default_value_t = 30)]
    ack_timeout_seconds: u64,
    /// The local-leg bypass: `auto` pairs an enrolled pod's application
    /// socket with ztunnel's in the kernel (BPF sockmap) when the kernel
    /// allows it, and keeps TCP otherwise; `off` always keeps TCP. Off by
    /// default: with it, a blocking read that races a write on the same
    /// socket can return EAGAIN (docs/design.md §7).
    #[arg(long, value_enum, default_value = "off")]
    local_bypass: LocalBypassMode,
    /// The node's cgroup mount: the bypass attaches to the cgroup v2 root
    /// there (or under its `unified/` on a hybrid hierarchy).
    #[arg(long, default_value = DEFAULT_CGROUP)]
    bypass_cgroup: PathBuf,
    /// Where the bypass pins its maps and link, so that they (and the bytes
    /// queued in them) outlive a restart; a BPF filesystem is mounted there
    /// if it is on none. `--local-bypass off` and uninstall remove it.
    #[arg(long, default_value = DEFAULT_PIN_ROOT)]
    bpf_pin_dir: PathBuf,
    /// Log as JSON.
    #[arg(long)]
    log_json: bool,
}

/// `--local-bypass`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LocalBypassMode {
    /// Local legs go through TCP.
    Off,
    /// The kernel bypass when it loads, TCP otherwise.
    Auto,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Run(args) => run(*args).await,
        Cmd::Uninstall(dirs) => {
            init_logging(false);
            uninstall(&dirs)
        }
        Cmd::Preflight {
            cni_conf_dir,
            cni_bin_dirs,
            hold,
        } => {
            let report = weft_node_agent::preflight::gather(&cni_conf_dir, &cni_bin_dirs);
            println!("{}", serde_json::to_string(&report)?);
            if hold {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
                term.recv().await;
            }
            Ok(())
        }
        Cmd::Coverage { agent_socket } => {
            let response = ask_agent(
                &agent_socket,
                &AgentRequest::Coverage,
                Duration::from_secs(30),
            )?;
            let AgentResponse::Coverage(report) = response else {
                bail!("unexpected answer: {response:?}")
            };
            println!("{}", serde_json::to_string_pretty(&report)?);
            if !report.covered() {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

fn init_logging(json: bool) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn installer(dirs: &InstallDirs, entry: serde_json::Value) -> ConfInstaller {
    ConfInstaller::new(&dirs.cni_conf_dir, &dirs.state_dir, entry)
}

fn uninstall(dirs: &InstallDirs) -> anyhow::Result<()> {
    installer(dirs, serde_json::Value::Null)
        .uninstall()
        .context("removing weft-cni from the CNI config")?;
    install::uninstall_binary(&dirs.cni_bin_dir).context("removing the weft-cni binary")?;
    tracing::info!("weft-cni uninstalled");
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    init_logging(args.log_json);
    let hub = HandoffHub::new();
    let agent = NodeAgent::new(
        AgentConfig {
            node: args.node.clone(),
            discovery: match args.registry {
                RegistryKind::Files => NetnsDiscovery::Annotation,
                RegistryKind::Kubernetes => NetnsDiscovery::ProcScan(args.proc_root.clone()),
            },
            enrollment_cache: Some(args.enrollment_cache.clone()),
            redirector: Redirector::new(args.backend, args.probe_source),
            // The answer must reach the plugin before it gives up on us.
            identity_wait: Duration::from_millis(args.plugin_timeout_ms * 3 / 4),
            host_probes: (!args.no_probe_snat).then(|| HostProbes::new(args.probe_source)),
            local_bypass: Arc::new(Bypass::start(
                args.local_bypass == LocalBypassMode::Auto,
                &args.bypass_cgroup,
                Some(&args.bpf_pin_dir),
            )),
        },
        hub.clone(),
    );
    // The cache must exist before the plugin is installed: without it the
    // plugin fails closed for every pod.
    agent.publish_cache().await;

    let handoff = HandoffServer::bind(
        &args.handoff_socket,
        hub.clone(),
        Duration::from_secs(args.ack_timeout_seconds),
    )
    .with_context(|| {
        format!(
            "binding the handoff socket {}",
            args.handoff_socket.display()
        )
    })?;
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(async move { handoff.run().await.context("handoff socket") });
    let (a, socket) = (agent.clone(), args.agent_socket.clone());
    tasks.spawn(async move {
        serve_requests(a, &socket)
            .await
            .context("agent request socket")
    });

    // Registry first, install after: the plugin's first requests then meet an
    // agent that knows the namespaces.
    let registry_config = RegistryConfig {
        kinds: Kinds::NODE_AGENT,
        node: Some(args.node.clone()),
    };
    let mut client = None;
    let registry = match args.registry {
        RegistryKind::Files => {
            let dir = args
                .manifests
                .clone()
                .context("--manifests is required with --registry files")?;
            Registry::files(dir, registry_config).await?
        }
        RegistryKind::Kubernetes => {
            let c = kube::Client::try_default()
                .await
                .context("building the Kubernetes client")?;
            client = Some(c.clone());
            Registry::kubernetes(c, registry_config)
        }
    };
    let mut states = registry.subscribe();
    if let Some(state) = registry.synced().await {
        sync(&agent, &state).await;
    }

    let entry = serde_json::json!({
        "agentSocket": args.agent_socket,
        "enrollmentCache": args.enrollment_cache,
        "agentTimeoutMs": args.plugin_timeout_ms,
        "excludeNamespaces": args.exclude_namespaces,
    });
    let conf = installer(&args.dirs, entry);
    if !args.no_install {
        let binary = match &args.plugin_binary {
            Some(p) => p.clone(),
            None => std::env::current_exe()?.with_file_name(install::PLUGIN_TYPE),
        };
        install::install_binary(&binary, &args.dirs.cni_bin_dir)
            .context("installing the weft-cni binary")?;
        tasks.spawn(async move {
            conf.keep_installed(Duration::from_secs(2)).await;
            Ok(())
        });
    }
    tracing::info!(node = %args.node, "node agent running");
    // Synced and installed, the agent is done starting; what start-up alone
    // touched need not stay resident on every node.
    weft_netns::startup_pages::give_back();

    let mut resync = tokio::time::interval(Duration::from_secs(args.resync_seconds.max(1)));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            changed = states.changed() => {
                if changed.is_err() {
                    bail!("the registry stopped");
                }
                let state = states.borrow_and_update().clone();
                if state.synced {
                    sync(&agent, &state).await;
                }
            }
            _ = resync.tick() => agent.resync().await,
            Some(done) = tasks.join_next() => {
                done??;
                bail!("a server task ended");
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    tracing::info!("shutting down");
    let decision = exit_decision(&args, client.as_ref(), &states).await;
    match &decision {
        OnExit::Keep(why) => {
            tracing::info!(reason = %why, "leaving weft-cni and pods' rules in place")
        }
        OnExit::Uninstall(why) => {
            tracing::info!(reason = %why, "weft is leaving this node: uninstalling")
        }
    }
    if matches!(decision, OnExit::Keep(_)) {
        hand_over(&hub).await;
    }
    if matches!(decision, OnExit::Uninstall(_)) && !args.no_install {
        // The keeper would put the entry back within its interval.
        tasks.shutdown().await;
        uninstall(&args.dirs)?;
        agent.release_all().await;
        remove_if_present(&args.enrollment_cache);
        remove_if_present(&args.handoff_socket);
        if let Err(e) = LocalBypass::remove_pins(&args.bpf_pin_dir) {
            tracing::warn!(pins = %args.bpf_pin_dir.display(), error = %e, "cannot remove the local-leg bypass's pins");
        }
    }
    // Otherwise rules stay in place on exit: pods keep their redirection (and
    // keep failing closed) until an agent is back to manage them.
    remove_if_present(&args.agent_socket);
    Ok(())
}

/// Before a restart's exit: waits, while the handoff server still serves,
/// until a ztunnel that is not stopping holds the pods' listeners, so that
/// exiting does not close their last copies (design.md §7).
async fn hand_over(hub: &HandoffHub) {
    // Always through `hand_over`, even when already handed over: it also
    // closes the hub to stopping ztunnels.
    let waits = !hub.is_handed_over();
    if waits {
        tracing::info!("waiting for a ztunnel to hold the pods' listeners before exiting");
    }
    match tokio::time::timeout(HANDOVER_BOUND, hub.hand_over()).await {
        Ok(()) if waits => tracing::info!("a ztunnel holds the pods' listeners"),
        Ok(()) => {}
        Err(_) => tracing::warn!(
            bound = ?HANDOVER_BOUND,
            "no ztunnel took the pods' listeners; exiting closes them until the next agent binds them"
        ),
    }
}

async fn exit_decision(
    args: &RunArgs,
    client: Option<&kube::Client>,
    states: &tokio::sync::watch::Receiver<Arc<ClusterState>>,
) -> OnExit {
    match args.on_exit {
        ExitMode::Keep => OnExit::Keep("--on-exit keep".into()),
        ExitMode::Uninstall => OnExit::Uninstall("--on-exit uninstall".into()),
        ExitMode::Auto => {
            let (Some(client), Some(name), Some(namespace)) =
                (client, &args.pod_name, &args.pod_namespace)
            else {
                return OnExit::Keep(
                    "--on-exit auto needs the kubernetes registry, POD_NAME and POD_NAMESPACE"
                        .into(),
                );
            };
            let own = OwnPod {
                namespace: namespace.clone(),
                name: name.clone(),
            };
            on_exit::on_exit(client, &own, states, on_exit::DECISION_BOUND).await
        }
    }
}

async fn sync(agent: &Arc<NodeAgent>, state: &ClusterState) {
    agent
        .sync(
            state.pods.values().map(|p| p.as_ref()),
            state.namespaces.values().map(|n| n.as_ref()),
        )
        .await;
}

fn remove_if_present(path: &Path) {
    let _ = std::fs::remove_file(path);
}
