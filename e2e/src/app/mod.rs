//! The sample workload run inside pods (`weft-e2e-app`): echo servers that
//! report the caller address they see, a one-shot client, and a load
//! generator that opens new connections at a steady rate and counts
//! failures.
//!
//! - [`protocol`]: what the server answers and the load generator reports.
//! - [`echo`]: the TCP and HTTP echo servers.
//! - [`client`]: one TCP exchange or one HTTP request.
//! - [`load`]: N new connections per second, each one exchange.

pub mod client;
pub mod echo;
pub mod load;
pub mod protocol;
