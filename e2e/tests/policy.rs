//! L4 authorization and mTLS modes, written as users write them
//! (AuthorizationPolicy and PeerAuthentication YAML in the manifest
//! directory), enforced by the real ztunnels. Needs root and ztunnel.

mod common;

use common::*;
use weft_e2e::{Cluster, Pod, PodSpec};

/// Applies `yaml` as `name` and waits until the ztunnel of `server`'s node
/// enforces it (its `/policies` shows the policy) and no longer shows `gone`.
fn apply_policy(c: &Cluster, server: &Pod, name: &str, yaml: &str, gone: &[&str]) {
    c.apply(name, yaml).expect("apply");
    c.wait_for_ztunnel_of(
        server,
        &format!("policy {name} in force"),
        "/policies",
        CONVERGE,
        |v| {
            let text = v.to_string();
            text.contains(&format!("\"{name}\""))
                && gone.iter().all(|g| !text.contains(&format!("\"{g}\"")))
        },
    )
    .expect("policy propagated");
}

fn reaches(from: &Pod, to: std::net::SocketAddr) -> Result<(), String> {
    from.tcp_echo_result(to, "knock")
        .expect("client ran")
        .map(|reply| assert_eq!(reply.message, "knock"))
}

#[test]
fn l4_allow_and_deny_by_principal_namespace_and_port() {
    let _one = serial();
    let mut c = mesh_cluster();
    c.add_namespace("shop", true).expect("namespace");
    c.add_namespace("other", true).expect("namespace");
    let server = c
        .add_pod(
            PodSpec::new("shop", "server")
                .on_node(2)
                .service_account("server")
                .label("app", "server")
                .echo_server(),
        )
        .expect("server");
    let friend = c
        .add_pod(
            PodSpec::new("shop", "friend")
                .on_node(1)
                .service_account("friend"),
        )
        .expect("friend");
    let intruder = c
        .add_pod(
            PodSpec::new("other", "intruder")
                .on_node(1)
                .service_account("intruder"),
        )
        .expect("intruder");
    for p in [&server, &friend, &intruder] {
        c.wait_in_mesh(p, CONVERGE).expect("in mesh");
    }
    let (tcp, http) = (server.echo_tcp(), server.echo_http());
    reaches(&friend, tcp).expect("no policy: friend reaches the server");
    reaches(&intruder, tcp).expect("no policy: intruder reaches the server");

    // DENY by principal.
    apply_policy(
        &c,
        &server,
        "deny-intruder",
        r#"
apiVersion: security.weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: deny-intruder, namespace: shop}
spec:
  selector: {matchLabels: {app: server}}
  action: DENY
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/other/sa/intruder"]}
"#,
        &[],
    );
    reaches(&friend, tcp).expect("friend still allowed");
    let refused = reaches(&intruder, tcp).expect_err("intruder denied by principal");
    assert!(
        refused.contains("reset") || refused.contains("closed"),
        "{refused}"
    );

    // DENY by namespace.
    c.unapply("deny-intruder").expect("unapply");
    apply_policy(
        &c,
        &server,
        "deny-other",
        r#"
apiVersion: security.weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: deny-other, namespace: shop}
spec:
  action: DENY
  rules:
  - from:
    - source: {namespaces: ["other"]}
"#,
        &["deny-intruder"],
    );
    reaches(&friend, tcp).expect("friend still allowed");
    reaches(&intruder, tcp).expect_err("intruder denied by namespace");

    // ALLOW by namespace and port: anything else is denied.
    c.unapply("deny-other").expect("unapply");
    apply_policy(
        &c,
        &server,
        "allow-shop-tcp",
        r#"
apiVersion: security.weft.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: allow-shop-tcp, namespace: shop}
spec:
  selector: {matchLabels: {app: server}}
  action: ALLOW
  rules:
  - from:
    - source: {namespaces: ["shop"]}
    to:
    - operation: {ports: ["9000"]}
"#,
        &["deny-other"],
    );
    reaches(&friend, tcp).expect("friend allowed on 9000");
    reaches(&intruder, tcp).expect_err("another namespace matches no ALLOW rule");
    let http_result = friend.http("GET", &format!("http://{http}/"), &[]);
    assert!(
        http_result.is_err(),
        "port 8080 matches no ALLOW rule: {http_result:?}"
    );

    // The server's node counted the denials.
    let metrics = weft_e2e::http::get(
        Some(c.node(2).expect("node").netns()),
        "127.0.0.1:15020".parse().expect("addr"),
        "/metrics",
    )
    .expect("metrics");
    assert!(
        metrics.body.contains("weft_tcp_connections_denied_total"),
        "{}",
        metrics.body
    );
}

#[test]
fn strict_refuses_plaintext_from_a_non_mesh_pod_and_permissive_accepts_it() {
    let _one = serial();
    let mut c = mesh_cluster();
    c.add_namespace("shop", true).expect("namespace");
    c.add_namespace("legacy", false).expect("namespace");
    let server = c
        .add_pod(
            PodSpec::new("shop", "server")
                .on_node(2)
                .service_account("server")
                .label("app", "server")
                .echo_server(),
        )
        .expect("server");
    let friend = c
        .add_pod(
            PodSpec::new("shop", "friend")
                .on_node(1)
                .service_account("friend"),
        )
        .expect("friend");
    let outsider = c
        .add_pod(PodSpec::new("legacy", "outsider").on_node(1))
        .expect("outsider");
    c.wait_in_mesh(&server, CONVERGE).expect("server in mesh");
    c.wait_in_mesh(&friend, CONVERGE).expect("friend in mesh");
    c.wait_known(&outsider, CONVERGE).expect("outsider known");
    let tcp = server.echo_tcp();

    // PERMISSIVE (the default): plaintext from outside the mesh is accepted,
    // and the server still sees the caller's own address.
    let reply = outsider
        .tcp_echo(tcp, "plain")
        .expect("PERMISSIVE accepts plaintext");
    assert_eq!(reply.peer.ip(), outsider.ip());

    let mode = |mode: &str| {
        format!(
            "apiVersion: security.weft.dev/v1alpha1\nkind: PeerAuthentication\n\
             metadata: {{name: shop-mtls, namespace: shop}}\nspec:\n  mtls: {{mode: {mode}}}\n"
        )
    };
    let wait_mode = |want: &str| {
        let uid = server.uid().to_string();
        c.wait_for_ztunnels(&format!("server in {want}"), "/workloads", CONVERGE, |v| {
            v["workloads"].as_array().is_some_and(|ws| {
                ws.iter().any(|w| {
                    w["uid"] == uid.as_str()
                        && (w["mtlsMode"] == want
                            || (want == "MTLS_MODE_PERMISSIVE" && w.get("mtlsMode").is_none()))
                })
            })
        })
        .expect("mode propagated");
    };
    c.apply("mtls", &mode("STRICT")).expect("apply");
    wait_mode("MTLS_MODE_STRICT");
    let refused = outsider.tcp_echo_result(tcp, "plain").expect("client ran");
    assert!(refused.is_err(), "STRICT accepted plaintext: {refused:?}");
    reaches(&friend, tcp).expect("mTLS from the mesh still accepted under STRICT");

    c.apply("mtls", &mode("PERMISSIVE")).expect("apply");
    wait_mode("MTLS_MODE_PERMISSIVE");
    let reply = outsider
        .tcp_echo(tcp, "plain")
        .expect("PERMISSIVE accepts plaintext again");
    assert_eq!(reply.peer.ip(), outsider.ip());
}
