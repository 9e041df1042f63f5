//! The netns nodes as a Kubernetes cluster (docs/e2e.md): the control plane
//! on the underlay, a kubelet and kube-proxy per node. Pods are created with
//! kubectl, scheduled by kube-scheduler, run by the harness' kubelet from
//! their specs through the node's CNI chain, and reached by Service through
//! kube-proxy. Needs root.

mod common;

use std::time::Duration;

use serde_json::Value;
use weft_e2e::kube::{KubeCluster, KubeClusterConfig};
use weft_e2e::process::wait_until;

const READY_WITHIN: Duration = Duration::from_secs(60);

fn up() -> KubeCluster {
    KubeCluster::up(KubeClusterConfig::default()).expect("kube cluster up")
}

/// A cluster with deploy/ applied with kubectl and the controller Available.
fn installed() -> KubeCluster {
    let cluster = up();
    weft_e2e::kube::install::weft(cluster.control_plane()).expect("install weft with kubectl");
    cluster
        .kubectl()
        .wait_for(
            "weft-system",
            "Available",
            "deployment/weft-controller",
            120,
        )
        .unwrap_or_else(|e| {
            cluster.print_logs();
            panic!("the controller Deployment becomes Available: {e}")
        });
    cluster
}

fn pod_json(cluster: &KubeCluster, namespace: &str, name: &str) -> Option<Value> {
    cluster
        .kubectl()
        .get_json(&["pod", "-n", namespace, name])
        .ok()
}

fn phase(cluster: &KubeCluster, namespace: &str, name: &str) -> String {
    pod_json(cluster, namespace, name)
        .and_then(|p| p["status"]["phase"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Runs a one-shot pod (restartPolicy Never) to its end; returns its log.
fn run_to_completion(cluster: &KubeCluster, namespace: &str, name: &str, manifest: &str) -> String {
    cluster.kubectl().apply(manifest).expect("one-shot pod");
    wait_until(&format!("pod {name} to finish"), READY_WITHIN, || {
        matches!(
            phase(cluster, namespace, name).as_str(),
            "Succeeded" | "Failed"
        )
    })
    .expect("the pod finishes");
    let log = cluster
        .container_log(namespace, name, "main")
        .unwrap_or_else(|e| format!("(no log: {e})"));
    assert_eq!(
        phase(cluster, namespace, name),
        "Succeeded",
        "pod {name} failed; its log:\n{log}"
    );
    log
}

const SERVER: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: greeting, namespace: apps}
data: {greeting: "hello from a ConfigMap"}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo, namespace: apps}
spec:
  replicas: 1
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      nodeSelector: {kubernetes.io/hostname: node-2}
      terminationGracePeriodSeconds: 6
      containers:
        - name: main
          image: ghcr.io/weft-mesh/e2e-app:latest
          args: ["serve", "--name", "$(POD_NAMESPACE)/$(POD_NAME)"]
          env:
            - name: POD_NAME
              valueFrom: {fieldRef: {fieldPath: metadata.name}}
            - name: POD_NAMESPACE
              valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
          ports:
            - {name: http, containerPort: 8080}
            - {name: tcp, containerPort: 9000}
          readinessProbe:
            httpGet: {path: /, port: http}
            periodSeconds: 1
          livenessProbe:
            tcpSocket: {port: tcp}
          securityContext:
            runAsNonRoot: true
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities: {drop: [ALL]}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: apps}
spec:
  selector: {app: echo}
  ports:
    - {name: http, port: 80, targetPort: http}
"#;

