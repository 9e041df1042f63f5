//! Waypoints an autoscaler may scale, against the real control plane
//! (docs/e2e.md): the deployer sets a waypoint Deployment's replicas only by
//! leaving them to the API server's default when it creates it, so what a
//! user's `kubectl scale` or a HorizontalPodAutoscaler (both through the
//! scale subresource) sets survives the deployer's later applies, whether
//! the Gateway changes or another replica takes over the Lease.
//! Needs root (the run's files and teardown are the netns harness's).

mod common;

use common::kube::*;

use std::time::Duration;

use serde_json::Value;
use weft_e2e::kube::{ControllerProcess, KubeRun};
use weft_e2e::process::wait_until;

/// The controller's field manager (controller/src/writers/mod.rs).
const FIELD_MANAGER: &str = "weft-controller";

/// The waypoint Gateway `shop/waypoint`, with `extra` listeners after the
/// HBONE one and `annotation` (a change that is not in its spec).
fn gateway(extra: &str, annotation: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: waypoint\n  namespace: shop\n  annotations: {{weft-e2e/note: \"{annotation}\"}}\nspec:\n  gatewayClassName: weft-waypoint\n  listeners:\n  - {{name: mesh, port: 15008, protocol: HBONE}}\n{extra}"
    )
}

fn deployment(run: &KubeRun) -> Value {
    get(run, &["deployment", "-n", "shop", "waypoint"]).expect("the waypoint's Deployment")
}

fn replicas(run: &KubeRun) -> i64 {
    let d = deployment(run);
    d["spec"]["replicas"]
        .as_i64()
        .unwrap_or_else(|| panic!("spec.replicas: {d}"))
}

/// Whether the controller's own apply (not a scale or update it made) owns
/// the Deployment's `spec.replicas`.
fn deployer_owns_replicas(run: &KubeRun) -> bool {
    // kubectl leaves managedFields out unless asked.
    let d = get(
        run,
        &[
            "deployment",
            "-n",
            "shop",
            "waypoint",
            "--show-managed-fields",
        ],
    )
    .expect("the waypoint's Deployment");
    d["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["manager"] == FIELD_MANAGER && m["operation"] == "Apply")
        .any(|m| m["fieldsV1"]["f:spec"].get("f:replicas").is_some())
}

/// Waits until the leader has written the Gateway's status for its current
/// generation: the same pass applied its Deployment just before.
fn wait_reconciled(run: &KubeRun, why: &str) {
    wait_until(why, SETTLE, || {
        get(run, &["gateway", "-n", "shop", "waypoint"]).is_some_and(|gw| {
            let generation = &gw["metadata"]["generation"];
            gw["status"]["conditions"].as_array().is_some_and(|c| {
                !c.is_empty() && c.iter().all(|c| &c["observedGeneration"] == generation)
            })
        })
    })
    .unwrap_or_else(|e| panic!("{why}: {e}"));
}

fn scale(run: &KubeRun, to: u32) {
    run.plane()
        .kubectl()
        .run(&[
            "scale",
            "-n",
            "shop",
            "deployment/waypoint",
            &format!("--replicas={to}"),
        ])
        .expect("kubectl scale");
    assert_eq!(replicas(run), i64::from(to), "the scale took");
}

fn assert_no_write_errors(controller: &ControllerProcess) {
    let log = std::fs::read_to_string(controller.log()).unwrap_or_default();
    assert!(
        !log.contains("apply Deployment") && !log.contains("forbidden"),
        "{} failed a write: {}",
        controller.replica(),
        controller.log_tail(40)
    );
}

#[test]
fn a_scaled_waypoint_keeps_its_replicas_across_gateway_changes_and_leader_changes() {
    let _one = common::serial();
    let mut run = installed();
    let k = run.plane().kubectl().clone();
    let mut first =
        ControllerProcess::start(&mut run, "weft-controller-0", &[]).expect("controller serving");

    k.run(&["create", "namespace", "shop"]).expect("namespace");
    k.apply(&gateway("", "one")).expect("apply the Gateway");
    wait_until("the waypoint's Deployment", SETTLE, || {
        get(&run, &["deployment", "-n", "shop", "waypoint"]).is_some()
    })
    .expect("the deployer creates the waypoint's Deployment");
    wait_reconciled(&run, "the Gateway's status");
    // Created with the API server's default.
    assert_eq!(replicas(&run), 1, "one replica to start with");

    // What an HPA does: set the replicas through the scale subresource.
    scale(&run, 3);

    // The Gateway changes (spec and annotations): the leader reconciles it.
    k.apply(&gateway(
        "  - {name: extra, port: 15009, protocol: HBONE}\n",
        "two",
    ))
    .expect("change the Gateway");
    wait_reconciled(&run, "the changed Gateway reconciled");
    assert_eq!(replicas(&run), 3, "a Gateway change keeps the scale");

    // A leader change: the new leader applies everything afresh. The old
    // one releases the Lease as it stops; the Gateway changes meanwhile, so
    // the new leader's status for the new generation shows it has been
    // through this Gateway (Deployment first).
    assert_eq!(holder(&run).as_deref(), Some("weft-controller-0"));
    assert_no_write_errors(&first);
    first
        .process_mut()
        .stop(Duration::from_secs(15))
        .expect("the first replica stops");
    assert_ne!(
        holder(&run).as_deref(),
        Some("weft-controller-0"),
        "released on a graceful stop"
    );
    k.apply(&gateway(
        "  - {name: extra, port: 15010, protocol: HBONE}\n",
        "three",
    ))
    .expect("change the Gateway again");
    let second =
        ControllerProcess::start(&mut run, "weft-controller-1", &[]).expect("controller serving");
    wait_until("the second replica leads", SETTLE, || {
        holder(&run).as_deref() == Some("weft-controller-1")
    })
    .expect("the second replica takes the released Lease");
    wait_reconciled(&run, "the new leader reconciled the Gateway");
    assert_eq!(replicas(&run), 3, "a leader change keeps the scale");
    assert!(
        !deployer_owns_replicas(&run),
        "the deployer's apply does not own spec.replicas: {}",
        deployment(&run)
    );
    assert_no_write_errors(&second);
}

/// Applies `shop/waypoint`'s Deployment as an older deployer did, as the
/// controller's field manager with `replicas: 1` (and no owner reference, so
/// the new deployer's apply shows), and checks it owns `spec.replicas`.
fn apply_as_older_deployer(run: &KubeRun) {
    let k = run.plane().kubectl();
    let old = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: waypoint, namespace: shop, labels: {gateway.networking.k8s.io/gateway-name: waypoint}}\nspec:\n  replicas: 1\n  selector: {matchLabels: {gateway.networking.k8s.io/gateway-name: waypoint}}\n  template:\n    metadata: {labels: {gateway.networking.k8s.io/gateway-name: waypoint, weft.dev/dataplane-mode: none}}\n    spec:\n      serviceAccountName: waypoint\n      containers: [{name: waypoint, image: weft-waypoint-old}]\n";
    let file = run.state().dir.join("old-waypoint-deployment.yaml");
    std::fs::write(&file, old).expect("write the old Deployment");
    k.run(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        &format!("--field-manager={FIELD_MANAGER}"),
        "-f",
        &file.to_string_lossy(),
    ])
    .expect("apply as the older deployer");
    assert!(
        deployer_owns_replicas(run),
        "the older deployer owns spec.replicas: {}",
        deployment(run)
    );
}

