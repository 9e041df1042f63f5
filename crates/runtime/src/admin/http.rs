//! The HTTP side of an admin API, shared by ztunnel and the waypoint: JSON
//! and text responses, the `/tap` stream, `/logging`, readiness, and the
//! accept loops on TCP and unix listeners.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use futures::future::{Either, Ready};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Semaphore, broadcast};
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use weft_api::admin::{CertInfo, CertState, LoggingResponse, TapEvent};

use super::LogControl;
use crate::certs::CertStatus;

pub type Body = BoxBody<Bytes, Infallible>;

pub fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()).boxed());
    *response.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    response
}

pub fn json<T: Serialize>(value: &T) -> Response<Body> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => full(StatusCode::OK, "application/json", body),
        Err(e) => full(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            e.to_string(),
        ),
    }
}

/// A list of shared config objects as JSON (null if it cannot be encoded).
pub fn to_json<T: Serialize>(items: &[std::sync::Arc<T>]) -> serde_json::Value {
    serde_json::to_value(items.iter().map(AsRef::as_ref).collect::<Vec<_>>()).unwrap_or_default()
}

/// `/certs`: what a proxy holds for one identity, as of `now`.
pub fn cert_info(status: CertStatus, now: SystemTime) -> CertInfo {
    let cert = status.cert.as_ref();
    CertInfo {
        identity: status.identity.to_string(),
        state: match cert {
            None => CertState::Pending,
            Some(c) if c.is_expired(now) => CertState::Expired,
            Some(_) => CertState::Valid,
        },
        serial: cert.map(|c| c.serial().to_owned()),
        not_before: cert.and_then(|c| rfc3339(c.not_before())),
        not_after: cert.and_then(|c| rfc3339(c.not_after())),
        renew_at: cert.and_then(|c| rfc3339(c.renew_at())),
        chain_pem: cert.map(|c| c.chain_pem()).unwrap_or_default(),
        last_error: status.last_error,
    }
}

fn rfc3339(t: SystemTime) -> Option<String> {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}

pub fn query_param(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| v.replace("%2F", "/").replace("%2f", "/"))
    })
}

/// `/tap?namespace=NS&workload=NAME`: newline-delimited JSON events until
/// the client goes away. A reader that falls behind loses events (counted
/// in `dropped`), never slows the data path.
pub fn tap(req: &Request<Incoming>, events: broadcast::Receiver<TapEvent>) -> Response<Body> {
    let namespace = query_param(req, "namespace");
    let workload = query_param(req, "workload");
    let matches = move |e: &TapEvent| {
        let peers = [&e.connection.source, &e.connection.destination];
        peers.iter().any(|p| {
            let w = p.workload.as_deref().unwrap_or("");
            let (ns, name) = w.split_once('/').unwrap_or(("", w));
            namespace.as_deref().is_none_or(|n| n == ns)
                && workload.as_deref().is_none_or(|x| x == name || x == w)
        })
    };
    let mut dropped = 0u64;
    let stream = BroadcastStream::new(events).filter_map(move |item| {
        let out = match item {
            Ok(mut event) if matches(&event) => {
                event.dropped = std::mem::take(&mut dropped);
                serde_json::to_vec(&event).ok().map(|mut line| {
                    line.push(b'\n');
                    Ok::<_, Infallible>(Frame::data(Bytes::from(line)))
                })
            }
            Ok(_) => None,
            Err(BroadcastStreamRecvError::Lagged(n)) => {
                dropped += n;
                None
            }
        };
        futures::future::ready(out)
    });
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-ndjson"),
    );
    response
}

/// `GET /logging` (the filter) and `POST /logging?level=...` (a new one).
pub fn logging(log: &LogControl, level: Option<&str>) -> Response<Body> {
    match log(level) {
        Ok(filter) => json(&LoggingResponse { filter }),
        Err(e) => full(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n")),
    }
}

/// `/healthz/ready`: 200 `ready`, or 503 with the reason.
pub fn readiness(check: Result<(), String>) -> Response<Body> {
    match check {
        Ok(()) => full(StatusCode::OK, "text/plain", "ready\n"),
        Err(reason) => full(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            format!("{reason}\n"),
        ),
    }
}

/// Wraps an admin handler for a TCP listener: only `GET` and `HEAD` reach
/// it. Mutating endpoints (`POST /logging`) are served on the admin unix
/// socket only, whose file mode decides who may use them; on TCP any
/// process of the node's network could.
pub fn read_only<F, Fut>(
    handler: F,
) -> impl Fn(Request<Incoming>) -> Either<Fut, Ready<Response<Body>>> + Clone + Send + Sync + 'static
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    move |req| {
        if req.method() == http::Method::GET || req.method() == http::Method::HEAD {
            Either::Left(handler(req))
        } else {
            Either::Right(futures::future::ready(full(
                StatusCode::FORBIDDEN,
                "text/plain",
                "mutating endpoints are served on the admin unix socket only\n",
            )))
        }
    }
}

