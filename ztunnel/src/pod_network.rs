//! The seam between ztunnel's data path and the pods' networks: every
//! socket the proxy opens for a pod goes through its [`PodNetwork`].
//!
//! - [`NetnsNetwork`]: production. The pod's listeners are the sockets the
//!   node agent made inside its network namespace, its connections are
//!   created there (`socket`), and the original destination of a captured
//!   connection comes from `SO_ORIGINAL_DST`.
//! - [`Fabric`] / [`InProcessNetwork`]: tests. Pods are addresses in a
//!   table; their listeners are loopback sockets, connections to a pod
//!   address are sent to whatever listens for it, and a test "captures" a
//!   connection by saying where it was going. The handlers run unchanged
//!   and without root, so their decisions get fast table tests; the netns
//!   tests still cover what only a kernel does (redirect rules, marks,
//!   transparent sources, the addresses a peer really has: in process, every
//!   peer is 127.0.0.1).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::Arc;

use parking_lot::Mutex;

use tokio::net::{TcpListener, TcpStream};

use crate::socket::{self, ConnectOptions, Netns};

/// A connect in progress.
pub type Connecting<'a> = Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send + 'a>>;

/// How ztunnel opens sockets for one pod.
pub trait PodNetwork: std::fmt::Debug + Send + Sync + 'static {
    /// A listener on `port` for all the pod's addresses of one family.
    fn listen(&self, port: u16, v6: bool) -> io::Result<TcpListener>;
    /// A connection from the pod to `dst`, which the pod's capture skips.
    fn connect(&self, dst: SocketAddr, options: ConnectOptions) -> Connecting<'_>;
    /// Where a captured connection (peer `peer`) was going.
    fn original_dst(&self, stream: &TcpStream, peer: SocketAddr) -> io::Result<SocketAddr>;
}

/// A pod's network namespace, entered from the node's (`home`).
#[derive(Debug)]
pub struct NetnsNetwork {
    pub netns: Netns,
    pub home: Arc<Netns>,
    /// The listening sockets the node agent sent, by (port, IPv6), each
    /// taken once by [`PodNetwork::listen`].
    pub listeners: Mutex<HashMap<(u16, bool), OwnedFd>>,
}

impl PodNetwork for NetnsNetwork {
    fn listen(&self, port: u16, v6: bool) -> io::Result<TcpListener> {
        let fd = self.listeners.lock().remove(&(port, v6)).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "the node agent sent no {} listener for port {port}",
                    if v6 { "IPv6" } else { "IPv4" }
                ),
            )
        })?;
        socket::adopt_listener(fd, port, v6)
    }

    fn connect(&self, dst: SocketAddr, options: ConnectOptions) -> Connecting<'_> {
        Box::pin(socket::connect_in(&self.netns, &self.home, dst, options))
    }

    fn original_dst(&self, stream: &TcpStream, peer: SocketAddr) -> io::Result<SocketAddr> {
        socket::original_dst(stream, peer)
    }
}

/// The in-process network pods of a test share: which loopback socket
/// answers for a pod address, and where each captured connection was going.
#[derive(Debug, Default)]
pub struct Fabric {
    listeners: Mutex<HashMap<SocketAddr, SocketAddr>>,
    /// Keyed by the capturing client's local address, as the listener sees
    /// its peer.
    captured: Mutex<HashMap<SocketAddr, SocketAddr>>,
}

impl Fabric {
    pub fn new() -> Arc<Fabric> {
        Arc::default()
    }

    /// The network of the pod at `ip`.
    pub fn pod(self: &Arc<Self>, ip: IpAddr) -> InProcessNetwork {
        InProcessNetwork {
            fabric: self.clone(),
            ip,
        }
    }

    /// Answers for `addr` (an application in a pod, or a host outside the
    /// mesh) with a listener of the caller's.
    pub async fn listen(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        self.listeners.lock().insert(addr, listener.local_addr()?);
        Ok(listener)
    }

    /// What the pod at `pod`'s capture would do with its connection to
    /// `dst`: hand it to ztunnel's listener on `port` (15001 for outbound,
    /// 15006 for inbound plaintext), remembering `dst`.
    pub async fn capture(&self, pod: IpAddr, port: u16, dst: SocketAddr) -> io::Result<TcpStream> {
        let listener = self.resolve(SocketAddr::new(pod, port))?;
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind((Ipv4Addr::LOCALHOST, 0).into())?;
        self.captured.lock().insert(socket.local_addr()?, dst);
        socket.connect(listener).await
    }

    /// A connection to `addr` from a host outside every pod (a peer
    /// ztunnel or waypoint, as a test plays it).
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        TcpStream::connect(self.resolve(addr)?).await
    }

    fn resolve(&self, addr: SocketAddr) -> io::Result<SocketAddr> {
        self.listeners.lock().get(&addr).copied().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("nothing listens on {addr}"),
            )
        })
    }
}

/// One pod's network in a [`Fabric`].
#[derive(Debug)]
pub struct InProcessNetwork {
    fabric: Arc<Fabric>,
    ip: IpAddr,
}

impl PodNetwork for InProcessNetwork {
    fn listen(&self, port: u16, v6: bool) -> io::Result<TcpListener> {
        if v6 {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the in-process network has no IPv6",
            ));
        }
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        self.fabric
            .listeners
            .lock()
            .insert(SocketAddr::new(self.ip, port), listener.local_addr()?);
        TcpListener::from_std(listener)
    }

    fn connect(&self, dst: SocketAddr, _options: ConnectOptions) -> Connecting<'_> {
        Box::pin(async move { TcpStream::connect(self.fabric.resolve(dst)?).await })
    }

    fn original_dst(&self, _stream: &TcpStream, peer: SocketAddr) -> io::Result<SocketAddr> {
        self.fabric
            .captured
            .lock()
            .remove(&peer)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "not a captured connection"))
    }
}
