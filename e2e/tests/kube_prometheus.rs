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
    (
        "Istio's names: the server's ztunnel, as Kiali's graph and Istio's dashboards query it",
        r#"sum by (source_workload, destination_workload, destination_service_name) (rate(istio_tcp_connections_opened_total{reporter="destination", source_workload="client", source_workload_namespace="shop", source_canonical_service="client", destination_workload="server", destination_workload_namespace="shop", destination_canonical_service="server", destination_cluster="Kubernetes", connection_security_policy="mutual_tls", request_protocol="tcp"}[1m])) > 0"#,
    ),
    (
        "Istio's names: the bytes of those connections, at the client's ztunnel",
        r#"sum(istio_tcp_sent_bytes_total{reporter="source", source_workload="client", destination_workload="server"}) + sum(istio_tcp_received_bytes_total{reporter="source", source_workload="client", destination_workload="server"}) > 0"#,
    ),
];

/// What a connection refused by [`DENY_CLIENT`] must show.
const DENIAL: &[(&str, &str)] = &[
    (
        "ztunnel counts the refusal with its reason",
        r#"sum by (reporter, reason, source_workload_namespace, destination_workload_namespace) (weft_tcp_connections_denied_total{reason="policy", source_workload_namespace="shop", destination_workload_namespace="shop", source_principal="spiffe://cluster.local/ns/shop/sa/client"}) > 0"#,
    ),
    (
        "Istio's names: the refused connection, flagged DENY",
        r#"sum(istio_tcp_connections_opened_total{response_flags="DENY", source_workload="client", destination_workload="server"}) > 0"#,
    ),
];

/// Shown beside a failed claim: every weft TCP series Prometheus has.
const TCP_SERIES: &str = r#"count by (__name__, reporter, reason, source_workload_namespace, destination_workload_namespace, connection_security_policy, instance) ({__name__=~"(weft|istio)_tcp_connections_.*"})"#;

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
    // Cardinality (docs/observability.md): the series each name set holds
    // for this cluster, by the component that reports them.
    for set in ["weft", "istio"] {
        let promql = format!(r#"count by (pod) ({{__name__=~"{set}_.*"}})"#);
        let total = format!(r#"count({{__name__=~"{set}_.*"}})"#);
        let (by, total) = (prometheus.query(&promql), prometheus.query(&total));
        eprintln!("{set}_* series: {total:?}; {by:?}");
    }

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
