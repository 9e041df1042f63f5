//! Waypoints end to end: a Gateway of class `weft-waypoint` run by the
//! harness (as the deployer would), Services and pods bound to it by label,
//! L7 AuthorizationPolicies and HTTPRoutes written as users write them, real
//! HTTP from meshed pods on another node through the real ztunnels and the
//! real waypoint. Needs root, ztunnel and the waypoint binary.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use weft_e2e::manifests::USE_WAYPOINT;
use weft_e2e::{Cluster, Pod, PodSpec, Service, ServiceSpec, Waypoint, WaypointFor, WaypointSpec};

const WAYPOINT: &str = "shop-waypoint";

/// An HTTP echo server pod `shop/<name>` on node 2, labelled `app=<name>`.
fn server(c: &mut Cluster, name: &str, labels: &[(&str, &str)]) -> Pod {
    let mut spec = PodSpec::new("shop", name)
        .on_node(2)
        .service_account(name)
        .label("app", name)
        .echo_server();
    for (k, v) in labels {
        spec = spec.label(k, v);
    }
    c.add_pod(spec).expect("server pod")
}

/// A meshed client pod `shop/client` on node 1.
fn client(c: &mut Cluster) -> Pod {
    c.add_pod(
        PodSpec::new("shop", "client")
            .on_node(1)
            .service_account("client"),
    )
    .expect("client pod")
}

/// Service `shop/<name>` (HTTP, port 80 → 8080) selecting `app=<name>`,
/// bound to the waypoint if `bound`.
fn http_service(c: &mut Cluster, name: &str, bound: bool) -> Service {
    let mut spec = ServiceSpec::new("shop", name)
        .select("app", name)
        .http_port("http", 80, 8080);
    if bound {
        spec = spec.label(USE_WAYPOINT, WAYPOINT);
    }
    c.add_service(spec).expect("service")
}

fn url(addr: SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}

/// Which echo server answered (`shop/server`), from the reply body.
fn answered_by(body: &str) -> String {
    let reply: serde_json::Value = serde_json::from_str(body.trim()).expect("echo reply");
    reply["server"].as_str().unwrap_or_default().to_string()
}

/// Applies `yaml` as `name` and waits until the waypoint has `name` at
/// admin `path` (`/policies`, `/routes`) and no longer has `gone`.
fn apply_at_waypoint(
    c: &Cluster,
    wp: &Waypoint,
    path: &str,
    name: &str,
    yaml: &str,
    gone: &[&str],
) {
    c.apply(name, yaml).expect("apply");
    c.wait_for_waypoint(wp, &format!("{name} in force"), path, CONVERGE, |v| {
        let text = v.to_string();
        text.contains(&format!("\"{name}\""))
            && gone.iter().all(|g| !text.contains(&format!("\"{g}\"")))
    })
    .expect("applied at the waypoint");
}

fn get_only_policy(target_kind: &str, target_group: &str, target: &str) -> String {
    format!(
        r#"
apiVersion: security.weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: get-only, namespace: shop}}
spec:
  targetRefs: [{{group: "{target_group}", kind: {target_kind}, name: {target}}}]
  action: ALLOW
  rules:
  - to:
    - operation: {{methods: [GET]}}
"#
    )
}

