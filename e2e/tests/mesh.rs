//! Traffic through the mesh on the real cluster: controller, node agents,
//! ztunnels, pods attached by the real CNI chain. Needs root and the
//! ztunnel binary; fails loudly without them.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use weft_e2e::PodSpec;
use weft_e2e::ServiceSpec;

#[test]
fn cross_node_traffic_is_mtls_on_15008_only_and_the_server_sees_the_client_ip() {
    let _one = serial();
    let mut c = mesh_cluster();
    c.add_namespace("shop", true).expect("namespace");
    let client = c
        .add_pod(
            PodSpec::new("shop", "client")
                .on_node(1)
                .service_account("client"),
        )
        .expect("client");
    let server = c
        .add_pod(
            PodSpec::new("shop", "server")
                .on_node(2)
                .service_account("server")
                .echo_server(),
        )
        .expect("server");
    c.wait_in_mesh(&client, CONVERGE).expect("client in mesh");
    c.wait_in_mesh(&server, CONVERGE).expect("server in mesh");

    let capture = c.capture("mtls").expect("capture");
    let secret = "SECRET-PAYLOAD-7e3a";
    let reply = client
        .tcp_echo(server.echo_tcp(), secret)
        .expect("echo through the mesh");
    let (status, body) = client
        .http(
            "GET",
            &format!("http://{}/through-the-mesh", server.echo_http()),
            &[],
        )
        .expect("http through the mesh");
    let capture = capture.finish().expect("capture read back");

    assert_eq!(reply.message, secret);
    assert_eq!(
        reply.peer.ip(),
        client.ip(),
        "the server sees the client's real IP"
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&client.ip().to_string()), "{body}");

    // Between the pods, only HBONE on 15008 crossed the underlay, and the
    // payload never appeared in clear.
    assert!(
        !capture.contains(secret),
        "plaintext on the underlay:\n{}",
        capture.text
    );
    assert!(
        !capture.contains("through-the-mesh"),
        "plaintext HTTP on the underlay"
    );
    let pod_packets: Vec<&str> = capture
        .packets()
        .into_iter()
        .filter(|l| l.matches("10.244.").count() == 2)
        .collect();
    assert!(
        !pod_packets.is_empty(),
        "no pod traffic captured:\n{}",
        capture.text
    );
    let off_port: Vec<&&str> = pod_packets
        .iter()
        .filter(|l| !l.contains(".15008 ") && !l.contains(".15008:"))
        .collect();
    assert!(
        off_port.is_empty(),
        "pod traffic not on 15008: {off_port:#?}"
    );

    // While a connection is open, both ztunnels show it with both identities.
    let mut held = client
        .netns()
        .run(|| TcpStream::connect_timeout(&server.echo_tcp(), Duration::from_secs(5)))
        .expect("enter client")
        .expect("connect");
    held.write_all(b"held\n").expect("write");
    let mut line = String::new();
    BufReader::new(held.try_clone().expect("clone"))
        .read_line(&mut line)
        .expect("reply");
    let connections = c
        .ztunnel_admin(2, "/connections")
        .expect("connections")
        .to_string();
    assert!(connections.contains(&identity(&client)), "{connections}");
    assert!(connections.contains(&identity(&server)), "{connections}");
    drop(held);

    // Each ztunnel holds only the certificates of its own node's pods.
    let certs1 = c.ztunnel_admin(1, "/certs").expect("certs").to_string();
    let certs2 = c.ztunnel_admin(2, "/certs").expect("certs").to_string();
    assert!(
        certs1.contains(&identity(&client)) && !certs1.contains(&identity(&server)),
        "{certs1}"
    );
    assert!(
        certs2.contains(&identity(&server)) && !certs2.contains(&identity(&client)),
        "{certs2}"
    );
}

#[test]
fn a_destination_outside_the_mesh_is_reachable_from_a_meshed_pod() {
    let _one = serial();
    let mut c = mesh_cluster();
    c.add_namespace("shop", true).expect("namespace");
    c.add_namespace("legacy", false).expect("namespace");
    let client = c
        .add_pod(
            PodSpec::new("shop", "client")
                .on_node(1)
                .service_account("client"),
        )
        .expect("client");
    let db = c
        .add_pod(PodSpec::new("legacy", "db").on_node(2).echo_server())
        .expect("db");
    c.wait_in_mesh(&client, CONVERGE).expect("client in mesh");
    c.wait_known(&db, CONVERGE).expect("db known");
    let rules = db.redirect_rules().expect("rules");
    assert!(rules.absent(), "{rules:?}");

    let capture = c.capture("passthrough").expect("capture");
    let reply = client
        .tcp_echo(db.echo_tcp(), "select 1")
        .expect("plain TCP out of the mesh");
    let capture = capture.finish().expect("capture");
    assert_eq!(reply.server, "legacy/db");
    assert_eq!(reply.peer.ip(), client.ip());
    // It went as plain TCP to the application port: nothing to tunnel to.
    assert!(capture.contains("select 1"), "{}", capture.text);
}

