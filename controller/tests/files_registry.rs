//! The files registry: add, change, delete and invalid documents, and the
//! model they produce.

use std::time::Duration;

use weft_cluster::model::{self, ModelConfig};
use weft_cluster::registry::{Kinds, Registry, RegistryConfig};
use weft_testkit::eventually_async;

/// How long the registry may take to see a change.
const WAIT: Duration = Duration::from_secs(10);

const NAMESPACE: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels:
    weft.dev/dataplane-mode: ambient
"#;

fn pod(name: &str, node: &str, ip: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: shop
  labels: {{app: web}}
  annotations:
    weft.dev/netns: /var/run/netns/{name}
spec:
  nodeName: {node}
  serviceAccountName: web
  containers: [{{name: app, image: none}}]
status:
  podIP: {ip}
"#
    )
}

#[tokio::test]
async fn add_change_delete_and_invalid() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("ns.yaml"), NAMESPACE).expect("write");
    std::fs::write(
        dir.path().join("pods.yaml"),
        format!(
            "{}---{}",
            pod("web-1", "node-a", "10.244.1.5"),
            pod("web-2", "node-b", "10.244.2.5")
        ),
    )
    .expect("write");
    let registry = Registry::files(dir.path(), RegistryConfig::default())
        .await
        .expect("registry");
    let state = registry.current();
    assert!(state.synced);
    assert_eq!(state.pods.len(), 2);
    assert!(state.invalid.is_empty(), "{:?}", state.invalid);
    let pod1 = state.pods.values().next().expect("pod");
    assert_eq!(
        pod1.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("weft.dev/netns"))
            .map(String::as_str),
        Some("/var/run/netns/web-1"),
        "annotations are kept"
    );
    let m = model::build(&state, &ModelConfig::default());
    let w = m.workloads.get("pod/shop/web-1").expect("workload web-1");
    assert_eq!(w.addresses, vec!["10.244.1.5"]);
    assert_eq!(w.service_account, "web");
    assert_eq!(w.node, "node-a");

    let rx = registry.subscribe();
    // Change: web-1 moves to a new IP; add a Service in a new file.
    std::fs::write(
        dir.path().join("pods.yaml"),
        format!(
            "{}---{}",
            pod("web-1", "node-a", "10.244.1.9"),
            pod("web-2", "node-b", "10.244.2.5")
        ),
    )
    .expect("write");
    std::fs::write(
        dir.path().join("svc.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec:\n  clusterIP: 10.96.0.10\n  selector: {app: web}\n  ports: [{port: 80, targetPort: 8080}]\n",
    )
    .expect("write");
    let state = eventually_async("the new pod and the service", WAIT, async || {
        Some(rx.borrow().clone()).filter(|s| {
            s.services.len() == 1
                && s.pods.values().any(|p| {
                    p.status.as_ref().and_then(|st| st.pod_ip.as_deref()) == Some("10.244.1.9")
                })
        })
    })
    .await;
    let m = model::build(&state, &ModelConfig::default());
    assert_eq!(m.workloads["pod/shop/web-1"].addresses, vec!["10.244.1.9"]);
    let svc = &m.services["shop/web"];
    assert_eq!(svc.vips, vec!["10.96.0.10"]);
    assert_eq!(svc.endpoints.len(), 2, "selector fallback finds both pods");
    assert_eq!(svc.endpoints[0].ports.get(&80), Some(&8080));

    // Invalid: a bad port in one document; the other document survives.
    std::fs::write(
        dir.path().join("pods.yaml"),
        format!(
            "{}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: broken, namespace: shop}}\nspec:\n  containers: [{{name: app, ports: [{{containerPort: not-a-number}}]}}]\n",
            pod("web-1", "node-a", "10.244.1.9")
        ),
    )
    .expect("write");
    let state = eventually_async("the broken file to be reported", WAIT, async || {
        Some(rx.borrow().clone()).filter(|s| !s.invalid.is_empty())
    })
    .await;
    assert_eq!(
        state.pods.len(),
        1,
        "web-2 deleted, broken skipped, web-1 kept"
    );
    let bad = &state.invalid[0];
    assert_eq!(bad.file, "pods.yaml");
    assert_eq!(bad.document, 1);
    assert_eq!(bad.field, "spec.containers[0].ports[0].containerPort");
    assert!(bad.object.contains("shop/broken"), "{bad}");

    // Delete: the whole file goes, and its pods with it.
    std::fs::remove_file(dir.path().join("pods.yaml")).expect("rm");
    let state = eventually_async("every pod to be gone", WAIT, async || {
        Some(rx.borrow().clone()).filter(|s| s.pods.is_empty())
    })
    .await;
    let m = model::build(&state, &ModelConfig::default());
    assert!(m.workloads.is_empty());
    assert!(m.services["shop/web"].endpoints.is_empty());
}

#[tokio::test]
async fn node_agent_view_filters_node_and_kinds() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("all.yaml"),
        format!(
            "{NAMESPACE}---{}---{}---\napiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: shop}}\nspec: {{ports: [{{port: 80}}]}}\n",
            pod("web-1", "node-a", "10.244.1.5"),
            pod("web-2", "node-b", "10.244.2.5")
        ),
    )
    .expect("write");
    let config = RegistryConfig {
        kinds: Kinds::NODE_AGENT,
        node: Some("node-a".into()),
    };
    let registry = Registry::files(dir.path(), config).await.expect("registry");
    let state = registry.synced().await.expect("synced");
    assert_eq!(state.namespaces.len(), 1);
    assert_eq!(state.pods.len(), 1);
    assert!(state.services.is_empty());
    assert_eq!(
        state.pods.keys().next().map(|k| k.name.as_str()),
        Some("web-1")
    );
}
