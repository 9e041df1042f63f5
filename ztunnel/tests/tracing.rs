//! ztunnel's connection spans end to end: one ztunnel's pods on the
//! in-process pod network (tests/bed), real HBONE, exporting over OTLP/gRPC
//! to a real OpenTelemetry Collector (e2e/otelcol, built by
//! scripts/build-otelcol.sh, as waypoint/tests/tracing.rs runs it); the
//! tests read back what the collector wrote.

mod bed;

use std::net::SocketAddr;
use std::time::Duration;

use bed::*;
use weft_api::config::{Workload, resource};
use weft_runtime::otel::TracingSettings;
use weft_testkit::otelcol::*;
use weft_ztunnel::otel::Tracing;
use weft_ztunnel::proxy::OUTBOUND_PORT;

/// ztunnel's tracer sending to `collector` at `sampling`, batches every
/// 100 ms.
fn tracing(collector: &Collector, sampling: f64) -> Tracing {
    let mut settings = TracingSettings::new(collector.endpoint(), "ztunnel");
    settings.batch_delay = Duration::from_millis(100);
    settings.sampling = sampling;
    Tracing::new(&settings).expect("tracing")
}

fn principal(w: &Workload) -> String {
    format!("spiffe://{TD}/ns/{}/sa/{}", w.namespace, w.service_account)
}

/// `client`'s captured connection to `server`'s application, tunnelled
/// out: it must be answered.
async fn outbound_to(bed: &Bed, client: &Workload, server: &Workload) {
    let dst = SocketAddr::new(ip(server), APP_PORT);
    let reply = bed.exchange(ip(client), OUTBOUND_PORT, dst).await;
    assert_eq!(reply.as_deref(), Some("server:hello"));
}

/// A tunnel to `server` as `client` whose CONNECT carries `traceparent`:
/// it must be answered.
async fn connect_with(bed: &Bed, client: &Workload, server: &Workload, traceparent: String) {
    let reply = bed
        .tunnel_with(&principal(client), server, Some(traceparent.clone()))
        .await;
    assert_eq!(
        reply.as_deref(),
        Some("server:hello"),
        "with traceparent {traceparent:?}"
    );
}

/// Opens a tunnel with a sampled `traceparent` after the ones under test
/// and waits for its span: spans leave in the order they end, so the
/// earlier tunnels' would be in by then. Returns every span received.
async fn spans_after_a_marker(
    collector: &Collector,
    bed: &Bed,
    client: &Workload,
    server: &Workload,
) -> Vec<Span> {
    let (marker, _, traceparent) = client_trace("01");
    connect_with(bed, client, server, traceparent).await;
    collector
        .wait_for("the marker CONNECT's span", |spans| {
            first_of_kind(spans, &marker, SERVER)
        })
        .await;
    collector.spans()
}

/// A client and a server pod of one traced ztunnel, and `extra` beside
/// them (meshed, with an application).
async fn traced_bed(
    collector: &Collector,
    sampling: f64,
    extra: &[&Workload],
    more: Vec<resource::Kind>,
) -> (Bed, Workload, Workload) {
    let client = workload("client", "10.0.0.1", true);
    let server = workload("server", "10.0.0.2", true);
    let mut pods = vec![&client, &server];
    pods.extend_from_slice(extra);
    let mut config: Vec<resource::Kind> = pods
        .iter()
        .map(|w| resource::Kind::Workload((*w).clone()))
        .collect();
    config.extend(more);
    let bed = Bed::traced(Some(tracing(collector, sampling)), config, &pods, &pods).await;
    (bed, client, server)
}