#[test]
fn pods_run_from_their_specs_on_the_netns_nodes_and_services_route() {
    let _one = common::serial();
    let cluster = up();
    let k = cluster.kubectl();

    // Both nodes registered by their kubelets, Ready, and schedulable (the
    // node lifecycle controller lifted the not-ready taint).
    wait_until("both nodes Ready and untainted", READY_WITHIN, || {
        let Ok(nodes) = k.get_json(&["nodes"]) else {
            return false;
        };
        let items = nodes["items"].as_array().cloned().unwrap_or_default();
        items.len() == 2
            && items.iter().all(|n| {
                common::kube::condition(n, "Ready").is_some_and(|c| c["status"] == "True")
                    && n["spec"]["taints"].as_array().is_none_or(Vec::is_empty)
            })
    })
    .expect("nodes Ready");

    k.run(&["create", "namespace", "apps"]).expect("namespace");
    k.apply(SERVER).expect("server objects");
    k.wait_for("apps", "Available", "deployment/echo", 90)
        .unwrap_or_else(|e| {
            cluster.print_logs();
            panic!("the echo Deployment becomes Available: {e}")
        });
    let pods = k
        .get_json(&["pods", "-n", "apps", "-l", "app=echo"])
        .expect("pods");
    let pod = &pods["items"][0];
    let name = pod["metadata"]["name"].as_str().expect("name").to_string();
    let ip = pod["status"]["podIP"]
        .as_str()
        .expect("a pod IP")
        .to_string();
    assert!(ip.starts_with("10.244.2."), "node-2's pod CIDR: {ip}");
    assert_eq!(pod["status"]["hostIP"], "10.10.0.12");
    assert_eq!(pod["spec"]["nodeName"], "node-2");

    // A one-shot client on node 1 reaches the server through the Service's
    // cluster IP (kube-proxy's rules on node 1) and by pod IP; the reply
    // names the pod from its downward-API environment.
    let vip = k.cluster_ip("apps", "echo").expect("cluster IP");
    // kube-proxy programs the endpoint a moment after the pod is Ready:
    // wait until node 1 itself reaches the Service.
    let app = weft_e2e::binaries::Binaries::locate()
        .expect("binaries")
        .path(weft_e2e::binaries::APP);
    let node1 = cluster.node(1).expect("node 1");
    wait_until("node 1 reaching the Service", READY_WITHIN, || {
        weft_e2e::exec::output(node1.netns().command(&app).args([
            "http",
            &format!("http://{vip}:80/"),
            "--timeout-seconds",
            "2",
        ]))
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("HTTP 200"))
    })
    .expect("kube-proxy routes the cluster IP on node 1");
    let client = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: apps}}
spec:
  nodeName: node-1
  restartPolicy: Never
  containers:
    - name: main
      image: e2e-app
      command: ["/bin/sh", "-c"]
      args:
        - |
          set -e
          /usr/local/bin/weft-e2e-app http http://{vip}:80/
          /usr/local/bin/weft-e2e-app tcp {ip}:9000 --message via-pod-ip
          echo "dns=$(getent hosts echo.apps.svc.cluster.local | cut -d' ' -f1)"
          echo "uid=$(id -u) greeting=$(cat /config/greeting) ns=$(cat /podinfo/namespace) api=$KUBERNETES_SERVICE_HOST echo=$ECHO_SERVICE_HOST"
      volumeMounts:
        - {{name: config, mountPath: /config}}
        - {{name: podinfo, mountPath: /podinfo}}
  volumes:
    - name: config
      configMap: {{name: greeting}}
    - name: podinfo
      downwardAPI:
        items: [{{path: namespace, fieldRef: {{fieldPath: metadata.namespace}}}}]
