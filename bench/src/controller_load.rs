//! `weft-bench controller-load`: the subscribers of `weft-bench controller`,
//! in a process of their own so that the controller's RSS is its own.
//!
//! Each subscriber behaves like a ztunnel: its own TLS HTTP/2 connection,
//! a Subscribe for workloads and Services, every response decoded and
//! ACKed. They speak gRPC over `h2` directly rather than through tonic: a
//! tonic client keeps a receive buffer as large as the largest message it
//! saw (the snapshot: ~5 MB at 50k pods), which for 5k subscribers would be
//! 25 GB in this process; here the buffer is dropped once a message is
//! decoded.
//!
//! Protocol with the parent, one line each on stdout: `ready` once every
//! subscriber holds its snapshot, then `gen <n> <unix nanos>` when the last
//! subscriber has decoded pod change `n`. The process exits when its stdin
//! closes (the parent is gone).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::TlsConnector;
use weft_api::config::{
    Ack, ConfigRequest, ConfigResponse, ProxyInfo, ProxyKind, ResourceType, Subscribe,
    config_request, resource,
};

/// Flags of `weft-bench controller-load` (set by `controller`).
#[derive(Clone, Debug, clap::Args)]
pub struct LoadArgs {
    /// The controller's gRPC address.
    #[arg(long)]
    pub addr: SocketAddr,
    /// PEM file of the CA that issued the controller's serving certificate.
    #[arg(long)]
    pub ca_file: PathBuf,
    /// Subscribers, one per node `node-0` .. `node-<proxies - 1>`.
    #[arg(long)]
    pub proxies: usize,
    /// Pod changes to expect (generations 1..=changes).
    #[arg(long)]
    pub changes: usize,
    /// Subscribers that may be receiving their snapshot at once.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
}

const SUBSCRIBE_PATH: &str = "/weft.config.v1.ConfigDiscovery/Subscribe";

/// Per change, how many subscribers have it; the one that completes a
/// change reports it.
struct Arrivals {
    proxies: usize,
    counts: Vec<AtomicUsize>,
    snapshots: AtomicUsize,
}

impl Arrivals {
    fn record(&self, generation: u64) {
        let Some(count) = usize::try_from(generation)
            .ok()
            .and_then(|i| self.counts.get(i))
        else {
            return;
        };
        if count.fetch_add(1, Ordering::AcqRel) + 1 == self.proxies {
            report(&format!("gen {generation} {}", unix_nanos()));
        }
    }
}

pub(crate) fn unix_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn report(line: &str) {
    let mut out = std::io::stdout().lock();
    // The parent reading our stdout is the point of this process; if it
    // is gone, stdin's EOF ends us too.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// A gRPC message: uncompressed flag, big-endian length, bytes.
fn grpc_frame(msg: &impl Message) -> Bytes {
    let mut buf = BytesMut::with_capacity(5 + msg.encoded_len());
    buf.put_u8(0);
    buf.put_u32(u32::try_from(msg.encoded_len()).unwrap_or(u32::MAX));
    msg.encode(&mut buf)
        .expect("BytesMut grows as needed, encoding cannot run out of space");
    buf.freeze()
}

/// The next complete gRPC message of `buf`, if there is one.
fn next_message(buf: &mut BytesMut) -> anyhow::Result<Option<Bytes>> {
    if buf.len() < 5 {
        return Ok(None);
    }
    anyhow::ensure!(buf[0] == 0, "compressed gRPC message");
    let len = usize::try_from(u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]))?;
    if buf.len() < 5 + len {
        buf.reserve(5 + len - buf.len());
        return Ok(None);
    }
    buf.advance(5);
    Ok(Some(buf.split_to(len).freeze()))
}

