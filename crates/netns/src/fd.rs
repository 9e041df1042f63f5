//! File descriptors that cross process boundaries: a pod's network
//! namespace travels from the node agent to ztunnel as an `SCM_RIGHTS`
//! control message on a SEQPACKET socket.

use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{self, ControlMessageOwned, MsgFlags, SockFlag};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// One datagram received with [`recv_with_fds`].
#[derive(Debug)]
pub struct Received {
    /// Bytes written to the buffer.
    pub len: usize,
    /// The datagram was longer than the buffer (`MSG_TRUNC`).
    pub truncated: bool,
    /// The peer sent more fds than there was room for (`MSG_CTRUNC`); the
    /// kernel closed the ones it could not deliver.
    pub control_truncated: bool,
    /// The fds it carried, close-on-exec and owned by the caller.
    pub fds: Vec<OwnedFd>,
}

/// Receives one datagram into `buf` with the fds it carries (room for up to
/// sixteen, so a peer that sends more is detected rather than leaking them
/// in flight; callers bound the count further). Works on blocking and non-blocking sockets alike.
#[allow(unsafe_code)]
pub fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Received> {
    let mut cmsg_space = nix::cmsg_space!([RawFd; 16]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = socket::recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg_space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    let mut fds = Vec::new();
    if let Ok(cmsgs) = msg.cmsgs() {
        for cmsg in cmsgs {
            if let ControlMessageOwned::ScmRights(raw) = cmsg {
                for fd in raw {
                    // SAFETY: the kernel just installed this fd in our table
                    // for this message; nothing else owns it.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
    }
    Ok(Received {
        len: msg.bytes,
        truncated: msg.flags.contains(MsgFlags::MSG_TRUNC),
        control_truncated: msg.flags.contains(MsgFlags::MSG_CTRUNC),
        fds,
    })
}

/// Accepts one connection on `listener`; the new fd is close-on-exec and
/// blocking (even if the listener is non-blocking).
#[allow(unsafe_code)]
pub fn accept(listener: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let raw =
        socket::accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC).map_err(io::Error::from)?;
    // SAFETY: accept4 returned a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Registers `fd` with the current tokio reactor for `interest`.
#[allow(unsafe_code)]
pub fn register(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: tokio requires the fd to stay open and be the same file for
    // the AsyncFd's whole life; an OwnedFd moved into it is open until the
    // AsyncFd drops it and always reports the same fd.
    Ok(unsafe { AsyncFd::register_with_interest(fd, interest) }?)
}

#[cfg(test)]
mod tests {
    use std::io::IoSlice;
    use std::os::fd::AsFd;

    use nix::sys::socket::{AddressFamily, ControlMessage, SockType};

    use super::*;

    #[test]
    fn fds_arrive_owned_and_too_many_are_reported() {
        let (a, b) = socket::socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .expect("pair");
        let file = tempfile::tempfile().expect("file");
        let raw = [file.as_raw_fd()];
        let rights = [ControlMessage::ScmRights(&raw)];
        socket::sendmsg::<()>(
            a.as_raw_fd(),
            &[IoSlice::new(b"hi")],
            &rights,
            MsgFlags::empty(),
            None,
        )
        .expect("send");
        let mut buf = [0u8; 16];
        let got = recv_with_fds(b.as_fd(), &mut buf).expect("recv");
        assert_eq!((got.len, got.fds.len()), (2, 1));
        assert!(!got.truncated && !got.control_truncated);

        let many = [file.as_raw_fd(); 20];
        let rights = [ControlMessage::ScmRights(&many)];
        socket::sendmsg::<()>(
            a.as_raw_fd(),
            &[IoSlice::new(b"too many")],
            &rights,
            MsgFlags::empty(),
            None,
        )
        .expect("send");
        let got = recv_with_fds(b.as_fd(), &mut buf).expect("recv");
        assert!(got.control_truncated, "twenty fds fit in room for sixteen");
    }
}
