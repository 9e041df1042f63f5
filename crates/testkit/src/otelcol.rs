//! A real OpenTelemetry Collector for the proxies' tracing tests
//! (waypoint/tests/tracing.rs, ztunnel/tests/tracing.rs): e2e/otelcol,
//! built by scripts/build-otelcol.sh once per machine (`WEFT_OTELCOL` names
//! a binary instead), one per test on a free loopback port, whose `jsonfile`
//! exporter writes what it receives as OTLP JSON lines. A missing or
//! unbuildable collector fails the test; it never passes without one.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The collector binary, built (or found in the cache) once per process;
/// `WEFT_OTELCOL` names one and skips the build.
pub fn collector_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            if let Some(path) = std::env::var_os("WEFT_OTELCOL") {
                return PathBuf::from(path);
            }
            let script =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/build-otelcol.sh");
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
pub struct Collector {
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
    pub fn start() -> Collector {
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

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("collector.log")).unwrap_or_default()
    }

    /// The OTLP/gRPC endpoint to export to.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.endpoint)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
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
    pub async fn wait_for<T>(&self, what: &str, want: impl Fn(&[Span]) -> Option<T>) -> T {
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
pub struct Span {
    /// The resource's `service.name`.
    pub service: Option<String>,
    pub json: Value,
}

pub const SERVER: i64 = 2;
pub const CLIENT: i64 = 3;
pub const STATUS_ERROR: i64 = 2;

impl Span {
    pub fn trace_id(&self) -> &str {
        self.json["traceId"].as_str().unwrap_or_default()
    }
    pub fn span_id(&self) -> &str {
        self.json["spanId"].as_str().unwrap_or_default()
    }
    pub fn parent(&self) -> &str {
        self.json["parentSpanId"].as_str().unwrap_or_default()
    }
    pub fn kind(&self) -> i64 {
        self.json["kind"].as_i64().unwrap_or_default()
    }
    pub fn attr(&self, key: &str) -> Option<String> {
        attribute(&self.json["attributes"], key)
    }
    pub fn status_code(&self) -> i64 {
        self.json["status"]["code"].as_i64().unwrap_or_default()
    }
    /// Asserts each attribute's value.
    pub fn assert_attrs(&self, expected: &[(&str, &str)]) {
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
pub fn attribute(attributes: &Value, key: &str) -> Option<String> {
    let kv = attributes.as_array()?.iter().find(|kv| kv["key"] == key)?;
    let value = &kv["value"];
    value["stringValue"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| value["intValue"].as_str().map(str::to_owned))
        .or_else(|| value["intValue"].as_i64().map(|n| n.to_string()))
        .or_else(|| value["boolValue"].as_bool().map(|b| b.to_string()))
}

pub fn of_kind<'a>(spans: &'a [Span], trace: &str, kind: i64) -> Vec<&'a Span> {
    spans
        .iter()
        .filter(|s| s.trace_id() == trace && s.kind() == kind)
        .collect()
}

/// The first span of `kind` in `trace`, once it is in.
pub fn first_of_kind(spans: &[Span], trace: &str, kind: i64) -> Option<Span> {
    of_kind(spans, trace, kind).first().map(|s| (*s).clone())
}

/// The SERVER span of `trace` and its first CLIENT span, once both are in.
pub fn server_and_client(spans: &[Span], trace: &str) -> Option<(Span, Span)> {
    let server = of_kind(spans, trace, SERVER).first().cloned()?.clone();
    let client = of_kind(spans, trace, CLIENT).first().cloned()?.clone();
    Some((server, client))
}

/// A fresh random id of `bytes` bytes, in hex.
pub fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// A client's new trace: (trace id, its span's id, `traceparent` with
/// `flags`).
pub fn client_trace(flags: &str) -> (String, String, String) {
    let (trace, span) = (random_hex(16), random_hex(8));
    let traceparent = format!("00-{trace}-{span}-{flags}");
    (trace, span, traceparent)
}

/// `traceparent` → (trace id, parent id, flags).
pub fn parse_traceparent(value: &str) -> (String, String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {value}");
    assert_eq!(parts[0], "00", "traceparent version in {value}");
    (parts[1].into(), parts[2].into(), parts[3].into())
}
