//! The real CNI chain (Debian's bridge + host-local, then the installed
//! weft-cni) on real network namespaces, with the node agent running in this
//! process. Needs root, iproute2, nftables, iptables and
//! containernetworking-plugins; fails (never silently passes) without them.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::{Namespace, Pod, PodSpec as K8sPodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use weft_cni::enrollment::{AMBIENT, DATAPLANE_MODE_LABEL, EnrollmentCache, NETNS_ANNOTATION};
use weft_node_agent::agent::{AgentConfig, NetnsDiscovery, NodeAgent, serve_requests};
use weft_node_agent::handoff::{HandoffHub, HandoffServer};
use weft_node_agent::netns::NetNs;
use weft_node_agent::redirect::{Backend, Redirector, ZTUNNEL_MARK};
use weft_testkit::eventually;

const NODE: &str = "node-1";
const SUBNET: &str = "10.251.0.0/24";
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 251, 0, 1);
const WAIT: Duration = Duration::from_secs(5);
const NOT_EXPECTED: Duration = Duration::from_millis(300);

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).expect("json")
}

fn namespace(name: &str, ambient: bool) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: if ambient {
                labels(&[(DATAPLANE_MODE_LABEL, AMBIENT)])
            } else {
                None
            },
            ..Default::default()
        },
        ..Default::default()
    }
}

