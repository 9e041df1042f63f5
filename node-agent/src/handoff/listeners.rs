//! The pods' listening sockets (docs/design.md §7): the agent creates ztunnel's
//! 15001, 15006 and 15008 inside each enrolled pod and hands them over with
//! the pod's netns.
//!
//! They are bound without `SO_REUSEPORT`. A listening wildcard socket without
//! it makes every other bind of that port in the pod fail (`EADDRINUSE`),
//! whatever options or address the other socket uses, so a process in the
//! pod, even as root, cannot bind beside ztunnel and take the pod's inbound
//! before policy. The agent and every ztunnel hold the same sockets: they
//! stay bound, and connections wait in their backlog, while any holder lives
//! (a ztunnel restart, two ztunnels during an upgrade, an agent restart).

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use weft_api::nodeagent::Listener;

use crate::netns::NetNs;
use crate::redirect::{HBONE_PORT, INBOUND_PORT, OUTBOUND_PORT};

/// Accept backlog: connections that arrive while no ztunnel accepts (a
/// restart) wait here.
const BACKLOG: i32 = 1024;

/// Why a pod's listeners could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    /// Something else in the pod has the port: a process of the pod's own,
    /// or, right after an agent restart, a ztunnel that will give its
    /// sockets back when it reconnects.
    #[error(
        "port {port} ({family}) in the pod is already bound by another socket; weft's listener cannot be created there"
    )]
    Held {
        /// The port.
        port: u16,
        /// "IPv4" or "IPv6".
        family: &'static str,
    },
    /// Any other failure to create, bind or listen.
    #[error("creating the {family} listener on port {port} in the pod: {source}")]
    Socket {
        /// The port.
        port: u16,
        /// "IPv4" or "IPv6".
        family: &'static str,
        /// The error.
        source: io::Error,
    },
    /// The pod's network namespace could not be entered.
    #[error("{0}")]
    Netns(#[from] crate::netns::NetnsError),
    /// Sockets given back by ztunnel do not match what the pod needs.
    #[error("listeners from ztunnel: {0}")]
    Returned(String),
}

/// One listening socket of a pod.
#[derive(Debug)]
pub struct PodListener {
    /// Its port.
    pub port: u16,
    /// IPv6 (`[::]`, v6 only) or IPv4 (`0.0.0.0`).
    pub ipv6: bool,
    /// The socket.
    pub fd: OwnedFd,
}

/// A pod's listeners, in the namespace they were made in.
#[derive(Debug)]
pub struct PodListeners {
    /// Inode of the pod's netns: a re-created sandbox needs new sockets.
    pub netns_inode: u64,
    /// 15001, 15006, 15008 for IPv4, then for IPv6 when the pod has an IPv6
    /// address.
    pub sockets: Vec<PodListener>,
}

/// The listeners a pod with these addresses needs: (port, ipv6).
pub fn wanted(addresses: &[String]) -> Vec<(u16, bool)> {
    let v6 = addresses
        .iter()
        .any(|a| a.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_ipv6()));
    let mut families = vec![false];
    if v6 {
        families.push(true);
    }
    families
        .into_iter()
        .flat_map(|ipv6| {
            [OUTBOUND_PORT, INBOUND_PORT, HBONE_PORT]
                .into_iter()
                .map(move |port| (port, ipv6))
        })
        .collect()
}

impl PodListeners {
    /// Creates the listeners a pod with `addresses` needs inside `netns`.
    pub fn bind(netns: &NetNs, addresses: &[String]) -> Result<PodListeners, ListenerError> {
        let wanted = wanted(addresses);
        let sockets = netns.run(|| {
            wanted
                .iter()
                .map(|&(port, ipv6)| bind_one(port, ipv6).map(|fd| PodListener { port, ipv6, fd }))
                .collect::<Result<Vec<_>, _>>()
        })??;
        Ok(PodListeners {
            netns_inode: netns.inode(),
            sockets,
        })
    }

