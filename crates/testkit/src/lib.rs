//! weft-testkit: what weft's tests share, so that no test carries its own
//! copy. Dev-only: every crate lists it under `[dev-dependencies]`, never
//! `[dependencies]` (docs/design.md §1).
//!
//! - [`wait`]: [`eventually`] and [`eventually_async`], polling a check
//!   until it holds, panicking with what was awaited and for how long.
//! - [`ca`]: [`TestCa`], a CA for a trust domain with its trust bundle,
//!   issuing workload certificates, and crafting deliberately bad ones.
//! - [`hbone`]: HBONE tunnel handlers for test servers (echo, count, refuse,
//!   forward) and a loopback HBONE server that counts its connections.
//! - [`otelcol`]: a real OpenTelemetry Collector receiving the proxies'
//!   spans, and readers of what it wrote.

pub mod ca;
pub mod hbone;
pub mod otelcol;
pub mod wait;

pub use ca::TestCa;
pub use wait::{eventually, eventually_async};
