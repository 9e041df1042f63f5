//! Live connections: what `/connections` lists, what `/tap` streams, what
//! the metrics count, and the access log — all from one place, so they agree.
//!
//! A handler registers a connection when it is established and holds the
//! returned [`ConnectionGuard`] while bytes flow; dropping the guard closes
//! the record (metrics, access log line, tap event). A refused connection is
//! recorded once with [`ConnectionRegistry::deny`].

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tokio::sync::broadcast;
use weft_api::admin::{ConnectionInfo, Direction, Peer, TapEvent, TapKind, Transport};
use weft_api::config::{Service, Workload};
use weft_hbone::ByteCounters;
use weft_runtime::standard_metrics::{self, End, Reporter, TcpSeries, Traffic};

/// How many tap events may queue per reader before the oldest are dropped:
/// a slow `weftctl tap` loses events, it never slows the data path.
const TAP_BUFFER: usize = 1024;
/// Label sets whose counters are kept resolved. Past this the cache starts
/// over (the recorder keeps every series; only the shortcut is lost), so
/// churning workload names cannot grow it without bound.
const COUNTER_CACHE_LIMIT: usize = 4096;

/// A connection as the handler knows it when it is established.
#[derive(Debug, Clone)]
pub struct ConnectionMeta {
    pub direction: Direction,
    pub transport: Transport,
    pub source: Peer,
    pub destination: Peer,
    pub waypoint: Option<String>,
    /// The model's view of the ends and the Service addressed, for Istio's
    /// labels (canonical names, service host).
    pub known: Known,
}

/// What the model knows of a connection beyond its addresses.
#[derive(Debug, Clone, Default)]
pub struct Known {
    pub source: Option<Arc<Workload>>,
    pub destination: Option<Arc<Workload>>,
    pub service: Option<Arc<Service>>,
}

struct Live {
    meta: ConnectionMeta,
    counters: Arc<ByteCounters>,
    metrics: Arc<TcpSeries>,
    opened: Instant,
    opened_at_ms: u64,
}

/// What the labels of a connection's series are made of.
struct SeriesKey {
    direction: Direction,
    transport: Transport,
    source_workload: Option<String>,
    source_identity: Option<String>,
    destination_workload: Option<String>,
    destination_identity: Option<String>,
    service: Option<String>,
}

impl SeriesKey {
    fn of(meta: &ConnectionMeta) -> Self {
        SeriesKey {
            direction: meta.direction,
            transport: meta.transport,
            source_workload: meta.source.workload.clone(),
            source_identity: meta.source.identity.clone(),
            destination_workload: meta.destination.workload.clone(),
            destination_identity: meta.destination.identity.clone(),
            service: service_of(meta).map(str::to_owned),
        }
    }

    /// The cache index of `meta`'s label set, computed from borrowed fields
    /// so that a lookup allocates nothing.
    fn hash_of(meta: &ConnectionMeta) -> u64 {
        let mut hasher = std::hash::DefaultHasher::new();
        (
            meta.direction,
            meta.transport,
            &meta.source.workload,
            &meta.source.identity,
            &meta.destination.workload,
            &meta.destination.identity,
            service_of(meta),
        )
            .hash(&mut hasher);
        hasher.finish()
    }

    fn matches(&self, meta: &ConnectionMeta) -> bool {
        self.direction == meta.direction
            && self.transport == meta.transport
            && self.source_workload == meta.source.workload
            && self.source_identity == meta.source.identity
            && self.destination_workload == meta.destination.workload
            && self.destination_identity == meta.destination.identity
            && self.service.as_deref() == service_of(meta)
    }
}

#[derive(Clone)]
pub struct ConnectionRegistry {
    inner: Arc<Inner>,
}

struct Inner {
    next_id: AtomicU64,
    live: Mutex<HashMap<u64, Live>>,
    /// Resolved counters by [`SeriesKey::hash_of`].
    series: Mutex<HashMap<u64, (SeriesKey, Arc<TcpSeries>)>>,
    tap: broadcast::Sender<TapEvent>,
    deny_lines: DenyLogLimiter,
}

/// Deny lines per (source address, reason) per second before the rest are
/// only counted: a client repeating a refused connection must not be able
/// to fill the node's disk through our log.
const DENY_LINES_PER_SECOND: u32 = 5;
/// Keys remembered; past this the limiter starts over.
const DENY_KEYS_LIMIT: usize = 4096;

/// Rate-limits access-log lines of refused connections per (source address
/// without its port, reason): a fixed one-second window per key.
#[derive(Default)]
struct DenyLogLimiter {
    windows: Mutex<HashMap<u64, DenyWindow>>,
}

