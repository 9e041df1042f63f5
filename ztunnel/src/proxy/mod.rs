//! The data path. Each enrolled pod gets three listeners inside its network
//! namespace; one module per hop follows a connection from accept to close:
//!
//! - [`outbound`]: 15001, captured outbound TCP → HBONE tunnel or plain TCP;
//! - [`inbound`]: 15008, HBONE tunnels for the pod → policy → the application;
//! - [`plaintext`]: 15006, captured inbound plaintext → mTLS mode, policy → the application;
//! - [`route`]: where an outbound connection goes (Service endpoints picked
//!   by the runtime's load balancer, `weft_runtime::lb`);
//!
//! What each path admits before policy (ztunnel's own listeners, loopback,
//! STRICT, waypoint bindings, a pod without config) is decided in
//! `weft_mesh::admission`, shared with the waypoint and `weftctl explain`.

pub mod inbound;
pub mod outbound;
pub mod plaintext;
pub mod route;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};
use weft_api::config::Workload;
use weft_hbone::{
    Dialer, HboneError, HboneServer, ServerSettings, ServerTls, SpiffeId, TunnelPool,
};

use crate::connections::ConnectionRegistry;
use crate::pod_network::PodNetwork;
use crate::socket::ConnectOptions;
use weft_runtime::certs::CertManager;
use weft_runtime::lb::LoadBalancer;
use weft_runtime::store::WorkloadStore;
use weft_runtime::trust::TrustState;

/// Ports inside each pod (docs/design.md §3).
pub const OUTBOUND_PORT: u16 = weft_mesh::admission::OUTBOUND_PORT;
pub const PLAINTEXT_PORT: u16 = weft_mesh::admission::PLAINTEXT_PORT;
pub const HBONE_PORT: u16 = route::HBONE_PORT;

/// An enrolled pod on this node, as the node agent handed it over.
#[derive(Debug)]
pub struct Pod {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub service_account: String,
    pub addresses: Vec<IpAddr>,
    pub identity: SpiffeId,
    /// Where its sockets are made: its network namespace (or, in tests, an
    /// in-process stand-in).
    pub network: Box<dyn PodNetwork>,
}

impl Pod {
    /// `namespace/name`.
    pub fn workload_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Timeouts of the data path.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// How long a connection waits for its identity's first certificate.
    pub cert_wait: Duration,
    /// TCP connect to an application or a plain destination.
    pub connect_timeout: Duration,
}

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings {
            cert_wait: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// What every connection handler shares.
pub struct Proxy {
    pub node: String,
    pub store: WorkloadStore,
    pub certs: CertManager,
    pub trust: TrustState,
    pub pool: TunnelPool,
    pub connections: ConnectionRegistry,
    pub lb: LoadBalancer,
    pub settings: ProxySettings,
    pub hbone: ServerSettings,
    /// Connection spans; `None` unless `--otlp-endpoint` is set.
    pub tracing: Option<crate::otel::Tracing>,
    /// Every connection-handling task, so a drain can wait for the ones
    /// between accept and their first byte as well as the established ones.
    pub tasks: TaskTracker,
}

impl Proxy {
    /// The destination workload's config, or a minimal one from what the
    /// node agent told us, when the config has not caught up with the pod.
    pub fn workload_of(&self, pod: &Pod) -> Arc<Workload> {
        self.store.workload(&pod.uid).unwrap_or_else(|| {
            Arc::new(Workload {
                uid: pod.uid.clone(),
                name: pod.name.clone(),
                namespace: pod.namespace.clone(),
                service_account: pod.service_account.clone(),
                trust_domain: pod.identity.trust_domain().to_owned(),
                node: self.node.clone(),
                addresses: pod.addresses.iter().map(|a| a.to_string()).collect(),
                ..Default::default()
            })
        })
    }

    /// Connects from inside `pod` to `dst`, within the connect timeout.
    /// Boxed: a connection's task keeps the size of its largest state for
    /// its whole life, and a connect needs far more than the copy that
    /// follows it (docs/benchmarks.md, `idle-tunnels`).
    pub fn connect_from<'a>(
        &'a self,
        pod: &'a Pod,
        dst: std::net::SocketAddr,
        options: ConnectOptions,
    ) -> Connecting<'a> {
        Box::pin(async move {
            tokio::time::timeout(
                self.settings.connect_timeout,
                pod.network.connect(dst, options),
            )
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))?
        })
    }
}

/// A connect in progress ([`Proxy::connect_from`]).
pub type Connecting<'a> =
    std::pin::Pin<Box<dyn Future<Output = std::io::Result<TcpStream>> + Send + 'a>>;

