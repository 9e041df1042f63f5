//! Shared by the kube-mode tests (`kube*.rs`): a control plane with weft
//! installed from deploy/, and reading objects back.

use std::time::Duration;

use serde_json::Value;
use weft_e2e::kube::{KubeRun, install};

/// How long the control plane and the controller may take to act.
pub const SETTLE: Duration = Duration::from_secs(30);

/// A control plane in a run of its own, weft installed with kubectl.
pub fn installed() -> KubeRun {
    let root = weft_e2e::names::root_dir();
    let run = KubeRun::start(&root, &|line| eprintln!("{line}")).expect("control plane up");
    install::weft(run.plane()).expect("install weft with kubectl");
    run
}

/// `kubectl get ARGS -o json`, or `None` if it does not exist (or failed).
pub fn get(run: &KubeRun, args: &[&str]) -> Option<Value> {
    run.plane().kubectl().get_json(args).ok()
}

/// How many pods in `namespace` match `selector`.
pub fn pod_count(run: &KubeRun, namespace: &str, selector: &str) -> usize {
    get(run, &["pods", "-n", namespace, "-l", selector])
        .and_then(|v| v["items"].as_array().map(Vec::len))
        .unwrap_or(0)
}

/// The condition of type `kind` in `object`'s status.
pub fn condition(object: &Value, kind: &str) -> Option<Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
        .cloned()
}

/// Who holds the controller's Lease.
pub fn holder(run: &KubeRun) -> Option<String> {
    get(run, &["lease", "-n", "weft-system", "weft-controller"])
        .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
}

/// A Node object (no kubelet reports it; enough for pods bound to it).
pub fn node(name: &str) -> String {
    format!("apiVersion: v1\nkind: Node\nmetadata: {{name: {name}}}\n")
}

/// A Pod bound to `node`, labelled `app: <name>`, running as
/// `service_account` (no kubelet runs it; its status is the test's to set).
pub fn pod(namespace: &str, name: &str, service_account: &str, node: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {namespace}, labels: {{app: {name}}}}}\nspec:\n  nodeName: {node}\n  serviceAccountName: {service_account}\n  automountServiceAccountToken: false\n  containers: [{{name: app, image: weft-e2e-app}}]\n"
    )
}
