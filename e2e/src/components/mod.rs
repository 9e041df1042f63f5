//! How each weft component is started in a cluster, and how the harness
//! knows it is ready: one module per component, each building the real
//! binary's command line from the cluster's layout.
//!
//! - [`controller`]: `weft-controller` in files mode, in its own namespace.
//! - [`node_agent`]: `weft-node-agent` in each node's namespace.
//! - [`ztunnel`]: `ztunnel` in each node's namespace.

pub mod controller;
pub mod node_agent;
pub mod ztunnel;
