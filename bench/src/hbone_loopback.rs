//! `hbone-loopback`: the tunnel's own cost. An HBONE client -> server pair on
//! loopback against plain TCP on loopback, in the same process and run:
//!
//! - bulk: one connection (one tunnel), the client sends as fast as it can
//!   for a fixed time, the server counts; alternating TCP and HBONE rounds,
//!   median of each;
//! - latency: 1 KiB request, 1 KiB response, one at a time; p50/p99.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use rustls::crypto::CryptoProvider;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use weft_hbone::{
    CertificateAuthority, DirectDialer, H2Stream, HboneServer, InboundTunnel, PoolSettings,
    ServerSettings, SpiffeId, TrustBundle, TunnelHandler, TunnelPool, TunnelTarget,
    WorkloadCertificate, tls,
};

use crate::crypto::Crypto;
use crate::stats::{Latencies, median, round2};

#[derive(clap::Args)]
pub struct Args {
    /// Seconds per bulk round.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Bulk rounds per transport (alternating); the median is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Request/response exchanges per transport.
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    /// Bytes per application write in the bulk test.
    #[arg(long, default_value_t = 256 * 1024)]
    write_size: usize,
    /// HTTP/2 max frame size (both sides).
    #[arg(long)]
    frame_size: Option<u32>,
    /// Only run one bulk transfer, `tcp` or `hbone` (for profiling).
    #[arg(long)]
    profile_bulk: Option<String>,
    /// The TLS provider and key exchange of both ends of the tunnel.
    #[arg(long, value_enum, default_value_t = Crypto::AwsLcRs)]
    crypto: Crypto,
}

pub async fn run(args: Args) -> anyhow::Result<serde_json::Value> {
    let server_runtime = server_runtime()?;
    let result = measure(args, server_runtime.handle().clone()).await;
    server_runtime.shutdown_background();
    result
}

/// The receiving side's own runtime (its own thread), as it would be its
/// own process on a node; every transport measured uses the same split.
pub(crate) fn server_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("bench-server")
        .enable_all()
        .build()
}

async fn measure(args: Args, server: Handle) -> anyhow::Result<serde_json::Value> {
    let mut h2 = weft_hbone::H2Settings::default();
    if let Some(frame) = args.frame_size {
        h2.max_frame_size = frame;
    }
    let mesh = Mesh::new(h2, &server, args.crypto.provider()).await?;
    let duration = Duration::from_secs_f64(args.seconds);
    match args.profile_bulk.as_deref() {
        Some("tcp") => {
            let gbps = bulk_tcp(&server, duration, args.write_size).await?;
            return Ok(json!({ "bench": "hbone-loopback", "tcp_gbps": round2(gbps) }));
        }
        Some(_) => {
            let gbps = bulk_hbone(&mesh, duration, args.write_size).await?;
            return Ok(json!({ "bench": "hbone-loopback", "hbone_gbps": round2(gbps) }));
        }
        None => {}
    }

    let mut tcp_gbps = Vec::new();
    let mut hbone_gbps = Vec::new();
    for round in 0..args.rounds {
        let tcp = bulk_tcp(&server, duration, args.write_size).await?;
        let hbone = bulk_hbone(&mesh, duration, args.write_size).await?;
        eprintln!(
            "bulk round {}/{}: tcp {:.2} Gbit/s, hbone {:.2} Gbit/s",
            round + 1,
            args.rounds,
            tcp,
            hbone
        );
        tcp_gbps.push(tcp);
        hbone_gbps.push(hbone);
    }
    let (tcp_gbps, hbone_gbps) = (median(tcp_gbps), median(hbone_gbps));

    let mut tcp_lat = rr_tcp(&server, args.requests).await?;
    let mut hbone_lat = rr_hbone(&mesh, args.requests).await?;
    let (tcp_p50, tcp_p99) = (tcp_lat.quantile_us(0.50), tcp_lat.quantile_us(0.99));
    let (hb_p50, hb_p99) = (hbone_lat.quantile_us(0.50), hbone_lat.quantile_us(0.99));
    eprintln!(
        "request/response 1 KiB: tcp p50 {tcp_p50:.1} us p99 {tcp_p99:.1} us; hbone p50 {hb_p50:.1} us p99 {hb_p99:.1} us"
    );

    Ok(json!({
        "bench": "hbone-loopback",
        "tcp_gbps": round2(tcp_gbps),
        "hbone_gbps": round2(hbone_gbps),
        "throughput_ratio": round2(hbone_gbps / tcp_gbps),
        "tcp_p50_us": round2(tcp_p50),
        "tcp_p99_us": round2(tcp_p99),
        "hbone_p50_us": round2(hb_p50),
        "hbone_p99_us": round2(hb_p99),
        "p50_added_us": round2(hb_p50 - tcp_p50),
        "p99_added_us": round2(hb_p99 - tcp_p99),
        "seconds_per_round": args.seconds,
        "rounds": args.rounds,
        "requests": args.requests,
        "crypto": args.crypto.name(),
    }))
}

