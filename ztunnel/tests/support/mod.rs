//! A small cluster of network namespaces for ztunnel's integration tests:
//! an underlay bridge, nodes with a pod bridge and routes to each other,
//! pods with the real redirect rules (the node agent's own code), the test
//! playing the node agent over the real handoff socket, and the real
//! `ztunnel` binary per node in local mode (a YAML config and a CA root from
//! `weft-hbone`).
//!
//! Everything is named with a per-run prefix and torn down on drop, also
//! when a test fails.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use weft_api::nodeagent::PodIdentity;
use weft_node_agent::handoff::{HANDOVER_BOUND, HandoffHub, HandoffPod, HandoffServer};
use weft_node_agent::netns::NetNs;
use weft_node_agent::redirect::{Backend, Redirector};
use weft_testkit::{TestCa, eventually};

pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests build network namespaces and need root (CI runs them as root)"
    );
    for tool in ["ip", "nft", "iptables"] {
        assert!(
            Command::new(tool).arg("--version").output().is_ok()
                || Command::new(tool).arg("-V").output().is_ok(),
            "{tool} is missing: run scripts/install-deps.sh"
        );
    }
}

/// A node agent's handoff server on `socket`, on a runtime of its own; it
/// serves snapshots once marked synced.
/// Waits until the agent's server has let go of `hub` (its connections are
/// closed), then drops it.
fn hub_dropped(hub: Arc<HandoffHub>) {
    eventually(
        "the stopped agent's hub to be dropped",
        Duration::from_secs(5),
        || Arc::strong_count(&hub) == 1,
    );
}

/// A node agent between its stop signal and its exit.
pub struct StoppingAgent {
    thread: std::thread::JoinHandle<()>,
}

impl StoppingAgent {
    pub fn has_exited(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits for the exit.
    pub fn exited(self) {
        self.thread.join().expect("the stopping agent");
    }
}

fn start_agent(socket: &Path) -> (Arc<HandoffHub>, tokio::runtime::Runtime) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("agent runtime");
    let hub = HandoffHub::new();
    let server = {
        let _guard = runtime.enter();
        HandoffServer::bind(socket, hub.clone(), Duration::from_secs(30)).expect("handoff socket")
    };
    runtime.spawn(async move {
        let _ = server.run().await;
    });
    (hub, runtime)
}

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip_in(netns: &str, args: &[&str]) {
    let mut full = vec!["ip", "-n", netns];
    full.extend_from_slice(args);
    sh(&full);
}

pub fn node_ip(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 30, 0, 10 + index as u8)
}

pub fn gateway(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 246, index as u8, 1)
}

pub struct Node {
    pub index: usize,
    pub name: String,
    pub netns: String,
    pub hub: Arc<HandoffHub>,
    /// The node agent's runtime: shutting it down ends the agent's
    /// connections as its process's exit would.
    agent: Option<tokio::runtime::Runtime>,
    pub handoff_socket: PathBuf,
    pub admin_socket: PathBuf,
    ztunnels: Vec<Child>,
    /// Sent SIGTERM, not exited yet.
    stopping: Vec<Child>,
    started: usize,
    log: PathBuf,
}

#[derive(Clone, Debug)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    pub service_account: String,
    pub node: usize,
    /// In the mesh: redirect rules installed and handed to ztunnel.
    pub meshed: bool,
}

impl PodSpec {
    pub fn meshed(namespace: &str, name: &str, sa: &str, node: usize) -> Self {
        PodSpec {
            namespace: namespace.into(),
            name: name.into(),
            service_account: sa.into(),
            node,
            meshed: true,
        }
    }

    pub fn plain(namespace: &str, name: &str, node: usize) -> Self {
        PodSpec {
            meshed: false,
            ..Self::meshed(namespace, name, "default", node)
        }
    }
}

pub struct Pod {
    pub spec: PodSpec,
    pub uid: String,
    pub ip: Ipv4Addr,
    pub netns: String,
}

