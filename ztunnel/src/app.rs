//! The process: builds the parts from the options, runs them, and drains on
//! SIGTERM — stop accepting (listeners close, so a ztunnel bound beside this
//! one takes new connections), let open connections finish up to the
//! deadline, then exit.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use weft_hbone::{PoolSettings, ServerSettings, TrustBundle, TunnelPool};

use crate::admin::socket::{AdminSocket, wait_for_signal};
use crate::admin::{self, Admin, LogControl, Readiness};
use crate::bootstrap::{follow_config_file, local_ca, read};
use crate::connections::ConnectionRegistry;
use crate::controller::{ConfigClient, TokenSource};
use crate::identity::{CaClient, CertManager, GrpcCa};
use crate::inpod::{Pods, follow_agent};
use crate::options::Options;
use crate::proxy::{Proxy, ProxySettings, TrustState};
use crate::socket::{self, Netns};
use crate::state::WorkloadStore;

/// Runs ztunnel until SIGTERM/SIGINT and the drain that follows.
pub async fn run(options: Options, log: LogControl) -> anyhow::Result<()> {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("installing the metrics recorder")?;
    let shutdown = CancellationToken::new();
    let drain = CancellationToken::new();
    let store = WorkloadStore::default();

    // Config source and CA.
    let (ca, trust, source): (Arc<dyn CaClient>, TrustBundle, String) =
        match (&options.controller, &options.ca_dir) {
            (Some(address), _) => {
                let root = read(options.controller_ca.as_deref(), "--controller-ca")?;
                let token = TokenSource::new(
                    options
                        .token_file
                        .clone()
                        .context("--token-file is required with --controller")?,
                );
                let channel = crate::controller::channel(address, &root)
                    .with_context(|| format!("controller address {address}"))?;
                let client = ConfigClient {
                    channel: channel.clone(),
                    token: token.clone(),
                    node: options.node.clone(),
                    store: store.clone(),
                };
                tokio::spawn(client.run(shutdown.clone()));
                // Until the config stream brings the bundle, trust the root
                // the controller itself is verified with.
                let trust = TrustBundle::from_pems(&options.trust_domain, &[root])?;
                let ca = GrpcCa::new(channel, token, options.node.clone());
                (Arc::new(ca), trust, format!("controller {address}"))
            }
            (None, Some(dir)) => {
                let ttl = Duration::from_secs(options.cert_ttl_seconds);
                let (ca, trust) = local_ca(dir, &options.trust_domain, ttl)?;
                (Arc::new(ca), trust, String::new())
            }
            (None, None) => bail!("either --controller or --ca-dir is required"),
        };
    let source = match &options.config_file {
        Some(path) => follow_config_file(path, &store, &shutdown)?,
        None => source,
    };

    let pool = TunnelPool::new(PoolSettings::default(), trust.clone());
    let proxy = Arc::new(Proxy {
        node: options.node.clone(),
        home: Netns::current().context("opening the node network namespace")?,
        store: store.clone(),
        certs: CertManager::new(ca, Duration::from_secs(options.cert_wait_seconds)),
        trust: TrustState::new(trust),
        pool,
        connections: ConnectionRegistry::default(),
        lb: Default::default(),
        settings: ProxySettings::default(),
        hbone: ServerSettings::default(),
        tasks: tokio_util::task::TaskTracker::new(),
    });
    if options.controller.is_some() {
        tokio::spawn(follow_trust_bundle(
            proxy.clone(),
            options.trust_domain.clone(),
            shutdown.clone(),
        ));
    }

    let pods = Pods::new(proxy.clone(), options.trust_domain.clone(), drain.clone());
    tokio::spawn(follow_agent(
        options.handoff_socket.clone(),
        pods.clone(),
        shutdown.clone(),
    ));

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
    });
    let tcp = socket::listen_shared(options.admin_addr)
        .with_context(|| format!("admin address {}", options.admin_addr))?;
    tokio::spawn(admin::serve_read_only(admin.clone(), tcp, shutdown.clone()));
    let (admin_socket, unix) = AdminSocket::bind(&options.admin_socket)
        .with_context(|| format!("admin socket {}", options.admin_socket.display()))?;
    tokio::spawn(admin::serve(admin, unix, shutdown.clone()));
    let metrics = socket::listen_shared(options.metrics_addr)
        .with_context(|| format!("metrics address {}", options.metrics_addr))?;
    tokio::spawn(admin::serve_metrics(recorder, metrics, shutdown.clone()));
    let readiness = socket::listen_shared(options.readiness_addr)
        .with_context(|| format!("readiness address {}", options.readiness_addr))?;
    tokio::spawn(admin::serve_readiness(ready, readiness, shutdown.clone()));
    info!(node = %options.node, admin = %options.admin_addr, "ztunnel started");

    let signal = wait_for_signal().await?;
    info!(signal, "stop requested");
    info!(
        deadline_s = options.drain_seconds,
        open = proxy.connections.len(),
        "draining"
    );
    drain.cancel();
    proxy.tasks.close();
    let deadline = Duration::from_secs(options.drain_seconds);
    if tokio::time::timeout(deadline, proxy.tasks.wait())
        .await
        .is_err()
    {
        warn!(
            open = proxy.connections.len(),
            "drain deadline reached; closing the rest"
        );
    }
    shutdown.cancel();
    admin_socket.release();
    info!("ztunnel stopped");
    Ok(())
}

/// Keeps the trust bundle (and the pool's) in step with the config stream.
async fn follow_trust_bundle(proxy: Arc<Proxy>, trust_domain: String, shutdown: CancellationToken) {
    let mut changes = proxy.store.subscribe();
    loop {
        if let Some(bundle) = proxy.store.trust_bundle(&trust_domain) {
            match TrustBundle::from_pems(&trust_domain, &bundle.roots_pem) {
                Ok(bundle) => {
                    if proxy.trust.set(bundle.clone()) {
                        info!(roots = bundle.roots().len(), "trust bundle updated");
                        proxy.pool.set_trust_bundle(bundle);
                    }
                }
                Err(e) => warn!(error = %e, "trust bundle from the controller refused"),
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = changes.changed() => if changed.is_err() { return },
        }
    }
}
