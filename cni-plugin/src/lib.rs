//! weft-cni: the chained CNI plugin and the node agent (docs/design.md §7).
//!
//! The plugin (`weft-cni` binary):
//! - [`cni`]: CNI spec 1.0 types: the `CNI_*` environment, the config and
//!   `prevResult` on stdin, the error object.
//! - [`plugin`]: one invocation: ask the agent, fail closed, pass
//!   `prevResult` through.
//! - [`enrollment`]: the enrollment rule, the plugin <-> agent request
//!   protocol, and the enrollment cache the plugin falls back on.
//!
//! The node agent (`weft-node-agent` binary):
//! - [`install`]: the plugin binary and the conflist entry, kept in place;
//!   uninstall restores the original.
//! - [`netns`]: opening, entering and finding pod network namespaces.
//! - [`redirect`]: the in-pod redirect rules (nftables or iptables).
//! - [`handoff`]: the SEQPACKET server that hands pods' netns to ztunnel.
//! - [`agent`]: the node's enrolled pods, converged from the registry and the
//!   plugin's requests.
//! - [`coverage`]: is every pod that should be in the mesh covered?

pub mod agent;
pub mod cni;
pub mod coverage;
pub mod enrollment;
pub mod handoff;
pub mod install;
pub mod netns;
pub mod plugin;
pub mod redirect;
