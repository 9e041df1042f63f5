//! weft-cni: the chained CNI plugin (docs/design.md §7), the one weft binary
//! copied onto every host. It stays small: it parses what the runtime gives
//! it, asks the node agent, and fails closed; everything else is the node
//! agent's (`weft-node-agent`).
//!
//! - [`cni`]: CNI spec 1.0 types: the `CNI_*` environment, the config and
//!   `prevResult` on stdin, the error object.
//! - [`plugin`]: one invocation: ask the agent, fail closed, pass
//!   `prevResult` through.
//! - [`enrollment`]: the enrollment rule, the plugin <-> agent request
//!   protocol, and the enrollment cache the plugin falls back on.
//! - [`report`]: the coverage report's types (the agent's answer to
//!   `Coverage`, read by weftctl), and a node's preflight answer.
//! - [`files`]: atomic writes of the files runtimes and the plugin read.

pub mod cni;
pub mod enrollment;
pub mod files;
pub mod plugin;
pub mod report;
