//! The proxy runtime: what ztunnel and the waypoint both are, apart from
//! their data paths.
//!
//! A proxy starts from its [`flags`] ([`startup`]: config from the
//! controller's stream ([`config_client`]) or a local file
//! ([`local_config`]) into one typed [`store`]; certificates from the
//! controller's CA or a local root ([`certs`]), verified against one
//! [`trust`] handle). It picks Service endpoints with one load balancer
//! ([`lb`]), serves its admin API, metrics and readiness on [`listen`]ed
//! sockets ([`admin`]) in weft's and Istio's metric names
//! ([`standard_metrics`]), logs with [`logging`], paces reconnects with
//! [`backoff`], exports spans over OTLP when asked ([`otel`]), and on
//! SIGTERM drains ([`admin::socket::wait_for_signal`]),
//! leaving the admin socket to its replacement.

pub mod admin;
pub mod backoff;
pub mod certs;
pub mod config_client;
pub mod flags;
pub mod lb;
pub mod listen;
pub mod local_config;
pub mod logging;
pub mod otel;
pub mod standard_metrics;
pub mod startup;
pub mod store;
pub mod trust;
