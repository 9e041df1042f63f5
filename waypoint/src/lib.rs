//! weft's waypoint: the L7 proxy deployed per Gateway of class
//! `weft-waypoint`.
//!
//! Follow one request: a client's ztunnel opens an HBONE tunnel to the
//! waypoint ([`inbound`]), as the client's identity, for a Service VIP or a
//! pod address bound to this waypoint ([`destination`]). The bytes inside are
//! classified ([`sniff`]): HTTP is served per request ([`request`]) —
//! authorized ([`policy`]), routed ([`routing`]), forwarded to an endpoint
//! over HBONE or TCP ([`upstream`]) with retries and timeouts — and anything
//! else is authorized at L4 and copied byte for byte ([`tcp`]).
//!
//! What it knows comes from the proxy runtime it shares with ztunnel
//! (`weft_runtime`: the config store and sources, certificates, trust, load
//! balancing, admin plumbing, start-up), compiled per config version into
//! the waypoint's own view ([`snapshot`]); [`tls`] serves its certificate.
//! Every request is recorded once for metrics, the access log and `/tap`
//! ([`observe`]), and traced with OpenTelemetry when an OTLP collector is
//! configured ([`otel`]); [`admin`] serves the admin API, metrics and readiness.
//! [`app`] wires it together and drains on SIGTERM; [`options`] are its
//! flags. [`path`] normalizes request paths so that policy, routing and the
//! application see the same one.

pub mod admin;
pub mod app;
pub mod destination;
pub mod inbound;
pub mod observe;
pub mod options;
pub mod otel;
pub mod path;
pub mod policy;
pub mod proxy;
pub mod request;
pub mod routing;
pub mod service_map;
pub mod snapshot;
pub mod sniff;
pub mod tcp;
pub mod tls;
pub mod upstream;

#[cfg(test)]
mod test_support;

pub use app::{Waypoint, WaypointSettings};
pub use destination::WaypointName;
