//! The kubernetes registry against an HTTP-level fake API server: objects
//! appear, change and disappear; bookmarks move the resume point; a 410 after
//! compaction relists; status patches reach the server.

mod support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use support::fake_apiserver::FakeApiServer;
use support::{CONTROLLER_COLLECTIONS as COLLECTIONS, ambient_namespace as namespace};
use weft_cluster::model::{self, ModelConfig};
use weft_cluster::registry::{ClusterState, Kinds, Registry, RegistryConfig};
use weft_controller::auth::CONTROLLER_AUDIENCE;
use weft_controller::pipeline::ModelVersion;
use weft_controller::writers::Writer;
use weft_controller::writers::deployer::DeployerConfig;
use weft_testkit::eventually_async;

/// How long the registry may take to see a change.
const WAIT: Duration = Duration::from_secs(20);

fn pod(name: &str, node: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}")},
           "spec": {"nodeName": node, "serviceAccountName": "web", "containers": [{"name": "app"}]},
           "status": {"podIP": ip}})
}

fn pod_ip(state: &ClusterState, name: &str) -> Option<String> {
    state
        .pods
        .values()
        .find(|p| p.metadata.name.as_deref() == Some(name))
        .and_then(|p| p.status.as_ref()?.pod_ip.clone())
}

#[tokio::test]
async fn objects_appear_change_disappear_and_410_relists() {
    let api = FakeApiServer::start(COLLECTIONS).await;
    api.apply(namespace());
    api.apply(pod("a", "node-a", "10.244.1.1"));
    let registry = Registry::kubernetes(api.client(), RegistryConfig::default());
    let rx = registry.subscribe();

    let state = eventually_async("initial sync", WAIT, async || {
        Some(rx.borrow().clone()).filter(|s| s.synced && s.pods.len() == 1)
    })
    .await;
    let m = model::build(&state, &ModelConfig::default());
    assert_eq!(m.workloads["uid-a"].addresses, vec!["10.244.1.1"]);

    // Appear.
    api.apply(pod("b", "node-b", "10.244.2.1"));
    let state = eventually_async("pod b", WAIT, async || {
        Some(rx.borrow().clone()).filter(|s| s.pods.len() == 2)
    })
    .await;
    assert_eq!(
        model::build(&state, &ModelConfig::default())
            .workloads
            .len(),
        2
    );
    // Change.
    api.apply(pod("a", "node-a", "10.244.1.9"));
    eventually_async("pod a moved", WAIT, async || {
        Some(rx.borrow().clone()).filter(|s| pod_ip(s, "a").as_deref() == Some("10.244.1.9"))
    })
    .await;
    // Disappear.
    api.delete(&pod("b", "node-b", "10.244.2.1"));
    eventually_async("pod b gone", WAIT, async || {
        Some(rx.borrow().clone()).filter(|s| s.pods.len() == 1)
    })
    .await;

    // A bookmark moves the resume point: the next watch starts from it.
    // A change elsewhere first moves the global resource version past the
    // last pod event, so only the bookmark can tell the pod watcher about it.
    api.apply(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x", "namespace": "shop"},
                     "spec": {"ports": [{"port": 80}]}}));
    let last_pod_event = api.resource_version() - 1;
    api.bookmark();
    let bookmark_rv = api.resource_version();
    tokio::time::sleep(Duration::from_millis(200)).await;
    api.drop_watches();
    assert!(bookmark_rv > last_pod_event);
    let resumed = format!("resourceVersion={bookmark_rv}");
    eventually_async("the watch to resume from the bookmark", WAIT, async || {
        api.requests()
            .iter()
            .any(|r| r.contains("/pods?") && r.contains("watch=true") && r.contains(&resumed))
    })
    .await;

    // 410: history is compacted while the watch is down; changes made in
    // the meantime arrive through the relist.
    let lists_before = api
        .requests()
        .iter()
        .filter(|r| r.starts_with("GET /api/v1/pods?") && !r.contains("watch=true"))
        .count();
    api.compact();
    api.drop_watches();
    api.apply(pod("c", "node-a", "10.244.1.3"));
    api.delete(&pod("a", "node-a", "10.244.1.9"));
    api.compact();
    let state = eventually_async("relist after 410", WAIT, async || {
        Some(rx.borrow().clone()).filter(|s| s.pods.len() == 1 && pod_ip(s, "c").is_some())
    })
    .await;
    let lists_after = api
        .requests()
        .iter()
        .filter(|r| r.starts_with("GET /api/v1/pods?") && !r.contains("watch=true"))
        .count();
    assert!(lists_after > lists_before, "the watcher relisted");
    let m = model::build(&state, &ModelConfig::default());
    assert_eq!(m.workloads.keys().collect::<Vec<_>>(), vec!["uid-c"]);
}

