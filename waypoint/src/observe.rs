//! Every request recorded once — metrics, the access log line, the `/tap`
//! event — from one place, so they agree; and the live tunnels `/connections`
//! lists.
//!
//! Metrics (docs/design.md §9): `weft_requests_total` and the
//! `weft_request_duration_seconds` histogram, labelled by source and
//! destination workload, namespace and principal, destination service and
//! response code, `reporter="waypoint"`. TCP-mode tunnels count
//! `weft_tcp_connections_opened_total`/`closed`, bytes, and denials.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{Method, StatusCode};
use parking_lot::Mutex;
use tokio::sync::broadcast;
use weft_api::admin::{ConnectionInfo, Direction, Peer, TapEvent, TapKind, Transport};
use weft_api::config::{Service, Workload};
use weft_runtime::standard_metrics::{self, End, HttpSeries, Reporter, TcpSeries, Traffic};
use weft_runtime::store::workload_identity;

use crate::policy::Client;
use crate::sniff::Counters;

/// A slow `/tap` reader loses events past this many; it never slows requests.
const TAP_BUFFER: usize = 1024;

/// Which way a tunnel's bytes are handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Http,
    Tcp,
}

struct LiveTunnel {
    source: Peer,
    destination: Peer,
    /// A TCP tunnel's series; HTTP tunnels count requests instead.
    series: Option<TcpSeries>,
    counters: Arc<Counters>,
    opened: Instant,
    opened_at_ms: u64,
}

/// The recorder. Shared by every tunnel.
pub struct Observer {
    waypoint: String,
    access_log: bool,
    next_id: AtomicU64,
    tunnels: Mutex<HashMap<u64, LiveTunnel>>,
    tap: broadcast::Sender<TapEvent>,
}

/// Keeps a tunnel listed until dropped.
pub struct TunnelGuard {
    pub id: u64,
    observer: Arc<Observer>,
}

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        self.observer.close_tunnel(self.id);
    }
}

/// Metric handles of a tunnel's requests, by destination and code: the
/// source is the same for every request of a tunnel, so after its first
/// requests recording costs two atomic adds instead of building and
/// hashing nine labels.
#[derive(Default)]
pub struct TunnelMetrics {
    entries: Mutex<Vec<MetricEntry>>,
}

impl std::fmt::Debug for TunnelMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelMetrics").finish_non_exhaustive()
    }
}

struct MetricEntry {
    destination: Option<String>,
    service: Option<String>,
    code: u16,
    series: HttpSeries,
}

/// Distinct label sets cached per tunnel; past this, handles are looked up
/// each time (a tunnel fanning out to very many endpoints).
const TUNNEL_METRICS_CAP: usize = 32;

/// One request, as it ended.
#[derive(Debug)]
pub struct RequestRecord<'a> {
    pub tunnel: u64,
    pub metrics: &'a TunnelMetrics,
    pub client: &'a Client,
    pub method: &'a Method,
    /// Normalized path, without the query (queries may carry secrets).
    pub path: &'a str,
    /// What the client addressed (VIP:port or pod IP:port).
    pub authority: SocketAddr,
    /// The Service addressed, if any.
    pub service: Option<&'a Service>,
    /// The endpoint that answered (or was tried last).
    pub endpoint: Option<(&'a Workload, SocketAddr)>,
    /// `namespace/name` of the route and rule index, if one matched.
    pub route: Option<(&'a str, usize)>,
    pub status: StatusCode,
    pub duration: Duration,
    pub attempts: u32,
    /// `allow`, or why the request was refused.
    pub verdict: &'a str,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// `namespace/name` of a Service, as weft's labels and logs name it.
fn service_key(s: &Service) -> String {
    format!("{}/{}", s.namespace, s.name)
}

fn split_workload(w: Option<&Workload>) -> (String, String) {
    match w {
        Some(w) => (w.namespace.clone(), w.name.clone()),
        None => ("unknown".into(), "unknown".into()),
    }
}

/// What Istio's labels of a TCP tunnel are made of.
fn tcp_traffic<'a>(
    client: &'a Client,
    destination: &'a Peer,
    destination_workload: Option<&'a Workload>,
) -> Traffic<'a> {
    Traffic {
        reporter: Reporter::Waypoint,
        source: End {
            workload: client.workload.as_deref(),
            principal: Some(&client.principal),
        },
        destination: End {
            workload: destination_workload,
            principal: destination.identity.as_deref(),
        },
        service: None,
        protocol: "tcp",
        mutual_tls: true,
    }
}

/// What Istio's labels of a request are made of (docs/design.md §9).
fn request_traffic<'a>(
    r: &RequestRecord<'a>,
    destination_principal: Option<&'a str>,
) -> Traffic<'a> {
    Traffic {
        reporter: Reporter::Waypoint,
        source: End {
            workload: r.client.workload.as_deref(),
            principal: Some(&r.client.principal),
        },
        destination: End {
            workload: r.endpoint.map(|(w, _)| w),
            principal: destination_principal,
        },
        service: r.service,
        protocol: "http",
        mutual_tls: true,
    }
}