struct DenyWindow {
    started: Instant,
    logged: u32,
    suppressed: u64,
}

#[derive(Debug, PartialEq, Eq)]
enum DenyLine {
    /// Log it; `suppressed` lines of the key's previous window were not.
    Log {
        suppressed: u64,
    },
    Suppress,
}

impl DenyLogLimiter {
    fn admit(&self, source: &str, reason: &str) -> DenyLine {
        let host = source
            .parse::<std::net::SocketAddr>()
            .map(|a| a.ip().to_string())
            .unwrap_or_else(|_| source.to_owned());
        let mut hasher = std::hash::DefaultHasher::new();
        (host, reason).hash(&mut hasher);
        let key = hasher.finish();
        let now = Instant::now();
        let mut windows = self.windows.lock();
        if windows.len() >= DENY_KEYS_LIMIT && !windows.contains_key(&key) {
            windows.clear();
        }
        let window = windows.entry(key).or_insert(DenyWindow {
            started: now,
            logged: 0,
            suppressed: 0,
        });
        if now.duration_since(window.started) >= std::time::Duration::from_secs(1) {
            let suppressed = std::mem::take(&mut window.suppressed);
            window.started = now;
            window.logged = 1;
            return DenyLine::Log { suppressed };
        }
        if window.logged < DENY_LINES_PER_SECOND {
            window.logged += 1;
            DenyLine::Log { suppressed: 0 }
        } else {
            window.suppressed += 1;
            DenyLine::Suppress
        }
    }
}

impl Default for ConnectionRegistry {
    fn default() -> Self {
        ConnectionRegistry {
            inner: Arc::new(Inner {
                next_id: AtomicU64::new(1),
                live: Mutex::default(),
                series: Mutex::default(),
                tap: broadcast::channel(TAP_BUFFER).0,
                deny_lines: DenyLogLimiter::default(),
            }),
        }
    }
}

/// Keeps a connection listed; dropping it records the close.
pub struct ConnectionGuard {
    id: u64,
    registry: ConnectionRegistry,
    pub counters: Arc<ByteCounters>,
}

impl ConnectionRegistry {
    /// Records an established connection.
    pub fn open(&self, meta: ConnectionMeta) -> ConnectionGuard {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let counters = Arc::new(ByteCounters::default());
        let live = Live {
            metrics: self.series(&meta),
            meta,
            counters: counters.clone(),
            opened: Instant::now(),
            opened_at_ms: unix_ms(),
        };
        live.metrics.opened();
        self.emit(TapKind::Open, || info(id, &live), Some("allow".into()));
        self.inner.live.lock().insert(id, live);
        ConnectionGuard {
            id,
            registry: self.clone(),
            counters,
        }
    }

    /// Records a refused connection: `label` is the metric's `reason` label
    /// (a short stable name such as `policy` or `own_listener`), `reason`
    /// the sentence for the access log and `/tap`.
    pub fn deny(&self, meta: ConnectionMeta, label: &'static str, reason: &str) {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        // Denials are rare next to connections: no cached handle.
        standard_metrics::denied(&labels(&meta), label, &traffic(&meta));
        let live = Live {
            metrics: self.series(&meta),
            meta,
            counters: Arc::default(),
            opened: Instant::now(),
            opened_at_ms: unix_ms(),
        };
        let info = info(id, &live);
        match self.inner.deny_lines.admit(&info.source.address, reason) {
            DenyLine::Log { suppressed } => {
                if suppressed > 0 {
                    tracing::info!(
                        target: "access",
                        src = %info.source.address,
                        reason,
                        suppressed,
                        "similar denials not logged in the last second"
                    );
                }
                access_log(&info, "deny", Some(reason));
            }
            DenyLine::Suppress => {
                metrics::counter!("weft_access_log_suppressed_total").increment(1);
            }
        }
        self.emit(TapKind::Deny, || info, Some(reason.to_owned()));
    }

    /// The counters for `meta`'s label set, resolved at most once per set.
    fn series(&self, meta: &ConnectionMeta) -> Arc<TcpSeries> {
        let hash = SeriesKey::hash_of(meta);
        let mut series = self.inner.series.lock();
        if let Some((key, counters)) = series.get(&hash)
            && key.matches(meta)
        {
            return counters.clone();
        }
        if series.len() >= COUNTER_CACHE_LIMIT {
            series.clear();
        }
        // A hash collision replaces the other set's entry: it is only a
        // shortcut, the recorder still holds both series.
        let counters = Arc::new(TcpSeries::new(&labels(meta), &traffic(meta)));
        series.insert(hash, (SeriesKey::of(meta), counters.clone()));
        counters
    }