/// The sum of the samples of `name` whose labels contain every one of
/// `labels` (`key="value"`).
fn counted(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    let prefix = format!("{name}{{");
    metrics
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn an_l7_policy_at_the_waypoint_allows_get_and_refuses_post() {
    let _one = serial();
    let mut c = mesh_cluster();
    c.add_namespace("shop", true).expect("namespace");
    let server = server(&mut c, "server", &[]);
    let client = client(&mut c);
    let wp = c
        .apply_waypoint(WaypointSpec::new("shop", WAYPOINT).on_node(2))
        .expect("waypoint");
    assert_eq!(
        wp.identity(),
        "spiffe://cluster.local/ns/shop/sa/shop-waypoint-weft-waypoint"
    );
    let svc = http_service(&mut c, "server", true);
    for p in [&server, &client] {
        c.wait_in_mesh(p, CONVERGE).expect("in mesh");
    }
    c.wait_service_bound(&svc, &wp, CONVERGE).expect("bound");
    let to = url(svc.addr("http").expect("port"), "/orders");

    let (status, body) = client.http("POST", &to, &[]).expect("request");
    assert_eq!(status, 200, "no policy yet: POST goes through: {body}");
    assert_eq!(answered_by(&body), "shop/server");

    apply_at_waypoint(
        &c,
        &wp,
        "/policies",
        "get-only",
        &get_only_policy("Service", "", "server"),
        &[],
    );
    let (status, body) = client.http("GET", &to, &[]).expect("GET");
    assert_eq!(status, 200, "GET allowed: {body}");
    assert_eq!(answered_by(&body), "shop/server");
    let (status, body) = client.http("POST", &to, &[]).expect("POST");
    assert_eq!(status, 403, "POST refused by the waypoint: {body}");

    // The waypoint counted the refusal, with the client's identity.
    let metrics = wp.metrics().expect("metrics");
    let refused = counted(
        &metrics,
        "weft_requests_total",
        &[
            "reporter=\"waypoint\"",
            "response_code=\"403\"",
            "ns/shop/sa/client",
        ],
    );
    assert!(refused >= 1.0, "a 403 counted in:\n{metrics}");
    assert!(
        counted(&metrics, "weft_requests_total", &["response_code=\"200\""]) >= 2.0,
        "the 200s are counted too"
    );
    // The same requests in Istio's names and labels, as its dashboards and
    // Kiali query them: the Service by host, the client by canonical name.
    let istio = [
        "reporter=\"waypoint\"",
        "response_code=\"403\"",
        "source_principal=\"spiffe://cluster.local/ns/shop/sa/client\"",
        "destination_service=\"server.shop.svc.cluster.local\"",
        "destination_service_name=\"server\"",
        "destination_service_namespace=\"shop\"",
        "source_workload_namespace=\"shop\"",
        "request_protocol=\"http\"",
        "connection_security_policy=\"mutual_tls\"",
    ];
    assert!(
        counted(&metrics, "istio_requests_total", &istio) >= 1.0,
        "the 403 in Istio's names:\n{metrics}"
    );
    assert!(
        counted(
            &metrics,
            "istio_request_duration_milliseconds_bucket",
            &["response_code=\"200\"", "le=\"3600000\""]
        ) >= 2.0,
        "Istio's duration histogram, in milliseconds with its buckets:\n{metrics}"
    );

    // The policy is gone: POST goes through again.
    c.unapply("get-only").expect("unapply");
    c.wait_for_waypoint(&wp, "get-only gone", "/policies", CONVERGE, |v| {
        !v.to_string().contains("\"get-only\"")
    })
    .expect("policy removed");
    let (status, _) = client.http("POST", &to, &[]).expect("POST");
    assert_eq!(status, 200);
}

#[test]
fn http_routes_split_by_header_and_by_weight() {
    let _one = serial();
    let mut c = mesh_cluster();
    c.add_namespace("shop", true).expect("namespace");
    let v1 = server(&mut c, "server", &[]);
    let v2 = server(&mut c, "server-v2", &[]);
    let client = client(&mut c);
    let wp = c
        .apply_waypoint(WaypointSpec::new("shop", WAYPOINT))
        .expect("waypoint");
    let svc = http_service(&mut c, "server", true);
    http_service(&mut c, "server-v2", false);
    for p in [&v1, &v2, &client] {
        c.wait_in_mesh(p, CONVERGE).expect("in mesh");
    }
    c.wait_service_bound(&svc, &wp, CONVERGE).expect("bound");
    let to = url(svc.addr("http").expect("port"), "/");

    // By header: `x-version: v2` goes to the second Service.
    apply_at_waypoint(
        &c,
        &wp,
        "/routes",
        "by-header",
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: by-header, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: server}]
  rules:
  - matches: [{headers: [{name: x-version, value: v2}]}]
    backendRefs: [{name: server-v2, port: 80}]
  - backendRefs: [{name: server, port: 80}]
"#,
        &[],
    );
    for _ in 0..3 {
        let (status, body) = client
            .http("GET", &to, &[("x-version", "v2")])
            .expect("GET v2");
        assert_eq!(status, 200, "{body}");
        assert_eq!(answered_by(&body), "shop/server-v2");
        let (status, body) = client.http("GET", &to, &[]).expect("GET");
        assert_eq!(status, 200, "{body}");
        assert_eq!(answered_by(&body), "shop/server");
    }

    // By weight: 80/20.
    c.unapply("by-header").expect("unapply");
    apply_at_waypoint(
        &c,
        &wp,
        "/routes",
        "by-weight",
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: by-weight, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: server}]
  rules:
  - backendRefs:
    - {name: server, port: 80, weight: 80}
    - {name: server-v2, port: 80, weight: 20}
