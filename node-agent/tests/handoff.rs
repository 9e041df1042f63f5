//! The handoff server against a test client on the real SEQPACKET socket:
//! snapshot with netns fds, acks, streamed adds and deletes, replay after a
//! reconnect, KeepPod for pods ztunnel says it has.

mod common;

use std::time::Duration;

use common::FakeZtunnel;
use weft_api::nodeagent::PodIdentity;
use weft_cni::report::AckStatus;
use weft_node_agent::handoff::{HandoffHub, HandoffPod, HandoffServer};
use weft_node_agent::netns::NetNs;
use weft_testkit::eventually;

fn pod(uid: &str) -> HandoffPod {
    HandoffPod {
        identity: PodIdentity {
            uid: uid.into(),
            name: format!("pod-{uid}"),
            namespace: "ns".into(),
            service_account: "sa".into(),
        },
        addresses: vec!["10.0.0.1".into()],
        netns: NetNs::current().expect("own netns"),
    }
}

#[test]
fn snapshot_acks_deletes_and_replay() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("ztunnel.sock");
    let hub = HandoffHub::new();
    hub.add(pod("a"));
    hub.add(pod("b"));
    let server = rt
        .block_on(async { HandoffServer::bind(&path, hub.clone(), Duration::from_secs(10)) })
        .expect("bind");
    rt.spawn(server.run());
    let inode = NetNs::current().expect("own netns").inode();

    let z = FakeZtunnel::connect(&path, vec![]);
    let got = z.wait_for(3);
    assert_eq!(
        got,
        vec![
            format!("add a {inode}"),
            format!("add b {inode}"),
            "snapshot_sent".to_string()
        ]
    );
    eventually("pod a to be acked", Duration::from_secs(5), || {
        hub.ack_status("a") == Some(AckStatus::Acked)
    });
    assert_eq!(hub.connected(), 1);

    // Changes after the snapshot stream in order, each acked.
    hub.delete("a");
    hub.add(pod("c"));
    hub.delete("unknown");
    let got = z.wait_for(5);
    assert_eq!(got[3..], ["delete a".to_string(), format!("add c {inode}")]);
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
            format!("add b {inode}"),
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
    use std::os::fd::AsFd;
    use weft_api::handoff_wire;
    use weft_api::nodeagent::{Ack, ZtunnelMessage, ztunnel_message};

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("ztunnel.sock");
    let hub = HandoffHub::new();
    hub.add(pod("a"));
    let server = rt
        .block_on(async { HandoffServer::bind(&path, hub.clone(), Duration::from_secs(10)) })
        .expect("bind");
    rt.spawn(server.run());

    // An Ack before any Hello: the agent hangs up without sending anything.
    let sock = handoff_wire::connect(&path).expect("connect");
    let ack = ZtunnelMessage {
        kind: Some(ztunnel_message::Kind::Ack(Ack::default())),
    };
    handoff_wire::send(sock.as_fd(), &ack, None).expect("send");
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