    /// The live connections, oldest first.
    pub fn snapshot(&self) -> Vec<ConnectionInfo> {
        let live = self.inner.live.lock();
        let mut out: Vec<ConnectionInfo> = live.iter().map(|(id, l)| info(*id, l)).collect();
        out.sort_by_key(|c| c.id);
        out
    }

    pub fn len(&self) -> usize {
        self.inner.live.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn subscribe_tap(&self) -> broadcast::Receiver<TapEvent> {
        self.inner.tap.subscribe()
    }

    fn close(&self, id: u64) {
        let Some(live) = self.inner.live.lock().remove(&id) else {
            return;
        };
        live.metrics
            .closed(live.counters.sent(), live.counters.received());
        let info = info(id, &live);
        access_log(&info, "allow", None);
        self.emit(TapKind::Close, || info, None);
    }

    /// Sends a tap event if anyone is watching; the event is only built then.
    fn emit(
        &self,
        kind: TapKind,
        connection: impl FnOnce() -> ConnectionInfo,
        verdict: Option<String>,
    ) {
        if self.inner.tap.receiver_count() == 0 {
            return;
        }
        // A receiver that went away since the check is not an error.
        let _ = self.inner.tap.send(TapEvent {
            time_ms: unix_ms(),
            kind,
            connection: connection(),
            verdict,
            request: None,
            status: None,
            dropped: 0,
        });
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.registry.close(self.id);
    }
}

fn info(id: u64, live: &Live) -> ConnectionInfo {
    ConnectionInfo {
        id,
        direction: live.meta.direction,
        transport: live.meta.transport,
        source: live.meta.source.clone(),
        destination: live.meta.destination.clone(),
        waypoint: live.meta.waypoint.clone(),
        bytes_sent: live.counters.sent(),
        bytes_received: live.counters.received(),
        opened_at_ms: live.opened_at_ms,
        age_ms: live.opened.elapsed().as_millis() as u64,
    }
}

/// The Service a connection addressed, by host: part of its Istio labels.
fn service_of(meta: &ConnectionMeta) -> Option<&str> {
    meta.known.service.as_deref().map(|s| s.hostname.as_str())
}

/// What Istio's labels are made of (docs/design.md §9).
fn traffic(meta: &ConnectionMeta) -> Traffic<'_> {
    Traffic {
        reporter: match meta.direction {
            Direction::Outbound => Reporter::Source,
            Direction::Inbound => Reporter::Destination,
        },
        source: End {
            workload: meta.known.source.as_deref(),
            principal: meta.source.identity.as_deref(),
        },
        destination: End {
            workload: meta.known.destination.as_deref(),
            principal: meta.destination.identity.as_deref(),
        },
        service: meta.known.service.as_deref(),
        protocol: "tcp",
        mutual_tls: meta.transport == Transport::Hbone,
    }
}

/// Metric labels (docs/design.md §9). The reporter is the side this ztunnel serves.
fn labels(meta: &ConnectionMeta) -> Vec<(&'static str, String)> {
    let split = |p: &Peer| {
        let (ns, name) = p
            .workload
            .as_deref()
            .and_then(|w| w.split_once('/'))
            .map(|(n, w)| (n.to_owned(), w.to_owned()))
            .unwrap_or_else(|| ("unknown".into(), "unknown".into()));
        (
            ns,
            name,
            p.identity.clone().unwrap_or_else(|| "unknown".into()),
        )
    };
    let (src_ns, src_wl, src_id) = split(&meta.source);
    let (dst_ns, dst_wl, dst_id) = split(&meta.destination);
    vec![
        (
            "reporter",
            match meta.direction {
                Direction::Outbound => "source".into(),
                Direction::Inbound => "destination".into(),
            },
        ),
        ("source_workload", src_wl),
        ("source_workload_namespace", src_ns),
        ("source_principal", src_id),
        ("destination_workload", dst_wl),
        ("destination_workload_namespace", dst_ns),
        ("destination_principal", dst_id),
        (
            "connection_security_policy",
            match meta.transport {
                Transport::Hbone => "mutual_tls".into(),
                Transport::Tcp => "none".into(),
            },
        ),
    ]
}

