//! `weft-e2e-app`: the sample workload the e2e cluster runs inside pods.
//!
//! ```text
//! weft-e2e-app serve --name mesh/server [--tcp 0.0.0.0:9000] [--http 0.0.0.0:8080]
//! weft-e2e-app tcp 10.244.2.3:9000 [--message hello]        # prints the JSON reply
//! weft-e2e-app http http://10.244.2.3:8080/path [--method POST] [--header 'k: v'] [--data body]
//! weft-e2e-app load 10.96.0.10:9000 --rate 50 [--duration-seconds 10]   # JSON counts
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use weft_e2e::app::{client, echo, load};

#[derive(Parser)]
#[command(
    name = "weft-e2e-app",
    version,
    about = "echo servers, a client and a load generator for the weft e2e cluster"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve TCP and HTTP echo, reporting the caller address seen.
    Serve {
        /// The name replies carry (`namespace/pod`).
        #[arg(long, default_value = "echo")]
        name: String,
        /// TCP echo address.
        #[arg(long, default_value = "0.0.0.0:9000")]
        tcp: SocketAddr,
        /// HTTP echo address.
        #[arg(long, default_value = "0.0.0.0:8080")]
        http: SocketAddr,
    },
    /// One TCP exchange; prints the server's JSON reply.
    Tcp {
        /// The echo server.
        addr: SocketAddr,
        /// The line to send.
        #[arg(long, default_value = "hello")]
        message: String,
        /// Seconds before giving up.
        #[arg(long, default_value_t = 5)]
        timeout_seconds: u64,
    },
    /// One HTTP request; prints `HTTP <status>` then the body.
    Http {
        /// `http://<ip>:<port>/<path>`.
        url: String,
        /// The method.
        #[arg(long, default_value = "GET")]
        method: String,
        /// A header, `name: value` (repeatable).
        #[arg(long = "header")]
        headers: Vec<String>,
        /// The request body.
        #[arg(long, default_value = "")]
        data: String,
        /// Seconds before giving up.
        #[arg(long, default_value_t = 5)]
        timeout_seconds: u64,
    },
    /// New connections at a steady rate; prints JSON counts at the end.
    Load {
        /// The echo server.
        addr: SocketAddr,
        /// New connections per second.
        #[arg(long, default_value_t = 20)]
        rate: u32,
        /// How long (default: until SIGTERM/SIGINT).
        #[arg(long)]
        duration_seconds: Option<u64>,
        /// Per-exchange timeout in seconds.
        #[arg(long, default_value_t = 5)]
        timeout_seconds: u64,
    },
}

/// A failed exchange: one line on stderr (tests and the demo show it), exit 1.
fn fail(message: &str) -> ! {
    eprintln!("{message}");
    std::process::exit(1)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(async {
        match cli.command {
            Cmd::Serve { name, tcp, http } => echo::serve(name, Some(tcp), Some(http))
                .await
                .context("echo server"),
            Cmd::Tcp {
                addr,
                message,
                timeout_seconds,
            } => match client::tcp_exchange(addr, &message, Duration::from_secs(timeout_seconds))
                .await
            {
                Ok(reply) => {
                    println!("{}", serde_json::to_string(&reply)?);
                    Ok(())
                }
                Err(e) => fail(&format!("{addr}: {e}")),
            },
            Cmd::Http {
                url,
                method,
                headers,
                data,
                timeout_seconds,
            } => {
                let headers = headers
                    .iter()
                    .map(|h| {
                        h.split_once(':')
                            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                            .with_context(|| format!("header {h:?}: expected `name: value`"))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                match client::http_request(
                    &url,
                    &method,
                    &headers,
                    &data,
                    Duration::from_secs(timeout_seconds),
                )
                .await
                {
                    Ok((status, body)) => {
                        println!("HTTP {status}");
                        print!("{body}");
                        Ok(())
                    }
                    Err(e) => fail(&format!("{url}: {e}")),
                }
            }
            Cmd::Load {
                addr,
                rate,
                duration_seconds,
                timeout_seconds,
            } => {
                let report = load::run(load::LoadPlan {
                    target: addr,
                    rate,
                    duration: duration_seconds.map(Duration::from_secs),
                    timeout: Duration::from_secs(timeout_seconds),
                })
                .await
                .context("load")?;
                println!("{}", serde_json::to_string(&report)?);
                Ok(())
            }
        }
    })
}
