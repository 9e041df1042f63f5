//! The HBONE client: a pool of mTLS HTTP/2 connections, each carrying many
//! CONNECT tunnels.
//!
//! Pool key (docs/design.md §4): source identity, destination `IP:port`, expected
//! destination identity. A connection carries at most
//! `max_streams_per_connection` tunnels; past that a new connection is opened
//! beside it. A connection with no tunnels for `idle_timeout` is closed.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use parking_lot::{Mutex, RwLock};
use tokio::io::BufReader;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tracing::{debug, warn};

use crate::certs::{TrustBundle, WorkloadCertificate};
use crate::error::HboneError;
use crate::headers::forwarded_for;
use crate::identity::SpiffeId;
use crate::keepalive;
use crate::settings::{H2Settings, PoolSettings};
use crate::stream::H2Stream;
use crate::tls;

/// Opens the TCP connection under a tunnel. ztunnel opens it inside the
/// source pod's network namespace with its socket mark; tests and the bench
/// use [`DirectDialer`].
pub trait Dialer: Send + Sync {
    fn dial(
        &self,
        addr: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send + '_>>;
}

/// Connects from the current network namespace.
#[derive(Debug, Default, Clone, Copy)]
pub struct DirectDialer;

impl Dialer for DirectDialer {
    fn dial(
        &self,
        addr: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send + '_>> {
        Box::pin(async move {
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            Ok(tcp)
        })
    }
}

/// One tunnel to open.
#[derive(Debug, Clone)]
pub struct TunnelTarget {
    /// Where the HBONE server listens: `<pod or waypoint IP>:15008`.
    pub hbone_addr: SocketAddr,
    /// The identity the server must prove.
    pub expected_identity: SpiffeId,
    /// `:authority`: the original destination `IP:port`.
    pub authority: SocketAddr,
    /// The original client IP, sent as `forwarded: for=`.
    pub client_ip: Option<IpAddr>,
    /// W3C trace context to pass on.
    pub traceparent: Option<String>,
    pub baggage: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    source: SpiffeId,
    hbone_addr: SocketAddr,
    expected: SpiffeId,
}

/// What the pool holds, for `/connections` and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PooledConnectionInfo {
    pub id: u64,
    pub source: SpiffeId,
    pub hbone_addr: SocketAddr,
    pub destination_identity: SpiffeId,
    pub active_streams: usize,
    pub age: Duration,
}

/// The pool. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct TunnelPool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    settings: PoolSettings,
    bundle: RwLock<Arc<TrustBundle>>,
    entries: Mutex<HashMap<PoolKey, Arc<Entry>>>,
    next_id: AtomicU64,
    connections_opened: AtomicU64,
}

#[derive(Default)]
struct Entry {
    conns: Mutex<Vec<Arc<PooledConnection>>>,
    // Held while a new connection is set up, so a burst of tunnels to a new
    // destination opens one connection, not one each.
    establishing: tokio::sync::Mutex<()>,
}

struct PooledConnection {
    id: u64,
    send: h2::client::SendRequest<Bytes>,
    active: AtomicUsize,
    closed: AtomicBool,
    idle_since: Mutex<Instant>,
    opened: Instant,
}

/// Holds one stream slot of a pooled connection.
pub(crate) struct StreamGuard {
    conn: Arc<PooledConnection>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.conn.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.conn.idle_since.lock() = Instant::now();
        }
    }
}

impl TunnelPool {
    pub fn new(settings: PoolSettings, bundle: TrustBundle) -> Self {
        TunnelPool {
            inner: Arc::new(PoolInner {
                settings,
                bundle: RwLock::new(Arc::new(bundle)),
                entries: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                connections_opened: AtomicU64::new(0),
            }),
        }
    }

    /// Replaces the trust bundle used for new connections (root rotation).
    pub fn set_trust_bundle(&self, bundle: TrustBundle) {
        *self.inner.bundle.write() = Arc::new(bundle);
    }

    /// Opens a tunnel from `source` to `target`, reusing a pooled connection
    /// when one has room.
    pub async fn connect(
        &self,
        source: &Arc<WorkloadCertificate>,
        target: &TunnelTarget,
        dialer: &dyn Dialer,
    ) -> Result<H2Stream, HboneError> {
        self.connect_timed(source, target, dialer)
            .await
            .map(|(stream, _)| stream)
    }

