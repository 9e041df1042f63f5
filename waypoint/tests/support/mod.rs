//! A small mesh on loopback for the waypoint's tests: a CA, a waypoint
//! (the real library object, serving real HBONE on 127.0.0.1), "pods" that
//! are HBONE servers (weft-hbone's real server, standing in for each pod's
//! ztunnel) running an HTTP app in every tunnel, and clients that tunnel to
//! the waypoint as their own identity with a real hyper client inside.
//!
//! Every test gets its own 127.x.y.0/24, so tests in parallel never share an
//! address; the pods' HBONE port is one ephemeral port for the whole mesh.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use weft_api::config::{
    Action, Authorization, Endpoint as ConfigEndpoint, PolicyScope, PolicyTarget, Route, Rule,
    Service, ServicePort, TunnelProtocol, WaypointRef, Workload, resource,
};
use weft_hbone::{
    DirectDialer, H2Stream, HboneServer, InboundTunnel, PoolSettings, ServerSettings, SpiffeId,
    TunnelHandler, TunnelPool, TunnelTarget, WorkloadCertificate, tls,
};
use weft_runtime::certs::LocalCa;
use weft_runtime::store::{ConfigUpdate, WorkloadStore};
use weft_testkit::TestCa;
use weft_testkit::hbone::echo_stream;
use weft_waypoint::{Waypoint, WaypointName, WaypointSettings};

pub use weft_testkit::ca::{TRUST_DOMAIN as TD, id};

pub const NS: &str = "shop";
pub const APP_PORT: u16 = 8080;
pub const SVC_PORT: u16 = 80;

/// A fresh 127.x.y.0/24 per mesh (per test), different across concurrent
/// test processes too.
fn next_net() -> [u8; 3] {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let pid = std::process::id();
    [127, 100 + (pid % 100) as u8, (n % 250) as u8 + 1]
}

/// What a pod's app does.
#[derive(Default)]
pub struct AppState {
    pub name: String,
    /// Answer 503 to this many requests first.
    pub fail_first: AtomicUsize,
    pub requests: AtomicUsize,
    /// The HBONE peer of every tunnel (who connected to this pod).
    pub peers: Mutex<Vec<SpiffeId>>,
    /// Every tunnel's `:authority`.
    pub authorities: Mutex<Vec<SocketAddr>>,
}

/// The app: JSON about the request. `/slow` takes 30 s; a pod with
/// `fail_first` answers 503 first; a WebSocket upgrade gets a WebSocket
/// that echoes each message, prefixed with the pod's name.
async fn app(
    state: Arc<AppState>,
    peer: Option<String>,
    mut req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    state.requests.fetch_add(1, Ordering::SeqCst);
    if req
        .headers()
        .get("upgrade")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
    {
        return websocket_echo(&state.name, &mut req);
    }
    if req.method() == http::Method::CONNECT {
        return connect_echo(&state.name, &mut req);
    }
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if parts.uri.path() == "/slow" {
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
    let failing = state
        .fail_first
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let headers: HashMap<String, String> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let json = serde_json::json!({
        "pod": state.name,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "version": format!("{:?}", parts.version),
        "peer": peer,
        "headers": headers,
        "body_len": body.len(),
    });
    let mut response = Response::new(Full::new(Bytes::from(json.to_string())));
    if failing {
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    }
    response
}

/// Accepts a WebSocket handshake with a real WebSocket implementation and
/// echoes every text message as `<pod>: <message>`.
fn websocket_echo(pod: &str, req: &mut Request<Incoming>) -> Response<Full<Bytes>> {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{Message, handshake::derive_accept_key, protocol::Role};
    let Some(key) = req.headers().get("sec-websocket-key") else {
        let mut bad = Response::new(Full::new(Bytes::from_static(b"no key")));
        *bad.status_mut() = StatusCode::BAD_REQUEST;
        return bad;
    };
    let accept = derive_accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(req);
    let pod = pod.to_owned();
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        while let Some(Ok(message)) = ws.next().await {
            match message {
                Message::Text(text) => {
                    let reply = format!("{pod}: {text}");
                    if ws.send(Message::Text(reply.into())).await.is_err() {
                        return;
                    }
                }
                Message::Close(_) => return,
                _ => {}
            }
        }
    });
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert("connection", http::HeaderValue::from_static("upgrade"));
    headers.insert("upgrade", http::HeaderValue::from_static("websocket"));
    if let Ok(accept) = http::HeaderValue::from_str(&accept) {
        headers.insert("sec-websocket-accept", accept);
    }
    response
}

