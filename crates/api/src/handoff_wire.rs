//! Framing of the node agent <-> ztunnel handoff (`weft.nodeagent.v1`) on an
//! `AF_UNIX SOCK_SEQPACKET` socket. Both sides use this module, so there is
//! exactly one implementation of the wire.
//!
//! # Contract
//!
//! - The socket is `SOCK_SEQPACKET`: the kernel keeps message boundaries, so
//!   one datagram carries exactly one protobuf message (no length prefix).
//!   The agent listens (see [`listen`]); ztunnel connects (see [`connect`]).
//! - ztunnel sends `ZtunnelMessage`s (`Hello`, then one `Ack` per agent
//!   message); the agent sends `AgentMessage`s. The agent sends nothing until
//!   it has received `Hello`, and sends its next message only after the `Ack`
//!   of the previous one: at most one message is in flight per direction.
//! - An `AddPod` datagram carries, as one `SCM_RIGHTS` control message, the
//!   pod's network namespace fd and then one fd per entry of its `listeners`
//!   (the pod's listening sockets, which the agent created); the `Ack` of a
//!   `KeepPod` carries the listeners ztunnel holds for that pod the same way.
//!   No other message carries fds. Received fds are opened close-on-exec and
//!   owned by the receiver ([`OwnedFd`]); a datagram carrying more than
//!   [`MAX_FDS`] is rejected (its fds are closed). Whether the count matches
//!   the message is the receiver's check: only it knows the message.
//! - `Hello.version` is [`PROTOCOL_VERSION`]; the agent refuses any other
//!   version (closing the connection and saying why in its log), since a
//!   peer of another version would, silently, not hold the pods' listeners.
//! - A datagram is at most [`MAX_MESSAGE_LEN`] bytes; a longer one is
//!   rejected as truncated rather than decoded from a prefix.
//! - A zero-length read means the peer closed the connection. Every message
//!   the protocol defines encodes to at least two bytes (the `oneof` tag), so
//!   [`send`] refuses an empty encoding instead of putting an ambiguous
//!   datagram on the wire.
//! - Errors are [`std::io::Error`]s; a datagram that is not a valid message
//!   is `ErrorKind::InvalidData`. The functions work on blocking and on
//!   non-blocking sockets alike: on a non-blocking socket they return
//!   `ErrorKind::WouldBlock`, so an async caller can drive them from
//!   `tokio::io::unix::AsyncFd::async_io` (or `try_io`) without another layer.

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::sys::socket::{
    self, AddressFamily, Backlog, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr,
};
use prost::Message;

/// Largest datagram either side sends or accepts. An `AddPod` is well under
/// 1 KiB; the bound only protects the receiver from hostile sizes.
pub const MAX_MESSAGE_LEN: usize = 64 * 1024;

/// The protocol version ztunnel states in `Hello.version`. 2: the agent
/// creates the pods' listeners and both sides hold them.
pub const PROTOCOL_VERSION: u32 = 2;

/// Most fds one datagram may carry: a netns and three listeners per address
/// family.
pub const MAX_FDS: usize = 7;

/// Sends `msg` as one datagram, with `fds` (a pod netns, listening sockets)
/// as `SCM_RIGHTS`.
pub fn send<M: Message>(sock: BorrowedFd<'_>, msg: &M, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let buf = msg.encode_to_vec();
    if buf.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "refusing to send an empty message: a zero-length datagram means end of stream",
        ));
    }
    if buf.len() > MAX_MESSAGE_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "message of {} bytes exceeds the {MAX_MESSAGE_LEN}-byte limit",
                buf.len()
            ),
        ));
    }
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} fds exceed the {MAX_FDS}-fd limit", fds.len()),
        ));
    }
    let iov = [IoSlice::new(&buf)];
    let raw_fds: Vec<_> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let rights = [ControlMessage::ScmRights(&raw_fds)];
    let cmsgs: &[ControlMessage<'_>] = if raw_fds.is_empty() { &[] } else { &rights };
    // MSG_NOSIGNAL: a peer that went away must be an error, not a SIGPIPE.
    let sent = socket::sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)
        .map_err(io::Error::from)?;
    if sent != buf.len() {
        // Cannot happen on SEQPACKET (a datagram is sent whole or not at all),
        // but a short write must never pass silently.
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "datagram sent partially",
        ));
    }
    Ok(())
}

/// Receives one datagram and decodes it as `M`, with the fds it carried.
/// `Ok(None)`: the peer closed the connection.
pub fn recv<M: Message + Default>(sock: BorrowedFd<'_>) -> io::Result<Option<(M, Vec<OwnedFd>)>> {
    // One byte more than the limit, so an over-long datagram is detectable
    // even where MSG_TRUNC is not reported.
    let mut buf = vec![0u8; MAX_MESSAGE_LEN + 1];
    let received = weft_netns::fd::recv_with_fds(sock, &mut buf)?;
    let (len, fds) = (received.len, received.fds);
    if received.control_truncated {
        return Err(invalid(
            "control data truncated (too many fds in one datagram)",
        ));
    }
    if received.truncated || len > MAX_MESSAGE_LEN {
        return Err(invalid(format!(
            "datagram longer than {MAX_MESSAGE_LEN} bytes"
        )));
    }
    if len == 0 {
        return Ok(None);
    }
    if fds.len() > MAX_FDS {
        // Dropping `fds` closes them all.
        return Err(invalid(format!(
            "datagram carried {} fds, at most {MAX_FDS} are allowed",
            fds.len()
        )));
    }
    let msg = M::decode(&buf[..len]).map_err(|e| invalid(format!("undecodable message: {e}")))?;
    Ok(Some((msg, fds)))
}

