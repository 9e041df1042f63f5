//! The waypoint as a whole: [`Waypoint`] (the library's top object, which
//! tests run on loopback) and [`run`] (the process: flags → config source,
//! CA, listeners; SIGTERM → drain).
//!
//! Drain: readiness turns 503 and HTTP connections finish their request in
//! flight and close; the HBONE listener closes and clients get GOAWAY; open
//! tunnels (TCP copies, long requests) get up to `--drain-seconds`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};
use weft_api::config::{ProxyInfo, ProxyKind, ResourceType, Subscribe};
use weft_hbone::{HboneServer, PoolSettings, ServerSettings, SpiffeId, TrustBundle, TunnelPool};
use weft_runtime::admin::socket::{AdminSocket, wait_for_signal};
use weft_runtime::admin::{LogControl, serve_metrics, serve_readiness, spawn_admin};
use weft_runtime::certs::{CaClient, CertManager};
use weft_runtime::listen::listen_shared;
use weft_runtime::startup::{Sources, install_metrics, raise_open_files_limit, start_sources};
use weft_runtime::store::WorkloadStore;
use weft_runtime::trust::{TrustState, follow_trust_bundle};

use crate::admin::Admin;
use crate::destination::WaypointName;
use crate::inbound::InboundHandler;
use crate::observe::Observer;
use crate::options::Options;
use crate::otel::{Tracing, TracingSettings};
use crate::proxy::{Proxy, ProxySettings};
use crate::snapshot::ConfigView;
use crate::tls::WaypointTls;
use crate::upstream::Connector;
use crate::upstream::pool::{HttpPool, HttpPoolSettings};

/// What a waypoint is and how it behaves.
#[derive(Debug, Clone)]
pub struct WaypointSettings {
    pub name: WaypointName,
    /// Its own identity (its service account's SPIFFE ID).
    pub identity: SpiffeId,
    pub proxy: ProxySettings,
    /// The inbound HBONE server.
    pub hbone: ServerSettings,
    /// The upstream HBONE client.
    pub tunnels: PoolSettings,
    pub http_pool: HttpPoolSettings,
    /// One log line per request (target `access`).
    pub access_log: bool,
    /// OpenTelemetry spans per request (`None`: off).
    pub tracing: Option<Tracing>,
}

impl WaypointSettings {
    pub fn new(name: WaypointName, identity: SpiffeId) -> WaypointSettings {
        WaypointSettings {
            name,
            identity,
            proxy: ProxySettings::default(),
            hbone: ServerSettings::default(),
            tunnels: PoolSettings::default(),
            http_pool: HttpPoolSettings::default(),
            access_log: true,
            tracing: None,
        }
    }
}

/// A running waypoint's parts.
pub struct Waypoint {
    pub proxy: Arc<Proxy>,
    pub certs: CertManager,
    pub trust: TrustState,
    pub tunnels: TunnelPool,
    pub identity: SpiffeId,
    hbone: ServerSettings,
}

