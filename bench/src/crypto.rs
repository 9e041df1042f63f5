//! `hbone-crypto`: the tunnel with each TLS provider, side by side in one
//! run. ring (what weft used before, X25519), aws-lc-rs with the same
//! classical key exchange, and aws-lc-rs with the hybrid post-quantum
//! X25519MLKEM768 (what weft ships): bulk throughput on one tunnel and new
//! HBONE connections per second (TCP, TLS handshake with both certificates
//! verified, HTTP/2, CONNECT answered), rounds alternating between the
//! three, medians and ratios against ring reported.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::crypto::{CryptoProvider, aws_lc_rs, ring};
use serde_json::json;
use tokio::net::TcpStream;
use weft_hbone::tls;

use crate::hbone_loopback::{Mesh, bulk_hbone, server_runtime};
use crate::stats::{median, round2};

/// A TLS provider and the key exchange it prefers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Crypto {
    /// ring, the TLS 1.3 AES-GCM suites, X25519 first (weft before PQC).
    Ring,
    /// aws-lc-rs, the same suites and classical groups as `ring`.
    AwsLcRsX25519,
    /// aws-lc-rs as weft ships it: X25519MLKEM768 first.
    AwsLcRs,
}

impl Crypto {
    const ALL: [Crypto; 3] = [Crypto::Ring, Crypto::AwsLcRsX25519, Crypto::AwsLcRs];

    pub fn name(self) -> &'static str {
        match self {
            Crypto::Ring => "ring",
            Crypto::AwsLcRsX25519 => "aws-lc-rs-x25519",
            Crypto::AwsLcRs => "aws-lc-rs",
        }
    }

    pub fn provider(self) -> Arc<CryptoProvider> {
        match self {
            Crypto::Ring => Arc::new(CryptoProvider {
                cipher_suites: vec![
                    ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
                    ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
                ],
                ..ring::default_provider()
            }),
            Crypto::AwsLcRsX25519 => Arc::new(CryptoProvider {
                kx_groups: vec![
                    aws_lc_rs::kx_group::X25519,
                    aws_lc_rs::kx_group::SECP256R1,
                    aws_lc_rs::kx_group::SECP384R1,
                ],
                ..CryptoProvider::clone(&tls::provider())
            }),
            Crypto::AwsLcRs => tls::provider(),
        }
    }
}

#[derive(clap::Args)]
pub struct Args {
    /// Seconds of each bulk transfer and of each handshake loop.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Rounds; each runs every provider once, in a rotating order.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Bytes per application write in the bulk test.
    #[arg(long, default_value_t = 256 * 1024)]
    write_size: usize,
}

#[derive(Default)]
struct Samples {
    gbps: Vec<f64>,
    handshakes: Vec<f64>,
}

pub async fn run(args: Args) -> anyhow::Result<serde_json::Value> {
    let server_runtime = server_runtime()?;
    let result = measure(args, server_runtime.handle()).await;
    server_runtime.shutdown_background();
    result
}

