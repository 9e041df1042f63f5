//! weft-controller: turns cluster state into proxy config and signs workload
//! certificates.
//!
//! Data flows one way:
//!
//! - [`registry`]: the typed cluster state, from a directory of manifests
//!   ([`registry::files`]) or from an API server ([`registry::kubernetes`]).
//! - [`model`]: the pure builder from that state to `weft_api::config`
//!   resources, and the diff between two models.
//! - [`pipeline`]: registry changes → debounced model versions.
//! - [`server`]: the gRPC config stream (and the CA) on :15012.
//! - [`ca`]: `CreateCertificate`, the blast-radius rule, and the root's storage.
//! - [`auth`]: who is calling (bootstrap tokens or TokenReview).
//! - [`writers`]: leader-only writes: waypoint deployer and status.
//! - [`admin`]: metrics (:15014) and the debug API (127.0.0.1:15000).
//! - [`crd`]: weft's own resources (AuthorizationPolicy, PeerAuthentication).
//! - [`app`] and [`options`]: the process and its flags.

pub mod admin;
pub mod app;
pub mod auth;
pub mod ca;
pub mod crd;
pub mod model;
pub mod options;
pub mod pipeline;
pub mod registry;
pub mod server;
pub mod writers;
