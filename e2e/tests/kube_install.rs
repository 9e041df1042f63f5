//! Installing, upgrading and uninstalling weft on the kube cluster
//! (docs/install.md): what the node agents do to each node's CNI config when
//! weft leaves, and when they merely restart. Needs root.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use weft_e2e::kube::{KubeCluster, KubeClusterConfig, install};
use weft_e2e::process::wait_until;

/// How long the agents may take to act on a change.
const SETTLE: Duration = Duration::from_secs(60);

/// Every file of a directory and its bytes (absent directory: empty).
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| {
            let bytes = std::fs::read(e.path()).unwrap_or_default();
            (e.file_name().to_string_lossy().into_owned(), bytes)
        })
        .collect()
}

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

fn chained(chain: &[String]) -> bool {
    chain.last().is_some_and(|t| t == "weft-cni")
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
    let k = cluster.kubectl();
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
