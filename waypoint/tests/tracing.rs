//! Tracing end to end: the waypoint on loopback (real HBONE, real hyper
//! clients, stand-in pods) exports its spans over OTLP/gRPC to a real
//! OpenTelemetry Collector (e2e/otelcol, built by scripts/build-otelcol.sh),
//! whose file exporter writes what it received as OTLP JSON lines; the tests
//! read them back and check the spans, their parents and attributes, and the
//! `traceparent` the application received.

mod support;

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;
use weft_api::config::{Action, Operation, Rule};
use weft_waypoint::otel::{Tracing, TracingSettings};

/// The collector binary, built (or found in the cache) once per process;
/// `WEFT_OTELCOL` names one and skips the build.
fn collector_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            if let Some(path) = std::env::var_os("WEFT_OTELCOL") {
                return PathBuf::from(path);
            }
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-otelcol.sh");
            let out = Command::new("bash")
                .arg(&script)
                .stderr(Stdio::inherit())
                .output()
                .expect("run scripts/build-otelcol.sh");
            assert!(out.status.success(), "scripts/build-otelcol.sh failed");
            let path = String::from_utf8(out.stdout).expect("a path");
            let path = PathBuf::from(path.lines().last().expect("the binary's path").trim());
            assert!(path.is_file(), "no collector at {}", path.display());
            path
        })
        .clone()
}

/// A collector on a free loopback port writing spans to a file; killed and
/// its files removed when dropped, also when a test fails.
struct Collector {
    child: Child,
    dir: tempfile::TempDir,
    endpoint: SocketAddr,
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Collector {
    fn start() -> Collector {
        let binary = collector_binary();
        let dir = tempfile::tempdir().expect("temp dir");
        let endpoint = {
            let probe = StdListener::bind("127.0.0.1:0").expect("a free port");
            probe.local_addr().expect("addr")
        };
        let spans = dir.path().join("spans.jsonl");
        let config = dir.path().join("config.yaml");
        // No telemetry server of its own: tests in parallel would share
        // its port.
        std::fs::write(
            &config,
            format!(
                "receivers:\n  otlp:\n    protocols:\n      grpc:\n        endpoint: {endpoint}\n\
                 exporters:\n  jsonfile:\n    path: {}\n\
                 service:\n  telemetry:\n    metrics:\n      level: none\n    logs:\n      level: warn\n\
                 \x20 pipelines:\n    traces:\n      receivers: [otlp]\n      exporters: [jsonfile]\n",
                spans.display()
            ),
        )
        .expect("write the collector's config");
        let log = std::fs::File::create(dir.path().join("collector.log")).expect("log file");
        let child = Command::new(&binary)
            .arg(format!("--config=file:{}", config.display()))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start the collector");
        let mut collector = Collector {
            child,
            dir,
            endpoint,
        };
        collector.wait_listening();
        collector
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(self.endpoint).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the collector exited ({status}): {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "the collector never listened: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("collector.log")).unwrap_or_default()
    }

    fn tracing(&self) -> Tracing {
        self.tracing_with(|_| {})
    }

    /// A waypoint's tracer sending here, batches every 100 ms unless
    /// `tune` says otherwise.
    fn tracing_with(&self, tune: impl FnOnce(&mut TracingSettings)) -> Tracing {
        let mut settings =
            TracingSettings::new(format!("http://{}", self.endpoint), "waypoint.shop");
        settings.batch_delay = Duration::from_millis(100);
        tune(&mut settings);
        Tracing::new(&settings).expect("tracing")
    }

    /// Every span received so far.
    fn spans(&self) -> Vec<Span> {
        let text = std::fs::read_to_string(self.dir.path().join("spans.jsonl")).unwrap_or_default();
        let mut spans = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let Ok(batch) = serde_json::from_str::<Value>(line) else {
                continue; // a line being written
            };
            for resource in batch["resourceSpans"].as_array().into_iter().flatten() {
                let service = attribute(&resource["resource"]["attributes"], "service.name");
                for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                    for span in scope["spans"].as_array().into_iter().flatten() {
                        spans.push(Span {
                            service: service.clone(),
                            json: span.clone(),
                        });
                    }
                }
            }
        }
        spans
    }

