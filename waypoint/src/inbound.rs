//! Inbound HBONE (15008): one tunnel from a client's ztunnel, from CONNECT
//! to close.
//!
//! The tunnel's `:authority` must be a destination bound to this waypoint
//! ([`crate::destination`]). A port declared `tcp` is authorized at L4 before
//! the tunnel is accepted (refused: 401, as ztunnel does); otherwise the
//! tunnel is accepted and its first bytes decide between HTTP — served by
//! hyper, one [`crate::request`] per request — and TCP ([`crate::tcp`]).
//! Malformed HTTP is answered 400 on its own tunnel; other tunnels of the
//! same HBONE connection carry on.

use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tracing::debug;
use weft_api::admin::Peer;
use weft_hbone::{InboundTunnel, TunnelHandler};

use crate::destination::{self, Destination};
use crate::observe::Mode;
use crate::policy::Client;
use crate::proxy::Proxy;
use crate::request::{self, TunnelContext};
use crate::sniff::{self, Counters, Declared, Protocol, Rewind};
use crate::tcp;

/// Hands each tunnel of the HBONE server to [`handle`].
pub struct InboundHandler {
    pub proxy: Arc<Proxy>,
}

impl TunnelHandler for InboundHandler {
    async fn handle(&self, tunnel: InboundTunnel) {
        let _tracked = self.proxy.tasks.token();
        handle(self.proxy.clone(), tunnel).await;
    }
}

/// The destination as the admin API shows it before an endpoint is chosen.
pub fn destination_peer(dest: &Destination) -> Peer {
    Peer {
        address: dest.authority().to_string(),
        workload: Some(dest.name()),
        identity: None,
    }
}

async fn handle(proxy: Arc<Proxy>, tunnel: InboundTunnel) {
    let store = &proxy.config.store;
    // The same rule as ztunnel's inbound: `forwarded: for=` only from a
    // waypoint, so a client cannot choose the address `ipBlocks` sees.
    let peer_ip = tunnel.peer_addr.ip();
    let peer_workload = store.workload_by_ip(peer_ip);
    let client_ip = weft_mesh::client_address(
        peer_ip,
        &tunnel.peer_identity.to_string(),
        peer_workload.as_deref(),
        tunnel.client_ip(),
    );
    // Usually the peer is the client: one lookup serves both.
    let client_workload = if client_ip == peer_ip {
        peer_workload
    } else {
        store.workload_by_ip(client_ip)
    };
    let client = Client::new(tunnel.peer_identity.clone(), client_ip, client_workload);
    let authority = tunnel.authority;
    let connect_trace = crate::otel::connect_context(&tunnel.headers);
    let dest = match destination::resolve(store, &proxy.me, authority) {
        Ok(dest) => dest,
        Err(e) => {
            let peer = Peer {
                address: authority.to_string(),
                ..Peer::default()
            };
            proxy
                .observer
                .deny_tunnel(&client, peer, "no_destination", &e.to_string());
            tunnel.refuse(e.status());
            return;
        }
    };
    let declared = dest.declared();
    if declared == Declared::Tcp {
        // Known to be TCP: decide and connect before accepting, so a
        // refusal is a refused tunnel, as at ztunnel.
        let upstream = match tcp::authorize(&proxy, &client, &dest) {
            Ok(endpoint) => tcp::connect(&proxy, endpoint).await,
            Err(refusal) => Err(refusal),
        };
        let (endpoint, upstream) = match upstream {
            Ok(connected) => connected,
            Err(refusal) => {
                proxy.observer.deny_tunnel(
                    &client,
                    destination_peer(&dest),
                    refusal.label(),
                    &refusal.reason,
                );
                tunnel.refuse(refusal.status);
                return;
            }
        };
        let Ok(stream) = tunnel.accept() else {
            return;
        };
        let counters = Arc::new(Counters::default());
        let io = Rewind::new(bytes::Bytes::new(), stream, counters.clone());
        tcp::copy(&proxy, &client, &endpoint, io, upstream, counters).await;
        return;
    }

    let Ok(mut stream) = tunnel.accept() else {
        debug!("client went away before the tunnel opened");
        return;
    };
    // A port declared HTTP only needs to say which version: wait for its
    // first bytes as an HTTP server would.
    let wait = if declared == Declared::Http {
        proxy.settings.header_read_timeout
    } else {
        proxy.settings.sniff_timeout
    };
    let sniffed = sniff::sniff(&mut stream, wait).await;
    let (protocol, prefix) = match sniffed {
        Ok(found) => found,
        Err(e) => {
            debug!(error = %e, "tunnel failed before its first bytes");
            return;
        }
    };
    let protocol = match (declared, protocol) {
        // Declared HTTP is served as HTTP even if it does not look like it:
        // hyper answers garbage with 400.
        (Declared::Http, Protocol::Tcp) => Protocol::Http1,
        (_, p) => p,
    };
    let counters = Arc::new(Counters::default());
    let io = Rewind::new(prefix, stream, counters.clone());
    if protocol == Protocol::Tcp {
        let upstream = match tcp::authorize(&proxy, &client, &dest) {
            Ok(endpoint) => tcp::connect(&proxy, endpoint).await,
            Err(refusal) => Err(refusal),
        };
        match upstream {
            Ok((endpoint, upstream)) => {
                tcp::copy(&proxy, &client, &endpoint, io, upstream, counters).await;
            }
            Err(refusal) => {
                proxy.observer.deny_tunnel(
                    &client,
                    destination_peer(&dest),
                    refusal.label(),
                    &refusal.reason,
                );
                let mut io = io;
                io.inner_mut().reset(h2::Reason::REFUSED_STREAM);
            }
        }
        return;
    }
    let guard =
        proxy
            .observer
            .open_tunnel(&client, destination_peer(&dest), None, Mode::Http, counters);
    let context = Arc::new(TunnelContext {
        id: guard.id,
        connection: client.connection(authority),
        client,
        authority,
        metrics: Default::default(),
        connect_trace,
    });
    serve_http(proxy, context, io, protocol == Protocol::Http2).await;
}

