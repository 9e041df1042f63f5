//! weft's metrics as an operator's Prometheus sees them (docs/observability.md):
//! upstream Prometheus, built from Go modules, discovers weft's pods on the
//! kube cluster through the API server by the `prometheus.io/*` annotations
//! deploy/ ships, scrapes them, and PromQL through its HTTP API finds mesh
//! traffic and a policy denial with the labels dashboards group by; then,
//! with a waypoint in front of the server (HTTP with 403s, a mirror, TCP
//! tunnels), every query of every dashboard deploy/dashboards ships returns
//! data. Needs root (the well-formedness test does not).

mod common;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use weft_e2e::Pod;
use weft_e2e::kube::apps::{GET_ONLY, SHOP_WAYPOINT, echo_deployment, service_accounts};
use weft_e2e::kube::dashboards::{self, Dashboard};
use weft_e2e::kube::prometheus::{JOB, Prometheus};
use weft_e2e::kube::{KubeCluster, KubeClusterConfig, install};
use weft_e2e::netns::Netns;
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

/// The Service bound to the waypoint also carries the echo server's TCP
/// port, with no HTTP on it: the waypoint tunnels it as TCP.
const TCP_PORT: &str = r#"[{"op":"add","path":"/spec/ports/-","value":{"name":"tcp","port":9000,"targetPort":9000,"appProtocol":"tcp"}}]"#;

/// A copy of every request to `shop/server` goes to it again: the
/// waypoint counts the mirror's result.
const MIRRORED: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: mirrored, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: server, port: 80}]
  rules:
    - backendRefs: [{name: server, port: 80}]
      filters: [{type: RequestMirror, requestMirror: {backendRef: {name: server, port: 80}}}]
"#;

/// Dashboard panels whose series only exist after an event this test does
/// not cause, as (dashboard uid, panel title, the metric, why). Their
/// queries must still be valid PromQL, and the metric a name weft's sources
/// count; only the requirement of data is waived.
const NO_DATA_EXPECTED: &[(&str, &str, &str, &str)] = &[
    (
        "weft-ztunnel",
        "Config NACKs",
        "weft_config_nacks_total",
        "counted on a rejected config only; nothing registers it at zero",
    ),
    (
        "weft-controller",
        "Config NACKs received",
        "weft_config_nacks_total",
        "counted on a rejected config only; nothing registers it at zero",
    ),
    (
        "weft-controller",
        "Registry errors/s by kind",
        "weft_registry_errors_total",
        "counted when a watch of the API server fails only; nothing registers it at zero",
    ),
    (
        "weft-controller",
        "Writer errors/s by kind",
        "weft_writer_errors_total",
        "counted when a write to the API server fails only; nothing registers it at zero",
    ),
];

/// Where weft's metrics are counted, to check an allow-listed name.
const SOURCES: &[&str] = &["crates", "controller", "ztunnel", "waypoint"];

/// How long every dashboard query together may retry before its panel is
/// reported empty (scrapes every 2 s; the last events are seconds old).
const PANELS_SETTLE: Duration = Duration::from_secs(30);

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

/// Whether `name` appears quoted in weft's Rust sources.
fn counted_in_sources(name: &str) -> bool {
    fn search(dir: &std::path::Path, needle: &str) -> bool {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return false;
        };
        entries.filter_map(Result::ok).any(|e| {
            let path = e.path();
            if path.is_dir() {
                search(&path, needle)
            } else {
                path.extension().is_some_and(|x| x == "rs")
                    && std::fs::read_to_string(&path).is_ok_and(|t| t.contains(needle))
            }
        })
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let needle = format!("\"{name}\"");
    SOURCES.iter().any(|dir| search(&root.join(dir), &needle))
}

/// The values each dashboard variable takes in this cluster; a variable
/// with several runs the dashboard once per value. A variable not listed
/// takes what its own query returns (all of them for a multi-value one, as
/// Grafana's "All").
fn preferred(server_node: &str) -> BTreeMap<&'static str, Vec<String>> {
    BTreeMap::from([
        ("namespace", vec!["shop".to_string()]),
        // Inbound panels have data for the server, outbound for the client.
        ("workload", vec!["server".to_string(), "client".to_string()]),
        ("node", vec![server_node.to_string()]),
    ])
}

