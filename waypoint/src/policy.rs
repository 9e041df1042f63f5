//! Authorization at the waypoint, with the evaluator every enforcer shares
//! (`weft_api::authz`), so the waypoint, ztunnel and `weftctl explain`
//! cannot disagree on what a rule means.
//!
//! Two sets are enforced, and both must allow (docs/waypoint.md,
//! "Authorization"):
//! 1. the policies that apply *at this waypoint* (`targetRefs` to its
//!    Gateway, or to the Service the traffic is addressed to), before
//!    routing;
//! 2. the destination workload's own policies (mesh, namespace, selector) in
//!    full form, once the endpoint is chosen — the waypoint sees the real
//!    client and the request, where the destination's ztunnel sees only the
//!    waypoint's identity and no L7 fields.
//!
//! The client is who the HBONE peer certificate says: the client's ztunnel
//! tunnels as the client's identity. Headers never name anyone.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::HeaderMap;
use tracing::info;
use weft_api::admin::Peer;
use weft_api::authz::{ConnectionAttrs, Decision, RequestAttrs, evaluate_l4, evaluate_l7};
use weft_api::config::{Authorization, Workload};
use weft_hbone::SpiffeId;

/// The caller of a tunnel.
#[derive(Debug, Clone)]
pub struct Client {
    pub identity: SpiffeId,
    /// `identity` as text, computed once per tunnel.
    pub principal: String,
    /// The original client IP (`forwarded: for=` of the verified peer, else
    /// the peer's address).
    pub ip: IpAddr,
    /// The workload owning `ip`, if known (metrics, logs).
    pub workload: Option<Arc<Workload>>,
}

impl Client {
    pub fn new(identity: SpiffeId, ip: IpAddr, workload: Option<Arc<Workload>>) -> Client {
        Client {
            principal: identity.to_string(),
            identity,
            ip,
            workload,
        }
    }

    /// What the evaluator knows about a connection from this client to `dst`.
    pub fn connection(&self, dst: SocketAddr) -> ConnectionAttrs {
        ConnectionAttrs {
            source_principal: Some(self.principal.clone()),
            source_namespace: Some(self.identity.namespace().to_owned()),
            source_ip: self.ip,
            destination_ip: dst.ip(),
            destination_port: dst.port(),
        }
    }

    /// The client as the admin API shows it.
    pub fn peer(&self) -> Peer {
        Peer {
            address: SocketAddr::new(self.ip, 0).to_string(),
            workload: self
                .workload
                .as_ref()
                .map(|w| format!("{}/{}", w.namespace, w.name)),
            identity: Some(self.principal.clone()),
        }
    }
}

/// True if any rule reads `request.headers[...]`: only then are a
/// request's headers copied for the evaluator.
pub fn reads_headers(policies: &[Arc<Authorization>]) -> bool {
    policies.iter().any(|p| {
        p.rules
            .iter()
            .any(|r| r.when.iter().any(|c| c.key.starts_with("request.headers[")))
    })
}

/// What the evaluator knows about a request.
pub fn request_attrs(
    method: &http::Method,
    path: &str,
    host: &str,
    headers: &HeaderMap,
    with_headers: bool,
) -> RequestAttrs {
    RequestAttrs {
        method: method.as_str().to_owned(),
        path: path.to_owned(),
        host: host.to_owned(),
        headers: if with_headers {
            headers
                .iter()
                .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
                .collect()
        } else {
            Vec::new()
        },
    }
}

/// Evaluates a request; AUDIT matches are logged.
pub fn authorize_request(
    policies: &[Arc<Authorization>],
    conn: &ConnectionAttrs,
    request: &RequestAttrs,
) -> Decision {
    let decision = evaluate_l7(policies.iter().map(AsRef::as_ref), conn, request);
    audit(&decision, conn, Some(request));
    decision
}

/// Evaluates a connection that is not HTTP, with the L4 form of the
/// policies: an ALLOW rule with L7 fields matches nothing, a DENY rule with
/// L7 fields refuses the whole connection.
pub fn authorize_connection(policies: &[Arc<Authorization>], conn: &ConnectionAttrs) -> Decision {
    let decision = evaluate_l4(policies.iter().map(AsRef::as_ref), conn);
    audit(&decision, conn, None);
    decision
}

fn audit(decision: &Decision, conn: &ConnectionAttrs, request: Option<&RequestAttrs>) {
    for rule in &decision.audited {
        info!(
            target: "access",
            audit = %rule,
            src = conn.source_principal.as_deref().unwrap_or("-"),
            dst = %SocketAddr::new(conn.destination_ip, conn.destination_port),
            method = request.map_or("-", |r| r.method.as_str()),
            path = request.map_or("-", |r| r.path.as_str()),
            "audit"
        );
    }
}
