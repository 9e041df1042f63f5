//! The metric names and labels both proxies emit (docs/design.md §9): weft's
//! own (`weft_*`) and Istio's standard ones (`istio_*`), which Grafana's
//! Istio dashboards and Kiali's graph read unchanged. One place builds the
//! Istio label set, so ztunnel and the waypoint cannot drift apart.
//!
//! Both are on by default: a platform team's existing dashboards work the
//! day weft is installed, and weft's own names (what weftctl, the docs and
//! earlier releases use) keep working. `--metric-names` turns either off,
//! halving the series when one set is enough.

use std::sync::OnceLock;

use weft_api::config::{Service, Workload};

/// Which metric names a proxy emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MetricNames {
    /// `weft_*` only.
    Weft,
    /// `istio_*` only.
    Istio,
    /// Both sets.
    Both,
}

impl MetricNames {
    /// Whether `weft_*` series are emitted.
    pub fn weft(self) -> bool {
        matches!(self, MetricNames::Weft | MetricNames::Both)
    }

    /// Whether `istio_*` series are emitted.
    pub fn istio(self) -> bool {
        matches!(self, MetricNames::Istio | MetricNames::Both)
    }
}

/// The process's choice, set once at start (the metrics recorder is
/// process-wide too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dialect {
    pub names: MetricNames,
    /// `source_cluster`/`destination_cluster` of Istio's labels.
    pub cluster: String,
}

impl Default for Dialect {
    fn default() -> Self {
        Dialect {
            names: MetricNames::Both,
            cluster: DEFAULT_CLUSTER.to_owned(),
        }
    }
}

/// Istio's own default cluster name, so dashboards filtering on it match.
pub const DEFAULT_CLUSTER: &str = "Kubernetes";

static DIALECT: OnceLock<Dialect> = OnceLock::new();

/// Sets the process's dialect; a second call is ignored (and says so).
pub fn configure(dialect: Dialect) {
    if DIALECT.set(dialect).is_err() {
        tracing::warn!("metric names configured twice; the first setting stays");
    }
}

/// The process's dialect: what [`configure`] set, else the default.
pub fn dialect() -> &'static Dialect {
    DIALECT.get_or_init(Dialect::default)
}

/// Istio's TCP series.
pub const ISTIO_TCP_OPENED: &str = "istio_tcp_connections_opened_total";
pub const ISTIO_TCP_CLOSED: &str = "istio_tcp_connections_closed_total";
pub const ISTIO_TCP_SENT: &str = "istio_tcp_sent_bytes_total";
pub const ISTIO_TCP_RECEIVED: &str = "istio_tcp_received_bytes_total";
/// Istio's HTTP series.
pub const ISTIO_REQUESTS: &str = "istio_requests_total";
pub const ISTIO_REQUEST_DURATION: &str = "istio_request_duration_milliseconds";

/// Istio's default buckets of `istio_request_duration_milliseconds`, so
/// `histogram_quantile` over its dashboards' queries gives the same answers.
pub const ISTIO_DURATION_BUCKETS_MS: &[f64] = &[
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// Which proxy reports: the client's side, the server's, or a waypoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reporter {
    Source,
    Destination,
    Waypoint,
}

impl Reporter {
    pub fn as_str(self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
            Reporter::Waypoint => "waypoint",
        }
    }
}

/// One end of a connection or request, as far as the proxy knows it.
#[derive(Debug, Clone, Copy, Default)]
pub struct End<'a> {
    pub workload: Option<&'a Workload>,
    /// The SPIFFE ID proved (source) or expected (destination).
    pub principal: Option<&'a str>,
}

/// What a connection or request is, beyond its ends.
#[derive(Debug, Clone, Copy)]
pub struct Traffic<'a> {
    pub reporter: Reporter,
    pub source: End<'a>,
    pub destination: End<'a>,
    /// The Service addressed, if one was.
    pub service: Option<&'a Service>,
    /// `tcp`, `http` or `grpc`.
    pub protocol: &'static str,
    /// Whether the hop was mutual TLS.
    pub mutual_tls: bool,
}

const UNKNOWN: &str = "unknown";

