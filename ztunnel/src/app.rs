//! The process: builds the parts from the options, runs them, and drains on
//! SIGTERM — stop accepting (listeners close, so a ztunnel bound beside this
//! one takes new connections), let open connections finish up to the
//! deadline, then exit.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use opentelemetry::KeyValue;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use weft_api::config::{ProxyInfo, ProxyKind, ResourceType, Subscribe};
use weft_hbone::{PoolSettings, ServerSettings, TunnelPool};
use weft_runtime::admin::socket::{AdminSocket, wait_for_signal};
use weft_runtime::admin::{LogControl, serve_metrics, serve_readiness, spawn_admin};
use weft_runtime::certs::CertManager;
use weft_runtime::listen::listen_shared;
use weft_runtime::otel::TracingSettings;
use weft_runtime::startup::{Sources, install_metrics, raise_open_files_limit, start_sources};
use weft_runtime::store::WorkloadStore;
use weft_runtime::trust::{TrustState, follow_trust_bundle};

use crate::admin::{Admin, Readiness};
use crate::connections::ConnectionRegistry;
use crate::inpod::{Pods, follow_agent};
use crate::options::Options;
use crate::otel::Tracing;
use crate::proxy::{Proxy, ProxySettings};
use crate::socket::Netns;

/// Runs ztunnel until SIGTERM/SIGINT and the drain that follows.
pub async fn run(options: Options, log: LogControl) -> anyhow::Result<()> {
    let flags = &options.proxy;
    raise_open_files_limit();
    let recorder = install_metrics(flags, &[])?;
    let shutdown = CancellationToken::new();
    let drain = CancellationToken::new();
    let store = WorkloadStore::default();
    let Sources { ca, trust, source } = start_sources(
        flags,
        &options.node,
        &store,
        subscription(&options.node),
        &shutdown,
    )?;

    let tracing = match TracingSettings::from_flags(flags, "ztunnel") {
        Some(mut settings) => {
            settings
                .resource
                .push(KeyValue::new("k8s.node.name", options.node.clone()));
            info!(endpoint = %settings.endpoint, sampling = settings.sampling, "tracing to OTLP");
            Some(Tracing::new(&settings)?)
        }
        None => None,
    };

    let pool = TunnelPool::new(PoolSettings::default(), trust.clone());
    let proxy = Arc::new(Proxy {
        node: options.node.clone(),
        store: store.clone(),
        certs: CertManager::new(ca, Duration::from_secs(options.cert_wait_seconds)),
        trust: TrustState::new(trust),
        pool,
        connections: ConnectionRegistry::default(),
        lb: Default::default(),
        settings: ProxySettings::default(),
        hbone: ServerSettings::default(),
        tracing,
        tasks: tokio_util::task::TaskTracker::new(),
    });
    tokio::spawn(follow_trust_bundle(
        store.clone(),
        proxy.trust.clone(),
        proxy.pool.clone(),
        flags.trust_domain.clone(),
        shutdown.clone(),
    ));

    let home = Netns::current().context("opening the node network namespace")?;
    let pods = Pods::new(
        proxy.clone(),
        home,
        flags.trust_domain.clone(),
        drain.clone(),
    );
    // Pods are taken from the node agent only once a first config has
    // arrived. Beside an older ztunnel (a rolling update), both accept from
    // the same pod sockets, and one without config would refuse what it
    // took; alone, the connections wait in the sockets' backlog instead.
    let mut versions = store.subscribe();
    let (socket, agent_pods, agent_shutdown) = (
        options.handoff_socket.clone(),
        pods.clone(),
        shutdown.clone(),
    );
    tokio::spawn(async move {
        tokio::select! {
            _ = agent_shutdown.cancelled() => return,
            first = versions.wait_for(|v| *v > 0) => if first.is_err() { return },
        }
        // With its first config in hand ztunnel is done starting; what
        // start-up alone touched need not stay resident on every node.
        weft_netns::startup_pages::give_back();
        follow_agent(socket, agent_pods, agent_shutdown).await;
    });

    let ready = Readiness {
        proxy: proxy.clone(),
        pods: Some(pods.clone()),
        draining: drain.clone(),
    };
    let admin = Arc::new(Admin {
        proxy: proxy.clone(),
        pods: pods.clone(),
        source,
        log,
        ready: ready.clone(),
        metrics: recorder.clone(),
    });
    let tcp = listen_shared(flags.admin_addr)
        .with_context(|| format!("admin address {}", flags.admin_addr))?;
    let (admin_socket, unix) = AdminSocket::bind(&options.admin_socket)
        .with_context(|| format!("admin socket {}", options.admin_socket.display()))?;
    spawn_admin(
        move |req| admin.clone().handle(req),
        tcp,
        Some(unix),
        &shutdown,
    );
    let metrics = listen_shared(flags.metrics_addr)
        .with_context(|| format!("metrics address {}", flags.metrics_addr))?;
    tokio::spawn(serve_metrics(recorder, metrics, shutdown.clone()));
    let readiness = listen_shared(flags.readiness_addr)
        .with_context(|| format!("readiness address {}", flags.readiness_addr))?;
    // The exec probe's socket: a path only this container's process binds
    // (module doc of `weft_runtime::admin::probe`).
    let probe_socket = match &options.probe_socket {
        Some(path) => {
            let (socket, unix) = AdminSocket::bind(path)
                .with_context(|| format!("probe socket {}", path.display()))?;
            let ready = ready.clone();
            tokio::spawn(serve_readiness(
                move || ready.check(),
                unix,
                shutdown.clone(),
            ));
            Some(socket)
        }
        None => None,
    };
    tokio::spawn(serve_readiness(
        move || ready.check(),
        readiness,
        shutdown.clone(),
    ));
    info!(node = %options.node, admin = %flags.admin_addr, "ztunnel started");

    let signal = wait_for_signal().await?;
    info!(signal, "stop requested");
    info!(
        deadline_s = flags.drain_seconds,
        open = proxy.connections.len(),
        "draining"
    );
    drain.cancel();
    pods.leave();
    proxy.tasks.close();
    let deadline = Duration::from_secs(flags.drain_seconds);
    let drained = async {
        proxy.tasks.wait().await;
        if pods.sole_holder() {
            info!("waiting for the node agent to take back the pods' listeners");
        }
        pods.handed_back().await;
    };
    if tokio::time::timeout(deadline, drained).await.is_err() {
        warn!(
            open = proxy.connections.len(),
            pods_only_here = pods.sole_holder(),
            "drain deadline reached; closing the rest"
        );
    }
    if let Some(tracing) = &proxy.tracing {
        tracing.shutdown().await;
    }
    shutdown.cancel();
    admin_socket.release();
    if let Some(socket) = probe_socket {
        socket.release();
    }
    info!("ztunnel stopped");
    Ok(())
}

/// What ztunnel subscribes to: everything but routes, for its node.
fn subscription(node: &str) -> Subscribe {
    Subscribe {
        proxy: Some(ProxyInfo {
            id: format!("ztunnel~{node}~{}", std::process::id()),
            kind: ProxyKind::Ztunnel as i32,
            node: node.to_owned(),
            namespace: String::new(),
            name: String::new(),
        }),
        types: vec![
            ResourceType::Workload as i32,
            ResourceType::Service as i32,
            ResourceType::Authorization as i32,
            ResourceType::TrustBundle as i32,
        ],
    }
}
