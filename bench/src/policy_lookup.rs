//! The per-connection policy lookup (`WorkloadStore::policies_for`, run on
//! every inbound connection): the store's index against the scan it
//! replaced (every policy, filtered with `applies_to`, then sorted), both
//! measured in the same run over the same store.
//!
//! The mesh: 10k workloads in 100 namespaces, two mesh-wide policies, and N
//! policies in each namespace (N = 1, 10, 100): the even ones
//! namespace-wide, the odd ones selector-scoped, each workload naming about
//! a tenth of its namespace's selector policies, as a controller would list
//! the policies whose selector matches a pod.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use weft_api::config::{Authorization, PolicyScope, Workload, resource};
use weft_runtime::store::{ConfigUpdate, WorkloadStore, policy_key};

use crate::stats::{median, round2};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value_t = 10_000)]
    workloads: u32,
    #[arg(long, default_value_t = 100)]
    namespaces: u32,
    /// Policies per namespace, one store per value.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
    policies: Vec<u32>,
    /// Alternating old/new rounds per store; the median is reported.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Length of one round of one algorithm.
    #[arg(long, default_value_t = 300)]
    round_ms: u64,
}

/// The lookup as it was before the index, over the same policies, behind a
/// lock as the store's map was.
struct Scan(RwLock<HashMap<String, Arc<Authorization>>>);

impl Scan {
    fn policies_for(&self, workload: &Workload) -> Vec<Arc<Authorization>> {
        let mut out: Vec<_> = self
            .0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|p| weft_api::authz::applies_to(p, workload))
            .cloned()
            .collect();
        out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        out
    }
}

fn policy(ns: &str, name: String, scope: PolicyScope) -> resource::Kind {
    resource::Kind::Authorization(Authorization {
        name,
        namespace: ns.into(),
        scope: scope as i32,
        ..Default::default()
    })
}

fn build(args: &Args, per_namespace: u32) -> anyhow::Result<WorkloadStore> {
    let mut resources = vec![
        policy("istio-system", "mesh-deny".into(), PolicyScope::Mesh),
        policy("istio-system", "mesh-audit".into(), PolicyScope::Mesh),
    ];
    for n in 0..args.namespaces {
        let ns = format!("team-{n}");
        for i in 0..per_namespace {
            let scope = if i % 2 == 0 {
                PolicyScope::Namespace
            } else {
                PolicyScope::WorkloadSelector
            };
            resources.push(policy(&ns, format!("policy-{i:03}"), scope));
        }
    }
    for w in 0..args.workloads {
        let n = w % args.namespaces;
        let ns = format!("team-{n}");
        let slot = (w / args.namespaces) % 10;
        let authorization_policies = (0..per_namespace)
            .filter(|i| i % 2 == 1 && (i / 2) % 10 == slot)
            .map(|i| format!("{ns}/policy-{i:03}"))
            .collect();
        resources.push(resource::Kind::Workload(Workload {
            uid: format!("uid-{w}"),
            name: format!("pod-{w}"),
            namespace: ns,
            service_account: format!("sa-{}", w / 10),
            addresses: vec![format!("10.{}.{}.{}", w >> 16, (w >> 8) & 255, w & 255)],
            authorization_policies,
            ..Default::default()
        }));
    }
    let store = WorkloadStore::default();
    store
        .apply(ConfigUpdate {
            version: 1,
            full_snapshot: true,
            resources,
            removed: Vec::new(),
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(store)
}

/// Nanoseconds per call of `lookup`, cycling through `workloads` for
/// `round` (whole batches of 64 calls, so the clock is not read per call).
fn time_round(
    workloads: &[Arc<Workload>],
    round: Duration,
    lookup: impl Fn(&Workload) -> usize,
) -> f64 {
    let start = Instant::now();
    let mut calls = 0u64;
    let mut next = 0;
    while start.elapsed() < round {
        for _ in 0..64 {
            black_box(lookup(black_box(&workloads[next])));
            // A stride, so consecutive calls hit different namespaces.
            next = (next + 7919) % workloads.len();
        }
        calls += 64;
    }
    start.elapsed().as_nanos() as f64 / calls as f64
}

pub fn run(args: Args) -> anyhow::Result<serde_json::Value> {
    let round = Duration::from_millis(args.round_ms);
    let mut results = Vec::new();
    for &per_namespace in &args.policies {
        let store = build(&args, per_namespace)?;
        let workloads = store.workloads();
        anyhow::ensure!(!workloads.is_empty(), "no workloads to look up");
        let scan = Scan(RwLock::new(
            store
                .policies()
                .into_iter()
                .map(|p| (policy_key(&p), p))
                .collect(),
        ));
        // A faster wrong answer is no result.
        let mut applying = 0usize;
        for w in &workloads {
            let new = store.policies_for(w);
            let old = scan.policies_for(w);
            anyhow::ensure!(
                new.len() == old.len() && new.iter().zip(&old).all(|(a, b)| Arc::ptr_eq(a, b)),
                "index and scan disagree for workload {}",
                w.uid
            );
            applying += new.len();
        }
        let (mut old_ns, mut new_ns) = (Vec::new(), Vec::new());
        for _ in 0..args.rounds {
            old_ns.push(time_round(&workloads, round, |w| {
                scan.policies_for(w).len()
            }));
            new_ns.push(time_round(&workloads, round, |w| {
                store.policies_for(w).len()
            }));
        }
        let (old, new) = (median(old_ns), median(new_ns));
        let (_, _, policies) = store.counts();
        let mean_applying = applying as f64 / workloads.len() as f64;
        eprintln!(
            "{per_namespace} per namespace ({policies} policies, {mean_applying:.1} apply per workload): old {old:.0} ns/call, new {new:.0} ns/call"
        );
        results.push(serde_json::json!({
            "policies_per_namespace": per_namespace,
            "policies": policies,
            "applying_per_workload": round2(mean_applying),
            "old_ns_per_call": old.round(),
            "new_ns_per_call": new.round(),
            "ratio_new_over_old": (new / old * 10_000.0).round() / 10_000.0,
        }));
    }
    Ok(serde_json::json!({
        "workloads": args.workloads,
        "namespaces": args.namespaces,
        "results": results,
    }))
}
