//! Installing, upgrading and uninstalling weft on the kube cluster
//! (docs/install.md): what the node agents do to each node's CNI config when
//! weft leaves, and when they merely restart. Needs root.

mod common;

use common::nodes::{chained, files};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use weft_e2e::kube::{KubeCluster, KubeClusterConfig, install};
use weft_e2e::process::wait_until;

/// How long the agents may take to act on a change.
const SETTLE: Duration = Duration::from_secs(60);

/// The plugin types of each node's active conflist.
fn chains(cluster: &KubeCluster) -> Vec<Vec<String>> {
    cluster
        .nodes()
        .iter()
        .map(|node| {
            weft_e2e::cni::active_conflist(&node.cni_conf_dir())
                .map(|(_, list)| weft_e2e::cni::plugin_types(&list))
                .unwrap_or_default()
        })
        .collect()
}

/// A pod on node `node` serving the e2e app, Ready once it listens.
fn pod(namespace: &str, name: &str, node: usize) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  nodeName: node-{node}\n  containers:\n    - name: main\n      image: e2e-app\n      args: [serve]\n      readinessProbe: {{tcpSocket: {{port: 9000}}, periodSeconds: 1}}\n"
    )
}

fn enrolled_namespace(cluster: &KubeCluster, name: &str) {
    let k = cluster.kubectl();
    k.run(&["create", "namespace", name]).expect("namespace");
    k.run(&[
        "label",
        "namespace",
        name,
        "weft.dev/dataplane-mode=ambient",
    ])
    .expect("label");
}

/// weft installed with kubectl and rolled out.
fn installed(cluster: &KubeCluster) {
    install::weft(cluster.control_plane()).expect("install weft with kubectl");
    if let Err(e) = install::rolled_out(cluster.control_plane(), 120) {
        cluster.print_logs();
        panic!("weft rolls out: {e}");
    }
}

/// The node agents' pod names.
fn agent_pods(cluster: &KubeCluster) -> Vec<String> {
    let selector = "app.kubernetes.io/name=weft-node-agent";
    let names = cluster
        .kubectl()
        .run(&[
            "get",
            "pods",
            "-n",
            "weft-system",
            "-l",
            selector,
            "-o",
            "name",
        ])
        .expect("pods");
    names.lines().map(str::to_string).collect()
}

#[test]
fn kubectl_delete_restores_every_nodes_conflist_and_enrolled_namespaces_start_pods_again() {
    let _one = common::serial();
    let cluster = KubeCluster::up(KubeClusterConfig::default()).expect("kube cluster up");
    let conf_dirs: Vec<PathBuf> = cluster.nodes().iter().map(|n| n.cni_conf_dir()).collect();
    let before: Vec<_> = conf_dirs.iter().map(|d| files(d)).collect();
    installed(&cluster);
    assert!(
        chains(&cluster).iter().all(|c| chained(c)),
        "installed: {:?}",
        chains(&cluster)
    );
    enrolled_namespace(&cluster, "shop");
    let k = cluster.kubectl();
    k.apply(&pod("shop", "before", 1)).expect("pod");
    k.wait_for("shop", "Ready", "pod/before", 90)
        .expect("an enrolled pod starts with weft installed");
    let before_pod = cluster.pod("shop", "before").expect("pod");
    assert!(
        before_pod.redirect_rules().expect("rules").present(),
        "and is captured"
    );

    let base = install::deploy_base();
    k.run(&[
        "delete",
        "-k",
        &base.display().to_string(),
        "--timeout=120s",
    ])
    .expect("kubectl delete -k deploy/base");

    for (i, dir) in conf_dirs.iter().enumerate() {
        wait_until(
            &format!("node-{}'s conflist as before install", i + 1),
            SETTLE,
            || files(dir) == before[i],
        )
        .unwrap_or_else(|e| {
            cluster.print_logs();
            panic!("{e}: now {:?}", chains(&cluster))
        });
    }
    for node in cluster.nodes() {
        assert!(
            !node.cni_bin_dir().join("weft-cni").exists(),
            "{}: the binary the agent installed is removed",
            node.name()
        );
    }
    // The pod that was in the mesh is out of it: nothing redirects it to a
    // ztunnel that is gone.
    assert!(
        !before_pod.redirect_rules().expect("rules").present(),
        "the running pod's redirect rules are removed"
    );
    // The namespace still says ambient, and nothing captures it any more.
    k.apply(&pod("shop", "after", 2)).expect("pod");
    k.wait_for("shop", "Ready", "pod/after", 60)
        .expect("a pod of a namespace still labelled ambient starts after uninstall");
}

