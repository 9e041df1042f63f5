//! weft-controller: turns cluster state into proxy config and signs workload
//! certificates.
//!
//! Data flows one way:
//!
//! - `weft_cluster` (its own crate, shared with the node agent and weftctl):
//!   the typed cluster state from a directory of manifests or an API
//!   server, and the pure model builder from it to `weft_api::config`
//!   resources; weft's CRD types.
//! - [`pipeline`]: registry changes → debounced model versions.
//! - [`server`]: the gRPC config stream (and the CA) on :15012.
//! - [`ca`]: `CreateCertificate`, the blast-radius rule, and the root's storage.
//! - [`auth`]: who is calling (bootstrap tokens or TokenReview).
//! - [`writers`]: leader-only writes: waypoint deployer and status.
//! - [`admin`]: metrics (:15014) and the debug API (127.0.0.1:15000).
//! - [`app`] and [`options`]: the process and its flags.

pub mod admin;
pub mod app;
pub mod auth;
pub mod ca;
pub mod options;
pub mod pipeline;
pub mod server;
pub mod writers;
