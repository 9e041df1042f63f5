//! The handoff server against a test client on the real SEQPACKET socket:
//! snapshot with netns fds, acks, streamed adds and deletes, replay after a
//! reconnect, KeepPod for pods ztunnel says it has; the pods' listeners,
//! which the agent makes and ztunnel gives back after an agent restart.
//!
//! Needs root: each pod is a network namespace of its own.

mod common;

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{FakeZtunnel, HeldListeners, NamedNetns, require_root_and_tools};
use weft_api::nodeagent::PodIdentity;
use weft_cni::report::AckStatus;
use weft_node_agent::handoff::{HandoffHub, HandoffPod, HandoffServer};
use weft_testkit::eventually;

const PORTS: [u16; 3] = [15001, 15006, 15008];

fn pod(uid: &str, ns: &NamedNetns) -> HandoffPod {
    HandoffPod {
        identity: PodIdentity {
            uid: uid.into(),
            name: format!("pod-{uid}"),
            namespace: "ns".into(),
            service_account: "sa".into(),
        },
        addresses: vec!["10.0.0.1".into()],
        netns: ns.open(),
    }
}

/// Root (pods are namespaces), a runtime and a directory for the socket.
fn setup() -> (tokio::runtime::Runtime, tempfile::TempDir) {
    require_root_and_tools();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    (rt, tempfile::tempdir().expect("tmp"))
}

/// Serves `hub` on `path` (as the agent does after its first sync).
fn serve(
    rt: &tokio::runtime::Runtime,
    hub: &Arc<HandoffHub>,
    path: &Path,
) -> tokio::task::JoinHandle<io::Result<()>> {
    hub.mark_synced();
    let server = rt
        .block_on(async { HandoffServer::bind(path, hub.clone(), Duration::from_secs(10)) })
        .expect("bind");
    rt.spawn(server.run())
}

/// What a root process in the pod gets when it binds `port` on all IPv4
/// addresses, with or without `SO_REUSEPORT`.
fn bind_in_pod(ns: &NamedNetns, port: u16, reuse_port: bool) -> io::Result<()> {
    ns.open()
        .run(|| {
            let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            socket.set_reuse_address(true)?;
            socket.set_reuse_port(reuse_port)?;
            socket.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())?;
            socket.listen(16)
        })
        .expect("enter the pod")
}

fn assert_ports_held(ns: &NamedNetns, why: &str) {
    for port in PORTS {
        for reuse_port in [false, true] {
            let err = bind_in_pod(ns, port, reuse_port).expect_err(&format!(
                "{why}: port {port} (reuseport {reuse_port}) was free"
            ));
            assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{why}: {err}");
        }
    }
}

fn socket_inode(fd: impl AsFd) -> u64 {
    nix::sys::stat::fstat(fd.as_fd()).expect("fstat").st_ino
}

/// The socket inodes of what `held` has for `uid`, by port.
fn held_inodes(held: &HeldListeners, uid: &str) -> Vec<(u32, u64)> {
    let held = held.lock().expect("held");
    let mut inodes: Vec<_> = held
        .get(uid)
        .map(|ls| {
            ls.iter()
                .map(|(l, fd)| (l.port, socket_inode(fd)))
                .collect()
        })
        .unwrap_or_default();
    inodes.sort_unstable();
    inodes
}

fn agent_inodes(hub: &HandoffHub, uid: &str) -> Vec<(u32, u64)> {
    let Some(listeners) = hub.listeners(uid) else {
        return Vec::new();
    };
    let mut inodes: Vec<_> = listeners
        .sockets
        .iter()
        .map(|s| (u32::from(s.port), socket_inode(&s.fd)))
        .collect();
    inodes.sort_unstable();
    inodes
}