/// A CA, a client certificate, and HBONE servers for the two handlers, all
/// with one crypto provider.
pub(crate) struct Mesh {
    client: Arc<WorkloadCertificate>,
    server_id: SpiffeId,
    bundle: TrustBundle,
    pub(crate) sink_addr: std::net::SocketAddr,
    echo_addr: std::net::SocketAddr,
    pool_settings: PoolSettings,
}

impl Mesh {
    pub(crate) async fn new(
        h2: weft_hbone::H2Settings,
        server: &Handle,
        crypto: Arc<CryptoProvider>,
    ) -> anyhow::Result<Self> {
        let ca = CertificateAuthority::generate("cluster.local", Duration::from_secs(3600))?;
        let bundle = TrustBundle::from_pems("cluster.local", &[ca.root_pem()])?;
        let client_id = SpiffeId::new("cluster.local", "bench", "client")?;
        let server_id = SpiffeId::new("cluster.local", "bench", "server")?;
        let client = Arc::new(ca.issue(&client_id, Duration::from_secs(3600))?);
        let server_cert = ca.issue(&server_id, Duration::from_secs(3600))?;
        let config = tls::server_config_with(crypto.clone(), &server_cert, &bundle)?;

        let server_settings = ServerSettings {
            h2: h2.clone(),
            ..ServerSettings::default()
        };
        let sink_addr = serve(server, config.clone(), Sink, server_settings.clone()).await?;
        let echo_addr = serve(server, config, Echo, server_settings).await?;
        Ok(Mesh {
            client,
            server_id,
            bundle,
            sink_addr,
            echo_addr,
            pool_settings: PoolSettings {
                h2,
                crypto,
                ..PoolSettings::default()
            },
        })
    }

    /// A fresh pool per measurement, so each starts from a new connection.
    pub(crate) async fn tunnel(&self, addr: std::net::SocketAddr) -> anyhow::Result<H2Stream> {
        let pool = TunnelPool::new(self.pool_settings.clone(), self.bundle.clone());
        let target = TunnelTarget {
            hbone_addr: addr,
            expected_identity: self.server_id.clone(),
            authority: "10.0.0.1:80".parse()?,
            client_ip: None,
            traceparent: None,
            baggage: None,
        };
        Ok(pool.connect(&self.client, &target, &DirectDialer).await?)
    }

    /// The client's TLS config, as the pool builds it.
    pub(crate) fn client_config(&self) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let crypto = self.pool_settings.crypto.clone();
        Ok(tls::client_config_with(
            crypto,
            &self.client,
            &self.bundle,
            &self.server_id,
        )?)
    }
}

async fn serve<H: TunnelHandler>(
    runtime: &Handle,
    config: Arc<rustls::ServerConfig>,
    handler: H,
    settings: ServerSettings,
) -> anyhow::Result<std::net::SocketAddr> {
    let (std_listener, addr) = std_listener()?;
    let server = HboneServer::new(config, handler, settings);
    runtime.spawn(async move {
        if let Ok(listener) = TcpListener::from_std(std_listener) {
            server.serve(listener, CancellationToken::new()).await;
        }
    });
    Ok(addr)
}

/// Counts and discards; at the client's END_STREAM, answers with the count.
struct Sink;