/// Metric labels of a request (docs/design.md §9).
fn request_labels(r: &RequestRecord<'_>) -> [(&'static str, String); 9] {
    let (src_ns, src_wl) = split_workload(r.client.workload.as_deref());
    let (dst_ns, dst_wl) = split_workload(r.endpoint.map(|(w, _)| w));
    let dst_principal = r
        .endpoint
        .and_then(|(w, _)| workload_identity(w).ok())
        .map(|id| id.to_string());
    [
        ("reporter", "waypoint".to_owned()),
        ("source_workload", src_wl),
        ("source_workload_namespace", src_ns),
        ("source_principal", r.client.principal.clone()),
        ("destination_workload", dst_wl),
        ("destination_workload_namespace", dst_ns),
        (
            "destination_principal",
            dst_principal.unwrap_or_else(|| "unknown".into()),
        ),
        (
            "destination_service",
            r.service
                .map(service_key)
                .unwrap_or_else(|| "unknown".to_owned()),
        ),
        ("response_code", r.status.as_u16().to_string()),
    ]
}

impl Observer {
    pub fn new(waypoint: String, access_log: bool) -> Arc<Observer> {
        Arc::new(Observer {
            waypoint,
            access_log,
            next_id: AtomicU64::new(1),
            tunnels: Mutex::default(),
            tap: broadcast::channel(TAP_BUFFER).0,
        })
    }

