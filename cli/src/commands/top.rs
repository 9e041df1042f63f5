//! `weftctl top` and `weftctl graph`: who talks to whom, from the proxies'
//! own counters. Every ztunnel's and waypoint's `/metrics` (their admin API
//! serves the metrics port's text) is read twice, `--window` apart; the
//! difference is the rate of each edge. Edges come from Istio's standard
//! series (docs/observability.md): TCP as the destination's ztunnel counts
//! it, HTTP as the waypoint counts it, each edge once.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use prometheus_parse::{Scrape, Value};
use serde::Serialize;

use crate::args::{GlobalArgs, GraphArgs, GraphFormat, TopArgs};
use crate::cluster::Cluster;
use crate::exit::{CliError, Outcome, Result};
use crate::format;
use crate::output::{self, Table, cell};

/// One source → destination pair and what flows between them.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Edge {
    /// `namespace/workload` (the canonical name: app label or Deployment).
    pub source: String,
    pub destination: String,
    /// `tcp` or `http`.
    pub protocol: String,
    /// Every connection or request of the edge was mutual TLS.
    pub mtls: bool,
    /// TCP: connections opened per second over the interval.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections_per_second: Option<f64>,
    /// TCP: bytes per second, both ways.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_per_second: Option<f64>,
    /// HTTP: requests per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<f64>,
    /// HTTP: share of those requests answered 5xx (0..1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<f64>,
    /// HTTP: 99th percentile latency over the interval, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    /// Since the proxies started: connections or requests.
    pub total: f64,
    /// Refused connections since the proxies started (Istio's
    /// `response_flags="DENY"`).
    pub refused: f64,
}

/// `weftctl top`.
pub async fn top(global: &GlobalArgs, args: &TopArgs) -> Result<Outcome> {
    let cluster = Cluster::connect(global).await?;
    output::watch(global.output, &args.watch, "top", || async {
        let (edges, outcome) = measure(&cluster, args.window).await?;
        let edges = in_namespace(edges, args.namespace.as_deref());
        let text = output::render(global.output, &edges, |wide| table(&edges, wide))?;
        Ok((text, outcome))
    })
    .await
}

/// `weftctl graph`: the same edges as a Graphviz graph or an SVG picture.
pub async fn graph(global: &GlobalArgs, args: &GraphArgs) -> Result<Outcome> {
    let cluster = Cluster::connect(global).await?;
    let (edges, outcome) = measure(&cluster, args.window).await?;
    let edges = in_namespace(edges, args.namespace.as_deref());
    match args.format {
        GraphFormat::Dot => print!("{}", dot(&edges)),
        GraphFormat::Svg => print!("{}", super::svg::svg(&edges)),
    }
    Ok(outcome)
}

/// Two reads of every proxy's metrics, `window` apart, as edges.
async fn measure(cluster: &Cluster, window: Duration) -> Result<(Vec<Edge>, Outcome)> {
    let (first, outcome) = scrape_all(cluster).await?;
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let (second, later) = scrape_all(cluster).await?;
    let seconds = started.elapsed().as_secs_f64().max(0.001);
    let outcome = if outcome == Outcome::Ok {
        later
    } else {
        outcome
    };
    Ok((edges(&first, &second, seconds), outcome))
}

