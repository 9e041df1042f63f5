//! The HTTP side of an admin API, shared by ztunnel and the waypoint: JSON
//! and text responses, the `/tap` stream, `/logging`, readiness, and the
//! accept loops on TCP and unix listeners.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use weft_api::admin::{LoggingResponse, TapEvent};

use super::LogControl;

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

/// Serves `handler` on every connection `accept` yields, until `shutdown`.
async fn serve<IO, A, F, Fut>(mut accept: A, handler: F, shutdown: CancellationToken)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    A: FnMut() -> futures::future::BoxFuture<'static, std::io::Result<IO>>,
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    loop {
        let io = tokio::select! {
            _ = shutdown.cancelled() => return,
            io = accept() => io,
        };
        let io = match io {
            Ok(io) => io,
            Err(e) => {
                warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let handler = handler.clone();
        let service = hyper::service::service_fn(move |req| {
            let handler = handler.clone();
            async move { Ok::<_, Infallible>(handler(req).await) }
        });
        tokio::spawn(async move {
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(io), service)
                .await
            {
                debug!(error = %e, "admin connection ended");
            }
        });
    }
}

/// Serves `handler` on a TCP listener until `shutdown`.
pub async fn serve_tcp<F, Fut>(listener: TcpListener, handler: F, shutdown: CancellationToken)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let listener = Arc::new(listener);
    let accept = move || -> futures::future::BoxFuture<'static, _> {
        let l = listener.clone();
        Box::pin(async move { l.accept().await.map(|(s, _)| s) })
    };
    serve(accept, handler, shutdown).await;
}

/// Serves `handler` on a unix socket until `shutdown`.
pub async fn serve_unix<F, Fut>(listener: UnixListener, handler: F, shutdown: CancellationToken)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let listener = Arc::new(listener);
    let accept = move || -> futures::future::BoxFuture<'static, _> {
        let l = listener.clone();
        Box::pin(async move { l.accept().await.map(|(s, _)| s) })
    };
    serve(accept, handler, shutdown).await;
}