    /// Lists a tunnel until the guard drops.
    pub fn open_tunnel(
        self: &Arc<Self>,
        client: &Client,
        destination: Peer,
        destination_workload: Option<&Workload>,
        mode: Mode,
        counters: Arc<Counters>,
    ) -> TunnelGuard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut live = LiveTunnel {
            source: client.peer(),
            destination,
            series: None,
            counters,
            opened: Instant::now(),
            opened_at_ms: unix_ms(),
        };
        if mode == Mode::Tcp {
            let series = TcpSeries::new(
                &self.tcp_labels(&live),
                &tcp_traffic(client, &live.destination, destination_workload),
            );
            series.opened();
            live.series = Some(series);
            self.emit(
                TapKind::Open,
                self.info(id, &live),
                Some("allow".into()),
                None,
                None,
            );
        }
        self.tunnels.lock().insert(id, live);
        TunnelGuard {
            id,
            observer: self.clone(),
        }
    }

    fn close_tunnel(&self, id: u64) {
        let Some(live) = self.tunnels.lock().remove(&id) else {
            return;
        };
        if let Some(series) = &live.series {
            series.closed(
                live.counters.sent.load(Ordering::Relaxed),
                live.counters.received.load(Ordering::Relaxed),
            );
            let info = self.info(id, &live);
            if self.access_log {
                tracing::info!(
                    target: "access",
                    mode = "tcp",
                    src = %info.source.address,
                    src_identity = info.source.identity.as_deref().unwrap_or("-"),
                    dst = %info.destination.address,
                    dst_workload = info.destination.workload.as_deref().unwrap_or("-"),
                    bytes_received = info.bytes_sent,
                    bytes_sent = info.bytes_received,
                    duration_ms = info.age_ms,
                    "connection"
                );
            }
            self.emit(TapKind::Close, info, None, None, None);
        }
    }

    /// A tunnel refused before or after it opened (policy, no destination):
    /// `label` is the metric's `reason`, `reason` the sentence for the log.
    pub fn deny_tunnel(
        &self,
        client: &Client,
        destination: Peer,
        label: &'static str,
        reason: &str,
    ) {
        let live = LiveTunnel {
            source: client.peer(),
            destination,
            series: None,
            counters: Arc::default(),
            opened: Instant::now(),
            opened_at_ms: unix_ms(),
        };
        standard_metrics::denied(
            &self.tcp_labels(&live),
            label,
            &tcp_traffic(client, &live.destination, None),
        );
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let info = self.info(id, &live);
        if self.access_log {
            tracing::info!(
                target: "access",
                src = %info.source.address,
                src_identity = info.source.identity.as_deref().unwrap_or("-"),
                dst = %info.destination.address,
                verdict = "deny",
                reason,
                "connection"
            );
        }
        self.emit(TapKind::Deny, info, Some(reason.to_owned()), None, None);
    }

    /// Records one request: metrics, access log, tap.
    pub fn request(&self, r: &RequestRecord<'_>) {
        let code = r.status.as_u16();
        let destination = r.endpoint.map(|(w, _)| w.uid.as_str());
        {
            let mut entries = r.metrics.entries.lock();
            let hit = entries.iter().find(|e| {
                e.code == code
                    && e.destination.as_deref() == destination
                    && e.service.as_deref() == r.service.map(|s| s.hostname.as_str())
            });
            match hit {
                Some(e) => e.series.record(r.duration),
                None => {
                    let principal = r
                        .endpoint
                        .and_then(|(w, _)| workload_identity(w).ok())
                        .map(|id| id.to_string());
                    let series = HttpSeries::new(
                        &request_labels(r),
                        &request_traffic(r, principal.as_deref()),
                        code,
                        None,
                    );
                    series.record(r.duration);
                    if entries.len() < TUNNEL_METRICS_CAP {
                        entries.push(MetricEntry {
                            destination: destination.map(str::to_owned),
                            service: r.service.map(|s| s.hostname.clone()),
                            code,
                            series,
                        });
                    }
                }
            }
        }

        // Formatted only for the log line or a watcher: most requests have
        // neither.
        let upstream = || r.endpoint.map(|(_, a)| a.to_string());
        if self.access_log {
            tracing::info!(
                target: "access",
                method = %r.method,
                path = r.path,
                status = r.status.as_u16(),
                duration_ms = r.duration.as_secs_f64() * 1000.0,
                src = %r.client.ip,
                src_identity = %r.client.principal,
                authority = %r.authority,
                service = r.service.map(service_key).as_deref().unwrap_or("-"),
                route = %r.route.map(|(n, i)| format!("{n}#{i}")).unwrap_or_else(|| "-".into()),
                upstream = upstream().as_deref().unwrap_or("-"),
                dst_workload = %r.endpoint.map(|(w, _)| format!("{}/{}", w.namespace, w.name)).unwrap_or_else(|| "-".into()),
                attempts = r.attempts,
                verdict = r.verdict,
                "request"
            );
        }
        if self.tap.receiver_count() > 0 {
            let dst_principal = r
                .endpoint
                .and_then(|(w, _)| workload_identity(w).ok())
                .map(|id| id.to_string());
            let now = unix_ms();
            let info = ConnectionInfo {
                id: r.tunnel,
                direction: Direction::Inbound,
                transport: Transport::Hbone,
                source: r.client.peer(),
                destination: Peer {
                    address: upstream().unwrap_or_else(|| r.authority.to_string()),
                    workload: r
                        .endpoint
                        .map(|(w, _)| format!("{}/{}", w.namespace, w.name))
                        .or_else(|| r.service.map(service_key)),
                    identity: dst_principal,
                },
                waypoint: Some(self.waypoint.clone()),
                bytes_sent: 0,
                bytes_received: 0,
                opened_at_ms: now.saturating_sub(r.duration.as_millis() as u64),
                age_ms: r.duration.as_millis() as u64,
            };
            self.emit(
                TapKind::Request,
                info,
                Some(r.verdict.to_owned()),
                Some(format!("{} {}", r.method, r.path)),
                Some(r.status.as_u16()),
            );
        }
    }

    /// The live tunnels, oldest first.
    pub fn tunnels(&self) -> Vec<ConnectionInfo> {
        let live = self.tunnels.lock();
        let mut out: Vec<ConnectionInfo> = live.iter().map(|(id, l)| self.info(*id, l)).collect();
        out.sort_by_key(|c| c.id);
        out
    }

    pub fn tunnel_count(&self) -> usize {
        self.tunnels.lock().len()
    }

    pub fn subscribe_tap(&self) -> broadcast::Receiver<TapEvent> {
        self.tap.subscribe()
    }

    fn info(&self, id: u64, live: &LiveTunnel) -> ConnectionInfo {
        ConnectionInfo {
            id,
            direction: Direction::Inbound,
            transport: Transport::Hbone,
            source: live.source.clone(),
            destination: live.destination.clone(),
            waypoint: Some(self.waypoint.clone()),
            // Named from the client's side, as ztunnel does: sent = towards
            // the destination.
            bytes_sent: live.counters.received.load(Ordering::Relaxed),
            bytes_received: live.counters.sent.load(Ordering::Relaxed),
            opened_at_ms: live.opened_at_ms,
            age_ms: live.opened.elapsed().as_millis() as u64,
        }
    }

    fn tcp_labels(&self, live: &LiveTunnel) -> Vec<(&'static str, String)> {
        let split = |p: &Peer| {
            p.workload
                .as_deref()
                .and_then(|w| w.split_once('/'))
                .map(|(n, w)| (n.to_owned(), w.to_owned()))
                .unwrap_or_else(|| ("unknown".into(), "unknown".into()))
        };
        let (src_ns, src_wl) = split(&live.source);
        let (dst_ns, dst_wl) = split(&live.destination);
        vec![
            ("reporter", "waypoint".into()),
            ("source_workload", src_wl),
            ("source_workload_namespace", src_ns),
            (
                "source_principal",
                live.source
                    .identity
                    .clone()
                    .unwrap_or_else(|| "unknown".into()),
            ),
            ("destination_workload", dst_wl),
            ("destination_workload_namespace", dst_ns),
            (
                "destination_principal",
                live.destination
                    .identity
                    .clone()
                    .unwrap_or_else(|| "unknown".into()),
            ),
            ("connection_security_policy", "mutual_tls".into()),
        ]
    }

    fn emit(
        &self,
        kind: TapKind,
        connection: ConnectionInfo,
        verdict: Option<String>,
        request: Option<String>,
        status: Option<u16>,
    ) {
        // No reader is the common case, not an error.
        let _ = self.tap.send(TapEvent {
            time_ms: unix_ms(),
            kind,
            connection,
            verdict,
            request,
            status,
            dropped: 0,
        });
    }
}