#[tokio::test]
async fn node_agent_view_watches_only_its_node() {
    let api = FakeApiServer::start(COLLECTIONS).await;
    api.apply(namespace());
    api.apply(pod("a", "node-a", "10.244.1.1"));
    api.apply(pod("b", "node-b", "10.244.2.1"));
    let registry = Registry::kubernetes(
        api.client(),
        RegistryConfig {
            kinds: Kinds::NODE_AGENT,
            node: Some("node-a".into()),
        },
    );
    let state = tokio::time::timeout(Duration::from_secs(20), registry.synced())
        .await
        .expect("synced in time")
        .expect("registry alive");
    assert_eq!(state.namespaces.len(), 1);
    assert_eq!(
        state
            .pods
            .keys()
            .map(|k| k.name.as_str())
            .collect::<Vec<_>>(),
        vec!["a"]
    );
    let rx = registry.subscribe();
    api.apply(pod("a2", "node-a", "10.244.1.2"));
    api.apply(pod("b2", "node-b", "10.244.2.2"));
    let state = eventually_async("a2", WAIT, async || {
        Some(rx.borrow().clone()).filter(|s| s.pods.len() == 2)
    })
    .await;
    assert!(pod_ip(&state, "b2").is_none());
    assert!(
        !api.requests().iter().any(|r| r.contains("/services")),
        "the node agent view does not watch Services"
    );
}

/// What the API server holds, read by a registry, and one pass of a leader's
/// writers over it; the state, model and writer for more passes.
async fn leader_pass(api: &FakeApiServer) -> (Arc<ClusterState>, ModelVersion, Writer) {
    let registry = Registry::kubernetes(api.client(), RegistryConfig::default());
    let state = tokio::time::timeout(Duration::from_secs(20), registry.synced())
        .await
        .expect("synced")
        .expect("alive");
    let version = ModelVersion {
        version: 1,
        model: Arc::new(model::build(&state, &ModelConfig::default())),
        ..ModelVersion::initial()
    };
    let mut writer = Writer::new(
        api.client(),
        DeployerConfig {
            image: "waypoint:test".into(),
            controller_address: "https://controller:15012".into(),
            root_namespace: "weft-system".into(),
            root_pem: "ROOT".into(),
            token_audience: Some(CONTROLLER_AUDIENCE.into()),
            otlp_endpoint: None,
            trace_sampling: None,
        },
    );
    writer.reconcile(&state, &version).await;
    (state, version, writer)
}

#[tokio::test]
async fn leader_writes_waypoints_and_status() {
    let api = FakeApiServer::start(COLLECTIONS).await;
    api.apply(namespace());
    api.apply(support::waypoint_class());
    api.apply(support::waypoint_gateway("wp"));
    api.apply(
        json!({"apiVersion": "security.weft.dev/v1alpha1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "bad", "namespace": "shop", "generation": 3},
        "spec": {"rules": [{"to": [{"operation": {"ports": ["http"]}}]}]}}),
    );
    let (state, version, mut writer) = leader_pass(&api).await;

    let deployment = api
        .get("apis/apps/v1/deployments", "shop", "wp")
        .expect("deployment applied");
    assert_eq!(
        deployment["metadata"]["ownerReferences"][0]["uid"],
        "wp-uid"
    );
    assert_eq!(
        deployment["spec"]["template"]["spec"]["serviceAccountName"],
        "wp-weft-waypoint"
    );
    let sa = api
        .get("api/v1/serviceaccounts", "shop", "wp-weft-waypoint")
        .expect("service account created");
    assert_eq!(sa["metadata"]["ownerReferences"][0]["uid"], "wp-uid");
    // The waypoint shows the controller a token for the controller's own
    // audience, not the automounted one.
    let pod_spec = &deployment["spec"]["template"]["spec"];
    let token = pod_spec["volumes"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == "weft-token"))
        .expect("projected token volume");
    assert_eq!(
        token["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        CONTROLLER_AUDIENCE
    );
    let env = pod_spec["containers"][0]["env"].as_array().expect("env");
    assert!(
        env.iter()
            .any(|e| e["name"] == "WEFT_TOKEN_FILE" && e["value"] == "/var/run/secrets/weft/token"),
        "{env:?}"
    );
    for ns in ["weft-system", "shop"] {
        let root = api
            .get("api/v1/configmaps", ns, "weft-ca-root")
            .expect("root ConfigMap");
        assert_eq!(root["data"]["root-cert.pem"], "ROOT");
    }
    assert!(api.get("api/v1/services", "shop", "wp").is_some());
    let applied = api
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("PATCH"))
        .collect::<Vec<_>>();
    assert!(
        applied
            .iter()
            .all(|r| r.contains("fieldManager=weft-controller")),
        "{applied:?}"
    );

    let class = api
        .get(
            "apis/gateway.networking.k8s.io/v1/gatewayclasses",
            "",
            "weft-waypoint",
        )
        .expect("class");
    assert_eq!(class["status"]["conditions"][0]["type"], "Accepted");
    assert_eq!(class["status"]["conditions"][0]["status"], "True");
    let gw = api
        .get("apis/gateway.networking.k8s.io/v1/gateways", "shop", "wp")
        .expect("gateway");
    assert_eq!(gw["status"]["conditions"][0]["type"], "Accepted");
    let policy = api
        .get(
            "apis/security.weft.dev/v1alpha1/authorizationpolicies",
            "shop",
            "bad",
        )
        .expect("policy");
    let accepted = &policy["status"]["conditions"][0];
    assert_eq!(accepted["type"], "Accepted");
    assert_eq!(accepted["status"], "False");
    assert_eq!(accepted["observedGeneration"], 3);
    assert!(
        accepted["message"]
            .as_str()
            .unwrap_or("")
            .contains("fail-closed")
    );

    // Nothing changed: a second pass writes nothing, even one in a later
    // second from the same (now stale) state, where every condition it
    // builds carries a new time.
    let patches = api.status_patches().len();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    writer.reconcile(&state, &version).await;
    assert_eq!(api.status_patches().len(), patches);
}

