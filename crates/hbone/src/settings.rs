//! Tunables shared by the HBONE client and server.

use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;

use crate::handshake_gate::HandshakeGate;
use crate::tls;

/// HTTP/2 settings. The defaults are tuned for throughput (MiB-scale windows
/// rather than HTTP/2's 64 KiB) and were measured with
/// `weft-bench hbone-loopback` (docs/benchmarks.md).
#[derive(Debug, Clone)]
pub struct H2Settings {
    /// Per-stream receive window.
    pub stream_window: u32,
    /// Per-connection receive window; several streams share it.
    pub connection_window: u32,
    /// Largest DATA frame we accept.
    pub max_frame_size: u32,
    /// How much a stream may have queued for sending before senders wait.
    pub max_send_buffer: usize,
    /// Idle connections are probed with PING this often...
    pub keepalive_interval: Duration,
    /// ...and closed if the PONG takes longer than this.
    pub keepalive_timeout: Duration,
    /// Buffer under TLS for socket reads. rustls reads at most one record
    /// (and 4 KiB at a time) per call; reading the socket in large chunks
    /// instead saves most of the syscalls of a bulk transfer.
    pub socket_read_buffer: usize,
    /// Encrypted bytes TLS may queue before writing them out, so that one
    /// `writev` carries many records.
    pub tls_write_buffer: usize,
}

impl Default for H2Settings {
    fn default() -> Self {
        H2Settings {
            stream_window: 4 * 1024 * 1024,
            connection_window: 16 * 1024 * 1024,
            max_frame_size: 256 * 1024,
            max_send_buffer: 1024 * 1024,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            socket_read_buffer: 64 * 1024,
            tls_write_buffer: 256 * 1024,
        }
    }
}

/// The client pool's limits.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Streams per HTTP/2 connection before another connection is opened.
    pub max_streams_per_connection: usize,
    /// A connection with no streams for this long is closed.
    pub idle_timeout: Duration,
    /// TCP connect + TLS + HTTP/2 handshake.
    pub connect_timeout: Duration,
    /// From sending CONNECT to the peer's answer.
    pub response_timeout: Duration,
    pub h2: H2Settings,
    /// The TLS crypto: `tls::provider()`, weft's one choice, except in the
    /// benchmark that compares providers.
    pub crypto: Arc<CryptoProvider>,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            max_streams_per_connection: 100,
            idle_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(10),
            h2: H2Settings::default(),
            crypto: tls::provider(),
        }
    }
}

/// The server's limits.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Streams a client may have open at once on one connection. weft's
    /// pool opens another connection past 100.
    pub max_concurrent_streams: u32,
    /// The request headers of one CONNECT, in bytes (HPACK-decoded). A
    /// CONNECT needs under 1 KiB; the default leaves room for baggage.
    pub max_header_list_size: u32,
    /// TLS + HTTP/2 handshake, from the moment the server has its
    /// certificate: the time an unauthenticated peer may hold a connection.
    pub handshake_timeout: Duration,
    /// A connection with no open stream for this long is closed (GOAWAY).
    /// Longer than the client pool's own idle timeout, so it only ends
    /// connections a client forgot.
    pub idle_timeout: Duration,
    /// Streams a client may reset before they are answered, per connection,
    /// before the connection gets GOAWAY (paced rapid reset).
    pub max_early_resets: u32,
    /// Handshakes in progress, in all and per source address. Clones share
    /// it, so every pod of a ztunnel counts against one bound.
    pub handshakes: Arc<HandshakeGate>,
    pub h2: H2Settings,
}

/// Handshakes in progress at once on one proxy, and from one address.
pub const DEFAULT_MAX_HANDSHAKES: usize = 1024;
pub const DEFAULT_MAX_HANDSHAKES_PER_SOURCE: usize = 64;

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            max_concurrent_streams: 128,
            max_header_list_size: 16 * 1024,
            handshake_timeout: Duration::from_secs(4),
            idle_timeout: Duration::from_secs(300),
            max_early_resets: 100,
            handshakes: HandshakeGate::new(
                DEFAULT_MAX_HANDSHAKES,
                DEFAULT_MAX_HANDSHAKES_PER_SOURCE,
            ),
            h2: H2Settings::default(),
        }
    }
}
