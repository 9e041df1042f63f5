//! Outbound (15001): a pod's captured TCP connection, from accept to close.
//!
//! The original destination comes from `SO_ORIGINAL_DST`; the route decides
//! between a tunnel (to the destination's ztunnel, or to its waypoint) and
//! plain TCP from the pod's own namespace. A tunnel the peer refuses resets
//! the client's socket, so the application sees the refusal. With tracing
//! on, a sampled tunnel gets a CLIENT span whose context its `CONNECT`
//! carries ([`crate::otel`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpStream;
use tracing::debug;
use weft_api::admin::{Direction, Peer, Transport};
use weft_api::config::Workload;
use weft_hbone::{TunnelTarget, copy_bidirectional};
use weft_mesh::{Path, check_destination};

use super::route::{Route, Tunnel, route};
use super::{Captured, Pod, PodDialer, Proxy};
use crate::connections::{ConnectionMeta, Known};
use crate::otel::ConnectionSpan;
use crate::socket::{self, ConnectOptions};
use weft_runtime::store::workload_identity;

pub async fn handle(proxy: Arc<Proxy>, pod: Arc<Pod>, captured: Captured) {
    let Captured {
        mut client,
        client_addr,
        dst,
    } = captured;
    let source_workload = proxy.workload_of(&pod);
    let source = Peer {
        address: client_addr.to_string(),
        workload: Some(pod.workload_name()),
        identity: Some(pod.identity.to_string()),
    };
    if let Err(refused) = check_destination(Path::Outbound, dst, &pod.addresses) {
        return refuse(
            &proxy,
            source,
            &source_workload,
            dst,
            refused.label(),
            &refused.to_string(),
            &client,
        );
    }
    match route(
        &proxy.store,
        &proxy.lb,
        &proxy.node,
        Some(&source_workload),
        dst,
    ) {
        Route::Passthrough { dst, load } => {
            // A Service may resolve to an endpoint the original destination
            // was not: check what is really connected to.
            if let Err(refused) = check_destination(Path::Outbound, dst, &pod.addresses) {
                return refuse(
                    &proxy,
                    source,
                    &source_workload,
                    dst,
                    refused.label(),
                    &refused.to_string(),
                    &client,
                );
            }
            let (destination, destination_workload) = destination(&proxy, dst);
            let meta = ConnectionMeta {
                direction: Direction::Outbound,
                transport: Transport::Tcp,
                source,
                destination,
                waypoint: None,
                known: Known {
                    source: Some(source_workload.clone()),
                    destination: destination_workload,
                    service: None,
                },
            };
            let started = Instant::now();
            let mut upstream = match proxy
                .connect_from(&pod, dst, ConnectOptions::default())
                .await
            {
                Ok(s) => s,
                Err(e) => {
                    if let Some(load) = &load {
                        load.failed();
                    }
                    debug!(%dst, error = %e, "passthrough connect failed");
                    socket::reset_on_close(&client);
                    return;
                }
            };
            if let Some(load) = &load {
                load.connected(started.elapsed());
            }
            let guard = proxy.connections.open(meta);
            super::plaintext::copy_plain(&mut client, &mut upstream, &guard.counters).await;
        }
        Route::Direct(tunnel) | Route::Waypoint(tunnel) => {
            tunnel_out(
                &proxy,
                &pod,
                client,
                client_addr,
                source,
                &source_workload,
                tunnel,
            )
            .await;
        }
        Route::Unreachable { reason } => refuse(
            &proxy,
            source,
            &source_workload,
            dst,
            "no_route",
            &reason,
            &client,
        ),
        Route::Refused(denial) => refuse(
            &proxy,
            source,
            &source_workload,
            dst,
            denial.label(),
            &denial.to_string(),
            &client,
        ),
    }
}