"#
    );
    let log = run_to_completion(&cluster, "apps", "client", &client);
    assert!(log.contains("HTTP 200"), "{log}");
    assert!(
        log.contains(&format!("apps/{name}")),
        "the reply names the pod: {log}"
    );
    assert!(log.contains("via-pod-ip"), "{log}");
    assert!(
        log.contains("uid=65532 "),
        "the image's non-root user: {log}"
    );
    assert!(log.contains("greeting=hello from a ConfigMap"), "{log}");
    assert!(log.contains("ns=apps"), "{log}");
    assert!(log.contains("api=10.96.0.1"), "{log}");
    assert!(log.contains(&format!("echo={vip}")), "{log}");
    assert!(
        log.contains(&format!("dns={vip}\n")),
        "the cluster DNS names the Service: {log}"
    );

    // Deleted with its grace period, the pod keeps serving until the period
    // ends (its process ignores SIGTERM as a container's init does), then
    // its object and its network namespace are gone.
    let deleted = std::time::Instant::now();
    k.run(&["delete", "pod", "-n", "apps", &name, "--wait=false"])
        .expect("delete");
    let node2 = cluster.node(2).expect("node 2");
    std::thread::sleep(Duration::from_secs(2));
    let during = weft_e2e::exec::output(node2.netns().command(&app).args([
        "tcp",
        &format!("{ip}:9000"),
        "--message",
        "in-grace",
    ]))
    .expect("client");
    assert!(
        String::from_utf8_lossy(&during.stdout).contains("in-grace"),
        "a terminating pod still serves in its grace period: {}",
        String::from_utf8_lossy(&during.stderr)
    );
    assert!(
        pod_json(&cluster, "apps", &name)
            .is_some_and(|p| !p["metadata"]["deletionTimestamp"].is_null())
    );
    wait_until("the pod object gone", Duration::from_secs(30), || {
        pod_json(&cluster, "apps", &name).is_none()
    })
    .expect("released after its grace period");
    let waited = deleted.elapsed();
    assert!(
        waited >= Duration::from_secs(5),
        "released after {waited:?}, before its 6 s grace period"
    );
    let netns = cluster.state().run_id.netns(&format!("pod-apps-{name}"));
    assert!(!weft_e2e::netns::Netns::exists(&netns), "{netns} removed");

    let run_id = cluster.state().run_id.clone();
    let dir = cluster.dir().to_path_buf();
    drop(cluster);
    let left = weft_e2e::cleanup::leftovers(&run_id, &dir, &[]);
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn a_pod_that_cannot_run_says_why_in_its_status() {
    let _one = common::serial();
    let cluster = up();
    let k = cluster.kubectl();
    k.run(&["create", "namespace", "bad"]).expect("namespace");
    let manifest = r#"
apiVersion: v1
kind: Pod
metadata: {name: unknown-image, namespace: bad}
spec:
  nodeName: node-1
  containers: [{name: main, image: docker.io/library/nginx:1}]
---
apiVersion: v1
kind: Pod
metadata: {name: root-image, namespace: bad}
spec:
  nodeName: node-1
  containers:
    - name: main
      image: ztunnel
      securityContext: {runAsNonRoot: true}
---
apiVersion: v1
kind: Pod
metadata: {name: missing-config, namespace: bad}
spec:
  nodeName: node-2
  containers:
    - name: main
      image: e2e-app
      args: [serve]
      volumeMounts: [{name: c, mountPath: /c}]
  volumes: [{name: c, configMap: {name: nowhere}}]
---
apiVersion: v1
kind: Pod
metadata: {name: missing-entrypoint, namespace: bad}
spec:
  nodeName: node-2
  containers: [{name: main, image: broken-entrypoint}]
---
apiVersion: v1
kind: Pod
metadata: {name: wrong-user, namespace: bad}
spec:
  nodeName: node-1
  containers: [{name: main, image: root-only, args: [serve]}]
---
apiVersion: v1
kind: Pod
metadata: {name: wrong-digest, namespace: bad}
spec:
  nodeName: node-2
  containers:
    - name: main
      image: e2e-app@sha256:0000000000000000000000000000000000000000000000000000000000000000
"#;
    k.apply(manifest).expect("pods");
    let waiting = |name: &str| -> Option<(String, String)> {
        let pod = pod_json(&cluster, "bad", name)?;
        let w = &pod["status"]["containerStatuses"][0]["state"]["waiting"];
        Some((
            w["reason"].as_str()?.to_string(),
            w["message"].as_str()?.to_string(),
        ))
    };
    for (name, reason, says) in [
        ("unknown-image", "ErrImagePull", "\"nginx\""),
        ("root-image", "CreateContainerConfigError", "runAsNonRoot"),
        (
            "missing-config",
            "CreateContainerConfigError",
            "ConfigMap \"nowhere\" not found",
        ),
        // The image's entrypoint is not in its filesystem.
        (
            "missing-entrypoint",
            "RunContainerError",
            "\"/usr/local/bin/not-in-this-image\": no such file in the image",
        ),
        // Its entrypoint is root's alone (0700) and it runs as 65532.
        (
            "wrong-user",
            "RunContainerError",
            "\"/usr/local/bin/weft-e2e-app\": permission denied",
        ),
        ("wrong-digest", "ErrImagePull", "not the pinned digest"),
    ] {
        wait_until(&format!("{name} to say {reason}"), READY_WITHIN, || {
            waiting(name).is_some_and(|(r, m)| r == reason && m.contains(says))
        })
        .unwrap_or_else(|e| panic!("{e}: {:?}", waiting(name)));
        assert_eq!(phase(&cluster, "bad", name), "Pending");
    }
    // The missing ConfigMap appears: the pod starts, as on a real node.
    k.run(&[
        "create",
        "configmap",
        "-n",
        "bad",
        "nowhere",
        "--from-literal=k=v",
    ])
    .expect("configmap");
    wait_until("missing-config to run", READY_WITHIN, || {
        phase(&cluster, "bad", "missing-config") == "Running"
    })
    .expect("the pod starts once its ConfigMap exists");
    // And an image whose entrypoint its user may run runs it from its own
    // filesystem: weftctl's (the deploy/ tests run the controller, node
    // agent and ztunnel images, kube_mesh the waypoint's).
    let log = run_to_completion(
        &cluster,
        "bad",
        "weftctl",
        r#"
apiVersion: v1
kind: Pod
metadata: {name: weftctl, namespace: bad}
spec:
  nodeName: node-1
  restartPolicy: Never
  securityContext: {runAsNonRoot: true}
  containers:
    - {name: main, image: ghcr.io/weft-mesh/weftctl:latest, args: [--version]}
"#,
    );
    assert!(log.contains("weftctl"), "{log}");
}