#[test]
fn snapshot_acks_deletes_and_replay() {
    let (rt, dir) = setup();
    let path = dir.path().join("ztunnel.sock");
    let (na, nb, nc) = (
        NamedNetns::new("wha"),
        NamedNetns::new("whb"),
        NamedNetns::new("whc"),
    );
    let inode = |ns: &NamedNetns| ns.open().inode();
    let hub = HandoffHub::new();
    hub.add(pod("a", &na));
    hub.add(pod("b", &nb));
    serve(&rt, &hub, &path);

    let z = FakeZtunnel::connect(&path, vec![]);
    let got = z.wait_for(3);
    assert_eq!(
        got,
        vec![
            format!("add a {}", inode(&na)),
            format!("add b {}", inode(&nb)),
            "snapshot_sent".to_string()
        ]
    );
    // Each AddPod carried the pod's listeners: the agent's own sockets.
    assert_eq!(held_inodes(&z.held, "a"), agent_inodes(&hub, "a"));
    assert_eq!(held_inodes(&z.held, "a").len(), 3);
    eventually("pod a to be acked", Duration::from_secs(5), || {
        hub.ack_status("a") == Some(AckStatus::Acked)
    });
    assert_eq!(hub.connected(), 1);

    // Changes after the snapshot stream in order, each acked.
    hub.delete("a");
    hub.add(pod("c", &nc));
    hub.delete("unknown");
    let got = z.wait_for(5);
    assert_eq!(
        got[3..],
        ["delete a".to_string(), format!("add c {}", inode(&nc))]
    );
    eventually("pod c to be acked", Duration::from_secs(5), || {
        hub.ack_status("c") == Some(AckStatus::Acked)
    });
    drop(z);

    // A reconnecting ztunnel gets the current snapshot again; pods it says
    // it still has are kept, not re-added.
    eventually("the ztunnel to disconnect", Duration::from_secs(5), || {
        hub.connected() == 0
    });
    let z = FakeZtunnel::connect(&path, vec!["c".into()]);
    let got = z.wait_for(3);
    assert_eq!(
        got,
        vec![
            format!("add b {}", inode(&nb)),
            "keep c".to_string(),
            "snapshot_sent".to_string()
        ]
    );

    // Two ztunnels at once (an upgrade) both get every change.
    let z2 = FakeZtunnel::connect(&path, vec![]);
    z2.wait_for(3);
    hub.delete("b");
    assert_eq!(z.wait_for(4)[3], "delete b");
    assert_eq!(z2.wait_for(4)[3], "delete b");
}

#[test]
fn protocol_violations_close_the_connection() {
    use weft_api::handoff_wire;
    use weft_api::nodeagent::{Ack, Hello, ZtunnelMessage, ztunnel_message};

    let (rt, dir) = setup();
    let path = dir.path().join("ztunnel.sock");
    let na = NamedNetns::new("whv");
    let hub = HandoffHub::new();
    hub.add(pod("a", &na));
    serve(&rt, &hub, &path);

    // An Ack before any Hello: the agent hangs up without sending anything.
    let sock = handoff_wire::connect(&path).expect("connect");
    let ack = ZtunnelMessage {
        kind: Some(ztunnel_message::Kind::Ack(Ack::default())),
    };
    handoff_wire::send(sock.as_fd(), &ack, &[]).expect("send");
    let got = handoff_wire::recv::<weft_api::nodeagent::AgentMessage>(sock.as_fd()).expect("recv");
    assert!(got.is_none(), "expected the agent to close, got {got:?}");

    // A ztunnel of handoff version 1 (it would bind the pods' listeners
    // itself): refused before any pod is sent.
    let sock = handoff_wire::connect(&path).expect("connect");
    let old = ZtunnelMessage {
        kind: Some(ztunnel_message::Kind::Hello(Hello {
            version: 1,
            known_pod_uids: vec![],
            leaving: false,
            instance: String::new(),
        })),
    };
    handoff_wire::send(sock.as_fd(), &old, &[]).expect("send");
    let got = handoff_wire::recv::<weft_api::nodeagent::AgentMessage>(sock.as_fd()).expect("recv");
    assert!(got.is_none(), "expected the agent to close, got {got:?}");

    // Garbage bytes: same.
    let sock = handoff_wire::connect(&path).expect("connect");
    nix::sys::socket::send(
        std::os::fd::AsRawFd::as_raw_fd(&sock),
        &[0xff; 7],
        nix::sys::socket::MsgFlags::empty(),
    )
    .expect("send");
    let got = handoff_wire::recv::<weft_api::nodeagent::AgentMessage>(sock.as_fd()).expect("recv");
    assert!(got.is_none());
    // The server still serves others.
    let z = FakeZtunnel::connect(&path, vec![]);
    assert_eq!(z.wait_for(2).len(), 2);
}

