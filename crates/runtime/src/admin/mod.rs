//! What every proxy's admin side shares (docs/design.md §9; JSON shapes in
//! `weft_api::admin`): the HTTP plumbing ([`http`]), the unix socket and
//! its path rule ([`socket`]), the log filter handle, and the metrics and
//! readiness servers. Each proxy serves its own endpoints on top.

pub mod http;
pub mod probe;
pub mod socket;

use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use ::http::{Request, Response, StatusCode};
use hyper::body::Incoming;
pub use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;
use weft_api::admin::{CertInfo, PooledConnection};
use weft_hbone::TunnelPool;

use crate::certs::CertManager;

/// Reads and changes the log filter at run time.
pub type LogControl = Arc<dyn Fn(Option<&str>) -> Result<String, String> + Send + Sync>;

/// Prometheus text on any path (conventionally `/metrics`).
pub async fn serve_metrics(
    handle: PrometheusHandle,
    listener: TcpListener,
    shutdown: CancellationToken,
) {
    let render = move |_req| {
        let response = metrics_response(&handle);
        async move { response }
    };
    http::serve(listener, render, shutdown).await;
}

/// The process's metrics as Prometheus text: the metrics port's answer, and
/// the admin API's `/metrics` (what `weftctl top` reads through the same
/// path as every other admin read).
pub fn metrics_response(handle: &PrometheusHandle) -> Response<http::Body> {
    http::full(StatusCode::OK, "text/plain; version=0.0.4", handle.render())
}

/// `/healthz/ready` for the kubelet: 200, or 503 with why `check` says the
/// proxy cannot take traffic. On a TCP port, or on a unix socket for an
/// exec probe ([`probe`]).
pub async fn serve_readiness(
    check: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    listener: impl http::Listener,
    shutdown: CancellationToken,
) {
    let check = Arc::new(check);
    let respond = move |_req| {
        let response = http::readiness(check());
        async move { response }
    };
    http::serve(listener, respond, shutdown).await;
}

/// Serves a proxy's admin API until `shutdown`: every endpoint on the unix
/// socket (owner-only, so only the node's operator can change the log
/// level), the read-only ones (`GET`) on TCP.
pub fn spawn_admin<F, Fut>(
    handler: F,
    tcp: TcpListener,
    unix: Option<UnixListener>,
    shutdown: &CancellationToken,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<http::Body>> + Send + 'static,
{
    if let Some(unix) = unix {
        tokio::spawn(http::serve(unix, handler.clone(), shutdown.clone()));
    }
    tokio::spawn(http::serve(tcp, http::read_only(handler), shutdown.clone()));
}

/// `/connections`' `pool`: the HBONE connections a proxy keeps open.
pub fn pooled_connections(pool: &TunnelPool) -> Vec<PooledConnection> {
    pool.connections()
        .into_iter()
        .map(|c| PooledConnection {
            id: c.id,
            source_identity: c.source.to_string(),
            destination_identity: c.destination_identity.to_string(),
            address: c.hbone_addr.to_string(),
            active_streams: c.active_streams,
            age_ms: c.age.as_millis() as u64,
        })
        .collect()
}

/// `/certs`: every certificate a proxy holds or waits for, as of now.
pub fn certificates(certs: &CertManager) -> Vec<CertInfo> {
    let now = SystemTime::now();
    certs
        .status()
        .into_iter()
        .map(|s| http::cert_info(s, now))
        .collect()
}
