//! The coverage check: is every pod that should be in the mesh on this node
//! actually covered (netns found, redirect rules in place, ztunnel listening
//! on 15001/15006/15008 inside it, handoff acknowledged), and is no pod
//! outside the mesh still redirected? The CLI asks for it through the agent's
//! request socket ([`weft_cni::enrollment::AgentRequest::Coverage`]).

use weft_cni::report::Listeners;

use crate::netns::NetNs;
use crate::redirect::{HBONE_PORT, INBOUND_PORT, OUTBOUND_PORT};

/// Reads the TCP listeners inside `ns` (no connection is made).
pub fn listeners(ns: &NetNs) -> std::io::Result<Listeners> {
    let ports = ns.listening_tcp_ports().map_err(std::io::Error::other)?;
    Ok(Listeners {
        outbound: ports.contains(&OUTBOUND_PORT),
        inbound: ports.contains(&INBOUND_PORT),
        hbone: ports.contains(&HBONE_PORT),
    })
}