/// An upgrade: the Gateway and a Deployment as an older deployer left it
/// (scaled to `scaled_to` since, if given), then the new controller, until
/// its deployer has applied and written status. Returns the replica count
/// it left.
fn upgrade(scaled_to: Option<u32>) -> i64 {
    let _one = common::serial();
    let mut run = installed();
    let k = run.plane().kubectl().clone();
    k.run(&["create", "namespace", "shop"]).expect("namespace");
    k.apply(&gateway("", "one")).expect("apply the Gateway");
    apply_as_older_deployer(&run);
    if let Some(to) = scaled_to {
        scale(&run, to);
    }
    let controller =
        ControllerProcess::start(&mut run, "weft-controller-0", &[]).expect("controller serving");
    wait_until("the new deployer's apply", SETTLE, || {
        get(&run, &["deployment", "-n", "shop", "waypoint"])
            .is_some_and(|d| d["metadata"]["ownerReferences"][0]["kind"] == "Gateway")
    })
    .expect("the new deployer applies the Deployment");
    wait_reconciled(&run, "the Gateway's status");
    assert!(!deployer_owns_replicas(&run), "{}", deployment(&run));
    assert_no_write_errors(&controller);
    replicas(&run)
}

/// An older deployer applied `replicas: 1` and so owned the field; the
/// waypoint was scaled since. The new deployer's first apply (a fresh
/// leader after the upgrade) leaves the scale alone.
#[test]
fn after_an_upgrade_the_deployer_leaves_a_scaled_waypoint_alone() {
    assert_eq!(upgrade(Some(3)), 3, "the upgrade keeps the scale");
}