/// A listener the admin accept loop can take connections from.
pub trait Listener: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept_io(&self) -> impl Future<Output = std::io::Result<Self::Io>> + Send;
}

impl Listener for TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept_io(&self) -> std::io::Result<Self::Io> {
        self.accept().await.map(|(s, _)| s)
    }
}

impl Listener for UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept_io(&self) -> std::io::Result<Self::Io> {
        self.accept().await.map(|(s, _)| s)
    }
}

/// What one admin, metrics or readiness server holds at most. Their clients
/// are a CLI, a scraper and the kubelet: a few connections each. Anything
/// beyond is a client that opens connections and never finishes a request,
/// which must not cost the proxy memory or file descriptors.
#[derive(Clone, Copy, Debug)]
pub struct ServeLimits {
    /// Open connections; one more is closed at once.
    pub max_connections: usize,
    /// A request's headers must arrive within this, and an idle kept-alive
    /// connection is closed after it.
    pub header_read_timeout: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            max_connections: 128,
            header_read_timeout: Duration::from_secs(5),
        }
    }
}

/// Serves `handler` on every connection `listener` accepts, until `shutdown`,
/// within the default [`ServeLimits`].
pub async fn serve<L, F, Fut>(listener: L, handler: F, shutdown: CancellationToken)
where
    L: Listener,
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    serve_with(listener, handler, shutdown, ServeLimits::default()).await
}

/// [`serve`] within `limits`.
pub async fn serve_with<L, F, Fut>(
    listener: L,
    handler: F,
    shutdown: CancellationToken,
    limits: ServeLimits,
) where
    L: Listener,
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let io = tokio::select! {
            _ = shutdown.cancelled() => return,
            io = listener.accept_io() => io,
        };
        let io = match io {
            Ok(io) => io,
            Err(e) => {
                warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::counter!("weft_admin_connections_refused_total").increment(1);
            debug!("admin connection refused: too many open");
            drop(io);
            continue;
        };
        let handler = handler.clone();
        let service = hyper::service::service_fn(move |req| {
            let handler = handler.clone();
            async move { Ok::<_, Infallible>(handler(req).await) }
        });
        tokio::spawn(async move {
            let _slot = slot;
            // hyper enforces the header timeout only with a timer.
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .serve_connection(TokioIo::new(io), service)
                .await
            {
                debug!(error = %e, "admin connection ended");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    /// Reads until the server closes; how long that took, or `None` if it
    /// stayed open past `limit`.
    async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
        let start = Instant::now();
        let mut buf = [0u8; 1024];
        loop {
            match tokio::time::timeout_at((start + limit).into(), stream.read(&mut buf)).await {
                Err(_) => return None,
                Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
                Ok(Ok(_)) => continue,
            }
        }
    }

    async fn get(addr: std::net::SocketAddr) -> std::io::Result<String> {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(b"GET /x HTTP/1.0\r\n\r\n").await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok(out)
    }

    /// Security finding 2: half-sent requests stayed open forever and
    /// their number had no bound.
    #[tokio::test]
    async fn slow_and_surplus_connections_are_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let limits = ServeLimits {
            max_connections: 4,
            header_read_timeout: Duration::from_millis(300),
        };
        let shutdown = CancellationToken::new();
        let handler = |_req| async { full(StatusCode::OK, "text/plain", "ok") };
        tokio::spawn(serve_with(listener, handler, shutdown.clone(), limits));

        let mut slow = Vec::new();
        for _ in 0..limits.max_connections {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
                .await
                .expect("half a request");
            slow.push(s);
        }
        // The slots are taken: one more is closed at once, without a reply.
        let mut surplus = TcpStream::connect(addr).await.expect("connect");
        let took = closed_within(&mut surplus, Duration::from_secs(2)).await;
        assert!(took.is_some(), "a connection over the cap stayed open");
        // The half-sent requests are closed after the header timeout...
        for s in &mut slow {
            let took = closed_within(s, Duration::from_secs(3)).await;
            assert!(took.is_some(), "a half-sent request stayed open");
        }
        // ...which frees their slots for real clients.
        let reply = get(addr).await.expect("a request after the flood");
        assert!(reply.starts_with("HTTP/1.0 200"), "{reply}");

        // Over TCP, the mutating endpoints are refused.
        shutdown.cancel();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        tokio::spawn(serve_with(
            listener,
            read_only(handler),
            shutdown.clone(),
            limits,
        ));
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"POST /logging?level=trace HTTP/1.0\r\n\r\n")
            .await
            .expect("request");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("reply");
        assert!(out.starts_with("HTTP/1.0 403"), "{out}");
        assert!(get(addr).await.expect("GET").starts_with("HTTP/1.0 200"));

        // An idle kept-alive connection does not hold a slot for ever.
        let mut idle = TcpStream::connect(addr).await.expect("connect");
        idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("request");
        let took = closed_within(&mut idle, Duration::from_secs(3)).await;
        assert!(took.is_some(), "an idle keep-alive connection stayed open");
        shutdown.cancel();
    }
}
