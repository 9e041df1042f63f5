//! `waypoint`: requests per second and latency through the waypoint, with an
//! L7 policy on, against HAProxy proxying the same path, on loopback, in the
//! same run.
//!
//! The path: a load client → proxy → an HTTP/1.1 backend (a small hyper
//! server on its own runtime thread, answering 200 with a short body).
//!
//! - **waypoint**: the real `waypoint` binary in local mode (config file + CA
//!   dir), access log off. The client is what a client pod's ztunnel would
//!   be: HBONE tunnels (mTLS, HTTP/2 CONNECT, pooled on one connection) to
//!   the waypoint as `spiffe://cluster.local/ns/bench/sa/client`, for the
//!   backend Service's VIP, with HTTP/1.1 keep-alive inside. An
//!   AuthorizationPolicy targeting the Service allows GET from that identity
//!   (every request is evaluated). The backend is outside the mesh, so the
//!   waypoint forwards in plain TCP, as HAProxy does.
//! - **haproxy-tls**: Debian's HAProxy terminating mutual TLS (TLS 1.3, the
//!   client certificate verified against the same root), `http-request deny
//!   unless { method GET }` as its L7 rule, HTTP keep-alive both sides.
//! - **haproxy**: the same without TLS.
//!
//! Each round runs every target for `--seconds` with `--connections`
//! closed-loop keep-alive connections, after a warm-up; rounds alternate and
//! medians are reported. The headline ratios compare with `haproxy-tls`, the
//! same work the waypoint does (mTLS in, L7 policy, plaintext out); the
//! plaintext HAProxy figures are reported next to them. Last line: JSON with
//! `rps_ratio` (waypoint / HAProxy) and `p99_ratio` (waypoint p99 / HAProxy
//! p99; ≤ 1 is no worse). Beside each target's requests/s: the proxy's CPU
//! time per request, and this process's (the load client and the backend),
//! so a ratio below 1 can be split between the proxy and its client.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use weft_hbone::{
    CertificateAuthority, DirectDialer, PoolSettings, SpiffeId, TrustBundle, TunnelPool,
    TunnelTarget, WorkloadCertificate, tls,
};

use crate::stats::{Latencies, median, round2};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Rounds per target (alternating); medians are reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Concurrent keep-alive connections of the load client.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// The waypoint binary (default: `waypoint` beside this executable).
    #[arg(long)]
    pub waypoint_bin: Option<PathBuf>,
    /// The HAProxy binary.
    #[arg(long, default_value = "haproxy")]
    pub haproxy_bin: PathBuf,
    /// Only measure this target (`waypoint`, `haproxy`, `haproxy-tls`), for
    /// profiling.
    #[arg(long)]
    pub only: Option<String>,
}

const TD: &str = "cluster.local";
/// The backend Service's VIP: only a name in the tunnel's `:authority`,
/// never connected to.
const VIP: &str = "127.77.0.1:80";

/// A child process killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn waypoint_binary(args: &Args) -> anyhow::Result<PathBuf> {
    if let Some(bin) = &args.waypoint_bin {
        return Ok(bin.clone());
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().context("executable directory")?.to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("waypoint");
    if !bin.is_file() {
        bail!(
            "{} not found: build it with `cargo build --release -p weft-waypoint`, or pass --waypoint-bin",
            bin.display()
        );
    }
    Ok(bin)
}

/// Everything the run needs on disk and its identities.
struct Setup {
    dir: PathBuf,
    bundle: TrustBundle,
    client: Arc<WorkloadCertificate>,
    waypoint_id: SpiffeId,
    haproxy_id: SpiffeId,
}