"#,
        &["by-header"],
    );
    const REQUESTS: usize = 100;
    let mut hits: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..REQUESTS {
        let (status, body) = client.http("GET", &to, &[]).expect("GET");
        assert_eq!(status, 200, "{body}");
        *hits.entry(answered_by(&body)).or_default() += 1;
    }
    let (to_v1, to_v2) = (
        hits.get("shop/server").copied().unwrap_or(0),
        hits.get("shop/server-v2").copied().unwrap_or(0),
    );
    assert_eq!(to_v1 + to_v2, REQUESTS, "only the two backends: {hits:?}");
    // Expected 20 ± 4 (one standard deviation); the bound is generous.
    assert!(
        (5..=40).contains(&to_v2),
        "about a fifth to server-v2: {hits:?}"
    );
}

/// Opens an HBONE tunnel from inside `from` straight to `to`'s ztunnel
/// (15008), presenting `identity` — signed with the run's own root, which
/// the test reads from disk, so it can be anyone — and asks for `to`'s HTTP
/// port. Returns the error text when refused.
fn hbone_as(c: &Cluster, from: &Pod, identity: &str, to: &Pod) -> Result<(), String> {
    let root = c.controller().root_cert();
    let root_pem = std::fs::read_to_string(&root).expect("root cert");
    let key_pem = std::fs::read_to_string(root.with_file_name("root-key.pem")).expect("root key");
    let ca = weft_hbone::CertificateAuthority::from_pem(&root_pem, &key_pem, "cluster.local")
        .expect("CA");
    let id: weft_hbone::SpiffeId = identity.parse().expect("identity");
    let cert = std::sync::Arc::new(ca.issue(&id, Duration::from_secs(600)).expect("cert"));
    let bundle = weft_hbone::TrustBundle::from_pems("cluster.local", &[root_pem]).expect("bundle");
    let target = weft_hbone::TunnelTarget {
        hbone_addr: SocketAddr::from((to.ip(), 15008)),
        expected_identity: identity_of(to).parse().expect("server identity"),
        authority: to.echo_http(),
        client_ip: None,
        traceparent: None,
        baggage: None,
    };
    from.netns()
        .run(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let pool = weft_hbone::TunnelPool::new(weft_hbone::PoolSettings::default(), bundle);
                pool.connect(&cert, &target, &weft_hbone::DirectDialer)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            })
        })
        .expect("ran in the pod")
}

fn identity_of(pod: &Pod) -> String {
    identity(pod)
}