    /// As [`TunnelPool::connect`], also returning how long the CONNECT
    /// exchange itself took (the peer's answer, which includes its connect to
    /// the destination) — not the time to set up a new pooled connection,
    /// which says nothing about the destination.
    pub async fn connect_timed(
        &self,
        source: &Arc<WorkloadCertificate>,
        target: &TunnelTarget,
        dialer: &dyn Dialer,
    ) -> Result<(H2Stream, Duration), HboneError> {
        let key = PoolKey {
            source: source.identity().clone(),
            hbone_addr: target.hbone_addr,
            expected: target.expected_identity.clone(),
        };
        let entry = self.entry(&key);
        let settings = &self.inner.settings;
        // A pooled connection the server is closing (GOAWAY during its
        // restart, or an idle close racing us) refuses new streams; such a
        // tunnel was never seen by the server, so it is safe to try once
        // more on a fresh connection.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let guard = self.guard_for(source, &key, &entry, dialer).await?;
            let conn = guard.conn.clone();
            let started = Instant::now();
            let result = timeout(settings.response_timeout, send_connect(guard, target))
                .await
                .map_err(|_| HboneError::Timeout {
                    what: "CONNECT response",
                    after: settings.response_timeout,
                })?;
            match result {
                Err(HboneError::Stream(e)) if attempt < 3 && never_reached_server(&e) => {
                    debug!(conn = conn.id, error = %e, "pooled connection is closing; retrying on a new one");
                    conn.closed.store(true, Ordering::Release);
                }
                other => return other.map(|stream| (stream, started.elapsed())),
            }
        }
    }

    /// A stream slot on a pooled connection with room, or on a new one.
    async fn guard_for(
        &self,
        source: &Arc<WorkloadCertificate>,
        key: &PoolKey,
        entry: &Arc<Entry>,
        dialer: &dyn Dialer,
    ) -> Result<StreamGuard, HboneError> {
        if let Some(guard) = self.checkout(entry) {
            return Ok(guard);
        }
        let _establishing = entry.establishing.lock().await;
        if let Some(guard) = self.checkout(entry) {
            return Ok(guard);
        }
        let conn = self.open(source, key, dialer).await?;
        conn.active.fetch_add(1, Ordering::AcqRel);
        entry.conns.lock().push(conn.clone());
        self.spawn_idle_reaper(key.clone(), entry.clone(), conn.clone());
        Ok(StreamGuard { conn })
    }

    /// Connections currently pooled.
    pub fn connections(&self) -> Vec<PooledConnectionInfo> {
        let entries = self.inner.entries.lock();
        let mut out = Vec::new();
        for (key, entry) in entries.iter() {
            for conn in entry.conns.lock().iter() {
                out.push(PooledConnectionInfo {
                    id: conn.id,
                    source: key.source.clone(),
                    hbone_addr: key.hbone_addr,
                    destination_identity: key.expected.clone(),
                    active_streams: conn.active.load(Ordering::Acquire),
                    age: conn.opened.elapsed(),
                });
            }
        }
        out.sort_by_key(|c| c.id);
        out
    }

    /// How many HTTP/2 connections this pool has opened in its life.
    pub fn connections_opened(&self) -> u64 {
        self.inner.connections_opened.load(Ordering::Relaxed)
    }

    fn entry(&self, key: &PoolKey) -> Arc<Entry> {
        self.inner
            .entries
            .lock()
            .entry(key.clone())
            .or_default()
            .clone()
    }

    fn checkout(&self, entry: &Entry) -> Option<StreamGuard> {
        let cap = self.inner.settings.max_streams_per_connection;
        let mut conns = entry.conns.lock();
        conns.retain(|c| !c.closed.load(Ordering::Acquire));
        // Fill the oldest connection first, so that a connection past its
        // peak empties out and can idle away.
        let conn = conns
            .iter()
            .find(|c| c.active.load(Ordering::Acquire) < cap)?
            .clone();
        conn.active.fetch_add(1, Ordering::AcqRel);
        Some(StreamGuard { conn })
    }

    async fn open(
        &self,
        source: &WorkloadCertificate,
        key: &PoolKey,
        dialer: &dyn Dialer,
    ) -> Result<Arc<PooledConnection>, HboneError> {
        let settings = &self.inner.settings;
        let bundle = self.inner.bundle.read().clone();
        let config =
            tls::client_config_with(settings.crypto.clone(), source, &bundle, &key.expected)?;
        let addr = key.hbone_addr;
        let (send, connection) = timeout(settings.connect_timeout, async {
            let tcp = dialer
                .dial(addr)
                .await
                .map_err(|source| HboneError::Connect { addr, source })?;
            let server_name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
            let tcp = BufReader::with_capacity(settings.h2.socket_read_buffer, tcp);
            let mut tls = TlsConnector::from(config)
                .connect(server_name, tcp)
                .await
                .map_err(|e| HboneError::Tls {
                    addr,
                    source: tls::explain_handshake_error(e),
                })?;
            tls.get_mut()
                .1
                .set_buffer_limit(Some(settings.h2.tls_write_buffer));
            if tls.get_ref().1.alpn_protocol() != Some(tls::ALPN_H2) {
                return Err(HboneError::Alpn { addr });
            }
            client_builder(&settings.h2)
                .handshake::<_, Bytes>(tls)
                .await
                .map_err(|source| HboneError::Handshake { addr, source })
        })
        .await
        .map_err(|_| HboneError::Timeout {
            what: "HBONE connection setup",
            after: settings.connect_timeout,
        })??;

        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        self.inner
            .connections_opened
            .fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(PooledConnection {
            id,
            send,
            active: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            idle_since: Mutex::new(Instant::now()),
            opened: Instant::now(),
        });
        let watched = conn.clone();
        let keepalive = settings.h2.clone();
        tokio::spawn(async move {
            if let Err(e) = drive_connection(connection, &keepalive).await {
                debug!(conn = id, %addr, error = %e, "HBONE connection ended");
            }
            watched.closed.store(true, Ordering::Release);
        });
        debug!(conn = id, %addr, source = %key.source, peer = %key.expected, "HBONE connection opened");
        Ok(conn)
    }

    /// Closes `conn` once it has had no streams for the idle timeout.
    fn spawn_idle_reaper(&self, key: PoolKey, entry: Arc<Entry>, conn: Arc<PooledConnection>) {
        let pool = Arc::downgrade(&self.inner);
        let idle = self.inner.settings.idle_timeout;
        tokio::spawn(async move {
            let mut wait = idle;
            loop {
                tokio::time::sleep(wait).await;
                if conn.closed.load(Ordering::Acquire) {
                    break;
                }
                // Under the entry lock, so no checkout races the decision.
                let mut conns = entry.conns.lock();
                let idle_for = conn.idle_since.lock().elapsed();
                if conn.active.load(Ordering::Acquire) == 0 && idle_for >= idle {
                    conns.retain(|c| c.id != conn.id);
                    conn.closed.store(true, Ordering::Release);
                    break;
                }
                wait = idle.saturating_sub(idle_for).max(idle / 4);
            }
            let empty = entry.conns.lock().is_empty();
            if let (true, Some(pool)) = (empty, pool.upgrade()) {
                let mut entries = pool.entries.lock();
                // Only drop the entry if nobody is setting up a connection in it.
                if entry.establishing.try_lock().is_ok() && entry.conns.lock().is_empty() {
                    entries.remove(&key);
                }
            }
            // Dropping the last SendRequest lets the connection task finish:
            // h2 sends GOAWAY and closes the socket.
            debug!(conn = conn.id, "HBONE connection idle, closed");
        });
    }
}

