//! The JSON of the proxies' admin API (docs/design.md §9), shared by ztunnel (which
//! serves it) and weftctl (which reads it), so the two cannot drift.
//!
//! Endpoints on `127.0.0.1:15000` and on the admin unix socket:
//!
//! | path | body |
//! | --- | --- |
//! | `GET /connections` | [`ConnectionsResponse`] |
//! | `GET /certs` | [`CertsResponse`] |
//! | `GET /workloads` | `{"workloads": [Workload]}` (proto3 JSON of `weft.config.v1.Workload`) |
//! | `GET /services` | `{"services": [Service]}` |
//! | `GET /policies` | `{"policies": [Authorization]}` |
//! | `GET /config_dump` | [`ConfigDump`] |
//! | `GET /tap?namespace=NS&workload=NAME` | newline-delimited [`TapEvent`]s, until the client goes away |
//! | `GET /logging`, `POST /logging?level=...` | [`LoggingResponse`] |
//! | `GET /healthz/ready` | 200 `ready` or 503 with the reason |

use serde::{Deserialize, Serialize};

/// Live connections through this ztunnel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionsResponse {
    pub node: String,
    pub connections: Vec<ConnectionInfo>,
    /// Pooled HBONE connections (each carries many of the tunnels above).
    #[serde(default)]
    pub pool: Vec<PooledConnection>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Captured from a local pod (15001).
    Outbound,
    /// Arriving for a local pod (15008 HBONE or 15006 plaintext).
    Inbound,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Transport {
    /// Tunnelled over HBONE (mTLS).
    Hbone,
    /// Plain TCP (a destination outside the mesh, or plaintext inbound).
    Tcp,
}

/// One side of a connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Peer {
    /// `ip:port`.
    pub address: String,
    /// `namespace/name` of the workload, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    /// SPIFFE ID, when known (proved by mTLS, or expected of a destination).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionInfo {
    pub id: u64,
    pub direction: Direction,
    pub transport: Transport,
    pub source: Peer,
    pub destination: Peer,
    /// `namespace/name` of the waypoint the connection goes through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waypoint: Option<String>,
    /// Bytes from the source towards the destination.
    pub bytes_sent: u64,
    /// Bytes from the destination back to the source.
    pub bytes_received: u64,
    /// Unix milliseconds.
    pub opened_at_ms: u64,
    pub age_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PooledConnection {
    pub id: u64,
    pub source_identity: String,
    pub destination_identity: String,
    /// `ip:15008`.
    pub address: String,
    pub active_streams: usize,
    pub age_ms: u64,
}

/// Certificates this ztunnel holds (or is waiting for).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertsResponse {
    pub node: String,
    pub certificates: Vec<CertInfo>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertState {
    Valid,
    /// Requested, not yet issued (or the CA is unreachable).
    Pending,
    Expired,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertInfo {
    pub identity: String,
    pub state: CertState,
    /// Colon-separated hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    /// When ztunnel will renew it (half-life).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_at: Option<String>,
    /// PEM chain, leaf first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain_pem: Vec<String>,
    /// The last error fetching it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Everything the proxy holds, for debugging.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigDump {
    pub node: String,
    /// Where config comes from: `controller <address>` or `file <path>`.
    pub source: String,
    /// The model version last applied.
    pub version: u64,
    /// Pods handed over by the node agent: uid -> `namespace/name`.
    pub pods: Vec<PodInfo>,
    pub workloads: serde_json::Value,
    pub services: serde_json::Value,
    pub policies: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodInfo {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub addresses: Vec<String>,
    /// Whether its listeners (15001/15006/15008) are up.
    pub listening: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TapKind {
    Open,
    Close,
    Deny,
    /// An HTTP request seen by a waypoint.
    Request,
}

/// One event of `/tap`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TapEvent {
    /// Unix milliseconds.
    pub time_ms: u64,
    pub kind: TapKind,
    pub connection: ConnectionInfo,
    /// The policy verdict: `allow`, or why it was denied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    /// Waypoint only: `METHOD path` and the response status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Events dropped before this one because the reader was too slow.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropped: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoggingResponse {
    /// The active `tracing` filter, e.g. `info,weft_ztunnel=debug`.
    pub filter: String,
}

/// The controller's `GET /proxy-status`: what each proxy streaming from it
/// was last sent, acknowledged and refused (`weftctl proxy-status`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyStatusReport {
    /// The controller answering (its pod, or process id locally).
    pub controller: String,
    /// Its current model version.
    pub model_version: u64,
    /// Seconds the model has been at that version.
    pub model_age_seconds: u64,
    /// The proxies connected to it.
    pub proxies: Vec<ProxyStatus>,
}

/// One proxy's config, as its controller sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyStatus {
    /// `ProxyInfo.id` (the pod name).
    pub proxy_id: String,
    /// `ztunnel` or `waypoint`.
    pub kind: String,
    /// A ztunnel's node.
    pub node: String,
    /// A waypoint's `namespace/name`.
    pub waypoint: String,
    /// When its stream opened (seconds since the epoch).
    pub connected_at: u64,
    /// The last model version sent to it (0: nothing yet).
    pub sent_version: u64,
    /// The last version it acknowledged (a version with nothing for it
    /// counts as acknowledged).
    pub acked_version: u64,
    /// The last version it refused, if any.
    pub nacked_version: Option<u64>,
    /// Why it refused it.
    pub nack: Option<String>,
    /// Where that leaves it ([`ConfigSync::of`]).
    pub sync: ConfigSync,
}

