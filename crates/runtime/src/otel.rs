//! OpenTelemetry for both proxies: the OTLP/gRPC export pipeline that
//! `--otlp-endpoint` turns on ([`Pipeline`]), and the W3C `traceparent`
//! parser ([`TraceParent`]) for trace context that arrives outside an HTTP
//! request the SDK's propagator would read (ztunnel's HBONE `CONNECT`).
//!
//! What each proxy makes of it (spans, attributes) is its own: the
//! waypoint's `otel` module and ztunnel's.

use std::fmt;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider,
};
use tracing::warn;

use crate::flags::ProxyFlags;

/// Where spans go and how many.
#[derive(Debug, Clone)]
pub struct TracingSettings {
    /// The collector's OTLP/gRPC endpoint, e.g. `http://collector:4317`.
    pub endpoint: String,
    /// The share of new traces (no trace context arrived) that are
    /// recorded, 0.0 to 1.0. A caller's own decision is honoured.
    pub sampling: f64,
    /// The resource's `service.name`.
    pub service_name: String,
    /// More resource attributes (e.g. the node).
    pub resource: Vec<KeyValue>,
    /// How long spans wait to be sent in a batch.
    pub batch_delay: Duration,
    /// How long one export may take.
    pub export_timeout: Duration,
}

impl TracingSettings {
    pub fn new(endpoint: impl Into<String>, service_name: impl Into<String>) -> TracingSettings {
        TracingSettings {
            endpoint: endpoint.into(),
            sampling: 1.0,
            service_name: service_name.into(),
            resource: Vec::new(),
            batch_delay: Duration::from_secs(5),
            export_timeout: Duration::from_secs(10),
        }
    }

    /// The settings `--otlp-endpoint` and `--trace-sampling` ask for; `None`
    /// (no tracing) without an endpoint.
    pub fn from_flags(
        flags: &ProxyFlags,
        service_name: impl Into<String>,
    ) -> Option<TracingSettings> {
        let endpoint = flags.otlp_endpoint.as_ref()?;
        let mut settings = TracingSettings::new(endpoint.clone(), service_name);
        settings.sampling = flags.trace_sampling;
        Some(settings)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OtelError {
    #[error("trace sampling {0} is not between 0.0 and 1.0")]
    Sampling(f64),
    #[error("OTLP exporter to {endpoint}: {source}")]
    Exporter {
        endpoint: String,
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

/// The export pipeline: batches of spans to the collector from the SDK's
/// own thread, parent-based sampling. Cheap to clone.
#[derive(Clone)]
pub struct Pipeline {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pipeline").finish_non_exhaustive()
    }
}

impl Pipeline {
    /// Builds the exporter and a tracer of instrumentation scope `scope`.
    /// Call inside a Tokio runtime: the gRPC channel's worker runs on it
    /// (the channel connects lazily, so a collector that is not up yet is
    /// no error).
    pub fn new(settings: &TracingSettings, scope: &'static str) -> Result<Pipeline, OtelError> {
        if !(0.0..=1.0).contains(&settings.sampling) {
            return Err(OtelError::Sampling(settings.sampling));
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(settings.endpoint.clone())
            .with_timeout(settings.export_timeout)
            .build()
            .map_err(|source| OtelError::Exporter {
                endpoint: settings.endpoint.clone(),
                source,
            })?;
        let batch = BatchConfigBuilder::default()
            .with_scheduled_delay(settings.batch_delay)
            .build();
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(batch)
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                settings.sampling,
            ))))
            .with_resource(
                Resource::builder()
                    .with_service_name(settings.service_name.clone())
                    .with_attributes(settings.resource.iter().cloned())
                    .build(),
            )
            .build();
        let tracer = provider.tracer(scope);
        Ok(Pipeline { provider, tracer })
    }

    pub fn tracer(&self) -> &SdkTracer {
        &self.tracer
    }

    /// Sends the spans still waiting. The SDK blocks its caller while its
    /// export thread works, so this runs on a blocking thread.
    pub async fn flush(&self) {
        let provider = self.provider.clone();
        let flushed = tokio::task::spawn_blocking(move || provider.force_flush()).await;
        if let Ok(Err(e)) = flushed {
            warn!(error = %e, "flushing spans");
        }
    }

    /// Flushes and stops the exporter (on shutdown).
    pub async fn shutdown(&self) {
        let provider = self.provider.clone();
        let stopped = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if let Ok(Err(e)) = stopped {
            warn!(error = %e, "stopping the span exporter");
        }
    }
}

/// A W3C `traceparent` (Trace Context, level 1): `version-traceid-parentid-flags`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub flags: u8,
}

/// Why a `traceparent` was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TraceParentError {
    #[error("wrong length")]
    Length,
    #[error("bad version")]
    Version,
    #[error("missing '-' between fields")]
    Delimiter,
    #[error("bad trace id")]
    TraceId,
    #[error("bad parent id")]
    ParentId,
    #[error("bad flags")]
    Flags,
}

/// `00-` + 32 + `-` + 16 + `-` + 2.
const TRACEPARENT_LEN: usize = 55;

