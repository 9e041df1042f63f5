//! `weftctl bug-report` on the kube cluster (docs/e2e.md, docs/weftctl.md):
//! weft installed by `weftctl install` on the netns nodes and a waypoint
//! by `weftctl waypoint apply`, then one report that reaches every
//! component through the API server (port-forward to each admin API, exec
//! into each node agent, `pods/log` of every weft pod) and holds neither the CA's private key (its Secret) nor the token
//! the kubelet projected into a ztunnel pod. Needs root.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::weftctl::Weftctl;
use weft_e2e::kube::{KubeCluster, KubeClusterConfig, install};

/// Every file under `dir`, by its path below it.
fn tree(dir: &Path, prefix: &str, out: &mut BTreeMap<String, Vec<u8>>) {
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
        let path = entry.path();
        if path.is_dir() {
            tree(&path, &format!("{name}/"), out);
        } else {
            out.insert(name, std::fs::read(&path).expect("read file"));
        }
    }
}

#[test]
fn a_bug_report_of_the_kube_cluster_reaches_every_component_and_holds_no_secret() {
    let _one = common::serial();
    let cluster = KubeCluster::up(KubeClusterConfig::default()).expect("kube cluster up");
    let k = cluster.kubectl();
    install::gateway_api(cluster.control_plane()).expect("Gateway API CRDs");
    let weftctl = Weftctl::for_cluster(&cluster);
    weftctl.run(&["install", "--wait", "180"]).ok("install");
    // A waypoint, deployed by the controller from the Gateway weftctl writes.
    k.run(&["create", "namespace", "shop"]).expect("namespace");
    weftctl
        .run(&["waypoint", "apply", "-n", "shop"])
        .ok("waypoint apply");
    // The controller makes the Deployment a moment after the Gateway;
    // `kubectl wait` fails at once on an object that does not exist yet.
    weft_e2e::process::wait_until(
        "the waypoint's Deployment made",
        std::time::Duration::from_secs(60),
        || {
            k.get_json(&["deployment", "-n", "shop", "waypoint"])
                .is_ok()
        },
    )
    .and_then(|()| k.wait_for("shop", "Available", "deployment/waypoint", 120))
    .unwrap_or_else(|e| {
        cluster.print_logs();
        panic!("the waypoint's Deployment: {e}")
    });

    let out = tempfile::Builder::new()
        .prefix("weft-bug-report-")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let archive = out.path().join("report.tar.gz");
    let archive_arg = archive.display().to_string();
    let started = std::time::Instant::now();
    let ran = weftctl.run(&[
        "bug-report",
        "-f",
        &archive_arg,
        "--since",
        "10m",
        "-o",
        "json",
    ]);
    eprintln!("bug-report took {:?}\n{}", started.elapsed(), ran.stderr);
    let ran = ran.ok("bug-report");
    let summary = ran.json();
    assert_eq!(summary["errors"], serde_json::json!([]), "{summary}");

    let unpacked = out.path().join("unpacked");
    std::fs::create_dir_all(&unpacked).expect("mkdir");
    let tar = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(&archive)
        .arg("-C")
        .arg(&unpacked)
        .status()
        .expect("tar");
    assert!(tar.success());
    let top = std::fs::read_dir(&unpacked)
        .expect("unpacked")
        .flatten()
        .next()
        .expect("a top directory")
        .path();
    let mut files = BTreeMap::new();
    tree(&top, "", &mut files);
    let names: Vec<&String> = files.keys().collect();
    let doc = |path: &str| -> serde_json::Value {
        let bytes = files
            .get(path)
            .unwrap_or_else(|| panic!("{path} missing from {names:?}"));
        serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("{path}: {e}"))
    };

    // Every node's ztunnel and agent, every controller replica, every
    // container's log of every weft pod.
    for node in ["node-1", "node-2"] {
        let dump = doc(&format!("ztunnel/{node}/config_dump.json"));
        assert_eq!(dump["node"], node, "{dump}");
        assert!(dump["version"].as_u64().is_some_and(|v| v > 0), "{dump}");
        let coverage = doc(&format!("node-agent/{node}/coverage.json"));
        assert_eq!(coverage["node"], node, "{coverage}");
    }
    let pods_in = |ns: &str| -> Vec<serde_json::Value> {
        let list = k.get_json(&["pods", "-n", ns]).expect("pods");
        list["items"].as_array().cloned().unwrap_or_default()
    };
    let pods = pods_in("weft-system");
    assert!(!pods.is_empty());
    for pod in &pods {
        let name = pod["metadata"]["name"].as_str().expect("name");
        let app = pod["metadata"]["labels"]["app.kubernetes.io/name"]
            .as_str()
            .unwrap_or_default();
        if app == "weft-controller" {
            let model = doc(&format!("controller/{name}/proxy-status.json"));
            assert_eq!(model["controller"], name, "{model}");
        }
        for container in pod["spec"]["containers"].as_array().expect("containers") {
            let container = container["name"].as_str().expect("container name");
            let log = format!("logs/weft-system/{name}/{container}.log");
            let text = files
                .get(&log)
                .unwrap_or_else(|| panic!("{log} missing from {names:?}"));
            // Every weft process logs at start, well within --since.
            assert!(!text.is_empty(), "{log} is empty");
        }
    }
    let waypoints = pods_in("shop");
    assert!(!waypoints.is_empty());
    for pod in &waypoints {
        let name = pod["metadata"]["name"].as_str().expect("name");
        let dump = doc(&format!("waypoint/shop/waypoint/{name}/config_dump.json"));
        assert!(dump["version"].as_u64().is_some_and(|v| v > 0), "{dump}");
        let routes = format!("waypoint/shop/waypoint/{name}/routes.json");
        assert!(files.contains_key(&routes), "{routes} missing");
        let log = format!("logs/shop/{name}/waypoint.log");
        assert!(
            files.get(&log).is_some_and(|l| !l.is_empty()),
            "{log} missing or empty: {names:?}"
        );
    }
    let versions = doc("versions.json");
    assert!(
        versions["kubernetes"]["gitVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with('v')),
        "{versions}"
    );
    assert_eq!(
        versions["pods"].as_array().map(Vec::len),
        Some(pods.len() + waypoints.len()),
        "{versions}"
    );
    let check = doc("check.json");
    assert!(check["findings"].as_array().is_some_and(|f| !f.is_empty()));

    // The CA's key, from its Secret, and node 1's ztunnel's projected
    // token, read where the kubelet wrote it: in no file.
    let template = r#"go-template={{index .data "root-key.pem" | base64decode}}"#;
    let mut secret: Vec<&str> = "get secret -n weft-system weft-ca -o".split(' ').collect();
    secret.push(template);
    let key = k.run(&secret).expect("the CA's key");
    let mut secrets: Vec<String> = key
        .lines()
        .filter(|l| !l.starts_with("-----") && !l.is_empty())
        .map(str::to_owned)
        .collect();
    assert!(!secrets.is_empty(), "no key in the Secret");
    let ztunnel = pods
        .iter()
        .find(|p| {
            p["metadata"]["labels"]["app.kubernetes.io/name"] == "ztunnel"
                && p["spec"]["nodeName"] == "node-1"
        })
        .expect("node 1's ztunnel pod");
    let uid = ztunnel["metadata"]["uid"].as_str().expect("uid");
    let token_file = cluster
        .dir()
        .join("nodes/node-1/kubelet/pods")
        .join(uid)
        .join("volumes/weft-token/token");
    let token = std::fs::read_to_string(&token_file)
        .unwrap_or_else(|e| panic!("{}: {e}", token_file.display()));
    secrets.push(token.trim().to_string());
    for (path, bytes) in &files {
        let text = String::from_utf8_lossy(bytes);
        for secret in &secrets {
            assert!(!text.contains(secret.as_str()), "{path} holds a secret");
        }
        assert!(!text.contains("PRIVATE KEY-----"), "{path} holds a key");
    }
}
