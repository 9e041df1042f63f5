//! The coverage check: is every pod that should be in the mesh on this node
//! actually covered (netns found, redirect rules in place, ztunnel listening
//! on 15001/15006/15008 inside it, handoff acknowledged), and is no pod
//! outside the mesh still redirected? The CLI asks for it through the agent's
//! request socket ([`weft_cni::enrollment::AgentRequest::Coverage`]).

use std::collections::BTreeSet;

use crate::netns::NetNs;
use weft_cni::report::Listeners;

use crate::redirect::{HBONE_PORT, INBOUND_PORT, OUTBOUND_PORT};

/// Reads the TCP listeners inside `ns` (from `/proc/thread-self/net/tcp*`,
/// which shows the reading thread's namespace, so no connection is made).
pub fn listeners(ns: &NetNs) -> std::io::Result<Listeners> {
    let ports = ns
        .run(|| {
            let mut ports = BTreeSet::new();
            for file in ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"] {
                // tcp6 is absent when IPv6 is disabled.
                if let Ok(text) = std::fs::read_to_string(file) {
                    ports.extend(listening_ports(&text));
                }
            }
            ports
        })
        .map_err(std::io::Error::other)?;
    Ok(Listeners {
        outbound: ports.contains(&OUTBOUND_PORT),
        inbound: ports.contains(&INBOUND_PORT),
        hbone: ports.contains(&HBONE_PORT),
    })
}

/// Ports in state LISTEN (`0A`) in a `/proc/net/tcp` table.
pub fn listening_ports(table: &str) -> BTreeSet<u16> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            let local = cols.nth(1)?;
            let state = cols.nth(1)?;
            if state != "0A" {
                return None;
            }
            let port = local.rsplit_once(':')?.1;
            u16::from_str_radix(port, 16).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_tcp() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:3A99 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 0100007F:3A9E 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 100 0 0 10 0
   2: 0100007F:3A99 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 20 4 30 10 -1
   garbage line
";
        assert_eq!(listening_ports(table), BTreeSet::from([15001, 15006]));
        assert!(listening_ports("").is_empty());
    }
}
