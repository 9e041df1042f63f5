//! ztunnel's connection handlers on the in-process pod network
//! (`weft_ztunnel::pod_network::Fabric`): no root, no namespaces, real TLS
//! and HBONE between the pods' listeners. Each row of the table is one
//! connection a pod's capture would hand to ztunnel, and what must happen to
//! it: the bytes reach the application, or the client is refused. The netns
//! tests (tests/mesh.rs, the e2e suite) cover what only the kernel does.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weft_api::config::{
    Action, Authorization, HealthStatus, L4Rule, MtlsMode, PolicyScope, TunnelProtocol,
    WaypointRef, Workload, resource,
};
use weft_hbone::{Dialer, PoolSettings, ServerSettings, SpiffeId, TunnelPool, TunnelTarget};
use weft_runtime::certs::{CertManager, LocalCa};
use weft_runtime::store::{ConfigUpdate, WorkloadStore};
use weft_runtime::trust::TrustState;
use weft_testkit::TestCa;
use weft_ztunnel::connections::ConnectionRegistry;
use weft_ztunnel::pod_network::Fabric;
use weft_ztunnel::proxy::{
    HBONE_PORT, OUTBOUND_PORT, PLAINTEXT_PORT, Pod, Proxy, ProxySettings, serve_pod,
};

const TD: &str = "cluster.local";
const APP_PORT: u16 = 8080;

