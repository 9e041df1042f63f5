//! The load generator, run inside pods by `weft-bench l4` and `idle-tunnels`
//! (as hidden subcommands of the same binary): a server with four ports and a
//! client with four modes. Each client run prints one JSON line last.
//!
//! | port | server | client mode |
//! | --- | --- | --- |
//! | 5001 | discards, answers the byte count at EOF | `bulk`: one connection, as fast as it can |
//! | 5002 | echoes 1 KiB messages | `rr`: 1 KiB request/response at a fixed rate |
//! | 5003 | reads one byte, writes one, closes | `conn`: new connections per second |
//! | 5004 | echoes until the client closes | `hold`: many connections held open, idle |

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::stats::Latencies;

pub const BULK_PORT: u16 = 5001;
pub const RR_PORT: u16 = 5002;
pub const CONN_PORT: u16 = 5003;
pub const HOLD_PORT: u16 = 5004;
const MSG: usize = 1024;

#[derive(clap::Args, Debug)]
pub struct ClientArgs {
    /// `bulk`, `rr`, `conn` or `hold`.
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
    /// `conn`, `hold`: connections opened in parallel.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// `hold`: the connections held at each step (running totals).
    #[arg(long, value_delimiter = ',')]
    steps: Vec<usize>,
}

/// Serves the four ports until killed.
pub async fn server() -> anyhow::Result<()> {
    let bulk = TcpListener::bind(("0.0.0.0", BULK_PORT)).await?;
    let rr = TcpListener::bind(("0.0.0.0", RR_PORT)).await?;
    let conn = TcpListener::bind(("0.0.0.0", CONN_PORT)).await?;
    let hold = TcpListener::bind(("0.0.0.0", HOLD_PORT)).await?;
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
    // Thousands of connections: a failed accept (out of descriptors) must
    // not end the listener.
    let hold = tokio::spawn(async move {
        loop {
            let mut s = match hold.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    eprintln!("load server: accept on {HOLD_PORT}: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while let Ok(n @ 1..) = s.read(&mut buf).await {
                    if s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let _ = tokio::join!(bulk, rr, conn, hold);
    Ok(())
}

pub async fn client(args: ClientArgs) -> anyhow::Result<serde_json::Value> {
    let duration = Duration::from_secs_f64(args.seconds);
    match args.mode.as_str() {
        "bulk" => bulk(args.server, duration).await,
        "rr" => rr(args.server, duration, args.rate).await,
        "conn" => conn(args.server, duration, args.concurrency).await,
        "hold" => hold(args.server, &args.steps, args.concurrency).await,
        other => anyhow::bail!("unknown mode {other:?}: bulk, rr, conn or hold"),
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
                match one_byte_each_way(server, CONN_PORT).await {
                    Ok(_) => ok += 1,
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

/// Connects to `port`, sends one byte and reads one back.
async fn one_byte_each_way(server: std::net::IpAddr, port: u16) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect((server, port)).await?;
    s.write_all(b"x").await?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await?;
    Ok(s)
}

/// Opens connections until `steps[i]` are held, each one byte each way and
/// then idle, `concurrency` at a time; after each step prints
/// `{"connections", "failed", "seconds", "error"}` (what is held, the
/// attempts that failed so far, the step's time, the last failure) and
/// waits for a line on stdin before the next. EOF on stdin closes them all.
async fn hold(
    server: std::net::IpAddr,
    steps: &[usize],
    concurrency: usize,
) -> anyhow::Result<serde_json::Value> {
    use tokio::io::AsyncBufReadExt;
    let mut held = Vec::with_capacity(steps.iter().copied().max().unwrap_or(0));
    let (mut failed, mut error) = (0usize, None);
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    for &target in steps {
        let start = Instant::now();
        let mut opening = tokio::task::JoinSet::new();
        let mut to_open = target.saturating_sub(held.len());
        loop {
            while to_open > 0 && opening.len() < concurrency.max(1) {
                opening.spawn(tokio::time::timeout(
                    Duration::from_secs(10),
                    one_byte_each_way(server, HOLD_PORT),
                ));
                to_open -= 1;
            }
            match opening.join_next().await {
                None => break,
                Some(Ok(Ok(Ok(s)))) => held.push(s),
                Some(Ok(Ok(Err(e)))) => (failed, error) = (failed + 1, Some(e.to_string())),
                Some(Ok(Err(_))) => (failed, error) = (failed + 1, Some("timed out".into())),
                Some(Err(e)) => return Err(e.into()),
            }
        }
        let step = json!({
            "connections": held.len(),
            "failed": failed,
            "seconds": start.elapsed().as_secs_f64(),
            "error": error,
        });
        println!("{step}");
        if stdin.next_line().await?.is_none() {
            break;
        }
    }
    Ok(json!({ "connections": held.len(), "failed": failed }))
}
