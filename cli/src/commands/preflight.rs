//! `weftctl check --pre`: before install, what would not work.
//!
//! - the API server's version (the chart's `kubeVersion`, 1.30 or newer);
//! - the Gateway API CRDs (the waypoint GatewayClass needs them);
//! - privileged pods in weft's namespace: a server-side dry run of a pod
//!   shaped like the node agent's (host network, host paths, NET_ADMIN and
//!   SYS_ADMIN), so PodSecurity and any admission webhook answer for real;
//! - on every node, from a short-lived host-network pod running
//!   `weft-node-agent preflight` from the node agent's image: the active CNI
//!   config weft-cni would chain onto and its plugins, nftables or iptables,
//!   and whether the kernel takes the agent's own rules (checked, not
//!   committed; weft redirects with nat `redirect`, so no TPROXY is needed).
//!
//! The namespace is created from the manifests if it is missing (labelled as
//! install would) and deleted again afterwards, with the check's pods.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{DeleteParams, LogParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use weft_cni::report::NodeReport;

use super::check::{Findings, Status, report};
use super::install::client;
use crate::args::GlobalArgs;
use crate::cluster::kube::kube_error;
use crate::exit::{CliError, Outcome, Result};
use crate::install::{self, Object};

/// The oldest API server the manifests are written for (Chart.yaml's
/// `kubeVersion`).
const MIN_MINOR: u32 = 30;

/// How long a node's check pod may take to run.
const NODE_CHECK: Duration = Duration::from_secs(90);

/// Runs the command.
pub async fn run(global: &GlobalArgs) -> Result<Outcome> {
    let client = client(global).await?;
    let objects = install::objects()?;
    let namespace = install::system_namespace(&objects)
        .unwrap_or("weft-system")
        .to_string();
    let mut f = Findings(Vec::new());
    api_version(&client, &mut f).await;
    gateway_api(&client, &mut f).await;
    let created = ensure_namespace(&client, &objects, &namespace).await?;
    let agent = objects
        .iter()
        .find(|o| o.kind == "DaemonSet" && o.name == "weft-node-agent");
    match agent {
        Some(agent) => {
            privileged(&client, agent, &namespace, &mut f).await;
            nodes(&client, agent, &namespace, &mut f).await;
        }
        None => f.add(
            "manifests",
            "weftctl",
            Status::Fail,
            "no node agent DaemonSet in the embedded manifests",
            "this weftctl was built wrong",
        ),
    }
    if created {
        let api: Api<Namespace> = Api::all(client.clone());
        if let Err(e) = api.delete(&namespace, &DeleteParams::default()).await {
            eprintln!("weftctl: warning: namespace {namespace} made for the check is left: {e}");
        }
    }
    report(global, f)
}

async fn api_version(client: &Client, f: &mut Findings) {
    match client.apiserver_version().await {
        Ok(info) => {
            let minor: u32 = info
                .minor
                .trim_end_matches(|c: char| !c.is_ascii_digit())
                .parse()
                .unwrap_or(0);
            let ok = info.major == "1" && minor >= MIN_MINOR;
            f.add(
                "kubernetes",
                "cluster",
                if ok { Status::Ok } else { Status::Fail },
                format!("API server {}", info.git_version),
                format!("weft needs Kubernetes 1.{MIN_MINOR} or newer"),
            );
        }
        Err(e) => f.add(
            "kubernetes",
            "cluster",
            Status::Fail,
            kube_error("the API server's version", e).to_string(),
            "check the kubeconfig (--kubeconfig, --context)",
        ),
    }
}

async fn gateway_api(client: &Client, f: &mut Findings) {
    let gvk = kube::core::GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "GatewayClass");
    match kube::discovery::pinned_kind(client, &gvk).await {
        Ok(_) => f.add(
            "gateway-api",
            "cluster",
            Status::Ok,
            "Gateway API v1 served",
            "",
        ),
        Err(e) => f.add(
            "gateway-api",
            "cluster",
            Status::Fail,
            format!("GatewayClass (gateway.networking.k8s.io/v1) not served: {e}"),
            "install the Gateway API standard CRDs (v1.5.1) first",
        ),
    }
}