fn workload(name: &str, ip: &str, meshed: bool) -> Workload {
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

fn ip(w: &Workload) -> IpAddr {
    w.addresses[0].parse().expect("address")
}

struct Bed {
    fabric: Arc<Fabric>,
    /// The CA that signs the pods' certificates.
    ca: TestCa,
    _stop: tokio_util::sync::DropGuard,
}

impl Bed {
    /// Serves `meshed` as enrolled pods of one ztunnel, with `config` in its
    /// store, and an application echoing on `APP_PORT` at every workload.
    async fn new(config: Vec<resource::Kind>, meshed: &[&Workload], apps: &[&Workload]) -> Bed {
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
            _stop: stop.drop_guard(),
        }
    }

    /// What the application answers to a connection the capture of the pod
    /// at `from` hands to ztunnel's `port`, for `dst`; `None` if refused.
    async fn exchange(&self, from: IpAddr, port: u16, dst: SocketAddr) -> Option<String> {
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
    async fn tunnel_as(&self, identity: &str, to: &Workload) -> Option<String> {
        let identity: SpiffeId = identity.parse().expect("identity");
        let cert = self.ca.issue(&identity);
        let server = SpiffeId::new(TD, &to.namespace, &to.service_account).expect("id");
        let target = TunnelTarget {
            hbone_addr: SocketAddr::new(ip(to), HBONE_PORT),
            expected_identity: server,
            authority: SocketAddr::new(ip(to), APP_PORT),
            client_ip: None,
            traceparent: None,
            baggage: None,
        };
        let pool = TunnelPool::new(PoolSettings::default(), self.ca.bundle.clone());
        let dialer = FabricDialer(self.fabric.clone());
        let attempt = async {
            let mut stream = pool.connect(&cert, &target, &dialer).await.ok()?;
            stream.write_all(b"hello").await.ok()?;
            let mut reply = vec![0u8; 64];
            let n = stream.read(&mut reply).await.ok()?;
            (n > 0).then(|| String::from_utf8_lossy(&reply[..n]).into_owned())
        };
        tokio::time::timeout(Duration::from_secs(10), attempt)
            .await
            .unwrap_or_else(|_| panic!("tunnel to {} hung", to.name))
    }
}

/// Dials from outside every pod, as a peer ztunnel or waypoint would.
struct FabricDialer(Arc<Fabric>);

impl Dialer for FabricDialer {
    fn dial(
        &self,
        addr: SocketAddr,
    ) -> std::pin::Pin<Box<dyn Future<Output = std::io::Result<tokio::net::TcpStream>> + Send + '_>>
    {
        Box::pin(self.0.connect(addr))
    }
}

/// A pod bound to a waypoint is reached only through it: inbound HBONE from
/// the waypoint's identity only, and plaintext never (a client outside the
/// mesh cannot be sent to the waypoint); either would skip its L7 policy.
#[tokio::test]
async fn a_waypoint_bound_pod_takes_tunnels_from_its_waypoint_only() {
    let waypoint = WaypointRef {
        namespace: "shop".into(),
        name: "wp".into(),
        identity: format!("spiffe://{TD}/ns/shop/sa/wp"),
        addresses: vec!["10.0.0.9".into()],
        ..Default::default()
    };
    let bound = Workload {
        waypoint: Some(waypoint),
        ..workload("bound", "10.0.0.4", true)
    };
    let server = workload("server", "10.0.0.2", true);
    let config = vec![
        resource::Kind::Workload(bound.clone()),
        resource::Kind::Workload(server.clone()),
    ];
    let bed = Bed::new(config, &[&bound, &server], &[&bound, &server]).await;
    let client = format!("spiffe://{TD}/ns/shop/sa/client");
    let wp = format!("spiffe://{TD}/ns/shop/sa/wp");
    assert_eq!(
        bed.tunnel_as(&client, &bound).await,
        None,
        "bypassed the waypoint"
    );
    assert_eq!(
        bed.tunnel_as(&wp, &bound).await.as_deref(),
        Some("bound:hello")
    );
    assert_eq!(
        bed.tunnel_as(&client, &server).await.as_deref(),
        Some("server:hello")
    );
}

#[tokio::test]
async fn each_path_admits_or_refuses_as_the_mesh_decides() {
    let client = workload("client", "10.0.0.1", true);
    let server = workload("server", "10.0.0.2", true);
    let outside = workload("outside", "10.0.0.3", false);
    let gone = WaypointRef {
        namespace: "shop".into(),
        name: "gone".into(),
        identity: format!("spiffe://{TD}/ns/shop/sa/gone"),
        unavailable: "Gateway shop/gone of class weft-waypoint does not exist".into(),
        ..Default::default()
    };
    let bound = Workload {
        waypoint: Some(gone),
        ..workload("bound", "10.0.0.4", true)
    };
    let strict = Workload {
        mtls_mode: MtlsMode::Strict as i32,
        ..workload("strict", "10.0.0.5", true)
    };
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
    let everyone = [&client, &server, &outside, &bound, &strict, &locked];
    let mut config: Vec<resource::Kind> = everyone
        .iter()
        .map(|w| resource::Kind::Workload((*w).clone()))
        .collect();
    config.push(resource::Kind::Authorization(deny_all));
    let meshed = [&client, &server, &bound, &strict, &locked];
    let bed = Bed::new(config, &meshed, &everyone).await;

    let app = |w: &Workload| SocketAddr::new(ip(w), APP_PORT);
    let from = ip(&client);
    let table: Vec<(&str, IpAddr, u16, SocketAddr, Option<&str>)> = vec![
        (
            "outbound, meshed destination: HBONE",
            from,
            OUTBOUND_PORT,
            app(&server),
            Some("server:hello"),
        ),
        (
            "outbound, outside the mesh: plain TCP",
            from,
            OUTBOUND_PORT,
            app(&outside),
            Some("outside:hello"),
        ),
        (
            "outbound, bound to an unavailable waypoint",
            from,
            OUTBOUND_PORT,
            app(&bound),
            None,
        ),
        (
            "outbound, DENY policy at the destination",
            from,
            OUTBOUND_PORT,
            app(&locked),
            None,
        ),
        (
            "outbound, to ztunnel's own listener",
            from,
            OUTBOUND_PORT,
            SocketAddr::new(from, OUTBOUND_PORT),
            None,
        ),
        (
            "outbound, to loopback",
            from,
            OUTBOUND_PORT,
            "127.0.0.1:8080".parse().expect("addr"),
            None,
        ),
        (
            "plaintext in, PERMISSIVE",
            ip(&server),
            PLAINTEXT_PORT,
            app(&server),
            Some("server:hello"),
        ),
        (
            "plaintext in, STRICT",
            ip(&strict),
            PLAINTEXT_PORT,
            app(&strict),
            None,
        ),
        (
            "plaintext in, waypoint-bound",
            ip(&bound),
            PLAINTEXT_PORT,
            app(&bound),
            None,
        ),
        (
            "plaintext in, DENY policy",
            ip(&locked),
            PLAINTEXT_PORT,
            app(&locked),
            None,
        ),
        (
            "plaintext in, for another pod",
            ip(&server),
            PLAINTEXT_PORT,
            app(&strict),
            None,
        ),
    ];
    let mut wrong = Vec::new();
    for (what, pod, port, dst, expected) in table {
        let got = bed.exchange(pod, port, dst).await;
        if got.as_deref() != expected {
            wrong.push(format!("{what}: expected {expected:?}, got {got:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
