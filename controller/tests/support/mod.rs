//! Test support: a controller gRPC server on loopback with TLS, and clients.
#![allow(dead_code)]

pub mod fake_apiserver;

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use weft_api::config::config_discovery_client::ConfigDiscoveryClient;
use weft_api::config::{
    ConfigRequest, ConfigResponse, ProxyInfo, ProxyKind, Subscribe, config_request,
};
use weft_cluster::model::ModelConfig;
use weft_cluster::registry::{AnyObject, ClusterState, Kind};
use weft_controller::auth::Authenticator;
use weft_controller::ca::CaService;
use weft_controller::pipeline::{self, Debounce};
use weft_controller::server::subscribers::Subscribers;
use weft_controller::server::{self, ConfigServer, ConnectionLimits, ServerTls};
use weft_identity::CertificateAuthority;
use weft_testkit::TestCa;

/// What the fake API server serves for a controller: every kind the
/// registry watches except HTTPRoutes and GRPCRoutes (so a missing API is
/// exercised), what the writers write, and Leases.
pub const CONTROLLER_COLLECTIONS: &[&str] = &[
    "api/v1/namespaces",
    "api/v1/pods",
    "api/v1/services",
    "apis/discovery.k8s.io/v1/endpointslices",
    "apis/gateway.networking.k8s.io/v1/gateways",
    "apis/gateway.networking.k8s.io/v1/gatewayclasses",
    "apis/security.weft.dev/v1alpha1/authorizationpolicies",
    "apis/security.weft.dev/v1alpha1/peerauthentications",
    "api/v1/serviceaccounts",
    "apis/apps/v1/deployments",
    "api/v1/configmaps",
    "apis/coordination.k8s.io/v1/leases",
];

/// The namespace `shop`, enrolled in ambient mode.
pub fn ambient_namespace() -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": "shop", "labels": {"weft.dev/dataplane-mode": "ambient"}}})
}

/// The `weft-waypoint` GatewayClass.
pub fn waypoint_class() -> serde_json::Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
        "metadata": {"name": "weft-waypoint"}, "spec": {"controllerName": "weft.dev/waypoint-controller"}})
}

/// A waypoint Gateway `shop/<name>` with uid `<name>-uid`.
pub fn waypoint_gateway(name: &str) -> serde_json::Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": name, "namespace": "shop", "uid": format!("{name}-uid")},
        "spec": {"gatewayClassName": "weft-waypoint", "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}})
}

/// The ServiceAccount the deployer makes for waypoint Gateway `ns/gateway`
/// (uid `gateway_uid`): `<gateway>-weft-waypoint`, labelled with the
/// Gateway's name and controlled by it.
pub fn deployed_service_account(ns: &str, gateway: &str, gateway_uid: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": format!("{gateway}-weft-waypoint"), "namespace": ns,
            "labels": {"gateway.networking.k8s.io/gateway-name": gateway},
            "ownerReferences": [{"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                "name": gateway, "uid": gateway_uid, "controller": true}]}})
}

/// A state from JSON manifests.
pub fn state(objects: &[serde_json::Value]) -> ClusterState {
    let mut state = ClusterState {
        synced: true,
        ..ClusterState::default()
    };
    for o in objects {
        let kind = Kind::from_type_meta(
            o["apiVersion"].as_str().expect("apiVersion"),
            o["kind"].as_str().expect("kind"),
        )
        .expect("known kind");
        AnyObject::from_value(kind, o.clone())
            .expect("valid object")
            .insert_into(&mut state);
    }
    state
}

pub fn pod(ns: &str, name: &str, node: &str, sa: &str, ip: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}")},
        "spec": {"nodeName": node, "serviceAccountName": sa, "containers": [{"name": "app"}]},
        "status": {"podIP": ip}
    })
}

/// A running controller server.
pub struct Harness {
    pub addr: std::net::SocketAddr,
    pub states: watch::Sender<Arc<ClusterState>>,
    pub root_pem: String,
    pub ca: Arc<CertificateAuthority>,
    pub subscribers: Arc<Subscribers>,
    /// The models the server streams, for the debug API.
    pub models: watch::Receiver<Arc<weft_controller::pipeline::ModelVersion>>,
    /// The registry's states, for the debug API.
    pub states_rx: watch::Receiver<Arc<ClusterState>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// The server's limits, defaults unless a test says otherwise.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub concurrent_snapshots: usize,
    pub streams_per_caller: usize,
    pub snapshots_per_caller: usize,
    pub connections: ConnectionLimits,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            concurrent_snapshots: server::DEFAULT_CONCURRENT_SNAPSHOTS,
            streams_per_caller: server::DEFAULT_STREAMS_PER_CALLER,
            snapshots_per_caller: server::DEFAULT_SNAPSHOTS_PER_CALLER,
            connections: ConnectionLimits::default(),
        }
    }
}

impl Harness {
    pub async fn start(initial: ClusterState, auth: Arc<dyn Authenticator>) -> Harness {
        Harness::start_limited(initial, auth, Limits::default()).await
    }

    pub async fn start_with(
        initial: ClusterState,
        auth: Arc<dyn Authenticator>,
        concurrent_snapshots: usize,
    ) -> Harness {
        let limits = Limits {
            concurrent_snapshots,
            ..Limits::default()
        };
        Harness::start_limited(initial, auth, limits).await
    }

