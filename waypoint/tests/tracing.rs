//! Tracing end to end: the waypoint on loopback (real HBONE, real hyper
//! clients, stand-in pods) exports its spans over OTLP/gRPC to a real
//! OpenTelemetry Collector (e2e/otelcol, built by scripts/build-otelcol.sh),
//! whose file exporter writes what it received as OTLP JSON lines; the tests
//! read them back and check the spans, their parents and attributes, and the
//! `traceparent` the application received.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::*;
use weft_api::config::{Action, Operation, Rule};
use weft_testkit::otelcol::*;
use weft_waypoint::otel::{Tracing, TracingSettings};

/// A waypoint's tracer sending to `collector`.
fn tracing(collector: &Collector) -> Tracing {
    tracing_with(collector, |_| {})
}

/// A waypoint's tracer sending to `collector`, batches every 100 ms unless
/// `tune` says otherwise.
fn tracing_with(collector: &Collector, tune: impl FnOnce(&mut TracingSettings)) -> Tracing {
    let mut settings = TracingSettings::new(collector.endpoint(), "waypoint.shop");
    settings.batch_delay = Duration::from_millis(100);
    tune(&mut settings);
    Tracing::new(&settings).expect("tracing")
}

/// A mesh whose waypoint traces with `tracing`, and a Service `reviews`
/// bound to it over one pod.
async fn traced_mesh(tracing: Tracing) -> (Mesh, SocketAddr, Pod) {
    let mut mesh = Mesh::with(|s| s.tracing = Some(tracing)).await;
    let pod = mesh.pod("reviews-1", "reviews").await;
    let vip = mesh.service("reviews", &[&pod], true);
    (mesh, vip, pod)
}

