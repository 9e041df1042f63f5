//! HTTP connections to endpoints, pooled per endpoint: idle HTTP/1.1
//! connections wait to be reused; one HTTP/2 connection per endpoint carries
//! every request. The streams underneath are HBONE tunnels from the shared
//! `TunnelPool` (themselves multiplexed over pooled mTLS connections) or TCP.
//!
//! An HTTP/1.1 connection has no task of its own: the request using it
//! drives its I/O (while sending, then from the response body as the client
//! reads it), which saves a task hand-off in each direction per request.
//! It goes back to the pool when its response body has been read to the
//! end; one whose body is dropped half-read is closed. A pooled connection
//! the endpoint closed while idle is noticed when it is taken, and the
//! request takes another one.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;
use tracing::debug;

use super::{ConnectError, Connector, Transport, UpstreamIo};
use crate::otel::ConnectTraceparent;

/// What the waypoint sends upstream: the client's body as it streams in, or
/// a buffered copy that can be sent again on a retry.
pub type RequestBody = Either<Incoming, Full<Bytes>>;

/// Identifies a pool of connections: one endpoint, one way of reaching it,
/// one HTTP version.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub addr: std::net::SocketAddr,
    pub transport: Transport,
    pub http2: bool,
}

/// Limits of the pool.
#[derive(Debug, Clone)]
pub struct HttpPoolSettings {
    /// Idle HTTP/1.1 connections kept per endpoint.
    pub max_idle_per_endpoint: usize,
    /// An idle connection older than this is closed.
    pub idle_timeout: Duration,
}

impl Default for HttpPoolSettings {
    fn default() -> Self {
        HttpPoolSettings {
            max_idle_per_endpoint: 256,
            idle_timeout: Duration::from_secs(90),
        }
    }
}

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The endpoint could not be reached: the request was never sent.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The connection failed while the request was in flight (or before
    /// the response head).
    #[error("upstream HTTP: {0}")]
    Http(#[from] hyper::Error),
}

/// A failed send, with the request when it was never sent (so it can be
/// sent elsewhere, body and all).
#[derive(Debug)]
pub struct Failed {
    pub error: SendError,
    pub unsent: Option<Request<RequestBody>>,
}

impl Failed {
    fn unsent(error: impl Into<SendError>, request: Request<RequestBody>) -> Failed {
        Failed {
            error: error.into(),
            unsent: Some(request),
        }
    }

    fn sent(error: impl Into<SendError>) -> Failed {
        Failed {
            error: error.into(),
            unsent: None,
        }
    }
}

/// An HTTP/1.1 connection: the request side and the I/O driver. Always
/// boxed: hyper's connection state is about 750 bytes, and a request moves
/// its connection from the idle list to the exchange, into the response
/// body and back, which copied it each time (memcpy was the largest item
/// of the waypoint's own CPU profile).
struct Http1Conn {
    sender: http1::SendRequest<RequestBody>,
    conn: http1::Connection<TokioIo<UpstreamIo>, RequestBody>,
}

impl Http1Conn {
    /// Runs the connection's I/O as far as it goes now. `Ready` means the
    /// connection ended (closed by the endpoint, or broken).
    fn drive(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.conn).poll(cx).map(|result| {
            if let Err(e) = result {
                debug!(error = %e, "upstream HTTP/1.1 connection ended");
            }
        })
    }
}

struct Idle {
    conn: Box<Http1Conn>,
    since: Instant,
}

struct Inner {
    connector: Connector,
    settings: HttpPoolSettings,
    http1: Mutex<HashMap<PoolKey, Vec<Idle>>>,
    http2: Mutex<HashMap<PoolKey, http2::SendRequest<RequestBody>>>,
}

/// The pool. Cheap to clone.
#[derive(Clone)]
pub struct HttpPool {
    inner: Arc<Inner>,
}

impl HttpPool {
    pub fn new(connector: Connector, settings: HttpPoolSettings) -> HttpPool {
        HttpPool {
            inner: Arc::new(Inner {
                connector,
                settings,
                http1: Mutex::default(),
                http2: Mutex::default(),
            }),
        }
    }

    /// The connector underneath (TCP mode uses it directly).
    pub fn connector(&self) -> &Connector {
        &self.inner.connector
    }

    /// Sends `request` to the endpoint of `key`.
    pub async fn send(
        &self,
        key: &PoolKey,
        request: Request<RequestBody>,
    ) -> Result<Response<PooledBody>, Failed> {
        if key.http2 {
            self.send_http2(key, request).await
        } else {
            self.send_http1(key, request).await
        }
    }

