//! Inbound plaintext (15006): a connection to a pod that did not come through
//! a tunnel — from outside the mesh, or from a pod not enrolled.
//!
//! Under STRICT mTLS it is refused (reset). Under PERMISSIVE it is authorized
//! by what can be known without a certificate — source IP, and the namespace
//! of the workload owning that IP — and forwarded from the client's own IP.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;
use weft_api::admin::{Direction, Peer, Transport};
use weft_api::authz::{ConnectionAttrs, evaluate_l4};
use weft_hbone::ByteCounters;
use weft_mesh::{Denial, Path, admit_plaintext, check_destination};

use super::inbound::transparent_source;
use super::{Captured, Pod, Proxy};
use crate::connections::{ConnectionMeta, Known};
use crate::socket::{self, ConnectOptions};

pub async fn handle(proxy: Arc<Proxy>, pod: Arc<Pod>, captured: Captured) {
    let Captured {
        mut client,
        client_addr,
        dst,
    } = captured;
    let known = proxy.store.workload(&pod.uid);
    let workload = known.clone().unwrap_or_else(|| proxy.workload_of(&pod));
    let source_workload = proxy.store.workload_by_ip(client_addr.ip());
    let meta = ConnectionMeta {
        direction: Direction::Inbound,
        transport: Transport::Tcp,
        source: Peer {
            address: client_addr.to_string(),
            workload: source_workload
                .as_ref()
                .map(|w| format!("{}/{}", w.namespace, w.name)),
            identity: None,
        },
        destination: Peer {
            address: dst.to_string(),
            workload: Some(pod.workload_name()),
            identity: Some(pod.identity.to_string()),
        },
        waypoint: None,
        known: Known {
            source: source_workload.clone(),
            destination: Some(workload.clone()),
            service: None,
        },
    };
    // Before policy: this pod's address and not ztunnel's own listener, a
    // pod whose config is known, not STRICT, and not bound to a waypoint
    // (plaintext cannot be sent through it: docs/design.md §7).
    let admitted =
        check_destination(Path::Plaintext, dst, &pod.addresses).and_then(|()| match &known {
            None => Err(Denial::NoConfig {
                workload: pod.workload_name(),
            }),
            Some(w) => admit_plaintext(w),
        });
    if let Err(denial) = admitted {
        proxy
            .connections
            .deny(meta, denial.label(), &denial.to_string());
        socket::reset_on_close(&client);
        return;
    }
    let attrs = ConnectionAttrs {
        source_principal: None,
        source_namespace: source_workload.as_ref().map(|w| w.namespace.clone()),
        source_ip: client_addr.ip(),
        destination_ip: dst.ip(),
        destination_port: dst.port(),
    };
    let policies = proxy.store.policies_for(&workload);
    let decision = evaluate_l4(policies.iter().map(|p| p.as_ref()), &attrs);
    if !decision.allowed {
        proxy
            .connections
            .deny(meta, "policy", &decision.reason.to_string());
        socket::reset_on_close(&client);
        return;
    }
    let options = ConnectOptions {
        transparent_source: transparent_source(client_addr.ip(), &pod),
    };
    let mut app = match proxy.connect_from(&pod, dst, options).await {
        Ok(app) => app,
        Err(e) => {
            debug!(%dst, error = %e, "application refused the connection");
            socket::reset_on_close(&client);
            return;
        }
    };
    let guard = proxy.connections.open(meta);
    copy_plain(&mut client, &mut app, &guard.counters).await;
}

/// Copies between two TCP sockets, both directions in one task, with
/// half-close carried across and live byte counts (`/connections`).
pub async fn copy_plain(a: &mut TcpStream, b: &mut TcpStream, counters: &ByteCounters) {
    let (mut a_rd, mut a_wr) = a.split();
    let (mut b_rd, mut b_wr) = b.split();
    let result = tokio::try_join!(
        pipe(&mut a_rd, &mut b_wr, &counters.sent),
        pipe(&mut b_rd, &mut a_wr, &counters.received),
    );
    if let Err(e) = result {
        debug!(error = %e, "plain connection ended with an error");
        socket::reset_on_close(a);
        socket::reset_on_close(b);
    }
}

async fn pipe<R, W>(
    from: &mut R,
    to: &mut W,
    counter: &std::sync::atomic::AtomicU64,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        to.write_all(&buf[..n]).await?;
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}
