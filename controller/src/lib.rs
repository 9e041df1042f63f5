//! weft-controller: turns cluster state into proxy config and signs workload
//! certificates.
//!
//! Data flows one way:
//!
//! - [`registry`]: the typed cluster state, from a directory of manifests
//!   ([`registry::files`]) or from an API server ([`registry::kubernetes`]).
//! - [`model`]: the pure builder from that state to `weft_api::config`
//!   resources, and the diff between two models.
//! - [`crd`]: weft's own resources (AuthorizationPolicy, PeerAuthentication).

pub mod crd;
pub mod model;
pub mod registry;
