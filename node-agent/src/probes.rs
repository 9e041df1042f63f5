//! Kubelet probes to enrolled pods.
//!
//! The kubelet probes a pod from the node's network namespace, with the
//! node's address. Inside an enrolled pod that is plaintext from outside the
//! mesh: under STRICT mTLS, or with any ALLOW policy, ztunnel refuses it and
//! the pod never becomes Ready. The in-pod rules let one source through
//! uncaptured, the probe source (169.254.7.127 by default); this module
//! makes the node's own connections to the ports enrolled pods' probes name
//! come from it: an nftables table in the node's namespace SNATs
//! host-originated TCP to exactly those `(pod IP, port)` pairs. Nothing
//! else from the host is exempted: its connections to other ports of the
//! same pods are captured as before.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::redirect::{RedirectError, run_nft};

/// The node namespace's table.
pub const TABLE: &str = "weft-probes";

/// A port a probe of `container` names: a number, or a named port of the
/// container. `None` when it names none of them (the kubelet would fail
/// that probe anyway).
fn probe_port(port: &IntOrString, container: &Container) -> Option<u16> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).ok(),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}

fn ports_of(probe: &Probe, container: &Container) -> Option<u16> {
    if let Some(get) = &probe.http_get {
        return probe_port(&get.port, container);
    }
    if let Some(tcp) = &probe.tcp_socket {
        return probe_port(&tcp.port, container);
    }
    probe.grpc.as_ref().and_then(|g| u16::try_from(g.port).ok())
}

/// The TCP ports the kubelet probes on `pod`: every readiness, liveness
/// and startup probe of its containers that connects (exec probes run
/// inside the pod and need nothing). Probes naming another host are not the
/// pod's and are left out.
pub fn ports(pod: &Pod) -> Vec<u16> {
    let mut out = BTreeSet::new();
    let containers = pod.spec.iter().flat_map(|s| {
        s.init_containers
            .iter()
            .flatten()
            .chain(s.containers.iter())
    });
    for container in containers {
        let probes = [
            &container.readiness_probe,
            &container.liveness_probe,
            &container.startup_probe,
        ];
        for probe in probes.into_iter().flatten() {
            let elsewhere = probe
                .http_get
                .as_ref()
                .and_then(|g| g.host.as_deref())
                .is_some_and(|h| !h.is_empty());
            if !elsewhere && let Some(port) = ports_of(probe, container) {
                out.insert(port);
            }
        }
    }
    out.into_iter().collect()
}

/// The SNAT of probes to enrolled pods, in the agent's (the node's)
/// network namespace.
#[derive(Clone, Debug)]
pub struct HostProbes {
    source: Ipv4Addr,
}

impl HostProbes {
    /// Probes leave from `source` (the in-pod rules' exempt source).
    pub fn new(source: Ipv4Addr) -> HostProbes {
        HostProbes { source }
    }

    /// The table for `targets`, replacing any previous one in one
    /// transaction.
    pub fn ruleset(&self, targets: &BTreeSet<(Ipv4Addr, u16)>) -> String {
        let elements = if targets.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = targets
                .iter()
                .map(|(ip, port)| format!("{ip} . {port}"))
                .collect();
            format!("\n        elements = {{ {} }}", list.join(", "))
        };
        format!(
            "table ip {TABLE}\ndelete table ip {TABLE}\ntable ip {TABLE} {{\n    \
             set probed {{\n        type ipv4_addr . inet_service{elements}\n    }}\n    \
             chain postrouting {{\n        type nat hook postrouting priority srcnat; policy accept;\n        \
             fib saddr type local ip daddr . tcp dport @probed snat ip to {}\n    }}\n}}\n",
            self.source
        )
    }

    /// Installs the table for `targets` in the current namespace.
    pub fn apply(&self, targets: &BTreeSet<(Ipv4Addr, u16)>) -> Result<(), RedirectError> {
        run_nft(&self.ruleset(targets))
    }

    /// Removes the table (absent is fine).
    pub fn remove(&self) -> Result<(), RedirectError> {
        run_nft(&format!("table ip {TABLE}\ndelete table ip {TABLE}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn probe_ports_come_from_every_connecting_probe() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [
                {"name": "app", "ports": [{"name": "http", "containerPort": 8080}],
                 "readinessProbe": {"httpGet": {"path": "/", "port": "http"}},
                 "livenessProbe": {"tcpSocket": {"port": 9000}},
                 "startupProbe": {"exec": {"command": ["true"]}}},
                {"name": "side",
                 "readinessProbe": {"grpc": {"port": 7000}},
                 "livenessProbe": {"httpGet": {"port": 81, "host": "10.0.0.9"}}},
                {"name": "bad", "readinessProbe": {"httpGet": {"port": "nope"}}}
            ]}
        }))
        .expect("pod");
        assert_eq!(ports(&pod), vec![7000, 8080, 9000]);
    }

    #[test]
    fn the_table_snats_only_host_connections_to_probed_pairs() {
        let probes = HostProbes::new(Ipv4Addr::new(169, 254, 7, 127));
        let targets: BTreeSet<_> = [(Ipv4Addr::new(10, 244, 1, 5), 8080)].into();
        let text = probes.ruleset(&targets);
        assert!(text.contains("elements = { 10.244.1.5 . 8080 }"), "{text}");
        assert!(
            text.contains(
                "fib saddr type local ip daddr . tcp dport @probed snat ip to 169.254.7.127"
            ),
            "{text}"
        );
        assert!(text.starts_with("table ip weft-probes\ndelete table ip weft-probes\n"));
        let empty = probes.ruleset(&BTreeSet::new());
        assert!(!empty.contains("elements"), "{empty}");
    }
}