#[test]
fn no_snapshot_is_served_before_the_agent_has_synced() {
    let (rt, dir) = setup();
    let path = dir.path().join("ztunnel.sock");
    let na = NamedNetns::new("whs");
    let hub = HandoffHub::new();
    let server = rt
        .block_on(async { HandoffServer::bind(&path, hub.clone(), Duration::from_secs(10)) })
        .expect("bind");
    rt.spawn(server.run());
    // A ztunnel that reconnects to a restarted agent still holds pod a; an
    // empty snapshot now would make it drop a and close a's sockets.
    let z = FakeZtunnel::connect(&path, vec!["a".into()]);
    std::thread::sleep(Duration::from_millis(300));
    assert!(z.entries().is_empty(), "{:?}", z.entries());
    hub.add(pod("a", &na));
    hub.mark_synced();
    assert_eq!(z.wait_for(2), vec!["keep a", "snapshot_sent"]);
}

#[test]
fn the_agent_holds_each_pods_listeners_so_nothing_in_the_pod_can_bind_them() {
    let (rt, dir) = setup();
    let path = dir.path().join("ztunnel.sock");
    let (na, nb) = (NamedNetns::new("whl"), NamedNetns::new("whq"));
    // Something in pod b binds 15006 before b is enrolled (SO_REUSEPORT, as
    // ztunnel's own listeners used to be).
    let squat = nb
        .open()
        .run(|| {
            let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            socket.set_reuse_port(true)?;
            socket.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 15006)).into())?;
            socket.listen(16)?;
            io::Result::Ok(socket)
        })
        .expect("enter b")
        .expect("squat 15006 in b");

    let hub = HandoffHub::new();
    hub.add(pod("a", &na));
    hub.add(pod("b", &nb));
    // No ztunnel yet: the agent alone holds a's ports, against every bind.
    assert_ports_held(&na, "agent only");
    serve(&rt, &hub, &path);
    let z = FakeZtunnel::connect(&path, vec![]);
    // b is not handed over: its 15006 is someone else's, and ztunnel serving
    // the other two would not make b covered.
    assert_eq!(
        z.wait_for(2),
        vec![
            format!("add a {}", na.open().inode()),
            "snapshot_sent".into()
        ]
    );
    match hub.ack_status("b") {
        Some(AckStatus::Failed(e)) => assert!(e.contains("port 15006"), "{e}"),
        other => panic!("b: {other:?}"),
    }
    drop(squat);

    // ztunnel gone: the agent's copies still hold the ports.
    drop(z);
    eventually("ztunnel to disconnect", Duration::from_secs(5), || {
        hub.connected() == 0
    });
    assert_ports_held(&na, "after ztunnel left");
    // The pod leaves the mesh: the ports are free again.
    hub.delete("a");
    assert!(bind_in_pod(&na, 15006, false).is_ok());
}

