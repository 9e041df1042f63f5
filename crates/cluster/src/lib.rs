//! The cluster model: what weft reads from a cluster and what it makes of
//! it, with no server, CA or writer attached — the controller, the node
//! agent and weftctl all read the cluster through it.
//!
//! - [`registry`]: the typed cluster state, from a directory of manifests
//!   ([`registry::files`]) or from an API server ([`registry::kubernetes`]).
//! - [`model`]: the pure builder from that state to `weft_api::config`
//!   resources (and the diff between two models); the labels that enroll
//!   and bind ([`model::labels`]).
//! - [`crd`]: weft's own resources (AuthorizationPolicy, PeerAuthentication).

pub mod crd;
pub mod model;
pub mod registry;
