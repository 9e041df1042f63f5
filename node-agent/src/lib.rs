//! weft's node agent (docs/design.md §7): one per node, beside the runtime.
//!
//! - [`install`]: the plugin binary and the conflist entry, kept in place;
//!   uninstall restores the original.
//! - [`netns`]: opening, entering and finding pod network namespaces.
//! - [`redirect`]: the in-pod redirect rules (nftables or iptables).
//! - [`probes`]: the kubelet's probes of enrolled pods, SNATed on the node
//!   to the source the in-pod rules let through.
//! - [`handoff`]: the SEQPACKET server that hands pods' netns to ztunnel.
//! - [`bypass`]: the local-leg bypass (BPF sockmap) between enrolled pods'
//!   applications and ztunnel, when the kernel allows it.
//! - [`agent`]: the node's enrolled pods, converged from the registry and the
//!   plugin's requests (the protocol is `weft_cni::enrollment`'s).
//! - [`coverage`]: is every pod that should be in the mesh covered?
//! - [`peers`]: who may use the agent's sockets.
//! - [`preflight`]: what a node offers weft before install (`weftctl
//!   check --pre`).
//! - [`on_exit`]: whether a stop is a restart (keep everything) or weft
//!   leaving the node (restore the conflist).

pub mod agent;
pub mod bypass;
pub mod coverage;
pub mod handoff;
pub mod install;
pub mod netns;
pub mod on_exit;
pub mod peers;
pub mod preflight;
pub mod probes;
pub mod redirect;
