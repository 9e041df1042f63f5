//! Kube mode against the real control plane (docs/e2e.md): etcd,
//! kube-apiserver, kube-controller-manager and kube-scheduler built from Go
//! modules, weft installed from `deploy/` with kubectl, and the controller
//! run as its own ServiceAccount under exactly the RBAC deploy/ grants it.
//! Needs root (the run's files and teardown are the netns harness's).

mod common;

use common::kube::*;

use std::net::SocketAddr;

use weft_e2e::kube::{ControllerProcess, KubeRun};
use weft_e2e::process::wait_until;

fn start_controller(run: &mut KubeRun) -> ControllerProcess {
    ControllerProcess::start(run, "weft-controller-0", &[]).expect("controller serving")
}

#[test]
fn weft_installs_with_kubectl_and_the_schema_refuses_a_malformed_policy() {
    let _one = common::serial();
    let run = installed();
    let k = run.plane().kubectl();
    // What deploy/ ships exists, as the real API server stored it.
    for (kind, name) in [
        ("namespace", "weft-system"),
        ("crd", "authorizationpolicies.security.weft.dev"),
        ("crd", "peerauthentications.security.weft.dev"),
        ("gatewayclass", "weft-waypoint"),
        ("clusterrole", "weft-controller"),
    ] {
        k.run(&["get", kind, name])
            .unwrap_or_else(|e| panic!("{kind}/{name}: {e}"));
    }
    k.run(&[
        "get",
        "-n",
        "weft-system",
        "deployment/weft-controller",
        "serviceaccount/weft-controller",
    ])
    .expect("controller objects");
    // kube-controller-manager acts on them: the Deployment gets its
    // ReplicaSet and pods (Pending until a kubelet runs them).
    wait_until("the controller's pods", SETTLE, || {
        pod_count(
            &run,
            "weft-system",
            "app.kubernetes.io/name=weft-controller",
        ) == 2
    })
    .expect("the controller Deployment makes two pods");

    // A policy the schema forbids is refused at apply time, naming the field.
    k.run(&["create", "namespace", "shop"]).expect("namespace");
    let bad = "apiVersion: security.weft.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: bad, namespace: shop}\nspec: {action: MAYBE}\n";
    let refused = k
        .apply(bad)
        .expect_err("the CRD schema refuses action: MAYBE");
    let message = refused.to_string();
    assert!(
        message.contains("spec.action"),
        "names the field: {message}"
    );
    assert!(
        get(&run, &["authorizationpolicy", "-n", "shop", "bad"]).is_none(),
        "nothing stored"
    );
}