impl Waypoint {
    /// Builds the waypoint and starts fetching its certificate.
    pub fn new(
        settings: WaypointSettings,
        store: WorkloadStore,
        ca: Arc<dyn CaClient>,
        trust: TrustBundle,
    ) -> Arc<Waypoint> {
        let certs = CertManager::new(ca, Duration::from_secs(10));
        certs.want(&settings.identity);
        let tunnels = TunnelPool::new(settings.tunnels.clone(), trust.clone());
        let connector = Connector {
            tunnels: tunnels.clone(),
            certs: certs.clone(),
            identity: settings.identity.clone(),
            connect_timeout: settings.tunnels.connect_timeout,
        };
        let proxy = Arc::new(Proxy {
            observer: Observer::new(settings.name.key(), settings.access_log),
            tracing: settings.tracing,
            config: ConfigView::new(store, settings.name.clone()),
            me: settings.name,
            http: HttpPool::new(connector, settings.http_pool),
            lb: Default::default(),
            settings: settings.proxy,
            drain: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        Arc::new(Waypoint {
            proxy,
            certs,
            trust: TrustState::new(trust),
            tunnels,
            identity: settings.identity,
            hbone: settings.hbone,
        })
    }

    /// Serves HBONE on `listener` until `stop`, then sends GOAWAY and waits
    /// for the HBONE connections to end (bound the wait with a drain
    /// deadline).
    pub async fn serve(self: &Arc<Self>, listener: TcpListener, stop: CancellationToken) {
        let tls = WaypointTls::new(
            self.certs.clone(),
            self.identity.clone(),
            self.trust.clone(),
        );
        let handler = InboundHandler {
            proxy: self.proxy.clone(),
        };
        HboneServer::new(tls, handler, self.hbone.clone())
            .serve(listener, stop)
            .await;
    }

    /// Background upkeep until `shutdown`: idle upstream connections are
    /// closed, and the trust bundle follows the config stream's.
    pub fn spawn_upkeep(self: &Arc<Self>, trust_domain: String, shutdown: CancellationToken) {
        tokio::spawn(follow_trust_bundle(
            self.proxy.config.store.clone(),
            self.trust.clone(),
            self.tunnels.clone(),
            trust_domain,
            shutdown.clone(),
        ));
        let this = self.clone();
        tokio::spawn(async move {
            let mut sweep = tokio::time::interval(Duration::from_secs(30));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = sweep.tick() => this.proxy.http.sweep(),
                }
            }
        });
    }

    /// Why the waypoint cannot take traffic yet, if it cannot.
    pub fn readiness(&self) -> Result<(), String> {
        if self.proxy.drain.is_cancelled() {
            return Err("draining".into());
        }
        if self.proxy.config.store.version() == 0 {
            return Err("no config received yet".into());
        }
        let has_cert = self
            .certs
            .status()
            .iter()
            .any(|s| s.identity == self.identity && s.cert.is_some());
        if !has_cert {
            return Err(format!("no certificate for {} yet", self.identity));
        }
        Ok(())
    }

    /// Starts a drain: not ready any more, HTTP connections close after
    /// their request in flight.
    pub fn start_drain(&self) {
        self.proxy.drain.cancel();
    }

    /// Waits for every tunnel handler, up to `deadline`. True if all ended.
    pub async fn wait_drained(&self, deadline: Duration) -> bool {
        self.proxy.tasks.close();
        tokio::time::timeout(deadline, self.proxy.tasks.wait())
            .await
            .is_ok()
    }
}