async fn measure(args: Args, server: &tokio::runtime::Handle) -> anyhow::Result<serde_json::Value> {
    let duration = Duration::from_secs_f64(args.seconds);
    let mut meshes = Vec::new();
    let mut groups = serde_json::Map::new();
    for crypto in Crypto::ALL {
        let mesh = Mesh::new(weft_hbone::H2Settings::default(), server, crypto.provider()).await?;
        groups.insert(crypto.name().into(), json!(negotiated_group(&mesh).await?));
        meshes.push((crypto, mesh, Samples::default()));
    }
    eprintln!("key exchange negotiated: {}", json!(groups));
    for round in 0..args.rounds {
        // Rotate which provider goes first, so none always runs on a
        // machine that has just warmed up or cooled down.
        meshes.rotate_left(usize::from(round > 0));
        for (crypto, mesh, samples) in meshes.iter_mut() {
            let gbps = bulk_hbone(mesh, duration, args.write_size).await?;
            let rate = handshakes(mesh, duration).await?;
            eprintln!(
                "round {}/{} {:>16}: bulk {gbps:.2} Gbit/s, {rate:.0} HBONE connections/s",
                round + 1,
                args.rounds,
                crypto.name()
            );
            samples.gbps.push(gbps);
            samples.handshakes.push(rate);
        }
    }
    let mut results = serde_json::Map::new();
    let mut medians = Vec::new();
    for (crypto, _, samples) in meshes {
        let (gbps, rate) = (median(samples.gbps), median(samples.handshakes));
        medians.push((crypto, gbps, rate));
        results.insert(
            crypto.name().into(),
            json!({ "gbps": round2(gbps), "handshakes_per_s": rate.round() }),
        );
    }
    let of = |wanted: Crypto| {
        medians
            .iter()
            .find(|(c, _, _)| *c == wanted)
            .map(|&(_, g, r)| (g, r))
            .unwrap_or((f64::NAN, f64::NAN))
    };
    let (ring_gbps, ring_rate) = of(Crypto::Ring);
    let (x_gbps, x_rate) = of(Crypto::AwsLcRsX25519);
    let (pq_gbps, pq_rate) = of(Crypto::AwsLcRs);
    Ok(json!({
        "bench": "hbone-crypto",
        "throughput_ratio_aws_lc_rs_x25519_over_ring": round2(x_gbps / ring_gbps),
        "throughput_ratio_aws_lc_rs_over_ring": round2(pq_gbps / ring_gbps),
        "handshake_ratio_aws_lc_rs_x25519_over_ring": round2(x_rate / ring_rate),
        "handshake_ratio_aws_lc_rs_over_ring": round2(pq_rate / ring_rate),
        "handshake_ratio_mlkem_over_x25519": round2(pq_rate / x_rate),
        "results": results,
        "groups": groups,
        "seconds": args.seconds,
        "rounds": args.rounds,
    }))
}

/// New HBONE connections per second, one after another: each a new TCP
/// connection, TLS handshake (both certificates verified), HTTP/2
/// handshake and CONNECT answered with 200, then closed. Made by hand, as
/// the pool makes them, because a dropped pool leaves its connections open
/// until its idle reaper runs, and thousands of them would pile up.
async fn handshakes(mesh: &Mesh, duration: Duration) -> anyhow::Result<f64> {
    let config = mesh.client_config()?;
    let name = rustls::pki_types::ServerName::IpAddress(mesh.sink_addr.ip().into());
    let start = Instant::now();
    let mut done = 0u64;
    while start.elapsed() < duration {
        let tcp = TcpStream::connect(mesh.sink_addr).await?;
        tcp.set_nodelay(true)?;
        let tls = tokio_rustls::TlsConnector::from(config.clone())
            .connect(name.clone(), tcp)
            .await?;
        let (mut h2, connection) = h2::client::handshake(tls).await?;
        let driver = tokio::spawn(connection);
        let connect = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri("10.0.0.1:80")
            .body(())?;
        let (response, _send) = h2.send_request(connect, true)?;
        let status = response.await?.status();
        anyhow::ensure!(status == http::StatusCode::OK, "CONNECT answered {status}");
        // Ends the connection: the socket closes with its driver.
        driver.abort();
        done += 1;
    }
    Ok(done as f64 / start.elapsed().as_secs_f64())
}

/// The key exchange group a TLS handshake with `mesh`'s server settles on:
/// a check that each provider really negotiates what it is named after.
async fn negotiated_group(mesh: &Mesh) -> anyhow::Result<String> {
    let tcp = TcpStream::connect(mesh.sink_addr).await?;
    let name = rustls::pki_types::ServerName::IpAddress(mesh.sink_addr.ip().into());
    let stream = tokio_rustls::TlsConnector::from(mesh.client_config()?)
        .connect(name, tcp)
        .await?;
    let group = stream
        .get_ref()
        .1
        .negotiated_key_exchange_group()
        .map(|g| format!("{:?}", g.name()));
    Ok(group.unwrap_or_else(|| "none".into()))
}