/// Dials HBONE connections from inside a pod.
pub struct PodDialer<'a> {
    pub proxy: &'a Proxy,
    pub pod: &'a Pod,
}

impl Dialer for PodDialer<'_> {
    fn dial(&self, addr: std::net::SocketAddr) -> Connecting<'_> {
        self.proxy
            .connect_from(self.pod, addr, ConnectOptions::default())
    }
}

/// Serves the pod's identity on its 15008 listener. The certificate may not
/// have arrived when the first connection does: the handshake waits for it
/// (bounded). Configs are cached until the certificate or roots change.
struct PodTls {
    proxy: Arc<Proxy>,
    identity: SpiffeId,
    cache: Mutex<Option<(String, u64, Arc<rustls::ServerConfig>)>>,
}

impl ServerTls for PodTls {
    async fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, HboneError> {
        let cert = self
            .proxy
            .certs
            .get(&self.identity)
            .await
            .map_err(|e| HboneError::NoCertificate(e.to_string()))?;
        let (trust_version, bundle) = self.proxy.trust.get();
        let mut cache = self.cache.lock();
        if let Some((serial, version, config)) = cache.as_ref()
            && serial == cert.serial()
            && *version == trust_version
        {
            return Ok(config.clone());
        }
        let config = weft_hbone::tls::server_config(&cert, &bundle)?;
        *cache = Some((cert.serial().to_owned(), trust_version, config.clone()));
        Ok(config)
    }
}

/// Opens the pod's listeners and serves them until `stop` fires. Returns
/// once the listeners are bound, so the caller can ACK the node agent.
pub fn serve_pod(
    proxy: &Arc<Proxy>,
    pod: &Arc<Pod>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let v6 = pod.addresses.iter().any(IpAddr::is_ipv6);
    let mut families = vec![false];
    if v6 {
        families.push(true);
    }
    let mut listeners = Vec::new();
    for &is_v6 in &families {
        for port in [OUTBOUND_PORT, PLAINTEXT_PORT, HBONE_PORT] {
            listeners.push((port, pod.network.listen(port, is_v6)?));
        }
    }
    for (port, listener) in listeners {
        let (proxy, pod, stop) = (proxy.clone(), pod.clone(), stop.clone());
        match port {
            HBONE_PORT => {
                let tls = PodTls {
                    proxy: proxy.clone(),
                    identity: pod.identity.clone(),
                    cache: Mutex::new(None),
                };
                let handler = inbound::InboundHandler {
                    proxy: proxy.clone(),
                    pod: pod.clone(),
                };
                let server = HboneServer::new(tls, handler, proxy.hbone.clone());
                // `serve` returns once its connections (and so their
                // tunnels) have finished after `stop`.
                proxy
                    .tasks
                    .spawn(async move { server.serve(listener, stop).await });
            }
            OUTBOUND_PORT => {
                let tasks = proxy.tasks.clone();
                tokio::spawn(accept_loop(listener, pod.clone(), stop, tasks, move |c| {
                    outbound::handle(proxy.clone(), pod.clone(), c)
                }));
            }
            _ => {
                let tasks = proxy.tasks.clone();
                tokio::spawn(accept_loop(listener, pod.clone(), stop, tasks, move |c| {
                    plaintext::handle(proxy.clone(), pod.clone(), c)
                }));
            }
        }
    }
    debug!(pod = %pod.workload_name(), "listeners up");
    Ok(())
}

/// A connection the pod's redirect rules sent to one of its listeners.
pub struct Captured {
    pub client: TcpStream,
    /// The peer, as `accept` returned it.
    pub client_addr: SocketAddr,
    /// Where the connection was going before it was redirected.
    pub dst: SocketAddr,
}

/// Accepts until `stop`, spawning `handle` per captured connection.
/// Dropping the listener on stop closes only our copy: the node agent (and a
/// newer ztunnel) hold the same socket, so new connections wait in its
/// backlog for whoever accepts next.
async fn accept_loop<F, Fut>(
    listener: TcpListener,
    pod: Arc<Pod>,
    stop: CancellationToken,
    tasks: TaskTracker,
    handle: F,
) where
    F: Fn(Captured) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((client, client_addr)) => match pod.network.original_dst(&client, client_addr) {
                Ok(dst) => {
                    tasks.spawn(handle(Captured {
                        client,
                        client_addr,
                        dst,
                    }));
                }
                Err(e) => {
                    debug!(pod = %pod.workload_name(), error = %e, "connection without an original destination");
                }
            },
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
