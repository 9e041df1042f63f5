//! Accepting connections on :15012: TLS handshakes bounded in time and in
//! number (per source and overall), and a cap on open connections.
//!
//! A client that opens TCP connections and never sends a ClientHello holds
//! a file descriptor per connection for as long as it likes; ~1.1k of them
//! exhausted the controller's descriptors and no proxy could get config or
//! certificates any more. Here the accept loop does the TLS handshake itself,
//! each in its own task under a deadline, and hands tonic only connections
//! whose handshake completed. A connection over a cap is closed at once:
//! waiting would keep its descriptor, which is what the caps protect. Over
//! the global handshake cap it is the oldest handshake that is closed (see
//! [`PendingHandshakes`]).

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::Stream;
use parking_lot::Mutex;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Connected, TcpConnectInfo};

use super::ServerTls;

/// How long a client has to complete its TLS handshake, by default.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Handshakes in progress at once, by default.
pub const DEFAULT_MAX_PENDING_HANDSHAKES: usize = 256;
/// Handshakes in progress at once from one source, by default. A node's
/// ztunnel and waypoints need a handful; reconnecting after a controller
/// restart they still complete in milliseconds.
pub const DEFAULT_MAX_PENDING_HANDSHAKES_PER_SOURCE: usize = 64;
/// Open connections (handshaking or established), by default: one or two
/// per proxy, for a few thousand proxies.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// Descriptors kept for everything but the gRPC port (API server client,
/// watches, metrics and debug servers, files) when fitting the caps to the
/// open-file limit.
const RESERVED_FILES: u64 = 128;

