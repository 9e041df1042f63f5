//! weft's metrics as an operator's Prometheus sees them (docs/observability.md):
//! upstream Prometheus, built from Go modules, discovers weft's pods on the
//! kube cluster through the API server by the `prometheus.io/*` annotations
//! deploy/ ships, scrapes them, and PromQL through its HTTP API finds mesh
//! traffic and a policy denial with the labels dashboards group by. Needs
//! root.

mod common;

use std::time::Duration;

use weft_e2e::Pod;
use weft_e2e::kube::apps::{echo_deployment, service_accounts};
use weft_e2e::kube::prometheus::{JOB, Prometheus};
use weft_e2e::kube::{KubeCluster, KubeClusterConfig, install};
use weft_e2e::process::wait_until;

/// How long the cluster may take to run what was applied.
const SETTLE: Duration = Duration::from_secs(90);

/// How long a scrape may take to show something: discovery, a few 2 s
/// scrape intervals, and a loaded machine.
const SCRAPED: Duration = Duration::from_secs(60);

/// What cross-node traffic from `shop/client` to `shop/server` must show,
/// one claim per row: what it says, and PromQL whose answer must hold at
/// least one series.
const TRAFFIC: &[(&str, &str)] = &[
    (
        "the server's ztunnel counts the client's connections as mutual TLS",
        r#"sum by (reporter, source_workload_namespace, destination_workload_namespace, connection_security_policy) (weft_tcp_connections_opened_total{reporter="destination", source_workload_namespace="shop", destination_workload_namespace="shop", connection_security_policy="mutual_tls", source_principal="spiffe://cluster.local/ns/shop/sa/client"}) > 0"#,
    ),
    (
        "the client's ztunnel counts them too, as their source",
        r#"sum by (reporter, source_workload_namespace, destination_workload_namespace, connection_security_policy) (weft_tcp_connections_opened_total{reporter="source", source_workload_namespace="shop", destination_workload_namespace="shop", connection_security_policy="mutual_tls", source_principal="spiffe://cluster.local/ns/shop/sa/client"}) > 0"#,
    ),
];

/// What a connection refused by [`DENY_CLIENT`] must show.
const DENIAL: &[(&str, &str)] = &[(
    "ztunnel counts the refusal with its reason",
    r#"sum by (reporter, reason, source_workload_namespace, destination_workload_namespace) (weft_tcp_connections_denied_total{reason="policy", source_workload_namespace="shop", destination_workload_namespace="shop", source_principal="spiffe://cluster.local/ns/shop/sa/client"}) > 0"#,
)];

/// Shown beside a failed claim: every weft TCP series Prometheus has.
const TCP_SERIES: &str = r#"count by (__name__, reporter, reason, source_workload_namespace, destination_workload_namespace, connection_security_policy, instance) ({__name__=~"weft_tcp_connections_.*"})"#;

/// The namespace of the client and the server, in the mesh.
const SHOP: &str = "apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {weft.dev/dataplane-mode: ambient}}
";

/// Refuses the client's identity at the server.
const DENY_CLIENT: &str = r#"apiVersion: security.weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: deny-client, namespace: shop}
spec: {selector: {matchLabels: {app: server}}, action: DENY, rules: [{from: [{source: {principals: ["cluster.local/ns/shop/sa/client"]}}]}]}
"#;

/// Waits for each claim of `claims`, failing with what Prometheus has.
fn expect_series(prometheus: &Prometheus, claims: &[(&str, &str)]) {
    for (what, promql) in claims {
        match prometheus.wait_for(promql, SCRAPED) {
            Ok(series) => eprintln!("{what}: {series}"),
            Err(e) => {
                let series = prometheus
                    .query(TCP_SERIES)
                    .map_or_else(|e| e.to_string(), |v| format!("{v:#}"));
                panic!("{what}: {e}\nweft_tcp series:\n{series}");
            }
        }
    }
}

/// The running pod of Deployment `shop/<app>`.
fn shop_pod(cluster: &KubeCluster, app: &str) -> Pod {
    let selector = format!("--selector=app={app}");
    let jsonpath = "--output=jsonpath={.items[0].metadata.name}";
    let get = ["get", "pods", "--namespace=shop", &selector, jsonpath];
    let name = cluster.kubectl().run(&get).expect("the pod's name");
    cluster.pod("shop", name.trim()).expect("pod")
}

#[test]
fn prometheus_discovers_weft_by_its_annotations_and_sees_mesh_traffic_and_denials() {
    let _one = common::serial();
    // Built (minutes on a cold machine) before there is a cluster to idle.
    weft_e2e::kube::prometheus::binary().expect("prometheus built");
    let cluster = KubeCluster::up(KubeClusterConfig::default()).expect("kube cluster up");
    let plane = cluster.control_plane();
    install::weft(plane).expect("install weft with kubectl");
    if let Err(e) = install::rolled_out(plane, 120) {
        cluster.print_logs();
        panic!("weft rolls out: {e}");
    }
    // Dropped before the cluster: stopped while the API server still runs.
    let prometheus = Prometheus::start(&cluster).expect("start prometheus");

    // Every controller replica and every node's ztunnel, found by its
    // annotations alone, is scraped.
    let k = cluster.kubectl();
    let weft = "--selector=app.kubernetes.io/name in (weft-controller, ztunnel)";
    let jsonpath = "--output=jsonpath={.items[*].metadata.name}";
    let pods = k.run(&["get", "pods", "--namespace=weft-system", weft, jsonpath]);
    let pods = pods.expect("weft's pods");
    let names: Vec<&str> = pods.split_whitespace().collect();
    assert_eq!(
        names.len(),
        4,
        "two controllers and two ztunnels: {names:?}"
    );
    for name in &names {
        let up = format!(r#"up{{job="{JOB}", namespace="weft-system", pod="{name}"}} == 1"#);
        if let Err(e) = prometheus.wait_for(&up, SCRAPED) {
            panic!("weft-system/{name} scraped: {e}");
        }
    }
    eprintln!("prometheus scrapes:\n{}", prometheus.describe_targets());

    // A client on node 1 and a server on node 2, in a namespace applied
    // enrolled, as a GitOps repository would declare it.
    let shop = [
        SHOP.to_string(),
        service_accounts("shop", &["client", "server"]),
        echo_deployment("shop", "server", "server", 2, ""),
        echo_deployment("shop", "client", "client", 1, ""),
    ];
    k.apply(&shop.join("---\n")).expect("apply shop");
    k.run(&[
        "wait",
        "-n",
        "shop",
        "--for=condition=Available",
        "deployment",
        "--all",
        "--timeout=90s",
    ])
    .expect("shop's deployments Available");
    let (client, server) = (shop_pod(&cluster, "client"), shop_pod(&cluster, "server"));
    wait_until("a first exchange through the mesh", SETTLE, || {
        client.redirect_rules().is_ok_and(|r| r.present())
            && client.tcp_echo(server.echo_tcp(), "first").is_ok()
    })
    .expect("the client reaches the server");
    let report = common::load(&client, server.echo_tcp(), 10, 3);
    assert!(
        report.succeeded > 0 && report.failed == 0,
        "cross-node connections: {report:?}"
    );
    expect_series(&prometheus, TRAFFIC);

    // A DENY for the client: its connections are refused and counted.
    k.apply(DENY_CLIENT).expect("policy");
    wait_until("the client refused", SETTLE, || {
        client
            .tcp_echo_result(server.echo_tcp(), "denied")
            .is_ok_and(|r| r.is_err())
    })
    .expect("the DENY in force");
    expect_series(&prometheus, DENIAL);
}