fn access_log(info: &ConnectionInfo, verdict: &str, reason: Option<&str>) {
    tracing::info!(
        target: "access",
        direction = ?info.direction,
        transport = ?info.transport,
        src = %info.source.address,
        src_workload = info.source.workload.as_deref().unwrap_or("-"),
        src_identity = info.source.identity.as_deref().unwrap_or("-"),
        dst = %info.destination.address,
        dst_workload = info.destination.workload.as_deref().unwrap_or("-"),
        dst_identity = info.destination.identity.as_deref().unwrap_or("-"),
        waypoint = info.waypoint.as_deref().unwrap_or("-"),
        bytes_sent = info.bytes_sent,
        bytes_received = info.bytes_received,
        duration_ms = info.age_ms,
        verdict,
        reason = reason.unwrap_or("-"),
        "connection"
    );
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    use super::*;

    fn meta(source: &str, destination: &str) -> ConnectionMeta {
        let peer = |workload: &str| Peer {
            address: "10.0.0.1:1234".into(),
            workload: Some(workload.into()),
            identity: Some(format!("spiffe://cluster.local/ns/{workload}")),
        };
        ConnectionMeta {
            direction: Direction::Outbound,
            transport: Transport::Hbone,
            source: peer(source),
            destination: peer(destination),
            waypoint: None,
            known: Known::default(),
        }
    }

    /// (metric name, source workload label) -> counter value.
    fn counters(recorder: &DebuggingRecorder) -> HashMap<(String, String), u64> {
        recorder
            .snapshotter()
            .snapshot()
            .into_vec()
            .into_iter()
            .filter_map(|(key, _, _, value)| {
                let DebugValue::Counter(n) = value else {
                    return None;
                };
                let key = key.key();
                let source = key
                    .labels()
                    .find(|l| l.key() == "source_workload")
                    .map(|l| l.value().to_owned())?;
                Some(((key.name().to_owned(), source), n))
            })
            .collect()
    }

    #[test]
    fn each_label_set_counts_its_own_connections_and_bytes() {
        let recorder = DebuggingRecorder::new();
        let registry = ConnectionRegistry::default();
        metrics::with_local_recorder(&recorder, || {
            for sent in [10, 20] {
                let guard = registry.open(meta("shop/a", "shop/b"));
                guard.counters.sent.fetch_add(sent, Ordering::Relaxed);
            }
            let guard = registry.open(meta("shop/c", "shop/b"));
            guard.counters.received.fetch_add(5, Ordering::Relaxed);
        });
        let got = counters(&recorder);
        let value = |name: &str, source: &str| got.get(&(name.to_owned(), source.to_owned()));
        assert_eq!(value("weft_tcp_connections_opened_total", "a"), Some(&2));
        assert_eq!(value("weft_tcp_connections_closed_total", "a"), Some(&2));
        assert_eq!(value("weft_tcp_sent_bytes_total", "a"), Some(&30));
        assert_eq!(value("weft_tcp_connections_opened_total", "c"), Some(&1));
        assert_eq!(value("weft_tcp_received_bytes_total", "c"), Some(&5));
        assert_eq!(value("weft_tcp_sent_bytes_total", "c"), Some(&0));
        assert!(registry.is_empty());
    }

    /// Security finding 10: one log line per refused connection let any
    /// client fill the log. Lines are limited per (source, reason); other
    /// sources and other reasons keep theirs.
    #[test]
    fn deny_lines_are_limited_per_source_and_reason() {
        let limiter = DenyLogLimiter::default();
        let logged = |src: &str, reason: &str, n: usize| {
            (0..n)
                .filter(|_| limiter.admit(src, reason) != DenyLine::Suppress)
                .count()
        };
        let cap = DENY_LINES_PER_SECOND as usize;
        assert_eq!(logged("10.0.0.1:1000", "policy", 1000), cap);
        // Another port of the same host is the same source.
        assert_eq!(logged("10.0.0.1:2000", "policy", 10), 0);
        assert_eq!(logged("10.0.0.1:1000", "no route", 10), cap);
        assert_eq!(logged("10.0.0.2:1000", "policy", 10), cap);
    }

    #[test]
    fn a_watcher_sees_opens_closes_and_denials() {
        let registry = ConnectionRegistry::default();
        // Nobody watching: nothing is queued for anyone.
        drop(registry.open(meta("shop/a", "shop/b")));
        let mut tap = registry.subscribe_tap();
        drop(registry.open(meta("shop/a", "shop/b")));
        registry.deny(meta("shop/c", "shop/b"), "policy", "denied by policy");
        let kinds: Vec<_> = std::iter::from_fn(|| tap.try_recv().ok())
            .map(|e| (e.kind, e.connection.source.workload.unwrap_or_default()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (TapKind::Open, "shop/a".to_owned()),
                (TapKind::Close, "shop/a".to_owned()),
                (TapKind::Deny, "shop/c".to_owned()),
            ]
        );
    }
}
