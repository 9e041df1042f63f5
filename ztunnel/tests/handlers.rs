//! ztunnel's connection handlers on the in-process pod network
//! (`weft_ztunnel::pod_network::Fabric`): no root, no namespaces, real TLS
//! and HBONE between the pods' listeners. Each row of the table is one
//! connection a pod's capture would hand to ztunnel, and what must happen to
//! it: the bytes reach the application, or the client is refused. The netns
//! tests (tests/mesh.rs, the e2e suite) cover what only the kernel does.

mod bed;

use std::net::{IpAddr, SocketAddr};

use bed::*;
use weft_api::config::{MtlsMode, WaypointRef, Workload, resource};
use weft_ztunnel::proxy::{OUTBOUND_PORT, PLAINTEXT_PORT};

/// A pod bound to a waypoint is reached only through it: inbound HBONE from
/// the waypoint's identity only, and plaintext never (a client outside the
/// mesh cannot be sent to the waypoint); either would skip its L7 policy.
#[tokio::test]
async fn a_waypoint_bound_pod_takes_tunnels_from_its_waypoint_only() {
    let waypoint = WaypointRef {
        namespace: "shop".into(),
        name: "wp".into(),
        identity: format!("spiffe://{TD}/ns/shop/sa/wp"),
        addresses: vec!["10.0.0.9".into()],
        ..Default::default()
    };
    let bound = Workload {
        waypoint: Some(waypoint),
        ..workload("bound", "10.0.0.4", true)
    };
    let server = workload("server", "10.0.0.2", true);
    let config = vec![
        resource::Kind::Workload(bound.clone()),
        resource::Kind::Workload(server.clone()),
    ];
    let bed = Bed::new(config, &[&bound, &server], &[&bound, &server]).await;
    let client = format!("spiffe://{TD}/ns/shop/sa/client");
    let wp = format!("spiffe://{TD}/ns/shop/sa/wp");
    assert_eq!(
        bed.tunnel_as(&client, &bound).await,
        None,
        "bypassed the waypoint"
    );
    assert_eq!(
        bed.tunnel_as(&wp, &bound).await.as_deref(),
        Some("bound:hello")
    );
    assert_eq!(
        bed.tunnel_as(&client, &server).await.as_deref(),
        Some("server:hello")
    );
}

#[tokio::test]
async fn each_path_admits_or_refuses_as_the_mesh_decides() {
    let client = workload("client", "10.0.0.1", true);
    let server = workload("server", "10.0.0.2", true);
    let outside = workload("outside", "10.0.0.3", false);
    let gone = WaypointRef {
        namespace: "shop".into(),
        name: "gone".into(),
        identity: format!("spiffe://{TD}/ns/shop/sa/gone"),
        unavailable: "Gateway shop/gone of class weft-waypoint does not exist".into(),
        ..Default::default()
    };
    let bound = Workload {
        waypoint: Some(gone),
        ..workload("bound", "10.0.0.4", true)
    };
    let strict = Workload {
        mtls_mode: MtlsMode::Strict as i32,
        ..workload("strict", "10.0.0.5", true)
    };
    let (locked, deny_all) = locked_behind_deny_all();
    let everyone = [&client, &server, &outside, &bound, &strict, &locked];
    let mut config: Vec<resource::Kind> = everyone
        .iter()
        .map(|w| resource::Kind::Workload((*w).clone()))
        .collect();
    config.push(resource::Kind::Authorization(deny_all));
    let meshed = [&client, &server, &bound, &strict, &locked];
    let bed = Bed::new(config, &meshed, &everyone).await;

    let app = |w: &Workload| SocketAddr::new(ip(w), APP_PORT);
    let from = ip(&client);
    let table: Vec<(&str, IpAddr, u16, SocketAddr, Option<&str>)> = vec![
        (
            "outbound, meshed destination: HBONE",
            from,
            OUTBOUND_PORT,
            app(&server),
            Some("server:hello"),
        ),
        (
            "outbound, outside the mesh: plain TCP",
            from,
            OUTBOUND_PORT,
            app(&outside),
            Some("outside:hello"),
        ),
        (
            "outbound, bound to an unavailable waypoint",
            from,
            OUTBOUND_PORT,
            app(&bound),
            None,
        ),
        (
            "outbound, DENY policy at the destination",
            from,
            OUTBOUND_PORT,
            app(&locked),
            None,
        ),
        (
            "outbound, to ztunnel's own listener",
            from,
            OUTBOUND_PORT,
            SocketAddr::new(from, OUTBOUND_PORT),
            None,
        ),
        (
            "outbound, to loopback",
            from,
            OUTBOUND_PORT,
            "127.0.0.1:8080".parse().expect("addr"),
            None,
        ),
        (
            "plaintext in, PERMISSIVE",
            ip(&server),
            PLAINTEXT_PORT,
            app(&server),
            Some("server:hello"),
        ),
        (
            "plaintext in, STRICT",
            ip(&strict),
            PLAINTEXT_PORT,
            app(&strict),
            None,
        ),
        (
            "plaintext in, waypoint-bound",
            ip(&bound),
            PLAINTEXT_PORT,
            app(&bound),
            None,
        ),
        (
            "plaintext in, DENY policy",
            ip(&locked),
            PLAINTEXT_PORT,
            app(&locked),
            None,
        ),
        (
            "plaintext in, for another pod",
            ip(&server),
            PLAINTEXT_PORT,
            app(&strict),
            None,
        ),
    ];
    let mut wrong = Vec::new();
    for (what, pod, port, dst, expected) in table {
        let got = bed.exchange(pod, port, dst).await;
        if got.as_deref() != expected {
            wrong.push(format!("{what}: expected {expected:?}, got {got:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
