//! The gRPC server on :15012: the config stream and the CA, over TLS.

mod stream;
pub mod subscribers;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::Stream;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};
use weft_api::ca::certificate_authority_server::CertificateAuthorityServer;
use weft_api::config::config_discovery_server::{ConfigDiscovery, ConfigDiscoveryServer};
use weft_api::config::{ConfigRequest, ConfigResponse, ProxyKind, ResourceType, config_request};

use crate::auth::{self, Authenticator, Caller};
use crate::ca::CaService;
use crate::model::RESOURCE_TYPES;
use crate::pipeline::ModelVersion;
use stream::SubscriberStream;
use subscribers::{SubscriberInfo, Subscribers, now_secs};

/// The config stream service.
pub struct ConfigServer {
    models: watch::Receiver<Arc<ModelVersion>>,
    subscribers: Arc<Subscribers>,
    auth: Arc<dyn Authenticator>,
    next_stream: AtomicU64,
    snapshots: Arc<Semaphore>,
    /// Cancelled when the server shuts down: streams end so that graceful
    /// shutdown does not wait for proxies that never hang up.
    shutdown: CancellationToken,
}

/// Full snapshots being built or awaiting their ACK at once, by default.
pub const DEFAULT_CONCURRENT_SNAPSHOTS: usize = 32;

impl ConfigServer {
    /// Serves the versions published by the pipeline to callers `auth` accepts.
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
            shutdown: CancellationToken::new(),
        }
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

type ResponseStream = Pin<Box<dyn Stream<Item = Result<ConfigResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ConfigDiscovery for ConfigServer {
    type SubscribeStream = ResponseStream;

    async fn subscribe(
        &self,
        request: Request<Streaming<ConfigRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let caller = auth::authenticate(self.auth.as_ref(), request.metadata())
            .await
            .map_err(|e| Status::unauthenticated(e.to_string()))?;
        let mut requests = request.into_inner();
        let first = requests
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("stream closed before Subscribe"))?;
        let Some(config_request::Kind::Subscribe(subscribe)) = first.kind else {
            return Err(Status::invalid_argument(
                "the first message must be Subscribe",
            ));
        };
        let proxy = subscribe.proxy.unwrap_or_default();
        if let Caller::Ztunnel { node: Some(node) } = &caller
            && *node != proxy.node
        {
            return Err(Status::permission_denied(format!(
                "caller is the ztunnel of node {node:?}, not {:?}",
                proxy.node
            )));
        }
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
            acked_version: 0,
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
            models: self.models.clone(),
            subscribers: self.subscribers.clone(),
            tx,
            snapshots: self.snapshots.clone(),
            shutdown: self.shutdown.clone(),
        };
        tokio::spawn(stream.run(requests));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
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

/// Serves the config stream and (optionally) the CA on `listener` until
/// `shutdown` resolves. Without `tls` the server speaks plaintext h2c, which
/// only tests and benchmarks use.
pub async fn serve(
    listener: TcpListener,
    config: ConfigServer,
    ca: Option<CaService>,
    tls: Option<ServerTls>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let mut builder = Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)));
    if let Some(tls) = tls {
        let identity = Identity::from_pem(tls.chain_pem.concat(), tls.key_pem);
        builder = builder.tls_config(ServerTlsConfig::new().identity(identity))?;
    }
    let streams = config.shutdown.clone();
    let shutdown = async move {
        shutdown.await;
        streams.cancel();
    };
    let router = builder
        .add_service(ConfigDiscoveryServer::new(config))
        .add_optional_service(ca.map(CertificateAuthorityServer::new));
    router
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
}
