//! The proxy's own listeners (admin, metrics, readiness, the waypoint's
//! HBONE port), in its own network namespace.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::net::TcpListener;

const BACKLOG: i32 = 1024;

/// Binds a listener in the proxy's own namespace with `SO_REUSEPORT`: the
/// admin, metrics and readiness ports, which a replacement proxy must be
/// able to bind while this one drains.
pub fn listen_shared(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&SockAddr::from(addr))?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}