fn setup(dir: &Path, backend: SocketAddr) -> anyhow::Result<Setup> {
    let ca = CertificateAuthority::generate(TD, Duration::from_secs(3600))?;
    std::fs::write(dir.join("root-cert.pem"), ca.root_pem())?;
    std::fs::write(dir.join("root-key.pem"), ca.key_pem())?;
    let bundle = TrustBundle::from_pems(TD, &[ca.root_pem()])?;
    let client_id = SpiffeId::new(TD, "bench", "client")?;
    let client = Arc::new(ca.issue(&client_id, Duration::from_secs(3600))?);
    let haproxy_id = SpiffeId::new(TD, "bench", "haproxy")?;
    let haproxy = ca.issue(&haproxy_id, Duration::from_secs(3600))?;
    let mut pem = haproxy.chain_pem().join("");
    pem.push_str(&haproxy.key_pem());
    std::fs::write(dir.join("haproxy.pem"), pem)?;

    let vip: SocketAddr = VIP.parse()?;
    let config = format!(
        r#"workloads:
  - uid: backend-1
    name: backend-1
    namespace: bench
    serviceAccount: backend
    node: local
    addresses: ["{ip}"]
    protocol: TUNNEL_PROTOCOL_NONE
services:
  - name: backend
    namespace: bench
    vips: ["{vip_ip}"]
    ports: [{{ servicePort: {vip_port}, targetPort: {port} }}]
    endpoints: [{{ workloadUid: backend-1 }}]
    waypoint: {{ namespace: bench, name: waypoint, identity: "spiffe://{TD}/ns/bench/sa/waypoint" }}
policies:
  - name: get-from-client
    namespace: bench
    scope: POLICY_SCOPE_WAYPOINT
    action: ACTION_ALLOW
    target: {{ kind: Service, namespace: bench, name: backend }}
    rules:
      - from: [{{ principals: [{{ exact: "{TD}/ns/bench/sa/client" }}] }}]
        to: [{{ methods: ["GET"] }}]
"#,
        ip = backend.ip(),
        port = backend.port(),
        vip_ip = vip.ip(),
        vip_port = vip.port(),
    );
    std::fs::write(dir.join("config.yaml"), config)?;
    Ok(Setup {
        dir: dir.to_path_buf(),
        bundle,
        client,
        waypoint_id: SpiffeId::new(TD, "bench", "waypoint")?,
        haproxy_id,
    })
}

