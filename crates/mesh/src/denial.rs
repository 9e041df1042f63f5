//! Why an enforcer refused a connection.

use std::net::SocketAddr;

/// A refusal, before or instead of policy. `Display` is the sentence the
/// access log, `/tap` and `weftctl explain` show; [`Denial::label`] is the
/// metrics label.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    /// Loopback or the unspecified address: only the pod itself answers
    /// there, including ztunnel's own listeners.
    #[error("{0} is a loopback destination; ztunnel does not proxy to it")]
    LoopbackDestination(SocketAddr),
    /// One of ztunnel's own listeners in the pod.
    #[error("{0} is ztunnel's own listener; ztunnel does not proxy to itself")]
    OwnListener(SocketAddr),
    /// Inbound traffic must be for the pod it arrived at.
    #[error("{0} is not an address of this pod")]
    NotThisPod(SocketAddr),
    /// The pod's config has not arrived: its mTLS mode, waypoint and
    /// policies are unknown.
    #[error("no config for {workload} yet: its mTLS mode, waypoint and policies are unknown")]
    NoConfig {
        /// `namespace/name`.
        workload: String,
    },
    /// Plaintext to a pod that accepts only mTLS.
    #[error("{workload} accepts only mTLS (PeerAuthentication STRICT); plaintext refused")]
    StrictMtls {
        /// `namespace/name`.
        workload: String,
    },
    /// A connection to a waypoint-bound pod that does not come from its
    /// waypoint would skip the waypoint's L7 policy.
    #[error(
        "{workload} is bound to waypoint {waypoint}; only the waypoint may connect to it ({client} may not bypass it)"
    )]
    WaypointBypass {
        /// `namespace/name` of the destination.
        workload: String,
        /// `namespace/name` of its waypoint.
        waypoint: String,
        /// Who tried: a SPIFFE id, or `plaintext` for a client without one.
        client: String,
    },
    /// The destination is bound to a waypoint that cannot take traffic (its
    /// Gateway does not exist, or has no address): refused rather than sent
    /// around the waypoint's L7 policy.
    #[error("{bound} is bound to waypoint {waypoint}, which is unavailable: {reason}")]
    WaypointUnavailable {
        /// What carries the binding: `service ns/name` or `workload ns/name`.
        bound: String,
        /// `namespace/name` of the waypoint.
        waypoint: String,
        /// Why, as the controller said.
        reason: String,
    },
}

impl Denial {
    /// A short, stable name for metrics labels and machine-readable output.
    pub fn label(&self) -> &'static str {
        match self {
            Denial::LoopbackDestination(_) => "loopback_destination",
            Denial::OwnListener(_) => "own_listener",
            Denial::NotThisPod(_) => "not_this_pod",
            Denial::NoConfig { .. } => "no_config",
            Denial::StrictMtls { .. } => "strict_mtls",
            Denial::WaypointBypass { .. } => "waypoint_bypass",
            Denial::WaypointUnavailable { .. } => "waypoint_unavailable",
        }
    }
}
