//! Connection spans, exported over OTLP/gRPC when `--otlp-endpoint` is set
//! (the pipeline is the runtime's, shared with the waypoint).
//!
//! - Inbound: an HBONE `CONNECT` that carries a W3C `traceparent` (a
//!   waypoint's upstream attempt, or another ztunnel's outbound span) gets a
//!   SERVER span, its child, from the `CONNECT` to the connection's close.
//!   Without one, or with a malformed one (logged at debug, never a reason
//!   to refuse), there is no span: an application's raw TCP carries no
//!   context to continue.
//! - Outbound: a tunnelled connection gets a CLIENT span at the root of a
//!   new trace, sampled at `--trace-sampling`; a sampled one's context goes
//!   on the `CONNECT`, so the destination's ztunnel (or waypoint) hangs its
//!   span under it. An unsampled connection sends no `traceparent`.
//!
//! With tracing off, [`ConnectionSpan::none`] holds nothing and every call on
//! it returns at once: no allocation per connection.

use std::time::SystemTime;

use http::HeaderMap;
use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::Span;
use tracing::debug;
use weft_api::admin::Peer;
use weft_hbone::ByteCounters;
use weft_runtime::otel::{OtelError, Pipeline, TraceParent, TracingSettings, parse_tracestate};

use crate::connections::ConnectionMeta;

/// ztunnel's tracer, present only with tracing on. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Tracing {
    pipeline: Pipeline,
}

impl Tracing {
    pub fn new(settings: &TracingSettings) -> Result<Tracing, OtelError> {
        Ok(Tracing {
            pipeline: Pipeline::new(settings, "weft-ztunnel")?,
        })
    }

    /// Sends the spans still waiting.
    pub async fn flush(&self) {
        self.pipeline.flush().await;
    }

    /// Flushes and stops the exporter (after the drain).
    pub async fn shutdown(&self) {
        self.pipeline.shutdown().await;
    }

    /// The SERVER span of an inbound tunnel, if its `CONNECT` carried a
    /// sampled, well-formed `traceparent`.
    pub fn inbound(&self, headers: &HeaderMap, meta: &ConnectionMeta) -> ConnectionSpan {
        let Some(value) = headers.get("traceparent") else {
            return ConnectionSpan::none();
        };
        let parent = match value.to_str().map(TraceParent::parse) {
            Ok(Ok(parent)) => parent,
            Ok(Err(why)) => {
                debug!(traceparent = ?value, %why, "ignoring a malformed traceparent");
                return ConnectionSpan::none();
            }
            Err(_) => {
                debug!(traceparent = ?value, "ignoring a traceparent that is not text");
                return ConnectionSpan::none();
            }
        };
        // The parent-based sampler would make an unsampled child a
        // non-recording span: skip building it.
        if !parent.sampled() {
            return ConnectionSpan::none();
        }
        let state = headers
            .get("tracestate")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let state = parse_tracestate(v);
                if state.is_none() {
                    debug!(tracestate = v, "ignoring a malformed tracestate");
                }
                state
            })
            .unwrap_or_default();
        let parent = Context::new().with_remote_span_context(parent.span_context(state));
        let tracer = self.pipeline.tracer();
        let builder = tracer
            .span_builder("inbound")
            .with_kind(SpanKind::Server)
            .with_start_time(SystemTime::now())
            .with_attributes(attributes(meta));
        ConnectionSpan {
            span: Some(tracer.build_with_context(builder, &parent)),
        }
    }

    /// The CLIENT span of an outbound tunnel, if this new trace is sampled.
    pub fn outbound(&self, meta: &ConnectionMeta) -> ConnectionSpan {
        let tracer = self.pipeline.tracer();
        let builder = tracer
            .span_builder("outbound")
            .with_kind(SpanKind::Client)
            .with_start_time(SystemTime::now());
        let mut span = tracer.build_with_context(builder, &Context::new());
        if !span.span_context().is_sampled() {
            return ConnectionSpan::none();
        }
        // Attributes only once sampled: an unsampled connection costs the
        // ids and the sampler's decision, no strings.
        span.set_attributes(attributes(meta));
        ConnectionSpan { span: Some(span) }
    }
}

/// The attributes known when a connection starts: both ends' workloads and
/// SPIFFE identities, the destination address, the waypoint if through one.
fn attributes(meta: &ConnectionMeta) -> Vec<KeyValue> {
    let mut attributes = Vec::with_capacity(9);
    let mut end = |side: &str, peer: &Peer| {
        if let Some(identity) = &peer.identity {
            attributes.push(KeyValue::new(
                format!("weft.{side}.principal"),
                identity.clone(),
            ));
        }
        if let Some(workload) = &peer.workload {
            attributes.push(KeyValue::new(
                format!("weft.{side}.workload"),
                workload.clone(),
            ));
        }
        attributes.push(KeyValue::new(
            format!("weft.{side}.address"),
            peer.address.clone(),
        ));
    };
    end("source", &meta.source);
    end("destination", &meta.destination);
    if let Ok(addr) = meta.destination.address.parse::<std::net::SocketAddr>() {
        attributes.push(KeyValue::new("server.address", addr.ip().to_string()));
        attributes.push(KeyValue::new("server.port", i64::from(addr.port())));
    }
    if let Some(waypoint) = &meta.waypoint {
        attributes.push(KeyValue::new("weft.waypoint", waypoint.clone()));
    }
    attributes
}

/// A connection's span, or nothing (tracing off, not sampled, no context).
/// Dropped without an end (a handler that returned early), the span ends
/// with what it has.
pub struct ConnectionSpan {
    span: Option<Span>,
}

impl ConnectionSpan {
    pub fn none() -> ConnectionSpan {
        ConnectionSpan { span: None }
    }

    /// The `traceparent` for the `CONNECT`, making this span the parent.
    pub fn traceparent(&self) -> Option<String> {
        self.span
            .as_ref()
            .map(|span| TraceParent::of(span.span_context()).to_string())
    }

    /// The mesh refused the connection: `label` as in
    /// `weft_tcp_connections_denied_total`'s `reason`. A refusal is policy
    /// doing its job, not an error of this proxy, unless `failed`.
    pub fn refused(mut self, label: &str, reason: &str, failed: bool) {
        let Some(span) = self.span.as_mut() else {
            return;
        };
        span.set_attribute(KeyValue::new("weft.result", label.to_owned()));
        span.set_attribute(KeyValue::new("weft.reason", reason.to_owned()));
        if failed {
            span.set_attribute(KeyValue::new("error.type", label.to_owned()));
            span.set_status(Status::error(reason.to_owned()));
        }
        span.end();
    }

    /// The connection closed after `counters`' bytes, with `error` if it
    /// ended with one.
    pub fn closed(mut self, counters: &ByteCounters, error: Option<&std::io::Error>) {
        let Some(span) = self.span.as_mut() else {
            return;
        };
        span.set_attribute(KeyValue::new("weft.bytes.sent", counters.sent() as i64));
        span.set_attribute(KeyValue::new(
            "weft.bytes.received",
            counters.received() as i64,
        ));
        match error {
            None => span.set_attribute(KeyValue::new("weft.result", "allow")),
            Some(e) => {
                span.set_attribute(KeyValue::new("weft.result", "error"));
                span.set_attribute(KeyValue::new("error.type", "io_error"));
                span.set_status(Status::error(e.to_string()));
            }
        }
        span.end();
    }
}