#[test]
fn deploy_installs_and_its_controller_pods_run_on_the_nodes_until_ready() {
    let _one = common::serial();
    let cluster = installed();
    let k = cluster.kubectl();
    let pods = k
        .get_json(&[
            "pods",
            "-n",
            "weft-system",
            "-l",
            "app.kubernetes.io/name=weft-controller",
        ])
        .expect("pods");
    let items = pods["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), 2, "two replicas");
    let names: Vec<String> = items
        .iter()
        .map(|p| {
            p["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    for pod in &items {
        assert!(
            common::kube::condition(pod, "Ready").is_some_and(|c| c["status"] == "True"),
            "{pod}"
        );
    }
    // The replicas run as the ServiceAccount deploy/ gives them, with its
    // projected token, against the API server behind the `kubernetes`
    // Service: one of them holds the Lease and accepts the GatewayClass.
    wait_until("a replica holds the controller Lease", READY_WITHIN, || {
        k.get_json(&["lease", "-n", "weft-system", "weft-controller"])
            .ok()
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
            .is_some_and(|h| names.contains(&h))
    })
    .expect("leader elected among the pods");
    wait_until("the GatewayClass Accepted", READY_WITHIN, || {
        k.get_json(&["gatewayclass", "weft-waypoint"])
            .ok()
            .and_then(|g| common::kube::condition(&g, "Accepted"))
            .is_some_and(|c| c["status"] == "True")
    })
    .expect("the leader writes status");
    // Every node runs the node agent and ztunnel from their DaemonSets: the
    // agent installs weft-cni into the node's own conflist from its image,
    // ztunnel finds the controller by its Service's DNS name, gets its
    // certificates with a token bound to its pod, and reports ready.
    for ds in ["weft-node-agent", "ztunnel"] {
        k.run(&[
            "rollout",
            "status",
            "-n",
            "weft-system",
            &format!("daemonset/{ds}"),
            "--timeout=120s",
        ])
        .unwrap_or_else(|e| {
            cluster.print_logs();
            panic!("DaemonSet {ds} rolls out: {e}")
        });
    }
    for node in cluster.nodes() {
        let (_, conflist) = weft_e2e::cni::active_conflist(&node.cni_conf_dir()).expect("conflist");
        assert_eq!(
            weft_e2e::cni::plugin_types(&conflist)
                .last()
                .map(String::as_str),
            Some("weft-cni"),
            "{}: weft-cni chained",
            node.name()
        );
        assert!(node.cni_bin_dir().join("weft-cni").is_file());
    }
    // ztunnel serves metrics and readiness on its node's own address only.
    for node in cluster.nodes() {
        let listening =
            weft_e2e::exec::output(node.netns().command("ss").args(["-Htln"])).expect("ss");
        let text = String::from_utf8_lossy(&listening.stdout);
        let ip = weft_e2e::addresses::node_ip(node.index());
        for port in [15020, 15021] {
            let bound: Vec<&str> = text
                .lines()
                .filter_map(|l| l.split_whitespace().nth(3))
                .filter(|local| local.ends_with(&format!(":{port}")))
                .collect();
            assert_eq!(
                bound,
                vec![format!("{ip}:{port}")],
                "{}: {text}",
                node.name()
            );
        }
    }
    for name in &names {
        let log = cluster
            .container_log("weft-system", name, "controller")
            .expect("controller log");
        assert!(!log.contains("forbidden"), "{name}: {log}");
    }
}

/// The components' processes of this run, by cgroup: (name, VmRSS in kB).
fn component_rss(cluster: &KubeCluster) -> Vec<(String, u64)> {
    let run = cluster.state().run_id.as_str().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let dir = entry.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let comm = comm.trim();
        if !["weft-controller", "ztunnel", "weft-node-agent", "waypoint"].contains(&comm) {
            continue;
        }
        let cgroup = std::fs::read_to_string(dir.join("cgroup")).unwrap_or_default();
        if !cgroup.contains(&run) {
            continue;
        }
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        let rss = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok());
        if let Some(rss) = rss {
            found.push((comm.to_string(), rss));
        }
    }
    found.sort();
    found
}

/// Idle memory of each component as its image runs in the cluster, for
/// docs/benchmarks.md (a measurement, not a check): deploy/ installed, a
/// waypoint deployed for a Gateway, no traffic, a minute to settle. Run
/// with the shipped binaries:
/// `WEFT_E2E_BIN_DIR=<dir with the dist build> cargo test -p weft-e2e --test kube_nodes idle_rss -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement for docs/benchmarks.md"]
fn idle_rss_of_each_component() {
    let _one = common::serial();
    let cluster = installed();
    let k = cluster.kubectl();
    k.run(&["create", "namespace", "shop"]).expect("namespace");
    k.apply(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: waypoint, namespace: shop}\nspec:\n  gatewayClassName: weft-waypoint\n  listeners: [{name: mesh, port: 15008, protocol: HBONE}]\n",
    )
    .expect("gateway");
    wait_until("a waypoint process", Duration::from_secs(120), || {
        component_rss(&cluster).iter().any(|(c, _)| c == "waypoint")
    })
    .expect("the deployer runs a waypoint");
    std::thread::sleep(Duration::from_secs(60));
    eprintln!("component        VmRSS");
    for (component, rss) in component_rss(&cluster) {
        eprintln!("{component:<16} {:.1} MiB", rss as f64 / 1024.0);
    }
}
