//! The mesh under disruption: the controller stopped and restarted, and
//! ztunnel and the node agent restarted on each node under a steady stream
//! of new connections.
//! Needs root and ztunnel.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;
use weft_e2e::app::protocol::LoadReport;
use weft_e2e::process::{ManagedProcess, wait_until};
use weft_e2e::{Cluster, Pod, PodSpec};

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

/// A meshed client on node 1 and an echo server on node 2, both in the mesh.
fn client_and_server() -> (Cluster, Pod, Pod) {
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
    (c, client, server)
}

/// Starts 50 new connections a second from `client` to `server`'s echo
/// port, and lets them run for a second.
fn start_load(c: &mut Cluster, client: &Pod, server: &Pod) -> ManagedProcess {
    let target = server.echo_tcp().to_string();
    let load = c
        .spawn_app(client, "load", &["load", &target, "--rate", "50"])
        .expect("load");
    std::thread::sleep(Duration::from_secs(1));
    load
}

/// Stops the load generator and checks that it made progress and that no
/// new connection failed.
fn assert_no_connection_failed(mut load: ManagedProcess) {
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

#[test]
fn with_the_controller_stopped_the_data_plane_keeps_working_and_converges_after_a_restart() {
    let _one = serial();
    let (mut c, client, server) = client_and_server();
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
    let (mut c, client, server) = client_and_server();

    let load = start_load(&mut c, &client, &server);
    // The client's node, then the server's: a new ztunnel beside the old one,
    // then the old one drains.
    for node in [1, 2] {
        c.restart_ztunnel(node, Duration::from_secs(10))
            .expect("restart");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_no_connection_failed(load);
}

/// The listening sockets in `pod` on ztunnel's ports: (port, socket inode),
/// read from `/proc/net/tcp` inside (a second socket on a port would show
/// as a second entry).
fn listener_sockets(pod: &Pod) -> Vec<(u16, u64)> {
    let table = pod
        .netns()
        .run(|| std::fs::read_to_string("/proc/thread-self/net/tcp").unwrap_or_default())
        .expect("enter pod");
    let mut sockets: Vec<(u16, u64)> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.get(3) != Some(&"0A") {
                return None;
            }
            let port = u16::from_str_radix(cols.get(1)?.rsplit(':').next()?, 16).ok()?;
            let inode = cols.get(9)?.parse().ok()?;
            [15001, 15006, 15008]
                .contains(&port)
                .then_some((port, inode))
        })
        .collect();
    sockets.sort_unstable();
    sockets
}

/// What a root process in `pod` gets when it binds `port` on all addresses
/// with `SO_REUSEPORT`.
fn bind_beside_ztunnel(pod: &Pod, port: u16) -> std::io::Result<()> {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, bind, listen, setsockopt, socket,
        sockopt,
    };
    use std::os::fd::AsRawFd;
    pod.netns()
        .run(|| {
            let fd = socket(
                AddressFamily::Inet,
                SockType::Stream,
                SockFlag::SOCK_CLOEXEC,
                None,
            )?;
            setsockopt(&fd, sockopt::ReusePort, &true)?;
            bind(fd.as_raw_fd(), &SockaddrIn::new(0, 0, 0, 0, port))?;
            listen(&fd, Backlog::new(16)?)
        })
        .expect("enter pod")
        .map_err(std::io::Error::from)
}

#[test]
fn restarting_the_node_agent_keeps_every_pods_listeners() {
    let _one = serial();
    let (mut c, client, server) = client_and_server();
    let before = [listener_sockets(&client), listener_sockets(&server)];
    for sockets in &before {
        assert_eq!(sockets.len(), 3, "one socket per port: {sockets:?}");
    }

    let load = start_load(&mut c, &client, &server);
    for node in [1, 2] {
        c.restart_node_agent(node).expect("agent restart");
        // The ztunnel reconnects, is told to keep its pods and gives their
        // sockets back: the node is covered again.
        wait_until(&format!("node {node} covered again"), CONVERGE, || {
            c.coverage(node).is_ok_and(|(_, covered)| covered)
        })
        .expect("coverage");
    }
    // The very same sockets, no second set, and still nothing in the pod
    // can bind beside them.
    assert_eq!(
        [listener_sockets(&client), listener_sockets(&server)],
        before
    );
    for port in [15006, 15008] {
        let err = bind_beside_ztunnel(&server, port).expect_err("bound beside ztunnel");
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{err}");
    }
    // The restarted agents hold the sockets: with no ztunnel running for a
    // while, they stay, and the next ztunnel serves the connections that
    // waited.
    for node in [1, 2] {
        c.restart_ztunnel_without_overlap(node, Duration::from_secs(10))
            .expect("ztunnel restart");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        [listener_sockets(&client), listener_sockets(&server)],
        before
    );

    assert_no_connection_failed(load);
}
