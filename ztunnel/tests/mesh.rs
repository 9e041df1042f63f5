//! ztunnel on real network namespaces: two nodes, pods with the real
//! redirect rules, the test as node agent over the real handoff socket, and
//! the real ztunnel binary in local mode.
//!
//! Needs root (CI runs as root). Cluster tests take a lock so that only one
//! cluster runs at a time on the 2-core machines.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

use support::*;
use weft_testkit::eventually;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn addr(ip: std::net::Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip), port)
}

/// Waits until node's ztunnel shows `needle` in `/policies` (or stops
/// showing it), i.e. a rewritten local config was reloaded.
fn wait_for_policies(c: &Cluster, node: usize, present: &str, absent: &str) {
    eventually(
        &format!("node {node} to reload its policies"),
        Duration::from_secs(20),
        || {
            let text = c.admin_json(node, "/policies").to_string();
            (present.is_empty() || text.contains(present))
                && (absent.is_empty() || !text.contains(absent))
        },
    );
}

#[test]
fn pod_to_pod_across_nodes_is_mtls_only_and_the_server_sees_the_client_ip() {
    let _one = serial();
    let mut c = Cluster::new(2);
    let client = c.add_pod(PodSpec::meshed("shop", "client", "client", 1));
    let server = c.add_pod(PodSpec::meshed("shop", "server", "server", 2));
    c.echo_server(server, 8080);
    c.write_config("");
    c.start_ztunnel(1);
    c.start_ztunnel(2);

    let to = addr(c.pod(server).ip, 8080);
    let secret = "SECRET-PAYLOAD-4b1d";
    let (result, capture) = capture_underlay(&c, || c.exchange(client, to, secret));
    let (peer, echo) = result.expect("exchange through the mesh");
    assert_eq!(echo, secret);
    assert_eq!(
        peer,
        c.pod(client).ip.to_string(),
        "server sees the real client IP"
    );

    assert!(!capture.is_empty(), "the capture saw the tunnel");
    assert!(
        !capture.contains(secret),
        "application bytes crossed the underlay in plaintext:\n{capture}"
    );
    let server_ip = c.pod(server).ip.to_string();
    assert!(capture.contains(&format!("{server_ip}.15008")), "{capture}");
    assert!(
        !capture.contains(&format!("{server_ip}.8080")),
        "a direct connection to the application port crossed the underlay:\n{capture}"
    );

    // Metrics and readiness on the node.
    let (status, metrics) = c.node_http(1, 15020, "/metrics").expect("metrics");
    assert_eq!(status, 200);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("weft_tcp_connections_opened_total")
                && l.contains("reporter=\"source\"")
                && l.contains(
                    "destination_principal=\"spiffe://cluster.local/ns/shop/sa/server\""
                )),
        "{metrics}"
    );
    let (status, metrics) = c.node_http(2, 15020, "/metrics").expect("metrics");
    assert_eq!(status, 200);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("weft_tcp_received_bytes_total")
                && l.contains("reporter=\"destination\"")),
        "{metrics}"
    );
    // The same in Istio's names, with the labels its dashboards and Kiali
    // read; nothing the proxy knows is `unknown`.
    let istio = metrics
        .lines()
        .find(|l| {
            l.starts_with("istio_tcp_connections_opened_total{")
                && l.contains("reporter=\"destination\"")
        })
        .unwrap_or_else(|| panic!("no istio_tcp_connections_opened_total:\n{metrics}"));
    for label in [
        "source_workload_namespace=\"shop\"",
        "source_principal=\"spiffe://cluster.local/ns/shop/sa/client\"",
        "destination_workload_namespace=\"shop\"",
        "destination_principal=\"spiffe://cluster.local/ns/shop/sa/server\"",
        "destination_cluster=\"Kubernetes\"",
        "request_protocol=\"tcp\"",
        "connection_security_policy=\"mutual_tls\"",
    ] {
        assert!(istio.contains(label), "{label} missing from {istio}");
    }
    for known in [
        "source_workload",
        "destination_workload",
        "destination_canonical_service",
    ] {
        assert!(
            !istio.contains(&format!("{known}=\"unknown\"")),
            "{known} unknown in {istio}"
        );
    }
    assert_eq!(
        c.node_http(2, 15021, "/healthz/ready").map(|r| r.0),
        Some(200)
    );

    // Both ztunnels hold their pod's certificate.
    let certs = c.admin_json(1, "/certs").to_string();
    assert!(
        certs.contains("spiffe://cluster.local/ns/shop/sa/client"),
        "{certs}"
    );
    let certs = c.admin_json(2, "/certs").to_string();
    assert!(
        certs.contains("spiffe://cluster.local/ns/shop/sa/server"),
        "{certs}"
    );
}

