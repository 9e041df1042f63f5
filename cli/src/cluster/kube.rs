//! A Kubernetes cluster, through kube-rs: objects from the API server,
//! admin APIs through its port-forward, the node agent's coverage through
//! exec.
//!
//! weft's own pods are found in the system namespace by the name label
//! deploy/ and the chart set (`app.kubernetes.io/name`): see
//! [`ZTUNNEL_APP`], [`AGENT_APP`], [`CONTROLLER_APP`].

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, ResourceExt};
use serde_json::Value;

use crate::exit::{CliError, Result};

/// The label deploy/ names weft's pods by.
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
/// Name label of the ztunnel DaemonSet's pods.
pub const ZTUNNEL_APP: &str = "ztunnel";
/// Name label of the node agent DaemonSet's pods.
pub const AGENT_APP: &str = "weft-node-agent";
/// Name label of the controller's pods.
pub const CONTROLLER_APP: &str = "weft-controller";
/// Field manager of weftctl's server-side applies.
pub const FIELD_MANAGER: &str = "weftctl";

/// One of weft's own pods.
#[derive(Clone, Debug)]
pub struct SystemPod {
    /// Pod name.
    pub name: String,
    /// `spec.nodeName`.
    pub node: String,
    /// Its Ready condition is True.
    pub ready: bool,
}

/// The connection to a Kubernetes cluster.
#[derive(Clone)]
pub struct KubeCluster {
    /// The client.
    pub client: Client,
    /// Where weft runs.
    pub system_namespace: String,
}

/// Turns a kube error into ours: unreachable API server, not found, or other.
pub fn kube_error(what: &str, e: kube::Error) -> CliError {
    match e {
        kube::Error::Api(status) if status.code == 404 => {
            CliError::NotFound(format!("{what}: not found"))
        }
        kube::Error::Api(status) if status.code == 403 || status.code == 401 => CliError::other(
            format!("{what}: {} (check your RBAC permissions)", status.message),
        ),
        kube::Error::Api(status) => CliError::other(format!("{what}: {}", status.message)),
        other @ (kube::Error::HyperError(_)
        | kube::Error::Service(_)
        | kube::Error::HttpError(_)
        | kube::Error::Auth(_)
        | kube::Error::TlsRequired) => CliError::unreachable(
            "the Kubernetes API server",
            format!("{what}: {other}"),
            "check the kubeconfig context (--kubeconfig, --context), or use --run-dir for a local cluster",
        ),
        other => CliError::other(format!("{what}: {other}")),
    }
}

impl KubeCluster {
    /// Builds a client from `--kubeconfig` / `--context`, else the usual
    /// inference (KUBECONFIG, ~/.kube/config, in-cluster).
    pub async fn connect(
        kubeconfig: Option<&PathBuf>,
        context: Option<&str>,
        system_namespace: &str,
    ) -> Result<KubeCluster> {
        let unreachable = |e: &dyn std::fmt::Display| {
            CliError::unreachable(
                "the Kubernetes API server",
                format!("no usable kubeconfig: {e}"),
                "set KUBECONFIG or pass --kubeconfig/--context; for a local cluster of the e2e harness pass --run-dir (or set WEFT_RUN_DIR)",
            )
        };
        let options = KubeConfigOptions {
            context: context.map(str::to_owned),
            ..KubeConfigOptions::default()
        };
        let config = match (kubeconfig, context) {
            (Some(path), _) => {
                let file = Kubeconfig::read_from(path).map_err(|e| unreachable(&e))?;
                Config::from_custom_kubeconfig(file, &options)
                    .await
                    .map_err(|e| unreachable(&e))?
            }
            (None, Some(_)) => Config::from_kubeconfig(&options)
                .await
                .map_err(|e| unreachable(&e))?,
            (None, None) => Config::infer().await.map_err(|e| unreachable(&e))?,
        };
        let client = Client::try_from(config).map_err(|e| unreachable(&e))?;
        Ok(KubeCluster {
            client,
            system_namespace: system_namespace.to_string(),
        })
    }

    /// Pods of the system namespace.
    pub fn system_pods_api(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.system_namespace)
    }

    /// weft's pods named `app` by [`NAME_LABEL`], by node.
    pub async fn system_pods(&self, app: &str) -> Result<Vec<SystemPod>> {
        let list = self
            .system_pods_api()
            .list(&ListParams::default().labels(&format!("{NAME_LABEL}={app}")))
            .await
            .map_err(|e| {
                kube_error(
                    &format!("listing {app} pods in {}", self.system_namespace),
                    e,
                )
            })?;
        let mut pods: Vec<SystemPod> = list
            .items
            .iter()
            .map(|pod| SystemPod {
                name: pod.name_any(),
                node: pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .unwrap_or_default(),
                ready: pod
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
            })
            .collect();
        pods.sort_by(|a, b| (&a.node, &a.name).cmp(&(&b.node, &b.name)));
        Ok(pods)
    }

    /// Sets (or, with `None`, removes) a label on a namespace.
    pub async fn label_namespace(
        &self,
        namespace: &str,
        key: &str,
        value: Option<&str>,
    ) -> Result<()> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let patch = serde_json::json!({"metadata": {"labels": {key: value}}});
        api.patch(namespace, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| kube_error(&format!("namespace {namespace}"), e))?;
        Ok(())
    }

    /// Server-side applies a namespaced object of a Gateway API kind.
    pub async fn apply_gateway(&self, namespace: &str, name: &str, object: &Value) -> Result<()> {
        let api: Api<gateway_api::gateways::Gateway> =
            Api::namespaced(self.client.clone(), namespace);
        api.patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(object),
        )
        .await
        .map_err(|e| kube_error(&format!("Gateway {namespace}/{name}"), e))?;
        Ok(())
    }

    /// Deletes a Gateway.
    pub async fn delete_gateway(&self, namespace: &str, name: &str) -> Result<()> {
        let api: Api<gateway_api::gateways::Gateway> =
            Api::namespaced(self.client.clone(), namespace);
        api.delete(name, &DeleteParams::default())
            .await
            .map_err(|e| kube_error(&format!("Gateway {namespace}/{name}"), e))?;
        Ok(())
    }

    /// Runs `weft-node-agent coverage` in a node agent pod and returns what it
    /// printed (it exits 1 when a pod is not covered; the report is printed
    /// either way).
    pub async fn agent_coverage(&self, pod: &str, timeout: Duration) -> Result<String> {
        use tokio::io::AsyncReadExt;
        let api = self.system_pods_api();
        let params = kube::api::AttachParams::default()
            .stdout(true)
            .stderr(false)
            .stdin(false);
        let run = async {
            let mut process = api
                .exec(pod, ["weft-node-agent", "coverage"], &params)
                .await
                .map_err(|e| kube_error(&format!("exec in pod {pod}"), e))?;
            let mut out = String::new();
            if let Some(mut stdout) = process.stdout() {
                stdout
                    .read_to_string(&mut out)
                    .await
                    .map_err(|e| CliError::other(format!("reading exec output of {pod}: {e}")))?;
            }
            let _ = process.join().await;
            Ok(out)
        };
        tokio::time::timeout(timeout, run).await.map_err(|_| {
            CliError::unreachable(
                format!("node agent pod {pod}"),
                format!("no coverage report within {timeout:?}"),
                "check the node agent's logs",
            )
        })?
    }
}
