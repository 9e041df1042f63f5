//! weftctl's Kubernetes mode against the real control plane (docs/e2e.md,
//! docs/weftctl.md): etcd, kube-apiserver, kube-controller-manager and
//! kube-scheduler built from Go modules, weft installed from `deploy/` with
//! kubectl. weftctl runs as users run it, a process given the admin
//! kubeconfig (`--kubeconfig`, or `KUBECONFIG`); what it did is checked
//! with kubectl.
//!
//! The commands that reach a pod's admin API through the API server's
//! port-forward or a node agent through exec (`tunnels`, `certs`, `tap`,
//! `workloads`, `check`) need pods running on nodes: kube_mesh.rs tests
//! them on the kube cluster. Here, with no nodes, the tests check that
//! weftctl finds deploy/'s controller pods and fails with a clear
//! "unreachable" (exit 3).
//! Needs root (the run's files and teardown are the netns harness's).

mod common;

use common::kube::*;
use common::weftctl::Weftctl;

use serde_json::Value;
use weft_e2e::kube::{ControllerProcess, KubeRun};
use weft_e2e::process::wait_until;

const AMBIENT: (&str, &str) = ("weft.dev/dataplane-mode", "ambient");

/// weftctl with the run's admin kubeconfig.
fn admin_weftctl(run: &KubeRun) -> Weftctl {
    Weftctl::new(run.plane().kubectl().kubeconfig())
}

fn namespace_labels(run: &KubeRun, ns: &str) -> Value {
    get(run, &["namespace", ns]).expect("namespace")["metadata"]["labels"].clone()
}

/// Gives a pod the address a kubelet would report (there is no kubelet).
fn set_pod_ip(kubectl: &weft_e2e::kube::Kubectl, namespace: &str, name: &str, ip: &str) {
    let status = serde_json::json!({"status": {
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": "True"}],
    }});
    kubectl
        .run(&[
            "patch",
            "pod",
            "-n",
            namespace,
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status.to_string(),
        ])
        .unwrap_or_else(|e| panic!("status of pod {namespace}/{name}: {e}"));
}

fn explain(weftctl: &Weftctl, from: &str, to: &str) -> (Option<i32>, Value) {
    let ran = weftctl.run(&["explain", "-o", "json", "--from", from, "--to", to]);
    assert!(
        matches!(ran.code, Some(0 | 6)),
        "explain {from} -> {to}: exit {:?}: {}",
        ran.code,
        ran.stderr
    );
    (ran.code, ran.json())
}

