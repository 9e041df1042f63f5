//! weft's ztunnel: the node L4 proxy.
//!
//! Follow one connection: the node agent hands over a pod ([`inpod`]);
//! ztunnel listens inside its network namespace ([`socket`], [`proxy`]);
//! a captured connection is routed ([`proxy::route`], [`proxy::lb`]) and
//! carried out ([`proxy::outbound`]), or arrives over HBONE
//! ([`proxy::inbound`]) or in plaintext ([`proxy::plaintext`]) and is
//! authorized and forwarded to the application. What it needs comes from
//! one state store ([`state`]) filled by the controller's stream
//! ([`controller`]) or a local file ([`local_config`]), and certificates
//! from [`identity`]. Every connection is recorded once ([`connections`])
//! for metrics, the access log, `/connections` and `/tap` ([`admin`]).
//! [`app`] wires it together and drains on SIGTERM; [`options`] are its flags;
//! [`logging`] sets up the process log and [`bootstrap`] holds start-up
//! steps (both shared with the waypoint); [`backoff`] paces every
//! reconnecting loop.

pub mod admin;
pub mod app;
pub mod backoff;
pub mod bootstrap;
pub mod connections;
pub mod controller;
pub mod identity;
pub mod inpod;
pub mod local_config;
pub mod logging;
pub mod options;
pub mod proxy;
pub mod socket;
pub mod state;