impl TraceParent {
    /// Parses a header value. Lowercase hex only, ids not all zero, version
    /// `ff` refused; a later version may append fields after a `-`, which
    /// are ignored (the specification's forward compatibility).
    pub fn parse(value: &str) -> Result<TraceParent, TraceParentError> {
        let bytes = value.as_bytes();
        if bytes.len() < TRACEPARENT_LEN {
            return Err(TraceParentError::Length);
        }
        let [version] = hex::<1>(&bytes[0..2]).ok_or(TraceParentError::Version)?;
        if version == 0xff {
            return Err(TraceParentError::Version);
        }
        let longer_ok = version != 0 && bytes.get(TRACEPARENT_LEN) == Some(&b'-');
        if bytes.len() > TRACEPARENT_LEN && !longer_ok {
            return Err(TraceParentError::Length);
        }
        if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return Err(TraceParentError::Delimiter);
        }
        let trace_id = hex::<16>(&bytes[3..35])
            .filter(|id| id.iter().any(|b| *b != 0))
            .ok_or(TraceParentError::TraceId)?;
        let parent_id = hex::<8>(&bytes[36..52])
            .filter(|id| id.iter().any(|b| *b != 0))
            .ok_or(TraceParentError::ParentId)?;
        let [flags] = hex::<1>(&bytes[53..55]).ok_or(TraceParentError::Flags)?;
        Ok(TraceParent {
            trace_id,
            parent_id,
            flags,
        })
    }

    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// The remote span context it names, with `state` (a `tracestate`).
    pub fn span_context(&self, state: TraceState) -> SpanContext {
        SpanContext::new(
            TraceId::from_bytes(self.trace_id),
            SpanId::from_bytes(self.parent_id),
            TraceFlags::new(self.flags),
            true,
            state,
        )
    }

    /// The `traceparent` that makes `cx` the parent.
    pub fn of(cx: &SpanContext) -> TraceParent {
        TraceParent {
            trace_id: cx.trace_id().to_bytes(),
            parent_id: cx.span_id().to_bytes(),
            flags: cx.trace_flags().to_u8(),
        }
    }
}

/// Always as version `00`, whatever version was parsed.
impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("00-")?;
        for b in self.trace_id {
            write!(f, "{b:02x}")?;
        }
        f.write_str("-")?;
        for b in self.parent_id {
            write!(f, "{b:02x}")?;
        }
        write!(f, "-{:02x}", self.flags)
    }
}

/// `2 * N` lowercase hex digits → `N` bytes.
fn hex<const N: usize>(digits: &[u8]) -> Option<[u8; N]> {
    fn nibble(d: u8) -> Option<u8> {
        match d {
            b'0'..=b'9' => Some(d - b'0'),
            b'a'..=b'f' => Some(d - b'a' + 10),
            _ => None,
        }
    }
    if digits.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

/// A `tracestate` header value, or `None` if it is malformed (the
/// specification: drop the `tracestate`, keep the `traceparent`).
pub fn parse_tracestate(value: &str) -> Option<TraceState> {
    value.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_parses_and_prints_back() {
        let tp = TraceParent::parse(GOOD).expect("valid");
        assert_eq!(tp.trace_id[0], 0x4b);
        assert_eq!(tp.parent_id[7], 0xb7);
        assert!(tp.sampled());
        assert_eq!(tp.to_string(), GOOD);
        let unsampled = TraceParent::parse(&GOOD.replace("-01", "-00")).expect("valid");
        assert!(!unsampled.sampled());
        let cx = tp.span_context(TraceState::default());
        assert!(cx.is_valid() && cx.is_remote() && cx.is_sampled());
        assert_eq!(TraceParent::of(&cx), tp);
    }

    #[test]
    fn malformed_traceparents_are_refused_with_the_reason() {
        use TraceParentError::*;
        let cases: &[(&str, TraceParentError)] = &[
            ("", Length),
            ("garbage", Length),
            (&GOOD[..54], Length),
            (&format!("{GOOD}-extra"), Length), // version 00 has no more fields
            (&format!("{GOOD}x"), Length),
            (&GOOD.replacen("00", "ff", 1), Version),
            (&GOOD.replacen("00", "0g", 1), Version),
            (&GOOD.replacen('-', "_", 1), Delimiter),
            (&GOOD.to_uppercase(), TraceId),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                TraceId,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                ParentId,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
                ParentId,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
                Flags,
            ),
        ];
        for (value, why) in cases {
            assert_eq!(TraceParent::parse(value), Err(*why), "{value:?}");
        }
    }

    #[test]
    fn a_later_version_may_append_fields() {
        let later = format!("01{}-more", &GOOD[2..]);
        let tp = TraceParent::parse(&later).expect("forward compatible");
        // Printed as the version this side speaks.
        assert_eq!(tp.to_string(), GOOD);
        let glued = format!("01{}more", &GOOD[2..]);
        assert_eq!(TraceParent::parse(&glued), Err(TraceParentError::Length));
    }

    #[test]
    fn tracestate_is_kept_only_when_well_formed() {
        let state = parse_tracestate("shop=web,vendor=x").expect("valid");
        assert_eq!(state.get("shop"), Some("web"));
        assert!(parse_tracestate("no equals sign").is_none());
    }
}