#[test]
fn enroll_unenroll_explain_and_reads_against_the_api_server() {
    let _one = common::serial();
    let run = installed();
    let k = run.plane().kubectl().clone();
    let weftctl = admin_weftctl(&run);

    k.run(&["create", "namespace", "shop"]).expect("namespace");
    k.run(&["label", "namespace", "shop", "team=payments"])
        .expect("label");

    // enroll labels the Namespace the API server stores, keeping its other
    // labels.
    let ran = weftctl.run(&["enroll", "shop"]).ok("enroll shop");
    assert!(
        ran.stdout.contains("namespace/shop enrolled"),
        "{}",
        ran.stdout
    );
    let labels = namespace_labels(&run, "shop");
    assert_eq!(labels[AMBIENT.0], AMBIENT.1, "{labels}");
    assert_eq!(labels["team"], "payments", "other labels kept: {labels}");

    // unenroll removes it, and only it; twice is fine.
    weftctl.run(&["unenroll", "shop"]).ok("unenroll shop");
    let labels = namespace_labels(&run, "shop");
    assert!(labels.get(AMBIENT.0).is_none(), "label removed: {labels}");
    assert_eq!(labels["team"], "payments", "other labels kept: {labels}");
    weftctl.run(&["unenroll", "shop"]).ok("unenroll shop again");

    // KUBECONFIG works as well as --kubeconfig.
    weftctl
        .run_with_env(&["enroll", "shop"])
        .ok("KUBECONFIG=... enroll shop");
    assert_eq!(namespace_labels(&run, "shop")[AMBIENT.0], AMBIENT.1);

    // A namespace that does not exist: not found (exit 4), said on stderr,
    // nothing on stdout, nothing created.
    for verb in ["enroll", "unenroll"] {
        let ran = weftctl.run(&[verb, "nosuch"]);
        assert_eq!(ran.code, Some(4), "{verb} nosuch: {}", ran.stderr);
        assert!(
            ran.stderr.contains("weftctl: namespace nosuch") && ran.stderr.contains("not found"),
            "{verb} nosuch says what is missing: {}",
            ran.stderr
        );
        assert!(ran.stdout.is_empty(), "{}", ran.stdout);
    }
    assert!(get(&run, &["namespace", "nosuch"]).is_none());

    // explain reads the objects from the API server. Pods as kubectl makes
    // them, with the addresses a kubelet would report.
    for name in ["node-1", "node-2"] {
        k.apply(&node(name)).expect("node");
    }
    for sa in ["web", "db", "other"] {
        k.run(&["create", "serviceaccount", "-n", "shop", sa])
            .expect("sa");
    }
    for (name, node, ip) in [
        ("web", "node-1", "10.244.1.10"),
        ("other", "node-1", "10.244.1.11"),
        ("db", "node-2", "10.244.2.10"),
    ] {
        k.apply(&pod("shop", name, name, node)).expect("pod");
        set_pod_ip(&k, "shop", name, ip);
    }
    k.apply(
        "apiVersion: security.weft.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: db-clients, namespace: shop}\nspec:\n  selector: {matchLabels: {app: db}}\n  action: ALLOW\n  rules:\n  - from: [{source: {principals: [cluster.local/ns/shop/sa/web]}}]\n    to: [{operation: {ports: [\"5432\"]}}]\n",
    )
    .expect("policy");

    let (code, allowed) = explain(&weftctl, "shop/web", "pod/shop/db:5432");
    assert_eq!(code, Some(0), "web may reach db: {allowed}");
    assert_eq!(allowed["verdict"], "allowed", "{allowed}");
    let decided = allowed.to_string();
    assert!(
        decided.contains("shop/db-clients"),
        "names the policy: {allowed}"
    );
    assert!(decided.contains("10.244.2.10"), "db's address: {allowed}");

    let (code, denied) = explain(&weftctl, "shop/other", "pod/shop/db:5432");
    assert_eq!(code, Some(6), "other may not: {denied}");
    assert_eq!(denied["verdict"], "denied", "{denied}");
    let (code, port) = explain(&weftctl, "shop/web", "pod/shop/db:80");
    assert_eq!(code, Some(6), "nor web on another port: {port}");

    // Out of the mesh, ztunnel enforces nothing: unenrolling (through the
    // API server) changes explain's answer.
    weftctl.run(&["unenroll", "shop"]).ok("unenroll shop");
    let (code, outside) = explain(&weftctl, "shop/other", "pod/shop/db:5432");
    assert_eq!(
        code,
        Some(0),
        "nothing enforces outside the mesh: {outside}"
    );

    // A pod the API server does not have: not found.
    let ran = weftctl.run(&[
        "explain",
        "--from",
        "pod/shop/ghost",
        "--to",
        "pod/shop/db:5432",
    ]);
    assert_eq!(ran.code, Some(4), "unknown client: {}", ran.stderr);

    // Reads that need a pod's admin API: the controller's pods (deploy/'s
    // Deployment, labelled app.kubernetes.io/name=weft-controller) are
    // found, and since no kubelet runs them, port-forward fails: exit 3,
    // naming the pod.
    wait_until("the controller's pods", SETTLE, || {
        pod_count(
            &run,
            "weft-system",
            "app.kubernetes.io/name=weft-controller",
        ) > 0
    })
    .expect("the controller Deployment makes pods");
    for read in ["workloads", "services", "policies"] {
        let ran = weftctl.run(&["--timeout", "3", read]);
        eprintln!("weftctl {read}: {}", ran.stderr.trim());
        assert_eq!(ran.code, Some(3), "{read}: {}\n{}", ran.stderr, ran.stdout);
        assert!(
            ran.stderr.contains("the controller (pod weft-controller-"),
            "{read} finds deploy/'s controller pod: {}",
            ran.stderr
        );
        // The API server's bare 400 comes with why: no kubelet runs it.
        assert!(
            ran.stderr
                .contains("is Pending and not scheduled to a node")
                || ran.stderr.contains("not running"),
            "{read} says why the pod cannot be reached: {}",
            ran.stderr
        );
    }
    // deploy/'s ztunnel DaemonSet has pods for the Nodes, but no kubelet
    // runs them here: the node reads name the pod and say why.
    let ran = weftctl.run(&["--timeout", "3", "tunnels"]);
    assert_eq!(ran.code, Some(3), "tunnels: {}", ran.stderr);
    assert!(
        ran.stderr.contains("pod/ztunnel-")
            && (ran
                .stderr
                .contains("is Pending and not scheduled to a node")
                || ran.stderr.contains("not running")),
        "{}",
        ran.stderr
    );
    // check: problems found (exit 5), each with what to do; the controller
    // is found but unreachable, and no node runs weft.
    let ran = weftctl.run(&["--timeout", "3", "check", "-o", "json"]);
    assert_eq!(ran.code, Some(5), "check: {}\n{}", ran.stderr, ran.stdout);
    let report = ran.json();
    assert_eq!(report["ok"], false, "{report}");
    let finding = |check: &str| {
        report["findings"]
            .as_array()
            .and_then(|f| f.iter().find(|f| f["check"] == check).cloned())
            .unwrap_or_else(|| panic!("no {check} finding: {report}"))
    };
    let controller = finding("controller");
    assert_eq!(controller["status"], "fail", "{controller}");
    assert!(
        controller["detail"]
            .as_str()
            .is_some_and(|d| d.contains("pod weft-controller-")),
        "names the controller pod: {controller}"
    );
    assert_eq!(finding("nodes")["status"], "fail", "{report}");
}

