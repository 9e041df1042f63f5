//! Steady new-connection load: `rate` new connections per second, each one
//! TCP exchange with the echo server, until `duration` has passed or the
//! process is told to stop (SIGTERM/SIGINT); then in-flight exchanges finish
//! and the counts are reported. This is what proves that restarting ztunnel
//! fails no new connection.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinSet;

use super::client::tcp_exchange;
use super::protocol::LoadReport;

/// What to run.
#[derive(Clone, Debug)]
pub struct LoadPlan {
    /// The echo server.
    pub target: SocketAddr,
    /// New connections per second.
    pub rate: u32,
    /// How long; `None` runs until a signal.
    pub duration: Option<Duration>,
    /// Per-exchange timeout.
    pub timeout: Duration,
}

/// Runs the plan and returns the counts.
pub async fn run(plan: LoadPlan) -> std::io::Result<LoadReport> {
    let report = Arc::new(Mutex::new(LoadReport::default()));
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let period = Duration::from_secs_f64(1.0 / f64::from(plan.rate.max(1)));
    let mut ticks = tokio::time::interval(period);
    // A late tick is not made up for: the rate stays steady, not bursty.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = async {
        match plan.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(stop);
    let mut inflight = JoinSet::new();
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = ticks.tick() => {
                n += 1;
                let report = report.clone();
                let target = plan.target;
                let timeout = plan.timeout;
                inflight.spawn(async move {
                    let result = tcp_exchange(target, &format!("load-{n}"), timeout).await;
                    let mut r = report.lock().unwrap_or_else(|p| p.into_inner());
                    r.attempted += 1;
                    match result {
                        Ok(reply) => {
                            r.succeeded += 1;
                            *r.servers.entry(reply.server).or_default() += 1;
                        }
                        Err(e) => {
                            r.failed += 1;
                            *r.errors.entry(e).or_default() += 1;
                        }
                    }
                });
            }
            // Reap finished exchanges so the set stays small.
            Some(_) = inflight.join_next(), if !inflight.is_empty() => {}
        }
    }
    while inflight.join_next().await.is_some() {}
    let report = report.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(report)
}