/// Every ztunnel's and waypoint's series, summed by name and labels.
async fn scrape_all(cluster: &Cluster) -> Result<(Series, Outcome)> {
    let mut texts = Vec::new();
    let mut failed = 0;
    let nodes = cluster.ztunnels(None).await?;
    let (answers, mut outcome) =
        super::per_node(
            &nodes,
            |n| async move { n.admin.get_text("/metrics").await },
        )
        .await?;
    texts.extend(answers.into_iter().map(|(_, (_, text))| text));
    for (name, waypoint) in cluster.waypoints().await? {
        match waypoint.get_text("/metrics").await {
            Ok((_, text)) => texts.push(text),
            Err(e) => {
                eprintln!("weftctl: warning: waypoint {name}: {e}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        outcome = Outcome::Partial;
    }
    let mut series = Series::default();
    for text in texts {
        series.add(&text)?;
    }
    Ok((series, outcome))
}

/// A metric and its label set, sorted.
type SeriesKey = (String, Vec<(String, String)>);

/// Counter values (and histogram buckets) by metric and label set, summed
/// over every proxy read.
#[derive(Debug, Default)]
struct Series {
    counters: BTreeMap<SeriesKey, f64>,
    /// Per label set: (upper bound, cumulative count) buckets.
    histograms: BTreeMap<SeriesKey, Vec<(f64, f64)>>,
}

impl Series {
    fn add(&mut self, text: &str) -> Result<()> {
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        let scrape = Scrape::parse(lines)
            .map_err(|e| CliError::other(format!("a proxy's metrics do not parse: {e}")))?;
        for sample in scrape.samples {
            if !sample.metric.starts_with("istio_") {
                continue;
            }
            let mut labels: Vec<(String, String)> = sample
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            labels.sort();
            let key = (sample.metric.clone(), labels);
            match sample.value {
                Value::Counter(v) | Value::Untyped(v) | Value::Gauge(v) => {
                    *self.counters.entry(key).or_default() += v;
                }
                Value::Histogram(buckets) => {
                    let entry = self.histograms.entry(key).or_default();
                    for b in buckets {
                        match entry.iter_mut().find(|(le, _)| *le == b.less_than) {
                            Some((_, count)) => *count += b.count,
                            None => entry.push((b.less_than, b.count)),
                        }
                    }
                    entry.sort_by(|a, b| a.0.total_cmp(&b.0));
                }
                Value::Summary(_) => {}
            }
        }
        Ok(())
    }
}

fn label<'a>(labels: &'a [(String, String)], key: &str) -> &'a str {
    labels
        .iter()
        .find(|(k, _)| k == key)
        .map_or("unknown", |(_, v)| v.as_str())
}

fn endpoint(labels: &[(String, String)], side: &str) -> String {
    format!(
        "{}/{}",
        label(labels, &format!("{side}_workload_namespace")),
        label(labels, &format!("{side}_workload"))
    )
}

/// A counter's growth between reads; a proxy that restarted counts from 0.
fn growth(before: Option<f64>, after: f64) -> f64 {
    match before {
        Some(b) if b <= after => after - b,
        _ => after,
    }
}

/// The edges, from two reads `seconds` apart.
fn edges(first: &Series, second: &Series, seconds: f64) -> Vec<Edge> {
    let mut out: BTreeMap<(String, String, &'static str), Edge> = BTreeMap::new();
    let mut plaintext: BTreeMap<(String, String, &'static str), bool> = BTreeMap::new();
    for ((metric, labels), after) in &second.counters {
        let before = first
            .counters
            .get(&(metric.clone(), labels.clone()))
            .copied();
        let delta = growth(before, *after);
        let reporter = label(labels, "reporter");
        let (protocol, wanted) = match metric.as_str() {
            "istio_tcp_connections_opened_total"
            | "istio_tcp_sent_bytes_total"
            | "istio_tcp_received_bytes_total" => ("tcp", reporter == "destination"),
            "istio_requests_total" => ("http", reporter == "waypoint"),
            _ => continue,
        };
        if !wanted {
            continue;
        }
        let key = (
            endpoint(labels, "source"),
            endpoint(labels, "destination"),
            protocol,
        );
        let edge = out.entry(key.clone()).or_insert_with(|| Edge {
            source: key.0.clone(),
            destination: key.1.clone(),
            protocol: protocol.to_owned(),
            ..Edge::default()
        });
        if label(labels, "connection_security_policy") != "mutual_tls" {
            plaintext.insert(key.clone(), true);
        }
        let refused = label(labels, "response_flags") == "DENY";
        match metric.as_str() {
            "istio_tcp_connections_opened_total" if refused => edge.refused += after,
            "istio_tcp_connections_opened_total" => {
                edge.total += after;
                *edge.connections_per_second.get_or_insert(0.0) += delta / seconds;
            }
            "istio_tcp_sent_bytes_total" | "istio_tcp_received_bytes_total" => {
                *edge.bytes_per_second.get_or_insert(0.0) += delta / seconds;
            }
            _ => {
                edge.total += after;
                *edge.requests_per_second.get_or_insert(0.0) += delta / seconds;
                if label(labels, "response_code").starts_with('5') {
                    *edge.error_rate.get_or_insert(0.0) += delta;
                } else {
                    edge.error_rate.get_or_insert(0.0);
                }
            }
        }
    }
    // Latency: the interval's share of each edge's histogram.
    let mut latency: BTreeMap<(String, String), Vec<(f64, f64)>> = BTreeMap::new();
    for ((metric, labels), after) in &second.histograms {
        if metric != "istio_request_duration_milliseconds"
            || label(labels, "reporter") != "waypoint"
        {
            continue;
        }
        let before = first.histograms.get(&(metric.clone(), labels.clone()));
        let merged = latency
            .entry((endpoint(labels, "source"), endpoint(labels, "destination")))
            .or_default();
        for (le, count) in after {
            let was = before.and_then(|b| b.iter().find(|(l, _)| l == le).map(|(_, c)| *c));
            let delta = growth(was, *count);
            match merged.iter_mut().find(|(l, _)| l == le) {
                Some((_, c)) => *c += delta,
                None => merged.push((*le, delta)),
            }
        }
        merged.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    out.into_iter()
        .map(|(key, mut edge)| {
            edge.mtls = !plaintext.contains_key(&key);
            if let (Some(errors), Some(rps)) = (edge.error_rate, edge.requests_per_second) {
                let requests = rps * seconds;
                edge.error_rate = Some(if requests > 0.0 {
                    errors / requests
                } else {
                    0.0
                });
            }
            if edge.protocol == "http" {
                edge.p99_ms = latency
                    .get(&(edge.source.clone(), edge.destination.clone()))
                    .and_then(|b| quantile(0.99, b));
            }
            edge
        })
        .collect()
}

/// The `q` quantile of cumulative `buckets` (upper bound, count), as
/// Prometheus's `histogram_quantile` computes it: linear within the bucket
/// it falls in. `None` when nothing was counted.
fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let in_bucket = count - lower.1;
            let share = if in_bucket > 0.0 {
                (rank - lower.1) / in_bucket
            } else {
                1.0
            };
            return Some(lower.0 + (le - lower.0) * share);
        }
        lower = (le, count);
    }
    Some(lower.0)
}

fn in_namespace(edges: Vec<Edge>, namespace: Option<&str>) -> Vec<Edge> {
    let Some(ns) = namespace else { return edges };
    let prefix = format!("{ns}/");
    edges
        .into_iter()
        .filter(|e| e.source.starts_with(&prefix) || e.destination.starts_with(&prefix))
        .collect()
}

fn rate(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.1}"))
}

