//! `weftctl tap`: the live `/tap` streams of every ztunnel (and running
//! waypoint), merged, one event per line. The proxies bound their side: a
//! slow reader loses events, counted in each event's `dropped`.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;
use weft_api::admin::{TapEvent, TapKind};

use super::short_identity;
use crate::admin::AdminEndpoint;
use crate::args::{Format, GlobalArgs, TapArgs};
use crate::cluster::Cluster;
use crate::exit::{CliError, Outcome, Result};
use crate::format;
use crate::output;

/// One event, with who reported it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportedEvent {
    /// `ztunnel node-1` or `waypoint ns/name`.
    pub reporter: String,
    /// The event.
    #[serde(flatten)]
    pub event: TapEvent,
}

/// Keeps the events of connections to one Service.
#[derive(Clone, Debug, Default)]
pub struct ServiceFilter {
    /// Its VIPs.
    pub vips: BTreeSet<String>,
    /// `namespace/name` of its endpoints' workloads.
    pub workloads: BTreeSet<String>,
}

impl ServiceFilter {
    /// True when the event's destination is the service or one of its
    /// endpoints.
    pub fn matches(&self, event: &TapEvent) -> bool {
        let dst = &event.connection.destination;
        let ip = dst
            .address
            .parse::<std::net::SocketAddr>()
            .map(|a| a.ip().to_string())
            .unwrap_or_else(|_| dst.address.clone());
        self.vips.contains(&ip)
            || dst
                .workload
                .as_ref()
                .is_some_and(|w| self.workloads.contains(w))
    }
}

async fn service_filter(
    cluster: &Cluster,
    namespace: Option<&str>,
    to: &str,
) -> Result<ServiceFilter> {
    let (ns, name) = match to.split_once('/') {
        Some((ns, name)) => (ns.to_string(), name.to_string()),
        None => (namespace.unwrap_or("default").to_string(), to.to_string()),
    };
    let state = cluster.state().await?;
    let model = weft_cluster::model::build(&state, cluster.model_config());
    let svc = model
        .services
        .get(&format!("{ns}/{name}"))
        .ok_or_else(|| CliError::NotFound(format!("service {ns}/{name}: not found")))?;
    let workloads = svc
        .endpoints
        .iter()
        .filter_map(|e| model.workloads.get(&e.workload_uid))
        .map(|w| format!("{}/{}", w.namespace, w.name))
        .collect();
    Ok(ServiceFilter {
        vips: svc.vips.iter().cloned().collect(),
        workloads,
    })
}

fn query(namespace: Option<&str>) -> String {
    match namespace {
        // Namespace names are DNS labels: nothing to escape, but refuse
        // anything that is not one rather than build a broken URL.
        Some(ns)
            if ns
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') =>
        {
            format!("/tap?namespace={ns}")
        }
        _ => "/tap".into(),
    }
}