    /// Waits until `want` finds what it needs among the spans.
    async fn wait_for<T>(&self, what: &str, want: impl Fn(&[Span]) -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let spans = self.spans();
            if let Some(found) = want(&spans) {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within 20 s; spans: {spans:#?}\ncollector log: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// One span as the collector wrote it (OTLP JSON).
#[derive(Debug, Clone)]
struct Span {
    service: Option<String>,
    json: Value,
}

const SERVER: i64 = 2;
const CLIENT: i64 = 3;
const STATUS_ERROR: i64 = 2;

impl Span {
    fn trace_id(&self) -> &str {
        self.json["traceId"].as_str().unwrap_or_default()
    }
    fn span_id(&self) -> &str {
        self.json["spanId"].as_str().unwrap_or_default()
    }
    fn parent(&self) -> &str {
        self.json["parentSpanId"].as_str().unwrap_or_default()
    }
    fn kind(&self) -> i64 {
        self.json["kind"].as_i64().unwrap_or_default()
    }
    fn attr(&self, key: &str) -> Option<String> {
        attribute(&self.json["attributes"], key)
    }
    fn status_code(&self) -> i64 {
        self.json["status"]["code"].as_i64().unwrap_or_default()
    }
    /// Asserts each attribute's value.
    fn assert_attrs(&self, expected: &[(&str, &str)]) {
        for (key, value) in expected {
            assert_eq!(
                self.attr(key).as_deref(),
                Some(*value),
                "{key} of {:#?}",
                self.json
            );
        }
    }
}

/// An attribute's value as text (OTLP JSON writes int64 as a string).
fn attribute(attributes: &Value, key: &str) -> Option<String> {
    let kv = attributes.as_array()?.iter().find(|kv| kv["key"] == key)?;
    let value = &kv["value"];
    value["stringValue"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| value["intValue"].as_str().map(str::to_owned))
        .or_else(|| value["intValue"].as_i64().map(|n| n.to_string()))
        .or_else(|| value["boolValue"].as_bool().map(|b| b.to_string()))
}

fn of_kind<'a>(spans: &'a [Span], trace: &str, kind: i64) -> Vec<&'a Span> {
    spans
        .iter()
        .filter(|s| s.trace_id() == trace && s.kind() == kind)
        .collect()
}

/// The SERVER span of `trace` and its first CLIENT span, once both are in.
fn server_and_client(spans: &[Span], trace: &str) -> Option<(Span, Span)> {
    let server = of_kind(spans, trace, SERVER).first().cloned()?.clone();
    let client = of_kind(spans, trace, CLIENT).first().cloned()?.clone();
    Some((server, client))
}

/// A fresh random id of `bytes` bytes, in hex.
fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// A client's new trace: (trace id, its span's id, `traceparent` with
/// `flags`).
fn client_trace(flags: &str) -> (String, String, String) {
    let (trace, span) = (random_hex(16), random_hex(8));
    let traceparent = format!("00-{trace}-{span}-{flags}");
    (trace, span, traceparent)
}

/// `traceparent` → (trace id, parent id, flags).
fn parse_traceparent(value: &str) -> (String, String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {value}");
    assert_eq!(parts[0], "00", "traceparent version in {value}");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

/// A mesh whose waypoint traces with `tracing`, and a Service `reviews`
/// bound to it over one pod.
async fn traced_mesh(tracing: Tracing) -> (Mesh, SocketAddr, Pod) {
    let mut mesh = Mesh::with(|s| s.tracing = Some(tracing)).await;
    let pod = mesh.pod("reviews-1", "reviews").await;
    let vip = mesh.service("reviews", &[&pod], true);
    (mesh, vip, pod)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_continues_the_clients_trace_through_the_waypoint() {
    let collector = Collector::start();
    let (mut mesh, vip, _pod) = traced_mesh(collector.tracing()).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_traceparent_starts_a_trace() {
    let collector = Collector::start();
    let (mut mesh, vip, _pod) = traced_mesh(collector.tracing()).await;
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
    let (mut mesh, vip, pod) = traced_mesh(collector.tracing()).await;
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
            of_kind(spans, &trace, SERVER).first().cloned().cloned()
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
    let tracing = collector.tracing_with(|s| s.sampling = 0.0);
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
    let tracing = collector.tracing_with(|s| s.batch_delay = Duration::from_secs(60));
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
    let tracing = collector.tracing();
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
            of_kind(spans, &first, CLIENT).first().cloned().cloned()
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
            of_kind(spans, &second, CLIENT).first().cloned().cloned()
        })
        .await;
}
