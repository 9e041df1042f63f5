//! Which connections an enforcer admits before policy is evaluated.
//!
//! - [`check_destination`]: ztunnel connects with its mark, which the pod's
//!   redirect rules skip. A destination that is one of ztunnel's own
//!   listeners (the pod's 15001, 15006 or 15008, or anything on loopback,
//!   where the pod's listeners also answer) would be accepted by ztunnel
//!   again, which would connect there again, hop after hop: one client
//!   connection becomes thousands of sockets on the node's shared proxy.
//!   Every path checks its destination here before it connects; the
//!   redirect rules refuse such traffic as well (cni-plugin `redirect.rs`),
//!   so neither layer alone has to be right.
//! - [`admit_plaintext`] and [`admit_hbone`]: a pod bound to a waypoint is
//!   reached only through it — in plaintext never (a client outside the
//!   mesh cannot be sent to the waypoint, and its L7 policy would be
//!   skipped), over HBONE only from the waypoint's identity; STRICT refuses
//!   plaintext. (docs/design.md §7)
//! - [`client_address`]: whose address an inbound tunnel is from.

use std::net::{IpAddr, SocketAddr};

use weft_api::config::{MtlsMode, WaypointRef, Workload};

use crate::denial::Denial;

/// ztunnel's capture of a pod's outbound TCP.
pub const OUTBOUND_PORT: u16 = 15001;
/// ztunnel's capture of a pod's inbound plaintext.
pub const PLAINTEXT_PORT: u16 = 15006;
/// Inbound HBONE, at pods and waypoints.
pub const HBONE_PORT: u16 = 15008;
/// ztunnel's listening ports inside every enrolled pod.
pub const OWN_PORTS: [u16; 3] = [OUTBOUND_PORT, PLAINTEXT_PORT, HBONE_PORT];

/// The trust domain of a workload that names none.
const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// Which data path asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// A pod's captured outbound connection (15001).
    Outbound,
    /// Captured inbound plaintext (15006).
    Plaintext,
    /// The `:authority` of an inbound HBONE tunnel (15008).
    Hbone,
}

/// Decides whether ztunnel may connect to `dst` for a pod with `addresses`
/// on `path`.
pub fn check_destination(path: Path, dst: SocketAddr, addresses: &[IpAddr]) -> Result<(), Denial> {
    let ip = dst.ip();
    if ip.is_loopback() || ip.is_unspecified() || is_v4_mapped_loopback(ip) {
        return Err(Denial::LoopbackDestination(dst));
    }
    let ours = addresses.contains(&ip);
    match path {
        // Another host's 15001 is that host's business; only the pod's own
        // listeners (the pod's addresses) lead back here.
        Path::Outbound if ours && OWN_PORTS.contains(&dst.port()) => Err(Denial::OwnListener(dst)),
        Path::Outbound => Ok(()),
        Path::Plaintext | Path::Hbone if !ours => Err(Denial::NotThisPod(dst)),
        Path::Plaintext | Path::Hbone if OWN_PORTS.contains(&dst.port()) => {
            Err(Denial::OwnListener(dst))
        }
        Path::Plaintext | Path::Hbone => Ok(()),
    }
}

/// Whether plaintext (a client outside the mesh, or not captured) may reach
/// `workload`, before its policies are evaluated.
pub fn admit_plaintext(workload: &Workload) -> Result<(), Denial> {
    if workload.mtls_mode == MtlsMode::Strict as i32 {
        return Err(Denial::StrictMtls {
            workload: name(workload),
        });
    }
    if let Some(waypoint) = &workload.waypoint {
        return Err(Denial::WaypointBypass {
            workload: name(workload),
            waypoint: format!("{}/{}", waypoint.namespace, waypoint.name),
            client: "plaintext".into(),
        });
    }
    Ok(())
}

/// Whether `waypoint`, which `bound` (`service ns/name`, `workload ns/name`)
/// is bound to, can take traffic. A binding the controller could not honour
/// fails closed: the traffic is refused, never sent around the waypoint.
pub fn waypoint_available(waypoint: &WaypointRef, bound: &str) -> Result<(), Denial> {
    if waypoint.unavailable.is_empty() {
        return Ok(());
    }
    Err(Denial::WaypointUnavailable {
        bound: bound.to_owned(),
        waypoint: format!("{}/{}", waypoint.namespace, waypoint.name),
        reason: waypoint.unavailable.clone(),
    })
}

/// Whether a tunnel from `peer_identity` (its verified SPIFFE id) may reach
/// `workload`, before its policies are evaluated.
pub fn admit_hbone(workload: &Workload, peer_identity: &str) -> Result<(), Denial> {
    if let Some(waypoint) = &workload.waypoint {
        waypoint_available(waypoint, &format!("workload {}", name(workload)))?;
    }
    match &workload.waypoint {
        Some(waypoint) if waypoint.identity != peer_identity => Err(Denial::WaypointBypass {
            workload: name(workload),
            waypoint: format!("{}/{}", waypoint.namespace, waypoint.name),
            client: peer_identity.to_owned(),
        }),
        _ => Ok(()),
    }
}