/// The variable bindings `dashboard` is run with: each variable's values
/// from Prometheus (its `label_values` query must return some), narrowed
/// to the preferred ones.
fn bindings(
    prometheus: &Prometheus,
    dashboard: &Dashboard,
    preferred: &BTreeMap<&str, Vec<String>>,
) -> Vec<BTreeMap<String, String>> {
    let base = BTreeMap::from([("__rate_interval".to_string(), "1m".to_string())]);
    let mut bindings = vec![base];
    for var in dashboard.variables() {
        let Some(query) = var.query.as_deref() else {
            continue; // the datasource
        };
        let (selector, label) = dashboards::label_values(query).expect("label_values");
        bindings = bindings
            .into_iter()
            .flat_map(|binding| {
                let promql =
                    dashboards::values_promql(&dashboards::substitute(&selector, &binding), &label);
                let found: Vec<String> = match prometheus.wait_for(&promql, PANELS_SETTLE) {
                    Ok(series) => series
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|s| s["metric"][&label].as_str().map(str::to_string))
                        .collect(),
                    Err(e) => panic!(
                        "{}: variable {} ({query}) has no values: {e}",
                        dashboard.title(),
                        var.name
                    ),
                };
                let chosen: Vec<String> = match preferred.get(var.name.as_str()) {
                    Some(values) => values.clone(),
                    None if var.multi => vec![dashboards::regex_of(&found)],
                    None => found.into_iter().take(1).collect(),
                };
                let name = var.name.clone();
                chosen.into_iter().map(move |value| {
                    let mut next = binding.clone();
                    next.insert(name.clone(), value);
                    next
                })
            })
            .collect();
    }
    bindings
}

/// Runs every target of every dashboard with each of its bindings; a
/// target must return series under at least one, unless its panel is in
/// [`NO_DATA_EXPECTED`]. Panics listing every empty or failing one.
fn every_panel_has_data(prometheus: &Prometheus, server_node: &str) {
    let preferred = preferred(server_node);
    let mut pending = Vec::new();
    for dashboard in dashboards::load().expect("deploy/dashboards") {
        let bindings = bindings(prometheus, &dashboard, &preferred);
        for target in dashboard.targets() {
            let allowed = NO_DATA_EXPECTED
                .iter()
                .find(|(uid, panel, _, _)| *uid == dashboard.uid() && *panel == target.panel);
            let exprs: Vec<(String, String)> = bindings
                .iter()
                .map(|b| {
                    let expr = dashboards::substitute(&target.expr, b);
                    let named: Vec<String> = b
                        .iter()
                        .filter(|(k, _)| !k.starts_with("__") && target.expr.contains(k.as_str()))
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect();
                    (named.join(", "), expr)
                })
                .collect();
            let what = format!(
                "{} / {} [{}]",
                dashboard.title(),
                target.panel,
                target.ref_id
            );
            pending.push((what, target.expr.clone(), exprs, allowed));
        }
    }
    assert!(!pending.is_empty(), "no dashboard queries");
    let total = pending.len();
    let deadline = Instant::now() + PANELS_SETTLE;
    let mut failures = Vec::new();
    let mut allowed_empty = 0;
    while !pending.is_empty() {
        let last = Instant::now() >= deadline;
        let mut next = Vec::new();
        for (what, expr, exprs, allowed) in pending {
            let mut answers = Vec::new();
            let mut found = None;
            for (binding, promql) in &exprs {
                assert!(
                    !promql.contains('$') && !promql.contains("[["),
                    "{what}: a variable left in `{promql}`"
                );
                match prometheus.query(promql) {
                    Ok(v) if v.as_array().is_some_and(|a| !a.is_empty()) => {
                        found = Some((binding.clone(), v.as_array().map_or(0, Vec::len)));
                        break;
                    }
                    Ok(_) => answers.push(format!("empty with {binding}: {promql}")),
                    // Not valid PromQL: no wait mends it, allow-listed or not.
                    Err(e) => failures.push(format!("{what}: `{expr}`: {e}")),
                }
            }
            match (found, allowed) {
                (Some((binding, n)), _) => eprintln!("panel {what}: {n} series ({binding})"),
                (None, Some((_, _, metric, why))) if answers.len() == exprs.len() => {
                    assert!(
                        expr.contains(metric) && counted_in_sources(metric),
                        "{what}: allow-listed for {metric}, which it does not query or weft does not count"
                    );
                    eprintln!("panel {what}: no data, allowed: {metric} {why}");
                    allowed_empty += 1;
                }
                (None, _) if answers.len() < exprs.len() => {}
                (None, _) if last => {
                    failures.push(format!(
                        "{what}: `{expr}` has no data:\n    {}",
                        answers.join("\n    ")
                    ));
                }
                (None, _) => next.push((what, expr, exprs, allowed)),
            }
        }
        pending = next;
        if !pending.is_empty() {
            std::thread::sleep(Duration::from_secs(2));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} dashboard queries failed:\n  {}\nprometheus's targets:\n{}",
        failures.len(),
        failures.join("\n  "),
        prometheus.describe_targets()
    );
    eprintln!("{total} dashboard queries: all returned data but {allowed_empty} allow-listed");
}

