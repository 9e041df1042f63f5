//! Picking a Service endpoint: healthy and not ejected; on the client's node
//! first when the Service asks for it (`trafficDistribution: PreferClose`);
//! then the better of two random choices: fewer outstanding connections,
//! and among equals, not one several times slower to connect than the other. Endpoints that refuse or reset are ejected for a while,
//! longer each time they fail again (passive health checking).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use weft_api::config::{HealthStatus, Service, ServicePort, Workload};

use crate::store::WorkloadStore;

/// A healthy endpoint of a Service, resolved to the address to reach.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub workload: Arc<Workload>,
    pub addr: SocketAddr,
}

#[derive(Debug, Default)]
struct EndpointStats {
    outstanding: AtomicUsize,
    /// Exponentially weighted connect latency, microseconds (0 = unknown).
    latency_us: AtomicU64,
    consecutive_failures: AtomicU32,
    ejected_until: Mutex<Option<Instant>>,
}

impl EndpointStats {
    fn ejected(&self, now: Instant) -> bool {
        self.ejected_until.lock().is_some_and(|until| now < until)
    }

    fn latency(&self) -> u64 {
        match self.latency_us.load(Ordering::Relaxed) {
            0 => 1_000,
            l => l,
        }
    }
}

/// Of two endpoints, whether to use the second: fewer outstanding
/// connections wins; with equal load, a random pick weighted by inverse
/// connect latency — a faster endpoint gets proportionally more, a slower
/// one still gets some, so its estimate keeps being refreshed and a single
/// slow sample cannot shut an endpoint out.
fn second_is_better(a: &EndpointStats, b: &EndpointStats) -> bool {
    let (oa, ob) = (
        a.outstanding.load(Ordering::Relaxed),
        b.outstanding.load(Ordering::Relaxed),
    );
    if oa != ob {
        return ob < oa;
    }
    let (la, lb) = (a.latency() as f64, b.latency() as f64);
    // P(b) = (1/lb) / (1/la + 1/lb) = la / (la + lb)
    rand::random::<f64>() < la / (la + lb)
}

/// An endpoint's share of one connection: counts as outstanding until
/// dropped, and takes the connection's outcome.
#[derive(Debug)]
pub struct EndpointLoad {
    stats: Arc<EndpointStats>,
}

const BASE_EJECTION: Duration = Duration::from_secs(5);
const MAX_EJECTION: Duration = Duration::from_secs(120);

impl EndpointLoad {
    pub fn connected(&self, latency: Duration) {
        let sample = latency.as_micros().max(1) as u64;
        let old = self.stats.latency_us.load(Ordering::Relaxed);
        // Weight 1/4: a stale or unlucky sample is mostly forgotten after a
        // handful of connections.
        let new = if old == 0 {
            sample
        } else {
            (old * 3 + sample) / 4
        };
        self.stats.latency_us.store(new, Ordering::Relaxed);
        self.stats.consecutive_failures.store(0, Ordering::Relaxed);
    }

    /// The endpoint refused or reset: take it out of rotation for a while.
    pub fn failed(&self) {
        let failures = self
            .stats
            .consecutive_failures
            .fetch_add(1, Ordering::Relaxed);
        let ejection = BASE_EJECTION
            .saturating_mul(1 << failures.min(5))
            .min(MAX_EJECTION);
        *self.stats.ejected_until.lock() = Some(Instant::now() + ejection);
    }
}

impl Drop for EndpointLoad {
    fn drop(&mut self) {
        self.stats.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Default)]
pub struct LoadBalancer {
    stats: Mutex<HashMap<SocketAddr, Arc<EndpointStats>>>,
}

impl LoadBalancer {
    pub fn pick<'a>(
        &self,
        candidates: &'a [Candidate],
        prefer_node: Option<&str>,
    ) -> Option<(&'a Candidate, EndpointLoad)> {
        if candidates.is_empty() {
            return None;
        }
        let now = Instant::now();
        let stats: Vec<Arc<EndpointStats>> = {
            let mut map = self.stats.lock();
            candidates
                .iter()
                .map(|c| map.entry(c.addr).or_default().clone())
                .collect()
        };
        let mut pool: Vec<usize> = (0..candidates.len())
            .filter(|&i| !stats[i].ejected(now))
            .collect();
        if pool.is_empty() {
            // Every endpoint failed recently; trying one beats refusing.
            pool = (0..candidates.len()).collect();
        }
        if let Some(node) = prefer_node {
            let local: Vec<usize> = pool
                .iter()
                .copied()
                .filter(|&i| candidates[i].workload.node == node)
                .collect();
            if !local.is_empty() {
                pool = local;
            }
        }
        let chosen = match pool.len() {
            1 => pool[0],
            n => {
                let a = pool[rand::random_range(0..n)];
                let mut b = pool[rand::random_range(0..n - 1)];
                if b == a {
                    b = pool[n - 1];
                }
                if second_is_better(&stats[a], &stats[b]) {
                    b
                } else {
                    a
                }
            }
        };
        stats[chosen].outstanding.fetch_add(1, Ordering::Relaxed);
        Some((
            &candidates[chosen],
            EndpointLoad {
                stats: stats[chosen].clone(),
            },
        ))
    }
}