    /// Takes back the sockets a ztunnel returned for a pod (in the `Ack` of a
    /// `KeepPod`), checking that each is a listener on the port it is said
    /// to be, and that together they are what the pod needs.
    pub fn adopt(
        netns: &NetNs,
        addresses: &[String],
        described: &[Listener],
        fds: Vec<OwnedFd>,
    ) -> Result<PodListeners, ListenerError> {
        if described.len() != fds.len() {
            return Err(ListenerError::Returned(format!(
                "{} listeners described, {} fds sent",
                described.len(),
                fds.len()
            )));
        }
        let mut sockets = Vec::new();
        for (l, fd) in described.iter().zip(fds) {
            let port = u16::try_from(l.port)
                .map_err(|_| ListenerError::Returned(format!("port {} out of range", l.port)))?;
            check_listener(&fd, port, l.ipv6).map_err(ListenerError::Returned)?;
            sockets.push(PodListener {
                port,
                ipv6: l.ipv6,
                fd,
            });
        }
        let mut have: Vec<_> = sockets.iter().map(|s| (s.port, s.ipv6)).collect();
        let mut need = wanted(addresses);
        have.sort_unstable();
        need.sort_unstable();
        if have != need {
            return Err(ListenerError::Returned(format!(
                "got {have:?}, the pod needs {need:?}"
            )));
        }
        Ok(PodListeners {
            netns_inode: netns.inode(),
            sockets,
        })
    }

    /// How they are described on the wire, in the order of [`Self::fds`].
    pub fn describe(&self) -> Vec<Listener> {
        self.sockets
            .iter()
            .map(|s| Listener {
                port: u32::from(s.port),
                ipv6: s.ipv6,
            })
            .collect()
    }

    /// The sockets, in the order of [`Self::describe`].
    pub fn fds(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        self.sockets.iter().map(|s| s.fd.as_fd())
    }

    /// The socket on `port` of a family.
    pub fn get(&self, port: u16, ipv6: bool) -> Option<BorrowedFd<'_>> {
        self.sockets
            .iter()
            .find(|s| s.port == port && s.ipv6 == ipv6)
            .map(|s| s.fd.as_fd())
    }
}

fn family(ipv6: bool) -> &'static str {
    if ipv6 { "IPv6" } else { "IPv4" }
}

/// One listener on all addresses of a family, as ztunnel used to make them
/// itself, but without `SO_REUSEPORT`. Runs inside the pod's namespace.
fn bind_one(port: u16, ipv6: bool) -> Result<OwnedFd, ListenerError> {
    let err = |source: io::Error| {
        if source.kind() == io::ErrorKind::AddrInUse {
            ListenerError::Held {
                port,
                family: family(ipv6),
            }
        } else {
            ListenerError::Socket {
                port,
                family: family(ipv6),
                source,
            }
        }
    };
    let (domain, addr) = if ipv6 {
        (
            Domain::IPV6,
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
        )
    } else {
        (
            Domain::IPV4,
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
        )
    };
    // Non-blocking from the start: the flag belongs to the shared open file,
    // and ztunnel's reactor needs it.
    let socket =
        Socket::new(domain, Type::STREAM.nonblocking(), Some(Protocol::TCP)).map_err(err)?;
    if ipv6 {
        socket.set_only_v6(true).map_err(err)?;
    }
    // SO_REUSEADDR only lets the bind pass over connections of an earlier
    // listener still in TIME_WAIT; it never lets a second socket listen on
    // the port.
    socket.set_reuse_address(true).map_err(err)?;
    // Accepted sockets inherit it: one `setsockopt` per listener instead of
    // one per connection in ztunnel.
    socket.set_tcp_nodelay(true).map_err(err)?;
    socket.bind(&SockAddr::from(addr)).map_err(err)?;
    socket.listen(BACKLOG).map_err(err)?;
    Ok(socket.into())
}

/// `fd` is a listening TCP socket on `port` of the family `ipv6` says.
pub fn check_listener(fd: &OwnedFd, port: u16, ipv6: bool) -> Result<(), String> {
    let sock = socket2::SockRef::from(fd);
    let what = format!("the {} socket for port {port}", family(ipv6));
    let local = sock
        .local_addr()
        .map_err(|e| format!("{what}: {e}"))?
        .as_socket()
        .ok_or_else(|| format!("{what} is not an IP socket"))?;
    if local.port() != port || local.is_ipv6() != ipv6 {
        return Err(format!("{what} is bound to {local}"));
    }
    if !sock.is_listener().map_err(|e| format!("{what}: {e}"))? {
        return Err(format!("{what} is not listening"));
    }
    Ok(())
}
