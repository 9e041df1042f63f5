//! weft-hbone: the tunnel both of weft's proxies speak.
//!
//! Identity and trust (`identity`, `ca`, `certs`, `tls`) live in
//! `weft-identity` and are re-exported here, so a proxy needs one import.
//!
//! The tunnel (HTTP/2 CONNECT over mTLS, docs/design.md §4):
//! - [`pool`]: the client, a pool of connections each carrying many tunnels.
//! - [`server`]: accepts tunnels and hands them to a handler.
//! - [`stream`]: one tunnel as a byte stream.
//! - [`copy`]: the socket <-> tunnel copier.
//! - [`headers`]: `:authority` and `forwarded` parsing.
//! - [`handshake_gate`] and [`read_buffer`]: what an unauthenticated
//!   connection may cost the server.
//! - [`settings`], [`error`].

pub mod copy;
pub mod error;
pub mod handshake_gate;
pub mod headers;
pub mod keepalive;
pub mod pool;
pub mod read_buffer;
pub mod server;
pub mod settings;
pub mod stream;

pub use weft_identity::{ca, certs, identity, tls};

pub use copy::{ByteCounters, copy_bidirectional};
pub use error::HboneError;
pub use handshake_gate::{GateRefusal, HandshakeGate};
pub use pool::{Dialer, DirectDialer, TunnelPool, TunnelTarget};
pub use server::{HboneServer, InboundTunnel, ServerTls, TunnelHandler};
pub use settings::{H2Settings, PoolSettings, ServerSettings};
pub use stream::H2Stream;
pub use weft_identity::{
    CertificateAuthority, CertificateRequest, CertificateStore, CsrError, SpiffeId, TrustBundle,
    WorkloadCertificate,
};
