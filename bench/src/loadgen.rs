//! The load generator, run inside pods by `weft-bench l4` (as hidden
//! subcommands of the same binary): a server with three ports and a client
//! with three modes. Each client run prints one JSON line.
//!
//! | port | server | client mode |
//! | --- | --- | --- |
//! | 5001 | discards, answers the byte count at EOF | `bulk`: one connection, as fast as it can |
//! | 5002 | echoes 1 KiB messages | `rr`: 1 KiB request/response at a fixed rate |
//! | 5003 | reads one byte, writes one, closes | `conn`: new connections per second |

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::stats::Latencies;

pub const BULK_PORT: u16 = 5001;
pub const RR_PORT: u16 = 5002;
pub const CONN_PORT: u16 = 5003;
const MSG: usize = 1024;

#[derive(clap::Args, Debug)]
pub struct ClientArgs {
    /// `bulk`, `rr` or `conn`.
    #[arg(long)]
    mode: String,
    /// The server's IP.
    #[arg(long)]
    server: std::net::IpAddr,
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// `rr`: requests per second, sent on a fixed schedule.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// `conn`: connections opened in parallel.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
}

/// Serves the three ports until killed.
pub async fn server() -> anyhow::Result<()> {
    let bulk = TcpListener::bind(("0.0.0.0", BULK_PORT)).await?;
    let rr = TcpListener::bind(("0.0.0.0", RR_PORT)).await?;
    let conn = TcpListener::bind(("0.0.0.0", CONN_PORT)).await?;
    println!("ready");
    let bulk = tokio::spawn(async move {
        while let Ok((mut s, _)) = bulk.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                let mut total = 0u64;
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    total += n as u64;
                }
                let _ = s.write_all(&total.to_be_bytes()).await;
            });
        }
    });
    let rr = tokio::spawn(async move {
        while let Ok((mut s, _)) = rr.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = [0u8; MSG];
                while s.read_exact(&mut buf).await.is_ok() {
                    if s.write_all(&buf).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let conn = tokio::spawn(async move {
        while let Ok((mut s, _)) = conn.accept().await {
            tokio::spawn(async move {
                let mut b = [0u8; 1];
                if s.read_exact(&mut b).await.is_ok() {
                    let _ = s.write_all(&b).await;
                }
            });
        }
    });
    let _ = tokio::join!(bulk, rr, conn);
    Ok(())
}

pub async fn client(args: ClientArgs) -> anyhow::Result<serde_json::Value> {
    let duration = Duration::from_secs_f64(args.seconds);
    match args.mode.as_str() {
        "bulk" => bulk(args.server, duration).await,
        "rr" => rr(args.server, duration, args.rate).await,
        "conn" => conn(args.server, duration, args.concurrency).await,
        other => anyhow::bail!("unknown mode {other:?}: bulk, rr or conn"),
    }
}

async fn bulk(server: std::net::IpAddr, duration: Duration) -> anyhow::Result<serde_json::Value> {
    let mut s = TcpStream::connect((server, BULK_PORT)).await?;
    let data = vec![0x5au8; 256 * 1024];
    let start = Instant::now();
    while start.elapsed() < duration {
        s.write_all(&data).await?;
    }
    s.shutdown().await?;
    let mut count = [0u8; 8];
    s.read_exact(&mut count).await?;
    let bytes = u64::from_be_bytes(count);
    let secs = start.elapsed().as_secs_f64();
    Ok(json!({ "gbps": bytes as f64 * 8.0 / secs / 1e9 }))
}

/// Requests leave on a fixed schedule; latency counts from the scheduled
/// time, so a stall delays (and is charged to) every request behind it.
/// Runs on its own thread with blocking sockets: an async timer's
/// millisecond granularity would dwarf the microseconds being measured, so
/// the thread sleeps until just before each send and spins the rest.
async fn rr(
    server: std::net::IpAddr,
    duration: Duration,
    rate: u32,
) -> anyhow::Result<serde_json::Value> {
    tokio::task::spawn_blocking(move || rr_blocking(server, duration, rate)).await?
}

fn rr_blocking(
    server: std::net::IpAddr,
    duration: Duration,
    rate: u32,
) -> anyhow::Result<serde_json::Value> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect((server, RR_PORT))?;
    s.set_nodelay(true)?;
    let request = [0x42u8; MSG];
    let mut response = [0u8; MSG];
    for _ in 0..100 {
        s.write_all(&request)?;
        s.read_exact(&mut response)?;
    }
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let total = (duration.as_secs_f64() * f64::from(rate)) as usize;
    let mut latencies = Latencies::with_capacity(total);
    let start = Instant::now();
    for i in 0..total {
        let due = start + interval * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now())
            && wait > Duration::from_micros(200)
        {
            std::thread::sleep(wait - Duration::from_micros(150));
        }
        while Instant::now() < due {
            std::hint::spin_loop();
        }
        s.write_all(&request)?;
        s.read_exact(&mut response)?;
        latencies.push(due.elapsed());
    }
    Ok(json!({
        "requests": total,
        "p50_us": latencies.quantile_us(0.50),
        "p99_us": latencies.quantile_us(0.99),
    }))
}

async fn conn(
    server: std::net::IpAddr,
    duration: Duration,
    concurrency: usize,
) -> anyhow::Result<serde_json::Value> {
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        workers.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u64, 0u64);
            while start.elapsed() < duration {
                let one = async {
                    let mut s = TcpStream::connect((server, CONN_PORT)).await?;
                    s.write_all(b"x").await?;
                    let mut b = [0u8; 1];
                    s.read_exact(&mut b).await?;
                    Ok::<_, std::io::Error>(())
                };
                match one.await {
                    Ok(()) => ok += 1,
                    Err(_) => failed += 1,
                }
            }
            (ok, failed)
        }));
    }
    let (mut ok, mut failed) = (0, 0);
    for w in workers {
        let (o, f) = w.await?;
        ok += o;
        failed += f;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(json!({ "conns_per_sec": ok as f64 / secs, "failed": failed }))
}