#[test]
fn the_controller_runs_under_the_rbac_deploy_ships_and_deploys_waypoints() {
    let _one = common::serial();
    let mut run = installed();
    let controller = start_controller(&mut run);
    let k = run.plane().kubectl().clone();

    // Its CA root is kept in a Secret it created with its own credentials.
    wait_until("the CA Secret", SETTLE, || {
        get(&run, &["secret", "-n", "weft-system", "weft-ca"]).is_some()
    })
    .expect("the controller stores its root in weft-system/weft-ca");
    // It leads (a real Lease) and accepts its GatewayClass.
    wait_until("the GatewayClass accepted", SETTLE, || {
        get(&run, &["gatewayclass", "weft-waypoint"]).is_some_and(|gc| {
            gc["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Accepted" && c["status"] == "True")
            })
        })
    })
    .expect("the leader accepts GatewayClass weft-waypoint");
    let lease = get(&run, &["lease", "-n", "weft-system", "weft-controller"]).expect("lease");
    assert_eq!(lease["spec"]["holderIdentity"], "weft-controller-0");

    // A waypoint, as a user applies it, in a namespace that enforces the
    // `restricted` Pod Security Standard: the API server's admission
    // refuses any pod of the deployer's that falls short of it.
    k.apply(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels: {pod-security.kubernetes.io/enforce: restricted}\n",
    )
    .expect("namespace");
    k.apply(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: waypoint, namespace: shop}\nspec:\n  gatewayClassName: weft-waypoint\n  listeners: [{name: mesh, port: 15008, protocol: HBONE}]\n",
    )
    .expect("apply the Gateway");
    wait_until("the waypoint's Deployment", SETTLE, || {
        get(&run, &["deployment", "-n", "shop", "waypoint"]).is_some()
    })
    .expect("the deployer creates the waypoint's Deployment");
    let deployment = get(&run, &["deployment", "-n", "shop", "waypoint"]).expect("deployment");
    let owner = &deployment["metadata"]["ownerReferences"][0];
    assert_eq!(
        owner["kind"], "Gateway",
        "owned by its Gateway: {deployment}"
    );
    // kube-controller-manager makes its pod from the deployer's spec.
    wait_until("the waypoint's pod", SETTLE, || {
        get(&run, &["pods", "-n", "shop"])
            .and_then(|v| v["items"].as_array().map(|a| !a.is_empty()))
            .unwrap_or(false)
    })
    .expect("the waypoint Deployment makes a pod");
    // Its budget: one pod at a time, owned by the Gateway like the rest.
    wait_until("the waypoint's PodDisruptionBudget", SETTLE, || {
        get(&run, &["pdb", "-n", "shop", "waypoint"]).is_some()
    })
    .expect("the deployer makes the waypoint's PodDisruptionBudget");
    let pdb = get(&run, &["pdb", "-n", "shop", "waypoint"]).expect("pdb");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1, "{pdb}");
    assert_eq!(
        pdb["metadata"]["ownerReferences"][0]["kind"], "Gateway",
        "{pdb}"
    );
    waypoint_identities_go_only_to_the_deployers_service_accounts(&run, &controller, &deployment);

    // Deleting the Gateway garbage-collects what was made for it. The
    // garbage collector learns of new kinds (the Gateway CRD installed a
    // moment ago) on its 30-second discovery resync, so allow for one.
    k.run(&["delete", "gateway", "-n", "shop", "waypoint"])
        .expect("delete");
    let deleted = std::time::Instant::now();
    wait_until("the waypoint's Deployment collected", SETTLE * 3, || {
        get(&run, &["deployment", "-n", "shop", "waypoint"]).is_none()
    })
    .expect("the garbage collector removes the Deployment");
    eprintln!(
        "collected {:.1} s after the Gateway was deleted",
        deleted.elapsed().as_secs_f64()
    );

    // Nothing the controller did was forbidden by its RBAC.
    let log = std::fs::read_to_string(controller.log()).unwrap_or_default();
    assert!(
        !log.contains("forbidden"),
        "the controller hit RBAC: {}",
        controller.log_tail(40)
    );
}

