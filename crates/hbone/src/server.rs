//! The HBONE server: accepts mTLS connections, verifies the client's SPIFFE
//! identity, and hands each CONNECT to the caller's handler, which accepts it
//! (200 and a byte stream) or refuses it (a status code).
//!
//! Requests that are not a CONNECT to an `IP:port` get 400 on their own
//! stream; other streams of the same connection carry on.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::error::HboneError;
use crate::headers::{AuthorityError, parse_authority, parse_forwarded_for};
use crate::identity::SpiffeId;
use crate::keepalive;
use crate::read_buffer::ReadBuffer;
use crate::settings::ServerSettings;
use crate::stream::H2Stream;
use crate::tls;

/// Supplies the server's TLS config per connection, so a certificate that
/// rotates (or has not arrived yet) is handled by the caller.
pub trait ServerTls: Send + Sync + 'static {
    fn server_config(
        &self,
    ) -> impl Future<Output = Result<Arc<rustls::ServerConfig>, HboneError>> + Send;
}

impl ServerTls for Arc<rustls::ServerConfig> {
    async fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, HboneError> {
        Ok(self.clone())
    }
}

/// Decides what to do with each tunnel.
pub trait TunnelHandler: Send + Sync + 'static {
    fn handle(&self, tunnel: InboundTunnel) -> impl Future<Output = ()> + Send;
}

/// A CONNECT request that passed validation, waiting for an answer.
pub struct InboundTunnel {
    /// The client's verified SPIFFE ID (from its certificate, never headers).
    pub peer_identity: SpiffeId,
    /// The TCP address of the client (a node's ztunnel or a waypoint).
    pub peer_addr: SocketAddr,
    /// Where the client connected to (this server's listening address).
    pub local_addr: SocketAddr,
    /// The original destination the tunnel is for.
    pub authority: SocketAddr,
    pub headers: HeaderMap,
    respond: SendResponse<Bytes>,
    body: RecvStream,
    /// The connection's stream accounting; counts this stream as open
    /// until dropped.
    health: StreamGuard,
}

impl std::fmt::Debug for InboundTunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundTunnel")
            .field("peer_identity", &self.peer_identity.to_string())
            .field("peer_addr", &self.peer_addr)
            .field("authority", &self.authority)
            .finish_non_exhaustive()
    }
}

impl InboundTunnel {
    /// The original client IP from `forwarded: for=`. Informational: the
    /// client's identity is `peer_identity`.
    pub fn client_ip(&self) -> Option<IpAddr> {
        self.headers
            .get("forwarded")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_forwarded_for)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Answers 200 and returns the tunnel's byte stream. A client that
    /// reset the stream before it was answered is counted against its
    /// connection (see [`ConnectionHealth`]).
    pub fn accept(mut self) -> Result<H2Stream, HboneError> {
        match self.respond.send_response(Response::new(()), false) {
            Ok(send) => Ok(H2Stream::new(send, self.body, None)),
            Err(e) => {
                self.health.early_reset();
                Err(e.into())
            }
        }
    }

    /// Answers `status` and ends the stream.
    pub fn refuse(mut self, status: StatusCode) {
        let mut response = Response::new(());
        *response.status_mut() = status;
        if self.respond.send_response(response, true).is_err() {
            debug!("client went away before the refusal");
        }
    }
}

/// The server. Cloning shares the handler and TLS source.
pub struct HboneServer<T, H> {
    tls: Arc<T>,
    handler: Arc<H>,
    settings: Arc<ServerSettings>,
}

impl<T, H> Clone for HboneServer<T, H> {
    fn clone(&self) -> Self {
        HboneServer {
            tls: self.tls.clone(),
            handler: self.handler.clone(),
            settings: self.settings.clone(),
        }
    }
}

impl<T: ServerTls, H: TunnelHandler> HboneServer<T, H> {
    pub fn new(tls: T, handler: H, settings: ServerSettings) -> Self {
        HboneServer {
            tls: Arc::new(tls),
            handler: Arc::new(handler),
            settings: Arc::new(settings),
        }
    }