async fn subscriber(
    args: Arc<LoadArgs>,
    connector: TlsConnector,
    node: usize,
    arrivals: Arc<Arrivals>,
    snapshot_permits: Arc<Semaphore>,
) -> anyhow::Result<()> {
    let permit = snapshot_permits.acquire_owned().await?;
    let tcp = TcpStream::connect(args.addr).await?;
    tcp.set_nodelay(true)?;
    let tls = connector
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?;
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(4 << 20)
        .initial_connection_window_size(8 << 20)
        .handshake::<_, Bytes>(tls)
        .await?;
    tokio::spawn(connection);
    let mut client = client.ready().await?;
    let request = http::Request::post(format!("https://localhost{SUBSCRIBE_PATH}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())?;
    let (response, mut send) = client.send_request(request, false)?;
    send.send_data(
        grpc_frame(&ConfigRequest {
            kind: Some(config_request::Kind::Subscribe(Subscribe {
                proxy: Some(ProxyInfo {
                    id: format!("ztunnel~node-{node}~bench"),
                    kind: ProxyKind::Ztunnel as i32,
                    node: format!("node-{node}"),
                    ..ProxyInfo::default()
                }),
                types: vec![ResourceType::Workload as i32, ResourceType::Service as i32],
            })),
        }),
        false,
    )?;
    let response = response.await?;
    anyhow::ensure!(
        response.status() == http::StatusCode::OK,
        "Subscribe answered {}",
        response.status()
    );
    let mut body = response.into_body();
    let mut permit = Some(permit);
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        buf.extend_from_slice(&chunk);
        while let Some(message) = next_message(&mut buf)? {
            let response = ConfigResponse::decode(message)?;
            for r in &response.resources {
                if let Some(resource::Kind::Workload(w)) = &r.kind
                    && let Some(generation) = w.canonical_name.strip_prefix("gen-")
                    && let Ok(generation) = generation.parse::<u64>()
                    && generation > 0
                {
                    arrivals.record(generation);
                }
            }
            if response.full_snapshot && permit.take().is_some() {
                arrivals.snapshots.fetch_add(1, Ordering::AcqRel);
            }
            send.send_data(
                grpc_frame(&ConfigRequest {
                    kind: Some(config_request::Kind::Ack(Ack {
                        nonce: response.nonce,
                    })),
                }),
                false,
            )?;
        }
        // An empty buffer still shares the allocation of the messages split
        // off it, and would reuse (keep) it: a snapshot-sized buffer per
        // subscriber for the rest of the run (see the module's comment).
        if buf.is_empty() {
            buf = BytesMut::new();
        }
    }
    let status = body
        .trailers()
        .await?
        .and_then(|t| t.get("grpc-status").cloned());
    anyhow::bail!("stream of node-{node} ended (grpc-status {status:?})")
}

/// Runs the subscribers until stdin closes.
pub async fn run(args: LoadArgs) -> anyhow::Result<()> {
    let pem = std::fs::read(&args.ca_file)
        .with_context(|| format!("reading {}", args.ca_file.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.context("CA file")?)?;
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = TlsConnector::from(Arc::new(config));
    let arrivals = Arc::new(Arrivals {
        proxies: args.proxies,
        counts: (0..=args.changes).map(|_| AtomicUsize::new(0)).collect(),
        snapshots: AtomicUsize::new(0),
    });
    let permits = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let args = Arc::new(args);
    let mut clients = tokio::task::JoinSet::new();
    for node in 0..args.proxies {
        clients.spawn(subscriber(
            args.clone(),
            connector.clone(),
            node,
            arrivals.clone(),
            permits.clone(),
        ));
    }
    let mut stdin = tokio::io::stdin();
    let mut ready = false;
    let mut ticker = tokio::time::interval(std::time::Duration::from_millis(20));
    let mut byte = [0u8; 64];
    loop {
        tokio::select! {
            read = stdin.read(&mut byte) => {
                if matches!(read, Ok(0) | Err(_)) {
                    return Ok(());
                }
            }
            done = clients.join_next() => {
                match done {
                    Some(Ok(Err(e))) => anyhow::bail!("a subscriber failed: {e:#}"),
                    Some(Err(e)) => anyhow::bail!("a subscriber panicked: {e}"),
                    Some(Ok(Ok(()))) | None => anyhow::bail!("a subscriber ended"),
                }
            }
            _ = ticker.tick(), if !ready => {
                if arrivals.snapshots.load(Ordering::Acquire) == args.proxies {
                    ready = true;
                    report("ready");
                }
            }
        }
    }
}
