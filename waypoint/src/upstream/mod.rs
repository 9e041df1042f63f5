//! The way out: which endpoint a request goes to, how it is reached (an
//! HBONE tunnel with the waypoint's own certificate, or plain TCP to a
//! destination outside the mesh), and the pooled HTTP connections on top
//! ([`pool`]).

pub mod pool;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use weft_api::config::{TunnelProtocol, Workload};
use weft_hbone::{DirectDialer, H2Stream, HboneError, SpiffeId, TunnelPool, TunnelTarget};
use weft_runtime::certs::{CertManager, CertWaitError};
use weft_runtime::lb::EndpointLoad;
use weft_runtime::store::workload_identity;

use crate::destination::WaypointName;

/// How an endpoint is reached.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Transport {
    /// An HBONE tunnel to `hbone_addr` (the pod's ztunnel, or the waypoint
    /// the pod is bound to), whose server must prove `identity`.
    Hbone {
        hbone_addr: SocketAddr,
        identity: SpiffeId,
    },
    /// Plain TCP: the destination is not in the mesh.
    Tcp,
}

/// A chosen endpoint: the workload, the `pod IP:target port` it listens on,
/// and how to get there.
#[derive(Debug)]
pub struct Endpoint {
    pub workload: Arc<Workload>,
    pub addr: SocketAddr,
    pub transport: Transport,
    /// The load balancer's count of requests in flight to it.
    pub load: Option<EndpointLoad>,
}

/// Why an endpoint cannot be reached at all.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("workload {0} has no valid identity")]
    NoIdentity(String),
    #[error("waypoint {0} of the destination has no usable address or identity")]
    OtherWaypoint(String),
}

impl Endpoint {
    /// How to reach `workload` at `addr`. A workload bound to *another*
    /// waypoint is reached through that one (its ztunnel admits nobody
    /// else); an HBONE-capable one through its ztunnel on `hbone_port`;
    /// anything else in plain TCP.
    pub fn new(
        workload: Arc<Workload>,
        addr: SocketAddr,
        me: &WaypointName,
        hbone_port: u16,
        load: Option<EndpointLoad>,
    ) -> Result<Endpoint, EndpointError> {
        let transport = match &workload.waypoint {
            Some(other) if !me.is(Some(other)) => {
                let bad =
                    || EndpointError::OtherWaypoint(format!("{}/{}", other.namespace, other.name));
                let ip: IpAddr = other
                    .addresses
                    .iter()
                    .find_map(|a| a.parse().ok())
                    .ok_or_else(bad)?;
                let port = u16::try_from(other.hbone_port)
                    .ok()
                    .filter(|p| *p != 0)
                    .unwrap_or(hbone_port);
                Transport::Hbone {
                    hbone_addr: SocketAddr::new(ip, port),
                    identity: other.identity.parse().map_err(|_| bad())?,
                }
            }
            _ if workload.protocol == TunnelProtocol::Hbone as i32 => Transport::Hbone {
                hbone_addr: SocketAddr::new(addr.ip(), hbone_port),
                identity: workload_identity(&workload)
                    .map_err(|_| EndpointError::NoIdentity(workload.uid.clone()))?,
            },
            _ => Transport::Tcp,
        };
        Ok(Endpoint {
            workload,
            addr,
            transport,
            load,
        })
    }
}

/// Why a connection to an endpoint failed. None of these reached the
/// application, so any request may be retried after one.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("no certificate for the waypoint: {0}")]
    Certificate(#[from] CertWaitError),
    #[error("HBONE: {0}")]
    Hbone(#[from] HboneError),
    #[error("TCP connect to {addr}: {source}")]
    Tcp { addr: SocketAddr, source: io::Error },
    #[error("connecting to {0} timed out")]
    Timeout(SocketAddr),
}

/// Opens byte streams to endpoints.
#[derive(Clone)]
pub struct Connector {
    pub tunnels: TunnelPool,
    pub certs: CertManager,
    /// The waypoint's own identity: upstream tunnels present it.
    pub identity: SpiffeId,
    pub connect_timeout: Duration,
}

impl Connector {
    /// A stream to `addr` over `transport`.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        transport: &Transport,
    ) -> Result<UpstreamIo, ConnectError> {
        self.connect_traced(addr, transport, None).await
    }

    /// [`Connector::connect`], whose HBONE `CONNECT` carries `traceparent`
    /// (the traced request attempt that opens the connection).
    pub async fn connect_traced(
        &self,
        addr: SocketAddr,
        transport: &Transport,
        traceparent: Option<String>,
    ) -> Result<UpstreamIo, ConnectError> {
        match transport {
            Transport::Hbone {
                hbone_addr,
                identity,
            } => {
                let cert = self.certs.get(&self.identity).await?;
                let target = TunnelTarget {
                    hbone_addr: *hbone_addr,
                    expected_identity: identity.clone(),
                    authority: addr,
                    // Upstream connections are pooled across clients, so no
                    // single client address belongs on them.
                    client_ip: None,
                    traceparent,
                    baggage: None,
                };
                let stream = self.tunnels.connect(&cert, &target, &DirectDialer).await?;
                Ok(UpstreamIo::Tunnel(stream))
            }
            Transport::Tcp => {
                let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
                    .await
                    .map_err(|_| ConnectError::Timeout(addr))?
                    .map_err(|source| ConnectError::Tcp { addr, source })?;
                let _ = tcp.set_nodelay(true);
                Ok(UpstreamIo::Tcp(tcp))
            }
        }
    }
}

/// A byte stream to an endpoint.
#[derive(Debug)]
pub enum UpstreamIo {
    Tunnel(H2Stream),
    Tcp(TcpStream),
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tunnel(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tcp(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Tunnel(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Tcp(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tunnel(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Tcp(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tunnel(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tcp(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
