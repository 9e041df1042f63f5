//! The test bed of ztunnel's handler tests (tests/handlers.rs,
//! tests/tracing.rs): one ztunnel's pods on the in-process pod network
//! (`weft_ztunnel::pod_network::Fabric`), real TLS and HBONE between their
//! listeners, an echoing application on each.

#![allow(dead_code)] // each test file uses its own part

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weft_api::config::{
    Action, Authorization, HealthStatus, L4Rule, PolicyScope, TunnelProtocol, Workload, resource,
};
use weft_hbone::{Dialer, PoolSettings, ServerSettings, SpiffeId, TunnelPool, TunnelTarget};
use weft_runtime::certs::{CertManager, LocalCa};
use weft_runtime::store::{ConfigUpdate, WorkloadStore};
use weft_runtime::trust::TrustState;
use weft_testkit::TestCa;
use weft_ztunnel::connections::ConnectionRegistry;
use weft_ztunnel::otel::Tracing;
use weft_ztunnel::pod_network::Fabric;
use weft_ztunnel::proxy::{HBONE_PORT, Pod, Proxy, ProxySettings, serve_pod};

pub const TD: &str = "cluster.local";
pub const APP_PORT: u16 = 8080;

pub fn workload(name: &str, ip: &str, meshed: bool) -> Workload {
    Workload {
        uid: name.into(),
        name: name.into(),
        namespace: "shop".into(),
        service_account: name.into(),
        trust_domain: TD.into(),
        node: "node-1".into(),
        addresses: vec![ip.into()],
        protocol: if meshed {
            TunnelProtocol::Hbone as i32
        } else {
            TunnelProtocol::None as i32
        },
        status: HealthStatus::Healthy as i32,
        ..Default::default()
    }
}

/// A pod `locked/locked` at 10.0.0.6 and the namespace-wide policy that
/// DENYs every connection to it.
pub fn locked_behind_deny_all() -> (Workload, Authorization) {
    let locked = Workload {
        namespace: "locked".into(),
        ..workload("locked", "10.0.0.6", true)
    };
    let deny_all = Authorization {
        name: "deny-all".into(),
        namespace: "locked".into(),
        scope: PolicyScope::Namespace as i32,
        action: Action::Deny as i32,
        l4_rules: vec![L4Rule::default()],
        ..Default::default()
    };
    (locked, deny_all)
}

pub fn ip(w: &Workload) -> IpAddr {
    w.addresses[0].parse().expect("address")
}

pub struct Bed {
    pub fabric: Arc<Fabric>,
    /// The CA that signs the pods' certificates.
    pub ca: TestCa,
    pub proxy: Arc<Proxy>,
    _stop: tokio_util::sync::DropGuard,
}

impl Bed {
    /// Serves `meshed` as enrolled pods of one ztunnel, with `config` in its
    /// store, and an application echoing on `APP_PORT` at every workload.
    pub async fn new(config: Vec<resource::Kind>, meshed: &[&Workload], apps: &[&Workload]) -> Bed {
        Bed::traced(None, config, meshed, apps).await
    }