/// Plays an HTTP proxy's part for `CONNECT`: accepts, says
/// `<pod> <target>\n` on the new stream, then echoes every byte.
fn connect_echo(pod: &str, req: &mut Request<Incoming>) -> Response<Full<Bytes>> {
    use tokio::io::AsyncWriteExt;
    let upgrade = hyper::upgrade::on(&mut *req);
    let greeting = format!("{pod} {}\n", req.uri());
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut io = TokioIo::new(upgraded);
        if io.write_all(greeting.as_bytes()).await.is_err() {
            return;
        }
        let (mut r, mut w) = tokio::io::split(io);
        let _ = tokio::io::copy(&mut r, &mut w).await;
    });
    Response::new(Full::new(Bytes::new()))
}

/// Serves the app (HTTP/1.1 or HTTP/2) on one byte stream.
async fn serve_app<IO>(io: IO, state: Arc<AppState>, peer: Option<String>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let (state, peer) = (state.clone(), peer.clone());
        async move { Ok::<_, Infallible>(app(state, peer, req).await) }
    });
    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .await;
}

/// A pod's ztunnel stand-in: accepts tunnels for the pod's address and runs
/// the app in each. Port 7000 is a TCP echo instead.
struct PodHandler {
    state: Arc<AppState>,
    ip: IpAddr,
}

impl TunnelHandler for PodHandler {
    async fn handle(&self, tunnel: InboundTunnel) {
        self.state
            .peers
            .lock()
            .unwrap()
            .push(tunnel.peer_identity.clone());
        self.state
            .authorities
            .lock()
            .unwrap()
            .push(tunnel.authority);
        if tunnel.authority.ip() != self.ip {
            tunnel.refuse(StatusCode::BAD_REQUEST);
            return;
        }
        let peer = Some(tunnel.peer_identity.to_string());
        let echo = tunnel.authority.port() == 7000;
        let Ok(stream) = tunnel.accept() else { return };
        if echo {
            echo_stream(stream).await;
        } else {
            serve_app(stream, self.state.clone(), peer).await;
        }
    }
}

#[derive(Clone)]
pub struct Pod {
    pub name: String,
    pub namespace: String,
    pub ip: IpAddr,
    pub uid: String,
    pub state: Arc<AppState>,
}

impl Pod {
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, APP_PORT)
    }
}

pub struct Mesh {
    pub ca: TestCa,
    net: [u8; 3],
    pub hbone_port: u16,
    // Holds the pods' HBONE port on an address of the mesh.
    _reserve: std::net::TcpListener,
    pub store: WorkloadStore,
    pub workloads: Vec<Workload>,
    pub services: Vec<Service>,
    pub policies: Vec<Authorization>,
    pub routes: Vec<Route>,
    version: u64,
    next_host: u8,
    next_vip: u8,
    pub name: WaypointName,
    pub waypoint: Arc<Waypoint>,
    pub waypoint_addr: SocketAddr,
    pub shutdown: CancellationToken,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Mesh {
    pub async fn new() -> Mesh {
        Self::with(|_| {}).await
    }

    /// A mesh whose waypoint settings `tune` may change.
    pub async fn with(tune: impl FnOnce(&mut WaypointSettings)) -> Mesh {
        let ca = TestCa::new();
        let net = next_net();
        let reserve_ip = Ipv4Addr::new(net[0], net[1], net[2], 254);
        let reserve = std::net::TcpListener::bind((reserve_ip, 0)).expect("reserve a port");
        let hbone_port = reserve.local_addr().expect("addr").port();
        let store = WorkloadStore::default();
        let name = WaypointName {
            namespace: NS.into(),
            name: "waypoint".into(),
        };
        let mut settings = WaypointSettings::new(name.clone(), id(NS, "waypoint"));
        settings.proxy.upstream_hbone_port = hbone_port;
        settings.proxy.sniff_timeout = Duration::from_millis(300);
        tune(&mut settings);
        let waypoint = Waypoint::new(
            settings,
            store.clone(),
            Arc::new(LocalCa::new(ca.copy(), Duration::from_secs(3600))),
            ca.bundle.clone(),
        );
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind waypoint");
        let waypoint_addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        {
            let waypoint = waypoint.clone();
            let stop = shutdown.clone();
            tokio::spawn(async move { waypoint.serve(listener, stop).await });
        }
        Mesh {
            ca,
            net,
            hbone_port,
            _reserve: reserve,
            store,
            workloads: Vec::new(),
            services: Vec::new(),
            policies: Vec::new(),
            routes: Vec::new(),
            version: 0,
            next_host: 10,
            next_vip: 200,
            name,
            waypoint,
            waypoint_addr,
            shutdown,
        }
    }

    fn ip(&self, host: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(self.net[0], self.net[1], self.net[2], host))
    }

