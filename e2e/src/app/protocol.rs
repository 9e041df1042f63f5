//! The sample workload's wire format: line-delimited JSON over TCP.
//!
//! A TCP client sends lines; for each line the server answers one
//! [`EchoReply`] as a JSON line. The HTTP server answers the same object
//! (with the method, path and headers it saw) as the response body.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// The longest line the TCP server accepts.
pub const MAX_LINE: usize = 64 * 1024;

/// What the echo server saw of one exchange.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EchoReply {
    /// The server's name (`namespace/pod`).
    pub server: String,
    /// The caller's address as the server's socket sees it: with the mesh,
    /// still the client pod's own IP (source preservation).
    pub peer: SocketAddr,
    /// The address the connection reached.
    pub local: SocketAddr,
    /// The line received (TCP), or the request body (HTTP).
    pub message: String,
    /// HTTP only: the method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// HTTP only: the path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// HTTP only: the request headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

/// What a load run did. Counts only: tests assert on failures, never on
/// timings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadReport {
    /// Connections started.
    pub attempted: u64,
    /// Exchanges completed with a correct reply.
    pub succeeded: u64,
    /// Exchanges that failed.
    pub failed: u64,
    /// Failures by kind (`connect: Connection refused`, `read: reset`...).
    pub errors: BTreeMap<String, u64>,
    /// Distinct servers that answered, with how many replies each.
    pub servers: BTreeMap<String, u64>,
}