#[test]
fn a_rollout_restart_of_the_node_agents_keeps_weft_cni_in_every_chain_throughout() {
    let _one = common::serial();
    let cluster = KubeCluster::up(KubeClusterConfig::default()).expect("kube cluster up");
    installed(&cluster);
    // The controller's replicas are Ready by their readiness endpoint, and
    // its budget lets a drain take one of them, never both.
    let k = cluster.kubectl();
    wait_until(
        "the controller's budget counts both replicas",
        SETTLE,
        || {
            k.get_json(&["pdb", "-n", "weft-system", "weft-controller"])
                .is_ok_and(|p| {
                    p["status"]["currentHealthy"] == 2 && p["status"]["disruptionsAllowed"] == 1
                })
        },
    )
    .expect("PodDisruptionBudget");
    let old = agent_pods(&cluster);
    assert_eq!(old.len(), cluster.nodes().len(), "one agent per node");

    // Watch every chain while the agents are replaced one by one.
    let conf_dirs: Vec<PathBuf> = cluster.nodes().iter().map(|n| n.cni_conf_dir()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut gaps = Vec::new();
            let mut looks = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for dir in &conf_dirs {
                    let chain = weft_e2e::cni::active_conflist(dir)
                        .map(|(_, list)| weft_e2e::cni::plugin_types(&list))
                        .unwrap_or_default();
                    if !chained(&chain) {
                        gaps.push(format!("{}: {chain:?}", dir.display()));
                    }
                }
                looks += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            (looks, gaps)
        })
    };
    k.run(&[
        "rollout",
        "restart",
        "-n",
        "weft-system",
        "daemonset/weft-node-agent",
    ])
    .expect("rollout restart");
    let rolled = k.run(&[
        "rollout",
        "status",
        "-n",
        "weft-system",
        "daemonset/weft-node-agent",
        "--timeout=180s",
    ]);
    // The old pods' objects go once their containers have exited.
    let replaced = wait_until("the old agents gone", SETTLE, || {
        let now = agent_pods(&cluster);
        now.len() == old.len() && now.iter().all(|p| !old.contains(p))
    });
    stop.store(true, Ordering::Relaxed);
    let (looks, gaps) = watcher.join().expect("watcher");
    rolled.expect("the agents roll out");
    replaced.expect("every agent replaced");
    assert!(looks > 10, "the chains were looked at ({looks} times)");
    assert!(gaps.is_empty(), "weft-cni left a chain: {gaps:?}");

    // And the new agents serve it: an enrolled pod starts captured.
    enrolled_namespace(&cluster, "shop");
    k.apply(&pod("shop", "after", 1)).expect("pod");
    k.wait_for("shop", "Ready", "pod/after", 60)
        .expect("pod Ready");
    assert!(
        cluster
            .pod("shop", "after")
            .expect("pod")
            .redirect_rules()
            .expect("rules")
            .present(),
        "captured by the new agents"
    );
}