/// An older deployer owned `replicas: 1` and nobody scaled since: the new
/// deployer's apply drops the field, which the API server defaults back to
/// the same 1, and from then on the deployer does not own it.
#[test]
fn after_an_upgrade_the_deployer_lets_go_of_replicas_it_owned() {
    assert_eq!(upgrade(None), 1, "still one replica");
}

/// The `weft.dev/WaypointBound` condition of Service `shop/web`.
/// The `WaypointUnavailable` Events about namespace `shop` (a namespace is
/// cluster-scoped: its Events live in `default`).
fn namespace_binding_events(run: &KubeRun) -> Vec<serde_json::Value> {
    get(run, &["events.events.k8s.io", "-n", "default"])
        .and_then(|list| list["items"].as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter(|e| {
            e["reason"] == "WaypointUnavailable"
                && e["regarding"]["kind"] == "Namespace"
                && e["regarding"]["name"] == "shop"
        })
        .collect()
}

fn binding_condition(run: &KubeRun) -> Option<serde_json::Value> {
    get(run, &["service", "-n", "shop", "web"])
        .and_then(|s| condition(&s, "weft.dev/WaypointBound"))
}

/// A Service labelled for a waypoint that does not exist fails closed, and
/// says so where its owner looks; once the waypoint exists (the deployer
/// gives it a Service VIP) the condition says it is bound.
#[test]
fn a_service_bound_to_a_missing_waypoint_says_so_in_its_status() {
    let _one = common::serial();
    let mut run = installed();
    let k = run.plane().kubectl().clone();
    k.run(&["create", "namespace", "shop"]).expect("namespace");
    k.apply("apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop, labels: {weft.dev/use-waypoint: waypoint}}\nspec:\n  selector: {app: web}\n  ports: [{name: http, port: 80}]\n")
        .expect("service");
    // The namespace too: it gets an Event (a namespace has no status to
    // carry a condition), once, however many passes the writer makes.
    k.run(&[
        "label",
        "namespace",
        "shop",
        "weft.dev/use-waypoint=waypoint",
    ])
    .expect("label the namespace");
    let _controller =
        ControllerProcess::start(&mut run, "weft-controller-0", &[]).expect("controller serving");
    wait_until("the namespace's binding Event", SETTLE, || {
        !namespace_binding_events(&run).is_empty()
    })
    .expect("the controller publishes a WaypointUnavailable Event on the namespace");
    let events = namespace_binding_events(&run);
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["type"], "Warning");
    let note = events[0]["note"].as_str().unwrap_or_default();
    assert!(
        note.contains("Gateway shop/waypoint of class weft-waypoint does not exist")
            && note.contains("refused"),
        "{note}"
    );
    // From here on the Service's own label alone binds it.
    k.run(&["label", "namespace", "shop", "weft.dev/use-waypoint-"])
        .expect("unlabel the namespace");
    wait_until("the binding's condition", SETTLE, || {
        binding_condition(&run).is_some()
    })
    .expect("the controller writes weft.dev/WaypointBound");
    let refused = binding_condition(&run).expect("condition");
    assert_eq!(refused["status"], "False", "{refused}");
    assert_eq!(refused["reason"], "WaypointNotFound", "{refused}");
    let message = refused["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("shop/waypoint") && message.contains("refused"),
        "{message}"
    );

    k.apply(&gateway("", "one")).expect("apply the Gateway");
    wait_until("the binding honoured", SETTLE, || {
        binding_condition(&run).is_some_and(|c| c["status"] == "True")
    })
    .expect("with the waypoint's Service, the binding is honoured");
    assert_eq!(
        binding_condition(&run).expect("condition")["reason"],
        "Bound"
    );

    // The label removed: the condition goes with it.
    k.run(&[
        "label",
        "service",
        "-n",
        "shop",
        "web",
        "weft.dev/use-waypoint-",
    ])
    .expect("unlabel");
    wait_until("the condition removed", SETTLE, || {
        binding_condition(&run).is_none()
    })
    .expect("an unbound Service carries no binding condition");
}
