//! Who is in the mesh: the node agent programs enrolled pods (by namespace
//! or pod label) and leaves the others alone, and labelling a namespace live
//! moves its running pods into the tunnel and back without restarting them.
//! Needs root and ztunnel.

mod common;

use common::*;
use weft_e2e::PodSpec;
use weft_e2e::manifests::DATAPLANE_MODE;

#[test]
fn enrolled_pods_get_redirect_rules_and_others_do_not() {
    let _one = serial();
    let mut c = mesh_cluster();
    c.add_namespace("mesh", true).expect("namespace");
    c.add_namespace("plain", false).expect("namespace");
    let member = c
        .add_pod(PodSpec::new("mesh", "member").on_node(1))
        .expect("pod");
    let opted_out = c
        .add_pod(
            PodSpec::new("mesh", "opted-out")
                .on_node(2)
                .label(DATAPLANE_MODE, "none"),
        )
        .expect("pod");
    let outside = c
        .add_pod(PodSpec::new("plain", "outside").on_node(2))
        .expect("pod");
    let by_label = c
        .add_pod(
            PodSpec::new("plain", "by-label")
                .on_node(1)
                .label(DATAPLANE_MODE, "ambient"),
        )
        .expect("pod");

    c.wait_in_mesh(&member, CONVERGE)
        .expect("namespace label enrolls");
    c.wait_in_mesh(&by_label, CONVERGE)
        .expect("pod label enrolls");
    for pod in [&opted_out, &outside] {
        let rules = pod.redirect_rules().expect("rules");
        assert!(
            rules.absent(),
            "{} has weft rules:\n{}",
            pod.key(),
            rules.text
        );
    }
    let rules = member.redirect_rules().expect("rules");
    assert!(
        rules.text.contains("15001") && rules.text.contains("15006"),
        "{}",
        rules.text
    );

    // The controller agrees: HBONE for the enrolled, plain TCP for the rest.
    c.wait_for_model("protocols", CONVERGE, |m| {
        let hbone = |name: &str| {
            m["workloads"].as_array().is_some_and(|ws| {
                ws.iter()
                    .any(|w| w["name"] == name && w["protocol"] == "TUNNEL_PROTOCOL_HBONE")
            })
        };
        hbone("member") && hbone("by-label") && !hbone("opted-out") && !hbone("outside")
    })
    .expect("model");

    // The agents report no drift.
    for node in [1, 2] {
        let (report, covered) = c.coverage(node).expect("coverage");
        assert!(covered, "node {node}: {report:#}");
    }

    // A running pod opts out with its own label, and back in without it.
    c.label_pod(&member, DATAPLANE_MODE, Some("none"))
        .expect("label");
    c.wait_redirected(&member, false, CONVERGE)
        .expect("opted out live");
    c.label_pod(&member, DATAPLANE_MODE, None).expect("unlabel");
    c.wait_in_mesh(&member, CONVERGE).expect("back in the mesh");
}

#[test]
fn enrolling_a_namespace_live_moves_running_pods_into_the_tunnel_and_back() {
    let _one = serial();
    let mut c = mesh_cluster();
    c.add_namespace("shop", false).expect("namespace");
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
    let server_pid = c
        .state()
        .processes
        .iter()
        .find(|p| p.name == "shop/server")
        .map(|p| (p.pid, p.started))
        .expect("server process");
    let sandboxes = || {
        (
            weft_e2e::netns::Netns::inode_of(client.netns().name()),
            weft_e2e::netns::Netns::inode_of(server.netns().name()),
        )
    };
    let sandboxes_before = sandboxes();

    let exchange = |c: &weft_e2e::Cluster, secret: &str| {
        let capture = c.capture("live").expect("capture");
        let reply = client
            .tcp_echo(server.echo_tcp(), secret)
            .expect("exchange");
        let text = capture.finish().expect("capture");
        assert_eq!(
            reply.peer.ip(),
            client.ip(),
            "the server sees the client's IP"
        );
        text
    };

    // Outside the mesh: plaintext on the underlay.
    let before = exchange(&c, "before-enrollment");
    assert!(before.contains("before-enrollment"), "{}", before.text);

    // Label the namespace: the running pods are enrolled.
    c.label_namespace("shop", DATAPLANE_MODE, Some("ambient"))
        .expect("label");
    c.wait_in_mesh(&client, CONVERGE)
        .expect("client enrolled live");
    c.wait_in_mesh(&server, CONVERGE)
        .expect("server enrolled live");
    let during = exchange(&c, "while-enrolled");
    assert!(
        !during.contains("while-enrolled"),
        "plaintext in the mesh:\n{}",
        during.text
    );
    assert!(
        during.destination_ports().contains_key(&15008),
        "{}",
        during.text
    );

    // Remove the label: back out, plaintext again.
    c.label_namespace("shop", DATAPLANE_MODE, None)
        .expect("unlabel");
    c.wait_redirected(&client, false, CONVERGE)
        .expect("client unenrolled");
    c.wait_redirected(&server, false, CONVERGE)
        .expect("server unenrolled");
    c.wait_for_ztunnels("server no longer HBONE", "/workloads", CONVERGE, |v| {
        v["workloads"].as_array().is_some_and(|ws| {
            !ws.iter()
                .any(|w| w["uid"] == server.uid() && w["protocol"] == "TUNNEL_PROTOCOL_HBONE")
        })
    })
    .expect("model updated");
    let after = exchange(&c, "after-unenrollment");
    assert!(after.contains("after-unenrollment"), "{}", after.text);

    // No pod was restarted: same processes, same namespaces.
    assert!(
        weft_e2e::procs::is_alive(server_pid.0, server_pid.1),
        "the server process restarted"
    );
    assert_eq!(
        sandboxes(),
        sandboxes_before,
        "a pod sandbox was re-created"
    );
}