/// `kubectl auth can-i VERB RESOURCE [-n NS] --as USER` as the admin.
fn can_i(run: &weft_e2e::kube::KubeRun, user: &str, verb: &str, what: &str, ns: &str) -> bool {
    // `pods/exec` names a subresource, not a pod called exec.
    let (resource, sub) = what.split_once('/').unwrap_or((what, ""));
    let mut args = vec!["auth", "can-i", verb, resource, "-n", ns, "--as", user];
    let sub = format!("--subresource={sub}");
    if what.contains('/') {
        args.push(&sub);
    }
    let out = run
        .plane()
        .kubectl()
        .output(&args)
        .expect("kubectl auth can-i");
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

#[test]
fn the_weftctl_roles_allow_what_weftctl_calls_and_no_more() {
    let _one = common::serial();
    let run = common::kube::installed();
    let plane = run.plane();
    let k = plane.kubectl();
    // Bound as the install guide says: the ClusterRole cluster-wide, its
    // namesake Role in weft-system.
    for role in ["weft-view", "weft-admin"] {
        let user = format!("{role}-user");
        k.run(&[
            "create",
            "clusterrolebinding",
            &user,
            &format!("--clusterrole={role}"),
            &format!("--user={user}"),
        ])
        .expect("clusterrolebinding");
        k.run(&[
            "create",
            "rolebinding",
            "-n",
            "weft-system",
            &user,
            &format!("--role={role}"),
            &format!("--user={user}"),
        ])
        .expect("rolebinding");
    }
    let viewer = common::weftctl::Weftctl::new(
        &plane
            .identity_kubeconfig("weftctl-viewer", "weft-view-user", &[])
            .expect("kubeconfig"),
    );
    let admin = common::weftctl::Weftctl::new(
        &plane
            .identity_kubeconfig("weftctl-admin", "weft-admin-user", &[])
            .expect("kubeconfig"),
    );
    k.run(&["create", "namespace", "shop"]).expect("namespace");

    // Reads: both. weftctl's registry lists and watches every kind it knows.
    for user in [&viewer, &admin] {
        let ran = user
            .run(&["waypoint", "list", "-o", "json"])
            .ok("waypoint list");
        assert!(ran.stdout.trim_start().starts_with('['), "{}", ran.stdout);
    }
    // Writes: the admin only, and the viewer is told why.
    let refused = viewer.run(&["enroll", "shop"]);
    assert_ne!(refused.code, Some(0), "the viewer cannot enroll");
    assert!(
        refused.stderr.contains("RBAC") || refused.stderr.contains("forbidden"),
        "{}",
        refused.stderr
    );
    admin.run(&["enroll", "shop"]).ok("admin enrolls");
    admin
        .run(&["waypoint", "apply", "-n", "shop", "--name", "wp"])
        .ok("admin deploys a waypoint");
    admin
        .run(&["waypoint", "delete", "-n", "shop", "--name", "wp"])
        .ok("admin deletes it");

    // What weftctl needs beyond the API objects: port-forward to weft's
    // proxies for both, exec in the node agents for the admin only, and
    // nothing of either outside what they are for.
    for (user, verb, what, ns, allowed) in [
        (
            "weft-view-user",
            "create",
            "pods/portforward",
            "weft-system",
            true,
        ),
        (
            "weft-view-user",
            "create",
            "pods/portforward",
            "shop",
            false,
        ),
        (
            "weft-view-user",
            "create",
            "pods/exec",
            "weft-system",
            false,
        ),
        ("weft-view-user", "get", "secrets", "weft-system", false),
        (
            "weft-admin-user",
            "create",
            "pods/portforward",
            "shop",
            true,
        ),
        (
            "weft-admin-user",
            "create",
            "pods/exec",
            "weft-system",
            true,
        ),
        ("weft-admin-user", "create", "pods/exec", "shop", false),
        ("weft-admin-user", "get", "secrets", "weft-system", false),
        ("weft-admin-user", "delete", "namespaces", "shop", false),
    ] {
        assert_eq!(
            can_i(&run, user, verb, what, ns),
            allowed,
            "{user} {verb} {what} in {ns}"
        );
    }
}

/// `check --pre -o json`: its exit code and findings by (check, target).
fn preflight(
    weftctl: &common::weftctl::Weftctl,
) -> (Option<i32>, BTreeMap<(String, String), serde_json::Value>) {
    let ran = weftctl.run(&["--timeout", "30", "check", "--pre", "-o", "json"]);
    let report: serde_json::Value = serde_json::from_str(&ran.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", ran.stdout, ran.stderr));
    let findings = report["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| {
            let key = (
                f["check"].as_str().unwrap_or_default().to_string(),
                f["target"].as_str().unwrap_or_default().to_string(),
            );
            (key, f.clone())
        })
        .collect();
    (ran.code, findings)
}

fn status(
    findings: &BTreeMap<(String, String), serde_json::Value>,
    check: &str,
    target: &str,
) -> String {
    findings
        .get(&(check.to_string(), target.to_string()))
        .and_then(|f| f["status"].as_str().map(str::to_string))
        .unwrap_or_else(|| format!("no {check} finding for {target}: {findings:?}"))
}

#[test]
fn weftctl_checks_installs_upgrades_and_uninstalls_weft() {
    let _one = common::serial();
    let cluster = KubeCluster::up(KubeClusterConfig::default()).expect("kube cluster up");
    let plane = cluster.control_plane();
    let k = cluster.kubectl();
    let weftctl = common::weftctl::Weftctl::for_cluster(&cluster);
    let conf_dirs: Vec<PathBuf> = cluster.nodes().iter().map(|n| n.cni_conf_dir()).collect();
    let before: Vec<_> = conf_dirs.iter().map(|d| files(d)).collect();

    // Before install: no Gateway API yet, so not ready; each node's chain
    // and rule tools are read by a pod on that node.
    let (code, findings) = preflight(&weftctl);
    assert_eq!(code, Some(5), "{findings:?}");
    assert_eq!(status(&findings, "gateway-api", "cluster"), "fail");
    assert_eq!(status(&findings, "kubernetes", "cluster"), "ok");
    assert_eq!(status(&findings, "privileged-pods", "weft-system"), "ok");
    for node in ["node-1", "node-2"] {
        assert_eq!(status(&findings, "cni", node), "ok", "{findings:?}");
        assert_eq!(status(&findings, "redirect", node), "ok", "{findings:?}");
        assert_eq!(
            status(&findings, "redirect-rules", node),
            "ok",
            "{findings:?}"
        );
        let detail = &findings[&("cni".to_string(), node.to_string())]["detail"];
        assert!(
            detail.as_str().is_some_and(|d| d.contains("bridge")),
            "{detail}"
        );
    }
    assert!(
        k.get_json(&["namespace", "weft-system"]).is_err()
            || k.get_json(&["namespace", "weft-system"])
                .is_ok_and(|n| !n["metadata"]["deletionTimestamp"].is_null()),
        "the check removes the namespace it made"
    );
    install::gateway_api(plane).expect("Gateway API CRDs");
    // A node without a network config is named.
    let conflist = conf_dirs[1].join(weft_e2e::cni::PRIMARY_CONFLIST);
    let aside = conf_dirs[1].join("primary.aside");
    std::fs::rename(&conflist, &aside).expect("move the conflist aside");
    wait_until("weft-system gone", SETTLE, || {
        k.get_json(&["namespace", "weft-system"]).is_err()
    })
    .expect("namespace gone");
    let (code, findings) = preflight(&weftctl);
    std::fs::rename(&aside, &conflist).expect("restore the conflist");
    assert_eq!(code, Some(5));
    assert_eq!(status(&findings, "cni", "node-2"), "fail", "{findings:?}");
    assert_eq!(status(&findings, "cni", "node-1"), "ok");
    wait_until("weft-system gone", SETTLE, || {
        k.get_json(&["namespace", "weft-system"]).is_err()
    })
    .expect("namespace gone");
    let (code, findings) = preflight(&weftctl);
    assert_eq!(code, Some(0), "ready to install: {findings:?}");
    wait_until("weft-system gone", SETTLE, || {
        k.get_json(&["namespace", "weft-system"]).is_err()
    })
    .expect("namespace gone");

    // --dry-run prints the embedded manifests: deploy/base's.
    let dry = weftctl
        .run(&["install", "--dry-run"])
        .ok("install --dry-run");
    let base =
        std::fs::read_to_string(install::deploy_base().join("weft.yaml")).expect("weft.yaml");
    assert_eq!(dry.stdout, base);
    let dry = weftctl
        .run(&["install", "--dry-run", "-o", "json"])
        .ok("install --dry-run -o json");
    let list: serde_json::Value = serde_json::from_str(&dry.stdout).expect("JSON");
    assert_eq!(list["kind"], "List");
    assert_eq!(
        list["items"].as_array().map(Vec::len),
        Some(base.matches("\nkind: ").count())
    );
    assert!(
        k.get_json(&["namespace", "weft-system"]).is_err(),
        "a dry run changes nothing"
    );

    // Install: applied server-side as weftctl, progress shown, rolled out.
    let ran = weftctl.run(&["install", "-o", "json"]).ok("install");
    let done: serde_json::Value = serde_json::from_str(&ran.stdout).expect("JSON");
    assert!(
        done["rollouts"]
            .as_array()
            .is_some_and(|r| r.len() == 3 && r.iter().all(|r| r["done"] == true)),
        "{done}"
    );
    assert!(
        ran.stderr.contains("daemonset/weft-node-agent: 2/2 ready"),
        "{}",
        ran.stderr
    );
    let deployment = k
        .get_json(&[
            "deployment",
            "-n",
            "weft-system",
            "weft-controller",
            "--show-managed-fields",
        ])
        .expect("deployment");
    assert!(
        deployment["metadata"]["managedFields"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|m| m["manager"] == "weftctl" && m["operation"] == "Apply"),
        "server-side apply by weftctl"
    );
    assert_eq!(deployment["status"]["readyReplicas"], 2);
    for dir in &conf_dirs {
        let (_, list) = weft_e2e::cni::active_conflist(dir).expect("conflist");
        assert!(chained(&weft_e2e::cni::plugin_types(&list)));
    }
    // An upgrade prunes what an earlier release installed and this one no
    // longer ships (as weftctl applied it), and nothing else: not the same
    // kind labelled alike by someone else, not what the controller made.
    let leftover = |name: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: weft-system\n  labels: {{app.kubernetes.io/part-of: weft}}\n"
        )
    };
    k.apply_as(&leftover("weft-retired"), "weftctl")
        .expect("an earlier release's object");
    k.apply(&leftover("weft-users-own"))
        .expect("a user's object");
    let ran = weftctl.run(&["upgrade", "-o", "json"]).ok("upgrade");
    let done: serde_json::Value = serde_json::from_str(&ran.stdout).expect("JSON");
    assert_eq!(
        done["pruned"],
        serde_json::json!(["ConfigMap weft-system/weft-retired"]),
        "{done}"
    );
    assert!(
        k.get_json(&["configmap", "-n", "weft-system", "weft-retired"])
            .is_err()
    );
    for kept in ["weft-users-own", "weft-ca-root"] {
        k.get_json(&["configmap", "-n", "weft-system", kept])
            .unwrap_or_else(|e| panic!("{kept} pruned: {e}"));
    }
    // An upgrade to the same manifests is a no-op that still waits.
    let ran = weftctl.run(&["upgrade", "-o", "json"]).ok("upgrade");
    let done: serde_json::Value = serde_json::from_str(&ran.stdout).expect("JSON");
    assert!(done["pruned"].is_null(), "{done}");

    // Uninstall returns once every node is as it was; the CRDs stay.
    let ran = weftctl.run(&["uninstall"]).ok("uninstall");
    assert!(ran.stdout.contains("CRDs kept"), "{}", ran.stdout);
    for (i, dir) in conf_dirs.iter().enumerate() {
        assert_eq!(
            files(dir),
            before[i],
            "node-{} restored when uninstall returns",
            i + 1
        );
    }
    assert!(k.get_json(&["namespace", "weft-system"]).is_err());
    k.run(&["get", "crd", "authorizationpolicies.security.weft.dev"])
        .expect("CRDs kept");
    let ran = weftctl.run(&["upgrade"]);
    assert_eq!(ran.code, Some(4), "upgrade of nothing: {}", ran.stderr);
}