/// Fills `addr`'s admin server (128 connections) and one more, so that it
/// refuses and counts it: `weft_admin_connections_refused_total` exists.
fn overflow_admin(netns: &Netns, addr: SocketAddr) {
    let held = netns
        .run(move || {
            (0..140)
                .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok())
                .collect::<Vec<_>>()
        })
        .expect("connect in the control plane's namespace");
    assert!(held.len() > 128, "{} connections to {addr}", held.len());
    std::thread::sleep(Duration::from_secs(1));
    drop(held);
}

#[test]
fn dashboards_parse_with_unique_panels_on_the_datasource_variable() {
    let dashboards = dashboards::load().expect("deploy/dashboards");
    assert_eq!(
        dashboards.len(),
        5,
        "mesh, workload, ztunnel, waypoint, controller"
    );
    for d in &dashboards {
        assert_eq!(d.problems(), Vec::<String>::new(), "{}", d.file);
    }
    for (uid, panel, _, _) in NO_DATA_EXPECTED {
        let d = dashboards.iter().find(|d| d.uid() == *uid).expect(uid);
        assert!(
            d.targets().iter().any(|t| t.panel == *panel),
            "{uid}: {panel}"
        );
    }
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

    // A waypoint in front of the server, the DENY lifted: HTTP through it
    // (mirrored), then an L7 policy refusing POST with 403; TCP tunnels on
    // a port without HTTP, refused by the same policy once it applies.
    k.run(&["delete", "authorizationpolicy", "-n", "shop", "deny-client"])
        .expect("lift the DENY");
    k.apply(SHOP_WAYPOINT)
        .expect("the waypoint and its Service");
    k.run(&[
        "patch",
        "service",
        "server",
        "-n",
        "shop",
        "--type=json",
        "-p",
        TCP_PORT,
    ])
    .expect("the TCP port");
    k.apply(MIRRORED).expect("the mirrored route");
    for (object, condition) in [
        ("deployment/shop-waypoint", "Available"),
        ("gateway/shop-waypoint", "Programmed"),
    ] {
        if let Err(e) = k.wait_for("shop", condition, object, 120) {
            cluster.print_logs();
            panic!("{object} {condition}: {e}");
        }
    }
    let service = k.get_json(&["service", "-n", "shop", "server"]);
    let vip = service.expect("the Service")["spec"]["clusterIP"]
        .as_str()
        .map(str::parse);
    let vip: std::net::Ipv4Addr = vip.expect("a cluster IP").expect("an IPv4 cluster IP");
    let to = format!("http://{vip}:80/orders");
    let tcp = SocketAddr::from((vip, 9000));
    let status = |method: &str| client.http(method, &to, &[]).map_or(0, |(s, _)| s);
    wait_until("the Service answering through the waypoint", SETTLE, || {
        status("POST") == 200 && client.tcp_echo(tcp, "tunnel").is_ok()
    })
    .expect("HTTP and TCP through the waypoint");
    for _ in 0..10 {
        assert_eq!(status("GET"), 200);
        assert_eq!(status("POST"), 200);
        client.tcp_echo(tcp, "tunnel").expect("a TCP tunnel");
    }
    k.apply(GET_ONLY).expect("GET only");
    wait_until("POST refused at the waypoint", SETTLE, || {
        status("POST") == 403
    })
    .expect("the L7 policy in force");
    wait_until("TCP refused at the waypoint", SETTLE, || {
        client
            .tcp_echo_result(tcp, "refused")
            .is_ok_and(|r| r.is_err())
    })
    .expect("an ALLOW with L7 rules refuses TCP");
    for _ in 0..10 {
        assert_eq!(status("POST"), 403);
        assert_eq!(status("GET"), 200);
    }

    // `weftctl top` and `graph` (issue 17), from the proxies' own counters
    // while the client keeps asking: the client → server pair over HTTP at
    // the waypoint with its rate and 403s, the earlier TCP pair, mTLS.
    let (top, graph) = std::thread::scope(|scope| {
        let asking = scope.spawn(|| {
            for _ in 0..40 {
                status("GET");
                status("POST");
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let top = cluster
            .weftctl(&["top", "-n", "shop", "--window", "3s", "-o", "json"])
            .expect("run weftctl top");
        let graph = cluster
            .weftctl(&["graph", "-n", "shop", "--window", "1s"])
            .expect("run weftctl graph");
        asking.join().expect("the client's requests");
        (top, graph)
    });
    assert!(top.status.success(), "weftctl top: {top:?}");
    let edges: Vec<serde_json::Value> = serde_json::from_slice(&top.stdout).expect("top's JSON");
    let pair = |protocol: &str| {
        edges
            .iter()
            .find(|e| {
                e["source"] == "shop/client"
                    && e["destination"] == "shop/server"
                    && e["protocol"] == protocol
            })
            .cloned()
            .unwrap_or_else(|| panic!("no {protocol} pair client → server in {edges:?}"))
    };
    let http = pair("http");
    assert_eq!(http["mtls"], true, "{http}");
    assert!(
        http["requestsPerSecond"].as_f64().is_some_and(|r| r > 0.0),
        "{http}"
    );
    assert!(http["p99Ms"].is_number(), "{http}");
    assert_eq!(pair("tcp")["mtls"], true);
    let graph = String::from_utf8_lossy(&graph.stdout);
    assert!(
        graph.starts_with("digraph mesh {")
            && graph.contains(r#""shop/client" -> "shop/server" [label="http"#),
        "{graph}"
    );

    // The ztunnel on the server's node refuses admin connections over its
    // limit, once.
    let server_node = server.node();
    let on_node = format!("--field-selector=spec.nodeName={server_node}");
    let ztunnels = [
        "pods",
        "-n",
        "weft-system",
        "-l",
        "app.kubernetes.io/name=ztunnel",
    ];
    let ztunnels = k.get_json(&[&ztunnels[..], &[on_node.as_str()]].concat());
    let ztunnel = ztunnels.expect("the server node's ztunnel")["items"][0]["status"]["podIP"]
        .as_str()
        .map(str::parse::<std::net::Ipv4Addr>);
    let ztunnel = ztunnel.expect("its pod").expect("its address");
    let plane = cluster
        .control_plane()
        .toolchain()
        .netns()
        .expect("a namespace");
    let netns = Netns::open(plane).expect("the control plane's namespace");
    overflow_admin(&netns, SocketAddr::from((ztunnel, 15020)));

    every_panel_has_data(&prometheus, server_node);
}
