//! The gRPC server on :15012: the config stream and the CA, over TLS.

mod authorize;
mod callers;
mod encoded;
pub mod incoming;
mod stream;
pub mod subscribers;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::{Request, Status, Streaming};
use weft_api::ca::certificate_authority_server::CertificateAuthorityServer;
use weft_api::config::{ConfigRequest, ProxyKind, ResourceType, config_request};

use crate::auth::{self, Authenticator};
use crate::ca::CaService;
use crate::pipeline::ModelVersion;
use callers::CallerLimits;
pub use callers::{DEFAULT_SNAPSHOTS_PER_CALLER, DEFAULT_STREAMS_PER_CALLER};
pub use encoded::ConfigService;
use encoded::{Encoded, SnapshotCache};
pub use incoming::{
    ConnectionLimits, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_PENDING_HANDSHAKES, DEFAULT_MAX_PENDING_HANDSHAKES_PER_SOURCE, TlsConfigError,
};
use stream::SubscriberStream;
use subscribers::{SubscriberInfo, Subscribers, now_secs};
use weft_cluster::model::RESOURCE_TYPES;
use weft_cluster::registry::ClusterState;

/// The config stream service.
pub struct ConfigServer {
    models: watch::Receiver<Arc<ModelVersion>>,
    subscribers: Arc<Subscribers>,
    auth: Arc<dyn Authenticator>,
    next_stream: AtomicU64,
    snapshots: Arc<Semaphore>,
    /// Streams and snapshot slots per caller.
    callers: Arc<CallerLimits>,
    /// The cluster, to tell which ServiceAccounts are waypoints'.
    states: watch::Receiver<Arc<ClusterState>>,
    /// Cancelled when the server shuts down: streams end so that graceful
    /// shutdown does not wait for proxies that never hang up.
    shutdown: CancellationToken,
    /// Encoded snapshot resources, shared by the streams of a version.
    snapshot_cache: Arc<SnapshotCache>,
}

/// Full snapshots being built or awaiting their ACK at once, by default.
pub const DEFAULT_CONCURRENT_SNAPSHOTS: usize = 32;

/// How long a stream may take to send its Subscribe.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

impl ConfigServer {
    /// Serves the versions published by the pipeline to callers `auth` accepts.
    /// ServiceAccount callers are refused (as not yet known) until
    /// [`ConfigServer::with_cluster_state`] gives the cluster to check them
    /// against.
    pub fn new(
        models: watch::Receiver<Arc<ModelVersion>>,
        auth: Arc<dyn Authenticator>,
    ) -> ConfigServer {
        ConfigServer {
            models,
            subscribers: Arc::new(Subscribers::default()),
            auth,
            next_stream: AtomicU64::new(1),
            snapshots: Arc::new(Semaphore::new(DEFAULT_CONCURRENT_SNAPSHOTS)),
            callers: Arc::new(CallerLimits::new(
                DEFAULT_STREAMS_PER_CALLER,
                DEFAULT_SNAPSHOTS_PER_CALLER,
            )),
            // Never synced: no ServiceAccount passes as a waypoint's.
            states: watch::channel(Arc::new(ClusterState::default())).1,
            shutdown: CancellationToken::new(),
            snapshot_cache: Arc::new(SnapshotCache::default()),
        }
    }

    /// The registry's cluster state, which says which ServiceAccounts are
    /// waypoints' (the rule the CA applies too).
    pub fn with_cluster_state(
        mut self,
        states: watch::Receiver<Arc<ClusterState>>,
    ) -> ConfigServer {
        self.states = states;
        self
    }

    /// Bounds what one caller (a node's ztunnel, a ServiceAccount) may hold:
    /// `streams` open at once (the next is refused with RESOURCE_EXHAUSTED)
    /// and `snapshots` of the global snapshot slots at once.
    pub fn with_caller_limits(mut self, streams: usize, snapshots: usize) -> ConfigServer {
        self.callers = Arc::new(CallerLimits::new(streams, snapshots));
        self
    }

    /// Bounds the full snapshots in flight (built and not yet answered): the
    /// memory a mass reconnect can take.
    pub fn with_concurrent_snapshots(mut self, n: usize) -> ConfigServer {
        self.snapshots = Arc::new(Semaphore::new(n.max(1)));
        self
    }

    /// The connected subscribers (shared with the debug API).
    pub fn subscribers(&self) -> Arc<Subscribers> {
        self.subscribers.clone()
    }
}