/// The cluster. Dropping it tears everything down.
pub struct Cluster {
    pub run: String,
    pub dir: PathBuf,
    pub nodes: Vec<Node>,
    pub pods: Vec<Pod>,
    pub ca: TestCa,
    underlay: String,
    config: String,
    next_host: BTreeMap<usize, u8>,
}

impl Cluster {
    pub fn new(nodes: usize) -> Cluster {
        require_root();
        let run = format!("wz{:05}", std::process::id() % 100_000);
        let run = format!("{run}{}", rand::random::<u16>() % 100);
        let dir = std::env::temp_dir().join(format!("weft-ztunnel-test-{run}"));
        std::fs::create_dir_all(&dir).expect("test dir");
        let ca = TestCa::new();
        let ca_dir = dir.join("ca");
        std::fs::create_dir_all(&ca_dir).expect("ca dir");
        std::fs::write(ca_dir.join("root-cert.pem"), ca.root_pem()).expect("root");
        std::fs::write(ca_dir.join("root-key.pem"), ca.key_pem()).expect("key");
        let underlay = format!("{run}-u");
        let mut cluster = Cluster {
            run: run.clone(),
            dir: dir.clone(),
            nodes: Vec::new(),
            pods: Vec::new(),
            ca,
            underlay: underlay.clone(),
            config: String::new(),
            next_host: BTreeMap::new(),
        };
        sh(&["ip", "netns", "add", &underlay]);
        ip_in(&underlay, &["link", "add", "br0", "type", "bridge"]);
        ip_in(&underlay, &["link", "set", "br0", "up"]);
        for index in 1..=nodes {
            cluster.add_node(index, nodes);
        }
        cluster
    }

