//! The narrated demo on the real control plane (`make demo`, `weft-e2e
//! demo`): a Kubernetes cluster of two netns nodes, weft installed from
//! `deploy/` with kubectl, and what the mesh does, shown with the commands a
//! user types. Each claim is checked as it is shown; a claim that does not
//! hold is marked ✗ and makes the demo exit non-zero.

use std::sync::Arc;
use std::time::Duration;

use super::apps::{GET_ONLY, SHOP_WAYPOINT, echo_deployment, service_accounts};
use super::{KubeCluster, KubeClusterConfig, Kubectl, install};
use crate::demo::{Demo, hold_connection, only_hbone_between_pods, trim_lines};
use crate::error::{Error, Result};
use crate::narrate::Narrator;
use crate::pod::Pod;
use crate::process::wait_until;

/// How long the mesh may take to converge after a change.
const CONVERGE: Duration = Duration::from_secs(60);

const DENY_CLIENT: &str = "apiVersion: security.weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: deny-client, namespace: shop}
spec:
  selector: {matchLabels: {app: server}}
  action: DENY
  rules:
  - from:
    - source: {principals: [\"cluster.local/ns/shop/sa/client\"]}
";

const STRICT: &str = "apiVersion: security.weft.dev/v1alpha1
kind: PeerAuthentication
metadata: {name: strict, namespace: shop}
spec:
  mtls: {mode: STRICT}
";

/// Shows and runs `kubectl args…` (as typed: the harness' kubeconfig and
/// namespace are left out of what is shown).
fn kubectl(n: &Narrator, k: &Kubectl, args: &[&str]) -> Result<String> {
    let out = k.run(args)?;
    n.command(
        &format!("kubectl {}", args.join(" ")),
        &trim_lines(&out, 30),
    );
    Ok(out)
}

/// Shows `kubectl apply -f <file>` with the file's content, and applies it.
fn apply(n: &Narrator, k: &Kubectl, file: &str, manifest: &str) -> Result<()> {
    let out = k.apply(manifest)?;
    n.command(
        &format!("kubectl apply -f {file}"),
        &format!("{}\n{}", manifest.trim(), out.trim()),
    );
    Ok(())
}

/// The running pod of Deployment `app` in `namespace`.
fn pod_of(cluster: &KubeCluster, namespace: &str, app: &str) -> Result<Pod> {
    let pods =
        cluster
            .kubectl()
            .get_json(&["pods", "-n", namespace, "-l", &format!("app={app}")])?;
    let name = pods["items"][0]["metadata"]["name"]
        .as_str()
        .ok_or_else(|| Error::Invalid(format!("no pod of {namespace}/{app}")))?
        .to_string();
    cluster.pod(namespace, &name)
}

/// `kubectl exec` into `from`: the e2e app's `args`; its output, or the
/// error kubectl printed.
fn exec_app(
    k: &Kubectl,
    from: &Pod,
    args: &[&str],
) -> (String, std::result::Result<String, String>) {
    let target = ["exec", "-n", from.namespace(), from.name(), "--"];
    let shown = format!(
        "kubectl {} weft-e2e-app {}",
        target.join(" "),
        args.join(" ")
    );
    // The image puts its binary at /usr/local/bin; the path is spelled out
    // because the harness' containers have no PATH lookup through a shell.
    let argv: Vec<&str> = target
        .into_iter()
        .chain(["/usr/local/bin/weft-e2e-app"])
        .chain(args.iter().copied())
        .collect();
    (shown, k.run(&argv).map_err(|e| e.to_string()))
}

/// Runs the demo on a kube cluster.
pub fn run() -> Result<()> {
    let n = Arc::new(Narrator::new());
    let mut demo = Demo::new(n.clone());
    n.section("A real Kubernetes control plane");
    n.say(
        "etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy, CoreDNS and kubectl\n\
         are the upstream programs, built from Go modules. The two nodes are network namespaces on an\n\
         underlay bridge; each runs a kubelet (the harness' own: it runs pods' containers under runc\n\
         from their specs, through the node's real CNI chain) and kube-proxy.",
    );
    let cluster = KubeCluster::up(KubeClusterConfig {
        progress: n.progress(),
        ..KubeClusterConfig::default()
    })?;
    let k = cluster.kubectl();
    kubectl(&n, k, &["get", "nodes", "-o", "wide"])?;

    n.section("Install weft with kubectl");
    install::weft(cluster.control_plane())?;
    n.command(
        "kubectl apply -k deploy/base",
        "the CRDs, weft-system, the controller Deployment, the node agent and ztunnel DaemonSets, RBAC, the GatewayClass",
    );
    install::rolled_out(cluster.control_plane(), 180)?;
    kubectl(&n, k, &["get", "pods", "-n", "weft-system", "-o", "wide"])?;

    n.section("Applications, and the mesh by one label");
    for ns in ["shop", "legacy"] {
        kubectl(&n, k, &["create", "namespace", ns])?;
    }
    k.apply(&service_accounts("shop", &["client", "server"]))?;
    let apps = [
        echo_deployment("shop", "server", "server", 2, ""),
        echo_deployment("shop", "client", "client", 1, ""),
        echo_deployment("legacy", "outsider", "default", 1, ""),
        echo_deployment("legacy", "db", "default", 2, ""),
    ];
    k.apply(&apps.join("---"))?;
    n.show(
        "kubectl apply -f apps.yaml   # shop/{client,server}, legacy/{outsider,db}: echo servers",
    );
    for (ns, app) in [
        ("shop", "server"),
        ("shop", "client"),
        ("legacy", "outsider"),
        ("legacy", "db"),
    ] {
        k.wait_for(ns, "Available", &format!("deployment/{app}"), 120)?;
    }
    kubectl(
        &n,
        k,
        &[
            "label",
            "namespace",
            "shop",
            "weft.dev/dataplane-mode=ambient",
        ],
    )?;
    let client = pod_of(&cluster, "shop", "client")?;
    let server = pod_of(&cluster, "shop", "server")?;
    let outsider = pod_of(&cluster, "legacy", "outsider")?;
    let db = pod_of(&cluster, "legacy", "db")?;
    for pod in [&client, &server] {
        wait_until(&format!("{} in the mesh", pod.key()), CONVERGE, || {
            pod.redirect_rules().is_ok_and(|r| r.present())
                && pod
                    .netns()
                    .listening_tcp_ports()
                    .is_ok_and(|p| [15001, 15006, 15008].iter().all(|port| p.contains(port)))
        })?;
    }
    let rules = client.redirect_rules()?;
    n.command(
        &format!(
            "ip netns exec {} nft list table inet weft",
            client.netns().name()
        ),
        &trim_lines(&rules.text, 25),
    );
    demo.check(
        rules.present() && outsider.redirect_rules()?.absent(),
        "the running shop pods were captured without a restart (the node agent found them); legacy's were not",
    );

    n.section("Traffic across nodes, through the tunnel");
    let secret = "hello-from-the-demo";
    let to = server.echo_tcp().to_string();
    let capture = cluster.capture("demo")?;
    let (shown, reply) = exec_app(k, &client, &["tcp", &to, "--message", secret]);
    let capture = capture.finish()?;
    n.command(&shown, &reply.clone().unwrap_or_else(|e| e));
    demo.check(
        reply
            .as_deref()
            .is_ok_and(|r| r.contains(&client.ip().to_string())),
        &format!(
            "the server saw the caller as {}: the client's own address",
            client.ip()
        ),
    );
    only_hbone_between_pods(&mut demo, &n, &capture, secret);
    let capture = cluster.capture("demo-plain")?;
    let (shown, _) = exec_app(
        k,
        &outsider,
        &[
            "tcp",
            &db.echo_tcp().to_string(),
            "--message",
            "legacy-says-hi",
        ],
    );
    let plain = capture.finish()?;
    n.show(&shown);
    demo.check(
        plain.contains("legacy-says-hi"),
        "for contrast, legacy/outsider → legacy/db (outside the mesh) crosses in plaintext",
    );

    n.section("What weftctl sees, through the API server");
    let weftctl = |args: &[&str]| -> Result<String> {
        let out = cluster.weftctl(args)?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        n.command(
            &format!("weftctl {}", args.join(" ")),
            &trim_lines(&text, 20),
        );
        Ok(text)
    };
    weftctl(&["workloads", "-n", "shop"])?;
    let held = hold_connection(&client, &server)?;
    let tunnels = weftctl(&["tunnels", "-n", "shop"])?;
    drop(held);
    demo.check(
        tunnels
            .lines()
            .any(|l| l.starts_with("node-1") && l.contains("shop/server"))
            && tunnels
                .lines()
                .any(|l| l.starts_with("node-2") && l.contains("shop/client")),
        "the held connection's tunnel, on both nodes (port-forward to each ztunnel's admin API)",
    );

    n.section("An L4 DENY policy");
    apply(&n, k, "deny-client.yaml", DENY_CLIENT)?;
    let denied = wait_until("the DENY in force", CONVERGE, || {
        exec_app(k, &client, &["tcp", &to, "--message", "let me in"])
            .1
            .is_err()
    });
    demo.check(denied.is_ok(), "shop/client's connection is refused");
    kubectl(
        &n,
        k,
        &["delete", "authorizationpolicy", "-n", "shop", "deny-client"],
    )?;
    let allowed = wait_until("the DENY gone", CONVERGE, || {
        exec_app(k, &client, &["tcp", &to, "--message", "again"])
            .1
            .is_ok()
    });
    demo.check(allowed.is_ok(), "policy deleted: allowed again");

    n.section("A waypoint for L7 policy");
    apply(&n, k, "waypoint.yaml", SHOP_WAYPOINT)?;
    k.wait_for("shop", "Programmed", "gateway/shop-waypoint", 180)?;
    kubectl(&n, k, &["get", "gateway", "-n", "shop"])?;
    apply(&n, k, "get-only.yaml", GET_ONLY)?;
    let vip = k.cluster_ip("shop", "server")?;
    let url = format!("http://{vip}/orders");
    let status = |method: &str| {
        exec_app(k, &client, &["http", &url, "--method", method])
            .1
            .ok()
            .and_then(|out| out.lines().next().map(str::to_string))
            .unwrap_or_default()
    };
    let l7 = wait_until("POST refused at the waypoint", CONVERGE, || {
        status("POST") == "HTTP 403" && status("GET") == "HTTP 200"
    });
    let (shown, get) = exec_app(k, &client, &["http", &url]);
    n.command(&shown, &trim_lines(&get.unwrap_or_else(|e| e), 3));
    let (shown, post) = exec_app(k, &client, &["http", &url, "--method", "POST"]);
    n.command(&shown, &trim_lines(&post.unwrap_or_else(|e| e), 3));
    demo.check(
        l7.is_ok(),
        "at the waypoint: GET allowed, POST refused with 403",
    );

    n.section("STRICT mTLS");
    let plaintext = |from: &Pod| exec_app(k, from, &["tcp", &to, "--message", "plaintext"]).1;
    demo.check(
        plaintext(&outsider).is_ok(),
        "PERMISSIVE (the default): legacy/outsider's plaintext reaches shop/server",
    );
    apply(&n, k, "strict.yaml", STRICT)?;
    let strict = wait_until("STRICT in force", CONVERGE, || {
        plaintext(&outsider).is_err()
    });
    demo.check(
        strict.is_ok(),
        "STRICT: the same plaintext connection is refused",
    );
    demo.check(
        plaintext(&client).is_ok(),
        "the mesh's own (mTLS) traffic still flows",
    );

    n.section("Done");
    n.say("Tearing the cluster down.");
    drop(cluster);
    demo.finish()
}
