//! Tracing: OpenTelemetry spans per request, exported over OTLP/gRPC.
//!
//! Off unless `--otlp-endpoint` is set: then [`crate::proxy::Proxy`] holds a
//! [`Tracing`], and without one the request path costs an `Option` check.
//!
//! Per request a SERVER span, continuing the client's W3C `traceparent` and
//! `tracestate` when it sent them (else a new trace), and per upstream
//! attempt a CLIENT span, its child, whose `traceparent`/`tracestate` go
//! upstream in place of the client's, so the application continues the
//! trace under the attempt that reached it. A new upstream connection's
//! HBONE `CONNECT` carries the `traceparent` of the attempt that opened it
//! ([`ConnectTraceparent`]): the connection is pooled, and later requests
//! on it carry their own inside.
//!
//! Sampling is parent-based: a client's sampled (or unsampled)
//! `traceparent` decides; a request without one is sampled at
//! `--trace-sampling`. Spans go out in batches from the SDK's own thread;
//! [`Tracing::shutdown`] flushes what is left.
//!
//! Spans end when the response head is known (as the request duration
//! metric does): a streamed response body is not inside them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Version};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracer;
use weft_runtime::otel::Pipeline;
pub use weft_runtime::otel::TracingSettings;

/// The tracer of a waypoint with tracing on. Cheap to clone.
#[derive(Clone)]
pub struct Tracing {
    inner: Arc<Inner>,
}

struct Inner {
    pipeline: Pipeline,
    propagator: TraceContextPropagator,
}

impl Inner {
    fn tracer(&self) -> &SdkTracer {
        self.pipeline.tracer()
    }
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracing").finish_non_exhaustive()
    }
}

impl Tracing {
    /// Builds the exporter and the tracer (`weft_runtime::otel::Pipeline`).
    pub fn new(settings: &TracingSettings) -> anyhow::Result<Tracing> {
        Ok(Tracing {
            inner: Arc::new(Inner {
                pipeline: Pipeline::new(settings, "weft-waypoint")?,
                propagator: TraceContextPropagator::new(),
            }),
        })
    }

    /// Sends the spans still waiting.
    pub async fn flush(&self) {
        self.inner.pipeline.flush().await;
    }

    /// Flushes and stops the exporter (on shutdown).
    pub async fn shutdown(&self) {
        self.inner.pipeline.shutdown().await;
    }

    /// Starts the SERVER span of a request arriving through a tunnel from
    /// `client` (its principal and original address). Its parent is the
    /// request's own `traceparent`, else the tunnel's CONNECT's
    /// (`connect_trace`, see [`connect_context`]), so a client ztunnel's
    /// connection span and the requests it carried form one trace.
    pub fn server<B>(
        &self,
        request: &Request<B>,
        connect_trace: &http::HeaderMap,
        tunnel_authority: SocketAddr,
        principal: &str,
        peer: std::net::IpAddr,
    ) -> ServerSpan {
        let carrier = match request.headers().contains_key(TRACEPARENT) {
            true => request.headers(),
            false => connect_trace,
        };
        let parent = self.inner.propagator.extract(&HeaderExtractor(carrier));
        let method = request.method();
        let host = request
            .uri()
            .host()
            .map(str::to_owned)
            .or_else(|| {
                request
                    .headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(|h| strip_port(h).to_owned())
            })
            .unwrap_or_else(|| tunnel_authority.ip().to_string());
        let attributes = vec![
            KeyValue::new("http.request.method", method_name(method)),
            KeyValue::new("url.path", request.uri().path().to_owned()),
            KeyValue::new("url.scheme", "http"),
            KeyValue::new("server.address", host),
            KeyValue::new("server.port", i64::from(tunnel_authority.port())),
            KeyValue::new("network.peer.address", peer.to_string()),
            KeyValue::new("client.address", peer.to_string()),
            KeyValue::new(
                "network.protocol.version",
                protocol_version(request.version()),
            ),
            KeyValue::new("weft.source.principal", principal.to_owned()),
        ];
        let builder = self
            .inner
            .tracer()
            .span_builder(method_name(method))
            .with_kind(SpanKind::Server)
            .with_start_time(SystemTime::now())
            .with_attributes(attributes);
        let span = self.inner.tracer().build_with_context(builder, &parent);
        ServerSpan {
            tracing: self.clone(),
            cx: parent.with_span(span),
        }
    }
}

/// A request's SERVER span, open until [`ServerSpan::end`].
pub struct ServerSpan {
    tracing: Tracing,
    /// Holds the span.
    cx: Context,
}

/// What the request came to, for its SERVER span's end.
pub struct Outcome<'a> {
    pub status: StatusCode,
    pub verdict: &'a str,
    /// The route and the index of its rule that matched.
    pub route: Option<(&'a str, usize)>,
    /// The destination Service's hostname.
    pub service: Option<&'a str>,
    /// The last endpoint tried: workload `namespace/name`, address.
    pub endpoint: Option<(String, SocketAddr)>,
    pub attempts: u32,
}