/// Security finding 11, on the real API server: the waypoint runs as a
/// ServiceAccount named distinctly (`<gateway>-weft-waypoint`) that the
/// deployer created and its Gateway owns, and only that one obtains the
/// waypoint's identity. A ServiceAccount named like a Gateway (the old
/// name), or named like its waypoint's but created by a user before the
/// Gateway, gets nothing, and the deployer does not take the latter over.
fn waypoint_identities_go_only_to_the_deployers_service_accounts(
    run: &KubeRun,
    controller: &ControllerProcess,
    deployment: &serde_json::Value,
) {
    let k = run.plane().kubectl().clone();
    assert_eq!(
        deployment["spec"]["template"]["spec"]["serviceAccountName"], "waypoint-weft-waypoint",
        "{deployment}"
    );
    let sa = get(
        run,
        &["serviceaccount", "-n", "shop", "waypoint-weft-waypoint"],
    )
    .expect("the deployer's ServiceAccount");
    let gateway = get(run, &["gateway", "-n", "shop", "waypoint"]).expect("gateway");
    let owner = &sa["metadata"]["ownerReferences"][0];
    assert_eq!(owner["uid"], gateway["metadata"]["uid"], "{sa}");
    assert_eq!(owner["controller"], true, "{sa}");

    // Made by a user before their Gateway: one under the Gateway's own name
    // (what the deployer used to use), one under its waypoint's name.
    for sa in ["squat", "squat-weft-waypoint"] {
        k.run(&["create", "serviceaccount", "-n", "shop", sa])
            .expect("sa");
    }
    k.apply(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: squat, namespace: shop}\nspec:\n  gatewayClassName: weft-waypoint\n  listeners: [{name: mesh, port: 15008, protocol: HBONE}]\n",
    )
    .expect("apply the Gateway");
    wait_until("Gateway squat refused", SETTLE, || {
        get(run, &["gateway", "-n", "shop", "squat"]).is_some_and(|gw| {
            gw["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter().any(|c| {
                    c["type"] == "Programmed" && c["status"] == "False" && c["reason"] == "Invalid"
                })
            })
        })
    })
    .expect("the Gateway says its ServiceAccount name is taken");
    let squatter = get(
        run,
        &["serviceaccount", "-n", "shop", "squat-weft-waypoint"],
    )
    .expect("the user's ServiceAccount");
    assert!(
        squatter["metadata"]["ownerReferences"].is_null(),
        "the deployer took over a ServiceAccount it did not make: {squatter}"
    );
    assert!(get(run, &["deployment", "-n", "shop", "squat"]).is_none());

    let root = ca_root(&k);
    let token = |sa: &str| {
        run.plane()
            .token("shop", sa, &["weft.dev/controller"], None)
            .expect("token")
    };
    let own = "spiffe://cluster.local/ns/shop/sa/waypoint-weft-waypoint";
    wait_until("the waypoint's identity", SETTLE, || {
        ask(
            &root,
            controller.grpc(),
            &token("waypoint-weft-waypoint"),
            "",
            own,
        )
        .is_ok()
    })
    .expect("the deployer's ServiceAccount obtains the waypoint's identity");
    for sa in ["squat", "squat-weft-waypoint"] {
        let identity = format!("spiffe://cluster.local/ns/shop/sa/{sa}");
        let refused =
            ask(&root, controller.grpc(), &token(sa), "", &identity).expect_err("not a waypoint");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused}");
        assert!(
            refused
                .message()
                .contains("neither a ztunnel nor a waypoint"),
            "{refused}"
        );
    }
}

/// The CA's root certificate, from the Secret the controller keeps it in.
fn ca_root(k: &weft_e2e::kube::Kubectl) -> String {
    k.run(&[
        "get",
        "secret",
        "-n",
        "weft-system",
        "weft-ca",
        "-o",
        "go-template={{index .data \"root-cert.pem\" | base64decode}}",
    ])
    .expect("root certificate")
}

/// Asks the controller's CA at `grpc` for `identity` with `token`, naming
/// `node`.
fn ask(
    root: &str,
    grpc: SocketAddr,
    token: &str,
    node: &str,
    identity: &str,
) -> Result<(), tonic::Status> {
    common::ask_ca(&format!("https://{grpc}"), root, token, node, identity).map(|_| ())
}