/// Istio's standard labels of `traffic`, in Istio's names. A value the
/// proxy does not know is `unknown`, as Istio writes it; the workload and
/// canonical service are the model's canonical name (the `app` label, else
/// the owning Deployment), the revision `latest` (Istio's default when a
/// pod has no `service.istio.io/canonical-revision` label).
pub fn istio_labels(traffic: &Traffic<'_>) -> Vec<(&'static str, String)> {
    let cluster = dialect().cluster.clone();
    let mut labels = Vec::with_capacity(24);
    labels.push(("reporter", traffic.reporter.as_str().to_owned()));
    for (end, keys) in [
        (&traffic.source, SOURCE_KEYS),
        (&traffic.destination, DESTINATION_KEYS),
    ] {
        let (workload, namespace, canonical) = match end.workload {
            Some(w) => {
                let name = if w.canonical_name.is_empty() {
                    &w.name
                } else {
                    &w.canonical_name
                };
                (name.clone(), w.namespace.clone(), name.clone())
            }
            None => (UNKNOWN.into(), UNKNOWN.into(), UNKNOWN.into()),
        };
        let known = end.workload.is_some();
        labels.push((keys.workload, workload));
        labels.push((keys.namespace, namespace));
        labels.push((keys.principal, end.principal.unwrap_or(UNKNOWN).to_owned()));
        labels.push((keys.app, canonical.clone()));
        labels.push((keys.version, UNKNOWN.to_owned()));
        labels.push((keys.canonical_service, canonical));
        labels.push((
            keys.canonical_revision,
            if known { "latest" } else { UNKNOWN }.to_owned(),
        ));
        labels.push((
            keys.cluster,
            if known { cluster.as_str() } else { UNKNOWN }.to_owned(),
        ));
    }
    let (service, service_name, service_namespace) = match traffic.service {
        Some(s) => (s.hostname.clone(), s.name.clone(), s.namespace.clone()),
        None => match traffic.destination.workload {
            // Istio names the workload when no Service was addressed.
            Some(w) => (UNKNOWN.into(), w.name.clone(), w.namespace.clone()),
            None => (UNKNOWN.into(), UNKNOWN.into(), UNKNOWN.into()),
        },
    };
    labels.push(("destination_service", service));
    labels.push(("destination_service_name", service_name));
    labels.push(("destination_service_namespace", service_namespace));
    labels.push(("request_protocol", traffic.protocol.to_owned()));
    labels.push(("response_flags", "-".to_owned()));
    labels.push((
        "connection_security_policy",
        if traffic.mutual_tls {
            "mutual_tls"
        } else {
            "none"
        }
        .to_owned(),
    ));
    labels
}

/// Istio's labels of one request: [`istio_labels`] and its outcome.
pub fn istio_request_labels(
    traffic: &Traffic<'_>,
    status: u16,
    grpc_status: Option<&str>,
) -> Vec<(&'static str, String)> {
    let mut labels = istio_labels(traffic);
    labels.push(("response_code", status.to_string()));
    labels.push(("grpc_response_status", grpc_status.unwrap_or("").to_owned()));
    labels
}

/// The TCP counters of one label set in every name set the process emits,
/// resolved once (looking a series up builds and hashes its labels, a
/// measurable part of a short connection's cost); a name set that is off
/// gets no-op counters.
pub struct TcpSeries {
    opened: [metrics::Counter; 2],
    closed: [metrics::Counter; 2],
    sent: [metrics::Counter; 2],
    received: [metrics::Counter; 2],
}

