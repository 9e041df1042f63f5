//! The coverage report: what the node agent answers to
//! [`crate::enrollment::AgentRequest::Coverage`] and `weftctl check` reads —
//! per pod, whether it should be in the mesh and whether it is (netns,
//! redirect rules, ztunnel's listeners, the handoff). The agent fills it in;
//! these are only its types.

use serde::{Deserialize, Serialize};

/// The report for one node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoverageReport {
    /// The node.
    pub node: String,
    /// ztunnels connected to the handoff socket.
    pub ztunnels_connected: usize,
    /// One entry per pod on the node the agent knows of.
    pub pods: Vec<PodCoverage>,
    /// How the node moves bytes between an application and ztunnel.
    #[serde(default)]
    pub local_legs: LocalLegs,
}

/// The path of a node's local legs (application ↔ ztunnel inside a pod),
/// docs/design.md §7.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalLegs {
    /// `sockmap` (the kernel moves the bytes) or `tcp`.
    pub path: LocalPath,
    /// Why the path is `tcp` (the bypass is off, or the kernel refused it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Whether the bypass was asked for (`--local-bypass auto`).
    #[serde(default)]
    pub requested: bool,
    /// Counters of the bypass since it was loaded.
    #[serde(default)]
    pub counters: BypassCounters,
}

/// Which path local legs take.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LocalPath {
    /// Through the pod's TCP/IP stack, as any connection.
    #[default]
    Tcp,
    /// Socket to socket in the kernel (BPF sockmap).
    Sockmap,
}

impl std::fmt::Display for LocalPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LocalPath::Tcp => "tcp",
            LocalPath::Sockmap => "sockmap",
        })
    }
}

/// What the bypass did, summed over the node's CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BypassCounters {
    /// Bytes moved socket to socket.
    pub bypassed_bytes: u64,
    /// Sends moved socket to socket.
    pub bypassed_sends: u64,
    /// Legs whose two sockets were paired.
    pub paired_legs: u64,
    /// Sockets whose first send found no peer and so stayed on TCP.
    pub first_send_over_tcp: u64,
}

impl CoverageReport {
    /// Pods with a problem.
    pub fn drift(&self) -> impl Iterator<Item = &PodCoverage> {
        self.pods.iter().filter(|p| !p.problems.is_empty())
    }

    /// No pod has a problem.
    pub fn covered(&self) -> bool {
        self.drift().next().is_none()
    }
}

/// One pod's coverage.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodCoverage {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID (or `namespace/name` when the runtime gave none).
    pub uid: String,
    /// The labels say it belongs in the mesh.
    pub should_enroll: bool,
    /// The agent has enrolled it.
    pub enrolled: bool,
    /// Where its netns is, if found.
    pub netns: Option<String>,
    /// The rules read back from its netns.
    pub rules: Option<RuleState>,
    /// ztunnel's listeners found inside its netns.
    pub listeners: Option<Listeners>,
    /// What ztunnel answered to the handoff.
    pub handoff: Option<AckStatus>,
    /// Everything wrong, in words; empty when covered.
    pub problems: Vec<String>,
}

/// Which ztunnel ports are listening in a pod netns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listeners {
    /// 15001.
    pub outbound: bool,
    /// 15006.
    pub inbound: bool,
    /// 15008.
    pub hbone: bool,
}

impl Listeners {
    /// All three are listening.
    pub fn complete(&self) -> bool {
        self.outbound && self.inbound && self.hbone
    }
}

/// What is installed in a namespace, as read back from it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RuleState {
    /// The `inet weft` nftables table exists.
    pub nftables: bool,
    /// The weft iptables chains exist.
    pub iptables: bool,
    /// The `fwmark 0x111/0xfff lookup 100` rule exists.
    pub ip_rule: bool,
    /// Table 100 holds the local default route.
    pub local_route: bool,
}

impl RuleState {
    /// The full set is installed, with one of the backends.
    pub fn complete(&self) -> bool {
        (self.nftables || self.iptables) && self.ip_rule && self.local_route
    }

    /// Nothing of weft's is installed.
    pub fn empty(&self) -> bool {
        !(self.nftables || self.iptables || self.ip_rule || self.local_route)
    }
}

/// What ztunnel last answered for a pod, for the coverage report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckStatus {
    /// Sent, not acknowledged yet.
    Pending,
    /// ztunnel acknowledged it.
    Acked,
    /// ztunnel answered with this error.
    Failed(String),
}

/// What a node offers weft before install: `weft-node-agent preflight`'s
/// answer, read by `weftctl check --pre`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeReport {
    /// The active network config (the lexically first), if any.
    pub cni_config: Option<std::path::PathBuf>,
    /// Why it could not be used, if it cannot.
    pub cni_config_error: Option<String>,
    /// The plugin types of its chain.
    pub plugins: Vec<String>,
    /// Plugin types with no binary in any of the bin dirs looked at.
    pub missing_plugins: Vec<String>,
    /// `nft` runs and the kernel answers.
    pub nftables: bool,
    /// `iptables` runs and the kernel answers.
    pub iptables: bool,
    /// Why the kernel would refuse the rules the agent installs (the in-pod
    /// redirect rules with the tool the agent would pick, the host's probe
    /// SNAT table); none when it takes them. Absent from older agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules_error: Option<String>,
}