    pub async fn start_limited(
        initial: ClusterState,
        auth: Arc<dyn Authenticator>,
        limits: Limits,
    ) -> Harness {
        let ca = Arc::new(TestCa::new().ca);
        let (states, states_rx) = watch::channel(Arc::new(initial));
        let config = ModelConfig {
            roots_pem: vec![ca.root_pem().to_string()],
            ..ModelConfig::default()
        };
        let debounce = Debounce {
            quiet: Duration::from_millis(5),
            max_delay: Duration::from_millis(20),
        };
        let (models, _task) = pipeline::spawn(states_rx.clone(), config, debounce);
        let config_server = ConfigServer::new(models.clone(), auth.clone())
            .with_concurrent_snapshots(limits.concurrent_snapshots)
            .with_caller_limits(limits.streams_per_caller, limits.snapshots_per_caller)
            .with_cluster_state(states_rx.clone());
        let subscribers = config_server.subscribers();
        let ca_service = CaService::new(
            ca.clone(),
            auth,
            states_rx.clone(),
            Duration::from_secs(3600),
        );
        let (chain_pem, key_pem) = ca
            .issue_serving(
                &["localhost".to_string()],
                &["127.0.0.1".parse().expect("ip")],
                Duration::from_secs(3600),
            )
            .expect("serving cert");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(server::serve_with(
            listener,
            config_server,
            Some(ca_service),
            Some(ServerTls { chain_pem, key_pem }),
            limits.connections,
            async {
                let _ = rx.await;
            },
        ));
        Harness {
            addr,
            states,
            root_pem: ca.root_pem().to_string(),
            ca,
            subscribers,
            models,
            states_rx,
            shutdown: Some(tx),
        }
    }

    pub async fn channel(&self) -> Channel {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.root_pem))
            .domain_name("localhost");
        Channel::from_shared(format!("https://{}", self.addr))
            .expect("uri")
            .tls_config(tls)
            .expect("tls")
            .connect()
            .await
            .expect("connect")
    }

    pub fn set_state(&self, objects: &[serde_json::Value]) {
        self.states.send_replace(Arc::new(state(objects)));
    }
}

/// A config stream client that ACKs or NACKs by hand.
pub struct Subscriber {
    pub requests: mpsc::Sender<ConfigRequest>,
    pub responses: tonic::Streaming<ConfigResponse>,
}

/// A waypoint's `ProxyInfo`, subscribing as Gateway `namespace/name`.
pub fn waypoint_proxy(namespace: &str, name: &str) -> ProxyInfo {
    ProxyInfo {
        id: format!("waypoint~{namespace}~{name}~test"),
        kind: ProxyKind::Waypoint as i32,
        namespace: namespace.to_string(),
        name: name.to_string(),
        ..ProxyInfo::default()
    }
}

impl Subscriber {
    /// The `ProxyInfo` of the ztunnel of `node`.
    pub fn ztunnel_proxy(node: &str) -> ProxyInfo {
        ProxyInfo {
            id: format!("ztunnel~{node}~test"),
            kind: ProxyKind::Ztunnel as i32,
            node: node.to_string(),
            ..ProxyInfo::default()
        }
    }

    /// Subscribes as the ztunnel of `node`.
    pub async fn connect(
        channel: Channel,
        token: Option<&str>,
        node: &str,
    ) -> Result<Subscriber, tonic::Status> {
        Subscriber::connect_as(channel, token, Subscriber::ztunnel_proxy(node)).await
    }

    /// Subscribes as `proxy`.
    pub async fn connect_as(
        channel: Channel,
        token: Option<&str>,
        proxy: ProxyInfo,
    ) -> Result<Subscriber, tonic::Status> {
        let (tx, rx) = mpsc::channel(8);
        tx.send(ConfigRequest {
            kind: Some(config_request::Kind::Subscribe(Subscribe {
                proxy: Some(proxy),
                types: vec![],
            })),
        })
        .await
        .expect("queue subscribe");
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(token) = token {
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().expect("header"),
            );
        }
        let mut client = ConfigDiscoveryClient::new(channel).max_decoding_message_size(64 << 20);
        let responses = client.subscribe(request).await?.into_inner();
        Ok(Subscriber {
            requests: tx,
            responses,
        })
    }

    pub async fn next(&mut self) -> ConfigResponse {
        tokio::time::timeout(Duration::from_secs(10), self.responses.message())
            .await
            .expect("a response in time")
            .expect("stream ok")
            .expect("stream open")
    }

    pub async fn ack(&self, r: &ConfigResponse) {
        self.requests
            .send(ConfigRequest {
                kind: Some(config_request::Kind::Ack(weft_api::config::Ack {
                    nonce: r.nonce.clone(),
                })),
            })
            .await
            .expect("ack");
    }

    pub async fn nack(&self, r: &ConfigResponse, message: &str) {
        self.requests
            .send(ConfigRequest {
                kind: Some(config_request::Kind::Nack(weft_api::config::Nack {
                    nonce: r.nonce.clone(),
                    message: message.to_string(),
                })),
            })
            .await
            .expect("nack");
    }
}