impl ServerSpan {
    /// Starts the CLIENT span of one upstream attempt to `endpoint` and puts
    /// its context on `request` (`traceparent`, `tracestate`, replacing the
    /// client's, and [`ConnectTraceparent`] for a new connection's CONNECT).
    pub fn attempt<B>(
        &self,
        request: &mut Request<B>,
        endpoint: SocketAddr,
        workload: &str,
        attempt: u32,
    ) -> ClientSpan {
        let inner = &self.tracing.inner;
        let mut attributes = vec![
            KeyValue::new("http.request.method", method_name(request.method())),
            KeyValue::new("url.path", request.uri().path().to_owned()),
            KeyValue::new("server.address", endpoint.ip().to_string()),
            KeyValue::new("server.port", i64::from(endpoint.port())),
            KeyValue::new("network.peer.address", endpoint.ip().to_string()),
            KeyValue::new("network.peer.port", i64::from(endpoint.port())),
            KeyValue::new("weft.destination.workload", workload.to_owned()),
        ];
        if attempt > 1 {
            attributes.push(KeyValue::new(
                "http.request.resend_count",
                i64::from(attempt - 1),
            ));
        }
        let builder = inner
            .tracer()
            .span_builder(method_name(request.method()))
            .with_kind(SpanKind::Client)
            .with_start_time(SystemTime::now())
            .with_attributes(attributes);
        let span = inner.tracer().build_with_context(builder, &self.cx);
        let cx = Context::new().with_remote_span_context(span.span_context().clone());
        let headers = request.headers_mut();
        headers.remove("traceparent");
        headers.remove("tracestate");
        inner
            .propagator
            .inject_context(&cx, &mut HeaderInjector(headers));
        if let Some(value) = request.headers().get("traceparent").cloned() {
            request.extensions_mut().insert(ConnectTraceparent(value));
        }
        ClientSpan { span }
    }

    /// Ends the span with what became of the request.
    pub fn end(self, outcome: Outcome<'_>) {
        let span = self.cx.span();
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(outcome.status.as_u16()),
        ));
        span.set_attribute(KeyValue::new("weft.verdict", outcome.verdict.to_owned()));
        if let Some((route, rule)) = outcome.route {
            span.set_attribute(KeyValue::new("weft.route", route.to_owned()));
            span.set_attribute(KeyValue::new("weft.route.rule", rule as i64));
        }
        if let Some(service) = outcome.service {
            span.set_attribute(KeyValue::new(
                "weft.destination.service",
                service.to_owned(),
            ));
        }
        if let Some((workload, addr)) = outcome.endpoint {
            span.set_attribute(KeyValue::new("weft.destination.workload", workload));
            span.set_attribute(KeyValue::new("weft.destination.address", addr.to_string()));
        }
        span.set_attribute(KeyValue::new("weft.attempts", i64::from(outcome.attempts)));
        // A server's 4xx is the client's doing: only 5xx is an error here.
        if outcome.status.is_server_error() {
            span.set_attribute(KeyValue::new(
                "error.type",
                outcome.status.as_u16().to_string(),
            ));
            span.set_status(Status::error(outcome.verdict.to_owned()));
        }
        span.end();
    }
}

/// One upstream attempt's CLIENT span.
pub struct ClientSpan {
    span: opentelemetry_sdk::trace::Span,
}

impl ClientSpan {
    /// The endpoint answered `status`. A client's 4xx and 5xx are errors.
    pub fn answered(mut self, status: StatusCode) {
        self.span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status.as_u16()),
        ));
        if status.is_client_error() || status.is_server_error() {
            self.span
                .set_attribute(KeyValue::new("error.type", status.as_u16().to_string()));
            self.span.set_status(Status::error(status.to_string()));
        }
        self.span.end();
    }

    /// The attempt got no answer: `kind` names why (`error.type`).
    pub fn failed(mut self, kind: &'static str, why: String) {
        self.span.set_attribute(KeyValue::new("error.type", kind));
        self.span.set_status(Status::error(why));
        self.span.end();
    }
}

const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

/// The trace context of a tunnel's CONNECT headers, kept only when its
/// `traceparent` is well-formed (a bad one is ignored, never refused: the
/// tunnel is the client's traffic, the header only a hint).
pub fn connect_context(headers: &http::HeaderMap) -> http::HeaderMap {
    let mut out = http::HeaderMap::new();
    let Some(traceparent) = headers.get(TRACEPARENT) else {
        return out;
    };
    let valid = traceparent
        .to_str()
        .ok()
        .is_some_and(|v| weft_runtime::otel::TraceParent::parse(v).is_ok());
    if !valid {
        tracing::debug!("the tunnel's CONNECT carries a malformed traceparent; ignored");
        return out;
    }
    out.insert(TRACEPARENT, traceparent.clone());
    if let Some(state) = headers.get(TRACESTATE)
        && state
            .to_str()
            .ok()
            .and_then(weft_runtime::otel::parse_tracestate)
            .is_some()
    {
        out.insert(TRACESTATE, state.clone());
    }
    out
}

/// The `traceparent` a new upstream connection's HBONE `CONNECT` carries:
/// that of the attempt that opened it (a request extension; the pool reads
/// it only when it dials).
#[derive(Debug, Clone)]
pub struct ConnectTraceparent(pub HeaderValue);

impl ConnectTraceparent {
    /// The value on `request`, if tracing put one there.
    pub fn of<B>(request: &Request<B>) -> Option<String> {
        request
            .extensions()
            .get::<ConnectTraceparent>()
            .and_then(|t| t.0.to_str().ok())
            .map(str::to_owned)
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// The method for `http.request.method`: the known ones by name, any
/// other as `_OTHER` (the semantic conventions' bound on cardinality).
fn method_name(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "_OTHER",
    }
}

fn protocol_version(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// `host[:port]` → `host` (an IPv6 literal keeps its brackets off).
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_lose_their_port() {
        assert_eq!(strip_port("reviews.shop:8080"), "reviews.shop");
        assert_eq!(strip_port("reviews.shop"), "reviews.shop");
        assert_eq!(strip_port("[::1]:80"), "::1");
    }

    #[test]
    fn unknown_methods_are_other() {
        assert_eq!(method_name(&Method::GET), "GET");
        assert_eq!(
            method_name(&Method::from_bytes(b"PURGE").expect("method")),
            "_OTHER"
        );
    }
}