    pub fn waypoint_ref(&self) -> WaypointRef {
        WaypointRef {
            namespace: self.name.namespace.clone(),
            name: self.name.name.clone(),
            addresses: vec![self.waypoint_addr.ip().to_string()],
            hbone_port: u32::from(self.waypoint_addr.port()),
            identity: id(NS, "waypoint").to_string(),
            ..WaypointRef::default()
        }
    }

    /// A meshed pod (HBONE) running the app.
    pub async fn pod(&mut self, name: &str, service_account: &str) -> Pod {
        self.pod_with(name, NS, service_account, true, false).await
    }

    /// A pod; `hbone` false: outside the mesh (plain TCP app on 8080);
    /// `bound`: bound to the waypoint.
    pub async fn pod_with(
        &mut self,
        name: &str,
        namespace: &str,
        service_account: &str,
        hbone: bool,
        bound: bool,
    ) -> Pod {
        let ip = self.ip(self.next_host);
        self.next_host += 1;
        let state = Arc::new(AppState {
            name: name.into(),
            ..Default::default()
        });
        if hbone {
            let cert = self.ca.issue(&id(namespace, service_account));
            let config = tls::server_config(&cert, &self.ca.bundle).expect("server config");
            let server = HboneServer::new(
                config,
                PodHandler {
                    state: state.clone(),
                    ip,
                },
                ServerSettings::default(),
            );
            let listener = TcpListener::bind(SocketAddr::new(ip, self.hbone_port))
                .await
                .expect("bind pod HBONE");
            let stop = self.shutdown.clone();
            tokio::spawn(async move { server.serve(listener, stop).await });
        } else {
            for port in [APP_PORT, 7000] {
                let listener = TcpListener::bind(SocketAddr::new(ip, port))
                    .await
                    .expect("bind pod app");
                let (state, stop) = (state.clone(), self.shutdown.clone());
                tokio::spawn(async move {
                    loop {
                        let (tcp, _) = tokio::select! {
                            _ = stop.cancelled() => return,
                            r = listener.accept() => match r { Ok(r) => r, Err(_) => return },
                        };
                        let state = state.clone();
                        tokio::spawn(async move {
                            if port == 7000 {
                                echo_stream(tcp).await;
                            } else {
                                serve_app(tcp, state, None).await;
                            }
                        });
                    }
                });
            }
        }
        let uid = format!("{namespace}-{name}");
        self.workloads.push(Workload {
            uid: uid.clone(),
            name: name.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
            trust_domain: TD.into(),
            node: "node-a".into(),
            addresses: vec![ip.to_string()],
            protocol: if hbone {
                TunnelProtocol::Hbone as i32
            } else {
                TunnelProtocol::None as i32
            },
            waypoint: bound.then(|| self.waypoint_ref()),
            ..Default::default()
        });
        Pod {
            name: name.into(),
            namespace: namespace.into(),
            ip,
            uid,
            state,
        }
    }

    /// A Service on port 80 → 8080 (and 7000 → 7000, `appProtocol: tcp`)
    /// over `pods`; `bound`: bound to the waypoint. Returns its VIP:80.
    pub fn service(&mut self, name: &str, pods: &[&Pod], bound: bool) -> SocketAddr {
        self.service_with(name, pods, bound, "")
    }

    pub fn service_with(
        &mut self,
        name: &str,
        pods: &[&Pod],
        bound: bool,
        app_protocol: &str,
    ) -> SocketAddr {
        let vip = self.ip(self.next_vip);
        self.next_vip += 1;
        self.services.push(Service {
            name: name.into(),
            namespace: NS.into(),
            hostname: format!("{name}.{NS}.svc.cluster.local"),
            vips: vec![vip.to_string()],
            ports: vec![
                ServicePort {
                    name: "http".into(),
                    service_port: u32::from(SVC_PORT),
                    target_port: u32::from(APP_PORT),
                    app_protocol: app_protocol.into(),
                },
                ServicePort {
                    name: "echo".into(),
                    service_port: 7000,
                    target_port: 7000,
                    app_protocol: "tcp".into(),
                },
            ],
            endpoints: pods
                .iter()
                .map(|p| ConfigEndpoint {
                    workload_uid: p.uid.clone(),
                    ..Default::default()
                })
                .collect(),
            waypoint: bound.then(|| self.waypoint_ref()),
            prefer_same_node: false,
        });
        SocketAddr::new(vip, SVC_PORT)
    }