#[test]
fn deny_resets_the_client_and_allow_with_l7_fields_matches_nothing() {
    let _one = serial();
    let mut c = Cluster::new(2);
    let friend = c.add_pod(PodSpec::meshed("shop", "friend", "friend", 1));
    let intruder = c.add_pod(PodSpec::meshed("other", "intruder", "intruder", 1));
    let server = c.add_pod(PodSpec::meshed("shop", "server", "server", 2));
    c.echo_server(server, 8080);
    let deny = r#"
policies:
  - name: deny-intruder
    namespace: shop
    action: ACTION_DENY
    rules:
      - from: [{ principals: [{ exact: "cluster.local/ns/other/sa/intruder" }] }]
"#;
    c.write_config(deny);
    c.start_ztunnel(1);
    c.start_ztunnel(2);
    let to = addr(c.pod(server).ip, 8080);

    let (_, echo) = c.exchange(friend, to, "hello").expect("friend allowed");
    assert_eq!(echo, "hello");
    let err = c
        .exchange(intruder, to, "hello")
        .expect_err("intruder denied");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    let denials = c.admin_json(2, "/connections");
    assert!(denials["connections"].as_array().is_some());

    // An ALLOW policy whose only rule needs L7 (GET) cannot match at L4: it
    // must deny everything rather than let everything through.
    let allow_get = r#"
policies:
  - name: allow-get
    namespace: shop
    action: ACTION_ALLOW
    rules:
      - to: [{ methods: [GET] }]
"#;
    c.write_config(allow_get);
    wait_for_policies(&c, 2, "allow-get", "deny-intruder");
    let policies = c.admin_json(2, "/policies").to_string();
    assert!(
        policies.contains("matches nothing"),
        "the L4 form says why: {policies}"
    );
    let err = c
        .exchange(friend, to, "hello")
        .expect_err("L7-only ALLOW denies at L4");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
}

#[test]
fn strict_refuses_plaintext_and_permissive_accepts_it() {
    let _one = serial();
    let mut c = Cluster::new(2);
    let outsider = c.add_pod(PodSpec::plain("legacy", "outsider", 1));
    let server = c.add_pod(PodSpec::meshed("shop", "server", "server", 2));
    c.echo_server(server, 8080);
    c.write_config("");
    c.start_ztunnel(1);
    c.start_ztunnel(2);
    let to = addr(c.pod(server).ip, 8080);

    let (peer, echo) = c
        .exchange(outsider, to, "plain")
        .expect("PERMISSIVE accepts plaintext");
    assert_eq!(echo, "plain");
    assert_eq!(
        peer,
        c.pod(outsider).ip.to_string(),
        "server sees the real client IP"
    );

    let server_uid = c.pod(server).uid.clone();
    c.write_config_with("", |p| {
        if p.uid == server_uid {
            "mtlsMode: MTLS_MODE_STRICT".into()
        } else {
            String::new()
        }
    });
    eventually("STRICT to be reloaded", Duration::from_secs(20), || {
        c.admin_json(2, "/workloads")
            .to_string()
            .contains("MTLS_MODE_STRICT")
    });
    let err = c
        .exchange(outsider, to, "plain")
        .expect_err("STRICT refuses plaintext");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
}

#[test]
fn a_destination_outside_the_mesh_is_reached_in_plain_tcp() {
    let _one = serial();
    let mut c = Cluster::new(2);
    let client = c.add_pod(PodSpec::meshed("shop", "client", "client", 1));
    let legacy = c.add_pod(PodSpec::plain("legacy", "db", 2));
    c.echo_server(legacy, 5432);
    // The legacy pod is not in the config at all: an unknown destination.
    c.write_config("");
    c.start_ztunnel(1);
    c.start_ztunnel(2);
    let (peer, echo) = c
        .exchange(client, addr(c.pod(legacy).ip, 5432), "select 1")
        .expect("passthrough");
    assert_eq!(echo, "select 1");
    assert_eq!(peer, c.pod(client).ip.to_string());
}