/// Where a proxy's config stands against its controller's model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConfigSync {
    /// It runs the current model.
    Synced,
    /// It is behind, for less than [`STALE_AFTER_SECONDS`]: a push is on
    /// its way.
    Pending,
    /// It has been behind for longer: stuck (slow, wedged or starved of a
    /// snapshot slot).
    Stale,
    /// It refused the last version sent and runs an older one.
    Nacked,
}

/// How long a proxy may stay behind a model version before it counts as
/// stuck: pushes take milliseconds, a snapshot under load a few seconds.
pub const STALE_AFTER_SECONDS: u64 = 30;

impl ConfigSync {
    /// The one rule for a proxy's state, applied by the controller when it
    /// answers and read by `weftctl proxy-status` and `weftctl check`:
    /// a refusal newer than what it runs wins; otherwise it is synced when
    /// it acknowledged `model_version`, and behind (pending, then stale once
    /// the model has been at that version for [`STALE_AFTER_SECONDS`])
    /// when not.
    pub fn of(
        model_version: u64,
        model_age_seconds: u64,
        acked_version: u64,
        nacked_version: Option<u64>,
    ) -> ConfigSync {
        if nacked_version.is_some_and(|n| n > acked_version) {
            ConfigSync::Nacked
        } else if acked_version >= model_version {
            ConfigSync::Synced
        } else if model_age_seconds >= STALE_AFTER_SECONDS {
            ConfigSync::Stale
        } else {
            ConfigSync::Pending
        }
    }

    /// Whether `weftctl check` fails on it.
    pub fn is_problem(self) -> bool {
        matches!(self, ConfigSync::Stale | ConfigSync::Nacked)
    }
}

#[cfg(test)]
mod proxy_status_tests {
    use super::*;

    #[test]
    fn a_proxy_is_synced_pending_stale_or_nacked_by_one_rule() {
        assert_eq!(ConfigSync::of(7, 100, 7, None), ConfigSync::Synced);
        // Ahead of a controller that restarted with a lower count is fine.
        assert_eq!(ConfigSync::of(3, 100, 7, None), ConfigSync::Synced);
        assert_eq!(ConfigSync::of(8, 2, 7, None), ConfigSync::Pending);
        assert_eq!(ConfigSync::of(8, 30, 7, None), ConfigSync::Stale);
        // Refused the last version sent: it runs 7.
        assert_eq!(ConfigSync::of(8, 2, 7, Some(8)), ConfigSync::Nacked);
        // An old refusal, since superseded by an accepted version.
        assert_eq!(ConfigSync::of(9, 2, 9, Some(8)), ConfigSync::Synced);
        assert!(ConfigSync::Nacked.is_problem() && ConfigSync::Stale.is_problem());
        assert!(!ConfigSync::Pending.is_problem() && !ConfigSync::Synced.is_problem());
    }
}