    fn add_node(&mut self, index: usize, count: usize) {
        let netns = format!("{}-n{index}", self.run);
        sh(&["ip", "netns", "add", &netns]);
        ip_in(&netns, &["link", "set", "lo", "up"]);
        let port = format!("n{index}");
        ip_in(
            &self.underlay,
            &[
                "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &netns,
            ],
        );
        ip_in(
            &self.underlay,
            &["link", "set", &port, "master", "br0", "up"],
        );
        ip_in(
            &netns,
            &[
                "addr",
                "add",
                &format!("{}/24", node_ip(index)),
                "dev",
                "eth0",
            ],
        );
        ip_in(&netns, &["link", "set", "eth0", "up"]);
        ip_in(&netns, &["link", "add", "cni0", "type", "bridge"]);
        ip_in(
            &netns,
            &[
                "addr",
                "add",
                &format!("{}/24", gateway(index)),
                "dev",
                "cni0",
            ],
        );
        ip_in(&netns, &["link", "set", "cni0", "up"]);
        sh(&[
            "ip",
            "netns",
            "exec",
            &netns,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
        for other in (1..=count).filter(|o| *o != index) {
            ip_in(
                &netns,
                &[
                    "route",
                    "add",
                    &format!("10.246.{other}.0/24"),
                    "via",
                    &node_ip(other).to_string(),
                ],
            );
        }
        let node_dir = self.dir.join(format!("node-{index}"));
        std::fs::create_dir_all(&node_dir).expect("node dir");
        let handoff_socket = node_dir.join("ztunnel.sock");
        let (hub, agent) = start_agent(&handoff_socket);
        // The test is the agent, and knows its pods from the start.
        hub.mark_synced();
        self.nodes.push(Node {
            index,
            name: format!("node-{index}"),
            netns,
            hub,
            agent: Some(agent),
            handoff_socket,
            admin_socket: node_dir.join("admin.sock"),
            ztunnels: Vec::new(),
            stopping: Vec::new(),
            started: 0,
            log: node_dir.join("ztunnel.log"),
        });
    }

    /// The node agent of `node` exits: its connections close and its
    /// copies of the pods' listeners with them.
    pub fn stop_agent(&mut self, node: usize) {
        if let Some(agent) = self.nodes[node - 1].agent.take() {
            agent.shutdown_background();
        }
        let placeholder = HandoffHub::new();
        let old = std::mem::replace(&mut self.nodes[node - 1].hub, placeholder);
        hub_dropped(old);
    }

    /// The node agent of `node` is told to stop for a restart: as its
    /// process does, it serves on until a ztunnel that is not stopping
    /// holds the pods' listeners (at most [`HANDOVER_BOUND`]), then exits.
    pub fn begin_stop_agent(&mut self, node: usize) -> StoppingAgent {
        let runtime = self.nodes[node - 1].agent.take().expect("an agent runs");
        let hub = std::mem::replace(&mut self.nodes[node - 1].hub, HandoffHub::new());
        let thread = std::thread::spawn(move || {
            runtime.block_on(async {
                let _ = tokio::time::timeout(HANDOVER_BOUND, hub.hand_over()).await;
            });
            runtime.shutdown_background();
            hub_dropped(hub);
        });
        StoppingAgent { thread }
    }

    /// A new node agent on `node`, enrolling the node's meshed pods again
    /// (it cannot bind listeners a running ztunnel still holds).
    pub fn start_agent_again(&mut self, node: usize) {
        let n = &mut self.nodes[node - 1];
        let (hub, agent) = start_agent(&n.handoff_socket);
        n.hub = hub;
        n.agent = Some(agent);
        let pods: Vec<(String, PodSpec, Ipv4Addr, String)> = self
            .pods
            .iter()
            .filter(|p| p.spec.node == node && p.spec.meshed)
            .map(|p| (p.uid.clone(), p.spec.clone(), p.ip, p.netns.clone()))
            .collect();
        for (uid, spec, ip, netns) in pods {
            let ns = NetNs::open(format!("/var/run/netns/{netns}")).expect("pod netns");
            self.hand_over(node, &uid, &spec, ip, ns);
        }
        self.nodes[node - 1].hub.mark_synced();
    }

    pub fn node(&self, index: usize) -> &Node {
        &self.nodes[index - 1]
    }

    /// Creates a pod netns on its node's bridge; installs the redirect rules
    /// and hands it to ztunnel if it is meshed.
    pub fn add_pod(&mut self, spec: PodSpec) -> usize {
        let node = &self.nodes[spec.node - 1];
        let host = self.next_host.entry(spec.node).or_insert(10);
        *host += 1;
        let ip = Ipv4Addr::new(10, 246, spec.node as u8, *host);
        let idx = self.pods.len();
        let netns = format!("{}-p{idx}", self.run);
        sh(&["ip", "netns", "add", &netns]);
        ip_in(&netns, &["link", "set", "lo", "up"]);
        let veth = format!("vp{idx}");
        ip_in(
            &node.netns,
            &[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &netns,
            ],
        );
        ip_in(&node.netns, &["link", "set", &veth, "master", "cni0", "up"]);
        ip_in(&netns, &["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        ip_in(&netns, &["link", "set", "eth0", "up"]);
        ip_in(
            &netns,
            &[
                "route",
                "add",
                "default",
                "via",
                &gateway(spec.node).to_string(),
            ],
        );
        let uid = format!("{}-uid-{idx}", spec.name);
        if spec.meshed {
            let ns = NetNs::open(format!("/var/run/netns/{netns}")).expect("pod netns");
            Redirector::new(Backend::Auto, gateway(spec.node))
                .apply(&ns)
                .expect("redirect rules");
            self.hand_over(spec.node, &uid, &spec, ip, ns);
        }
        self.pods.push(Pod {
            spec,
            uid,
            ip,
            netns,
        });
        idx
    }

    fn hand_over(&self, node: usize, uid: &str, spec: &PodSpec, ip: Ipv4Addr, ns: NetNs) {
        self.nodes[node - 1].hub.add(HandoffPod {
            identity: PodIdentity {
                uid: uid.into(),
                name: spec.name.clone(),
                namespace: spec.namespace.clone(),
                service_account: spec.service_account.clone(),
            },
            addresses: vec![ip.to_string()],
            netns: ns,
        });
    }

    /// The node agent deletes a pod (it leaves the mesh).
    pub fn remove_from_mesh(&self, pod: usize) {
        let p = &self.pods[pod];
        self.nodes[p.spec.node - 1].hub.delete(&p.uid);
    }

    pub fn pod(&self, idx: usize) -> &Pod {
        &self.pods[idx]
    }

    /// Writes the local config: every meshed pod as an HBONE workload, plain
    /// pods as TCP workloads, plus `extra` YAML (services, policies).
    pub fn write_config(&mut self, extra: &str) {
        self.write_config_with(extra, |_| String::new());
    }

    /// As [`Cluster::write_config`], with extra fields per workload (e.g.
    /// `mtlsMode: MTLS_MODE_STRICT`).
    pub fn write_config_with(&mut self, extra: &str, fields: impl Fn(&Pod) -> String) {
        let mut yaml = String::from("workloads:\n");
        for p in &self.pods {
            let protocol = if p.spec.meshed {
                "TUNNEL_PROTOCOL_HBONE"
            } else {
                "TUNNEL_PROTOCOL_NONE"
            };
            yaml.push_str(&format!(
                "  - {{ uid: {uid}, name: {name}, namespace: {ns}, serviceAccount: {sa}, node: node-{node}, addresses: [\"{ip}\"], protocol: {protocol}{more} }}\n",
                uid = p.uid,
                name = p.spec.name,
                ns = p.spec.namespace,
                sa = p.spec.service_account,
                node = p.spec.node,
                ip = p.ip,
                more = match fields(p) {
                    f if f.is_empty() => f,
                    f => format!(", {f}"),
                },
            ));
        }
        yaml.push_str(extra);
        self.config = yaml;
        // Write then rename, so a reloading ztunnel never reads half a file.
        let tmp = self.dir.join("config.yaml.tmp");
        std::fs::write(&tmp, &self.config).expect("config");
        std::fs::rename(&tmp, self.config_path()).expect("config rename");
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.yaml")
    }

    /// Starts a ztunnel on `node` and waits until it is ready.
    pub fn start_ztunnel(&mut self, node: usize) {
        self.spawn_ztunnel(node);
        self.wait_ready(node);
    }

    /// Starts a ztunnel on `node`.
    pub fn spawn_ztunnel(&mut self, node: usize) {
        let config = self.config_path();
        let ca_dir = self.dir.join("ca");
        let n = &mut self.nodes[node - 1];
        // Each process gets its own admin socket, so waiting for readiness
        // waits for this one and not for a predecessor still running.
        n.admin_socket = n
            .handoff_socket
            .with_file_name(format!("admin-{}.sock", n.ztunnels.len() + n.started));
        n.started += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)
            .expect("log");
        let child = Command::new("ip")
            .args(["netns", "exec", &n.netns, env!("CARGO_BIN_EXE_ztunnel")])
            .arg("--node")
            .arg(&n.name)
            .arg("--config-file")
            .arg(&config)
            .arg("--ca-dir")
            .arg(&ca_dir)
            .arg("--handoff-socket")
            .arg(&n.handoff_socket)
            .arg("--admin-socket")
            .arg(&n.admin_socket)
            .arg("--drain-seconds")
            .arg("20")
            .env("WEFT_LOG", "info,weft_ztunnel=debug,weft_hbone=debug")
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawning ztunnel");
        n.ztunnels.push(child);
    }

    /// Waits until the newest ztunnel of `node` is ready.
    pub fn wait_ready(&self, node: usize) {
        let socket = self.nodes[node - 1].admin_socket.clone();
        eventually(
            &format!("ztunnel on node {node} to be ready"),
            Duration::from_secs(30),
            || match admin_get(&socket, "/healthz/ready") {
                Some((200, _)) => Ok(()),
                _ => Err(format!("log:\n{}", self.log(node))),
            },
        );
    }

    /// Sends SIGTERM to the oldest ztunnel of `node` and waits for it to exit.
    pub fn stop_oldest_ztunnel(&mut self, node: usize) {
        self.terminate_oldest_ztunnel(node);
        let mut child = self.nodes[node - 1].stopping.remove(0);
        let status = child.wait().expect("ztunnel exit");
        assert!(status.success(), "ztunnel exited with {status}");
    }

    /// Sends SIGTERM to the oldest ztunnel of `node`, which drains.
    pub fn terminate_oldest_ztunnel(&mut self, node: usize) {
        let n = &mut self.nodes[node - 1];
        let child = n.ztunnels.remove(0);
        // `ip netns exec` execs ztunnel, so the child pid is ztunnel's.
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        n.stopping.push(child);
    }

    /// Whether the ztunnel of `node` sent SIGTERM first has exited (it
    /// must have exited cleanly).
    pub fn terminated_ztunnel_exited(&mut self, node: usize) -> bool {
        let n = &mut self.nodes[node - 1];
        let status = n.stopping[0].try_wait().expect("ztunnel status");
        let Some(status) = status else {
            return false;
        };
        assert!(status.success(), "ztunnel exited with {status}");
        // Reaped by `try_wait` already; `wait` returns the same status.
        let _ = n.stopping.remove(0).wait();
        true
    }

    /// File descriptors the newest ztunnel of `node` holds open now.
    pub fn ztunnel_open_files(&self, node: usize) -> usize {
        let child = self.nodes[node - 1]
            .ztunnels
            .last()
            .expect("a ztunnel runs");
        std::fs::read_dir(format!("/proc/{}/fd", child.id()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    pub fn log(&self, node: usize) -> String {
        std::fs::read_to_string(&self.nodes[node - 1].log).unwrap_or_default()
    }

    /// JSON from node's admin API over its unix socket.
    pub fn admin_json(&self, node: usize, path: &str) -> serde_json::Value {
        let (status, body) =
            admin_get(&self.nodes[node - 1].admin_socket, path).expect("admin API reachable");
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).expect("admin JSON")
    }

    /// A plain HTTP/1.0 GET to 127.0.0.1:`port` inside node's namespace
    /// (metrics, readiness); (status, body).
    pub fn node_http(&self, node: usize, port: u16, path: &str) -> Option<(u16, String)> {
        let netns = format!("/var/run/netns/{}", self.nodes[node - 1].netns);
        let path = path.to_owned();
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&netns).ok()?;
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
            let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
            s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
                .ok()?;
            let mut response = String::new();
            s.read_to_string(&mut response).ok()?;
            let status = response.split_whitespace().nth(1)?.parse().ok()?;
            Some((status, response.split_once("\r\n\r\n")?.1.to_owned()))
        })
        .join()
        .ok()
        .flatten()
    }

    /// Runs `f` on a thread inside pod `idx`'s network namespace.
    pub fn in_pod<R: Send + 'static>(
        &self,
        idx: usize,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> R {
        let path = format!("/var/run/netns/{}", self.pods[idx].netns);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("netns");
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("pod thread")
    }

    /// Starts a TCP echo server on `port` inside pod `idx`; it answers every
    /// connection with `<peer ip>\n` and then echoes.
    pub fn echo_server(&self, idx: usize, port: u16) -> Arc<AtomicUsize> {
        let path = format!("/var/run/netns/{}", self.pods[idx].netns);
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("netns");
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let listener = TcpListener::bind(("0.0.0.0", port)).expect("bind echo");
            let _ = tx.send(());
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                counter.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let peer = stream
                        .peer_addr()
                        .map(|a| a.ip().to_string())
                        .unwrap_or_default();
                    if stream.write_all(format!("{peer}\n").as_bytes()).is_err() {
                        return;
                    }
                    let mut buf = [0u8; 16 * 1024];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 || stream.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("echo server up");
        accepted
    }

    /// From pod `from`, connects to `to`, sends `msg`, half-closes, and
    /// returns (the peer IP the server saw, the echo), or the error.
    pub fn exchange(
        &self,
        from: usize,
        to: SocketAddr,
        msg: &str,
    ) -> std::io::Result<(String, String)> {
        let msg = msg.to_owned();
        self.in_pod(from, move || exchange(to, &msg))
    }
}

pub fn exchange(to: SocketAddr, msg: &str) -> std::io::Result<(String, String)> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(msg.as_bytes())?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    let (peer, echo) = reply.split_once('\n').ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("short reply {reply:?}"),
        )
    })?;
    Ok((peer.to_owned(), echo.to_owned()))
}

