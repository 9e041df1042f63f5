//! Sockets inside pod network namespaces.
//!
//! ztunnel lives in the node's network namespace but listens and connects
//! inside each pod's. The listeners come from the node agent, made inside
//! the pod ([`adopt_listener`]). A socket belongs to the namespace of the
//! thread that created it, so creating a connection is: `setns` into the
//! pod, `socket()`, `setns` back — synchronously, on the current thread,
//! with nothing else running on it in between. After that the socket is used
//! from any thread.
//!
//! Every socket ztunnel connects from inside a pod carries `SO_MARK 0x539`,
//! which the pod's redirect rules skip, so ztunnel's own traffic is never
//! captured again (docs/design.md §3).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::OwnedFd;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
pub use weft_netns::NetNs as Netns;

/// The mark on ztunnel's own sockets in pod namespaces.
pub const ZTUNNEL_MARK: u32 = 0x539;
/// Takes a pod's listening socket from the node agent (docs/design.md §7):
/// the agent made it inside the pod, without `SO_REUSEPORT`, so nothing else
/// there can bind the port, and it holds a copy, so the socket and the
/// connections in its backlog outlive this process. Checks that it listens
/// on `port` of the family `v6` says before serving it.
pub fn adopt_listener(fd: OwnedFd, port: u16, v6: bool) -> io::Result<TcpListener> {
    let socket = Socket::from(fd);
    let local = socket.local_addr()?.as_socket().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("the socket for port {port} is not an IP socket"),
        )
    })?;
    if local.port() != port || local.is_ipv6() != v6 || !socket.is_listener()? {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("the socket for port {port} is not a listener there (bound to {local})"),
        ));
    }
    // The agent creates it non-blocking; say so anyway, tokio depends on it.
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket.into())
}

/// How an outgoing socket is set up.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnectOptions {
    /// Connect from this address (needs `IP_TRANSPARENT` when the address
    /// is not local: the source-preserving connect to an application).
    pub transparent_source: Option<IpAddr>,
}

/// Connects to `dst` from inside `netns`, marked so the pod's rules skip it.
pub async fn connect_in(
    netns: &Netns,
    home: &Netns,
    dst: SocketAddr,
    options: ConnectOptions,
) -> io::Result<TcpStream> {
    let socket = netns.run_here(home, || {
        let domain = Domain::for_address(dst);
        let socket = Socket::new(domain, Type::STREAM.nonblocking(), Some(Protocol::TCP))?;
        socket.set_mark(ZTUNNEL_MARK)?;
        socket.set_tcp_nodelay(true)?;
        if let Some(source) = options.transparent_source {
            match source {
                IpAddr::V4(_) => socket.set_ip_transparent_v4(true)?,
                IpAddr::V6(_) => socket.set_ip_transparent_v6(true)?,
            }
            socket.bind(&SockAddr::from(SocketAddr::new(source, 0)))?;
        }
        Ok(socket)
    })?;
    let std_stream: std::net::TcpStream = socket.into();
    TcpSocket::from_std_stream(std_stream).connect(dst).await
}

/// The destination a redirected connection was originally for. `peer` is
/// the address `accept` returned: its family is the socket's, which saves a
/// `getsockname` per connection.
pub fn original_dst(stream: &TcpStream, peer: SocketAddr) -> io::Result<SocketAddr> {
    use nix::sys::socket::{getsockopt, sockopt};
    if peer.is_ipv4() {
        let sin = getsockopt(stream, sockopt::OriginalDst).map_err(io::Error::from)?;
        Ok(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))),
            u16::from_be(sin.sin_port),
        ))
    } else {
        let sin6 = getsockopt(stream, sockopt::Ip6tOriginalDst).map_err(io::Error::from)?;
        Ok(SocketAddr::new(
            IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)),
            u16::from_be(sin6.sin6_port),
        ))
    }
}

/// Makes the kernel answer a later close with RST instead of FIN: the peer
/// then sees a refusal, not a clean end.
pub fn reset_on_close(stream: &TcpStream) {
    let sock = socket2::SockRef::from(stream);
    let _ = sock.set_linger(Some(std::time::Duration::ZERO));
}