    /// [`Bed::new`] with ztunnel's connection spans going to `tracing`.
    pub async fn traced(
        tracing: Option<Tracing>,
        config: Vec<resource::Kind>,
        meshed: &[&Workload],
        apps: &[&Workload],
    ) -> Bed {
        let store = WorkloadStore::default();
        store
            .apply(ConfigUpdate {
                version: 1,
                full_snapshot: true,
                resources: config,
                removed: vec![],
            })
            .expect("config");
        let ca = TestCa::for_domain(TD);
        let bundle = ca.bundle.clone();
        let proxy = Arc::new(Proxy {
            node: "node-1".into(),
            store,
            certs: CertManager::new(
                Arc::new(LocalCa::new(ca.copy(), Duration::from_secs(3600))),
                Duration::from_secs(5),
            ),
            trust: TrustState::new(bundle.clone()),
            pool: TunnelPool::new(PoolSettings::default(), bundle.clone()),
            connections: ConnectionRegistry::default(),
            lb: Default::default(),
            settings: ProxySettings {
                connect_timeout: Duration::from_secs(2),
                ..Default::default()
            },
            hbone: ServerSettings::default(),
            tracing,
            tasks: TaskTracker::new(),
        });
        let fabric = Fabric::new();
        let stop = CancellationToken::new();
        for w in meshed {
            let identity = SpiffeId::new(TD, &w.namespace, &w.service_account).expect("id");
            proxy.certs.want(&identity);
            let pod = Arc::new(Pod {
                uid: w.uid.clone(),
                namespace: w.namespace.clone(),
                name: w.name.clone(),
                service_account: w.service_account.clone(),
                addresses: vec![ip(w)],
                identity,
                network: Box::new(fabric.pod(ip(w))),
            });
            serve_pod(&proxy, &pod, stop.clone()).expect("listeners");
        }
        for w in apps {
            let listener = fabric
                .listen(SocketAddr::new(ip(w), APP_PORT))
                .await
                .expect("app");
            let name = w.name.clone();
            tokio::spawn(async move {
                while let Ok((mut conn, _)) = listener.accept().await {
                    let name = name.clone();
                    tokio::spawn(async move {
                        let mut buf = [0u8; 64];
                        if let Ok(n) = conn.read(&mut buf).await {
                            let reply = format!("{name}:{}", String::from_utf8_lossy(&buf[..n]));
                            let _ = conn.write_all(reply.as_bytes()).await;
                        }
                    });
                }
            });
        }
        Bed {
            fabric,
            ca,
            proxy,
            _stop: stop.drop_guard(),
        }
    }

    /// What the application answers to a connection the capture of the pod
    /// at `from` hands to ztunnel's `port`, for `dst`; `None` if refused.
    pub async fn exchange(&self, from: IpAddr, port: u16, dst: SocketAddr) -> Option<String> {
        let attempt = async {
            let mut conn = self.fabric.capture(from, port, dst).await.ok()?;
            conn.write_all(b"hello").await.ok()?;
            let mut reply = String::new();
            conn.read_to_string(&mut reply).await.ok()?;
            (!reply.is_empty()).then_some(reply)
        };
        tokio::time::timeout(Duration::from_secs(10), attempt)
            .await
            .unwrap_or_else(|_| panic!("{from} -> {dst} via {port} hung"))
    }
}

impl Bed {
    /// What the application answers to an HBONE tunnel opened straight to
    /// `to`'s ztunnel as `identity`, for `to`'s application; `None` if
    /// refused.
    pub async fn tunnel_as(&self, identity: &str, to: &Workload) -> Option<String> {
        self.tunnel_with(identity, to, None).await
    }

    /// [`Bed::tunnel_as`] with a `traceparent` on the `CONNECT`.
    pub async fn tunnel_with(
        &self,
        identity: &str,
        to: &Workload,
        traceparent: Option<String>,
    ) -> Option<String> {
        let identity: SpiffeId = identity.parse().expect("identity");
        let cert = self.ca.issue(&identity);
        let server = SpiffeId::new(TD, &to.namespace, &to.service_account).expect("id");
        let target = TunnelTarget {
            hbone_addr: SocketAddr::new(ip(to), HBONE_PORT),
            expected_identity: server,
            authority: SocketAddr::new(ip(to), APP_PORT),
            client_ip: None,
            traceparent,
            baggage: None,
        };
        let pool = TunnelPool::new(PoolSettings::default(), self.ca.bundle.clone());
        let dialer = FabricDialer(self.fabric.clone());
        let attempt = async {
            let mut stream = pool.connect(&cert, &target, &dialer).await.ok()?;
            stream.write_all(b"hello").await.ok()?;
            // Both halves closed in order, as a well-behaved client does:
            // the tunnel ends cleanly, not with a reset.
            stream.shutdown().await.ok()?;
            let mut reply = String::new();
            stream.read_to_string(&mut reply).await.ok()?;
            (!reply.is_empty()).then_some(reply)
        };
        tokio::time::timeout(Duration::from_secs(10), attempt)
            .await
            .unwrap_or_else(|_| panic!("tunnel to {} hung", to.name))
    }
}

/// Dials from outside every pod, as a peer ztunnel or waypoint would.
pub struct FabricDialer(Arc<Fabric>);

impl Dialer for FabricDialer {
    fn dial(
        &self,
        addr: SocketAddr,
    ) -> std::pin::Pin<Box<dyn Future<Output = std::io::Result<tokio::net::TcpStream>> + Send + '_>>
    {
        Box::pin(self.0.connect(addr))
    }
}