#[test]
fn a_vip_spreads_connections_over_endpoints_on_both_nodes() {
    let _one = serial();
    let mut c = mesh_cluster();
    c.add_namespace("shop", true).expect("namespace");
    let client = c
        .add_pod(
            PodSpec::new("shop", "client")
                .on_node(1)
                .service_account("client"),
        )
        .expect("client");
    let mut webs = Vec::new();
    for (name, node) in [("web-1", 1), ("web-2", 2)] {
        webs.push(
            c.add_pod(
                PodSpec::new("shop", name)
                    .on_node(node)
                    .service_account("web")
                    .label("app", "web")
                    .echo_server(),
            )
            .expect("web"),
        );
    }
    let svc = c
        .add_service(
            ServiceSpec::new("shop", "web")
                .select("app", "web")
                .port("tcp", 80, 9000),
        )
        .expect("service");
    c.wait_in_mesh(&client, CONVERGE).expect("client in mesh");
    for w in &webs {
        c.wait_in_mesh(w, CONVERGE).expect("web in mesh");
    }
    let vip = svc.vip.to_string();
    c.wait_for_ztunnels(
        "the web service with 2 endpoints",
        "/services",
        CONVERGE,
        |v| {
            v["services"].as_array().is_some_and(|ss| {
                ss.iter().any(|s| {
                    s["vips"].to_string().contains(&vip)
                        && s["endpoints"].as_array().is_some_and(|e| e.len() == 2)
                })
            })
        },
    )
    .expect("service known");

    let report = load(&client, svc.addr("tcp").expect("port"), 40, 1);
    assert_eq!(report.failed, 0, "{report:?}");
    let on1 = report.servers.get("shop/web-1").copied().unwrap_or(0);
    let on2 = report.servers.get("shop/web-2").copied().unwrap_or(0);
    assert!(
        on1 >= 2 && on2 >= 2,
        "not spread over both nodes: {report:?}"
    );
}

#[test]
fn with_the_local_bypass_the_local_legs_go_socket_to_socket_and_traffic_is_unchanged() {
    let _one = serial();
    let mut c = weft_e2e::Cluster::up(weft_e2e::ClusterConfig {
        ztunnel: weft_e2e::ZtunnelMode::On,
        local_bypass: true,
        ..weft_e2e::ClusterConfig::default()
    })
    .expect("cluster up");
    c.add_namespace("shop", true).expect("namespace");
    let client = c
        .add_pod(PodSpec::new("shop", "client").on_node(1))
        .expect("client");
    let opted_out = c
        .add_pod(
            PodSpec::new("shop", "blocking")
                .on_node(1)
                .label("weft.dev/local-bypass", "off"),
        )
        .expect("opted-out client");
    let server = c
        .add_pod(PodSpec::new("shop", "server").on_node(2).echo_server())
        .expect("server");
    for pod in [&client, &opted_out, &server] {
        c.wait_in_mesh(pod, CONVERGE).expect("in mesh");
    }
    let legs = |node: usize| {
        let (report, covered) = c.coverage(node).expect("coverage");
        assert!(covered, "{report}");
        assert_eq!(report["local_legs"]["path"], "sockmap", "{report}");
        let counters = &report["local_legs"]["counters"];
        (
            counters["pairedLegs"].as_u64().expect("pairedLegs"),
            counters["bypassedBytes"].as_u64().expect("bypassedBytes"),
        )
    };
    let (paired1, _) = legs(1);
    let (paired2, _) = legs(2);

    let secret = "through-the-kernel-4b1d";
    let reply = client
        .tcp_echo(server.echo_tcp(), secret)
        .expect("echo through the mesh");
    assert_eq!(reply.message, secret);
    assert_eq!(
        reply.peer.ip(),
        client.ip(),
        "the source is still preserved"
    );
    let (status, body) = client
        .http(
            "GET",
            &format!("http://{}/bypassed", server.echo_http()),
            &[],
        )
        .expect("http through the mesh");
    assert_eq!(status, 200, "{body}");

    // The client's legs to ztunnel on node 1 and ztunnel's legs to the
    // server on node 2 were paired and carried the bytes.
    let (after1, bytes1) = legs(1);
    let (after2, bytes2) = legs(2);
    assert!(after1 >= paired1 + 2, "node 1 paired {paired1} → {after1}");
    assert!(after2 >= paired2 + 2, "node 2 paired {paired2} → {after2}");
    assert!(bytes1 >= 2 * secret.len() as u64, "{bytes1}");
    assert!(bytes2 >= 2 * secret.len() as u64, "{bytes2}");

    // The opted-out pod is served on TCP legs: nothing new paired on its node.
    let reply = opted_out
        .tcp_echo(server.echo_tcp(), "blocking")
        .expect("echo from the opted-out pod");
    assert_eq!(reply.message, "blocking");
    assert_eq!(legs(1).0, after1, "the opted-out pod's leg was paired");
}