// The proxies run on the current-thread scheduler with one thread
// (`ProxyFlags::runtime`): spans must reach the collector from it too.
#[tokio::test(flavor = "current_thread")]
async fn a_request_continues_the_clients_trace_through_the_waypoint() {
    let collector = Collector::start();
    let (mut mesh, vip, _pod) = traced_mesh(tracing(&collector)).await;
    mesh.apply();
    let web = mesh.client(NS, "web");

    let (trace, client_span, traceparent) = client_trace("01");
    let reply = web
        .request(
            vip,
            "GET",
            "/reviews/1",
            &[("traceparent", &traceparent), ("tracestate", "shop=web")],
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let seen = reply.json()["headers"].clone();
    let app_traceparent = seen["traceparent"]
        .as_str()
        .expect("the app received a traceparent")
        .to_owned();
    assert_eq!(seen["tracestate"], "shop=web", "tracestate passes on");

    let (server, client) = collector
        .wait_for("SERVER and CLIENT span of the request", |spans| {
            server_and_client(spans, &trace)
        })
        .await;

    // The SERVER span continues the client's trace under the client's span.
    assert_eq!(server.parent(), client_span, "{server:#?}");
    assert_eq!(server.service.as_deref(), Some("waypoint.shop"));
    server.assert_attrs(&[
        ("http.request.method", "GET"),
        ("url.path", "/reviews/1"),
        ("http.response.status_code", "200"),
        ("server.address", "reviews.shop.svc.cluster.local"),
        ("server.port", "80"),
        (
            "weft.source.principal",
            "spiffe://cluster.local/ns/shop/sa/web",
        ),
        ("weft.verdict", "allow"),
        ("weft.destination.service", "reviews.shop.svc.cluster.local"),
        ("weft.destination.workload", "shop/reviews-1"),
        ("weft.attempts", "1"),
    ]);
    // The client as the waypoint knows it (the tunnel's verified peer).
    let peer = server.attr("network.peer.address").unwrap_or_default();
    assert!(
        peer.parse::<std::net::IpAddr>().is_ok(),
        "network.peer.address {peer:?}"
    );
    assert_ne!(server.status_code(), STATUS_ERROR);

    // The CLIENT span is the SERVER span's child, one per attempt.
    assert_eq!(client.parent(), server.span_id(), "{client:#?}");
    client.assert_attrs(&[
        ("http.request.method", "GET"),
        ("http.response.status_code", "200"),
        ("weft.destination.workload", "shop/reviews-1"),
        ("server.port", "8080"),
    ]);

    // The app continues the trace under the CLIENT span.
    let (app_trace, app_parent, flags) = parse_traceparent(&app_traceparent);
    assert_eq!(app_trace, trace);
    assert_eq!(app_parent, client.span_id());
    assert_eq!(flags, "01");
}

/// A request that brings no `traceparent` of its own continues the trace of
/// the tunnel it came in (a client ztunnel's connection span, sent on the
/// CONNECT); a malformed one on the CONNECT is ignored and the request
/// starts a trace of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_its_own_traceparent_continues_the_tunnels() {
    use http_body_util::BodyExt;
    let collector = Collector::start();
    let (mut mesh, vip, _pod) = traced_mesh(tracing(&collector)).await;
    mesh.apply();
    let web = mesh.client(NS, "web");
    let get = |path: &str| {
        hyper::Request::get(path)
            .header("host", "reviews.shop.svc.cluster.local")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .expect("request")
    };
    let send = |stream, request| async move {
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .expect("HTTP/1.1 handshake");
        tokio::spawn(conn);
        let response = sender.send_request(request).await.expect("answer");
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).expect("the app's JSON");
        (
            status,
            json["headers"]["traceparent"].as_str().map(str::to_owned),
        )
    };

    let (trace, connection_span, traceparent) = client_trace("01");
    let stream = web
        .tunnel_traced(vip, Some(traceparent))
        .await
        .expect("tunnel");
    let (status, app) = send(stream, get("/in-a-traced-tunnel")).await;
    assert_eq!(status, 200);
    let (app_trace, _, _) = parse_traceparent(&app.expect("the app got a traceparent"));
    assert_eq!(app_trace, trace, "the request joined the tunnel's trace");
    let (server, _) = collector
        .wait_for("the request's spans in the tunnel's trace", |spans| {
            server_and_client(spans, &trace)
        })
        .await;
    assert_eq!(server.parent(), connection_span, "{server:#?}");
    server.assert_attrs(&[("url.path", "/in-a-traced-tunnel")]);

    let stream = web
        .tunnel_traced(vip, Some("00-not-a-trace".into()))
        .await
        .expect("a malformed traceparent does not refuse the tunnel");
    let (status, app) = send(stream, get("/in-a-bad-tunnel")).await;
    assert_eq!(status, 200);
    let (own, _, _) = parse_traceparent(&app.expect("the app got a traceparent"));
    assert_ne!(own, trace);
    let (server, _) = collector
        .wait_for("the request's own trace", |spans| {
            server_and_client(spans, &own)
        })
        .await;
    assert_eq!(server.parent(), "", "a root span: {server:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_traceparent_starts_a_trace() {
    let collector = Collector::start();
    let (mut mesh, vip, _pod) = traced_mesh(tracing(&collector)).await;
    mesh.apply();
    let web = mesh.client(NS, "web");

    let reply = web.get(vip, "/fresh").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let app_traceparent = reply.json()["headers"]["traceparent"]
        .as_str()
        .expect("the app received a traceparent")
        .to_owned();
    let (trace, parent, flags) = parse_traceparent(&app_traceparent);
    assert_eq!(flags, "01", "sampled at the default ratio 1.0");

    let (server, client) = collector
        .wait_for("the new trace's spans", |spans| {
            server_and_client(spans, &trace)
        })
        .await;
    assert_eq!(server.parent(), "", "a root span: {server:#?}");
    server.assert_attrs(&[("url.path", "/fresh")]);
    assert_eq!(client.parent(), server.span_id());
    assert_eq!(parent, client.span_id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_has_its_server_span_with_403() {
    let collector = Collector::start();
    let (mut mesh, vip, pod) = traced_mesh(tracing(&collector)).await;
    let no_posts = Rule {
        to: vec![Operation {
            methods: vec!["POST".into()],
            ..Default::default()
        }],
        ..Default::default()
    };
    mesh.policies.push(waypoint_policy(
        "no-posts",
        "Service",
        "reviews",
        Action::Deny,
        vec![no_posts],
    ));
    mesh.apply();
    let web = mesh.client(NS, "web");

    let (trace, client_span, traceparent) = client_trace("01");
    let post = web
        .request(vip, "POST", "/reviews/1", &[("traceparent", &traceparent)])
        .await;
    assert_eq!(post.status, 403);
    assert_eq!(
        pod.state.requests.load(std::sync::atomic::Ordering::SeqCst),
        0
    );

    let server = collector
        .wait_for("the refused request's SERVER span", |spans| {
            first_of_kind(spans, &trace, SERVER)
        })
        .await;
    assert_eq!(server.parent(), client_span);
    server.assert_attrs(&[
        ("http.request.method", "POST"),
        ("http.response.status_code", "403"),
    ]);
    let verdict = server.attr("weft.verdict").unwrap_or_default();
    assert!(
        !verdict.is_empty() && verdict != "allow",
        "the verdict names the refusal: {verdict}"
    );
    assert_ne!(
        server.status_code(),
        STATUS_ERROR,
        "a 403 is the client's doing, no server error"
    );
    // Nothing went upstream, so no CLIENT span.
    assert!(of_kind(&collector.spans(), &trace, CLIENT).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_is_parent_based() {
    let collector = Collector::start();
    let tracing = tracing_with(&collector, |s| s.sampling = 0.0);
    let (mut mesh, vip, _pod) = traced_mesh(tracing).await;
    mesh.apply();
    let web = mesh.client(NS, "web");

    // A new trace at ratio 0 is not recorded, but still propagated, as
    // not sampled.
    let reply = web.get(vip, "/unsampled").await;
    let seen = reply.json()["headers"]["traceparent"].clone();
    let (unsampled, _, flags) = parse_traceparent(seen.as_str().expect("a traceparent"));
    assert_eq!(flags, "00");
    // A client's unsampled trace stays unsampled.
    let (declined, _, traceparent) = client_trace("00");
    let reply = web
        .request(vip, "GET", "/declined", &[("traceparent", &traceparent)])
        .await;
    let seen = reply.json()["headers"]["traceparent"].clone();
    let (trace, _, flags) = parse_traceparent(seen.as_str().expect("a traceparent"));
    assert_eq!((trace.as_str(), flags.as_str()), (declined.as_str(), "00"));
    // A client's sampled trace is recorded whatever the ratio.
    let (sampled, _, traceparent) = client_trace("01");
    let reply = web
        .request(vip, "GET", "/sampled", &[("traceparent", &traceparent)])
        .await;
    assert_eq!(reply.status, 200);
    collector
        .wait_for("the sampled request's spans", |spans| {
            server_and_client(spans, &sampled)
        })
        .await;
    // Spans leave in the order they end: the earlier requests' would be
    // there by now.
    let spans = collector.spans();
    assert!(
        spans
            .iter()
            .all(|s| s.trace_id() != unsampled && s.trace_id() != declined),
        "unsampled traces were recorded: {spans:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_still_batched_are_sent_on_shutdown() {
    let collector = Collector::start();
    // A batch that would wait a minute.
    let tracing = tracing_with(&collector, |s| s.batch_delay = Duration::from_secs(60));
    let (mut mesh, vip, _pod) = traced_mesh(tracing.clone()).await;
    mesh.apply();
    let web = mesh.client(NS, "web");
    let (trace, _, traceparent) = client_trace("01");
    let reply = web
        .request(vip, "GET", "/", &[("traceparent", &traceparent)])
        .await;
    assert_eq!(reply.status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        of_kind(&collector.spans(), &trace, SERVER).is_empty(),
        "the batch waits"
    );
    // What the waypoint process does after its drain.
    tracing.shutdown().await;
    let (server, client) = server_and_client(&collector.spans(), &trace)
        .expect("the batch was sent before shutdown returned");
    assert_eq!(client.parent(), server.span_id());
}

/// A pod whose stand-in ztunnel records each HBONE `CONNECT`'s
/// `traceparent` and answers every request inside with 200.
struct ConnectRecorder {
    traceparents: std::sync::Arc<std::sync::Mutex<Vec<Option<String>>>>,
}

impl weft_hbone::TunnelHandler for ConnectRecorder {
    async fn handle(&self, tunnel: weft_hbone::InboundTunnel) {
        let traceparent = tunnel
            .headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        self.traceparents.lock().unwrap().push(traceparent);
        let Ok(stream) = tunnel.accept() else { return };
        let service = hyper::service::service_fn(|_req| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                bytes::Bytes::from_static(b"{}"),
            )))
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_upstream_connection_carries_the_opening_attempts_traceparent() {
    let collector = Collector::start();
    let tracing = tracing(&collector);
    let mut mesh = Mesh::with(|s| s.tracing = Some(tracing)).await;
    // A pod of the mesh's own for its address range, then one beside it
    // whose ztunnel stand-in records the CONNECTs.
    let other = mesh.pod("other-1", "other").await;
    let std::net::IpAddr::V4(v4) = other.ip else {
        panic!("IPv4 mesh")
    };
    let [a, b, c, _] = v4.octets();
    let ip = std::net::IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, 240));
    let traceparents = std::sync::Arc::default();
    let cert = mesh.ca.issue(&id(NS, "reviews"));
    let server = weft_hbone::HboneServer::new(
        weft_hbone::tls::server_config(&cert, &mesh.ca.bundle).expect("server config"),
        ConnectRecorder {
            traceparents: std::sync::Arc::clone(&traceparents),
        },
        weft_hbone::ServerSettings::default(),
    );
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(ip, mesh.hbone_port))
        .await
        .expect("bind the pod's HBONE port");
    let stop = mesh.shutdown.clone();
    tokio::spawn(async move { server.serve(listener, stop).await });
    let pod = Pod {
        name: "reviews-1".into(),
        namespace: NS.into(),
        ip,
        uid: format!("{NS}-reviews-1"),
        state: Default::default(),
    };
    mesh.workloads.push(weft_api::config::Workload {
        uid: pod.uid.clone(),
        name: pod.name.clone(),
        namespace: NS.into(),
        service_account: "reviews".into(),
        trust_domain: TD.into(),
        node: "node-a".into(),
        addresses: vec![ip.to_string()],
        protocol: weft_api::config::TunnelProtocol::Hbone as i32,
        ..Default::default()
    });
    let vip = mesh.service("reviews", &[&pod], true);
    mesh.apply();
    let web = mesh.client(NS, "web");

    let (first, _, first_traceparent) = client_trace("01");
    let (second, _, second_traceparent) = client_trace("01");
    for traceparent in [first_traceparent, second_traceparent] {
        let reply = web
            .request(vip, "GET", "/", &[("traceparent", &traceparent)])
            .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }

    // One upstream connection for both requests (pooling holds), opened by
    // the first request's attempt.
    let seen = traceparents.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "one CONNECT, reused: {seen:?}");
    let connect = seen[0].clone().expect("the CONNECT carries a traceparent");
    let (trace, parent, flags) = parse_traceparent(&connect);
    assert_eq!(trace, first);
    assert_eq!(flags, "01");
    let client = collector
        .wait_for("the first request's CLIENT span", |spans| {
            first_of_kind(spans, &first, CLIENT)
        })
        .await;
    assert_eq!(
        parent,
        client.span_id(),
        "the CONNECT is the attempt's child"
    );
    // The second request is traced on its own, inside the same connection.
    collector
        .wait_for("the second request's CLIENT span", |spans| {
            first_of_kind(spans, &second, CLIENT)
        })
        .await;
}