impl TcpSeries {
    /// Registers the series: `weft` labels under `weft_tcp_*`, and
    /// `traffic`'s Istio labels under `istio_tcp_*`.
    pub fn new(weft: &[(&'static str, String)], traffic: &Traffic<'_>) -> TcpSeries {
        let names = dialect().names;
        let istio = if names.istio() {
            istio_labels(traffic)
        } else {
            Vec::new()
        };
        let pair = |weft_name: &'static str, istio_name: &'static str| {
            [
                if names.weft() {
                    metrics::counter!(weft_name, weft)
                } else {
                    metrics::Counter::noop()
                },
                if names.istio() {
                    metrics::counter!(istio_name, &istio)
                } else {
                    metrics::Counter::noop()
                },
            ]
        };
        TcpSeries {
            opened: pair("weft_tcp_connections_opened_total", ISTIO_TCP_OPENED),
            closed: pair("weft_tcp_connections_closed_total", ISTIO_TCP_CLOSED),
            sent: pair("weft_tcp_sent_bytes_total", ISTIO_TCP_SENT),
            received: pair("weft_tcp_received_bytes_total", ISTIO_TCP_RECEIVED),
        }
    }

    /// A connection opened.
    pub fn opened(&self) {
        self.opened.iter().for_each(|c| c.increment(1));
    }

    /// A connection closed, having sent and received these bytes (from the
    /// reporting proxy's point of view of the workload it serves).
    pub fn closed(&self, sent: u64, received: u64) {
        self.closed.iter().for_each(|c| c.increment(1));
        self.sent.iter().for_each(|c| c.increment(sent));
        self.received.iter().for_each(|c| c.increment(received));
    }
}

/// The request counter and duration histogram of one label set in every
/// name set the process emits, resolved once: `weft_requests_total` and
/// `weft_request_duration_seconds`, `istio_requests_total` and
/// `istio_request_duration_milliseconds`.
pub struct HttpSeries {
    requests: [metrics::Counter; 2],
    seconds: metrics::Histogram,
    milliseconds: metrics::Histogram,
}

impl HttpSeries {
    /// Registers the series of requests with `weft` labels and `traffic`'s
    /// Istio labels with this outcome.
    pub fn new(
        weft: &[(&'static str, String)],
        traffic: &Traffic<'_>,
        status: u16,
        grpc_status: Option<&str>,
    ) -> HttpSeries {
        let names = dialect().names;
        let (requests, seconds) = if names.weft() {
            (
                metrics::counter!("weft_requests_total", weft),
                metrics::histogram!("weft_request_duration_seconds", weft),
            )
        } else {
            (metrics::Counter::noop(), metrics::Histogram::noop())
        };
        let (istio_requests, milliseconds) = if names.istio() {
            let labels = istio_request_labels(traffic, status, grpc_status);
            (
                metrics::counter!(ISTIO_REQUESTS, &labels),
                metrics::histogram!(ISTIO_REQUEST_DURATION, &labels),
            )
        } else {
            (metrics::Counter::noop(), metrics::Histogram::noop())
        };
        HttpSeries {
            requests: [requests, istio_requests],
            seconds,
            milliseconds,
        }
    }

    /// One request that took `duration`.
    pub fn record(&self, duration: std::time::Duration) {
        self.requests.iter().for_each(|c| c.increment(1));
        self.seconds.record(duration.as_secs_f64());
        self.milliseconds.record(duration.as_secs_f64() * 1000.0);
    }
}

/// A refused connection, counted under `weft_tcp_connections_denied_total`
/// with its `reason`. Istio's names have no denial counter: there a refused
/// connection is one opened and closed with `response_flags="DENY"`, so a
/// graph built on them still shows the refused edge, told apart by the flag.
pub fn denied(weft: &[(&'static str, String)], reason: &'static str, traffic: &Traffic<'_>) {
    let names = dialect().names;
    if names.weft() {
        let mut labels = weft.to_vec();
        labels.push(("reason", reason.to_owned()));
        metrics::counter!("weft_tcp_connections_denied_total", &labels).increment(1);
    }
    if names.istio() {
        let mut labels = istio_labels(traffic);
        if let Some(flags) = labels.iter_mut().find(|(k, _)| *k == "response_flags") {
            flags.1 = "DENY".to_owned();
        }
        metrics::counter!(ISTIO_TCP_OPENED, &labels).increment(1);
        metrics::counter!(ISTIO_TCP_CLOSED, &labels).increment(1);
    }
}

struct EndKeys {
    workload: &'static str,
    namespace: &'static str,
    principal: &'static str,
    app: &'static str,
    version: &'static str,
    canonical_service: &'static str,
    canonical_revision: &'static str,
    cluster: &'static str,
}

const SOURCE_KEYS: EndKeys = EndKeys {
    workload: "source_workload",
    namespace: "source_workload_namespace",
    principal: "source_principal",
    app: "source_app",
    version: "source_version",
    canonical_service: "source_canonical_service",
    canonical_revision: "source_canonical_revision",
    cluster: "source_cluster",
};

const DESTINATION_KEYS: EndKeys = EndKeys {
    workload: "destination_workload",
    namespace: "destination_workload_namespace",
    principal: "destination_principal",
    app: "destination_app",
    version: "destination_version",
    canonical_service: "destination_canonical_service",
    canonical_revision: "destination_canonical_revision",
    cluster: "destination_cluster",
};

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(name: &str, canonical: &str) -> Workload {
        Workload {
            uid: format!("{name}-uid"),
            name: name.into(),
            namespace: "shop".into(),
            service_account: "default".into(),
            canonical_name: canonical.into(),
            ..Workload::default()
        }
    }

    fn get<'a>(labels: &'a [(&'static str, String)], key: &str) -> &'a str {
        labels
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no label {key}"))
    }

    #[test]
    fn the_label_set_is_istios_and_names_what_the_proxy_knows() {
        let client = workload("client-7d9f-abcde", "client");
        let server = workload("server-5c6b-fghij", "server");
        let service = Service {
            name: "server".into(),
            namespace: "shop".into(),
            hostname: "server.shop.svc.cluster.local".into(),
            ..Service::default()
        };
        let traffic = Traffic {
            reporter: Reporter::Destination,
            source: End {
                workload: Some(&client),
                principal: Some("spiffe://cluster.local/ns/shop/sa/client"),
            },
            destination: End {
                workload: Some(&server),
                principal: Some("spiffe://cluster.local/ns/shop/sa/server"),
            },
            service: Some(&service),
            protocol: "http",
            mutual_tls: true,
        };
        let labels = istio_request_labels(&traffic, 503, None);
        // Kiali's and the Istio dashboards' label names, each once.
        let mut keys: Vec<&str> = labels.iter().map(|(k, _)| *k).collect();
        keys.sort_unstable();
        let before = keys.len();
        keys.dedup();
        assert_eq!(keys.len(), before, "a label twice");
        for key in [
            "reporter",
            "source_workload",
            "source_workload_namespace",
            "source_principal",
            "source_app",
            "source_canonical_service",
            "destination_workload",
            "destination_workload_namespace",
            "destination_principal",
            "destination_service",
            "destination_service_name",
            "destination_service_namespace",
            "destination_canonical_service",
            "request_protocol",
            "response_code",
            "response_flags",
            "grpc_response_status",
            "connection_security_policy",
        ] {
            assert!(keys.contains(&key), "{key} missing");
        }
        assert_eq!(get(&labels, "reporter"), "destination");
        assert_eq!(get(&labels, "source_workload"), "client");
        assert_eq!(get(&labels, "destination_canonical_service"), "server");
        assert_eq!(
            get(&labels, "destination_service"),
            "server.shop.svc.cluster.local"
        );
        assert_eq!(get(&labels, "destination_cluster"), DEFAULT_CLUSTER);
        assert_eq!(get(&labels, "response_code"), "503");
        assert_eq!(get(&labels, "connection_security_policy"), "mutual_tls");
        assert!(
            !labels
                .iter()
                .any(|(k, v)| v == UNKNOWN && !k.ends_with("_version")),
            "unknown where the proxy knows: {labels:?}"
        );
    }

    #[test]
    fn an_unknown_peer_is_unknown_and_a_pod_without_a_canonical_name_is_its_own() {
        let bare = workload("server-0", "");
        let traffic = Traffic {
            reporter: Reporter::Source,
            source: End::default(),
            destination: End {
                workload: Some(&bare),
                principal: None,
            },
            service: None,
            protocol: "tcp",
            mutual_tls: false,
        };
        let labels = istio_labels(&traffic);
        assert_eq!(get(&labels, "source_workload"), UNKNOWN);
        assert_eq!(get(&labels, "source_cluster"), UNKNOWN);
        assert_eq!(get(&labels, "destination_workload"), "server-0");
        assert_eq!(get(&labels, "destination_service_name"), "server-0");
        assert_eq!(get(&labels, "destination_service"), UNKNOWN);
        assert_eq!(get(&labels, "connection_security_policy"), "none");
        assert_eq!(get(&labels, "request_protocol"), "tcp");
    }
}