#[test]
fn a_restarted_agent_takes_the_listeners_back_from_ztunnel() {
    let (rt, dir) = setup();
    let path = dir.path().join("ztunnel.sock");
    let na = NamedNetns::new("whr");

    let first = HandoffHub::new();
    first.add(pod("a", &na));
    let server = serve(&rt, &first, &path);
    let z = FakeZtunnel::connect(&path, vec![]);
    z.wait_for(2);
    let original = agent_inodes(&first, "a");
    assert_eq!(held_inodes(&z.held, "a"), original);

    // The agent stops: its process, and with it its copies, are gone; the
    // ztunnel keeps serving a.
    let held = z.held.clone();
    drop(z);
    eventually("ztunnel to disconnect", Duration::from_secs(5), || {
        first.connected() == 0
    });
    server.abort();
    eventually(
        "the first agent's hub to be gone",
        Duration::from_secs(5),
        || Arc::strong_count(&first) == 1,
    );
    drop(first);
    assert_ports_held(&na, "ztunnel alone");

    // A new agent enrolls a again: the ports are held (by ztunnel), so it
    // makes no second set of sockets, and waits for ztunnel's.
    let second = HandoffHub::new();
    second.add(pod("a", &na));
    assert!(second.listeners("a").is_none());
    serve(&rt, &second, &path);
    let z = FakeZtunnel::connect_holding(&path, vec!["a".into()], held);
    assert_eq!(z.wait_for(2), vec!["keep a", "snapshot_sent"]);
    eventually(
        "the agent to hold a's sockets again",
        Duration::from_secs(5),
        || agent_inodes(&second, "a") == original,
    );

    // Then ztunnel stops too (no overlap): the agent's copies keep the very
    // same sockets, and the next ztunnel gets them.
    z.held.lock().expect("held").clear();
    drop(z);
    assert_ports_held(&na, "agent alone after its restart");
    let next = FakeZtunnel::connect(&path, vec![]);
    next.wait_for(2);
    assert_eq!(held_inodes(&next.held, "a"), original);
}

/// An agent restarted with pod `a` enrolled while a ztunnel (which it
/// returns) holds a's listeners: the first agent is gone, the second is
/// serving and could not make a's sockets.
fn restarted_agent_while_ztunnel_holds_a(
    rt: &tokio::runtime::Runtime,
    path: &Path,
    na: &NamedNetns,
) -> (Arc<HandoffHub>, HeldListeners, Vec<(u32, u64)>) {
    let first = HandoffHub::new();
    first.add(pod("a", na));
    let server = serve(rt, &first, path);
    let z = FakeZtunnel::connect(path, vec![]);
    z.wait_for(2);
    let original = agent_inodes(&first, "a");
    let held = z.held.clone();
    drop(z);
    server.abort();
    eventually("the first agent to be gone", Duration::from_secs(5), || {
        Arc::strong_count(&first) == 1
    });
    drop(first);
    let second = HandoffHub::new();
    second.add(pod("a", na));
    assert!(second.listeners("a").is_none());
    serve(rt, &second, path);
    (second, held, original)
}