/// After a failed `accept` (out of descriptors, usually), wait this long
/// before the next: the listener stays readable, and retrying at once would
/// spin a core while the descriptors are still gone.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Refusals of one reason are logged at most this often; the metric counts
/// every one. A flood must not turn into a log flood.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Bounds on the connections of the gRPC port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// How long a TLS handshake may take before the connection is closed.
    pub handshake_timeout: Duration,
    /// TLS handshakes in progress at once; beyond it the oldest is closed.
    pub max_pending_handshakes: usize,
    /// TLS handshakes in progress at once from one source address (one /64
    /// for IPv6, which a single host may hold entirely).
    pub max_pending_handshakes_per_source: usize,
    /// Open connections, handshaking or established.
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> ConnectionLimits {
        ConnectionLimits {
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_pending_handshakes: DEFAULT_MAX_PENDING_HANDSHAKES,
            max_pending_handshakes_per_source: DEFAULT_MAX_PENDING_HANDSHAKES_PER_SOURCE,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

impl ConnectionLimits {
    /// These limits lowered so that the gRPC port cannot use more than
    /// `open_files` (the soft `RLIMIT_NOFILE`) minus what the rest of the
    /// process needs: a cap above the descriptor limit caps nothing.
    pub fn fit_to_file_limit(self, open_files: u64) -> ConnectionLimits {
        let budget =
            usize::try_from(open_files.saturating_sub(RESERVED_FILES).max(2)).unwrap_or(usize::MAX);
        let max_connections = self.max_connections.min(budget);
        ConnectionLimits {
            max_connections,
            // Handshakes hold open connections: leave half for proxies that
            // are through theirs.
            max_pending_handshakes: self
                .max_pending_handshakes
                .min((max_connections / 2).max(1)),
            ..self
        }
    }
}

/// The soft open-file limit of this process, from `/proc/self/limits`
/// (`None` where that cannot be read, or is unlimited).
pub fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// The serving chain is not PEM certificates.
    #[error("serving certificate chain: {0}")]
    Chain(rustls::pki_types::pem::Error),
    /// The serving key is not a PEM private key.
    #[error("serving key: {0}")]
    Key(rustls::pki_types::pem::Error),
    /// rustls refused the certificate and key.
    #[error("rustls: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The server side of :15012's TLS: the serving chain, no client
/// certificates (callers prove who they are with bearer tokens), ALPN `h2`
/// (tonic's clients require it), and weft's process provider: the hybrid
/// post-quantum key exchange preferred (certificates and config cross here
/// too), with the classical groups and default suites tonic's TLS offered
/// before, so that every existing client still connects.
pub fn server_config(tls: &ServerTls) -> Result<Arc<rustls::ServerConfig>, TlsConfigError> {
    let chain = tls
        .chain_pem
        .iter()
        .flat_map(|pem| CertificateDer::pem_slice_iter(pem.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(TlsConfigError::Chain)?;
    let key = PrivateKeyDer::from_pem_slice(tls.key_pem.as_bytes()).map_err(TlsConfigError::Key)?;
    let mut config =
        rustls::ServerConfig::builder_with_provider(weft_identity::tls::process_provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// One accepted connection, TLS done (or plaintext, in tests), holding its
/// place under [`ConnectionLimits::max_connections`] until it is dropped.
pub struct Conn {
    io: Io,
    info: TcpConnectInfo,
    _open: OpenConnection,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connected for Conn {
    // The TCP addresses, as tonic's own listener gives them: so that
    // `Request::remote_addr` keeps working.
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A place under the open-connection cap, and the gauge that shows it.
struct OpenConnection {
    _permit: OwnedSemaphorePermit,
}

impl OpenConnection {
    fn new(permit: OwnedSemaphorePermit) -> OpenConnection {
        metrics::gauge!("weft_controller_connections_open").increment(1.0);
        OpenConnection { _permit: permit }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        metrics::gauge!("weft_controller_connections_open").decrement(1.0);
    }
}

/// Why a connection was closed before tonic saw it (the `reason` label of
/// `weft_controller_connections_refused_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Refusal {
    MaxConnections,
    MaxPendingHandshakes,
    MaxPendingHandshakesPerSource,
    HandshakeTimeout,
    HandshakeFailed,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::MaxPendingHandshakes => "max_pending_handshakes",
            Refusal::MaxPendingHandshakesPerSource => "max_pending_handshakes_per_source",
            Refusal::HandshakeTimeout => "handshake_timeout",
            Refusal::HandshakeFailed => "handshake_failed",
        }
    }
}

/// Counts refusals and logs them, each reason at most once per
/// [`REFUSAL_LOG_INTERVAL`].
#[derive(Default)]
struct Refusals {
    logged: Mutex<HashMap<Refusal, Instant>>,
}

impl Refusals {
    fn count(&self, reason: Refusal, peer: SocketAddr) {
        metrics::counter!("weft_controller_connections_refused_total", "reason" => reason.label())
            .increment(1);
        let now = Instant::now();
        let mut logged = self.logged.lock();
        let due = logged
            .get(&reason)
            .is_none_or(|last| now.duration_since(*last) >= REFUSAL_LOG_INTERVAL);
        if due {
            logged.insert(reason, now);
            tracing::warn!(
                %peer,
                reason = reason.label(),
                "closed a gRPC connection (further ones for this reason are only counted, \
                 in weft_controller_connections_refused_total, for {}s)",
                REFUSAL_LOG_INTERVAL.as_secs()
            );
        } else {
            tracing::debug!(%peer, reason = reason.label(), "closed a gRPC connection");
        }
    }
}

/// The source a per-source cap counts: the address, or its /64 for IPv6
/// (one host commonly holds a whole /64). IPv4-mapped IPv6 counts as IPv4.
fn source_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

/// Handshakes in progress, per source.
#[derive(Default)]
struct PendingPerSource {
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// One handshake counted against its source until dropped.
struct SourcePermit {
    sources: Arc<PendingPerSource>,
    source: IpAddr,
}

impl PendingPerSource {
    fn try_acquire(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<SourcePermit> {
        let source = source_of(ip);
        let mut counts = self.counts.lock();
        let n = counts.entry(source).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(SourcePermit {
            sources: self.clone(),
            source,
        })
    }
}

impl Drop for SourcePermit {
    fn drop(&mut self) {
        let mut counts = self.sources.counts.lock();
        if let Some(n) = counts.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.source);
            }
        }
    }
}

/// Every handshake in progress, oldest first.
///
/// When all [`ConnectionLimits::max_pending_handshakes`] are taken, the
/// oldest is closed to make room rather than the newcomer refused: a real
/// client's handshake takes milliseconds, so the oldest is almost surely one
/// that will never finish, and a flood from many sources (each within its
/// own cap) cannot lock real proxies out for a whole handshake timeout; it
/// would have to open the whole table's worth of connections within one
/// real handshake.
struct PendingHandshakes {
    max: usize,
    inner: Mutex<PendingInner>,
}

#[derive(Default)]
struct PendingInner {
    next: u64,
    /// By admission order: id -> (peer, cancelled to close it).
    live: BTreeMap<u64, (SocketAddr, CancellationToken)>,
}

/// One handshake's place in [`PendingHandshakes`], freed when dropped.
struct HandshakeSlot {
    pending: Arc<PendingHandshakes>,
    id: u64,
    /// Cancelled when a newer handshake took this place.
    evicted: CancellationToken,
}

impl PendingHandshakes {
    fn new(max: usize) -> PendingHandshakes {
        PendingHandshakes {
            max: max.max(1),
            inner: Mutex::new(PendingInner::default()),
        }
    }

    /// A place for `peer`'s handshake; when the table was full, also the
    /// peer of the oldest handshake, which was closed for it.
    fn admit(self: &Arc<Self>, peer: SocketAddr) -> (HandshakeSlot, Option<SocketAddr>) {
        let mut inner = self.inner.lock();
        let evicted = if inner.live.len() >= self.max {
            inner.live.pop_first().map(|(_, (peer, closed))| {
                closed.cancel();
                peer
            })
        } else {
            None
        };
        let id = inner.next;
        inner.next += 1;
        let token = CancellationToken::new();
        inner.live.insert(id, (peer, token.clone()));
        metrics::gauge!("weft_controller_handshakes_pending").set(inner.live.len() as f64);
        let slot = HandshakeSlot {
            pending: self.clone(),
            id,
            evicted: token,
        };
        (slot, evicted)
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut inner = self.pending.inner.lock();
        inner.live.remove(&self.id);
        metrics::gauge!("weft_controller_handshakes_pending").set(inner.live.len() as f64);
    }
}

/// The connections of `listener` within `limits`, TLS done when `tls` is
/// given. The accept loop stops (and the listener closes) when the stream is
/// dropped.
pub fn incoming(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: ConnectionLimits,
) -> impl Stream<Item = Result<Conn, io::Error>> + Send + 'static {
    // Small: a connection waits here only while tonic is busy starting the
    // previous one, and it keeps its place under the caps meanwhile.
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(accept_loop(
        listener,
        tls.map(TlsAcceptor::from),
        limits,
        tx,
    ));
    ReceiverStream::new(rx).map(Ok)
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: ConnectionLimits,
    tx: mpsc::Sender<Conn>,
) {
    let open = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let handshakes = Arc::new(PendingHandshakes::new(limits.max_pending_handshakes));
    let sources = Arc::new(PendingPerSource::default());
    let refusals = Arc::new(Refusals::default());
    loop {
        let accepted = tokio::select! {
            _ = tx.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!("accepting on the gRPC port: {e}");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        // Each refusal drops `stream`, which closes it.
        let Ok(open) = open.clone().try_acquire_owned() else {
            refusals.count(Refusal::MaxConnections, peer);
            continue;
        };
        let open = OpenConnection::new(open);
        // Control-plane messages are small and latency-bound.
        let _ = stream.set_nodelay(true);
        let info = TcpConnectInfo {
            local_addr: stream.local_addr().ok(),
            remote_addr: Some(peer),
        };
        let Some(tls) = tls.clone() else {
            let conn = Conn {
                io: Io::Plain(stream),
                info,
                _open: open,
            };
            if tx.send(conn).await.is_err() {
                return;
            }
            continue;
        };
        // The source's cap first: a source at its cap must not use up the
        // global one.
        let Some(source) =
            sources.try_acquire(peer.ip(), limits.max_pending_handshakes_per_source.max(1))
        else {
            refusals.count(Refusal::MaxPendingHandshakesPerSource, peer);
            continue;
        };
        let (handshake, evicted) = handshakes.admit(peer);
        if let Some(evicted) = evicted {
            refusals.count(Refusal::MaxPendingHandshakes, evicted);
        }
        let tx = tx.clone();
        let refusals = refusals.clone();
        tokio::spawn(async move {
            let accepted = tokio::select! {
                accepted = tokio::time::timeout(limits.handshake_timeout, tls.accept(stream)) => accepted,
                // Counted by the accept loop, which closed it.
                _ = handshake.evicted.cancelled() => return,
            };
            drop((source, handshake));
            let io = match accepted {
                Ok(Ok(io)) => io,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, "TLS handshake failed: {e}");
                    refusals.count(Refusal::HandshakeFailed, peer);
                    return;
                }
                Err(_) => {
                    refusals.count(Refusal::HandshakeTimeout, peer);
                    return;
                }
            };
            let conn = Conn {
                io: Io::Tls(Box::new(io)),
                info,
                _open: open,
            };
            // Fails only when the server stopped accepting.
            let _ = tx.send(conn).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_handshake_table_closes_its_oldest_handshake() {
        let pending = Arc::new(PendingHandshakes::new(2));
        let peer = |port| SocketAddr::from(([10, 0, 0, 1], port));
        let (first, none) = pending.admit(peer(1));
        assert!(none.is_none());
        let (second, none) = pending.admit(peer(2));
        assert!(none.is_none());
        let (_third, evicted) = pending.admit(peer(3));
        assert_eq!(evicted, Some(peer(1)));
        assert!(first.evicted.is_cancelled());
        assert!(!second.evicted.is_cancelled());
        // A handshake that finishes frees its place: no eviction then.
        drop(second);
        let (_fourth, none) = pending.admit(peer(4));
        assert!(none.is_none());
        drop(first);
        assert_eq!(pending.inner.lock().live.len(), 2);
    }

    #[test]
    fn ipv6_sources_count_per_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(source_of(a), source_of(b));
        assert_ne!(source_of(a), source_of(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().expect("ip");
        assert_eq!(source_of(mapped), "10.0.0.1".parse::<IpAddr>().expect("ip"));
    }

    #[test]
    fn caps_are_lowered_to_fit_the_open_file_limit() {
        let limits = ConnectionLimits::default();
        // Plenty of descriptors: unchanged.
        assert_eq!(limits.fit_to_file_limit(1 << 20), limits);
        // The 1024 of the finding: the port can no longer take them all.
        let fitted = limits.fit_to_file_limit(1024);
        assert_eq!(fitted.max_connections, 1024 - RESERVED_FILES as usize);
        assert!(fitted.max_pending_handshakes <= fitted.max_connections / 2);
        assert_eq!(fitted.handshake_timeout, limits.handshake_timeout);
    }

    /// Moves what `from` has to send into `to`.
    fn pump(from: &mut rustls::Connection, to: &mut rustls::Connection) {
        let mut sent = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut sent).expect("write");
        }
        let mut rest = sent.as_slice();
        while !rest.is_empty() {
            to.read_tls(&mut rest).expect("read");
            to.process_new_packets().expect("handshake");
        }
    }

    #[test]
    fn grpc_tls_prefers_the_post_quantum_hybrid_and_still_accepts_x25519() {
        use rustls::NamedGroup;
        use rustls::crypto::{CryptoProvider, aws_lc_rs};
        let ttl = Duration::from_secs(3600);
        let ca = weft_identity::CertificateAuthority::generate("cluster.local", ttl).expect("ca");
        let (chain_pem, key_pem) = ca
            .issue_serving(&["localhost".to_string()], &[], ttl)
            .expect("serving cert");
        let server = server_config(&ServerTls { chain_pem, key_pem }).expect("server config");
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.root_pem().as_bytes()).expect("root"))
            .expect("root");
        let x25519_only = CryptoProvider {
            kx_groups: vec![aws_lc_rs::kx_group::X25519],
            ..aws_lc_rs::default_provider()
        };
        // tonic's client uses aws-lc-rs's default provider unless weft's is
        // installed: both offer the hybrid first.
        for (client, expected) in [
            (aws_lc_rs::default_provider(), NamedGroup::X25519MLKEM768),
            (
                CryptoProvider::clone(&weft_identity::tls::process_provider()),
                NamedGroup::X25519MLKEM768,
            ),
            (x25519_only, NamedGroup::X25519),
        ] {
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(client))
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            let name = "localhost".try_into().expect("name");
            let mut c: rustls::Connection = rustls::ClientConnection::new(Arc::new(config), name)
                .expect("client")
                .into();
            let mut s: rustls::Connection = rustls::ServerConnection::new(server.clone())
                .expect("server")
                .into();
            for _ in 0..4 {
                pump(&mut c, &mut s);
                pump(&mut s, &mut c);
            }
            assert!(!c.is_handshaking() && !s.is_handshaking());
            let group = c.negotiated_key_exchange_group().map(|g| g.name());
            assert_eq!(group, Some(expected));
        }
    }

    #[test]
    fn the_per_source_count_is_released_with_its_permit() {
        let sources = Arc::new(PendingPerSource::default());
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        let first = sources.try_acquire(ip, 2).expect("first");
        let _second = sources.try_acquire(ip, 2).expect("second");
        assert!(sources.try_acquire(ip, 2).is_none());
        assert!(
            sources
                .try_acquire("10.0.0.2".parse().expect("ip"), 2)
                .is_some()
        );
        drop(first);
        assert!(sources.try_acquire(ip, 2).is_some());
    }
}