/// The process: runs until SIGTERM/SIGINT and the drain that follows.
pub async fn run(options: Options, log: LogControl) -> anyhow::Result<()> {
    let flags = &options.proxy;
    raise_open_files_limit();
    let recorder = install_metrics(
        flags,
        &[(
            "weft_request_duration_seconds",
            &[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ],
        )],
    )?;
    let shutdown = CancellationToken::new();
    let store = WorkloadStore::default();
    let name = WaypointName {
        namespace: options.namespace.clone(),
        name: options.name.clone(),
    };
    let service_account = options
        .service_account
        .clone()
        .unwrap_or_else(|| format!("{}-weft-waypoint", options.name));
    let identity = SpiffeId::new(&flags.trust_domain, &options.namespace, &service_account)
        .context("the waypoint's identity")?;

    let Sources { ca, trust, source } = start_sources(
        flags,
        &options.node,
        &store,
        subscription(&options),
        &shutdown,
    )?;

    let mut settings = WaypointSettings::new(name.clone(), identity);
    settings.access_log = !options.no_access_log;
    settings.proxy.upstream_hbone_port = options.upstream_hbone_port;
    settings.proxy.sniff_timeout = Duration::from_millis(options.sniff_timeout_ms);
    if let Some(tracing) =
        TracingSettings::from_flags(flags, format!("{}.{}", name.name, name.namespace))
    {
        settings.tracing = Some(Tracing::new(&tracing)?);
        info!(endpoint = %tracing.endpoint, sampling = tracing.sampling, "tracing to OTLP");
    }
    // Start-up ends with the first config; what it alone touched need not
    // stay resident for the waypoint's life.
    let mut versions = store.subscribe();
    tokio::spawn(async move {
        if versions.wait_for(|v| *v > 0).await.is_ok() {
            weft_netns::startup_pages::give_back();
        }
    });
    let waypoint = Waypoint::new(settings, store, ca, trust);
    waypoint.spawn_upkeep(flags.trust_domain.clone(), shutdown.clone());

    let admin = Arc::new(Admin {
        waypoint: waypoint.clone(),
        source,
        log,
        metrics: recorder.clone(),
    });
    let tcp = listen_shared(flags.admin_addr)
        .with_context(|| format!("admin address {}", flags.admin_addr))?;
    let (admin_socket, unix) = match &options.admin_socket {
        Some(path) => {
            let (socket, unix) = AdminSocket::bind(path)
                .with_context(|| format!("admin socket {}", path.display()))?;
            (Some(socket), Some(unix))
        }
        None => (None, None),
    };
    spawn_admin(move |req| admin.clone().handle(req), tcp, unix, &shutdown);
    let metrics = listen_shared(flags.metrics_addr)
        .with_context(|| format!("metrics address {}", flags.metrics_addr))?;
    tokio::spawn(serve_metrics(recorder, metrics, shutdown.clone()));
    let readiness = listen_shared(flags.readiness_addr)
        .with_context(|| format!("readiness address {}", flags.readiness_addr))?;
    let ready = waypoint.clone();
    tokio::spawn(serve_readiness(
        move || ready.readiness(),
        readiness,
        shutdown.clone(),
    ));
    let hbone = listen_shared(options.hbone_addr)
        .with_context(|| format!("HBONE address {}", options.hbone_addr))?;
    let stop_accepting = CancellationToken::new();
    let server = {
        let waypoint = waypoint.clone();
        let stop = stop_accepting.clone();
        tokio::spawn(async move { waypoint.serve(hbone, stop).await })
    };
    info!(waypoint = %name, identity = %waypoint.identity, hbone = %options.hbone_addr, "waypoint started");

    let signal = wait_for_signal().await?;
    info!(signal, "stop requested");
    let deadline = Duration::from_secs(flags.drain_seconds);
    info!(
        deadline_s = flags.drain_seconds,
        open = waypoint.proxy.observer.tunnel_count(),
        "draining"
    );
    waypoint.start_drain();
    stop_accepting.cancel();
    let drained = tokio::time::timeout(deadline, async {
        let _ = server.await;
        waypoint.wait_drained(deadline).await
    })
    .await;
    if !matches!(drained, Ok(true)) {
        warn!(
            open = waypoint.proxy.observer.tunnel_count(),
            "drain deadline reached; closing the rest"
        );
    }
    shutdown.cancel();
    if let Some(tracing) = &waypoint.proxy.tracing {
        tracing.shutdown().await;
    }
    // Only our own socket: a replacement may have bound the path since.
    if let Some(socket) = admin_socket {
        socket.release();
    }
    info!("waypoint stopped");
    Ok(())
}

/// What a waypoint subscribes to: everything, routes included, as its
/// Gateway.
fn subscription(options: &Options) -> Subscribe {
    Subscribe {
        proxy: Some(ProxyInfo {
            id: format!(
                "waypoint~{}~{}~{}",
                options.namespace,
                options.pod_name.as_deref().unwrap_or(&options.name),
                std::process::id()
            ),
            kind: ProxyKind::Waypoint as i32,
            node: options.node.clone(),
            namespace: options.namespace.clone(),
            name: options.name.clone(),
        }),
        types: vec![
            ResourceType::Workload as i32,
            ResourceType::Service as i32,
            ResourceType::Authorization as i32,
            ResourceType::TrustBundle as i32,
            ResourceType::Route as i32,
        ],
    }
}