/// A raw HTTP/1.0 GET over a unix socket; (status, body).
pub fn admin_get(socket: &Path, path: &str) -> Option<(u16, String)> {
    let mut s = UnixStream::connect(socket).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: admin\r\n\r\n").as_bytes())
        .ok()?;
    let mut response = String::new();
    s.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

/// A steady stream of new connections from a pod, counting failures.
pub struct Load {
    stop: Arc<AtomicBool>,
    pub ok: Arc<AtomicUsize>,
    pub failed: Arc<AtomicUsize>,
    handle: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl Cluster {
    pub fn start_load(&self, from: usize, to: SocketAddr) -> Load {
        let path = format!("/var/run/netns/{}", self.pods[from].netns);
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let (s, o, f) = (stop.clone(), ok.clone(), failed.clone());
        let handle = std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("netns");
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let mut errors = Vec::new();
            while !s.load(Ordering::SeqCst) {
                match exchange(to, "ping") {
                    Ok((_, echo)) if echo == "ping" => {
                        o.fetch_add(1, Ordering::SeqCst);
                    }
                    other => {
                        f.fetch_add(1, Ordering::SeqCst);
                        errors.push(format!("{other:?}"));
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            errors
        });
        Load {
            stop,
            ok,
            failed,
            handle: Some(handle),
        }
    }
}

impl Load {
    /// Stops the load; returns the errors seen.
    pub fn finish(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            for child in node.ztunnels.iter_mut().chain(&mut node.stopping) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        for pod in &self.pods {
            let _ = Command::new("ip")
                .args(["netns", "del", &pod.netns])
                .status();
        }
        for node in &self.nodes {
            let _ = Command::new("ip")
                .args(["netns", "del", &node.netns])
                .status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.underlay])
            .status();
        if std::thread::panicking() {
            for node in &self.nodes {
                eprintln!(
                    "--- ztunnel log, {} ---\n{}",
                    node.name,
                    std::fs::read_to_string(&node.log).unwrap_or_default()
                );
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Captures TCP on the underlay while `f` runs (on every bridge port: a
/// capture on the bridge device itself would miss forwarded frames);
/// returns the capture as text (headers and ASCII payload).
pub fn capture_underlay<R>(cluster: &Cluster, f: impl FnOnce() -> R) -> (R, String) {
    let file = cluster.dir.join("underlay.pcap");
    let mut tcpdump = Command::new("ip")
        .args([
            "netns",
            "exec",
            &cluster.underlay,
            "tcpdump",
            "-Z",
            "root",
            "--immediate-mode",
            "-i",
            "any",
            "-U",
            "-n",
            "-w",
        ])
        .arg(&file)
        .arg("tcp")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tcpdump (scripts/install-deps.sh installs it)");
    // tcpdump says "listening on" once the capture is armed.
    let mut stderr = tcpdump.stderr.take().expect("stderr");
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !String::from_utf8_lossy(&seen).contains("listening on") {
        match stderr.read(&mut byte) {
            Ok(1) => seen.push(byte[0]),
            _ => panic!("tcpdump did not start: {}", String::from_utf8_lossy(&seen)),
        }
    }
    let result = f();
    std::thread::sleep(Duration::from_millis(300));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(tcpdump.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let _ = tcpdump.wait();
    let out = Command::new("tcpdump")
        .args(["-n", "-A", "-r"])
        .arg(&file)
        .output()
        .expect("tcpdump -r");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();

    (result, text)
}
