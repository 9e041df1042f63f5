//! Wiring namespaces together: the underlay bridge, the veths that join the
//! controller and the nodes to it, each node's pod bridge and its routes to
//! the other nodes' pods.
//!
//! ```text
//!   [ctl] eth0 10.10.0.2 ─┐
//!                          ├─ br0 [underlay]
//!   [node-1] eth0 10.10.0.11 ─┤        cni0 10.244.1.1 ── pods 10.244.1.0/24
//!   [node-2] eth0 10.10.0.12 ─┘        cni0 10.244.2.1 ── pods 10.244.2.0/24
//! ```
//!
//! Each veth is created inside the underlay namespace with its peer moved
//! straight into the other namespace, so no link ever exists in the
//! machine's own namespace.

use std::net::Ipv4Addr;

use crate::addresses::{self, UNDERLAY_PREFIX};
use crate::error::Result;
use crate::netns::Netns;

/// The bridge in the underlay namespace.
pub const UNDERLAY_BRIDGE: &str = "br0";
/// A node's or the controller's interface on the underlay.
pub const UPLINK: &str = "eth0";
/// A node's pod bridge (the name the CNI bridge plugin is configured with).
pub const POD_BRIDGE: &str = "cni0";

/// Gives the (fresh) underlay namespace its bridge.
pub fn build_underlay(underlay: &Netns) -> Result<()> {
    underlay.ip(&["link", "add", UNDERLAY_BRIDGE, "type", "bridge"])?;
    underlay.ip(&["link", "set", UNDERLAY_BRIDGE, "up"])?;
    Ok(())
}

/// Joins `member` to the underlay: a veth called `port` on the underlay's
/// bridge, [`UPLINK`] with `ip` inside `member`.
pub fn attach(underlay: &Netns, member: &Netns, port: &str, ip: Ipv4Addr) -> Result<()> {
    underlay.ip(&[
        "link",
        "add",
        port,
        "type",
        "veth",
        "peer",
        "name",
        UPLINK,
        "netns",
        member.name(),
    ])?;
    underlay.ip(&["link", "set", port, "master", UNDERLAY_BRIDGE, "up"])?;
    member.ip(&[
        "addr",
        "add",
        &format!("{ip}/{UNDERLAY_PREFIX}"),
        "dev",
        UPLINK,
    ])?;
    member.ip(&["link", "set", UPLINK, "up"])?;
    Ok(())
}

/// Makes `node` (1-based `index` of `count`) a router for its pods: the pod
/// bridge with the pods' gateway address, forwarding on, and a route to every
/// other node's pod CIDR via that node's underlay address.
pub fn build_node(node: &Netns, index: usize, count: usize) -> Result<()> {
    // The CNI bridge plugin would create the bridge at the first pod; making
    // it here gives the node its pod network before any pod exists. Its MAC
    // is set, not inherited: a bridge without one takes the lowest MAC of its
    // ports, so a pod joining later could change the gateway's MAC under the
    // pods already attached and strand their frames until ARP expires.
    let mac = format!("02:77:65:66:{:02x}:01", index % 256);
    node.ip(&["link", "add", POD_BRIDGE, "address", &mac, "type", "bridge"])?;
    node.ip(&[
        "addr",
        "add",
        &format!("{}/24", addresses::pod_gateway(index)),
        "dev",
        POD_BRIDGE,
    ])?;
    node.ip(&["link", "set", POD_BRIDGE, "up"])?;
    node.sysctl("ipv4/ip_forward", "1")?;
    for other in (1..=count).filter(|&o| o != index) {
        node.ip(&[
            "route",
            "add",
            &addresses::pod_cidr(other),
            "via",
            &addresses::node_ip(other).to_string(),
            "dev",
            UPLINK,
        ])?;
    }
    Ok(())
}

/// Gives `member` (on the underlay, not a node) a route to node `index`'s
/// pods via that node, so it can answer pods that call it.
pub fn route_pods(member: &Netns, index: usize) -> Result<()> {
    member.ip(&[
        "route",
        "add",
        &addresses::pod_cidr(index),
        "via",
        &addresses::node_ip(index).to_string(),
        "dev",
        UPLINK,
    ])?;
    Ok(())
}