/// Creates weft's namespace from the manifests if missing; says whether it
/// did.
async fn ensure_namespace(client: &Client, objects: &[Object], name: &str) -> Result<bool> {
    let api: Api<Namespace> = Api::all(client.clone());
    if api
        .get_opt(name)
        .await
        .map_err(|e| kube_error(&format!("namespace {name}"), e))?
        .is_some()
    {
        return Ok(false);
    }
    let body = objects
        .iter()
        .find(|o| o.kind == "Namespace")
        .map(|o| o.body.clone())
        .ok_or_else(|| CliError::other("no Namespace in the embedded manifests"))?;
    let ns: Namespace = serde_json::from_value(body).map_err(CliError::other)?;
    api.create(&PostParams::default(), &ns)
        .await
        .map_err(|e| kube_error(&format!("creating namespace {name} for the check"), e))?;
    Ok(true)
}

/// The node agent's pod template as a Pod on `node` running `args`.
fn agent_pod(
    agent: &Object,
    namespace: &str,
    name: &str,
    node: Option<&str>,
    args: Value,
) -> Value {
    let template = &agent.body["spec"]["template"];
    let mut container = template["spec"]["containers"][0].clone();
    container["args"] = args;
    if let Some(c) = container.as_object_mut() {
        for key in ["env", "resources", "ports"] {
            c.remove(key);
        }
    }
    let mut spec = template["spec"].clone();
    spec["containers"] = json!([container]);
    spec["restartPolicy"] = json!("Never");
    spec["automountServiceAccountToken"] = json!(false);
    if let Some(s) = spec.as_object_mut() {
        s.remove("serviceAccountName");
        s.remove("priorityClassName");
    }
    if let Some(node) = node {
        spec["nodeName"] = json!(node);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/name": "weft-preflight",
                "app.kubernetes.io/part-of": "weft",
            },
        },
        "spec": spec,
    })
}

async fn privileged(client: &Client, agent: &Object, namespace: &str, f: &mut Findings) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pod = agent_pod(
        agent,
        namespace,
        "weft-preflight-admission",
        None,
        json!(["preflight"]),
    );
    let result = match serde_json::from_value::<Pod>(pod) {
        Ok(pod) => pods
            .create(
                &PostParams {
                    dry_run: true,
                    ..PostParams::default()
                },
                &pod,
            )
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match result {
        Ok(()) => f.add(
            "privileged-pods",
            namespace,
            Status::Ok,
            "the node agent's pod is admitted (host network, host paths, NET_ADMIN/SYS_ADMIN)",
            "",
        ),
        Err(e) => f.add(
            "privileged-pods",
            namespace,
            Status::Fail,
            format!("the node agent's pod is refused: {e}"),
            format!(
                "label {namespace} pod-security.kubernetes.io/enforce=privileged and let privileged pods run there (admission policies)"
            ),
        ),
    }
}

