//! weft-api: the messages the parts of weft exchange, and the semantics every
//! enforcer of them shares.
//!
//! - [`config`]: the config stream between the controller and the proxies.
//! - [`ca`]: the certificate authority's `CreateCertificate`.
//! - [`nodeagent`]: the node agent -> ztunnel handoff of pod network namespaces.
//! - [`authz`]: authorization semantics shared by ztunnel, waypoint and CLI.
//! - [`admin`]: the JSON of the proxies' admin API, shared with weftctl.
//! - [`handoff_wire`]: the SEQPACKET framing of that handoff (one message, and the fds it carries).
//! - [`yaml`]: YAML reading and writing, multi-document files split per document.

pub mod admin;
pub mod authz;

#[allow(clippy::all, clippy::pedantic)]
pub mod config {
    //! `weft.config.v1`: the incremental config stream (see the .proto).
    include!(concat!(env!("OUT_DIR"), "/weft.config.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/weft.config.v1.serde.rs"));
}

#[allow(clippy::all, clippy::pedantic)]
pub mod ca {
    //! `weft.ca.v1`: certificate signing for workload identities.
    include!(concat!(env!("OUT_DIR"), "/weft.ca.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/weft.ca.v1.serde.rs"));
}

#[allow(clippy::all, clippy::pedantic)]
pub mod nodeagent {
    //! `weft.nodeagent.v1`: the SEQPACKET handoff between node agent and ztunnel.
    include!(concat!(env!("OUT_DIR"), "/weft.nodeagent.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/weft.nodeagent.v1.serde.rs"));
}

pub mod handoff_wire;
pub mod yaml;