// The proxies run on the current-thread scheduler with one thread
// (`ProxyFlags::runtime`): spans must reach the collector from it too.
#[tokio::test(flavor = "current_thread")]
async fn a_connect_with_a_traceparent_gets_a_server_span_under_it() {
    let collector = Collector::start();
    let (bed, client, server) = traced_bed(&collector, 1.0, &[], vec![]).await;

    let (trace, sent_span, traceparent) = client_trace("01");
    connect_with(&bed, &client, &server, traceparent).await;

    let span = collector
        .wait_for("ztunnel's SERVER span", |spans| {
            first_of_kind(spans, &trace, SERVER)
        })
        .await;
    assert_eq!(span.parent(), sent_span, "{span:#?}");
    assert_eq!(span.service.as_deref(), Some("ztunnel"));
    span.assert_attrs(&[
        ("weft.source.principal", &principal(&client)),
        ("weft.destination.principal", &principal(&server)),
        ("weft.destination.workload", "shop/server"),
        ("weft.destination.address", "10.0.0.2:8080"),
        ("server.address", "10.0.0.2"),
        ("server.port", "8080"),
        ("weft.result", "allow"),
        // Into the tunnel (the application's answer) and out of it.
        ("weft.bytes.sent", "12"),
        ("weft.bytes.received", "5"),
    ]);
    assert_ne!(span.status_code(), STATUS_ERROR);
    let start: u128 = span.json["startTimeUnixNano"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .expect("a start time");
    let end: u128 = span.json["endTimeUnixNano"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .expect("an end time");
    assert!(end > start, "the span lasts the connection: {span:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_traceparent_is_ignored_and_the_connection_works() {
    let collector = Collector::start();
    let (bed, client, server) = traced_bed(&collector, 1.0, &[], vec![]).await;
    let (_, _, good) = client_trace("01");
    let malformed = [
        "garbage".to_owned(),
        good.to_uppercase(),
        good.replacen("00-", "ff-", 1),
        format!("{good}-extra"),
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01".to_owned(),
    ];
    for traceparent in malformed {
        connect_with(&bed, &client, &server, traceparent).await;
    }
    let spans = spans_after_a_marker(&collector, &bed, &client, &server).await;
    assert_eq!(spans.len(), 1, "no span for the malformed ones: {spans:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbound_tunnel_sends_its_client_spans_context_on_the_connect() {
    let collector = Collector::start();
    let (bed, client, server) = traced_bed(&collector, 1.0, &[], vec![]).await;
    outbound_to(&bed, &client, &server).await;

    // The CLIENT span starts a trace; the destination's SERVER span (the
    // same ztunnel here) continues it from the CONNECT.
    let (outbound, inbound) = collector
        .wait_for("the outbound CLIENT and inbound SERVER spans", |spans| {
            let outbound = spans.iter().find(|s| s.kind() == CLIENT)?;
            let inbound = of_kind(spans, outbound.trace_id(), SERVER)
                .first()
                .cloned()?;
            Some((outbound.clone(), inbound.clone()))
        })
        .await;
    assert_eq!(outbound.parent(), "", "a root: {outbound:#?}");
    assert_eq!(inbound.parent(), outbound.span_id(), "{inbound:#?}");
    outbound.assert_attrs(&[
        ("weft.source.principal", &principal(&client)),
        ("weft.source.workload", "shop/client"),
        ("weft.destination.principal", &principal(&server)),
        ("weft.destination.workload", "shop/server"),
        ("server.address", "10.0.0.2"),
        ("server.port", "8080"),
        ("weft.result", "allow"),
        ("weft.bytes.sent", "5"),
        ("weft.bytes.received", "12"),
    ]);
    inbound.assert_attrs(&[
        ("weft.source.principal", &principal(&client)),
        ("weft.result", "allow"),
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_decides_outbound_and_the_callers_flag_inbound() {
    let collector = Collector::start();
    let (bed, client, server) = traced_bed(&collector, 0.0, &[], vec![]).await;
    // At ratio 0 an outbound tunnel makes no span and sends no context.
    outbound_to(&bed, &client, &server).await;
    // A caller's unsampled trace stays unrecorded.
    let (declined, _, traceparent) = client_trace("00");
    connect_with(&bed, &client, &server, traceparent).await;
    // A caller's sampled one is recorded whatever the ratio.
    let spans = spans_after_a_marker(&collector, &bed, &client, &server).await;
    assert!(
        spans.len() == 1 && spans.iter().all(|s| s.trace_id() != declined),
        "only the sampled trace: {spans:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_tunnel_has_its_span_with_the_reason() {
    let collector = Collector::start();
    let (locked, deny_all) = locked_behind_deny_all();
    let (bed, client, _) = traced_bed(
        &collector,
        1.0,
        &[&locked],
        vec![resource::Kind::Authorization(deny_all)],
    )
    .await;
    let (trace, sent_span, traceparent) = client_trace("01");
    let reply = bed
        .tunnel_with(&principal(&client), &locked, Some(traceparent))
        .await;
    assert_eq!(reply, None, "refused by policy");
    let span = collector
        .wait_for("the refused tunnel's span", |spans| {
            first_of_kind(spans, &trace, SERVER)
        })
        .await;
    assert_eq!(span.parent(), sent_span);
    span.assert_attrs(&[
        ("weft.result", "policy"),
        ("weft.destination.workload", "locked/locked"),
    ]);
    assert_ne!(
        span.status_code(),
        STATUS_ERROR,
        "policy doing its job is no error"
    );
}