/// Runs the command.
pub async fn run(global: &GlobalArgs, args: &TapArgs) -> Result<Outcome> {
    let cluster = Cluster::connect(global).await?;
    let filter = match &args.to {
        Some(to) => Some(service_filter(&cluster, args.namespace.as_deref(), to).await?),
        None => None,
    };
    let mut sources: Vec<(String, AdminEndpoint)> = cluster
        .ztunnels(args.node.as_deref())
        .await?
        .into_iter()
        .map(|n| (format!("ztunnel {}", n.node), n.admin))
        .collect();
    if args.node.is_none() {
        // Waypoints are optional: a cluster without any is fine.
        sources.extend(
            cluster
                .waypoints()
                .await
                .unwrap_or_default()
                .into_iter()
                .map(|(key, admin)| (format!("waypoint {key}"), admin)),
        );
    }
    let path = query(args.namespace.as_deref());
    // Small: if the terminal is slower than the proxies, their bounded
    // buffers drop events, not ours.
    let (tx, mut rx) = mpsc::channel::<ReportedEvent>(256);
    let mut opened = 0usize;
    let mut failures = Vec::new();
    for (reporter, admin) in sources {
        match admin.get_lines(&path).await {
            Ok(mut lines) => {
                opened += 1;
                let tx = tx.clone();
                tokio::spawn(async move {
                    loop {
                        match lines.next_line().await {
                            Ok(Some(line)) if line.trim().is_empty() => continue,
                            Ok(Some(line)) => match serde_json::from_str::<TapEvent>(&line) {
                                Ok(event) => {
                                    let reported = ReportedEvent {
                                        reporter: reporter.clone(),
                                        event,
                                    };
                                    if tx.send(reported).await.is_err() {
                                        return;
                                    }
                                }
                                Err(e) => {
                                    eprintln!("weftctl: {reporter}: skipped an invalid event: {e}")
                                }
                            },
                            Ok(None) => {
                                eprintln!("weftctl: {reporter}: tap stream ended");
                                return;
                            }
                            Err(e) => {
                                eprintln!("weftctl: {reporter}: tap stream failed: {e}");
                                return;
                            }
                        }
                    }
                });
            }
            Err(e) => failures.push(e),
        }
    }
    drop(tx);
    if opened == 0 {
        return Err(failures
            .into_iter()
            .next()
            .unwrap_or_else(|| CliError::other("nothing to tap")));
    }
    for e in &failures {
        eprintln!("weftctl: warning: {e}");
    }
    if matches!(global.output, Format::Table | Format::Wide) {
        output::print(&format!(
            "{:<24}  {:<18}  {:<7}  {}\n",
            "TIME", "REPORTER", "EVENT", "CONNECTION"
        ));
    }
    let deadline = args
        .duration
        .map(|s| tokio::time::Instant::now() + Duration::from_secs_f64(s.max(0.0)));
    let mut shown = 0u64;
    loop {
        if args.count.is_some_and(|n| shown >= n) {
            break;
        }
        let next = match deadline {
            Some(d) => match tokio::time::timeout_at(d, rx.recv()).await {
                Ok(event) => event,
                Err(_) => break,
            },
            None => rx.recv().await,
        };
        let Some(event) = next else { break };
        if filter.as_ref().is_some_and(|f| !f.matches(&event.event)) {
            continue;
        }
        output::print(&render_event(global.output, &event)?);
        shown += 1;
    }
    Ok(if failures.is_empty() {
        Outcome::Ok
    } else {
        Outcome::Partial
    })
}

/// One event as a line (tables) or a document (JSON: one per line; YAML:
/// `---`-separated).
pub fn render_event(format: Format, e: &ReportedEvent) -> Result<String> {
    match format {
        Format::Json => Ok(format!(
            "{}\n",
            serde_json::to_string(e).map_err(CliError::other)?
        )),
        Format::Yaml => Ok(format!(
            "---\n{}",
            weft_api::yaml::to_string(e).map_err(CliError::other)?
        )),
        Format::Table | Format::Wide => Ok(format!("{}\n", line(e, format == Format::Wide))),
    }
}

fn line(e: &ReportedEvent, wide: bool) -> String {
    let ev = &e.event;
    let c = &ev.connection;
    let peer = |p: &weft_api::admin::Peer| {
        let name = p.workload.clone().unwrap_or_else(|| p.address.clone());
        match &p.identity {
            Some(id) if wide => format!("{name} ({id})"),
            Some(id) => format!("{name} ({})", short_identity(id)),
            None => name,
        }
    };
    let kind = match ev.kind {
        TapKind::Open => "open",
        TapKind::Close => "close",
        TapKind::Deny => "deny",
        TapKind::Request => "request",
    };
    let mut text = format!(
        "{:<24}  {:<18}  {:<7}  {} -> {}",
        format::unix_ms(ev.time_ms),
        e.reporter,
        kind,
        peer(&c.source),
        peer(&c.destination)
    );
    if let Some(w) = &c.waypoint {
        text.push_str(&format!(" via {w}"));
    }
    if let Some(r) = &ev.request {
        text.push_str(&format!("  {r}"));
    }
    if let Some(s) = ev.status {
        text.push_str(&format!(" {s}"));
    }
    if let Some(v) = &ev.verdict {
        text.push_str(&format!("  verdict: {v}"));
    }
    if ev.kind == TapKind::Close {
        text.push_str(&format!(
            "  sent {} received {} in {}",
            format::bytes(c.bytes_sent),
            format::bytes(c.bytes_received),
            format::age_ms(c.age_ms)
        ));
    }
    if ev.dropped > 0 {
        text.push_str(&format!("  ({} events dropped before this)", ev.dropped));
    }
    text
}