#[test]
fn a_vip_spreads_connections_over_endpoints_on_both_nodes() {
    let _one = serial();
    let mut c = Cluster::new(2);
    let client = c.add_pod(PodSpec::meshed("shop", "client", "client", 1));
    let web1 = c.add_pod(PodSpec::meshed("shop", "web-1", "web", 1));
    let web2 = c.add_pod(PodSpec::meshed("shop", "web-2", "web", 2));
    let hits1 = c.echo_server(web1, 8080);
    let hits2 = c.echo_server(web2, 8080);
    let (uid1, uid2) = (c.pod(web1).uid.clone(), c.pod(web2).uid.clone());
    let service = |prefer: bool| {
        format!(
            r#"
services:
  - name: web
    namespace: shop
    vips: ["10.96.0.10"]
    ports: [{{ servicePort: 80, targetPort: 8080 }}]
    preferSameNode: {prefer}
    endpoints:
      - {{ workloadUid: {}, ports: {{ "80": 8080 }} }}
      - {{ workloadUid: {}, ports: {{ "80": 8080 }} }}
"#,
            uid1, uid2
        )
    };
    let spread = service(false);
    c.write_config(&spread);
    c.start_ztunnel(1);
    c.start_ztunnel(2);
    let vip: SocketAddr = "10.96.0.10:80".parse().unwrap();
    for i in 0..40 {
        let (_, echo) = c.exchange(client, vip, &format!("n{i}")).expect("via VIP");
        assert_eq!(echo, format!("n{i}"));
    }
    let (a, b) = (hits1.load(Ordering::SeqCst), hits2.load(Ordering::SeqCst));
    assert_eq!(a + b, 40);
    assert!(
        a >= 5 && b >= 5,
        "connections were not spread: node 1 {a}, node 2 {b}"
    );

    // With PreferClose, the client's own node serves while it is healthy.
    let prefer = service(true);
    c.write_config(&prefer);
    eventually(
        "preferSameNode to be reloaded",
        Duration::from_secs(20),
        || {
            c.admin_json(1, "/services")
                .to_string()
                .contains("preferSameNode")
        },
    );
    let before2 = hits2.load(Ordering::SeqCst);
    for i in 0..10 {
        c.exchange(client, vip, &format!("p{i}")).expect("via VIP");
    }
    assert_eq!(
        hits2.load(Ordering::SeqCst),
        before2,
        "PreferClose stayed on node 1"
    );
}

#[test]
fn restarting_ztunnel_under_load_fails_no_new_connection() {
    // The client side's ztunnel, then the server side's: a new one beside
    // the old (both accept from the pods' sockets, which the agent made and
    // both were sent), then the old one drains and exits.
    restart_under_load(|c, node| {
        c.start_ztunnel(node);
        c.stop_oldest_ztunnel(node);
    });
}

#[test]
fn a_ztunnel_stopped_then_started_again_fails_no_new_connection() {
    // No overlap: the only ztunnel exits, and for a while none runs. The
    // pods' sockets stay open (the agent holds them), so new connections
    // wait in their backlog instead of being refused, and the next ztunnel
    // serves them.
    restart_under_load(|c, node| {
        c.stop_oldest_ztunnel(node);
        std::thread::sleep(Duration::from_millis(300));
        c.start_ztunnel(node);
    });
}

#[test]
fn rolling_the_node_agent_and_ztunnel_together_fails_no_new_connection() {
    // Both DaemonSets rolled at once (CI found resets): the agent goes, the
    // new ztunnel starts while it is away, a new agent comes back and
    // cannot bind the pods' listeners, which the old ztunnel holds; then
    // the old ztunnel is stopped. Whichever ztunnel reconnects first, the
    // new one ends up serving the pods and the old one does not close the
    // last copy of their sockets.
    restart_under_load(|c, node| {
        c.stop_agent(node);
        c.spawn_ztunnel(node);
        std::thread::sleep(Duration::from_secs(2));
        c.start_agent_again(node);
        c.wait_ready(node);
        c.stop_oldest_ztunnel(node);
    });
}

