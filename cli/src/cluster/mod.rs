//! Where the mesh is, and how to reach each of its parts.
//!
//! - [`local`]: the e2e harness's run directory (files registry, unix
//!   sockets).
//! - [`kube`]: a Kubernetes cluster.
//!
//! [`Cluster`] gives the commands one interface over both: the nodes and
//! their ztunnels' admin APIs, the node agents, the controller's debug API,
//! the cluster's objects (the same typed state the controller reads), and the
//! few writes weftctl makes.

pub mod kube;
pub mod local;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;
use weft_cluster::model::ModelConfig;
use weft_cluster::registry::{ClusterState, Registry, RegistryConfig};
use weft_cni::enrollment::{AgentRequest, AgentResponse, ask_agent};
use weft_cni::report::CoverageReport;

use self::kube::{AGENT_APP, CONTROLLER_APP, KubeCluster, ZTUNNEL_APP};
use self::local::{Reach, RunState};
use crate::admin::{AdminEndpoint, Dialer};
use crate::args::GlobalArgs;
use crate::exit::{CliError, Result};
use crate::manifests::{ManifestDir, ObjectRef};

/// The admin port of ztunnel, waypoints and the controller (docs/design.md §3).
pub const ADMIN_PORT: u16 = 15000;

/// A cluster weftctl can reach.
pub struct Cluster {
    mode: Mode,
    timeout: Duration,
    model_config: ModelConfig,
}

enum Mode {
    Local {
        run_dir: Option<PathBuf>,
        state: RunState,
        manifests: Option<ManifestDir>,
    },
    Kube(KubeCluster),
}

/// One node's ztunnel admin API.
#[derive(Clone)]
pub struct NodeAdmin {
    /// The node.
    pub node: String,
    /// Its ztunnel's admin API.
    pub admin: AdminEndpoint,
}

/// How to ask one node agent for its coverage report.
#[derive(Clone)]
pub struct Agent {
    /// The node.
    pub node: String,
    reach: AgentReach,
}

#[derive(Clone)]
enum AgentReach {
    Socket(PathBuf),
    Exec(KubeCluster, String),
}

impl Agent {
    /// Where the agent is, for messages.
    pub fn describe(&self) -> String {
        match &self.reach {
            AgentReach::Socket(path) => {
                format!("node agent on {} (unix:{})", self.node, path.display())
            }
            AgentReach::Exec(_, pod) => format!("node agent on {} (pod {pod})", self.node),
        }
    }

    /// Its coverage report.
    pub async fn coverage(&self, timeout: Duration) -> Result<CoverageReport> {
        let text = match &self.reach {
            AgentReach::Socket(path) => {
                let path = path.clone();
                let answer = tokio::task::spawn_blocking(move || {
                    ask_agent(&path, &AgentRequest::Coverage, timeout)
                })
                .await
                .map_err(CliError::other)?;
                return match answer {
                    Ok(AgentResponse::Coverage(report)) => Ok(report),
                    Ok(other) => Err(CliError::other(format!(
                        "{} answered the coverage request with {other:?}",
                        self.describe()
                    ))),
                    Err(e) => Err(CliError::unreachable(
                        self.describe(),
                        e,
                        "is the node agent running? (weft-node-agent run ... --agent-socket PATH)",
                    )),
                };
            }
            AgentReach::Exec(kube, pod) => kube.agent_coverage(pod, timeout).await?,
        };
        serde_json::from_str(&text).map_err(|e| {
            CliError::other(format!(
                "{} printed no coverage report ({e}): {}",
                self.describe(),
                text.trim()
            ))
        })
    }
}

/// Whether weft's CNI plugin is in a node's CNI config (local clusters).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniInstall {
    /// The active config file (the lexically first), if any.
    pub config_file: Option<PathBuf>,
    /// It lists a `weft-cni` plugin.
    pub in_config: bool,
    /// `<bin dir>/weft-cni` exists.
    pub binary: bool,
}

