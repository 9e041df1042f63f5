//! Errors of the tunnel.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;

use crate::tls::TlsConfigError;

#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    #[error("connecting to {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("TLS handshake with {addr}: {source}")]
    Tls { addr: SocketAddr, source: io::Error },
    #[error("peer {addr} did not negotiate ALPN h2")]
    Alpn { addr: SocketAddr },
    #[error("HTTP/2 handshake with {addr}: {source}")]
    Handshake { addr: SocketAddr, source: h2::Error },
    #[error("the peer refused the tunnel with status {0}")]
    Refused(StatusCode),
    #[error("tunnel stream: {0}")]
    Stream(#[from] h2::Error),
    #[error("{what} timed out after {after:?}")]
    Timeout { what: &'static str, after: Duration },
    #[error("TLS configuration: {0}")]
    Config(#[from] TlsConfigError),
    #[error("no certificate for {0}")]
    NoCertificate(String),
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
}

impl HboneError {
    /// True when the peer (or policy at the peer) said no, as opposed to a
    /// network failure: the client then resets its socket instead of
    /// closing it, so the application sees the refusal.
    pub fn is_refusal(&self) -> bool {
        matches!(self, HboneError::Refused(_))
    }
}
