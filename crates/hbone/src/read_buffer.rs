//! A socket read buffer that is allocated only when asked for.
//!
//! rustls reads one record (and at most 4 KiB) per call, so the server reads
//! the socket through a large buffer to save syscalls on bulk transfers. A
//! connection that has not finished its handshake has proved nothing yet:
//! it must not cost 64 KiB, or a flood of silent connections is a flood of
//! allocations. So the server starts unbuffered and calls [`grow`] once the
//! peer has authenticated.
//!
//! [`grow`]: ReadBuffer::grow

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Reads through a buffer once [`ReadBuffer::grow`] was called; reads pass
/// straight through before that. Writes always pass straight through.
#[derive(Debug)]
pub struct ReadBuffer<S> {
    inner: S,
    buf: Box<[u8]>,
    pos: usize,
    filled: usize,
}

impl<S> ReadBuffer<S> {
    /// Unbuffered until [`ReadBuffer::grow`].
    pub fn new(inner: S) -> Self {
        ReadBuffer {
            inner,
            buf: Box::default(),
            pos: 0,
            filled: 0,
        }
    }

    /// Allocates a buffer of `capacity` bytes (a no-op when one exists).
    pub fn grow(&mut self, capacity: usize) {
        if self.buf.is_empty() && capacity > 0 {
            self.buf = vec![0; capacity].into_boxed_slice();
        }
    }

    /// The buffer's capacity (0 while unbuffered).
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadBuffer<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Nothing buffered and the caller asks for at least a buffer's worth
        // (or there is no buffer): read straight into the caller's memory.
        if this.pos == this.filled && out.remaining() >= this.buf.len() {
            return Pin::new(&mut this.inner).poll_read(cx, out);
        }
        if this.pos == this.filled {
            let mut fill = ReadBuf::new(&mut this.buf);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut fill))?;
            this.filled = fill.filled().len();
            this.pos = 0;
        }
        let n = out.remaining().min(this.filled - this.pos);
        out.put_slice(&this.buf[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadBuffer<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn reads_the_same_bytes_unbuffered_and_buffered() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        for capacity in [0, 7, 4096, 65536] {
            let (mut tx, rx) = tokio::io::duplex(1 << 20);
            let sent = data.clone();
            let writer = tokio::spawn(async move {
                for chunk in sent.chunks(3000) {
                    tx.write_all(chunk).await.expect("write");
                }
            });
            let mut reader = ReadBuffer::new(rx);
            let mut got = Vec::new();
            let mut small = [0u8; 1000];
            // Some reads before the buffer exists, the rest through it.
            while got.len() < 10_000 {
                let n = reader.read(&mut small).await.expect("read");
                got.extend_from_slice(&small[..n]);
            }
            reader.grow(capacity);
            assert_eq!(reader.capacity(), capacity);
            while got.len() < data.len() {
                let n = reader.read(&mut small).await.expect("read");
                assert!(n > 0, "early EOF");
                got.extend_from_slice(&small[..n]);
            }
            writer.await.expect("writer");
            assert_eq!(got, data, "capacity {capacity}");
        }
    }
}