fn table(edges: &[Edge], wide: bool) -> Table {
    let mut header = vec![
        "SOURCE",
        "DESTINATION",
        "PROTO",
        "MTLS",
        "RATE/S",
        "ERRORS",
        "P99",
        "BYTES/S",
    ];
    if wide {
        header.extend(["TOTAL", "REFUSED"]);
    }
    let mut t = Table::new(header);
    for e in edges {
        let mut row = vec![
            cell(&e.source),
            cell(&e.destination),
            cell(&e.protocol),
            cell(if e.mtls { "yes" } else { "NO" }),
            cell(rate(e.requests_per_second.or(e.connections_per_second))),
            cell(
                e.error_rate
                    .map_or_else(|| "-".into(), |r| format!("{:.1}%", r * 100.0)),
            ),
            cell(
                e.p99_ms
                    .map_or_else(|| "-".into(), |ms| format!("{ms:.1}ms")),
            ),
            cell(
                e.bytes_per_second
                    .map_or_else(|| "-".into(), |b| format::bytes(b as u64)),
            ),
        ];
        if wide {
            row.extend([cell(format!("{}", e.total)), cell(format!("{}", e.refused))]);
        }
        t.row(row);
    }
    t
}

/// What both pictures (DOT and SVG) write on an edge: the protocol, then its
/// rate, 5xx share and p99 (HTTP) or connection rate (TCP), and refusals.
pub(crate) fn edge_label(e: &Edge) -> String {
    let mut label = match (e.requests_per_second, e.connections_per_second) {
        (Some(rps), _) => {
            let mut l = format!("{rps:.1} req/s");
            if let Some(err) = e.error_rate {
                l.push_str(&format!(", {:.1}% 5xx", err * 100.0));
            }
            if let Some(p99) = e.p99_ms {
                l.push_str(&format!(", p99 {p99:.1}ms"));
            }
            l
        }
        (None, Some(cps)) => format!("{cps:.1} conn/s"),
        (None, None) => String::new(),
    };
    if e.refused > 0.0 {
        label.push_str(&format!(", {} refused", e.refused));
    }
    format!("{} {}", e.protocol, label.trim())
}