#[test]
fn a_ztunnel_stopped_while_the_agent_is_away_waits_to_hand_the_listeners_back() {
    // The old ztunnel is told to stop before the new agent is up: it alone
    // holds the pods' sockets, so it drains and waits; connections wait in
    // the backlog meanwhile, and the agent it reconnects to takes them back
    // for the new ztunnel.
    restart_under_load(|c, node| {
        c.stop_agent(node);
        c.spawn_ztunnel(node);
        c.terminate_oldest_ztunnel(node);
        std::thread::sleep(Duration::from_secs(2));
        assert!(
            !c.terminated_ztunnel_exited(node),
            "the old ztunnel exited holding the only copies of the pods' listeners"
        );
        c.start_agent_again(node);
        c.wait_ready(node);
        eventually(
            "the old ztunnel to exit once the agent holds the listeners",
            Duration::from_secs(15),
            || c.terminated_ztunnel_exited(node),
        );
    });
}

#[test]
fn an_agent_stopped_after_the_old_ztunnel_exited_waits_for_the_new_one_to_hold_the_listeners() {
    // What CI's rollout of both DaemonSets did: the old ztunnel was stopped
    // before the new one had started (the new pod's readiness probe had been
    // answered by the old process on the shared port), and exited at once,
    // the agent holding the pods' sockets; then the agent was stopped too.
    // Had it exited then, the connections waiting in the sockets would have
    // been reset and new ones refused until the next agent bound them.
    restart_under_load(|c, node| {
        c.terminate_oldest_ztunnel(node);
        eventually(
            "the old ztunnel to exit: the agent holds the sockets",
            Duration::from_secs(10),
            || c.terminated_ztunnel_exited(node),
        );
        let agent = c.begin_stop_agent(node);
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            !agent.has_exited(),
            "the agent exited holding the only copies of the pods' listeners"
        );
        c.spawn_ztunnel(node);
        agent.exited();
        c.wait_ready(node);
        c.start_agent_again(node);
    });
}

/// Restarts each node's ztunnel with `restart` while a client on node 1
/// opens connections to a server on node 2; none may fail.
fn restart_under_load(restart: impl Fn(&mut Cluster, usize)) {
    let _one = serial();
    let mut c = Cluster::new(2);
    let client = c.add_pod(PodSpec::meshed("shop", "client", "client", 1));
    let server = c.add_pod(PodSpec::meshed("shop", "server", "server", 2));
    c.echo_server(server, 8080);
    c.write_config("");
    c.start_ztunnel(1);
    c.start_ztunnel(2);
    let load = c.start_load(client, addr(c.pod(server).ip, 8080));
    eventually("the load to run", Duration::from_secs(10), || {
        load.ok.load(Ordering::SeqCst) > 20
    });
    for node in [1, 2] {
        let before = load.ok.load(Ordering::SeqCst);
        restart(&mut c, node);
        eventually(
            "the load to continue after the restart",
            Duration::from_secs(10),
            || load.ok.load(Ordering::SeqCst) > before + 20,
        );
    }
    let ok = load.ok.load(Ordering::SeqCst);
    let errors = load.finish();
    assert!(
        errors.is_empty(),
        "{} of {} connections failed: {errors:?}",
        errors.len(),
        ok + errors.len()
    );
    assert!(ok > 60);
}

/// Finding 11 of the hardening issue: ztunnel's listeners in a pod used
/// `SO_REUSEPORT`, so a root process in the pod could bind 15006 or 15008
/// beside them, get part of the pod's inbound, and skip policy. Every bind
/// of those ports must fail while the pod is served.
#[test]
fn a_root_process_in_a_pod_cannot_bind_ztunnels_ports() {
    let _one = serial();
    let mut c = Cluster::new(1);
    let a = c.add_pod(PodSpec::meshed("shop", "a", "a", 1));
    c.write_config("");
    c.start_ztunnel(1);
    eventually("pod a to be served", Duration::from_secs(10), || {
        c.admin_json(1, "/config_dump")["pods"]
            .to_string()
            .contains(&c.pod(a).uid)
    });
    let ip = c.pod(a).ip;
    let attempts = c.in_pod(a, move || {
        let mut attempts = Vec::new();
        for port in [15001, 15006, 15008] {
            for reuse_port in [false, true] {
                for host in [IpAddr::from([0, 0, 0, 0]), IpAddr::V4(ip)] {
                    let bound = (|| {
                        let socket = socket2::Socket::new(
                            socket2::Domain::IPV4,
                            socket2::Type::STREAM,
                            None,
                        )?;
                        socket.set_reuse_address(true)?;
                        socket.set_reuse_port(reuse_port)?;
                        socket.bind(&SocketAddr::new(host, port).into())?;
                        socket.listen(16)
                    })();
                    attempts.push((port, reuse_port, host, bound));
                }
            }
        }
        attempts
    });
    for (port, reuse_port, host, bound) in attempts {
        match bound {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {}
            other => {
                panic!("binding {host}:{port} (SO_REUSEPORT {reuse_port}) in the pod: {other:?}")
            }
        }
    }
}