/// The client address an inbound tunnel is from: what policy (`ipBlocks`),
/// the transparent connect to the application, logs and metrics use.
///
/// A ztunnel dials from inside the client's pod, so the TCP peer address is
/// already the client's; only a waypoint carries other clients' traffic and
/// needs `forwarded: for=` to say whose. So the header counts only when the
/// peer at `peer_addr` is a waypoint (in the config, flagged as one) and its
/// certificate is that waypoint's identity, and only for a unicast,
/// non-loopback address. Otherwise any authenticated peer could pick the
/// source address that `ipBlocks` policy sees.
pub fn client_address(
    peer_addr: IpAddr,
    peer_identity: &str,
    peer_workload: Option<&Workload>,
    forwarded: Option<IpAddr>,
) -> IpAddr {
    let peer_is_waypoint =
        peer_workload.is_some_and(|w| w.is_waypoint && spiffe_id(w) == peer_identity);
    match forwarded {
        Some(ip)
            if peer_is_waypoint
                && !ip.is_loopback()
                && !ip.is_unspecified()
                && !ip.is_multicast()
                && !is_v4_mapped_loopback(ip) =>
        {
            ip
        }
        _ => peer_addr,
    }
}

/// A workload's SPIFFE id, `spiffe://<trust domain>/ns/<namespace>/sa/<account>`.
pub fn spiffe_id(w: &Workload) -> String {
    let td = if w.trust_domain.is_empty() {
        DEFAULT_TRUST_DOMAIN
    } else {
        &w.trust_domain
    };
    format!("spiffe://{td}/ns/{}/sa/{}", w.namespace, w.service_account)
}

fn name(w: &Workload) -> String {
    format!("{}/{}", w.namespace, w.name)
}

