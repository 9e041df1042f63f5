//! HBONE servers for tests: tunnel handlers with simple behaviour, a
//! loopback server that counts its TCP connections, and a byte echo for
//! any stream (a tunnel, or a plain TCP connection).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use weft_hbone::{
    HboneServer, InboundTunnel, ServerSettings, SpiffeId, TrustBundle, TunnelHandler, TunnelTarget,
    WorkloadCertificate, tls,
};

/// Peer identity, authority, forwarded client IP, traceparent.
pub type SeenTunnel = (SpiffeId, SocketAddr, Option<IpAddr>, Option<String>);

/// What [`Echo`] saw of each tunnel.
#[derive(Default)]
pub struct Seen {
    pub tunnels: AtomicUsize,
    pub peers: std::sync::Mutex<Vec<SeenTunnel>>,
}

/// Echoes every tunnel's bytes back, and half-closes when the client does.
pub struct Echo(pub Arc<Seen>);

impl TunnelHandler for Echo {
    async fn handle(&self, tunnel: InboundTunnel) {
        self.0.tunnels.fetch_add(1, Ordering::SeqCst);
        self.0.peers.lock().expect("seen").push((
            tunnel.peer_identity.clone(),
            tunnel.authority,
            tunnel.client_ip(),
            tunnel.header("traceparent").map(str::to_owned),
        ));
        let Ok(stream) = tunnel.accept() else { return };
        let (mut send, mut recv) = stream.split();
        while let Ok(Some(chunk)) = recv.recv().await {
            if send.send(chunk).await.is_err() {
                return;
            }
        }
        let _ = send.finish();
    }
}

/// Reads until EOF, then answers with the byte count and half-closes.
pub struct CountThenReply;

impl TunnelHandler for CountThenReply {
    async fn handle(&self, tunnel: InboundTunnel) {
        let Ok(mut stream) = tunnel.accept() else {
            return;
        };
        let mut buf = Vec::new();
        if stream.read_to_end(&mut buf).await.is_err() {
            return;
        }
        let _ = stream
            .write_all(format!("received {} bytes", buf.len()).as_bytes())
            .await;
        let _ = stream.shutdown().await;
    }
}

/// Refuses every tunnel with 403.
pub struct Refuse;

impl TunnelHandler for Refuse {
    async fn handle(&self, tunnel: InboundTunnel) {
        tunnel.refuse(http::StatusCode::FORBIDDEN);
    }
}

/// Forwards each tunnel to a TCP address on loopback (what ztunnel's
/// inbound does, minus policy).
pub struct ForwardTo(pub SocketAddr);

impl TunnelHandler for ForwardTo {
    async fn handle(&self, tunnel: InboundTunnel) {
        let Ok(mut tcp) = TcpStream::connect(self.0).await else {
            tunnel.refuse(http::StatusCode::SERVICE_UNAVAILABLE);
            return;
        };
        let Ok(stream) = tunnel.accept() else { return };
        let counters = weft_hbone::ByteCounters::default();
        let _ = weft_hbone::copy_bidirectional(&mut tcp, stream, &counters).await;
    }
}

/// Writes back whatever `io` reads until EOF, then shuts its write side.
pub async fn echo_stream<IO: AsyncRead + AsyncWrite + Unpin>(mut io: IO) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match io.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if io.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = io.shutdown().await;
}

/// An HBONE server on an ephemeral loopback port; counts TCP accepts.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
}

/// An HBONE server presenting `cert`, trusting `bundle`, with default
/// settings.
pub async fn start_server<H: TunnelHandler>(
    cert: &WorkloadCertificate,
    bundle: &TrustBundle,
    handler: H,
) -> RunningServer {
    start_server_with(cert, bundle, handler, ServerSettings::default()).await
}

pub async fn start_server_with<H: TunnelHandler>(
    cert: &WorkloadCertificate,
    bundle: &TrustBundle,
    handler: H,
    settings: ServerSettings,
) -> RunningServer {
    let config = tls::server_config(cert, bundle).expect("server config");
    let server = HboneServer::new(config, handler, settings);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let shutdown = CancellationToken::new();
    let counted = accepted.clone();
    let stop = shutdown.clone();
    // Accept by hand (instead of `serve`) to count TCP connections.
    let task = tokio::spawn(async move {
        loop {
            let (tcp, _) = tokio::select! {
                _ = stop.cancelled() => return,
                r = listener.accept() => match r { Ok(r) => r, Err(_) => return },
            };
            counted.fetch_add(1, Ordering::SeqCst);
            let server = server.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let _ = server.serve_connection(tcp, stop).await;
            });
        }
    });
    RunningServer {
        addr,
        accepted,
        shutdown,
        task,
    }
}

/// A tunnel to `server`, expecting `expected`, for 10.0.0.1:8080 on behalf
/// of client 10.0.0.2, with a traceparent.
pub fn target(server: SocketAddr, expected: &SpiffeId) -> TunnelTarget {
    TunnelTarget {
        hbone_addr: server,
        expected_identity: expected.clone(),
        authority: "10.0.0.1:8080".parse().expect("addr"),
        client_ip: Some("10.0.0.2".parse().expect("ip")),
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        baggage: None,
    }
}