impl ConfigServer {
    /// `ConfigDiscovery.Subscribe`: checks the caller and its Subscribe,
    /// then streams its responses (served by [`ConfigService`]).
    pub(crate) async fn subscribe(
        &self,
        request: Request<Streaming<ConfigRequest>>,
    ) -> Result<mpsc::Receiver<Result<Encoded, Status>>, Status> {
        let refuse = |reason: &'static str| {
            metrics::counter!("weft_config_subscriptions_refused_total", "reason" => reason)
                .increment(1);
        };
        let caller = auth::authenticate(self.auth.as_ref(), request.metadata())
            .await
            .map_err(|e| {
                refuse("unauthenticated");
                Status::unauthenticated(e.to_string())
            })?;
        let mut requests = request.into_inner();
        let first = tokio::time::timeout(SUBSCRIBE_TIMEOUT, requests.message())
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "no Subscribe within {}s",
                    SUBSCRIBE_TIMEOUT.as_secs()
                ))
            })??
            .ok_or_else(|| Status::invalid_argument("stream closed before Subscribe"))?;
        let Some(config_request::Kind::Subscribe(subscribe)) = first.kind else {
            return Err(Status::invalid_argument(
                "the first message must be Subscribe",
            ));
        };
        let proxy = subscribe.proxy.unwrap_or_default();
        let state = self.states.borrow().clone();
        if let Err(status) = authorize::subscriber(&caller, &proxy, &state) {
            if status.code() == tonic::Code::PermissionDenied {
                refuse("denied");
                tracing::warn!(
                    ?caller,
                    proxy = proxy.id,
                    "subscription refused: {}",
                    status.message()
                );
            }
            return Err(status);
        }
        let caller_stream = match authorize::limit_key(&caller) {
            Some(key) => match self.callers.open(&key) {
                Some(place) => Some(place),
                None => {
                    refuse("streams_per_caller");
                    tracing::warn!(
                        caller = key,
                        proxy = proxy.id,
                        "subscription refused: too many streams"
                    );
                    return Err(Status::resource_exhausted(format!(
                        "{key} already has {} config streams open, the most one caller may \
                         (--max-streams-per-caller)",
                        self.callers.max_streams()
                    )));
                }
            },
            None => None,
        };
        let mut types: Vec<ResourceType> = subscribe
            .types
            .iter()
            .filter_map(|t| ResourceType::try_from(*t).ok())
            .filter(|t| *t != ResourceType::Unspecified)
            .collect();
        if types.is_empty() {
            types = RESOURCE_TYPES.to_vec();
        }
        // Push order: trust, workloads, services, policies, routes.
        types.sort_by_key(|t| RESOURCE_TYPES.iter().position(|x| x == t));
        types.dedup();
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        self.subscribers.insert(SubscriberInfo {
            stream: id,
            proxy_id: proxy.id.clone(),
            kind: ProxyKind::try_from(proxy.kind)
                .map(|k| k.as_str_name().to_string())
                .unwrap_or_default(),
            node: proxy.node.clone(),
            waypoint: if proxy.name.is_empty() {
                String::new()
            } else {
                format!("{}/{}", proxy.namespace, proxy.name)
            },
            types: types.iter().map(|t| t.as_str_name().to_string()).collect(),
            connected_at: now_secs(),
            sent_version: 0,
            acked_version: 0,
            nacked_version: None,
            pending_nonce: None,
            responses: 0,
            nacks: 0,
            last_nack: None,
        });
        tracing::info!(
            stream = id,
            proxy = proxy.id,
            node = proxy.node,
            "subscriber connected"
        );
        let (tx, rx) = mpsc::channel(2);
        let stream = SubscriberStream {
            id,
            types,
            audience: authorize::audience(&proxy),
            models: self.models.clone(),
            subscribers: self.subscribers.clone(),
            tx,
            snapshot_cache: self.snapshot_cache.clone(),
            snapshots: self.snapshots.clone(),
            caller: caller_stream,
            shutdown: self.shutdown.clone(),
        };
        tokio::spawn(stream.run(requests));
        Ok(rx)
    }
}

/// TLS material for the server: PEM chain (leaf first) and PEM key.
#[derive(Clone)]
pub struct ServerTls {
    /// Leaf first.
    pub chain_pem: Vec<String>,
    /// PKCS#8 PEM.
    pub key_pem: String,
}

/// Why the gRPC server stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The serving certificate or key is unusable.
    #[error(transparent)]
    Tls(#[from] TlsConfigError),
    /// tonic failed.
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
}

/// Serves the config stream and (optionally) the CA on `listener` until
/// `shutdown` resolves, with the default [`ConnectionLimits`]. Without `tls`
/// the server speaks plaintext h2c, which only tests and benchmarks use.
pub async fn serve(
    listener: TcpListener,
    config: ConfigServer,
    ca: Option<CaService>,
    tls: Option<ServerTls>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    serve_with(
        listener,
        config,
        ca,
        tls,
        ConnectionLimits::default(),
        shutdown,
    )
    .await
}

/// [`serve`] within `limits`: the TLS handshake happens in our own accept
/// loop ([`incoming`]), bounded in time and number, and tonic gets only
/// connections whose handshake completed.
pub async fn serve_with(
    listener: TcpListener,
    config: ConfigServer,
    ca: Option<CaService>,
    tls: Option<ServerTls>,
    limits: ConnectionLimits,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let tls = tls.as_ref().map(incoming::server_config).transpose()?;
    let mut builder = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)));
    let streams = config.shutdown.clone();
    let shutdown = async move {
        shutdown.await;
        streams.cancel();
    };
    let router = builder
        .add_service(ConfigService::new(config))
        .add_optional_service(ca.map(CertificateAuthorityServer::new));
    router
        .serve_with_incoming_shutdown(incoming::incoming(listener, tls, limits), shutdown)
        .await?;
    Ok(())
}