/// `::ffff:127.x.y.z` reaches IPv4 loopback from an IPv6 socket.
fn is_v4_mapped_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        IpAddr::V4(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use weft_api::config::WaypointRef;

    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    #[test]
    fn own_listeners_and_loopback_are_refused_on_every_path() {
        let pod: Vec<IpAddr> = vec![
            "10.0.0.5".parse().expect("ip"),
            "fd00::5".parse().expect("ip"),
        ];
        let cases = [
            // (path, destination, expected)
            (
                Path::Outbound,
                "127.0.0.1:15001",
                Some("loopback_destination"),
            ),
            (
                Path::Outbound,
                "127.0.0.1:8080",
                Some("loopback_destination"),
            ),
            (
                Path::Outbound,
                "127.9.9.9:15006",
                Some("loopback_destination"),
            ),
            (Path::Outbound, "[::1]:15001", Some("loopback_destination")),
            (
                Path::Outbound,
                "[::ffff:127.0.0.1]:15001",
                Some("loopback_destination"),
            ),
            (
                Path::Outbound,
                "0.0.0.0:15006",
                Some("loopback_destination"),
            ),
            (Path::Outbound, "10.0.0.5:15001", Some("own_listener")),
            (Path::Outbound, "10.0.0.5:15006", Some("own_listener")),
            (Path::Outbound, "[fd00::5]:15008", Some("own_listener")),
            (Path::Outbound, "10.0.0.5:8080", None),
            (Path::Outbound, "10.0.0.9:15001", None),
            (Path::Outbound, "10.0.0.9:8080", None),
            (Path::Plaintext, "10.0.0.5:15001", Some("own_listener")),
            (Path::Plaintext, "10.0.0.5:15006", Some("own_listener")),
            (Path::Plaintext, "10.0.0.5:15008", Some("own_listener")),
            (
                Path::Plaintext,
                "127.0.0.1:8080",
                Some("loopback_destination"),
            ),
            (Path::Plaintext, "10.0.0.9:8080", Some("not_this_pod")),
            (Path::Plaintext, "10.0.0.5:8080", None),
            (Path::Hbone, "10.0.0.5:15001", Some("own_listener")),
            (Path::Hbone, "10.0.0.5:15006", Some("own_listener")),
            (Path::Hbone, "10.0.0.5:15008", Some("own_listener")),
            (Path::Hbone, "[fd00::5]:15006", Some("own_listener")),
            (Path::Hbone, "127.0.0.1:8080", Some("loopback_destination")),
            (Path::Hbone, "10.0.0.9:8080", Some("not_this_pod")),
            (Path::Hbone, "10.0.0.5:8080", None),
            (Path::Hbone, "[fd00::5]:8080", None),
        ];
        for (path, dst, expected) in cases {
            let got = check_destination(path, sa(dst), &pod).err();
            assert_eq!(
                got.as_ref().map(Denial::label),
                expected,
                "{path:?} to {dst}: {got:?}"
            );
        }
    }

    fn workload(mtls: MtlsMode, waypoint: bool) -> Workload {
        Workload {
            namespace: "shop".into(),
            name: "server".into(),
            service_account: "server".into(),
            mtls_mode: mtls as i32,
            waypoint: waypoint.then(|| WaypointRef {
                namespace: "shop".into(),
                name: "waypoint".into(),
                identity: "spiffe://cluster.local/ns/shop/sa/waypoint".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The rule of docs/design.md §7, one row per (mode, binding, client).
    #[test]
    fn plaintext_and_tunnels_to_a_pod_by_mode_and_waypoint_binding() {
        let waypoint = "spiffe://cluster.local/ns/shop/sa/waypoint";
        let client = "spiffe://cluster.local/ns/shop/sa/client";
        let cases = [
            // (mode, bound to a waypoint, client identity or plaintext, expected)
            (MtlsMode::Permissive, false, None, None),
            (MtlsMode::Strict, false, None, Some("strict_mtls")),
            (MtlsMode::Permissive, true, None, Some("waypoint_bypass")),
            (MtlsMode::Strict, true, None, Some("strict_mtls")),
            (MtlsMode::Permissive, false, Some(client), None),
            (MtlsMode::Strict, false, Some(client), None),
            (
                MtlsMode::Permissive,
                true,
                Some(client),
                Some("waypoint_bypass"),
            ),
            (
                MtlsMode::Strict,
                true,
                Some(client),
                Some("waypoint_bypass"),
            ),
            (MtlsMode::Strict, true, Some(waypoint), None),
            (MtlsMode::Permissive, true, Some(waypoint), None),
        ];
        for (mode, bound, client, expected) in cases {
            let w = workload(mode, bound);
            let got = match client {
                None => admit_plaintext(&w),
                Some(id) => admit_hbone(&w, id),
            };
            assert_eq!(
                got.as_ref().err().map(Denial::label),
                expected,
                "{mode:?}, bound {bound}, from {client:?}: {got:?}"
            );
        }
        let refusal = admit_plaintext(&workload(MtlsMode::Permissive, true))
            .expect_err("plaintext to a waypoint-bound pod");
        assert_eq!(
            refusal.to_string(),
            "shop/server is bound to waypoint shop/waypoint; only the waypoint may connect to it (plaintext may not bypass it)"
        );
    }

    #[test]
    fn a_binding_to_an_unavailable_waypoint_refuses_every_client_even_one_named_like_it() {
        let mut w = workload(MtlsMode::Permissive, true);
        if let Some(waypoint) = w.waypoint.as_mut() {
            waypoint.unavailable = "Gateway shop/waypoint does not exist".into();
        }
        // Whoever connects, the waypoint's own identity included: a pod that
        // runs as a ServiceAccount named like the missing Gateway must not
        // pass for its waypoint.
        for peer in [
            "spiffe://cluster.local/ns/shop/sa/client",
            "spiffe://cluster.local/ns/shop/sa/waypoint",
        ] {
            let refusal = admit_hbone(&w, peer).expect_err("unavailable waypoint");
            assert_eq!(refusal.label(), "waypoint_unavailable");
            assert_eq!(
                refusal.to_string(),
                "workload shop/server is bound to waypoint shop/waypoint, which is unavailable: Gateway shop/waypoint does not exist"
            );
        }
        assert!(admit_plaintext(&w).is_err(), "plaintext too");
        let available = workload(MtlsMode::Permissive, true);
        let waypoint = available.waypoint.as_ref().expect("bound");
        assert_eq!(waypoint_available(waypoint, "service shop/web"), Ok(()));
    }

    #[test]
    fn forwarded_for_counts_only_from_the_waypoint_at_that_address() {
        let peer: IpAddr = "10.0.1.9".parse().expect("ip");
        let claimed: IpAddr = "192.168.7.7".parse().expect("ip");
        let waypoint = Workload {
            namespace: "shop".into(),
            service_account: "waypoint".into(),
            is_waypoint: true,
            ..Default::default()
        };
        let waypoint_id = "spiffe://cluster.local/ns/shop/sa/waypoint";
        let pod = Workload {
            is_waypoint: false,
            service_account: "client".into(),
            ..waypoint.clone()
        };
        let pod_id = "spiffe://cluster.local/ns/shop/sa/client";
        let ip = |s: &str| Some(s.parse::<IpAddr>().expect("ip"));
        let cases = [
            // (who is at the peer address, which certificate, forwarded, expected)
            (Some(&waypoint), waypoint_id, Some(claimed), claimed),
            (Some(&waypoint), waypoint_id, None, peer),
            (Some(&waypoint), waypoint_id, ip("127.0.0.1"), peer),
            (Some(&waypoint), waypoint_id, ip("::ffff:127.0.0.1"), peer),
            (Some(&waypoint), waypoint_id, ip("0.0.0.0"), peer),
            // A pod's ztunnel: the header is ignored.
            (Some(&pod), pod_id, Some(claimed), peer),
            // The waypoint's certificate from another address.
            (None, waypoint_id, Some(claimed), peer),
            (Some(&pod), waypoint_id, Some(claimed), peer),
            // Another identity from the waypoint's address.
            (Some(&waypoint), pod_id, Some(claimed), peer),
        ];
        for (at_peer, identity, forwarded, expected) in cases {
            assert_eq!(
                client_address(peer, identity, at_peer, forwarded),
                expected,
                "{at_peer:?} as {identity} forwarding {forwarded:?}"
            );
        }
    }
}