/// A ztunnel and the agent rolled together (CI found it): the new ztunnel
/// connects to the new agent before the old ztunnel does, so its snapshot
/// cannot carry a, whose sockets the old ztunnel holds. When the old
/// ztunnel gives them back, the new one gets a with those very sockets.
#[test]
fn a_ztunnel_that_connected_before_the_listeners_came_back_gets_the_pod_when_they_do() {
    let (rt, dir) = setup();
    let path = dir.path().join("ztunnel.sock");
    let na = NamedNetns::new("wlb");
    let (hub, held, original) = restarted_agent_while_ztunnel_holds_a(&rt, &path, &na);

    let new = FakeZtunnel::connect(&path, vec![]);
    assert_eq!(new.wait_for(1), vec!["snapshot_sent"]);
    eventually(
        "a's status to say why",
        Duration::from_secs(5),
        || match hub.ack_status("a") {
            Some(AckStatus::Failed(why)) if why.contains("already bound") => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );

    let old = FakeZtunnel::connect_holding(&path, vec!["a".into()], held);
    assert_eq!(old.wait_for(2), vec!["keep a", "snapshot_sent"]);
    let entries = new.wait_for(2);
    assert!(entries[1].starts_with("add a "), "{entries:?}");
    assert_eq!(held_inodes(&new.held, "a"), original);
    assert_eq!(agent_inodes(&hub, "a"), original);
    assert_eq!(hub.ack_status("a"), Some(AckStatus::Acked));
}

/// The same, but the old ztunnel exits without ever reconnecting: once its
/// sockets are closed, the agent binds new ones and the waiting ztunnel
/// gets them.
#[test]
fn a_ztunnel_waiting_for_a_pods_listeners_gets_new_ones_when_their_last_holder_exits() {
    let (rt, dir) = setup();
    let path = dir.path().join("ztunnel.sock");
    let na = NamedNetns::new("wlx");
    let (hub, held, original) = restarted_agent_while_ztunnel_holds_a(&rt, &path, &na);

    let new = FakeZtunnel::connect(&path, vec![]);
    assert_eq!(new.wait_for(1), vec!["snapshot_sent"]);
    // Still held by the old ztunnel: nothing to send a while it lives.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(new.entries(), vec!["snapshot_sent"]);

    held.lock().expect("held").clear();
    let entries = new.wait_for(2);
    assert!(entries[1].starts_with("add a "), "{entries:?}");
    let now = held_inodes(&new.held, "a");
    assert_eq!(now.len(), original.len());
    assert_ne!(now, original, "new sockets, the old ones are closed");
    assert_eq!(agent_inodes(&hub, "a"), now);
    assert_ports_held(&na, "after the agent bound them again");
}

/// A stopping agent waits for `hand_over` before it exits: a ztunnel that
/// is itself stopping does not count (it would exit trusting the agent's
/// copies, and the pods' connections would be refused until the next agent
/// binds the ports again), even through a connection it made before it
/// said so; one that is not, once it has every pod, does. After that, a
/// stopping ztunnel is not told the agent holds the pods.
#[test]
fn a_stopping_agent_counts_only_on_a_ztunnel_that_is_not_stopping_to_hold_the_listeners() {
    let (rt, dir) = setup();
    let path = dir.path().join("ztunnel.sock");
    let hub = HandoffHub::new();
    // Holding no pod's listeners, the agent may go at once.
    assert!(hub.is_handed_over());
    let ns = NamedNetns::new("who");
    hub.add(pod("a", &ns));
    assert!(!hub.is_handed_over(), "the agent holds the only copies");
    serve(&rt, &hub, &path);
    let added = vec![
        format!("add a {}", ns.open().inode()),
        "snapshot_sent".into(),
    ];

    let old = FakeZtunnel::connect_as(&path, "old", false);
    assert_eq!(old.wait_for(2), added);
    eventually(
        "the old ztunnel to count as a holder",
        Duration::from_secs(5),
        || hub.is_handed_over(),
    );
    // The same process, stopping, says so on a new connection: its first
    // one, still open, no longer counts.
    let old_leaving = FakeZtunnel::connect_as(&path, "old", true);
    assert_eq!(
        old_leaving.wait_for(2),
        added,
        "a stopping ztunnel still gets the pods"
    );
    assert!(
        !hub.is_handed_over(),
        "a stopping ztunnel's copies are counted on"
    );
    drop(old);

    let waiting = rt.spawn({
        let hub = hub.clone();
        async move { hub.hand_over().await }
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !waiting.is_finished(),
        "the agent would exit holding the only copies"
    );

    let new = FakeZtunnel::connect_as(&path, "new", false);
    assert_eq!(new.wait_for(2), added);
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), waiting).await })
        .expect("handed over once a ztunnel that stays has the pod")
        .expect("task");
    assert_eq!(held_inodes(&new.held, "a"), agent_inodes(&hub, "a"));

    // Exiting now: a ztunnel stopping from here on gets the pods but not
    // the word that this agent holds them, and is hung up on.
    let late = FakeZtunnel::connect_as(&path, "late", true);
    eventually(
        "the agent to hang up on the late ztunnel",
        Duration::from_secs(5),
        || late.thread.as_ref().is_some_and(|t| t.is_finished()),
    );
    assert_eq!(late.entries(), added[..1].to_vec());

    drop(new);
    eventually(
        "the staying ztunnel to disconnect",
        Duration::from_secs(5),
        || !hub.is_handed_over(),
    );
    drop(old_leaving);
}
