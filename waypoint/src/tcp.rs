//! Tunnels that are not HTTP: authorized at L4, then copied byte for byte to
//! an endpoint.
//!
//! L4 authorization uses the compiled L4 form of the same two policy sets an
//! HTTP request meets (the waypoint's, then the destination workload's), so
//! an ALLOW rule with L7 fields matches nothing and a DENY rule with L7
//! fields refuses the connection: TCP cannot slip past an L7 rule. Routes do
//! not apply (they are HTTP and gRPC routes); a Service's endpoint is chosen
//! as for HTTP.

use std::sync::Arc;

use http::StatusCode;
use tracing::debug;
use weft_api::admin::Peer;
use weft_hbone::H2Stream;

use crate::destination::Destination;
use crate::observe::Mode;
use crate::policy::{self, Client};
use crate::proxy::Proxy;
use crate::sniff::{Counters, Rewind};
use crate::upstream::{Endpoint, UpstreamIo};

/// Why a TCP tunnel is refused, and the CONNECT answer for it.
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    pub reason: String,
}

impl Refusal {
    /// The denial metric's `reason` label: a policy said no, or there was
    /// nowhere to go.
    pub fn label(&self) -> &'static str {
        if self.status == StatusCode::UNAUTHORIZED {
            "policy"
        } else {
            "unavailable"
        }
    }
}

/// Authorizes a TCP tunnel and picks the endpoint it goes to.
pub fn authorize(proxy: &Proxy, client: &Client, dest: &Destination) -> Result<Endpoint, Refusal> {
    let snapshot = proxy.config.snapshot();
    let store = &proxy.config.store;
    let denied = |reason: String| Refusal {
        status: StatusCode::UNAUTHORIZED,
        reason,
    };
    let waypoint_policies = snapshot.waypoint_policies(dest.service());
    let decision =
        policy::authorize_connection(&waypoint_policies, &client.connection(dest.authority()));
    if !decision.allowed {
        return Err(denied(decision.reason.to_string()));
    }
    let hbone_port = proxy.settings.upstream_hbone_port;
    let unavailable = |reason: String| Refusal {
        status: StatusCode::SERVICE_UNAVAILABLE,
        reason,
    };
    let endpoint = match dest {
        Destination::Workload { workload, addr } => {
            Endpoint::new(workload.clone(), *addr, &proxy.me, hbone_port, None)
        }
        Destination::Service { service, port, .. } => {
            let port = service
                .ports
                .get(*port)
                .ok_or_else(|| unavailable("service port vanished".into()))?;
            let candidates = snapshot.candidates(store, service, port);
            let (chosen, load) = proxy.lb.pick(&candidates, None).ok_or_else(|| {
                unavailable(format!(
                    "service {}/{} has no healthy endpoint",
                    service.namespace, service.name
                ))
            })?;
            Endpoint::new(
                chosen.workload.clone(),
                chosen.addr,
                &proxy.me,
                hbone_port,
                Some(load),
            )
        }
    }
    .map_err(|e| unavailable(e.to_string()))?;
    let policies = snapshot.workload_policies(store, &endpoint.workload);
    let decision = policy::authorize_connection(&policies, &client.connection(endpoint.addr));
    if !decision.allowed {
        return Err(denied(decision.reason.to_string()));
    }
    Ok(endpoint)
}

/// Connects to the endpoint.
pub async fn connect(proxy: &Proxy, endpoint: Endpoint) -> Result<(Endpoint, UpstreamIo), Refusal> {
    match proxy
        .http
        .connector()
        .connect(endpoint.addr, &endpoint.transport)
        .await
    {
        Ok(io) => Ok((endpoint, io)),
        Err(e) => {
            if let Some(load) = &endpoint.load {
                load.failed();
            }
            Err(Refusal {
                status: StatusCode::SERVICE_UNAVAILABLE,
                reason: format!("endpoint {}: {e}", endpoint.addr),
            })
        }
    }
}

/// Copies both ways until both sides are done.
pub async fn copy(
    proxy: &Proxy,
    client: &Client,
    endpoint: &Endpoint,
    mut tunnel: Rewind<H2Stream>,
    mut upstream: UpstreamIo,
    counters: Arc<Counters>,
) {
    let peer = Peer {
        address: endpoint.addr.to_string(),
        workload: Some(format!(
            "{}/{}",
            endpoint.workload.namespace, endpoint.workload.name
        )),
        identity: weft_runtime::store::workload_identity(&endpoint.workload)
            .ok()
            .map(|id| id.to_string()),
    };
    let _guard =
        proxy
            .observer
            .open_tunnel(client, peer, Some(&endpoint.workload), Mode::Tcp, counters);
    if let Err(e) = tokio::io::copy_bidirectional(&mut tunnel, &mut upstream).await {
        debug!(error = %e, "TCP tunnel ended with an error");
        tunnel.inner_mut().reset(h2::Reason::CANCEL);
    }
}
