//! The mesh under disruption: the controller stopped and restarted, and
//! ztunnel restarted on each node under a steady stream of new connections.
//! Needs root and ztunnel.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;
use weft_e2e::app::protocol::LoadReport;
use weft_e2e::{Pod, PodSpec};

/// A connection held open from inside a pod, for line exchanges.
struct Held {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Held {
    fn open(from: &Pod, to: SocketAddr) -> Held {
        let stream = from
            .netns()
            .run(|| TcpStream::connect_timeout(&to, Duration::from_secs(5)))
            .expect("enter pod")
            .expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let reader = BufReader::new(stream.try_clone().expect("clone"));
        Held { stream, reader }
    }

    fn exchange(&mut self, line: &str) -> String {
        self.stream
            .write_all(format!("{line}\n").as_bytes())
            .expect("write");
        let mut reply = String::new();
        self.reader.read_line(&mut reply).expect("read");
        assert!(reply.contains(line), "{reply}");
        reply
    }
}

#[test]
fn with_the_controller_stopped_the_data_plane_keeps_working_and_converges_after_a_restart() {
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
    c.wait_in_mesh(&client, CONVERGE).expect("client");
    c.wait_in_mesh(&server, CONVERGE).expect("server");
    let mut held = Held::open(&client, server.echo_tcp());
    held.exchange("before");

    c.stop_controller();
    // Existing and new connections keep working on the last config.
    held.exchange("controller-down");
    let reply = client
        .tcp_echo(server.echo_tcp(), "new-while-down")
        .expect("new connection");
    assert_eq!(reply.peer.ip(), client.ip());
    for node in [1, 2] {
        let ready = weft_e2e::components::ztunnel::readiness(c.node(node).expect("node").netns())
            .expect("readiness");
        assert_eq!(ready.status, 200, "node {node}: {}", ready.body);
    }

    // A pod scheduled meanwhile is attached (the CNI chain and agent need no
    // controller); once the controller is back, the mesh converges on it.
    let late = c
        .add_pod(
            PodSpec::new("shop", "late")
                .on_node(1)
                .service_account("late")
                .echo_server(),
        )
        .expect("late pod");
    c.start_controller().expect("restart");
    c.wait_in_mesh(&late, CONVERGE)
        .expect("converged on the new pod");
    let reply = client
        .tcp_echo(late.echo_tcp(), "after-restart")
        .expect("to the new pod");
    assert_eq!(reply.server, "shop/late");
    held.exchange("after-restart");
}

#[test]
fn restarting_ztunnel_under_steady_load_fails_no_new_connection() {
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
    c.wait_in_mesh(&client, CONVERGE).expect("client");
    c.wait_in_mesh(&server, CONVERGE).expect("server");

    let target = server.echo_tcp().to_string();
    let mut load = c
        .spawn_app(&client, "load", &["load", &target, "--rate", "50"])
        .expect("load");
    std::thread::sleep(Duration::from_secs(1));
    // The client's node, then the server's: a new ztunnel beside the old one,
    // then the old one drains.
    for node in [1, 2] {
        c.restart_ztunnel(node, Duration::from_secs(10))
            .expect("restart");
        std::thread::sleep(Duration::from_millis(500));
    }
    let status = load.stop(Duration::from_secs(10)).expect("load stopped");
    assert!(status.success(), "load: {status}\n{}", load.log_tail(20));
    let log = std::fs::read_to_string(load.log()).expect("load log");
    let report: LoadReport = log
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .expect("a load report");
    assert!(report.succeeded > 50, "{report:?}");
    assert_eq!(
        report.failed, 0,
        "new connections failed during the restarts: {report:?}"
    );
}
