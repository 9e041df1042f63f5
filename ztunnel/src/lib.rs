//! weft's ztunnel: the node L4 proxy.
//!
//! Follow one connection: the node agent hands over a pod ([`inpod`]);
//! ztunnel listens inside its network namespace ([`pod_network`], [`socket`],
//! [`proxy`]);
//! a captured connection is routed ([`proxy::route`]) and
//! carried out ([`proxy::outbound`]), or arrives over HBONE
//! ([`proxy::inbound`]) or in plaintext ([`proxy::plaintext`]) and is
//! authorized and forwarded to the application. What it needs (the config
//! store, certificates, trust, load balancing, admin plumbing, start-up)
//! comes from the proxy runtime it shares with the waypoint
//! (`weft_runtime`). Every connection is recorded once ([`connections`])
//! for metrics, the access log, `/connections` and `/tap` ([`admin`]), and
//! traced when asked ([`otel`]).
//! [`app`] wires it together and drains on SIGTERM; [`options`] are its
//! flags.

pub mod admin;
pub mod app;
pub mod connections;
pub mod inpod;
pub mod options;
pub mod otel;
pub mod pod_network;
pub mod proxy;
pub mod socket;