impl Cluster {
    /// Opens the cluster the arguments name: a local run (--run-dir,
    /// --manifests) or else Kubernetes.
    pub async fn connect(global: &GlobalArgs) -> Result<Cluster> {
        let args = &global.cluster;
        let run_dir = args
            .run_dir
            .clone()
            .or_else(|| local_run_without_kubeconfig(args));
        let mode = if run_dir.is_some() || args.manifests.is_some() {
            let state = match &run_dir {
                Some(dir) => RunState::load(dir)?,
                None => RunState::default(),
            };
            let manifests = args.manifests.clone().or_else(|| state.manifests.clone());
            let manifests = match manifests {
                Some(dir) => Some(ManifestDir::open(dir)?),
                None => None,
            };
            Mode::Local {
                run_dir,
                state,
                manifests,
            }
        } else {
            Mode::Kube(
                KubeCluster::connect(
                    args.kubeconfig.as_ref(),
                    args.context.as_deref(),
                    &args.system_namespace,
                )
                .await?,
            )
        };
        let defaults = ModelConfig::default();
        let (run_td, run_root) = match &mode {
            Mode::Local { state, .. } => (state.trust_domain.clone(), state.root_namespace.clone()),
            Mode::Kube(_) => (None, None),
        };
        let model_config = ModelConfig {
            trust_domain: args
                .trust_domain
                .clone()
                .or(run_td)
                .unwrap_or(defaults.trust_domain),
            root_namespace: args
                .root_namespace
                .clone()
                .or(run_root)
                .unwrap_or(defaults.root_namespace),
            ..ModelConfig::default()
        };
        Ok(Cluster {
            mode,
            timeout: global.timeout(),
            model_config,
        })
    }

    /// What the model builder needs besides the objects.
    pub fn model_config(&self) -> &ModelConfig {
        &self.model_config
    }

    /// The per-component timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// True for a local cluster of the e2e harness.
    pub fn is_local(&self) -> bool {
        matches!(self.mode, Mode::Local { .. })
    }

    /// A local cluster's run directory (also when found as the newest run).
    pub fn run_dir(&self) -> Option<&std::path::Path> {
        match &self.mode {
            Mode::Local { run_dir, .. } => run_dir.as_deref(),
            Mode::Kube(_) => None,
        }
    }

    /// The Kubernetes cluster, when that is where the mesh is.
    pub fn kube(&self) -> Option<&KubeCluster> {
        match &self.mode {
            Mode::Kube(k) => Some(k),
            Mode::Local { .. } => None,
        }
    }

    fn local_endpoint(&self, label: String, reach: &Reach, hint: &str) -> Option<AdminEndpoint> {
        let dialer = match (&reach.admin_socket, reach.admin_address) {
            (Some(path), _) => Dialer::Unix(path.clone()),
            (None, Some(addr)) => Dialer::Tcp {
                addr,
                netns: reach.netns.clone(),
            },
            (None, None) => return None,
        };
        Some(AdminEndpoint::new(label, dialer, self.timeout).with_hint(hint))
    }

    fn no_nodes(&self) -> CliError {
        match &self.mode {
            Mode::Local { run_dir: None, .. } => CliError::Usage(
                "no nodes known: pass the run directory (--run-dir or WEFT_RUN_DIR), not only --manifests".into(),
            ),
            Mode::Local { .. } => CliError::NotFound("the run directory lists no nodes".into()),
            Mode::Kube(k) => CliError::NotFound(format!(
                "no ztunnel pods (app.kubernetes.io/name={ZTUNNEL_APP}) in namespace {}; is weft installed? (--system-namespace)",
                k.system_namespace
            )),
        }
    }

    /// The ztunnels' admin APIs, of one node or all.
    pub async fn ztunnels(&self, node: Option<&str>) -> Result<Vec<NodeAdmin>> {
        let all: Vec<NodeAdmin> = match &self.mode {
            Mode::Local { state, .. } => state
                .nodes
                .iter()
                .filter_map(|n| {
                    let admin = self.local_endpoint(
                        format!("ztunnel on {}", n.name),
                        &n.ztunnel,
                        "is ztunnel running on that node? its admin socket is listed in the run's state.json",
                    )?;
                    Some(NodeAdmin {
                        node: n.name.clone(),
                        admin,
                    })
                })
                .collect(),
            Mode::Kube(k) => k
                .system_pods(ZTUNNEL_APP)
                .await?
                .into_iter()
                .map(|p| NodeAdmin {
                    admin: AdminEndpoint::new(
                        format!("ztunnel on {}", p.node),
                        Dialer::PortForward {
                            pods: k.system_pods_api(),
                            pod: p.name.clone(),
                            port: ADMIN_PORT,
                        },
                        self.timeout,
                    )
                    .with_hint(format!(
                        "kubectl -n {} describe pod {}; kubectl logs it",
                        k.system_namespace, p.name
                    )),
                    node: p.node,
                })
                .collect(),
        };
        if all.is_empty() {
            return Err(self.no_nodes());
        }
        match node {
            None => Ok(all),
            Some(wanted) => {
                let known: Vec<String> = all.iter().map(|n| n.node.clone()).collect();
                let picked: Vec<NodeAdmin> = all.into_iter().filter(|n| n.node == wanted).collect();
                if picked.is_empty() {
                    return Err(CliError::NotFound(format!(
                        "no ztunnel on node {wanted:?} (nodes: {})",
                        known.join(", ")
                    )));
                }
                Ok(picked)
            }
        }
    }

