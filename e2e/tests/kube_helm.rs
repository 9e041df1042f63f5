//! weft's Helm chart (`deploy/charts/weft`, docs/install.md): the one source
//! of deploy/base, its values schema, and `helm install`, `upgrade` and
//! `uninstall` on the kube cluster, with Helm built from Go modules
//! (`scripts/build-helm.sh`). Needs root.

mod common;

use common::nodes::files;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use weft_e2e::kube::helm::{self, Helm};
use weft_e2e::kube::{KubeCluster, KubeClusterConfig, install};
use weft_e2e::process::wait_until;

/// `helm template` of the chart as `make manifests` runs it, plus `extra`.
fn template(extra: &[&str]) -> std::process::Output {
    let binary = helm::binary().expect("helm (scripts/build-helm.sh)");
    let chart = helm::chart();
    Command::new(binary)
        .args(["template", "weft"])
        .arg(&chart)
        .arg("--include-crds")
        .args(extra)
        .output()
        .expect("run helm")
}

/// A directory of this test process's own for values files.
fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("weft-helm-values-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn values_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("values file");
    path
}

/// `kubernetes-validate` from PyPI (`scripts/kubernetes-validate.sh`).
fn kubernetes_validate() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/kubernetes-validate.sh");
    let out = Command::new(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("run scripts/kubernetes-validate.sh");
    assert!(
        out.status.success(),
        "scripts/kubernetes-validate.sh failed"
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// The fast first check, before any cluster: every built-in kind of
/// deploy/base validates strictly (an unknown field is an error) against
/// the API schemas of the oldest Kubernetes the chart supports and of the
/// one the tests run. The Gateway API's GatewayClass has no built-in
/// schema; the kube tests apply it to a real API server.
#[test]
fn deploy_base_validates_strictly_against_the_kubernetes_api_schemas() {
    let validate = kubernetes_validate();
    let base = install::deploy_base().join("weft.yaml");
    for version in ["1.30.0", "1.37.0"] {
        let out = Command::new(&validate)
            .args(["--strict", "--quiet", "-k", version])
            .arg(&base)
            .output()
            .expect("run kubernetes-validate");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "Kubernetes {version}: {text}");
        for line in text.lines().filter(|l| l.starts_with("WARN")) {
            assert!(line.contains("kind GatewayClass"), "unexpected: {line}");
        }
    }
    // It can fail: a field the API does not have, where a typo would put it.
    let broken = std::fs::read_to_string(&base).expect("weft.yaml").replacen(
        "priorityClassName:",
        "priorityClasName:",
        1,
    );
    let dir = scratch();
    let path = values_file(&dir, "broken.yaml", &broken);
    let out = Command::new(&validate)
        .args(["--strict", "--quiet", "-k", "1.37.0"])
        .arg(&path)
        .output()
        .expect("run kubernetes-validate");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a misspelt field passed: {text}");
    assert!(text.contains("priorityClasName"), "{text}");
}

#[test]
fn deploy_base_is_the_charts_default_rendering() {
    let rendered = template(&[]);
    assert!(rendered.status.success(), "{rendered:?}");
    let base = install::deploy_base().join("weft.yaml");
    let checked_in = std::fs::read(&base).expect("deploy/base/weft.yaml");
    assert!(
        rendered.stdout == checked_in,
        "deploy/base/weft.yaml is not `helm template` of deploy/charts/weft with default values: run `make manifests`"
    );
    // The comparison sees a changed value.
    let other = template(&["--set", "image.tag=v9.9.9"]);
    assert!(other.status.success(), "{other:?}");
    assert_ne!(other.stdout, checked_in);
    let text = String::from_utf8_lossy(&other.stdout);
    for image in ["controller", "ztunnel", "node-agent", "waypoint"] {
        assert!(
            text.contains(&format!("ghcr.io/weft-mesh/{image}:v9.9.9")),
            "{image} takes the tag"
        );
    }
}

#[test]
fn the_values_schema_refuses_unknown_keys_and_wrong_types_by_name() {
    let dir = scratch();
    for (file, text, named) in [
        ("unknown.yaml", "controller:\n  replicaz: 3\n", "replicaz"),
        ("top.yaml", "trustDomian: example.org\n", "trustDomian"),
        (
            "type.yaml",
            "controller:\n  replicas: two\n",
            "/controller/replicas",
        ),
        (
            "enum.yaml",
            "nodeAgent:\n  redirect: ebpf\n",
            "/nodeAgent/redirect",
        ),
        (
            "bool.yaml",
            "namespace:\n  create: \"yes\"\n",
            "/namespace/create",
        ),
        (
            "sampling.yaml",
            "tracing:\n  otlpEndpoint: http://otel:4317\n  sampling: 1.5\n",
            "/tracing/sampling",
        ),
        (
            "endpoint.yaml",
            "tracing:\n  otlpEndpoint: otel:4317\n",
            "/tracing/otlpEndpoint",
        ),
    ] {
        let path = values_file(&dir, file, text);
        let out = template(&["-f", &path.display().to_string()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{file} must be refused");
        assert!(stderr.contains(named), "{file}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `tracing` sends both proxies' spans to a collector: ztunnel's DaemonSet
/// gets the endpoint and ratio, and the controller the same for the
/// waypoints it deploys; without an endpoint nothing of it is rendered.
#[test]
fn tracing_values_reach_ztunnel_and_the_waypoints_deployer() {
    let out = template(&[
        "--set",
        "tracing.otlpEndpoint=http://otel.monitoring:4317",
        "--set",
        "tracing.sampling=0.25",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in [
        "WEFT_OTLP_ENDPOINT",
        "WEFT_TRACE_SAMPLING",
        "WEFT_WAYPOINT_OTLP_ENDPOINT",
        "WEFT_WAYPOINT_TRACE_SAMPLING",
    ] {
        assert!(text.contains(&format!("name: {name}\n")), "{name} rendered");
    }
    assert!(text.contains("http://otel.monitoring:4317"));
    assert!(
        text.contains("\"0.25\""),
        "the ratio, as a string env value"
    );
    let default = template(&[]);
    let text = String::from_utf8_lossy(&default.stdout);
    assert!(default.status.success());
    assert!(
        !text.contains("OTLP_ENDPOINT"),
        "off unless an endpoint is set"
    );
}

/// `nodeAgent.localBypass=auto` gives the agent the flag and the node's
/// root cgroup (its container's own is only its cgroup namespace); the
/// default renders neither, and a value outside off/auto is refused.
#[test]
fn the_local_bypass_value_reaches_the_node_agent_with_the_hosts_cgroup() {
    let on = template(&["--set", "nodeAgent.localBypass=auto"]);
    assert!(
        on.status.success(),
        "{}",
        String::from_utf8_lossy(&on.stderr)
    );
    let text = String::from_utf8_lossy(&on.stdout);
    assert!(text.contains("- --local-bypass=auto\n"), "{text}");
    assert!(text.contains("- --bypass-cgroup=/host/sys/fs/cgroup\n"));
    assert!(text.contains("hostPath: {path: /sys/fs/cgroup, type: Directory}"));
    assert!(text.contains("hostPath: {path: /sys/fs/bpf, type: DirectoryOrCreate}"));
    let default = template(&[]);
    let text = String::from_utf8_lossy(&default.stdout);
    assert!(
        !text.contains("--local-bypass") && !text.contains("/sys/fs/"),
        "off is the agent's default: no flag, no cgroup or BPF mount"
    );
    let wrong = template(&["--set", "nodeAgent.localBypass=on"]);
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("localBypass"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
}

/// A digest in `image.digests` (as `make images`' images.json gives it)
/// pins that image: the DaemonSet and the controller's waypoint image
/// (what the deployer hands its Deployments) by digest, the others still by
/// tag; something that is not a digest is refused by the schema, by name.
#[test]
fn an_image_digest_in_the_values_pins_that_image() {
    let digest = format!("sha256:{}", "ab".repeat(32));
    let dir = scratch();
    let pinned = values_file(
        &dir,
        "digests.yaml",
        &format!("image:\n  digests:\n    ztunnel: {digest}\n    waypoint: {digest}\n"),
    );
    let out = template(&["-f", &pinned.display().to_string()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("image: ghcr.io/weft-mesh/ztunnel@{digest}\n")),
        "ztunnel by digest"
    );
    assert!(
        text.contains(&format!("value: ghcr.io/weft-mesh/waypoint@{digest}\n")),
        "the deployer's waypoint image by digest"
    );
    assert!(text.contains("image: ghcr.io/weft-mesh/controller:latest\n"));
    let bad = values_file(
        &dir,
        "bad-digest.yaml",
        "image:\n  digests:\n    ztunnel: latest\n",
    );
    let out = template(&["-f", &bad.display().to_string()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a tag given as a digest is refused");
    assert!(err.contains("/image/digests/ztunnel"), "{err}");
}

/// The names of the pods in weft-system that are not Ready, and how many
/// there are in all.
fn unready(cluster: &KubeCluster) -> (Vec<String>, usize) {
    let pods = cluster
        .kubectl()
        .get_json(&["pods", "-n", "weft-system"])
        .expect("pods");
    let items = pods["items"].as_array().cloned().unwrap_or_default();
    let not_ready = items
        .iter()
        .filter(|p| {
            !p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    (not_ready, items.len())
}

#[test]
fn helm_installs_upgrades_and_uninstalls_weft_leaving_the_crds_and_the_nodes_as_found() {
    let _one = common::serial();
    let cluster = KubeCluster::up(KubeClusterConfig::default()).expect("kube cluster up");
    let conf_dirs: Vec<PathBuf> = cluster.nodes().iter().map(|n| n.cni_conf_dir()).collect();
    let before: Vec<_> = conf_dirs.iter().map(|d| files(d)).collect();
    let plane = cluster.control_plane();
    install::gateway_api(plane).expect("Gateway API CRDs");
    let helm = Helm::new(plane).expect("helm");
    let chart = helm::chart().display().to_string();
    let k = cluster.kubectl();
    let install = |extra: &[&str]| {
        let mut args = vec![
            "install",
            "weft",
            &chart,
            // Helm's record of the release; weft itself goes to weft-system.
            "--namespace",
            "default",
        ];
        args.extend_from_slice(extra);
        helm.output(&args).expect("run helm")
    };

    // Bad values are refused by name before anything is created.
    let bad = values_file(cluster.dir(), "bad.yaml", "ztunnel:\n  resourcez: {}\n");
    let refused = install(&["-f", &bad.display().to_string()]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("resourcez"), "{stderr}");
    assert!(
        k.get_json(&["namespace", "weft-system"]).is_err(),
        "a refused install creates nothing"
    );

    // Install: every weft pod Ready, the namespace labelled by the chart.
    let installed = install(&["--wait", "--timeout=5m"]);
    if !installed.status.success() {
        cluster.print_logs();
        panic!("helm install: {installed:?}");
    }
    install::rolled_out(plane, 120).expect("rolled out");
    wait_until("every weft pod Ready", Duration::from_secs(60), || {
        let (not_ready, all) = unready(&cluster);
        not_ready.is_empty() && all == 2 + 2 * cluster.nodes().len()
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", unready(&cluster)));
    let ns = k
        .get_json(&["namespace", "weft-system"])
        .expect("namespace");
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "privileged"
    );
    for dir in &conf_dirs {
        let (_, list) = weft_e2e::cni::active_conflist(dir).expect("conflist");
        assert_eq!(
            weft_e2e::cni::plugin_types(&list)
                .last()
                .map(String::as_str),
            Some("weft-cni")
        );
    }

    // Upgrade: a changed value takes effect (a third controller replica,
    // the node components' log level, which rolls both DaemonSets, and the
    // PodMonitors of a cluster that runs the Prometheus Operator).
    install::pod_monitor_crd(plane).expect("PodMonitor CRD");
    let upgraded = helm.output(&[
        "upgrade",
        "weft",
        &chart,
        "--namespace",
        "default",
        "--reuse-values",
        "--set",
        "controller.replicas=3",
        "--set",
        "logLevel=debug",
        "--set",
        "monitoring.podMonitors.enabled=true",
        "--wait",
        "--timeout=5m",
    ]);
    let upgraded = upgraded.expect("run helm");
    assert!(upgraded.status.success(), "helm upgrade: {upgraded:?}");
    install::rolled_out(plane, 120).expect("rolled out after upgrade");
    let controller = k
        .get_json(&["deployment", "-n", "weft-system", "weft-controller"])
        .expect("deployment");
    assert_eq!(controller["status"]["readyReplicas"], 3);
    let agent = k
        .get_json(&[
            "pods",
            "-n",
            "weft-system",
            "-l",
            "app.kubernetes.io/name=weft-node-agent",
        ])
        .expect("pods");
    for pod in agent["items"].as_array().into_iter().flatten() {
        let env = pod["spec"]["containers"][0]["env"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(
            env.iter()
                .any(|e| e["name"] == "RUST_LOG" && e["value"] == "debug"),
            "{}: {env:?}",
            pod["metadata"]["name"]
        );
    }

    // The PodMonitors are what the operator's own schema accepts, field by
    // field (strict: an unknown field is an error, not pruned), and select
    // the pods deploy/ labels on the ports they serve metrics on.
    let monitors = template(&[
        "--set",
        "monitoring.podMonitors.enabled=true",
        "--show-only",
        "templates/monitoring/podmonitors.yaml",
    ]);
    assert!(monitors.status.success(), "{monitors:?}");
    let rendered = values_file(
        cluster.dir(),
        "podmonitors.yaml",
        &String::from_utf8_lossy(&monitors.stdout),
    );
    k.run(&[
        "apply",
        "--server-side",
        "--dry-run=server",
        "--validate=strict",
        "--field-manager=helm-test",
        "-f",
        &rendered.display().to_string(),
    ])
    .expect("PodMonitors valid against the operator's CRD");
    let listed = k
        .get_json(&["podmonitors", "-n", "weft-system"])
        .expect("podmonitors");
    let mut endpoints: Vec<(String, i64)> = listed["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            (
                m["metadata"]["name"].as_str().unwrap_or("").to_string(),
                m["spec"]["podMetricsEndpoints"][0]["portNumber"]
                    .as_i64()
                    .unwrap_or(0),
            )
        })
        .collect();
    endpoints.sort();
    assert_eq!(
        endpoints,
        [
            ("weft-controller".to_string(), 15014),
            ("weft-waypoints".to_string(), 15020),
            ("ztunnel".to_string(), 15020),
        ]
    );
    for (monitor, selector) in [
        ("weft-controller", "app.kubernetes.io/name=weft-controller"),
        ("ztunnel", "app.kubernetes.io/name=ztunnel"),
    ] {
        let pods = k
            .get_json(&["pods", "-n", "weft-system", "-l", selector])
            .expect("pods");
        let annotated = pods["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["metadata"]["annotations"]["prometheus.io/port"].as_str())
            .collect::<Vec<_>>();
        let port = endpoints
            .iter()
            .find(|(name, _)| name == monitor)
            .map(|(_, port)| port.to_string());
        assert!(
            !annotated.is_empty() && annotated.iter().all(|p| Some(p.to_string()) == port),
            "{monitor} selects pods whose metrics port is {annotated:?}"
        );
    }

    // Uninstall: no weft object left but the CRDs, every node as before.
    let removed = helm
        .output(&[
            "uninstall",
            "weft",
            "--namespace",
            "default",
            "--wait",
            "--timeout=3m",
        ])
        .expect("run helm");
    assert!(removed.status.success(), "helm uninstall: {removed:?}");
    for (i, dir) in conf_dirs.iter().enumerate() {
        wait_until(
            &format!("node-{}'s CNI config as before install", i + 1),
            Duration::from_secs(60),
            || files(dir) == before[i],
        )
        .unwrap_or_else(|e| {
            cluster.print_logs();
            panic!("{e}")
        });
    }
    wait_until("weft-system gone", Duration::from_secs(120), || {
        k.get_json(&["namespace", "weft-system"]).is_err()
    })
    .expect("namespace deleted");
    let left = k
        .run(&[
            "get",
            "clusterroles,clusterrolebindings,gatewayclasses",
            "-l",
            "app.kubernetes.io/part-of=weft",
            "-o",
            "name",
        ])
        .expect("list");
    assert_eq!(left.trim(), "", "cluster-scoped weft objects left");
    for crd in [
        "authorizationpolicies.security.weft.dev",
        "peerauthentications.security.weft.dev",
    ] {
        k.run(&["get", "crd", crd]).expect("CRDs are kept");
    }
}