/// A Graphviz digraph: one node per workload, one edge per pair, labelled
/// with its rate; mutual TLS solid, plaintext red and dashed, refused
/// connections noted. `weftctl graph | dot -Tsvg > mesh.svg` draws it.
pub fn dot(edges: &[Edge]) -> String {
    let quote = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    let mut out =
        String::from("digraph mesh {\n  rankdir=LR;\n  node [shape=box, style=rounded];\n");
    for e in edges {
        let style = if e.mtls {
            "color=darkgreen"
        } else {
            "color=red, style=dashed"
        };
        out.push_str(&format!(
            "  {} -> {} [label={}, {style}];\n",
            quote(&e.source),
            quote(&e.destination),
            quote(&edge_label(e))
        ));
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LABELS: &str = r#"reporter="destination",source_workload="client",source_workload_namespace="shop",destination_workload="server",destination_workload_namespace="shop",connection_security_policy="mutual_tls",response_flags="-""#;

    fn series(text: &str) -> Series {
        let mut s = Series::default();
        s.add(text).expect("parses");
        s
    }

    #[test]
    fn rates_are_the_growth_over_the_interval_and_each_edge_counted_once() {
        let read = |opened: u32, bytes: u32| {
            format!(
                "# TYPE istio_tcp_connections_opened_total counter\nistio_tcp_connections_opened_total{{{LABELS}}} {opened}\n\
                 # TYPE istio_tcp_sent_bytes_total counter\nistio_tcp_sent_bytes_total{{{LABELS}}} {bytes}\n\
                 istio_tcp_connections_opened_total{{{}}} 99\n",
                LABELS.replace("destination\",source", "source\",source")
            )
        };
        let edges = edges(&series(&read(10, 1000)), &series(&read(30, 5000)), 2.0);
        assert_eq!(
            edges.len(),
            1,
            "the source reporter's copy is not a second edge: {edges:?}"
        );
        let e = &edges[0];
        assert_eq!(
            (e.source.as_str(), e.destination.as_str()),
            ("shop/client", "shop/server")
        );
        assert!(e.mtls);
        assert_eq!(e.connections_per_second, Some(10.0));
        assert_eq!(e.bytes_per_second, Some(2000.0));
        assert_eq!(e.total, 30.0);
    }

    #[test]
    fn http_edges_have_an_error_rate_and_a_p99_from_the_interval() {
        let labels = r#"reporter="waypoint",source_workload="client",source_workload_namespace="shop",destination_workload="server",destination_workload_namespace="shop",connection_security_policy="mutual_tls""#;
        let read = |ok: u32, failed: u32, fast: u32, slow: u32| {
            format!(
                "# TYPE istio_requests_total counter\n\
                 istio_requests_total{{{labels},response_code=\"200\"}} {ok}\n\
                 istio_requests_total{{{labels},response_code=\"503\"}} {failed}\n\
                 # TYPE istio_request_duration_milliseconds histogram\n\
                 istio_request_duration_milliseconds_bucket{{{labels},response_code=\"200\",le=\"5\"}} {fast}\n\
                 istio_request_duration_milliseconds_bucket{{{labels},response_code=\"200\",le=\"100\"}} {}\n\
                 istio_request_duration_milliseconds_bucket{{{labels},response_code=\"200\",le=\"+Inf\"}} {}\n\
                 istio_request_duration_milliseconds_sum{{{labels},response_code=\"200\"}} 0\n\
                 istio_request_duration_milliseconds_count{{{labels},response_code=\"200\"}} {}\n",
                fast + slow,
                fast + slow,
                fast + slow
            )
        };
        let edges = edges(
            &series(&read(0, 0, 0, 0)),
            &series(&read(90, 10, 90, 10)),
            10.0,
        );
        assert_eq!(edges.len(), 1, "{edges:?}");
        let e = &edges[0];
        assert_eq!(e.protocol, "http");
        assert_eq!(e.requests_per_second, Some(10.0));
        assert_eq!(e.error_rate, Some(0.1));
        let p99 = e.p99_ms.expect("a p99");
        assert!((5.0..=100.0).contains(&p99), "in the slow bucket: {p99}");
    }

    #[test]
    fn plaintext_and_refusals_show_in_the_graph() {
        let edges = vec![
            Edge {
                source: "shop/client".into(),
                destination: "shop/server".into(),
                protocol: "tcp".into(),
                mtls: true,
                connections_per_second: Some(2.0),
                refused: 3.0,
                ..Edge::default()
            },
            Edge {
                source: "legacy/\"odd\"".into(),
                destination: "shop/server".into(),
                protocol: "tcp".into(),
                mtls: false,
                connections_per_second: Some(1.0),
                ..Edge::default()
            },
        ];
        let graph = dot(&edges);
        assert!(graph.starts_with("digraph mesh {"));
        assert!(graph.contains(r#""shop/client" -> "shop/server" [label="tcp 2.0 conn/s, 3 refused", color=darkgreen];"#), "{graph}");
        assert!(
            graph.contains(r#""legacy/\"odd\"" -> "shop/server""#),
            "quotes escaped: {graph}"
        );
        assert!(graph.contains("color=red, style=dashed"), "{graph}");
    }

    #[test]
    fn the_quantile_interpolates_within_its_bucket() {
        let buckets = [(10.0, 50.0), (20.0, 100.0), (f64::INFINITY, 100.0)];
        assert_eq!(quantile(0.5, &buckets), Some(10.0));
        assert_eq!(quantile(0.75, &buckets), Some(15.0));
        assert_eq!(quantile(0.99, &[(f64::INFINITY, 0.0)]), None);
        assert_eq!(
            growth(Some(10.0), 4.0),
            4.0,
            "a restarted proxy counts from zero"
        );
    }
}