#[test]
fn a_workload_bound_to_a_waypoint_cannot_be_reached_around_it() {
    let _one = serial();
    let mut c = mesh_cluster();
    c.add_namespace("shop", true).expect("namespace");
    c.add_namespace("legacy", false).expect("namespace");
    let wp = c
        .apply_waypoint(
            WaypointSpec::new("shop", WAYPOINT)
                .waypoint_for(WaypointFor::All)
                .on_node(1),
        )
        .expect("waypoint");
    let server = server(&mut c, "server", &[(USE_WAYPOINT, WAYPOINT)]);
    let client = client(&mut c);
    // Outside the mesh, so the test's own HBONE client is not captured.
    let outsider = c
        .add_pod(PodSpec::new("legacy", "outsider").on_node(1))
        .expect("outsider");
    for p in [&server, &client] {
        c.wait_in_mesh(p, CONVERGE).expect("in mesh");
    }
    c.wait_pod_bound(&server, &wp, CONVERGE).expect("bound");
    apply_at_waypoint(
        &c,
        &wp,
        "/policies",
        "get-only",
        &get_only_policy("Gateway", "gateway.networking.k8s.io", WAYPOINT),
        &[],
    );

    // A meshed client addressing the pod IP directly still goes through
    // the waypoint: its L7 policy applies.
    let to = url(server.echo_http(), "/orders");
    let (status, body) = client.http("GET", &to, &[]).expect("GET");
    assert_eq!(status, 200, "GET to the pod IP allowed: {body}");
    let (status, body) = client.http("POST", &to, &[]).expect("POST");
    assert_eq!(
        status, 403,
        "POST to the pod IP refused at the waypoint: {body}"
    );

    // A tunnel straight to the pod's ztunnel, around the waypoint, is
    // refused whoever it claims to be — even the client's own identity, or
    // the server's — and only the waypoint's identity gets through.
    for who in [identity_of(&client), identity_of(&server)] {
        let refused = hbone_as(&c, &outsider, &who, &server)
            .expect_err("a direct tunnel around the waypoint");
        assert!(refused.contains("403"), "{who}: {refused}");
    }
    hbone_as(&c, &outsider, wp.identity(), &server).expect("the waypoint's identity gets through");
}

#[test]
fn waypoints_follow_the_gateways_in_the_manifests() {
    let _one = serial();
    let mut c = mesh_cluster();
    c.add_namespace("shop", true).expect("namespace");
    // Written as a user (or `weftctl waypoint apply`) would, not by the
    // harness's own helper.
    c.apply(
        "my-gateway",
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: shop-waypoint, namespace: shop}
spec:
  gatewayClassName: weft-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
"#,
    )
    .expect("apply");
    let running = c.reconcile_waypoints().expect("reconcile");
    assert_eq!(running.len(), 1);
    let wp = &running[0];
    assert_eq!(wp.key(), "shop/shop-waypoint");
    let pod = wp.pod().clone();
    assert_eq!(
        pod.labels().get("gateway.networking.k8s.io/gateway-name"),
        Some(&"shop-waypoint".to_string())
    );
    // The ServiceAccount the deployer (here the harness) made for it.
    assert_eq!(pod.service_account(), "shop-waypoint-weft-waypoint");
    let token = c
        .controller()
        .waypoint_token_file("shop", "shop-waypoint-weft-waypoint");
    assert!(token.is_file());
    // Its certificate came from the controller's CA, for its own identity.
    let certs = wp.admin("/certs").expect("certs").to_string();
    assert!(certs.contains(wp.identity()), "{certs}");
    // The controller's model has the waypoint at its pod's address.
    let ip = wp.ip().to_string();
    c.wait_for_model("the waypoint at its pod IP", CONVERGE, |m| {
        m.to_string().contains(&ip)
    })
    .expect("model");
    assert_eq!(c.state().waypoints.len(), 1);
    // Idempotent.
    assert_eq!(c.reconcile_waypoints().expect("again").len(), 1);
    assert!(c.pods().iter().filter(|p| p.key() == pod.key()).count() == 1);

    c.unapply("my-gateway").expect("unapply");
    assert!(c.reconcile_waypoints().expect("reconcile").is_empty());
    assert!(c.pod("shop", pod.name()).is_none(), "its pod is gone");
    assert!(!token.exists(), "its token is gone");
    assert!(c.state().waypoints.is_empty());

    // A running waypoint goes with the cluster's teardown.
    let wp = c
        .apply_waypoint(WaypointSpec::new("shop", "second"))
        .expect("waypoint");
    let pid = c.state().processes.last().map(|p| p.pid).expect("recorded");
    let recorded = c.state().processes.clone();
    let (id, dir) = (c.run_id().clone(), c.dir().to_path_buf());
    let report = c.teardown();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let left = weft_e2e::cleanup::leftovers(&id, &dir, &recorded);
    assert!(left.is_empty(), "{left:?}");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "waypoint {} (pid {pid}) stopped",
        wp.key()
    );
}
