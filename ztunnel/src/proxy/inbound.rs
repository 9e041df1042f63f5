//! Inbound HBONE (15008): a tunnel for a pod on this node, from accept to
//! close.
//!
//! The caller's identity is its verified certificate. If the pod is bound to
//! a waypoint, only that waypoint may reach it directly (no path around L7
//! policy). Then L4 authorization (docs/design.md §2 semantics, the shared evaluator);
//! then a connection to the application *from the original client's IP*
//! (IP_TRANSPARENT), so the application sees the real caller. A `CONNECT`
//! carrying a sampled `traceparent` gets a connection span when tracing is
//! on ([`crate::otel`]). The tunnel always ends here, at the application:
//! there is no onward HBONE hop to pass the trace context to.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::StatusCode;
use tokio::net::TcpStream;
use tracing::debug;
use weft_api::admin::{Direction, Peer, Transport};
use weft_api::authz::{ConnectionAttrs, evaluate_l4};
use weft_hbone::{H2Stream, InboundTunnel, TunnelHandler, copy_bidirectional};
use weft_mesh::{Denial, Path, admit_hbone, check_destination, client_address};

use super::{Pod, Proxy};
use crate::connections::{ConnectionGuard, ConnectionMeta, Known};
use crate::otel::ConnectionSpan;
use crate::socket::ConnectOptions;

pub struct InboundHandler {
    pub proxy: Arc<Proxy>,
    pub pod: Arc<Pod>,
}

impl TunnelHandler for InboundHandler {
    async fn handle(&self, tunnel: InboundTunnel) {
        handle(&self.proxy, &self.pod, tunnel).await;
    }
}

async fn handle(proxy: &Proxy, pod: &Pod, tunnel: InboundTunnel) {
    // Admission and set-up in a boxed future of their own, freed before the
    // copy: a task keeps the size of its largest state for its whole life,
    // and a tunnel spends that life in the copy (thousands of idle tunnels
    // on a node), which needs a fraction of what set-up does.
    let Some((mut app, stream, guard, span)) = Box::pin(open(proxy, pod, tunnel)).await else {
        return;
    };
    let copied = copy_bidirectional(&mut app, stream, &guard.counters).await;
    if let Err(e) = &copied {
        debug!(error = %e, "inbound tunnel ended with an error");
        crate::socket::reset_on_close(&app);
    }
    span.closed(&guard.counters, copied.err().as_ref());
}

/// Admits the tunnel and connects to the application: the connection to
/// copy between, or `None` when the tunnel was refused (and recorded).
async fn open(
    proxy: &Proxy,
    pod: &Pod,
    tunnel: InboundTunnel,
) -> Option<(TcpStream, H2Stream, ConnectionGuard, ConnectionSpan)> {
    let dst = tunnel.authority;
    let peer_identity = tunnel.peer_identity.clone();
    let peer_id = peer_identity.to_string();
    let peer_ip = tunnel.peer_addr.ip();
    let peer_workload = proxy.store.workload_by_ip(peer_ip);
    let client_ip = client_address(
        peer_ip,
        &peer_id,
        peer_workload.as_deref(),
        tunnel.client_ip(),
    );
    // Usually the peer is the client: one lookup serves both.
    let source_workload = if client_ip == peer_ip {
        peer_workload
    } else {
        proxy.store.workload_by_ip(client_ip)
    };
    let known = proxy.store.workload(&pod.uid);
    let workload = known.clone().unwrap_or_else(|| proxy.workload_of(pod));
    let meta = ConnectionMeta {
        direction: Direction::Inbound,
        transport: Transport::Hbone,
        source: Peer {
            address: SocketAddr::new(client_ip, 0).to_string(),
            workload: source_workload
                .as_ref()
                .map(|w| format!("{}/{}", w.namespace, w.name)),
            identity: Some(peer_id.clone()),
        },
        destination: Peer {
            address: dst.to_string(),
            workload: Some(pod.workload_name()),
            identity: Some(pod.identity.to_string()),
        },
        waypoint: workload
            .waypoint
            .as_ref()
            .map(|w| format!("{}/{}", w.namespace, w.name)),
        known: Known {
            source: source_workload.clone(),
            destination: Some(workload.clone()),
            service: None,
        },
    };

    let span = match &proxy.tracing {
        Some(tracing) => tracing.inbound(&tunnel.headers, &meta),
        None => ConnectionSpan::none(),
    };

    // Before policy: a destination that is this pod's and not ztunnel's own
    // listener, a pod whose config is known (without it, its mTLS mode,
    // waypoint and policies are unknown: refuse rather than serve it as an
    // open pod), and no way around its waypoint.
    let admitted = check_destination(Path::Hbone, dst, &pod.addresses)
        .map_err(|denial| (denial, StatusCode::BAD_REQUEST))
        .and_then(|()| match &known {
            None => Err((
                Denial::NoConfig {
                    workload: pod.workload_name(),
                },
                StatusCode::SERVICE_UNAVAILABLE,
            )),
            Some(w) => admit_hbone(w, &peer_id).map_err(|denial| (denial, StatusCode::FORBIDDEN)),
        });
    if let Err((denial, status)) = admitted {
        let reason = denial.to_string();
        span.refused(denial.label(), &reason, false);
        proxy.connections.deny(meta, denial.label(), &reason);
        tunnel.refuse(status);
        return None;
    }
    let attrs = ConnectionAttrs {
        source_principal: Some(peer_id),
        source_namespace: Some(peer_identity.namespace().to_owned()),
        source_ip: client_ip,
        destination_ip: dst.ip(),
        destination_port: dst.port(),
    };
    let policies = proxy.store.policies_for(&workload);
    let decision = evaluate_l4(policies.iter().map(|p| p.as_ref()), &attrs);
    for audit in &decision.audited {
        tracing::info!(target: "access", audit = %audit, src = %peer_identity, dst = %dst, "audit");
    }
    if !decision.allowed {
        let reason = decision.reason.to_string();
        span.refused("policy", &reason, false);
        proxy.connections.deny(meta, "policy", &reason);
        tunnel.refuse(StatusCode::UNAUTHORIZED);
        return None;
    }

    let options = ConnectOptions {
        transparent_source: transparent_source(client_ip, pod),
    };
    let app = match proxy.connect_from(pod, dst, options).await {
        Ok(app) => app,
        Err(e) => {
            debug!(%dst, error = %e, "application refused the connection");
            let reason = format!("application at {dst}: {e}");
            span.refused("application_unavailable", &reason, true);
            proxy
                .connections
                .deny(meta, "application_unavailable", &reason);
            tunnel.refuse(StatusCode::SERVICE_UNAVAILABLE);
            return None;
        }
    };
    let stream = match tunnel.accept() {
        Ok(stream) => stream,
        Err(e) => {
            debug!(error = %e, "client went away before the tunnel opened");
            span.refused("client_gone", &e.to_string(), false);
            return None;
        }
    };
    let guard = proxy.connections.open(meta);
    Some((app, stream, guard, span))
}

/// The source address to connect to the application from: the original
/// client's, unless it is the pod itself (a pod calling its own Service) or
/// loopback, where the kernel's own choice is right.
pub(super) fn transparent_source(client_ip: IpAddr, pod: &Pod) -> Option<IpAddr> {
    (!client_ip.is_loopback() && !client_ip.is_unspecified() && !pod.addresses.contains(&client_ip))
        .then_some(client_ip)
}