/// Issue 16: the leader writes each route's status per parent weft serves
/// (`Accepted`, `ResolvedRefs` with the Gateway API's reasons), keeps the
/// entries other controllers wrote for their parents (the list is atomic),
/// and writes nothing again while nothing changes.
#[tokio::test]
async fn leader_writes_route_status_per_parent_and_keeps_other_controllers() {
    const HTTPROUTES: &str = "apis/gateway.networking.k8s.io/v1/httproutes";
    let collections = [COLLECTIONS, &[HTTPROUTES]].concat();
    let api = FakeApiServer::start(&collections).await;
    api.apply(namespace());
    api.apply(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop", "uid": "web-uid"},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}}));
    let theirs = json!({
        "parentRef": {"name": "ingress"},
        "controllerName": "example.com/ingress",
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                        "lastTransitionTime": "2026-01-01T00:00:00Z"}]
    });
    api.apply(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "split", "namespace": "shop", "generation": 2},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}, {"name": "ingress"}],
            "rules": [{"backendRefs": [{"name": "web", "port": 80}, {"name": "gone", "port": 80}]}]
        },
        "status": {"parents": [theirs.clone()]}
    }));
    let (state, version, mut writer) = leader_pass(&api).await;

    let route = api.get(HTTPROUTES, "shop", "split").expect("route");
    let parents = route["status"]["parents"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(parents.len(), 2, "{parents:?}");
    assert!(
        parents.contains(&theirs),
        "the other controller's entry is kept: {parents:?}"
    );
    let ours = parents
        .iter()
        .find(|p| p["controllerName"] == "weft.dev/waypoint-controller")
        .expect("weft's entry");
    assert_eq!(
        ours["parentRef"],
        json!({"group": "", "kind": "Service", "name": "web", "port": 80}),
        "the parentRef as the route wrote it"
    );
    let condition = |type_: &str| {
        ours["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == type_))
            .cloned()
            .unwrap_or_else(|| panic!("no {type_}: {ours}"))
    };
    assert_eq!(condition("Accepted")["status"], "True");
    assert_eq!(condition("Accepted")["observedGeneration"], 2);
    let resolved = condition("ResolvedRefs");
    assert_eq!(
        (resolved["status"].as_str(), resolved["reason"].as_str()),
        (Some("False"), Some("BackendNotFound"))
    );
    assert!(
        resolved["message"]
            .as_str()
            .is_some_and(|m| m.contains("spec.rules[0].backendRefs[1]") && m.contains("shop/gone")),
        "{resolved}"
    );

    // Nothing changed: a later pass from the same state writes nothing.
    let patches = api.status_patches().len();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    writer.reconcile(&state, &version).await;
    assert_eq!(api.status_patches().len(), patches);
}

/// Security finding 11: a ServiceAccount that exists under the name the
/// deployer would give a Gateway's waypoint, made by someone else, is not
/// taken over (a forced apply would have made it the Gateway's, and every
/// pod running as it the waypoint); the Gateway says why it is not
/// programmed.
#[tokio::test]
async fn the_deployer_does_not_take_over_a_service_account_it_did_not_make() {
    let api = FakeApiServer::start(COLLECTIONS).await;
    api.apply(namespace());
    api.apply(support::waypoint_class());
    let squatter = json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "wp-weft-waypoint", "namespace": "shop"}});
    api.apply(squatter);
    api.apply(support::waypoint_gateway("wp"));
    leader_pass(&api).await;

    let sa = api
        .get("api/v1/serviceaccounts", "shop", "wp-weft-waypoint")
        .expect("still there");
    assert!(
        sa["metadata"]["ownerReferences"].is_null() && sa["metadata"]["labels"].is_null(),
        "the deployer adopted a ServiceAccount it did not make: {sa}"
    );
    assert!(api.get("apis/apps/v1/deployments", "shop", "wp").is_none());
    assert!(api.get("api/v1/services", "shop", "wp").is_none());
    let gw = api
        .get("apis/gateway.networking.k8s.io/v1/gateways", "shop", "wp")
        .expect("gateway");
    let programmed = gw["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Programmed"))
        .expect("Programmed condition");
    assert_eq!(programmed["status"], "False");
    assert_eq!(programmed["reason"], "Invalid");
    assert!(
        programmed["message"].as_str().unwrap_or("").contains(
            "ServiceAccount shop/wp-weft-waypoint exists and was not made by the waypoint deployer"
        ),
        "{programmed}"
    );
}
