//! The address plan of a cluster. Every address lives inside the run's own
//! namespaces, so the ranges are fixed: two runs reuse them without meeting,
//! and nothing is ever routed to the machine's real network.
//!
//! | what | addresses |
//! | --- | --- |
//! | underlay | 10.10.0.0/24: controller .2, node N .(10+N) |
//! | pods of node N | 10.244.N.0/24, gateway (the node's pod bridge) 10.244.N.1 |
//! | Service VIPs | 10.96.0.0/16, allocated from 10.96.0.10 |

use std::net::Ipv4Addr;

/// The most nodes a cluster may have (underlay addresses .11 to .254).
pub const MAX_NODES: usize = 200;

/// The underlay's prefix length.
pub const UNDERLAY_PREFIX: u8 = 24;

/// The controller's address on the underlay.
pub const CONTROLLER_IP: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 2);

/// The Service CIDR.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";

/// The first VIP handed out.
pub const FIRST_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

/// Node `index` (1-based) on the underlay.
pub fn node_ip(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 10, 0, 10 + index as u8)
}

/// Node `index`'s pod CIDR, `10.244.<index>.0/24`.
pub fn pod_cidr(index: usize) -> String {
    format!("10.244.{index}.0/24")
}

/// Node `index`'s pod bridge address: the pods' gateway, and where the
/// node's own connections to its pods come from (its probe source).
pub fn pod_gateway(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, index as u8, 1)
}

/// The name of node `index`, as in `spec.nodeName`.
pub fn node_name(index: usize) -> String {
    format!("node-{index}")
}

/// The `n`th VIP (0-based) of the Service CIDR.
pub fn vip(n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(FIRST_VIP) + n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan() {
        assert_eq!(node_ip(1), Ipv4Addr::new(10, 10, 0, 11));
        assert_eq!(pod_cidr(2), "10.244.2.0/24");
        assert_eq!(pod_gateway(2), Ipv4Addr::new(10, 244, 2, 1));
        assert_eq!(vip(0), FIRST_VIP);
        assert_eq!(vip(246), Ipv4Addr::new(10, 96, 1, 0));
    }
}