    async fn send_http1(
        &self,
        key: &PoolKey,
        mut request: Request<RequestBody>,
    ) -> Result<Response<PooledBody>, Failed> {
        loop {
            let mut conn = match self.checkout(key).await {
                Some(conn) => conn,
                // Boxed: connecting is rare, and its future (5 KB, the TLS
                // or HBONE handshake) would otherwise be part of every
                // request's, copied whenever that is moved.
                None => match Box::pin(self.connect_http1(key, ConnectTraceparent::of(&request)))
                    .await
                {
                    Ok(conn) => conn,
                    Err(e) => return Err(Failed::unsent(e, request)),
                },
            };
            let mut sending = std::pin::pin!(conn.sender.try_send_request(request));
            let mut ended = false;
            // Drive the connection while the request goes out and the
            // response head comes back.
            let result = std::future::poll_fn(|cx| {
                if !ended && conn.drive(cx).is_ready() {
                    ended = true;
                }
                sending.as_mut().poll(cx)
            })
            .await;
            match result {
                Ok(response) => {
                    let conn = (!ended).then_some(conn);
                    return Ok(self.pooled(key, conn, response));
                }
                Err(mut e) => match e.take_message() {
                    // The connection closed while idle; the request was not
                    // sent. Try another.
                    Some(unsent) => request = unsent,
                    None => return Err(Failed::sent(e.into_error())),
                },
            }
        }
    }

    async fn connect_http1(
        &self,
        key: &PoolKey,
        traceparent: Option<String>,
    ) -> Result<Box<Http1Conn>, SendError> {
        let io = self.connect(key, traceparent).await?;
        let (sender, conn) = http1::Builder::new()
            .handshake::<_, RequestBody>(TokioIo::new(io))
            .await?;
        Ok(Box::new(Http1Conn { sender, conn }))
    }

    async fn send_http2(
        &self,
        key: &PoolKey,
        request: Request<RequestBody>,
    ) -> Result<Response<PooledBody>, Failed> {
        let existing = self
            .inner
            .http2
            .lock()
            .get(key)
            .filter(|s| !s.is_closed())
            .cloned();
        let mut sender = match existing {
            Some(sender) => sender,
            None => {
                // Boxed, as in `send_http1`.
                let io = match Box::pin(self.connect(key, ConnectTraceparent::of(&request))).await {
                    Ok(io) => io,
                    Err(e) => return Err(Failed::unsent(e, request)),
                };
                let handshake = Box::pin(
                    http2::Builder::new(TokioExecutor::new())
                        .timer(TokioTimer::new())
                        .initial_stream_window_size(1024 * 1024)
                        .initial_connection_window_size(4 * 1024 * 1024)
                        .keep_alive_interval(Duration::from_secs(30))
                        .handshake::<_, RequestBody>(TokioIo::new(io)),
                )
                .await;
                let (sender, connection) = match handshake {
                    Ok(pair) => pair,
                    Err(e) => return Err(Failed::unsent(e, request)),
                };
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        debug!(error = %e, "upstream HTTP/2 connection ended");
                    }
                });
                // Two requests racing to a new endpoint may both connect; the
                // later one is kept, the other serves its request and idles out.
                self.inner.http2.lock().insert(key.clone(), sender.clone());
                sender
            }
        };
        match sender.try_send_request(request).await {
            Ok(response) => Ok(response.map(|body| PooledBody {
                body,
                checkin: None,
            })),
            Err(mut e) => Err(Failed {
                unsent: e.take_message(),
                error: e.into_error().into(),
            }),
        }
    }

    /// Sends an HTTP/1.1 `Upgrade` request (WebSocket and the like) on a
    /// connection of its own, never pooled: if the endpoint answers 101,
    /// the connection becomes the upgraded stream (`hyper::upgrade::on` the
    /// response).
    pub async fn send_upgrade(
        &self,
        key: &PoolKey,
        request: Request<RequestBody>,
    ) -> Result<Response<Incoming>, Failed> {
        let io = match self.connect(key, ConnectTraceparent::of(&request)).await {
            Ok(io) => io,
            Err(e) => return Err(Failed::unsent(e, request)),
        };
        let (mut sender, conn) = match http1::Builder::new()
            .handshake::<_, RequestBody>(TokioIo::new(io))
            .await
        {
            Ok(pair) => pair,
            Err(e) => return Err(Failed::unsent(e, request)),
        };
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!(error = %e, "upstream upgrade connection ended");
            }
        });
        sender.send_request(request).await.map_err(Failed::sent)
    }

    async fn connect(
        &self,
        key: &PoolKey,
        traceparent: Option<String>,
    ) -> Result<UpstreamIo, ConnectError> {
        self.inner
            .connector
            .connect_traced(key.addr, &key.transport, traceparent)
            .await
    }

    /// An idle HTTP/1.1 connection to the endpoint, ready for a request.
    async fn checkout(&self, key: &PoolKey) -> Option<Box<Http1Conn>> {
        loop {
            let idle = {
                let mut pool = self.inner.http1.lock();
                let list = pool.get_mut(key)?;
                let idle = list.pop();
                if list.is_empty() {
                    pool.remove(key);
                }
                idle?
            };
            if idle.since.elapsed() > self.inner.settings.idle_timeout {
                continue;
            }
            let mut conn = idle.conn;
            // Let the connection settle: notice an endpoint that closed it
            // while idle, or finish the previous exchange. It is ready at
            // once unless it broke.
            let settled = std::future::poll_fn(|cx| {
                if conn.drive(cx).is_ready() {
                    return Poll::Ready(false);
                }
                conn.sender.poll_ready(cx).map(|r| r.is_ok())
            });
            if let Ok(true) = tokio::time::timeout(Duration::from_secs(1), settled).await {
                return Some(conn);
            }
        }
    }

    fn pooled(
        &self,
        key: &PoolKey,
        conn: Option<Box<Http1Conn>>,
        response: Response<Incoming>,
    ) -> Response<PooledBody> {
        let mut checkin = conn.map(|conn| Checkin {
            pool: Arc::downgrade(&self.inner),
            key: key.clone(),
            conn,
        });
        if response.body().is_end_stream()
            && let Some(c) = checkin.take()
        {
            c.put_back();
        }
        response.map(|body| PooledBody { body, checkin })
    }

    /// Closes idle connections past the idle timeout and forgets closed
    /// HTTP/2 connections; run periodically.
    pub fn sweep(&self) {
        let timeout = self.inner.settings.idle_timeout;
        self.inner.http1.lock().retain(|_, list| {
            list.retain(|i| i.since.elapsed() <= timeout);
            !list.is_empty()
        });
        self.inner.http2.lock().retain(|_, s| !s.is_closed());
    }

    /// Idle HTTP/1.1 connections and live HTTP/2 connections, per endpoint.
    pub fn stats(&self) -> Vec<(PoolKey, usize)> {
        let mut out: Vec<(PoolKey, usize)> = self
            .inner
            .http1
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.len()))
            .collect();
        out.extend(self.inner.http2.lock().keys().map(|k| (k.clone(), 1)));
        out
    }
}