    /// The admin APIs of running waypoints, by `namespace/name` of their
    /// Gateway.
    pub async fn waypoints(&self) -> Result<Vec<(String, AdminEndpoint)>> {
        match &self.mode {
            Mode::Local { state, .. } => Ok(state
                .waypoints
                .iter()
                .filter_map(|w| {
                    let key = format!("{}/{}", w.namespace, w.name);
                    let admin = self.local_endpoint(format!("waypoint {key}"), &w.reach, "")?;
                    Some((key, admin))
                })
                .collect()),
            Mode::Kube(k) => {
                let pods: kube_api::Api<Pod> = kube_api::Api::all(k.client.clone());
                let list = pods
                    .list(
                        &kube_api::ListParams::default()
                            .labels(weft_cluster::model::labels::GATEWAY_NAME),
                    )
                    .await
                    .map_err(|e| self::kube::kube_error("listing waypoint pods", e))?;
                Ok(list
                    .items
                    .iter()
                    .filter_map(|pod| {
                        use ::kube::ResourceExt;
                        let ns = pod.namespace()?;
                        let gw = pod
                            .labels()
                            .get(weft_cluster::model::labels::GATEWAY_NAME)?
                            .clone();
                        let key = format!("{ns}/{gw}");
                        let admin = AdminEndpoint::new(
                            format!("waypoint {key} (pod {})", pod.name_any()),
                            Dialer::PortForward {
                                pods: kube_api::Api::namespaced(k.client.clone(), &ns),
                                pod: pod.name_any(),
                                port: ADMIN_PORT,
                            },
                            self.timeout,
                        );
                        Some((key, admin))
                    })
                    .collect())
            }
        }
    }

    /// Every controller replica's debug API: each proxy streams from one of
    /// them, so what the proxies were sent is the union. On Kubernetes the
    /// ready replicas come first.
    pub async fn controllers(&self) -> Result<Vec<AdminEndpoint>> {
        let k = match &self.mode {
            Mode::Local { state, .. } => return Ok(vec![self.local_controller(state)?]),
            Mode::Kube(k) => k,
        };
        let mut pods = k.system_pods(CONTROLLER_APP).await?;
        if pods.is_empty() {
            return Err(CliError::unreachable(
                "the controller",
                format!(
                    "no pod with app.kubernetes.io/name={CONTROLLER_APP} in {}",
                    k.system_namespace
                ),
                "is weft installed? (--system-namespace)",
            ));
        }
        pods.sort_by_key(|p| !p.ready);
        Ok(pods
            .iter()
            .map(|pod| {
                AdminEndpoint::new(
                    format!("the controller (pod {})", pod.name),
                    Dialer::PortForward {
                        pods: k.system_pods_api(),
                        pod: pod.name.clone(),
                        port: ADMIN_PORT,
                    },
                    self.timeout,
                )
            })
            .collect())
    }

    /// The controller's debug API (`/model`, `/subscribers`): on
    /// Kubernetes a ready replica's, if any.
    pub async fn controller(&self) -> Result<AdminEndpoint> {
        match &self.mode {
            Mode::Local { state, .. } => self.local_controller(state),
            Mode::Kube(_) => {
                let mut all = self.controllers().await?;
                Ok(all.swap_remove(0))
            }
        }
    }

    /// The local cluster's controller, as its run state names it.
    fn local_controller(&self, state: &RunState) -> Result<AdminEndpoint> {
        state
            .controller
            .as_ref()
            .and_then(|c| {
                self.local_endpoint(
                    "the controller's debug API".into(),
                    c,
                    "is the controller running? its debug address is listed in the run's state.json",
                )
            })
            .ok_or_else(|| {
                CliError::unreachable(
                    "the controller's debug API",
                    "the run directory does not say where it is",
                    "read what the ztunnels hold instead (--from ztunnel)",
                )
            })
    }