/// Errors that mean the server never processed our stream: the connection
/// was going away or already gone.
fn never_reached_server(e: &h2::Error) -> bool {
    e.is_go_away() || e.is_io() || e.reason() == Some(h2::Reason::REFUSED_STREAM)
}

fn client_builder(h2: &H2Settings) -> h2::client::Builder {
    let mut builder = h2::client::Builder::new();
    builder
        .initial_window_size(h2.stream_window)
        .initial_connection_window_size(h2.connection_window)
        .max_frame_size(h2.max_frame_size)
        .max_send_buffer_size(h2.max_send_buffer)
        .enable_push(false);
    builder
}

/// Runs an HTTP/2 client connection, PINGing it while it is otherwise quiet.
async fn drive_connection<T>(
    mut connection: h2::client::Connection<T, Bytes>,
    settings: &H2Settings,
) -> Result<(), h2::Error>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Some(ping_pong) = connection.ping_pong() else {
        return connection.await;
    };
    tokio::select! {
        result = connection => result,
        end = keepalive::until_unanswered(ping_pong, settings) => match end {
            keepalive::Unanswered::Failed(e) => Err(e),
            keepalive::Unanswered::Timeout => {
                warn!("HBONE peer did not answer keepalive PING; closing");
                Ok(())
            }
        },
    }
}

async fn send_connect(guard: StreamGuard, target: &TunnelTarget) -> Result<H2Stream, HboneError> {
    let mut request = Request::builder()
        .method(Method::CONNECT)
        .uri(target.authority.to_string());
    if let Some(ip) = target.client_ip {
        request = request.header("forwarded", forwarded_for(ip));
    }
    if let Some(tp) = &target.traceparent {
        request = request.header("traceparent", tp);
    }
    if let Some(baggage) = &target.baggage {
        request = request.header("baggage", baggage);
    }
    let request = request
        .body(())
        .map_err(|e| HboneError::Io(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    let mut send = guard.conn.send.clone().ready().await?;
    let (response, stream) = send.send_request(request, false)?;
    let response = response.await?;
    if response.status() != StatusCode::OK {
        return Err(HboneError::Refused(response.status()));
    }
    Ok(H2Stream::new(stream, response.into_body(), Some(guard)))
}