/// Binds and listens on a SEQPACKET socket at `path`, replacing a stale
/// socket file left by a previous run. The fd is close-on-exec and blocking.
pub fn listen(path: &Path) -> io::Result<OwnedFd> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let fd = seqpacket_socket()?;
    let addr = UnixAddr::new(path).map_err(io::Error::from)?;
    socket::bind(fd.as_raw_fd(), &addr).map_err(io::Error::from)?;
    socket::listen(&fd, Backlog::new(16).map_err(io::Error::from)?).map_err(io::Error::from)?;
    Ok(fd)
}

/// Accepts one connection on a socket made by [`listen`]; the new fd is
/// close-on-exec and blocking (even if the listener is non-blocking).
pub fn accept(listener: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    weft_netns::fd::accept(listener)
}

/// Connects to the agent's SEQPACKET socket at `path` (blocking, close-on-exec).
pub fn connect(path: &Path) -> io::Result<OwnedFd> {
    let fd = seqpacket_socket()?;
    let addr = UnixAddr::new(path).map_err(io::Error::from)?;
    socket::connect(fd.as_raw_fd(), &addr).map_err(io::Error::from)?;
    Ok(fd)
}

/// A connected pair, for tests and in-process use.
pub fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    socket::socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(io::Error::from)
}

/// Switches `fd` to non-blocking mode, for use with an async reactor.
pub fn set_nonblocking(fd: impl AsFd) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = fcntl(fd.as_fd(), FcntlArg::F_GETFL).map_err(io::Error::from)?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(fd.as_fd(), FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
    Ok(())
}

fn seqpacket_socket() -> io::Result<OwnedFd> {
    socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io::Error::from)
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nodeagent::{
        AddPod, AgentMessage, PodIdentity, ZtunnelMessage, agent_message, ztunnel_message,
    };
    use std::io::{Read, Seek, Write};

    #[test]
    fn message_with_fd_round_trips() {
        let (a, b) = pair().expect("socketpair");
        let mut file = tempfile_like();
        file.write_all(b"netns stand-in").expect("write");
        let msg = AgentMessage {
            kind: Some(agent_message::Kind::Add(AddPod {
                pod: Some(PodIdentity {
                    uid: "u1".into(),
                    name: "p".into(),
                    namespace: "ns".into(),
                    service_account: "sa".into(),
                }),
                addresses: vec!["10.0.0.1".into()],
                listeners: vec![],
            })),
        };
        send(a.as_fd(), &msg, &[file.as_fd(), file.as_fd()]).expect("send");
        let (got, mut fds) = recv::<AgentMessage>(b.as_fd())
            .expect("recv")
            .expect("not eof");
        assert_eq!(got, msg);
        assert_eq!(fds.len(), 2, "every fd arrives, in order");
        // The received fd refers to the same open file.
        let mut f = std::fs::File::from(fds.remove(0));
        f.rewind().expect("rewind");
        let mut s = String::new();
        f.read_to_string(&mut s).expect("read");
        assert_eq!(s, "netns stand-in");
    }

    #[test]
    fn eof_and_garbage() {
        let (a, b) = pair().expect("socketpair");
        let ack = ZtunnelMessage {
            kind: Some(ztunnel_message::Kind::Ack(Default::default())),
        };
        send(a.as_fd(), &ack, &[]).expect("send ack");
        let (got, fds) = recv::<ZtunnelMessage>(b.as_fd())
            .expect("recv")
            .expect("not eof");
        assert_eq!(got, ack);
        assert!(fds.is_empty());
        // Raw garbage: an invalid varint tag.
        nix::sys::socket::send(a.as_raw_fd(), &[0xff; 11], MsgFlags::empty()).expect("raw send");
        let err = recv::<ZtunnelMessage>(b.as_fd()).expect_err("garbage must not decode");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        // An empty message is refused at the sender.
        assert!(send(a.as_fd(), &ZtunnelMessage::default(), &[]).is_err());
        // More fds than any message needs: refused at the sender, and at the
        // receiver (a peer not using this module), their fds closed.
        let file = tempfile_like();
        let many = vec![file.as_fd(); MAX_FDS + 1];
        assert!(send(a.as_fd(), &ack, &many).is_err());
        let raw: Vec<_> = many.iter().map(|fd| fd.as_raw_fd()).collect();
        nix::sys::socket::sendmsg::<()>(
            a.as_raw_fd(),
            &[IoSlice::new(&ack.encode_to_vec())],
            &[ControlMessage::ScmRights(&raw)],
            MsgFlags::empty(),
            None,
        )
        .expect("raw sendmsg");
        let err = recv::<ZtunnelMessage>(b.as_fd()).expect_err("too many fds");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        drop(a);
        assert!(recv::<ZtunnelMessage>(b.as_fd()).expect("recv").is_none());
    }

    fn tempfile_like() -> std::fs::File {
        let path = std::env::temp_dir().join(format!("weft-wire-test-{}", std::process::id()));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("temp file");
        let _ = std::fs::remove_file(&path);
        f
    }
}