/// Records a refused outbound connection and resets the client.
fn refuse(
    proxy: &Proxy,
    source: Peer,
    source_workload: &Arc<Workload>,
    dst: SocketAddr,
    label: &'static str,
    reason: &str,
    client: &TcpStream,
) {
    let (destination, destination_workload) = destination(proxy, dst);
    let meta = ConnectionMeta {
        direction: Direction::Outbound,
        transport: Transport::Tcp,
        source,
        destination,
        waypoint: None,
        known: Known {
            source: Some(source_workload.clone()),
            destination: destination_workload,
            service: None,
        },
    };
    proxy.connections.deny(meta, label, reason);
    socket::reset_on_close(client);
}

async fn tunnel_out(
    proxy: &Proxy,
    pod: &Pod,
    mut client: TcpStream,
    client_addr: std::net::SocketAddr,
    source: Peer,
    source_workload: &Arc<Workload>,
    tunnel: Tunnel,
) {
    let meta = ConnectionMeta {
        direction: Direction::Outbound,
        transport: Transport::Hbone,
        source,
        destination: Peer {
            address: tunnel.authority.to_string(),
            workload: tunnel
                .workload
                .as_ref()
                .map(|w| format!("{}/{}", w.namespace, w.name))
                .or_else(|| {
                    tunnel
                        .service
                        .as_ref()
                        .map(|s| format!("{}/{}", s.namespace, s.name))
                }),
            identity: Some(tunnel.identity.to_string()),
        },
        waypoint: tunnel.waypoint.clone(),
        known: Known {
            source: Some(source_workload.clone()),
            destination: tunnel.workload.clone(),
            service: tunnel.service.clone(),
        },
    };
    let span = match &proxy.tracing {
        Some(tracing) => tracing.outbound(&meta),
        None => ConnectionSpan::none(),
    };
    // Boxed, as `connect_from` is: set-up state must not stay in the task
    // for the life of the copy.
    let cert = match Box::pin(proxy.certs.get(&pod.identity)).await {
        Ok(cert) => cert,
        Err(e) => {
            let reason = e.to_string();
            span.refused("no_certificate", &reason, true);
            proxy.connections.deny(meta, "no_certificate", &reason);
            socket::reset_on_close(&client);
            return;
        }
    };
    let target = TunnelTarget {
        hbone_addr: tunnel.hbone_addr,
        expected_identity: tunnel.identity.clone(),
        authority: tunnel.authority,
        client_ip: Some(client_addr.ip()),
        traceparent: span.traceparent(),
        baggage: None,
    };
    let dialer = PodDialer { proxy, pod };
    let (stream, latency) = match Box::pin(proxy.pool.connect_timed(&cert, &target, &dialer)).await
    {
        Ok(connected) => connected,
        Err(e) => {
            if let Some(load) = &tunnel.load
                && !e.is_refusal()
            {
                load.failed();
            }
            let label = if e.is_refusal() {
                "refused_by_peer"
            } else {
                "tunnel_failed"
            };
            let reason = e.to_string();
            span.refused(label, &reason, !e.is_refusal());
            proxy.connections.deny(meta, label, &reason);
            socket::reset_on_close(&client);
            return;
        }
    };
    if let Some(load) = &tunnel.load {
        load.connected(latency);
    }
    let guard = proxy.connections.open(meta);
    let copied = copy_bidirectional(&mut client, stream, &guard.counters).await;
    if let Err(e) = &copied {
        debug!(error = %e, "outbound tunnel ended with an error");
        socket::reset_on_close(&client);
    }
    span.closed(&guard.counters, copied.err().as_ref());
    drop(tunnel.load);
}

/// The destination of a connection not tunnelled: what the model knows of
/// the workload at `dst`.
fn destination(proxy: &Proxy, dst: std::net::SocketAddr) -> (Peer, Option<Arc<Workload>>) {
    let workload = proxy.store.workload_by_ip(dst.ip());
    let peer = Peer {
        address: dst.to_string(),
        workload: workload
            .as_ref()
            .map(|w| format!("{}/{}", w.namespace, w.name)),
        identity: workload
            .as_ref()
            .and_then(|w| workload_identity(w).ok())
            .map(|i| i.to_string()),
    };
    (peer, workload)
}
