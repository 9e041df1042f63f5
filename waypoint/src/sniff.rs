//! What a tunnel carries: HTTP/1.1, HTTP/2 (prior knowledge), or opaque TCP.
//!
//! The rule (docs/waypoint.md): the destination port's `appProtocol` decides
//! when it names a protocol — `tcp` (or any value that is not an HTTP kind)
//! is TCP, `http`, `http2`, `grpc`, `h2c`... are HTTP. An empty
//! `appProtocol` is sniffed from the client's first bytes: the HTTP/2
//! preface, or an HTTP/1 method token and a space, mean HTTP; anything else
//! is TCP; a client that sends nothing for a while (a server-first protocol)
//! is TCP. Falling back to TCP is safe: TCP gets L4 authorization, where an
//! ALLOW rule with L7 fields matches nothing and a DENY rule with L7 fields
//! refuses the whole connection, so a client cannot dodge an L7 rule by
//! disguising its bytes.
//!
//! The sniffed bytes are not lost: [`Rewind`] replays them to whoever reads
//! the stream next (the HTTP server or the byte copier).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// What the bytes of a tunnel are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    Tcp,
}

/// What a port's `appProtocol` says before any byte is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Declared {
    /// HTTP of some version: sniff only which one.
    Http,
    Tcp,
    /// Nothing said: sniff.
    Unknown,
}

/// Reads a Service port's `appProtocol`.
pub fn declared(app_protocol: &str) -> Declared {
    let p = app_protocol.trim().to_ascii_lowercase();
    match p.as_str() {
        "" => Declared::Unknown,
        "http" | "http2" | "h2c" | "grpc" | "grpc-web" | "kubernetes.io/h2c"
        | "kubernetes.io/ws" | "ws" => Declared::Http,
        _ => Declared::Tcp,
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Longest method token we accept as HTTP/1 (longer than any registered one).
const MAX_METHOD: usize = 32;

/// The verdict on a prefix of the stream, or `None` when more bytes are
/// needed to tell.
pub fn classify(prefix: &[u8]) -> Option<Protocol> {
    let n = prefix.len().min(H2_PREFACE.len());
    if prefix[..n] == H2_PREFACE[..n] {
        return (n == H2_PREFACE.len()).then_some(Protocol::Http2);
    }
    for (i, &b) in prefix.iter().enumerate().take(MAX_METHOD + 1) {
        if b == b' ' {
            return Some(if i == 0 {
                Protocol::Tcp
            } else {
                Protocol::Http1
            });
        }
        if !is_tchar(b) {
            return Some(Protocol::Tcp);
        }
    }
    if prefix.len() > MAX_METHOD {
        Some(Protocol::Tcp)
    } else {
        None
    }
}

/// RFC 9110 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Reads from `io` until [`classify`] decides, the client stops sending
/// (EOF: TCP), or `wait` passes without a verdict (TCP). Returns the verdict
/// and the bytes read, to be replayed.
pub async fn sniff<R: AsyncRead + Unpin>(
    io: &mut R,
    wait: Duration,
) -> io::Result<(Protocol, Bytes)> {
    let mut buf = BytesMut::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if let Some(protocol) = classify(&buf) {
            return Ok((protocol, buf.freeze()));
        }
        match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => return Ok((Protocol::Tcp, buf.freeze())),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    }
}

/// Bytes moved through a stream, readable while it is in use.
#[derive(Debug, Default)]
pub struct Counters {
    /// From the client (read from the tunnel).
    pub received: AtomicU64,
    /// To the client (written to the tunnel).
    pub sent: AtomicU64,
}

/// A stream with some already-read bytes put back in front, counting what
/// passes.
pub struct Rewind<T> {
    prefix: Bytes,
    inner: T,
    counters: Arc<Counters>,
}

impl<T> Rewind<T> {
    pub fn new(prefix: Bytes, inner: T, counters: Arc<Counters>) -> Self {
        counters
            .received
            .fetch_add(prefix.len() as u64, Ordering::Relaxed);
        Rewind {
            prefix,
            inner,
            counters,
        }
    }
}

impl<T> Rewind<T> {
    pub fn inner_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        self.counters
            .received
            .fetch_add(read as u64, Ordering::Relaxed);
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &result {
            self.counters.sent.fetch_add(*n as u64, Ordering::Relaxed);
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn verdicts() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(classify(b"M-SEARCH * HTTP/1.1"), Some(Protocol::Http1));
        assert_eq!(classify(H2_PREFACE), Some(Protocol::Http2));
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), None);
        assert_eq!(classify(b"PRI * HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b""), None);
        assert_eq!(classify(b"\x16\x03\x01\x02\x00"), Some(Protocol::Tcp));
        assert_eq!(classify(b" GET"), Some(Protocol::Tcp));
        assert_eq!(classify(b"SSH-2.0-OpenSSH\r\n"), Some(Protocol::Tcp));
        assert_eq!(classify(&[b'A'; 40]), Some(Protocol::Tcp));
    }

    #[test]
    fn app_protocols() {
        assert_eq!(declared(""), Declared::Unknown);
        assert_eq!(declared("TCP"), Declared::Tcp);
        assert_eq!(declared("mysql"), Declared::Tcp);
        assert_eq!(declared("http"), Declared::Http);
        assert_eq!(declared("kubernetes.io/h2c"), Declared::Http);
        assert_eq!(declared("grpc"), Declared::Http);
    }

    #[tokio::test]
    async fn sniffing_replays_what_it_read() {
        let (mut client, server) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"POST /x HTTP/1.1\r\n")
            .await
            .unwrap();
        let mut server = server;
        let (protocol, prefix) = sniff(&mut server, Duration::from_secs(5)).await.unwrap();
        assert_eq!(protocol, Protocol::Http1);
        let counters = Arc::new(Counters::default());
        let mut rewound = Rewind::new(prefix, server, counters.clone());
        drop(client);
        let mut all = Vec::new();
        rewound.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"POST /x HTTP/1.1\r\n");
        assert_eq!(counters.received.load(Ordering::Relaxed), all.len() as u64);
    }

    #[tokio::test]
    async fn a_silent_client_is_tcp() {
        let (_client, mut server) = tokio::io::duplex(64);
        let (protocol, prefix) = sniff(&mut server, Duration::from_millis(20)).await.unwrap();
        assert_eq!(protocol, Protocol::Tcp);
        assert!(prefix.is_empty());
    }

    proptest! {
        #[test]
        fn classify_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = classify(&bytes);
        }
    }
}