impl TunnelHandler for Sink {
    async fn handle(&self, tunnel: InboundTunnel) {
        let Ok(stream) = tunnel.accept() else { return };
        let (mut send, mut recv) = stream.split();
        let mut total = 0u64;
        while let Ok(Some(chunk)) = recv.recv().await {
            total += chunk.len() as u64;
        }
        let _ = send
            .send(Bytes::copy_from_slice(&total.to_be_bytes()))
            .await;
        let _ = send.finish();
    }
}

/// Echoes.
struct Echo;

impl TunnelHandler for Echo {
    async fn handle(&self, tunnel: InboundTunnel) {
        let Ok(stream) = tunnel.accept() else { return };
        let (mut send, mut recv) = stream.split();
        while let Ok(Some(chunk)) = recv.recv().await {
            if send.send(chunk).await.is_err() {
                return;
            }
        }
    }
}

/// A loopback listener made outside any runtime, to be served on another.
fn std_listener() -> anyhow::Result<(std::net::TcpListener, std::net::SocketAddr)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

fn gbps(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 * 8.0 / elapsed.as_secs_f64() / 1e9
}

async fn bulk_tcp(server: &Handle, duration: Duration, write_size: usize) -> anyhow::Result<f64> {
    let (listener, addr) = std_listener()?;
    let (done_tx, done_rx) = oneshot::channel();
    server.spawn(async move {
        let Ok(listener) = TcpListener::from_std(listener) else {
            return;
        };
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        let _ = done_tx.send(total);
    });
    let mut client = TcpStream::connect(addr).await?;
    client.set_nodelay(true)?;
    let data = vec![0xa5u8; write_size];
    let start = Instant::now();
    while start.elapsed() < duration {
        client.write_all(&data).await?;
    }
    client.shutdown().await?;
    let total = done_rx.await.context("tcp sink")?;
    Ok(gbps(total, start.elapsed()))
}

pub(crate) async fn bulk_hbone(
    mesh: &Mesh,
    duration: Duration,
    write_size: usize,
) -> anyhow::Result<f64> {
    let tunnel = mesh.tunnel(mesh.sink_addr).await?;
    let (mut send, mut recv) = tunnel.split();
    // One buffer, shared by reference: the tunnel takes `Bytes` without a
    // copy, as the copier does with the socket's read buffer.
    let data = Bytes::from(vec![0xa5u8; write_size]);
    let start = Instant::now();
    while start.elapsed() < duration {
        send.send(data.clone()).await?;
    }
    send.finish()?;
    // The sink answers with its count once it has read everything.
    let reply = recv.recv().await?.context("sink closed without a count")?;
    let total = u64::from_be_bytes(reply.as_ref().try_into().context("sink count")?);
    Ok(gbps(total, start.elapsed()))
}

async fn rr_tcp(server: &Handle, requests: usize) -> anyhow::Result<Latencies> {
    let (listener, addr) = std_listener()?;
    server.spawn(async move {
        let Ok(listener) = TcpListener::from_std(listener) else {
            return;
        };
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let _ = s.set_nodelay(true);
        let mut buf = [0u8; 1024];
        while s.read_exact(&mut buf).await.is_ok() {
            if s.write_all(&buf).await.is_err() {
                return;
            }
        }
    });
    let mut client = TcpStream::connect(addr).await?;
    client.set_nodelay(true)?;
    request_response(&mut client, requests).await
}

async fn rr_hbone(mesh: &Mesh, requests: usize) -> anyhow::Result<Latencies> {
    let mut tunnel = mesh.tunnel(mesh.echo_addr).await?;
    request_response(&mut tunnel, requests).await
}

async fn request_response<S>(stream: &mut S, requests: usize) -> anyhow::Result<Latencies>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let request = [0x42u8; 1024];
    let mut response = [0u8; 1024];
    // Warm up connection state and caches.
    for _ in 0..requests / 10 {
        stream.write_all(&request).await?;
        stream.read_exact(&mut response).await?;
    }
    let mut latencies = Latencies::with_capacity(requests);
    for _ in 0..requests {
        let start = Instant::now();
        stream.write_all(&request).await?;
        stream.read_exact(&mut response).await?;
        latencies.push(start.elapsed());
    }
    Ok(latencies)
}