#[test]
fn a_pod_removed_by_the_agent_loses_its_listeners() {
    let _one = serial();
    let mut c = Cluster::new(1);
    let a = c.add_pod(PodSpec::meshed("shop", "a", "a", 1));
    let b = c.add_pod(PodSpec::meshed("shop", "b", "b", 1));
    c.write_config("");
    c.start_ztunnel(1);
    let listening = |c: &Cluster, idx: usize| -> Vec<u16> {
        c.in_pod(idx, || {
            let table = std::fs::read_to_string("/proc/thread-self/net/tcp").unwrap_or_default();
            let mut ports: Vec<u16> = table
                .lines()
                .skip(1)
                .filter_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    (f.get(3) == Some(&"0A"))
                        .then(|| f.get(1)?.rsplit(':').next())
                        .flatten()
                        .and_then(|p| u16::from_str_radix(p, 16).ok())
                })
                .collect();
            ports.sort_unstable();
            ports.dedup();
            ports
        })
    };
    eventually("pod b to be served", Duration::from_secs(10), || {
        listening(&c, b) == vec![15001, 15006, 15008]
    });
    c.remove_from_mesh(b);
    eventually(
        "pod b to have no listeners",
        Duration::from_secs(10),
        || match listening(&c, b) {
            l if l.is_empty() => Ok(()),
            l => Err(format!("pod b still has listeners: {l:?}")),
        },
    );
    assert_eq!(
        listening(&c, a),
        vec![15001, 15006, 15008],
        "pod a untouched"
    );
    let dump = c.admin_json(1, "/config_dump");
    let pods = dump["pods"].to_string();
    assert!(!pods.contains(&c.pod(b).uid), "{pods}");
    assert!(pods.contains(&c.pod(a).uid), "{pods}");
}

/// Opens an HBONE tunnel from inside pod `from` as `identity` (the test holds
/// the CA, so it can be anyone) to `to`; returns the status or the error.
fn hbone_as(
    c: &Cluster,
    from: usize,
    identity: &str,
    hbone: SocketAddr,
    to: SocketAddr,
    expect: &str,
) -> Result<(), String> {
    hbone_as_forwarding(c, from, identity, hbone, to, expect, None)
}

/// As [`hbone_as`], with `forwarded: for=<client_ip>` on the CONNECT.
fn hbone_as_forwarding(
    c: &Cluster,
    from: usize,
    identity: &str,
    hbone: SocketAddr,
    to: SocketAddr,
    expect: &str,
    client_ip: Option<IpAddr>,
) -> Result<(), String> {
    let id: weft_hbone::SpiffeId = identity.parse().unwrap();
    let cert = c.ca.issue(&id);
    let bundle = c.ca.bundle.clone();
    let expected: weft_hbone::SpiffeId = expect.parse().unwrap();
    c.in_pod(from, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let pool = weft_hbone::TunnelPool::new(weft_hbone::PoolSettings::default(), bundle);
            let target = weft_hbone::TunnelTarget {
                hbone_addr: hbone,
                expected_identity: expected,
                authority: to,
                client_ip,
                traceparent: None,
                baggage: None,
            };
            pool.connect(&cert, &target, &weft_hbone::DirectDialer)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    })
}

