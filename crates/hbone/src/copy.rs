//! The byte copier between a TCP socket and a tunnel: both directions in one
//! task, half-close carried across (TCP FIN <-> HTTP/2 END_STREAM), and byte
//! counters that others can read while the copy runs (`/connections`).
//!
//! Reads go straight into a `BytesMut` that is frozen and handed to HTTP/2
//! without another copy; reads are large (up to [`MAX_READ`]) so a bulk
//! transfer costs few syscalls and few DATA frames. The buffer is reused
//! while data keeps coming and let go whenever the socket has nothing to
//! read, so an idle tunnel holds no read buffer (thousands of idle tunnels
//! are common on a node).

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::ReadHalf;

use crate::stream::{H2Stream, RecvHalf, SendHalf};

/// Largest single read from the socket.
pub const MAX_READ: usize = 256 * 1024;
/// Reads start small so idle or chatty connections hold little memory, and
/// grow while reads keep filling the buffer.
const FIRST_READ: usize = 16 * 1024;

/// Bytes moved so far, readable while the copy runs.
#[derive(Debug, Default)]
pub struct ByteCounters {
    /// From the socket into the tunnel.
    pub sent: AtomicU64,
    /// From the tunnel into the socket.
    pub received: AtomicU64,
}

impl ByteCounters {
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

/// Copies between `socket` and `tunnel` until both directions have ended.
///
/// EOF on the socket half-closes the tunnel and vice versa; the other
/// direction carries on. An error in either direction ends both, and the
/// tunnel is reset so the peer sees an abort rather than a clean close.
pub async fn copy_bidirectional(
    socket: &mut TcpStream,
    tunnel: H2Stream,
    counters: &ByteCounters,
) -> io::Result<()> {
    let (sock_rd, mut sock_wr) = socket.split();
    let (mut send, mut recv) = tunnel.split();
    let result = tokio::try_join!(
        socket_to_tunnel(&sock_rd, &mut send, &counters.sent),
        tunnel_to_socket(&mut recv, &mut sock_wr, &counters.received),
    );
    if result.is_err() {
        send.reset(h2::Reason::CANCEL);
    }
    result.map(|_| ())
}

async fn socket_to_tunnel(
    socket: &ReadHalf<'_>,
    tunnel: &mut SendHalf,
    counter: &AtomicU64,
) -> io::Result<()> {
    let mut want = FIRST_READ;
    let mut buf = BytesMut::new();
    loop {
        // While data keeps coming, the buffer is reused (what the tunnel
        // has sent is split off; the rest of the allocation stays).
        if buf.capacity() < want {
            buf.reserve(want);
        }
        let n = match socket.try_read_buf(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Nothing to read: the buffer goes before the wait, which
                // may last as long as the tunnel.
                buf = BytesMut::new();
                socket.readable().await?;
                continue;
            }
            Err(e) => return Err(e),
        };
        if n == 0 {
            return tunnel.finish();
        }
        counter.fetch_add(n as u64, Ordering::Relaxed);
        if n >= want && want < MAX_READ {
            want = (want * 2).min(MAX_READ);
        }
        tunnel.send(buf.split().freeze()).await?;
    }
}

async fn tunnel_to_socket<W: AsyncWrite + Unpin>(
    tunnel: &mut RecvHalf,
    socket: &mut W,
    counter: &AtomicU64,
) -> io::Result<()> {
    while let Some(chunk) = tunnel.recv().await? {
        socket.write_all(&chunk).await?;
        counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
    }
    socket.shutdown().await
}
