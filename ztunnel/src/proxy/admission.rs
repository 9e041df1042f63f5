//! Destinations ztunnel never connects to on a pod's behalf: its own
//! listeners and loopback.
//!
//! ztunnel connects with its mark, which the pod's redirect rules skip. A
//! destination that is one of ztunnel's own listeners (the pod's 15001,
//! 15006 or 15008, or anything on loopback, where the pod's listeners also
//! answer) would therefore be accepted by ztunnel again, which would connect
//! there again, hop after hop: one client connection becomes thousands of
//! sockets on the node's shared proxy. Every path checks its destination
//! here before it connects; the redirect rules refuse such traffic as well
//! (cni-plugin `redirect.rs`), so neither layer alone has to be right.
//!
//! Also here: whose address an inbound tunnel is from ([`client_address`]).

use std::net::{IpAddr, SocketAddr};

use weft_api::config::Workload;
use weft_hbone::SpiffeId;

use super::{HBONE_PORT, OUTBOUND_PORT, PLAINTEXT_PORT};
use crate::state::workload_identity;

/// ztunnel's listening ports inside every enrolled pod.
pub const OWN_PORTS: [u16; 3] = [OUTBOUND_PORT, PLAINTEXT_PORT, HBONE_PORT];

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

/// Why a destination is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Loopback or the unspecified address: only the pod itself answers
    /// there, including ztunnel's own listeners.
    #[error("{0} is a loopback destination; ztunnel does not proxy to it")]
    Loopback(SocketAddr),
    /// One of ztunnel's own listeners in the pod.
    #[error("{0} is ztunnel's own listener; ztunnel does not proxy to itself")]
    OwnListener(SocketAddr),
    /// Inbound traffic must be for the pod it arrived at.
    #[error("{0} is not an address of this pod")]
    NotThisPod(SocketAddr),
}

impl Refused {
    /// A short, stable name for metrics labels.
    pub fn label(&self) -> &'static str {
        match self {
            Refused::Loopback(_) => "loopback_destination",
            Refused::OwnListener(_) => "own_listener",
            Refused::NotThisPod(_) => "not_this_pod",
        }
    }
}

/// Decides whether ztunnel may connect to `dst` for a pod with `addresses`
/// on `path`.
pub fn check_destination(path: Path, dst: SocketAddr, addresses: &[IpAddr]) -> Result<(), Refused> {
    let ip = dst.ip();
    if ip.is_loopback() || ip.is_unspecified() || is_v4_mapped_loopback(ip) {
        return Err(Refused::Loopback(dst));
    }
    let ours = addresses.contains(&ip);
    match path {
        // Another host's 15001 is that host's business; only the pod's own
        // listeners (the pod's addresses) lead back here.
        Path::Outbound if ours && OWN_PORTS.contains(&dst.port()) => Err(Refused::OwnListener(dst)),
        Path::Outbound => Ok(()),
        Path::Plaintext | Path::Hbone if !ours => Err(Refused::NotThisPod(dst)),
        Path::Plaintext | Path::Hbone if OWN_PORTS.contains(&dst.port()) => {
            Err(Refused::OwnListener(dst))
        }
        Path::Plaintext | Path::Hbone => Ok(()),
    }
}

/// The client address an inbound tunnel is from: what policy (`ipBlocks`),
/// the transparent connect to the application, logs and metrics use.
///
/// A ztunnel dials from inside the client's pod, so the TCP peer address is
/// already the client's; only a waypoint carries other clients' traffic and
/// needs `forwarded: for=` to say whose. So the header counts only when the
/// peer at `peer_addr` is a waypoint (in the store, flagged as one) and its
/// certificate is that waypoint's identity, and only for a unicast,
/// non-loopback address. Otherwise any authenticated peer could pick the
/// source address that `ipBlocks` policy sees.
pub fn client_address(
    peer_addr: IpAddr,
    peer_identity: &SpiffeId,
    peer_workload: Option<&Workload>,
    forwarded: Option<IpAddr>,
) -> IpAddr {
    let peer_is_waypoint = peer_workload.is_some_and(|w| {
        w.is_waypoint && workload_identity(w).is_ok_and(|id| id == *peer_identity)
    });
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

/// `::ffff:127.x.y.z` reaches IPv4 loopback from an IPv6 socket.
fn is_v4_mapped_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        IpAddr::V4(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let waypoint_id: SpiffeId = "spiffe://cluster.local/ns/shop/sa/waypoint"
            .parse()
            .expect("id");
        let pod = Workload {
            is_waypoint: false,
            service_account: "client".into(),
            ..waypoint.clone()
        };
        let pod_id: SpiffeId = "spiffe://cluster.local/ns/shop/sa/client"
            .parse()
            .expect("id");
        let cases = [
            // (who is at the peer address, which certificate, forwarded, expected)
            (Some(&waypoint), &waypoint_id, Some(claimed), claimed),
            (Some(&waypoint), &waypoint_id, None, peer),
            (
                Some(&waypoint),
                &waypoint_id,
                Some("127.0.0.1".parse().expect("ip")),
                peer,
            ),
            (
                Some(&waypoint),
                &waypoint_id,
                Some("::ffff:127.0.0.1".parse().expect("ip")),
                peer,
            ),
            (
                Some(&waypoint),
                &waypoint_id,
                Some("0.0.0.0".parse().expect("ip")),
                peer,
            ),
            // A pod's ztunnel: the header is ignored.
            (Some(&pod), &pod_id, Some(claimed), peer),
            // The waypoint's certificate from another address.
            (None, &waypoint_id, Some(claimed), peer),
            (Some(&pod), &waypoint_id, Some(claimed), peer),
            // Another identity from the waypoint's address.
            (Some(&waypoint), &pod_id, Some(claimed), peer),
        ];
        for (at_peer, identity, forwarded, expected) in cases {
            assert_eq!(
                client_address(peer, identity, at_peer, forwarded),
                expected,
                "{at_peer:?} as {identity} forwarding {forwarded:?}"
            );
        }
    }

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
                got.as_ref().map(Refused::label),
                expected,
                "{path:?} to {dst}: {got:?}"
            );
        }
    }
}