#[test]
fn a_pod_bound_to_a_waypoint_is_reachable_only_from_the_waypoint() {
    let _one = serial();
    let mut c = Cluster::new(2);
    // Without redirect rules: the test's own HBONE client must not be
    // captured by a ztunnel.
    let client = c.add_pod(PodSpec::plain("shop", "client", 1));
    let server = c.add_pod(PodSpec::meshed("shop", "server", "server", 2));
    c.echo_server(server, 8080);
    let server_uid = c.pod(server).uid.clone();
    // The waypoint's address does not matter here: the test speaks HBONE to
    // the server pod directly, as a bypass would.
    c.write_config_with("", |p| {
        if p.uid == server_uid {
            r#"waypoint: { namespace: shop, name: waypoint, addresses: ["10.96.0.99"], hbonePort: 15008, identity: "spiffe://cluster.local/ns/shop/sa/waypoint" }"#.into()
        } else {
            String::new()
        }
    });
    c.start_ztunnel(2);
    let hbone = addr(c.pod(server).ip, 15008);
    let app = addr(c.pod(server).ip, 8080);
    let server_id = "spiffe://cluster.local/ns/shop/sa/server";

    let err = hbone_as(
        &c,
        client,
        "spiffe://cluster.local/ns/shop/sa/client",
        hbone,
        app,
        server_id,
    )
    .expect_err("a direct tunnel around the waypoint");
    assert!(err.contains("403"), "{err}");
    hbone_as(
        &c,
        client,
        "spiffe://cluster.local/ns/shop/sa/waypoint",
        hbone,
        app,
        server_id,
    )
    .expect("the waypoint itself gets through");
    // Plaintext cannot be sent through the waypoint: refused, whatever the
    // policy says (the rule weftctl explain reports, docs/design.md §7).
    let err = c
        .exchange(client, app, "plain")
        .expect_err("plaintext around the waypoint");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    let log = c.log(2);
    assert!(
        log.contains("spiffe://cluster.local/ns/shop/sa/client may not bypass it"),
        "the tunnel's denial is logged with its reason"
    );
    assert!(
        log.contains("plaintext may not bypass it"),
        "the plaintext denial is logged with its reason"
    );
}

/// Security finding 1: a connection whose destination is one of ztunnel's
/// own listeners (or loopback) made ztunnel connect there again, hop after
/// hop, until the node's proxy ran out of files. Every path refuses it now,
/// and the rules reset what reaches the capture ports directly.
#[test]
fn no_connection_makes_ztunnel_connect_to_its_own_listeners() {
    let _one = serial();
    let mut c = Cluster::new(2);
    // No redirect rules on the outsider: its HBONE client is not captured.
    let outsider = c.add_pod(PodSpec::plain("legacy", "outsider", 1));
    let client = c.add_pod(PodSpec::meshed("shop", "client", "client", 2));
    let server = c.add_pod(PodSpec::meshed("shop", "server", "server", 2));
    c.echo_server(server, 8080);
    c.write_config(""); // PERMISSIVE: plaintext from outside is served
    c.start_ztunnel(2);
    let before = c.ztunnel_open_files(2);
    let server_ip = c.pod(server).ip;
    let client_ip = c.pod(client).ip;

    // Plaintext from outside the mesh to the pod's capture ports.
    for port in [15001, 15006] {
        c.exchange(outsider, addr(server_ip, port), "loop?")
            .expect_err("plaintext to ztunnel's own port");
    }
    // A meshed pod dialling ztunnel's listeners in its own namespace.
    for to in [
        addr(std::net::Ipv4Addr::LOCALHOST, 15001),
        addr(std::net::Ipv4Addr::LOCALHOST, 15006),
        addr(client_ip, 15001),
        addr(client_ip, 15006),
    ] {
        c.exchange(client, to, "loop?")
            .expect_err("a pod dialling ztunnel's own listener");
    }
    // An authenticated peer asking for a tunnel to ztunnel's own ports.
    for port in [15001, 15006, 15008] {
        let err = hbone_as(
            &c,
            outsider,
            "spiffe://cluster.local/ns/shop/sa/peer",
            addr(server_ip, 15008),
            addr(server_ip, port),
            "spiffe://cluster.local/ns/shop/sa/server",
        )
        .expect_err("CONNECT to ztunnel's own port");
        assert!(err.contains("400"), "CONNECT to :{port}: {err}");
    }

    let after = c.ztunnel_open_files(2);
    assert!(
        after <= before + 16,
        "ztunnel went from {before} to {after} open files"
    );
    assert!(
        c.log(2).contains("ztunnel's own listener"),
        "the refusals are logged with their reason"
    );
    // The pod's real traffic is untouched.
    let (_, echo) = c
        .exchange(client, addr(server_ip, 8080), "still fine")
        .expect("normal traffic");
    assert_eq!(echo, "still fine");
}