/// The backend: 200 and a short body, on its own single-threaded runtime.
fn start_backend(runtime: &tokio::runtime::Runtime) -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    runtime.spawn(async move {
        let Ok(listener) = TcpListener::from_std(listener) else {
            return;
        };
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                        Bytes::from_static(b"hello from the backend\n"),
                    )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

struct Waypoint {
    process: Process,
    addr: SocketAddr,
}

async fn start_waypoint(setup: &Setup, bin: &Path) -> anyhow::Result<Waypoint> {
    let hbone = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let readiness = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let child = Command::new(bin)
        .args(["--namespace", "bench", "--name", "waypoint"])
        // Its identity is the one the bench issues (by default a waypoint
        // runs as `<name>-weft-waypoint`, the deployer's ServiceAccount).
        .args(["--service-account", "waypoint"])
        .arg("--config-file")
        .arg(setup.dir.join("config.yaml"))
        .arg("--ca-dir")
        .arg(&setup.dir)
        .args(["--hbone-addr", &hbone.to_string()])
        .args(["--admin-addr", &format!("127.0.0.1:{}", free_port()?)])
        .args(["--metrics-addr", &format!("127.0.0.1:{}", free_port()?)])
        .args(["--readiness-addr", &readiness.to_string()])
        .args(["--no-access-log", "--log", "warn"])
        .env_remove("RUST_LOG")
        .envs(
            std::env::var("WAYPOINT_THREADS")
                .ok()
                .map(|t| ("TOKIO_WORKER_THREADS", t)),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let process = Process(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if http_status(readiness, "/healthz/ready").await == Some(200) {
            break;
        }
        if Instant::now() > deadline {
            bail!("the waypoint did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(Waypoint {
        process,
        addr: hbone,
    })
}

struct Haproxy {
    process: Process,
    plain: SocketAddr,
    tls: SocketAddr,
}

fn start_haproxy(setup: &Setup, bin: &Path, backend: SocketAddr) -> anyhow::Result<Haproxy> {
    let plain = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let tls = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let dir = &setup.dir;
    let config = format!(
        r#"global
    maxconn 4000
    ssl-default-bind-options ssl-min-ver TLSv1.3

defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s

frontend plain
    bind {plain}
    http-request deny unless {{ method GET }}
    default_backend backend

frontend mtls
    bind {tls} ssl crt {crt} ca-file {ca} verify required alpn http/1.1
    http-request deny unless {{ method GET }}
    default_backend backend

backend backend
    http-reuse always
    server backend {backend}
"#,
        crt = dir.join("haproxy.pem").display(),
        ca = dir.join("root-cert.pem").display(),
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, config)?;
    let check = Command::new(bin).arg("-c").arg("-f").arg(&path).output();
    match check {
        Ok(out) if out.status.success() => {}
        Ok(out) => bail!(
            "haproxy refused its config: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => bail!(
            "cannot run {} ({e}); install it with scripts/install-deps.sh",
            bin.display()
        ),
    }
    let child = Command::new(bin)
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting haproxy")?;
    let process = Process(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(plain).is_err() || std::net::TcpStream::connect(tls).is_err()
    {
        if Instant::now() > deadline {
            bail!("haproxy did not start listening");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Haproxy {
        process,
        plain,
        tls,
    })
}

/// CPU time a process has used (user + system), from /proc.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some((utime + stime) / 100.0)
}

/// GET `path` over plain HTTP/1.1, the status if any.
async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let tcp = TcpStream::connect(addr).await.ok()?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .ok()?;
    tokio::spawn(conn);
    let request = hyper::Request::get(path)
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .ok()?;
    let response = sender.send_request(request).await.ok()?;
    Some(response.status().as_u16())
}

/// Where a load connection goes.
#[derive(Clone)]
enum Target {
    /// HBONE tunnels to the waypoint, sharing `pool`.
    Waypoint {
        pool: TunnelPool,
        cert: Arc<WorkloadCertificate>,
        target: TunnelTarget,
    },
    Plain(SocketAddr),
    Tls {
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
    },
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

impl Target {
    async fn connect(&self) -> anyhow::Result<Sender> {
        async fn handshake<IO>(io: IO) -> anyhow::Result<Sender>
        where
            IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        {
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
            tokio::spawn(conn);
            Ok(sender)
        }
        match self {
            Target::Waypoint { pool, cert, target } => {
                handshake(pool.connect(cert, target, &DirectDialer).await?).await
            }
            Target::Plain(addr) => {
                let tcp = TcpStream::connect(addr).await?;
                tcp.set_nodelay(true)?;
                handshake(tcp).await
            }
            Target::Tls { addr, config } => {
                let tcp = TcpStream::connect(addr).await?;
                tcp.set_nodelay(true)?;
                let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await?;
                handshake(tls).await
            }
        }
    }
}

/// One measurement: `connections` closed loops for `duration`.
async fn measure(
    target: &Target,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<(f64, Latencies)> {
    let mut senders = Vec::with_capacity(connections);
    for _ in 0..connections {
        senders.push(target.connect().await?);
    }
    let start = Instant::now();
    let end = start + duration;
    let mut tasks = Vec::new();
    for mut sender in senders {
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(64 * 1024);
            let mut errors = 0u64;
            while Instant::now() < end {
                let request = hyper::Request::get("/bench")
                    .header("host", "backend.bench.svc.cluster.local")
                    .body(Empty::<Bytes>::new())?;
                let sent = Instant::now();
                if sender.ready().await.is_err() {
                    anyhow::bail!("connection closed");
                }
                let response = sender.send_request(request).await?;
                let ok = response.status() == 200;
                drain(response.into_body()).await?;
                if ok {
                    lat.push(sent.elapsed());
                } else {
                    errors += 1;
                }
            }
            Ok::<_, anyhow::Error>((lat, errors))
        }));
    }
    let mut all = Latencies::with_capacity(1024 * 1024);
    let mut count = 0usize;
    let mut errors = 0;
    for task in tasks {
        let (lat, e) = task.await??;
        count += lat.len();
        for d in lat {
            all.push(d);
        }
        errors += e;
    }
    if errors > 0 {
        bail!("{errors} requests failed");
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok((count as f64 / elapsed, all))
}

async fn drain(mut body: Incoming) -> anyhow::Result<()> {
    while let Some(frame) = body.frame().await {
        frame?;
    }
    Ok(())
}

#[derive(Default)]
struct Figures {
    rps: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    /// The proxy's CPU time per request, microseconds.
    cpu_us: Vec<f64>,
    /// This process's (the load client's and the backend's), microseconds.
    load_cpu_us: Vec<f64>,
}

impl Figures {
    fn add(&mut self, rps: f64, mut lat: Latencies, cpu_us: f64, load_cpu_us: f64) -> (f64, f64) {
        let (p50, p99) = (lat.quantile_us(0.50), lat.quantile_us(0.99));
        self.rps.push(rps);
        self.p50.push(p50);
        self.p99.push(p99);
        self.cpu_us.push(cpu_us);
        self.load_cpu_us.push(load_cpu_us);
        (p50, p99)
    }

    fn medians(&self) -> (f64, f64, f64, f64, f64) {
        (
            median(self.rps.clone()),
            median(self.p50.clone()),
            median(self.p99.clone()),
            median(self.cpu_us.clone()),
            median(self.load_cpu_us.clone()),
        )
    }
}

pub async fn run(args: Args) -> anyhow::Result<Value> {
    let dir = std::env::temp_dir().join(format!("weft-bench-waypoint-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    // The backend gets its own thread, as it would be its own process.
    let backend_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("bench-backend")
        .enable_all()
        .build()?;
    let result = run_in(&args, &dir, &backend_runtime).await;
    backend_runtime.shutdown_background();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run_in(
    args: &Args,
    dir: &Path,
    backend_runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<Value> {
    let backend = start_backend(backend_runtime)?;
    let setup = setup(dir, backend)?;
    let waypoint = start_waypoint(&setup, &waypoint_binary(args)?).await?;
    let haproxy = start_haproxy(&setup, &args.haproxy_bin, backend)?;

    let mut haproxy_tls =
        (*tls::client_config(&setup.client, &setup.bundle, &setup.haproxy_id)?).clone();
    haproxy_tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let waypoint_pid = waypoint.process.0.id();
    let haproxy_pid = haproxy.process.0.id();
    let targets = [
        (
            "waypoint",
            Target::Waypoint {
                pool: TunnelPool::new(PoolSettings::default(), setup.bundle.clone()),
                cert: setup.client.clone(),
                target: TunnelTarget {
                    hbone_addr: waypoint.addr,
                    expected_identity: setup.waypoint_id.clone(),
                    authority: VIP.parse()?,
                    client_ip: Some("127.0.0.1".parse()?),
                    traceparent: None,
                    baggage: None,
                },
            },
        ),
        (
            "haproxy-tls",
            Target::Tls {
                addr: haproxy.tls,
                config: Arc::new(haproxy_tls),
            },
        ),
        ("haproxy", Target::Plain(haproxy.plain)),
    ];
    let targets: Vec<_> = targets
        .into_iter()
        .filter(|(name, _)| args.only.as_deref().is_none_or(|o| o == *name))
        .collect();
    if targets.is_empty() {
        bail!("--only names no target");
    }

    // Warm-up: connections, certificates, pools, caches.
    for (name, target) in &targets {
        measure(target, args.connections, Duration::from_secs(1))
            .await
            .with_context(|| format!("warming up {name}"))?;
    }
    let duration = Duration::from_secs_f64(args.seconds);
    let mut figures: Vec<Figures> = targets.iter().map(|_| Figures::default()).collect();
    for round in 0..args.rounds {
        for ((name, target), fig) in targets.iter().zip(&mut figures) {
            let pid = if *name == "waypoint" {
                waypoint_pid
            } else {
                haproxy_pid
            };
            let me = std::process::id();
            let cpu_before = cpu_seconds(pid).unwrap_or(f64::NAN);
            let load_before = cpu_seconds(me).unwrap_or(f64::NAN);
            let (rps, lat) = measure(target, args.connections, duration)
                .await
                .with_context(|| format!("measuring {name}"))?;
            let per_request = |seconds: f64| seconds * 1e6 / (rps * duration.as_secs_f64());
            let cpu_us = per_request(cpu_seconds(pid).unwrap_or(f64::NAN) - cpu_before);
            let load_cpu_us = per_request(cpu_seconds(me).unwrap_or(f64::NAN) - load_before);
            let (p50, p99) = fig.add(rps, lat, cpu_us, load_cpu_us);
            eprintln!(
                "round {}/{}: {name:<11} {rps:>9.0} req/s  p50 {p50:>7.1} us  p99 {p99:>7.1} us  proxy CPU {cpu_us:>5.1} us/req  load CPU {load_cpu_us:>5.1} us/req",
                round + 1,
                args.rounds
            );
        }
    }
    drop(haproxy);
    drop(waypoint);

    let mut out = json!({
        "bench": "waypoint",
        "connections": args.connections,
        "seconds": args.seconds,
        "rounds": args.rounds,
    });
    let mut by_name = std::collections::HashMap::new();
    for ((name, _), fig) in targets.iter().zip(&figures) {
        let (rps, p50, p99, cpu_us, load_cpu_us) = fig.medians();
        let key = name.replace('-', "_");
        out[format!("{key}_rps")] = json!(rps.round());
        out[format!("{key}_cpu_us_per_request")] = json!(round2(cpu_us));
        out[format!("{key}_load_cpu_us_per_request")] = json!(round2(load_cpu_us));
        out[format!("{key}_p50_us")] = json!(round2(p50));
        out[format!("{key}_p99_us")] = json!(round2(p99));
        by_name.insert(*name, (rps, p99));
    }
    if let (Some(w), Some(h)) = (by_name.get("waypoint"), by_name.get("haproxy-tls")) {
        out["rps_ratio"] = json!(round2(w.0 / h.0));
        out["p99_ratio"] = json!(round2(w.1 / h.1));
    }
    if let (Some(w), Some(h)) = (by_name.get("waypoint"), by_name.get("haproxy")) {
        out["rps_ratio_plain"] = json!(round2(w.0 / h.0));
        out["p99_ratio_plain"] = json!(round2(w.1 / h.1));
    }
    Ok(out)
}