/// The healthy endpoints of `service` for its `port`, each resolved to the
/// workload and the `pod IP:target port` to reach. ztunnel and the
/// waypoint pick among the same ones.
pub fn service_candidates(
    store: &WorkloadStore,
    service: &Service,
    port: &ServicePort,
) -> Vec<Candidate> {
    let svc_port = port.service_port;
    service
        .endpoints
        .iter()
        .filter(|e| e.status == HealthStatus::Healthy as i32)
        .filter_map(|e| {
            let workload = store.workload(&e.workload_uid)?;
            if workload.status != HealthStatus::Healthy as i32 {
                return None;
            }
            let target = e
                .ports
                .get(&svc_port)
                .copied()
                .filter(|p| *p != 0)
                .or((port.target_port != 0).then_some(port.target_port))
                .unwrap_or(svc_port);
            let ip = workload
                .addresses
                .iter()
                .find_map(|a| a.parse::<IpAddr>().ok())?;
            let target = u16::try_from(target).ok()?;
            Some(Candidate {
                workload,
                addr: SocketAddr::new(ip, target),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(uid: &str, node: &str, addr: &str) -> Candidate {
        Candidate {
            workload: Arc::new(Workload {
                uid: uid.into(),
                node: node.into(),
                ..Default::default()
            }),
            addr: addr.parse().unwrap(),
        }
    }

    #[test]
    fn spreads_over_all_endpoints_by_default() {
        let lb = LoadBalancer::default();
        let cands = vec![
            candidate("a", "n1", "10.0.1.1:80"),
            candidate("b", "n2", "10.0.2.1:80"),
            candidate("c", "n2", "10.0.2.2:80"),
        ];
        let mut seen = HashMap::new();
        // Hold every pick, so outstanding counts steer later picks.
        let mut held = Vec::new();
        for _ in 0..300 {
            let (c, load) = lb.pick(&cands, None).unwrap();
            *seen.entry(c.workload.uid.clone()).or_insert(0) += 1;
            held.push(load);
        }
        for uid in ["a", "b", "c"] {
            let n = seen.get(uid).copied().unwrap_or(0);
            assert!((60..=140).contains(&n), "{uid} got {n} of 300: {seen:?}");
        }
    }

    #[test]
    fn prefers_the_node_when_asked_and_falls_back() {
        let lb = LoadBalancer::default();
        let cands = vec![
            candidate("a", "n1", "10.0.1.1:80"),
            candidate("b", "n2", "10.0.2.1:80"),
        ];
        for _ in 0..50 {
            assert_eq!(lb.pick(&cands, Some("n1")).unwrap().0.workload.uid, "a");
        }
        let (_, load) = lb.pick(&cands, Some("n1")).unwrap();
        load.failed();
        // The local endpoint is ejected: traffic goes to the other node.
        for _ in 0..20 {
            assert_eq!(lb.pick(&cands, Some("n1")).unwrap().0.workload.uid, "b");
        }
    }

    #[test]
    fn a_slow_first_sample_does_not_shut_an_endpoint_out() {
        let lb = LoadBalancer::default();
        let cands = vec![
            candidate("a", "n1", "10.0.1.1:80"),
            candidate("b", "n2", "10.0.2.1:80"),
        ];
        // `b`'s first connect was slow (say, a cold path); `a` is fast.
        let mut slow_once = true;
        while slow_once {
            let (c, load) = lb.pick(&cands, None).unwrap();
            let latency = if c.workload.uid == "b" {
                slow_once = false;
                5_000
            } else {
                100
            };
            load.connected(Duration::from_micros(latency));
        }
        // How soon `b` is tried again is random (about 2% per pick at first),
        // so look over enough picks that recovery is certain, not likely:
        // simulated 20,000 times, `b` never got fewer than 600 of 2,000.
        let mut b = 0;
        for _ in 0..2000 {
            let (c, load) = lb.pick(&cands, None).unwrap();
            if c.workload.uid == "b" {
                b += 1;
                // Now it answers as fast as `a`.
                load.connected(Duration::from_micros(100));
            } else {
                load.connected(Duration::from_micros(100));
            }
        }
        assert!(b > 400, "b recovered only {b} of 2000 picks");
    }

    #[test]
    fn ejected_endpoints_are_skipped_until_all_are_ejected() {
        let lb = LoadBalancer::default();
        let cands = vec![
            candidate("a", "n1", "10.0.1.1:80"),
            candidate("b", "n1", "10.0.1.2:80"),
        ];
        for _ in 0..20 {
            let (c, load) = lb.pick(&cands, None).unwrap();
            if c.workload.uid == "a" {
                load.failed();
                break;
            }
        }
        for _ in 0..20 {
            assert_eq!(lb.pick(&cands, None).unwrap().0.workload.uid, "b");
        }
        let (_, load) = lb.pick(&cands, None).unwrap();
        load.failed();
        assert!(
            lb.pick(&cands, None).is_some(),
            "all ejected: still pick one"
        );
    }
}