/// Security finding 7: a pod handed over before its config arrived was
/// served as an open (PERMISSIVE, no waypoint, no policy) pod, and ztunnel
/// said it was ready. Now its inbound is refused and readiness names it.
#[test]
fn a_pod_without_config_is_refused_and_ztunnel_not_ready_until_it_arrives() {
    let _one = serial();
    let mut c = Cluster::new(2);
    let outsider = c.add_pod(PodSpec::plain("legacy", "outsider", 1));
    let server = c.add_pod(PodSpec::meshed("shop", "server", "server", 2));
    c.echo_server(server, 8080);
    c.write_config("");
    c.start_ztunnel(2);
    // Handed over by the node agent; the config does not know it yet.
    let late = c.add_pod(PodSpec::meshed("shop", "late", "late", 2));
    c.echo_server(late, 8080);
    let socket = c.node(2).admin_socket.clone();
    eventually(
        "ztunnel to be not ready while a pod has no config",
        Duration::from_secs(20),
        || {
            admin_get(&socket, "/healthz/ready")
                .is_some_and(|(status, body)| status == 503 && body.contains("shop/late"))
        },
    );
    let to = addr(c.pod(late).ip, 8080);
    c.exchange(outsider, to, "plain")
        .expect_err("plaintext to a pod without config");
    let err = hbone_as(
        &c,
        outsider,
        "spiffe://cluster.local/ns/shop/sa/peer",
        addr(c.pod(late).ip, 15008),
        to,
        "spiffe://cluster.local/ns/shop/sa/late",
    )
    .expect_err("a tunnel to a pod without config");
    assert!(err.contains("503"), "{err}");
    assert!(c.log(2).contains("no config for shop/late yet"));

    c.write_config("");
    eventually(
        "ztunnel to be ready once the config knows the pod",
        Duration::from_secs(20),
        || admin_get(&socket, "/healthz/ready").is_some_and(|(status, _)| status == 200),
    );
    let (_, echo) = c.exchange(outsider, to, "plain").expect("served now");
    assert_eq!(echo, "plain");
}

/// Security finding 6: `forwarded: for=` let any authenticated peer choose
/// the source address that `ipBlocks` policy sees (a DENY on the client's
/// address was walked around by naming another). Only a waypoint may speak
/// for another address now.
#[test]
fn forwarded_for_from_a_non_waypoint_peer_does_not_change_the_source_address() {
    let _one = serial();
    let mut c = Cluster::new(2);
    // No redirect rules on these two: their HBONE clients are not captured.
    let denied = c.add_pod(PodSpec::plain("legacy", "denied", 1));
    let other = c.add_pod(PodSpec::plain("legacy", "other", 1));
    let server = c.add_pod(PodSpec::meshed("shop", "server", "server", 2));
    c.echo_server(server, 8080);
    let deny = format!(
        r#"
policies:
  - name: deny-one-address
    namespace: shop
    action: ACTION_DENY
    rules:
      - from: [{{ ipBlocks: ["{}/32"] }}]
"#,
        c.pod(denied).ip
    );
    c.write_config(&deny);
    c.start_ztunnel(2);
    let hbone = addr(c.pod(server).ip, 15008);
    let app = addr(c.pod(server).ip, 8080);
    let server_id = "spiffe://cluster.local/ns/shop/sa/server";
    let peer = "spiffe://cluster.local/ns/legacy/sa/peer";

    hbone_as(&c, other, peer, hbone, app, server_id).expect("another address is allowed");
    let err = hbone_as(&c, denied, peer, hbone, app, server_id).expect_err("the denied address");
    assert!(err.contains("401"), "{err}");
    let err = hbone_as_forwarding(
        &c,
        denied,
        peer,
        hbone,
        app,
        server_id,
        Some(IpAddr::V4(c.pod(other).ip)),
    )
    .expect_err("naming another address in forwarded: for= does not help");
    assert!(err.contains("401"), "{err}");
}