    /// The node agents.
    pub async fn agents(&self) -> Result<Vec<Agent>> {
        let agents: Vec<Agent> = match &self.mode {
            Mode::Local { state, .. } => state
                .nodes
                .iter()
                .filter_map(|n| {
                    Some(Agent {
                        node: n.name.clone(),
                        reach: AgentReach::Socket(n.agent_socket.clone()?),
                    })
                })
                .collect(),
            Mode::Kube(k) => k
                .system_pods(AGENT_APP)
                .await?
                .into_iter()
                .map(|p| Agent {
                    node: p.node,
                    reach: AgentReach::Exec(k.clone(), p.name),
                })
                .collect(),
        };
        Ok(agents)
    }

    /// The names of the nodes weft runs on (ztunnels or agents).
    pub async fn nodes(&self) -> Result<Vec<String>> {
        let mut nodes: Vec<String> = match &self.mode {
            Mode::Local { state, .. } => state.nodes.iter().map(|n| n.name.clone()).collect(),
            Mode::Kube(k) => {
                let mut n: Vec<String> = k
                    .system_pods(ZTUNNEL_APP)
                    .await?
                    .into_iter()
                    .chain(k.system_pods(AGENT_APP).await?)
                    .map(|p| p.node)
                    .collect();
                n.sort();
                n.dedup();
                n
            }
        };
        nodes.retain(|n| !n.is_empty());
        Ok(nodes)
    }

    /// weft's own pods of one kind (Kubernetes only; empty for local runs).
    pub async fn system_pods(&self, app: &str) -> Result<Vec<self::kube::SystemPod>> {
        match &self.mode {
            Mode::Local { .. } => Ok(Vec::new()),
            Mode::Kube(k) => k.system_pods(app).await,
        }
    }

    /// Whether the CNI plugin is installed on a node (local runs: read from
    /// the node's CNI directories; `None` when they are not known).
    pub fn cni_install(&self, node: &str) -> Option<CniInstall> {
        let Mode::Local { state, .. } = &self.mode else {
            return None;
        };
        let n = state.nodes.iter().find(|n| n.name == node)?;
        let conf_dir = n.cni_conf_dir.as_ref()?;
        let mut files: Vec<PathBuf> = std::fs::read_dir(conf_dir)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.retain(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("conf" | "conflist" | "json")
            )
        });
        files.sort();
        let config_file = files.first().cloned();
        let in_config = config_file
            .as_ref()
            .and_then(|f| std::fs::read(f).ok())
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .is_some_and(|v| {
                v.get("plugins")
                    .and_then(Value::as_array)
                    .is_some_and(|p| p.iter().any(|p| p["type"] == "weft-cni"))
            });
        let binary = n
            .cni_bin_dir
            .as_ref()
            .is_some_and(|d| d.join("weft-cni").is_file());
        Some(CniInstall {
            config_file,
            in_config,
            binary,
        })
    }

    /// The cluster's objects, as the controller's registry reads them.
    pub async fn state(&self) -> Result<Arc<ClusterState>> {
        match &self.mode {
            Mode::Local { manifests, .. } => {
                let dir = manifests.as_ref().ok_or_else(|| {
                    CliError::Usage(
                        "the run directory names no manifest directory: pass --manifests".into(),
                    )
                })?;
                let state =
                    weft_cluster::registry::files::load_dir(dir.root(), &RegistryConfig::default());
                Ok(Arc::new(state))
            }
            Mode::Kube(k) => {
                let registry = Registry::kubernetes(k.client.clone(), RegistryConfig::default());
                // Listing every kind takes a few round trips; allow more
                // than one component's timeout.
                let wait = self.timeout * 4;
                tokio::time::timeout(wait, registry.synced())
                    .await
                    .ok()
                    .flatten()
                    .ok_or_else(|| {
                        CliError::unreachable(
                            "the Kubernetes API server",
                            format!("could not list every kind weft reads within {wait:?}"),
                            "are the Gateway API and weft CRDs installed (deploy/), and may you list them?",
                        )
                    })
            }
        }
    }

    /// Sets (or removes) a namespace label.
    pub async fn label_namespace(
        &self,
        namespace: &str,
        key: &str,
        value: Option<&str>,
    ) -> Result<()> {
        match &self.mode {
            Mode::Kube(k) => k.label_namespace(namespace, key, value).await,
            Mode::Local { .. } => {
                let dir = self.manifest_dir()?;
                let found = dir.update(&ObjectRef::cluster("Namespace", namespace), |v| {
                    set_label(v, key, value);
                })?;
                if found {
                    Ok(())
                } else {
                    Err(CliError::NotFound(format!(
                        "namespace {namespace:?}: no Namespace object in {}",
                        dir.root().display()
                    )))
                }
            }
        }
    }

    /// Creates or replaces a Gateway (given as a full manifest).
    pub async fn apply_gateway(&self, namespace: &str, name: &str, object: &Value) -> Result<()> {
        match &self.mode {
            Mode::Kube(k) => k.apply_gateway(namespace, name, object).await,
            Mode::Local { .. } => {
                let dir = self.manifest_dir()?;
                let target = ObjectRef::namespaced("Gateway", namespace, name);
                // Keep what others wrote (status, other labels): merge ours in.
                let merged = match dir.get(&target)? {
                    Some(mut existing) => {
                        merge(&mut existing, object);
                        existing
                    }
                    None => object.clone(),
                };
                dir.put(&target, &merged).map(drop)
            }
        }
    }

    /// Deletes a Gateway.
    pub async fn delete_gateway(&self, namespace: &str, name: &str) -> Result<()> {
        match &self.mode {
            Mode::Kube(k) => k.delete_gateway(namespace, name).await,
            Mode::Local { .. } => {
                let dir = self.manifest_dir()?;
                if dir.delete(&ObjectRef::namespaced("Gateway", namespace, name))? {
                    Ok(())
                } else {
                    Err(CliError::NotFound(format!(
                        "Gateway {namespace}/{name}: not found"
                    )))
                }
            }
        }
    }

    fn manifest_dir(&self) -> Result<&ManifestDir> {
        match &self.mode {
            Mode::Local {
                manifests: Some(dir),
                ..
            } => Ok(dir),
            _ => Err(CliError::Usage(
                "the run directory names no manifest directory: pass --manifests".into(),
            )),
        }
    }
}