fn gateway(run: &KubeRun, ns: &str, name: &str) -> Option<Value> {
    get(run, &["gateway", "-n", ns, name])
}

fn listed(weftctl: &Weftctl, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["waypoint", "list", "-o", "json"];
    all.extend(args);
    let ran = weftctl.run(&all).ok("waypoint list -o json");
    ran.json().as_array().cloned().expect("a JSON list")
}

#[test]
fn waypoint_apply_list_delete_against_the_api_server_and_the_deployer() {
    let _one = common::serial();
    let mut run = installed();
    let controller =
        ControllerProcess::start(&mut run, "weft-controller-0", &[]).expect("controller serving");
    let k = run.plane().kubectl().clone();
    let weftctl = admin_weftctl(&run);
    k.run(&["create", "namespace", "shop"]).expect("namespace");
    k.run(&["create", "namespace", "web"]).expect("namespace");

    // apply: the Gateway weftctl documents, server-side applied as weftctl.
    let ran = weftctl
        .run(&["waypoint", "apply", "-n", "shop"])
        .ok("waypoint apply -n shop");
    assert!(
        ran.stdout.contains("gateway/waypoint applied in shop"),
        "{}",
        ran.stdout
    );
    let gw = gateway(&run, "shop", "waypoint").expect("the Gateway exists");
    assert_eq!(gw["apiVersion"], "gateway.networking.k8s.io/v1", "{gw}");
    assert_eq!(gw["spec"]["gatewayClassName"], "weft-waypoint", "{gw}");
    let listener = &gw["spec"]["listeners"][0];
    assert_eq!(listener["name"], "mesh", "{gw}");
    assert_eq!(listener["port"], 15008, "{gw}");
    assert_eq!(listener["protocol"], "HBONE", "{gw}");
    assert_eq!(gw["metadata"]["labels"]["weft.dev/waypoint-for"], "service");
    let fields = get(
        &run,
        &["gateway", "-n", "shop", "waypoint", "--show-managed-fields"],
    )
    .expect("the Gateway with its managed fields");
    let managers: Vec<&Value> = fields["metadata"]["managedFields"]
        .as_array()
        .map(|m| m.iter().map(|m| &m["manager"]).collect())
        .unwrap_or_default();
    assert!(
        managers.iter().any(|m| *m == "weftctl"),
        "field manager weftctl: {managers:?}"
    );

    // Another, for workloads, binding its namespace; applied twice (the
    // second is an update in place).
    for _ in 0..2 {
        weftctl
            .run(&[
                "waypoint",
                "apply",
                "-n",
                "web",
                "--name",
                "wp",
                "--for",
                "workload",
                "--enroll-namespace",
            ])
            .ok("waypoint apply -n web --name wp");
    }
    let wp = gateway(&run, "web", "wp").expect("the second Gateway");
    assert_eq!(
        wp["metadata"]["labels"]["weft.dev/waypoint-for"],
        "workload"
    );
    assert_eq!(
        namespace_labels(&run, "web")["weft.dev/use-waypoint"],
        "wp",
        "--enroll-namespace binds the namespace"
    );

    // An unknown namespace: not found, nothing applied.
    let ran = weftctl.run(&["waypoint", "apply", "-n", "nosuch"]);
    assert_eq!(ran.code, Some(4), "{}", ran.stderr);
    assert!(ran.stderr.contains("nosuch"), "{}", ran.stderr);

    // The controller's deployer makes each waypoint's Deployment and
    // Service, and reports the Gateway programmed.
    wait_until("the waypoint's Deployment and Service", SETTLE, || {
        get(&run, &["deployment", "-n", "shop", "waypoint"]).is_some()
            && get(&run, &["service", "-n", "shop", "waypoint"])
                .is_some_and(|s| s["spec"]["clusterIP"].is_string())
    })
    .unwrap_or_else(|e| panic!("{e}\ncontroller: {}", controller.log_tail(40)));
    wait_until("the Gateway's Programmed condition", SETTLE, || {
        gateway(&run, "shop", "waypoint").is_some_and(|gw| {
            gw["status"]["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["type"] == "Programmed"))
        })
    })
    .unwrap_or_else(|e| panic!("{e}\ncontroller: {}", controller.log_tail(40)));

    // list: what the API server holds, in JSON and as a table.
    let vip =
        get(&run, &["service", "-n", "shop", "waypoint"]).expect("service")["spec"]["clusterIP"]
            .as_str()
            .expect("cluster IP")
            .to_string();
    let mut shop = Value::Null;
    wait_until("waypoint list shows the VIP", SETTLE, || {
        shop = listed(&weftctl, &["-n", "shop"])
            .into_iter()
            .find(|w| w["name"] == "waypoint")
            .unwrap_or(Value::Null);
        shop["addresses"]
            .as_array()
            .is_some_and(|a| a.iter().any(|a| *a == vip))
    })
    .unwrap_or_else(|e| panic!("{e}: {shop}"));
    assert_eq!(shop["namespace"], "shop", "{shop}");
    assert_eq!(shop["serves"], "service", "{shop}");
    let programmed = gateway(&run, "shop", "waypoint").expect("gateway")["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Programmed").cloned())
        .expect("condition")["status"]
        .clone();
    assert_eq!(shop["programmed"], programmed, "{shop}");
    // No kubelet: its pods never become ready, and list says so.
    assert_eq!(shop["ready"], false, "{shop}");

    let all = listed(&weftctl, &[]);
    let names: Vec<String> = all
        .iter()
        .map(|w| {
            format!(
                "{}/{}",
                w["namespace"].as_str().unwrap_or(""),
                w["name"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert!(
        names.contains(&"shop/waypoint".to_string()) && names.contains(&"web/wp".to_string()),
        "{names:?}"
    );
    let web = all.iter().find(|w| w["name"] == "wp").expect("web/wp");
    assert_eq!(web["serves"], "workload", "{web}");
    assert!(
        web["bound"]
            .as_array()
            .is_some_and(|b| b.iter().any(|b| *b == "namespace/web")),
        "the namespace binds to it: {web}"
    );
    let table = weftctl
        .run(&["waypoint", "list"])
        .ok("waypoint list")
        .stdout;
    let header = table.lines().next().unwrap_or_default();
    assert!(header.starts_with("NAMESPACE"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("shop ") && l.contains("waypoint") && l.contains(&vip)),
        "{table}"
    );

    // delete: the Gateway is gone from the API server and from the list;
    // again: not found.
    let ran = weftctl
        .run(&["waypoint", "delete", "-n", "shop"])
        .ok("waypoint delete -n shop");
    assert!(
        ran.stdout.contains("gateway/waypoint deleted"),
        "{}",
        ran.stdout
    );
    wait_until("the Gateway deleted", SETTLE, || {
        gateway(&run, "shop", "waypoint").is_none()
    })
    .expect("the Gateway is deleted");
    assert!(listed(&weftctl, &["-n", "shop"]).is_empty());
    let ran = weftctl.run(&["waypoint", "delete", "-n", "shop"]);
    assert_eq!(ran.code, Some(4), "{}", ran.stderr);
    assert!(
        ran.stderr.contains("Gateway shop/waypoint: not found"),
        "{}",
        ran.stderr
    );
    weftctl
        .run(&["waypoint", "delete", "-n", "web", "--name", "wp"])
        .ok("waypoint delete -n web --name wp");
    assert!(gateway(&run, "web", "wp").is_none());

    // Nothing the controller did for weftctl's Gateways was forbidden.
    let log = std::fs::read_to_string(controller.log()).unwrap_or_default();
    assert!(
        !log.contains("forbidden"),
        "the controller hit RBAC: {}",
        controller.log_tail(40)
    );
}