/// Serves HTTP on one tunnel until the client closes it, or a drain asks the
/// connection to finish its requests and close.
async fn serve_http(
    proxy: Arc<Proxy>,
    context: Arc<TunnelContext>,
    io: Rewind<weft_hbone::H2Stream>,
    http2: bool,
) {
    let io = TokioIo::new(io);
    let service = {
        let proxy = proxy.clone();
        service_fn(move |req| {
            let (proxy, context) = (proxy.clone(), context.clone());
            async move { Ok::<_, std::convert::Infallible>(request::handle(proxy, context, req).await) }
        })
    };
    let drain = proxy.drain.clone();
    if http2 {
        let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(1024 * 1024)
            .initial_connection_window_size(4 * 1024 * 1024)
            .serve_connection(io, service);
        let mut connection = std::pin::pin!(connection);
        tokio::select! {
            result = connection.as_mut() => log_end(result),
            _ = drain.cancelled() => {
                connection.as_mut().graceful_shutdown();
                log_end(connection.await);
            }
        }
    } else {
        // With upgrades: a WebSocket (or other `Upgrade`) request that the
        // endpoint accepts with 101 turns the connection into a stream.
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(proxy.settings.header_read_timeout)
            .serve_connection(io, service)
            .with_upgrades();
        let mut connection = std::pin::pin!(connection);
        tokio::select! {
            result = connection.as_mut() => log_end(result),
            _ = drain.cancelled() => {
                connection.as_mut().graceful_shutdown();
                log_end(connection.await);
            }
        }
    }
}

fn log_end(result: Result<(), hyper::Error>) {
    if let Err(e) = result {
        debug!(error = %e, "HTTP connection in tunnel ended");
    }
}
