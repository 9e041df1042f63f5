//! The cluster itself: it comes up with every component ready, pods on
//! different nodes reach each other through the underlay with their own
//! addresses, and teardown leaves nothing of the run behind.
//! Needs root (network namespaces); fails loudly without it.

use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use weft_e2e::cleanup;
use weft_e2e::exec;
use weft_e2e::netns::Netns;
use weft_e2e::{Cluster, ClusterConfig, PodSpec};

/// The links of the machine's own namespace that look like the run's (the
/// names the harness and the CNI bridge plugin give links): there must be
/// none, ever. Other names are left out, so that whatever else runs on the
/// machine meanwhile does not matter.
fn host_links_like_ours() -> Vec<String> {
    let out = exec::sh("ip", &["-o", "link", "show"]).expect("ip link");
    out.lines()
        .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().to_string()))
        .map(|n| n.split('@').next().unwrap_or_default().to_string())
        .filter(|n| {
            ["ctl", "br0", "cni0"].contains(&n.as_str())
                || n.starts_with("node-")
                || n.starts_with("veth")
        })
        .collect()
}

#[test]
fn cluster_comes_up_and_leaves_nothing_behind() {
    let links_before = host_links_like_ours();
    let cluster = Cluster::up(ClusterConfig::default()).expect("cluster up");
    let state = cluster.state().clone();
    let id = cluster.run_id().clone();

    // Underlay, controller, two nodes.
    for role in ["underlay", "ctl", "node-1", "node-2"] {
        assert!(Netns::exists(&id.netns(role)), "{role} missing");
    }
    // Nodes reach each other and the controller over the underlay.
    let node1 = cluster.node(1).expect("node 1");
    let node2 = cluster.node(2).expect("node 2");
    let listener = node2
        .netns()
        .run(|| TcpListener::bind("10.10.0.12:7777"))
        .expect("enter node-2")
        .expect("listen in node-2");
    node1
        .netns()
        .run(|| {
            TcpStream::connect_timeout(
                &"10.10.0.12:7777".parse().expect("addr"),
                Duration::from_secs(3),
            )
        })
        .expect("enter node-1")
        .expect("node-1 reaches node-2");
    drop(listener);
    node1
        .netns()
        .run(|| {
            TcpStream::connect_timeout(
                &"10.10.0.2:15012".parse().expect("addr"),
                Duration::from_secs(3),
            )
        })
        .expect("enter node-1")
        .expect("node-1 reaches the controller's gRPC port");
    // The controller serves a model; each agent installed weft-cni.
    let model = cluster.controller().model().expect("model");
    assert!(model["version"].as_u64().is_some(), "{model}");
    for node in cluster.nodes() {
        let (_, conf) =
            weft_e2e::cni::active_conflist(&node.layout().cni_conf_dir()).expect("conf");
        assert_eq!(
            weft_e2e::cni::plugin_types(&conf),
            vec!["bridge".to_string(), "weft-cni".to_string()]
        );
    }
    // No link of the run ever shows up in the machine's namespace.
    assert_eq!(host_links_like_ours(), links_before);

    let report = cluster.teardown();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let left = cleanup::leftovers(&id, &state.dir, &state.processes);
    assert!(left.is_empty(), "left behind: {left:?}");
    assert_eq!(host_links_like_ours(), links_before);
}

#[test]
fn pods_on_different_nodes_talk_through_the_underlay() {
    let mut cluster = Cluster::up(ClusterConfig::default()).expect("cluster up");
    cluster.add_namespace("plain", false).expect("namespace");
    let server = cluster
        .add_pod(PodSpec::new("plain", "server").on_node(2).echo_server())
        .expect("server pod");
    let client = cluster
        .add_pod(PodSpec::new("plain", "client").on_node(1))
        .expect("client pod");
    assert!(
        server.ip().to_string().starts_with("10.244.2."),
        "{}",
        server.ip()
    );
    assert!(
        client.ip().to_string().starts_with("10.244.1."),
        "{}",
        client.ip()
    );

    let reply = client
        .tcp_echo(server.echo_tcp(), "hello")
        .expect("tcp echo");
    assert_eq!(reply.server, "plain/server");
    assert_eq!(reply.message, "hello");
    assert_eq!(
        reply.peer.ip(),
        client.ip(),
        "the server sees the client's own IP"
    );

    let (status, body) = client
        .http("GET", &format!("http://{}/hi", server.echo_http()), &[])
        .expect("http");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"path\":\"/hi\""), "{body}");

    // The controller's model sees both pods on their nodes.
    cluster
        .wait_for_model("both pods", Duration::from_secs(10), |m| {
            let w = m["workloads"].as_array().cloned().unwrap_or_default();
            w.iter()
                .any(|w| w["name"] == "server" && w["node"] == "node-2")
                && w.iter()
                    .any(|w| w["name"] == "client" && w["node"] == "node-1")
        })
        .expect("model");

    // A deleted pod is gone from its node.
    cluster.delete_pod(&client).expect("delete");
    assert!(!Netns::exists(client.netns().name()));
}

#[test]
fn the_example_manifests_are_accepted_by_the_controller() {
    let cluster = Cluster::up(ClusterConfig::default()).expect("cluster up");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("examples") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let name = path
                .file_stem()
                .expect("stem")
                .to_string_lossy()
                .into_owned();
            let text = std::fs::read_to_string(&path).expect("read");
            cluster.apply(&name, &text).expect("apply");
            names.push(name);
        }
    }
    assert!(names.len() >= 5, "{names:?}");
    let model = cluster
        .wait_for_model("the examples", Duration::from_secs(10), |m| {
            let text = m.to_string();
            [
                "deny-client",
                "allow-shop-tcp",
                "10.96.1.10",
                "web-routes",
                "read-only",
            ]
            .iter()
            .all(|needle| text.contains(needle))
        })
        .expect("model");
    let registry = cluster
        .controller()
        .debug("/registry")
        .expect("registry")
        .json()
        .expect("json");
    assert_eq!(
        registry["invalid"],
        serde_json::json!([]),
        "{registry:#}\n{model:#}"
    );
}
