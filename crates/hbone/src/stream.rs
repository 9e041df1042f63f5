//! One HBONE tunnel as a byte stream: the send and receive halves of an
//! HTTP/2 CONNECT stream, with HTTP/2 flow control handled here so callers
//! see plain bytes.
//!
//! Two ways in: [`SendHalf::send`] / [`RecvHalf::recv`] move `Bytes` without
//! copying (the copier uses these), and `AsyncRead`/`AsyncWrite` serve
//! anything that wants a socket-like object (an HTTP server in a waypoint, a
//! test).

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::pool::StreamGuard;

/// A tunnel's byte stream.
pub struct H2Stream {
    send: SendHalf,
    recv: RecvHalf,
}

impl std::fmt::Debug for H2Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Stream").finish_non_exhaustive()
    }
}

impl H2Stream {
    pub(crate) fn new(
        send: SendStream<Bytes>,
        recv: RecvStream,
        guard: Option<StreamGuard>,
    ) -> Self {
        H2Stream {
            send: SendHalf {
                stream: send,
                finished: false,
                _guard: guard,
            },
            recv: RecvHalf {
                stream: recv,
                pending: Bytes::new(),
            },
        }
    }

    pub fn split(self) -> (SendHalf, RecvHalf) {
        (self.send, self.recv)
    }

    /// Aborts the tunnel (RST_STREAM): the peer sees an error, not an EOF.
    pub fn reset(&mut self, reason: Reason) {
        self.send.reset(reason);
    }
}

/// The sending side of a tunnel.
pub struct SendHalf {
    stream: SendStream<Bytes>,
    finished: bool,
    // Keeps the pooled connection's stream count until the tunnel is gone.
    _guard: Option<StreamGuard>,
}

impl SendHalf {
    /// Sends all of `data`, waiting for HTTP/2 flow-control window as needed.
    pub async fn send(&mut self, mut data: Bytes) -> io::Result<()> {
        while !data.is_empty() {
            self.stream.reserve_capacity(data.len());
            let granted = poll_fn(|cx| self.stream.poll_capacity(cx))
                .await
                .ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "tunnel closed"))?
                .map_err(h2_to_io)?;
            if granted == 0 {
                continue;
            }
            let chunk = data.split_to(granted.min(data.len()));
            self.stream.send_data(chunk, false).map_err(h2_to_io)?;
        }
        Ok(())
    }

    /// Half-closes the tunnel (END_STREAM): the peer reads EOF.
    pub fn finish(&mut self) -> io::Result<()> {
        if !self.finished {
            self.finished = true;
            self.stream
                .send_data(Bytes::new(), true)
                .map_err(h2_to_io)?;
        }
        Ok(())
    }

    pub fn reset(&mut self, reason: Reason) {
        self.finished = true;
        self.stream.send_reset(reason);
    }

    fn poll_write_slice(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.stream.reserve_capacity(buf.len());
        loop {
            match ready!(self.stream.poll_capacity(cx)) {
                None => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "tunnel closed",
                    )));
                }
                Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
                Some(Ok(0)) => continue,
                Some(Ok(granted)) => {
                    let n = granted.min(buf.len());
                    self.stream
                        .send_data(Bytes::copy_from_slice(&buf[..n]), false)
                        .map_err(h2_to_io)?;
                    return Poll::Ready(Ok(n));
                }
            }
        }
    }
}

/// The receiving side of a tunnel.
pub struct RecvHalf {
    stream: RecvStream,
    // What AsyncRead has received but not yet handed out.
    pending: Bytes,
}

impl RecvHalf {
    /// The next chunk of data, or `None` at the peer's END_STREAM.
    pub async fn recv(&mut self) -> io::Result<Option<Bytes>> {
        if !self.pending.is_empty() {
            return Ok(Some(std::mem::take(&mut self.pending)));
        }
        poll_fn(|cx| self.poll_chunk(cx)).await
    }

    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        loop {
            match ready!(self.stream.poll_data(cx)) {
                None => return Poll::Ready(Ok(None)),
                Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
                Some(Ok(chunk)) => {
                    // Give the window back at once: the caller writes the
                    // chunk out before asking for more, which bounds memory
                    // to one chunk per tunnel while keeping the window open.
                    let _ = self.stream.flow_control().release_capacity(chunk.len());
                    if !chunk.is_empty() {
                        return Poll::Ready(Ok(Some(chunk)));
                    }
                }
            }
        }
    }
}

fn h2_to_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e
            .into_io()
            .unwrap_or_else(|| io::Error::other("h2 i/o error"));
    }
    let kind = match e.reason() {
        Some(Reason::NO_ERROR) | Some(Reason::CANCEL) => io::ErrorKind::ConnectionReset,
        Some(Reason::REFUSED_STREAM) => io::ErrorKind::ConnectionRefused,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e)
}

impl AsyncRead for RecvHalf {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pending.is_empty() {
            match ready!(self.poll_chunk(cx))? {
                Some(chunk) => self.pending = chunk,
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = self.pending.len().min(buf.remaining());
        buf.put_slice(&self.pending[..n]);
        self.pending.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for SendHalf {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_slice(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The HTTP/2 connection task writes and flushes frames as they come.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.finish())
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.recv).poll_read(cx, buf)
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.send.poll_write_slice(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.send).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.send).poll_shutdown(cx)
    }
}