#[test]
fn the_ca_takes_the_node_from_a_pod_bound_token_and_refuses_every_other_token() {
    let _one = common::serial();
    let mut run = installed();
    let controller = start_controller(&mut run);
    let k = run.plane().kubectl().clone();
    for name in ["node-1", "node-2"] {
        k.apply(&node(name)).expect("node");
    }
    k.run(&["create", "namespace", "shop"]).expect("namespace");
    for sa in ["web", "db"] {
        k.run(&["create", "serviceaccount", "-n", "shop", sa])
            .expect("sa");
    }
    // deploy/ ships the ztunnel ServiceAccount (its DaemonSet's).
    k.run(&["get", "serviceaccount", "-n", "weft-system", "ztunnel"])
        .expect("ztunnel sa");
    k.apply(&pod("shop", "web", "web", "node-1")).expect("web");
    k.apply(&pod("shop", "db", "db", "node-2")).expect("db");
    k.apply(&pod("weft-system", "ztunnel-node-1", "ztunnel", "node-1"))
        .expect("ztunnel pod");
    k.apply(&pod("weft-system", "ztunnel-gone", "ztunnel", "node-1"))
        .expect("ztunnel pod");

    wait_until("the CA Secret", SETTLE, || {
        get(&run, &["secret", "-n", "weft-system", "weft-ca"]).is_some()
    })
    .expect("CA secret");
    let root = ca_root(&k);
    let web = "spiffe://cluster.local/ns/shop/sa/web";
    let db = "spiffe://cluster.local/ns/shop/sa/db";
    let plane = run.plane();
    let bound = plane
        .token(
            "weft-system",
            "ztunnel",
            &["weft.dev/controller"],
            Some("ztunnel-node-1"),
        )
        .expect("pod-bound token");
    // The CA learns which pods run where from its watch: wait for it.
    wait_until("node 1's ztunnel gets web's identity", SETTLE, || {
        ask(&root, controller.grpc(), &bound, "node-1", web).is_ok()
    })
    .expect("a pod-bound ztunnel token of node 1 obtains the identity of a pod on node 1");

    // Not an identity that runs only on node 2, neither as itself nor by
    // naming node 2.
    let refused =
        ask(&root, controller.grpc(), &bound, "node-1", db).expect_err("db runs on node 2");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused}");
    let refused =
        ask(&root, controller.grpc(), &bound, "node-2", db).expect_err("posing as node 2");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused}");
    assert!(
        refused.message().contains("node-1"),
        "says which node the token is for: {refused}"
    );

    // A ztunnel token bound to no pod names no node: refused, saying why.
    let unbound = plane
        .token("weft-system", "ztunnel", &["weft.dev/controller"], None)
        .expect("unbound token");
    let refused = ask(&root, controller.grpc(), &unbound, "node-1", web).expect_err("unbound");
    assert!(
        refused.message().contains("pod-bound"),
        "explains: {refused}"
    );

    // Another ServiceAccount's token, bound to a pod on the right node.
    let other = plane
        .token("shop", "web", &["weft.dev/controller"], Some("web"))
        .expect("web's token");
    ask(&root, controller.grpc(), &other, "node-1", web)
        .expect_err("web is not a ztunnel or waypoint");

    // The right ServiceAccount with the API server's audience only.
    let wrong_audience = plane
        .token(
            "weft-system",
            "ztunnel",
            &[weft_e2e::kube::control_plane::ISSUER],
            Some("ztunnel-node-1"),
        )
        .expect("token");
    let refused =
        ask(&root, controller.grpc(), &wrong_audience, "node-1", web).expect_err("audience");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused}");

    // A forged token: a well-formed JWT signed by nobody the API server knows.
    let forged = "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJodHRwczovL2t1YmVybmV0ZXMuZGVmYXVsdC5zdmMuY2x1c3Rlci5sb2NhbCIsInN1YiI6InN5c3RlbTpzZXJ2aWNlYWNjb3VudDp3ZWZ0LXN5c3RlbTp6dHVubmVsIn0.c2lnbmF0dXJl";
    let refused = ask(&root, controller.grpc(), forged, "node-1", web).expect_err("forged");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused}");

    // A token whose pod was deleted is no longer valid: the binding is
    // checked by the API server on every review.
    let orphan = plane
        .token(
            "weft-system",
            "ztunnel",
            &["weft.dev/controller"],
            Some("ztunnel-gone"),
        )
        .expect("token");
    ask(&root, controller.grpc(), &orphan, "node-1", web).expect("valid while its pod exists");
    k.run(&[
        "delete",
        "pod",
        "-n",
        "weft-system",
        "ztunnel-gone",
        "--grace-period=0",
        "--force",
    ])
    .expect("delete pod");
    wait_until("the orphaned token refused", SETTLE, || {
        ask(&root, controller.grpc(), &orphan, "node-1", web).is_err()
    })
    .expect("a token bound to a deleted pod is refused");
}