async fn nodes(client: &Client, agent: &Object, namespace: &str, f: &mut Findings) {
    let names: Vec<String> = match Api::<Node>::all(client.clone())
        .list(&Default::default())
        .await
    {
        Ok(list) => list
            .items
            .into_iter()
            .filter_map(|n| n.metadata.name)
            .collect(),
        Err(e) => {
            f.add(
                "nodes",
                "cluster",
                Status::Fail,
                kube_error("listing nodes", e).to_string(),
                "may you list nodes?",
            );
            return;
        }
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut started = Vec::new();
    for node in &names {
        let name = format!("weft-preflight-{node}");
        let args = json!([
            "preflight",
            "--cni-conf-dir=/host/etc/cni/net.d",
            "--cni-bin-dir=/host/opt/cni/bin",
            "--hold"
        ]);
        let created = match serde_json::from_value::<Pod>(agent_pod(
            agent,
            namespace,
            &name,
            Some(node),
            args,
        )) {
            Ok(pod) => pods
                .create(&PostParams::default(), &pod)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match created {
            Ok(_) => started.push((node.clone(), name)),
            Err(e) => f.add(
                "node",
                node,
                Status::Fail,
                format!("cannot start the check pod: {e}"),
                "",
            ),
        }
    }
    for (node, name) in started {
        match node_report(&pods, &name).await {
            Ok(r) => node_findings(&node, &r, f),
            Err(e) => f.add(
                "node",
                &node,
                Status::Fail,
                e,
                "the node cannot run the node agent's image: check the node and the image",
            ),
        }
        let now = DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        };
        let _ = pods.delete(&name, &now).await;
    }
}

/// Waits for the check pod's report in its log (the pod holds until it is
/// deleted, so the log is there to read on any runtime).
async fn node_report(pods: &Api<Pod>, name: &str) -> std::result::Result<NodeReport, String> {
    let deadline = Instant::now() + NODE_CHECK;
    let mut last = String::new();
    loop {
        let pod = pods.get(name).await.map_err(|e| e.to_string())?;
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        if phase != "Pending" {
            match pods.logs(name, &LogParams::default()).await {
                Ok(log) => {
                    if let Some(line) = log.lines().find(|l| l.starts_with('{')) {
                        return serde_json::from_str(line).map_err(|e| {
                            format!("the check pod's report does not parse ({e}): {line}")
                        });
                    }
                    last = format!("the check pod ended {phase} without a report: {log}");
                }
                Err(e) => last = format!("reading the check pod's log: {e}"),
            }
        }
        if Instant::now() >= deadline {
            let why = pod
                .status
                .and_then(|s| s.message.or(s.reason))
                .unwrap_or(phase);
            return Err(format!(
                "no report from the check pod in {NODE_CHECK:?}: {why} {last}"
            ));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn node_findings(node: &str, r: &NodeReport, f: &mut Findings) {
    match (&r.cni_config, &r.cni_config_error) {
        (Some(path), None) => f.add(
            "cni",
            node,
            Status::Ok,
            format!("{}: {}", path.display(), r.plugins.join(" → ")),
            "",
        ),
        (path, error) => f.add(
            "cni",
            node,
            Status::Fail,
            format!(
                "{}{}",
                path.as_ref()
                    .map(|p| format!("{}: ", p.display()))
                    .unwrap_or_default(),
                error.as_deref().unwrap_or("no usable network config")
            ),
            "install the cluster's network (its CNI writes the config weft-cni chains onto) before weft",
        ),
    }
    if !r.missing_plugins.is_empty() {
        f.add(
            "cni-plugins",
            node,
            Status::Warn,
            format!(
                "not in /opt/cni/bin: {} (the runtime may look elsewhere)",
                r.missing_plugins.join(", ")
            ),
            "if the runtime's CNI bin dir is not /opt/cni/bin, set nodeAgent.cniBinDir",
        );
    }
    let (status, detail) = match (r.nftables, r.iptables) {
        (true, _) => (Status::Ok, "nftables works"),
        (false, true) => (Status::Ok, "iptables works (no nftables)"),
        (false, false) => (Status::Fail, "neither nftables nor iptables works"),
    };
    f.add(
        "redirect",
        node,
        status,
        detail,
        "install nftables (or iptables) on the node; the redirect rules need one",
    );
    let fix = "load the nftables nat and redirect modules (nf_nat, nft_redir) or use a kernel that has them";
    match &r.rules_error {
        Some(error) => f.add(
            "redirect-rules",
            node,
            Status::Fail,
            format!("the kernel refuses weft's rules: {error}"),
            fix,
        ),
        // Without a working tool the `redirect` finding already fails.
        None if r.nftables || r.iptables => f.add(
            "redirect-rules",
            node,
            Status::Ok,
            "the kernel takes the in-pod redirect rules and the probe SNAT table (checked, not committed)",
            "",
        ),
        None => {}
    }
}
