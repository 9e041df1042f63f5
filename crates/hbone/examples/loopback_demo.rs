//! A loopback HBONE tunnel between two processes, narrated.
//!
//! `cargo run --release -p weft-hbone --example loopback_demo` creates a CA,
//! issues two SPIFFE identities, starts an HBONE server in a child process,
//! and tunnels an echo exchange and a bulk transfer to it, printing what each
//! side saw.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use weft_hbone::{
    CertificateAuthority, DirectDialer, HboneServer, InboundTunnel, PoolSettings, ServerSettings,
    SpiffeId, TrustBundle, TunnelHandler, TunnelPool, TunnelTarget, WorkloadCertificate, tls,
};

const TD: &str = "cluster.local";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Runtime::new()?;
    match args.get(1).map(String::as_str) {
        Some("server") => {
            let dir = PathBuf::from(args.get(2).context("server needs a directory")?);
            runtime.block_on(server(&dir))
        }
        _ => runtime.block_on(client()),
    }
}

/// Kills the server process even if the client fails.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn client() -> anyhow::Result<()> {
    let dir = tempfile_dir()?;
    println!("== weft HBONE loopback demo ==");
    let ca = CertificateAuthority::generate(TD, Duration::from_secs(3600))?;
    println!("CA: new ECDSA P-256 root for trust domain {TD}");
    let client_id = SpiffeId::new(TD, "demo", "client")?;
    let server_id = SpiffeId::new(TD, "demo", "server")?;
    let client_cert = Arc::new(ca.issue(&client_id, Duration::from_secs(3600))?);
    let server_cert = ca.issue(&server_id, Duration::from_secs(3600))?;
    std::fs::write(dir.join("root.pem"), ca.root_pem())?;
    std::fs::write(dir.join("server.pem"), server_cert.chain_pem().concat())?;
    std::fs::write(dir.join("server.key"), server_cert.key_pem())?;
    println!("issued {client_id} (serial {})", client_cert.serial());

    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .arg("server")
        .arg(&dir)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the server process")?;
    let stdout = child.stdout.take().context("server stdout")?;
    let child = ChildGuard(child);
    let mut lines = BufReader::new(stdout).lines();
    let addr: std::net::SocketAddr = lines
        .next()
        .context("server exited before listening")??
        .trim()
        .parse()
        .context("server address")?;
    println!(
        "server process {} listening for HBONE on {addr} as {server_id}",
        child.0.id()
    );
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            println!("  [server] {line}");
        }
    });

    let bundle = TrustBundle::from_pems(TD, &[ca.root_pem()])?;
    let pool = TunnelPool::new(PoolSettings::default(), bundle);
    let target = TunnelTarget {
        hbone_addr: addr,
        expected_identity: server_id.clone(),
        authority: "10.244.1.7:8080".parse()?,
        client_ip: Some("10.244.0.5".parse()?),
        traceparent: None,
        baggage: None,
    };

    let mut tunnel = pool.connect(&client_cert, &target, &DirectDialer).await?;
    tunnel.write_all(b"hello through the tunnel").await?;
    tunnel.shutdown().await?;
    let mut echo = String::new();
    tunnel.read_to_string(&mut echo).await?;
    println!("echo: {echo:?}");

    drop(tunnel);
    let size = 64 * 1024 * 1024;
    let mut tunnel = pool.connect(&client_cert, &target, &DirectDialer).await?;
    let start = Instant::now();
    let (mut rd, mut wr) = tokio::io::split(&mut tunnel);
    let writer = async {
        let chunk = vec![7u8; 1024 * 1024];
        for _ in 0..size / chunk.len() {
            wr.write_all(&chunk).await?;
        }
        wr.shutdown().await
    };
    let mut reply = String::new();
    let reader = rd.read_to_string(&mut reply);
    let (w, r) = tokio::join!(writer, reader);
    w?;
    r?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "bulk: 64 MiB through the tunnel in {:.0} ms ({:.2} Gbit/s); server says {reply:?}",
        secs * 1e3,
        size as f64 * 8.0 / secs / 1e9
    );
    drop(tunnel);
    for c in pool.connections() {
        println!(
            "pooled connection #{}: {} -> {} at {} ({} tunnels open now)",
            c.id, c.source, c.destination_identity, c.hbone_addr, c.active_streams
        );
    }
    println!(
        "{} HTTP/2 connection(s) carried 2 tunnels",
        pool.connections_opened()
    );

    let impostor = SpiffeId::new(TD, "demo", "impostor")?;
    let wrong = TunnelTarget {
        expected_identity: impostor.clone(),
        ..target
    };
    match pool.connect(&client_cert, &wrong, &DirectDialer).await {
        Ok(_) => bail!("a server that is not {impostor} was accepted"),
        Err(e) => println!("expecting {impostor} instead: refused ({e})"),
    }
    drop(child);
    let _ = std::fs::remove_dir_all(&dir);
    println!("done.");
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("weft-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Echoes small tunnels, counts bulk ones.
struct DemoHandler;

impl TunnelHandler for DemoHandler {
    async fn handle(&self, tunnel: InboundTunnel) {
        println!(
            "tunnel from {} (client IP {:?}) for {}",
            tunnel.peer_identity,
            tunnel.client_ip(),
            tunnel.authority
        );
        let _ = std::io::stdout().flush();
        let Ok(mut stream) = tunnel.accept() else {
            return;
        };
        let mut data = Vec::new();
        if stream.read_to_end(&mut data).await.is_err() {
            return;
        }
        let answer = if data.len() < 1024 {
            data
        } else {
            format!("received {} bytes", data.len()).into_bytes()
        };
        let _ = stream.write_all(&answer).await;
        let _ = stream.shutdown().await;
    }
}

async fn server(dir: &Path) -> anyhow::Result<()> {
    let root = std::fs::read_to_string(dir.join("root.pem"))?;
    let chain = std::fs::read_to_string(dir.join("server.pem"))?;
    let key = std::fs::read_to_string(dir.join("server.key"))?;
    let cert = WorkloadCertificate::from_pem(&[chain], &key)?;
    let bundle = TrustBundle::from_pems(TD, &[root])?;
    let config = tls::server_config(&cert, &bundle)?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("{}", listener.local_addr()?);
    let _ = std::io::stdout().flush();
    HboneServer::new(config, DemoHandler, ServerSettings::default())
        .serve(listener, CancellationToken::new())
        .await;
    Ok(())
}