struct Checkin {
    pool: Weak<Inner>,
    key: PoolKey,
    conn: Box<Http1Conn>,
}

impl Checkin {
    fn put_back(self) {
        let Some(pool) = self.pool.upgrade() else {
            return;
        };
        if self.conn.sender.is_closed() {
            return;
        }
        let mut idle = pool.http1.lock();
        let list = idle.entry(self.key).or_default();
        if list.len() < pool.settings.max_idle_per_endpoint {
            list.push(Idle {
                conn: self.conn,
                since: Instant::now(),
            });
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body from upstream. Over HTTP/1.1 it drives its
    /// connection as it is read, and at its end the connection goes back to
    /// the pool.
    pub struct PooledBody {
        #[pin]
        body: Incoming,
        checkin: Option<Checkin>,
    }
}

impl PooledBody {
    /// The body of a response on a connection that is not pooled.
    pub fn unpooled(body: Incoming) -> PooledBody {
        PooledBody {
            body,
            checkin: None,
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut this = self.project();
        if let Some(c) = this.checkin.as_mut()
            && c.conn.drive(cx).is_ready()
        {
            // Ended: whatever the body still has is buffered in it.
            this.checkin.take();
        }
        let frame = ready!(this.body.as_mut().poll_frame(cx));
        match &frame {
            None => {
                if let Some(c) = this.checkin.take() {
                    c.put_back();
                }
            }
            Some(Err(_)) => {
                // A broken body: the connection is not reusable.
                this.checkin.take();
            }
            // A server that knows the length stops polling at the last
            // byte, so the end is noticed here rather than at `None`.
            Some(Ok(_)) => {
                if this.body.is_end_stream()
                    && let Some(c) = this.checkin.take()
                {
                    c.put_back();
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::returned_size;

    /// Every request boxes this future, copying all of it: connecting (a
    /// 5 KB handshake) stays out of it (6 KB before it was boxed apart).
    #[test]
    fn a_sends_future_leaves_the_connecting_out() {
        let size = returned_size(HttpPool::send);
        assert!(size <= 2 * 1024, "HttpPool::send's future is {size} bytes");
        assert!(returned_size(HttpPool::connect_http1) > size);
    }

    /// Requests move their connection in and out of the idle list and the
    /// response body: a box, not hyper's 750 bytes of state.
    #[test]
    fn a_pooled_connection_moves_as_a_pointer() {
        let pointer = std::mem::size_of::<Box<Http1Conn>>();
        assert_eq!(
            std::mem::size_of::<Checkin>(),
            std::mem::size_of::<(Weak<Inner>, PoolKey)>() + pointer
        );
        assert!(std::mem::size_of::<Idle>() <= 64);
    }
}