    /// Accepts connections until `shutdown` fires, then tells every client
    /// to go away (GOAWAY) and waits for the tunnels in flight to finish.
    /// Callers bound that wait with their drain deadline.
    pub async fn serve(&self, listener: TcpListener, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((tcp, _)) => {
                    let server = self.clone();
                    let shutdown = shutdown.clone();
                    tracker.spawn(async move {
                        if let Err(e) = server.serve_connection(tcp, shutdown).await {
                            debug!(error = %e, "HBONE connection failed");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly
                    // rather than spinning.
                    warn!(error = %e, "HBONE accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
        drop(listener);
        tracker.close();
        tracker.wait().await;
    }

    /// Serves one accepted TCP connection until the client closes it, or
    /// `shutdown` fires and its streams have finished.
    pub async fn serve_connection(
        &self,
        tcp: TcpStream,
        shutdown: CancellationToken,
    ) -> Result<(), HboneError> {
        let peer_addr = tcp.peer_addr()?;
        let settings = &self.settings;
        // Counted from accept until the peer's certificate is verified;
        // over the bound, the connection is closed before any TLS work.
        let admitted = settings
            .handshakes
            .enter(peer_addr.ip())
            .map_err(|refusal| {
                HboneError::Io(std::io::Error::other(format!("{peer_addr}: {refusal}")))
            })?;
        tcp.set_nodelay(true)?;
        let local_addr = tcp.local_addr()?;
        // Waiting for our own certificate is not the peer's time.
        let config = self.tls.server_config().await?;
        let handshake = async {
            let mut tls = TlsAcceptor::from(config)
                .accept(ReadBuffer::new(tcp))
                .await
                .map_err(|e| HboneError::Tls {
                    addr: peer_addr,
                    source: tls::explain_handshake_error(e),
                })?;
            // The verifier already refused anything without a valid SVID.
            let peer_identity = tls::peer_identity(tls.get_ref().1)
                .ok_or_else(|| HboneError::NoCertificate(peer_addr.to_string()))?;
            // Authenticated: now it is worth the buffers.
            let (io, session) = tls.get_mut();
            io.grow(settings.h2.socket_read_buffer);
            session.set_buffer_limit(Some(settings.h2.tls_write_buffer));
            let connection = server_builder(settings)
                .handshake::<_, Bytes>(tls)
                .await
                .map_err(|source| HboneError::Handshake {
                    addr: peer_addr,
                    source,
                })?;
            Ok::<_, HboneError>((peer_identity, connection))
        };
        let (peer_identity, mut connection) = timeout(settings.handshake_timeout, handshake)
            .await
            .map_err(|_| HboneError::Timeout {
                what: "HBONE handshake",
                after: settings.handshake_timeout,
            })??;
        drop(admitted);
        debug!(peer = %peer_identity, %peer_addr, "HBONE connection accepted");

        let health = Arc::new(ConnectionHealth::default());
        let mut draining = false;
        // A client that stops answering PINGs (gone, or holding the
        // connection without reading it) is dropped, its tunnels with it.
        let ping_pong = connection.ping_pong();
        let keepalive = async {
            match ping_pong {
                Some(ping_pong) => keepalive::until_unanswered(ping_pong, &settings.h2).await,
                None => std::future::pending().await,
            }
        };
        let mut keepalive = std::pin::pin!(keepalive);
        loop {
            let idle = health.open() == 0 && !draining;
            let next = tokio::select! {
                next = connection.accept() => next,
                _ = shutdown.cancelled(), if !draining => {
                    draining = true;
                    connection.graceful_shutdown();
                    continue;
                }
                _ = health.changed.notified() => {
                    if !draining && health.early_resets() > settings.max_early_resets {
                        warn!(
                            peer = %peer_identity,
                            %peer_addr,
                            resets = health.early_resets(),
                            "client resets its tunnels before they open; closing the connection"
                        );
                        draining = true;
                        connection.graceful_shutdown();
                    }
                    continue;
                }
                end = &mut keepalive => {
                    debug!(peer = %peer_identity, %peer_addr, ?end, "HBONE client did not answer keepalive PING; closing");
                    return Ok(());
                }
                _ = tokio::time::sleep(settings.idle_timeout), if idle => {
                    debug!(peer = %peer_identity, %peer_addr, "idle HBONE connection closed");
                    draining = true;
                    connection.graceful_shutdown();
                    continue;
                }
            };
            let Some(request) = next else { break };
            let (request, respond) = match request {
                Ok(r) => r,
                Err(e) if e.is_go_away() || e.is_io() => return Err(e.into()),
                Err(e) => {
                    debug!(error = %e, "HBONE stream error");
                    continue;
                }
            };
            match validate(&request) {
                Ok(authority) => {
                    let (parts, body) = request.into_parts();
                    let tunnel = InboundTunnel {
                        peer_identity: peer_identity.clone(),
                        peer_addr,
                        local_addr,
                        authority,
                        headers: parts.headers,
                        respond,
                        body,
                        health: StreamGuard::new(health.clone()),
                    };
                    let handler = self.handler.clone();
                    tokio::spawn(async move { handler.handle(tunnel).await });
                }
                Err(reason) => {
                    debug!(peer = %peer_identity, %reason, "malformed HBONE request");
                    bad_request(respond, &reason);
                }
            }
        }
        Ok(())
    }
}

/// What one client connection does with its streams: how many are open
/// (an idle connection is closed after `ServerSettings::idle_timeout`) and
/// how many the client reset before they were answered. A paced "rapid
/// reset" — CONNECT, wait until the server has dialled the application,
/// RST — escapes h2's own reset limit, which counts only streams reset
/// before the server accepted them; past `max_early_resets` the connection
/// gets GOAWAY, so each batch of abuse costs the client a new (bounded)
/// handshake.
#[derive(Debug, Default)]
pub struct ConnectionHealth {
    open: AtomicUsize,
    early_resets: AtomicU32,
    changed: Notify,
}

impl ConnectionHealth {
    fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn early_resets(&self) -> u32 {
        self.early_resets.load(Ordering::Relaxed)
    }
}

/// Counts one stream as open for its connection until dropped.
#[derive(Debug)]
struct StreamGuard(Arc<ConnectionHealth>);

impl StreamGuard {
    fn new(health: Arc<ConnectionHealth>) -> Self {
        health.open.fetch_add(1, Ordering::Relaxed);
        StreamGuard(health)
    }

    fn early_reset(&self) {
        self.0.early_resets.fetch_add(1, Ordering::Relaxed);
        self.0.changed.notify_one();
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        self.0.changed.notify_one();
    }
}

fn server_builder(settings: &ServerSettings) -> h2::server::Builder {
    let mut builder = h2::server::Builder::new();
    builder
        .initial_window_size(settings.h2.stream_window)
        .initial_connection_window_size(settings.h2.connection_window)
        .max_frame_size(settings.h2.max_frame_size)
        .max_send_buffer_size(settings.h2.max_send_buffer)
        .max_concurrent_streams(settings.max_concurrent_streams)
        .max_header_list_size(settings.max_header_list_size);
    builder
}

/// Why a request is not a valid HBONE CONNECT.
#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error("method {0} is not CONNECT")]
    Method(Method),
    #[error(transparent)]
    Authority(#[from] AuthorityError),
}

fn validate(request: &Request<RecvStream>) -> Result<SocketAddr, RequestError> {
    if request.method() != Method::CONNECT {
        return Err(RequestError::Method(request.method().clone()));
    }
    let authority = request
        .uri()
        .authority()
        .map(|a| a.as_str())
        .unwrap_or_default();
    Ok(parse_authority(authority)?)
}

fn bad_request(mut respond: SendResponse<Bytes>, reason: &RequestError) {
    let mut response = Response::new(());
    *response.status_mut() = StatusCode::BAD_REQUEST;
    response
        .headers_mut()
        .insert("content-type", http::HeaderValue::from_static("text/plain"));
    if let Ok(mut body) = respond.send_response(response, false) {
        let _ = body.send_data(Bytes::from(format!("{reason}\n")), true);
    }
}