    /// Pushes the whole config to the waypoint's store, as a new version.
    pub fn apply(&mut self) {
        self.version += 1;
        let mut resources: Vec<resource::Kind> = Vec::new();
        resources.extend(self.workloads.iter().cloned().map(resource::Kind::Workload));
        resources.extend(self.services.iter().cloned().map(resource::Kind::Service));
        resources.extend(self.policies.iter().cloned().map(|mut p| {
            let action = Action::try_from(p.action).unwrap_or(Action::Deny);
            let (l4, warnings) = weft_api::authz::compile_l4(action, &p.rules);
            p.l4_rules = l4;
            p.l4_warnings = warnings;
            resource::Kind::Authorization(p)
        }));
        resources.extend(self.routes.iter().cloned().map(resource::Kind::Route));
        self.store
            .apply(ConfigUpdate {
                version: self.version,
                full_snapshot: true,
                resources,
                removed: Vec::new(),
            })
            .expect("config applies");
    }

    /// A client with identity `ns/sa`, at a fresh address of the mesh.
    pub fn client(&mut self, namespace: &str, service_account: &str) -> Client {
        let ip = self.ip(self.next_host);
        self.next_host += 1;
        let cert = self.ca.issue(&id(namespace, service_account));
        Client {
            cert,
            ip,
            pool: TunnelPool::new(PoolSettings::default(), self.ca.bundle.clone()),
            waypoint: self.waypoint_addr,
            waypoint_identity: id(NS, "waypoint"),
        }
    }
}

/// A waypoint-scoped policy targeting `kind` (`Gateway` or `Service`) `name`.
pub fn waypoint_policy(
    name: &str,
    kind: &str,
    target: &str,
    action: Action,
    rules: Vec<Rule>,
) -> Authorization {
    Authorization {
        name: name.into(),
        namespace: NS.into(),
        scope: PolicyScope::Waypoint as i32,
        action: action as i32,
        rules,
        target: Some(PolicyTarget {
            kind: kind.into(),
            namespace: NS.into(),
            name: target.into(),
        }),
        ..Default::default()
    }
}

/// A client pod's ztunnel, as far as the waypoint can tell: tunnels as the
/// client's identity.
pub struct Client {
    pub cert: Arc<WorkloadCertificate>,
    pub ip: IpAddr,
    pub pool: TunnelPool,
    pub waypoint: SocketAddr,
    pub waypoint_identity: SpiffeId,
}

/// An HTTP response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// Which pod answered.
    pub fn pod(&self) -> String {
        self.json()["pod"].as_str().unwrap_or_default().to_owned()
    }
}

impl Client {
    /// A tunnel to the waypoint for `authority`.
    pub async fn tunnel(&self, authority: SocketAddr) -> Result<H2Stream, weft_hbone::HboneError> {
        self.tunnel_traced(authority, None).await
    }

    /// A tunnel whose CONNECT carries `traceparent` (as a client ztunnel's
    /// connection span sends it).
    pub async fn tunnel_traced(
        &self,
        authority: SocketAddr,
        traceparent: Option<String>,
    ) -> Result<H2Stream, weft_hbone::HboneError> {
        let target = TunnelTarget {
            hbone_addr: self.waypoint,
            expected_identity: self.waypoint_identity.clone(),
            authority,
            client_ip: Some(self.ip),
            traceparent,
            baggage: None,
        };
        self.pool.connect(&self.cert, &target, &DirectDialer).await
    }

    /// An HTTP/1.1 connection through a tunnel.
    pub async fn http1(
        &self,
        authority: SocketAddr,
    ) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
        let stream = self
            .tunnel(authority)
            .await
            .expect("tunnel to the waypoint");
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("HTTP/1.1 handshake");
        tokio::spawn(conn);
        sender
    }

    /// An HTTP/2 (prior knowledge) connection through a tunnel.
    pub async fn http2(
        &self,
        authority: SocketAddr,
    ) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
        let stream = self
            .tunnel(authority)
            .await
            .expect("tunnel to the waypoint");
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .expect("HTTP/2 handshake");
        tokio::spawn(conn);
        sender
    }

    /// One request on a fresh HTTP/1.1 connection.
    pub async fn request(
        &self,
        authority: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut sender = self.http1(authority).await;
        send(&mut sender, method, path, headers).await
    }

    pub async fn get(&self, authority: SocketAddr, path: &str) -> Reply {
        self.request(authority, method_get(), path, &[]).await
    }
}

fn method_get() -> &'static str {
    "GET"
}

/// Sends one request on an HTTP/1.1 connection and reads the whole reply.
pub async fn send(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    sender.ready().await.expect("connection ready");
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "reviews.shop.svc.cluster.local");
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let body = if method == "POST" || method == "PUT" {
        Full::new(Bytes::from_static(b"{\"hello\":1}"))
    } else {
        Full::new(Bytes::new())
    };
    let response = sender
        .send_request(request.body(body).expect("request"))
        .await
        .expect("response");
    read(response).await
}

pub async fn read(response: Response<Incoming>) -> Reply {
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}