fn pod_object(p: &PodSpec<'_>, mode: Option<&str>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(p.name.into()),
            namespace: Some(p.namespace.into()),
            uid: Some(p.uid.clone()),
            labels: mode.and_then(|m| labels(&[(DATAPLANE_MODE_LABEL, m)])),
            annotations: labels(&[(NETNS_ANNOTATION, &p.netns.path().display().to_string())]),
            ..Default::default()
        },
        spec: Some(K8sPodSpec {
            node_name: Some(NODE.into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A node with weft-cni installed and an agent (and its sockets) running.
struct Bed {
    rt: tokio::runtime::Runtime,
    node: NamedNetns,
    cni: CniEnvFixture,
    agent: Arc<NodeAgent>,
    namespaces: Vec<Namespace>,
    /// The pods the registry lists, as `add` created them.
    listed: std::cell::RefCell<Vec<Pod>>,
}

impl Bed {
    fn new(backend: Backend, namespaces: &[Namespace]) -> Bed {
        require_root_and_tools();
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let node = NamedNetns::new("wn");
        let cni = CniEnvFixture::new();
        cni.install(SUBNET);
        let hub = HandoffHub::new();
        let agent = NodeAgent::new(
            AgentConfig {
                node: NODE.into(),
                discovery: NetnsDiscovery::Annotation,
                enrollment_cache: Some(cni.cache()),
                // The node's bridge address stands in for the probe source:
                // the node's own connections to pods are its probes.
                redirector: Redirector::new(backend, GATEWAY),
                identity_wait: Duration::from_millis(1500),
                host_probes: None,
                local_bypass: std::sync::Arc::new(weft_node_agent::bypass::Bypass::Off),
            },
            hub.clone(),
        );
        rt.block_on(agent.sync(std::iter::empty(), namespaces));
        let socket = cni.agent_socket();
        let a = agent.clone();
        rt.spawn(async move { serve_requests(a, &socket).await });
        let handoff_path = cni.dir.path().join("ztunnel.sock");
        let server = rt
            .block_on(async {
                HandoffServer::bind(&handoff_path, hub.clone(), Duration::from_secs(10))
            })
            .expect("handoff bind");
        rt.spawn(server.run());
        // The request socket is bound by the spawned task.
        eventually("the agent socket to appear", WAIT, || {
            cni.agent_socket().exists()
        });
        Bed {
            rt,
            node,
            cni,
            agent,
            namespaces: namespaces.to_vec(),
            listed: Default::default(),
        }
    }

    /// The pod is created (the registry lists it), then its sandbox: the
    /// runtime's ADD through the chain.
    fn add(&self, pod: &PodSpec<'_>) -> ChainResult {
        self.listed.borrow_mut().push(pod_object(pod, None));
        self.rt.block_on(
            self.agent
                .sync(self.listed.borrow().iter(), &self.namespaces),
        );
        let bin = self.cni.bin_dir();
        run_chain(
            &self.node,
            &self.cni.conflist(),
            &[Path::new(DEBIAN_CNI_DIR), &bin],
            "ADD",
            pod,
            None,
        )
    }
}

/// A pod's listener on `port` as ztunnel gets it: a copy of the socket the
/// agent made in the pod when it enrolled it.
fn agent_listener(bed: &Bed, uid: &str, port: u16) -> std::net::TcpListener {
    let listeners = bed
        .agent
        .hub()
        .listeners(uid)
        .expect("the agent holds the pod's listeners");
    let fd = listeners
        .get(port, false)
        .unwrap_or_else(|| panic!("no listener on {port}"))
        .try_clone_to_owned()
        .expect("dup");
    let listener = std::net::TcpListener::from(fd);
    listener.set_nonblocking(true).expect("nonblocking");
    listener
}

fn capture_scenario(backend: Backend) {
    let bed = Bed::new(
        backend,
        &[namespace("mesh", true), namespace("plain", false)],
    );
    let (a_ns, b_ns) = (NamedNetns::new("wpa"), NamedNetns::new("wpb"));
    let a = PodSpec {
        namespace: "mesh",
        name: "a",
        uid: unique("uid-a-"),
        netns: &a_ns,
    };
    let b = PodSpec {
        namespace: "plain",
        name: "b",
        uid: unique("uid-b-"),
        netns: &b_ns,
    };

    let ra = bed.add(&a);
    assert!(ra.ok, "ADD a failed in {}: {}", ra.plugin, ra.stdout);
    // weft-cni passed the bridge's result through unchanged.
    assert_eq!(ra.outputs.len(), 2);
    assert_eq!(json(&ra.outputs[1]), json(&ra.outputs[0]));
    let rb = bed.add(&b);
    assert!(rb.ok, "ADD b failed in {}: {}", rb.plugin, rb.stdout);
    assert!(bed.rt.block_on(bed.agent.is_enrolled(&a.uid)));
    assert!(!bed.rt.block_on(bed.agent.is_enrolled(&b.uid)));
    let (ip_a, ip_b) = (result_ip(&ra.stdout), result_ip(&rb.stdout));
    let (na, nb) = (a_ns.open(), b_ns.open());

    // ztunnel's listeners in A (the agent made them: nothing else there may
    // bind those ports), a trap in B, servers on 8080.
    let a_out = agent_listener(&bed, &a.uid, 15001);
    let a_in = agent_listener(&bed, &a.uid, 15006);
    let a_hbone = agent_listener(&bed, &a.uid, 15008);
    let a_app = listen_in(&na, 8080);
    let b_trap = listen_in(&nb, 15001);
    let b_app = listen_in(&nb, 8080);

    // Enrolled A -> B:8080 lands on A's 15001 with B:8080 as original dst.
    let dst = SocketAddrV4::new(ip_b, 8080);
    let _c = connect_from(&na, dst, None).expect("A -> B");
    let s = accept_within(&a_out, WAIT).expect("A's outbound was not captured on 15001");
    assert_eq!(original_dst(&s), dst);
    assert!(
        accept_within(&b_app, NOT_EXPECTED).is_none(),
        "A's outbound bypassed the capture"
    );

    // ztunnel's own (marked) traffic from A is not re-captured.
    let _c = connect_from(&na, dst, Some(ZTUNNEL_MARK)).expect("marked A -> B");
    assert!(
        accept_within(&b_app, WAIT).is_some(),
        "marked traffic did not reach B"
    );
    assert!(
        accept_within(&a_out, NOT_EXPECTED).is_none(),
        "marked traffic was re-captured"
    );

    // Non-enrolled B -> A:8080: B's outbound is not captured; A's inbound is
    // redirected to 15006 with A:8080 as original dst.
    let dst_a = SocketAddrV4::new(ip_a, 8080);
    let _c = connect_from(&nb, dst_a, None).expect("B -> A");
    let s = accept_within(&a_in, WAIT).expect("A's inbound was not captured on 15006");
    assert_eq!(original_dst(&s), dst_a);
    assert!(
        accept_within(&b_trap, NOT_EXPECTED).is_none(),
        "non-enrolled B's outbound was captured"
    );
    assert!(accept_within(&a_app, NOT_EXPECTED).is_none());

    // HBONE to A:15008 reaches 15008 directly.
    let _c = connect_from(&nb, SocketAddrV4::new(ip_a, 15008), None).expect("B -> A:15008");
    assert!(
        accept_within(&a_hbone, WAIT).is_some(),
        "15008 was redirected"
    );

    // The node's probe source reaches the application directly.
    let _c = connect_from(&bed.node.open(), dst_a, None).expect("probe");
    assert!(
        accept_within(&a_app, WAIT).is_some(),
        "probe traffic was captured"
    );
    assert!(accept_within(&a_in, NOT_EXPECTED).is_none());

    // Source preservation: ztunnel's IP_TRANSPARENT connection from B's IP
    // (marked 0x539) reaches A's application, which sees B's address, and
    // the reply comes back to ztunnel's socket (connmark 0x111, table 100)
    // instead of being routed out to the real B.
    let mut spoofed = na
        .run(|| -> std::io::Result<TcpStream> {
            let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            sock.set_ip_transparent_v4(true)?;
            sock.set_mark(ZTUNNEL_MARK)?;
            sock.bind(&SocketAddr::from((ip_b, 0)).into())?;
            sock.connect_timeout(&SocketAddr::V4(dst_a).into(), WAIT)?;
            Ok(sock.into())
        })
        .expect("enter netns")
        .expect("transparent connect from B's address");
    let mut served =
        accept_within(&a_app, WAIT).expect("transparent connection did not reach the app");
    assert_eq!(
        served.peer_addr().expect("peer").ip(),
        IpAddr::V4(ip_b),
        "the app did not see the client's IP"
    );
    served.set_nonblocking(false).expect("blocking");
    served.write_all(b"reply").expect("app reply");
    spoofed.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut buf = [0u8; 5];
    spoofed
        .read_exact(&mut buf)
        .expect("the reply did not come back to ztunnel");
    assert_eq!(&buf, b"reply");

    // Coverage: A has rules and listeners but no ztunnel acked it yet.
    let report = bed.rt.block_on(bed.agent.coverage());
    let pa = report
        .pods
        .iter()
        .find(|p| p.uid == a.uid)
        .expect("A in report");
    assert!(pa.should_enroll && pa.enrolled);
    assert!(pa.rules.as_ref().is_some_and(|r| r.complete()));
    assert!(pa.listeners.is_some_and(|l| l.complete()));
    assert!(
        pa.problems.iter().any(|p| p.contains("acknowledged")),
        "{pa:?}"
    );
    let pb = report
        .pods
        .iter()
        .find(|p| p.uid == b.uid)
        .expect("B in report");
    assert!(!pb.should_enroll && pb.problems.is_empty(), "{pb:?}");
    // A ztunnel connects and acks: covered. It got A's netns.
    let z = FakeZtunnel::connect(&bed.cni.dir.path().join("ztunnel.sock"), vec![]);
    assert_eq!(
        z.wait_for(2),
        vec![
            format!("add {} {}", a.uid, na.inode()),
            "snapshot_sent".to_string()
        ]
    );
    eventually("the node to be covered", WAIT, || {
        bed.rt.block_on(bed.agent.coverage()).covered()
    });
    // CNI CHECK (weft-cni alone, as the chain's last plugin) agrees.
    let check = || {
        let mut list = bed.cni.conflist();
        let weft = list["plugins"]
            .as_array()
            .and_then(|p| p.last())
            .cloned()
            .expect("weft entry");
        list["plugins"] = serde_json::json!([weft]);
        let bins = [Path::new(DEBIAN_CNI_DIR), &bed.cni.bin_dir()];
        run_chain(&bed.node, &list, &bins, "CHECK", &a, Some(&ra.stdout))
    };
    let r = check();
    assert!(r.ok, "CHECK of a covered pod failed: {}", r.stdout);

    // A listener disappears: drift is reported, and CHECK fails. Closing
    // one copy is not enough (the agent and ztunnel hold the socket too);
    // a shutdown stops it listening for every holder.
    nix::sys::socket::shutdown(
        std::os::fd::AsRawFd::as_raw_fd(&a_hbone),
        nix::sys::socket::Shutdown::Both,
    )
    .expect("shutdown 15008");
    let r = check();
    assert!(!r.ok, "CHECK passed without ztunnel's 15008 listener");
    assert_eq!(json(&r.stdout)["code"], 100);
    let report = bed.rt.block_on(bed.agent.coverage());
    let pa = report
        .drift()
        .find(|p| p.uid == a.uid)
        .expect("drift for A");
    assert!(
        pa.problems.iter().any(|p| p.contains("listening")),
        "{pa:?}"
    );

    // DEL through the chain: rules gone, ztunnel told.
    let del = run_chain(
        &bed.node,
        &bed.cni.conflist(),
        &[Path::new(DEBIAN_CNI_DIR), &bed.cni.bin_dir()],
        "DEL",
        &a,
        Some(&ra.stdout),
    );
    assert!(del.ok, "DEL failed in {}: {}", del.plugin, del.stdout);
    assert!(!bed.rt.block_on(bed.agent.is_enrolled(&a.uid)));
    assert_eq!(z.wait_for(3)[2], format!("delete {}", a.uid));
    let state = Redirector::new(backend, GATEWAY)
        .inspect(&na)
        .expect("inspect");
    assert!(state.empty(), "rules left after DEL: {state:?}");
}

#[test]
fn capture_with_nftables() {
    capture_scenario(Backend::Nftables);
}

#[test]
fn capture_with_iptables() {
    capture_scenario(Backend::Iptables);
}

/// Outbound from `from` to `dst` lands on `trap` (captured) or on `app`.
fn captured(
    from: &NetNs,
    dst: SocketAddrV4,
    trap: &std::net::TcpListener,
    app: &std::net::TcpListener,
) -> bool {
    let _c = connect_from(from, dst, None).expect("connect");
    eventually(&format!("the connection to {dst} to arrive"), WAIT, || {
        if trap.accept().is_ok() {
            Some(true)
        } else if app.accept().is_ok() {
            Some(false)
        } else {
            None
        }
    })
}

#[test]
fn enrolling_a_namespace_with_running_pods() {
    let bed = Bed::new(
        Backend::Auto,
        &[namespace("late", false), namespace("plain", false)],
    );
    let (c_ns, d_ns) = (NamedNetns::new("wpc"), NamedNetns::new("wpd"));
    let c = PodSpec {
        namespace: "late",
        name: "c",
        uid: unique("uid-c-"),
        netns: &c_ns,
    };
    let d = PodSpec {
        namespace: "plain",
        name: "d",
        uid: unique("uid-d-"),
        netns: &d_ns,
    };
    let rc = bed.add(&c);
    assert!(rc.ok, "{}", rc.stdout);
    let rd = bed.add(&d);
    assert!(rd.ok, "{}", rd.stdout);
    let (nc, nd) = (c_ns.open(), d_ns.open());
    let trap = listen_in(&nc, 15001);
    let app = listen_in(&nd, 8080);
    let dst = SocketAddrV4::new(result_ip(&rd.stdout), 8080);
    assert!(
        !captured(&nc, dst, &trap, &app),
        "C captured before its namespace was enrolled"
    );

    // The namespace gets the label while C runs: C is enrolled, no restart.
    let pods = [pod_object(&c, None), pod_object(&d, None)];
    bed.rt.block_on(
        bed.agent
            .sync(&pods, &[namespace("late", true), namespace("plain", false)]),
    );
    assert!(
        captured(&nc, dst, &trap, &app),
        "C not captured after its namespace was enrolled"
    );
    let cache = EnrollmentCache::load(&bed.cni.cache())
        .expect("cache")
        .expect("present");
    assert!(cache.ambient_namespaces.contains("late"));

    // C opts out with its own label: rules removed.
    let opted_out = [pod_object(&c, Some("none")), pod_object(&d, None)];
    bed.rt.block_on(bed.agent.sync(
        &opted_out,
        &[namespace("late", true), namespace("plain", false)],
    ));
    assert!(
        !captured(&nc, dst, &trap, &app),
        "C still captured after opting out"
    );

    // Back in, then the namespace label is removed: out again.
    bed.rt.block_on(
        bed.agent
            .sync(&pods, &[namespace("late", true), namespace("plain", false)]),
    );
    assert!(captured(&nc, dst, &trap, &app));
    bed.rt.block_on(bed.agent.sync(
        &pods,
        &[namespace("late", false), namespace("plain", false)],
    ));
    assert!(
        !captured(&nc, dst, &trap, &app),
        "C still captured after the label was removed"
    );
    assert!(
        Redirector::new(Backend::Auto, GATEWAY)
            .inspect(&nc)
            .expect("inspect")
            .empty()
    );

    // A restarted agent (no memory of CNI ADDs) finds C's netns from the
    // registry's annotation (files mode) and enrolls it.
    let hub = HandoffHub::new();
    let fresh = NodeAgent::new(
        AgentConfig {
            node: NODE.into(),
            discovery: NetnsDiscovery::Annotation,
            enrollment_cache: None,
            redirector: Redirector::new(Backend::Auto, GATEWAY),
            identity_wait: Duration::from_millis(1500),
            host_probes: None,
            local_bypass: std::sync::Arc::new(weft_node_agent::bypass::Bypass::Off),
        },
        hub.clone(),
    );
    bed.rt
        .block_on(fresh.sync(&pods, &[namespace("late", true)]));
    assert_eq!(hub.pod_uids(), vec![c.uid.clone()]);
    assert!(captured(&nc, dst, &trap, &app));
    // The pod is deleted from the registry: the agent removes the rules.
    bed.rt.block_on(fresh.sync(&[], &[namespace("late", true)]));
    assert!(hub.pod_uids().is_empty());
    assert!(!captured(&nc, dst, &trap, &app));

    // An agent that starts while a pod outside the mesh still has rules (its
    // predecessor died before unenrolling it) removes them.
    let redirector = Redirector::new(Backend::Auto, GATEWAY);
    redirector.apply(&nc).expect("leftover rules");
    let third = NodeAgent::new(
        AgentConfig {
            node: NODE.into(),
            discovery: NetnsDiscovery::Annotation,
            enrollment_cache: None,
            redirector: redirector.clone(),
            identity_wait: Duration::from_millis(1500),
            host_probes: None,
            local_bypass: std::sync::Arc::new(weft_node_agent::bypass::Bypass::Off),
        },
        HandoffHub::new(),
    );
    bed.rt
        .block_on(third.sync(&pods, &[namespace("late", false)]));
    assert!(
        redirector.inspect(&nc).expect("inspect").empty(),
        "leftover rules were not swept"
    );
}

#[test]
fn agent_down_fails_closed_only_for_enrolled_pods() {
    require_root_and_tools();
    let node = NamedNetns::new("wn");
    let cni = CniEnvFixture::new();
    cni.install(SUBNET);
    let mut cache = EnrollmentCache::default();
    cache.ambient_namespaces.insert("mesh".into());
    cache.store(&cni.cache()).expect("cache");
    let bins = [Path::new(DEBIAN_CNI_DIR), &cni.bin_dir()];
    let (m_ns, p_ns) = (NamedNetns::new("wpm"), NamedNetns::new("wpp"));
    let m = PodSpec {
        namespace: "mesh",
        name: "m",
        uid: unique("uid-m-"),
        netns: &m_ns,
    };
    let p = PodSpec {
        namespace: "plain",
        name: "p",
        uid: unique("uid-p-"),
        netns: &p_ns,
    };

    let r = run_chain(&node, &cni.conflist(), &bins, "ADD", &m, None);
    assert!(
        !r.ok,
        "ADD of an enrolled pod succeeded with the agent down"
    );
    assert_eq!(r.plugin, "weft-cni");
    let err: serde_json::Value = serde_json::from_str(&r.stdout).expect("CNI error object");
    assert_eq!(err["code"], 11);
    assert!(
        err["msg"].as_str().is_some_and(|m| m.contains("mesh/m")),
        "{err}"
    );
    // The runtime cleans up after a failed ADD; DEL must succeed.
    let prev = r.outputs[0].clone();
    let del = run_chain(&node, &cni.conflist(), &bins, "DEL", &m, Some(&prev));
    assert!(del.ok, "DEL failed in {}: {}", del.plugin, del.stdout);

    let r = run_chain(&node, &cni.conflist(), &bins, "ADD", &p, None);
    assert!(
        r.ok,
        "ADD of a non-enrolled pod failed with the agent down: {}",
        r.stdout
    );
    assert_eq!(json(&r.outputs[1]), json(&r.outputs[0]));
}