/// With no run directory and no Kubernetes configuration at all, the newest
/// local run of the e2e harness, if there is one: `weftctl tunnels` right
/// after `make demo` just works.
fn local_run_without_kubeconfig(args: &crate::args::ClusterArgs) -> Option<PathBuf> {
    let home_config = std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".kube/config"))
        .is_some_and(|p| p.exists());
    if args.kubeconfig.is_some()
        || args.context.is_some()
        || std::env::var_os("KUBECONFIG").is_some()
        || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
        || home_config
    {
        return None;
    }
    let root = std::env::var_os("WEFT_E2E_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(local::DEFAULT_E2E_ROOT));
    let (dir, count) = RunState::newest_run(&root)?;
    if count > 1 {
        eprintln!(
            "weftctl: using the newest of {count} local runs, {} (set WEFT_RUN_DIR to choose)",
            dir.display()
        );
    }
    Some(dir)
}

// The kube crate's API types, under a name that does not clash with our
// `kube` module.
use ::kube::api as kube_api;

/// Sets or removes `metadata.labels[key]` in a manifest.
pub fn set_label(object: &mut Value, key: &str, value: Option<&str>) {
    let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    let labels = meta
        .entry("labels")
        .or_insert_with(|| Value::Object(Default::default()));
    if !labels.is_object() {
        *labels = Value::Object(Default::default());
    }
    if let Some(labels) = labels.as_object_mut() {
        match value {
            Some(v) => {
                labels.insert(key.to_string(), Value::String(v.to_string()));
            }
            None => {
                labels.remove(key);
            }
        }
        if labels.is_empty() {
            meta.remove("labels");
        }
    }
}

/// JSON merge (RFC 7386 without deletion): objects merge key by key, anything
/// else replaces.
fn merge(into: &mut Value, from: &Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (into, from) => *into = from.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_set_and_removed() {
        let mut ns = serde_json::json!({"metadata": {"name": "a"}});
        set_label(&mut ns, "k", Some("v"));
        assert_eq!(ns["metadata"]["labels"]["k"], "v");
        set_label(&mut ns, "k", None);
        assert!(ns["metadata"].get("labels").is_none());
    }

    #[test]
    fn merge_keeps_other_fields() {
        let mut a = serde_json::json!({"metadata": {"labels": {"x": "1"}}, "status": {"s": 1}});
        merge(
            &mut a,
            &serde_json::json!({"metadata": {"labels": {"y": "2"}}, "spec": {}}),
        );
        assert_eq!(
            a,
            serde_json::json!({"metadata": {"labels": {"x": "1", "y": "2"}}, "status": {"s": 1}, "spec": {}})
        );
    }
}
