//! Test bed: a "node" network namespace with a pod bridge, and pods attached
//! to it by the real CNI chain (Debian's bridge + host-local, then weft-cni),
//! run the way a container runtime runs it. Everything is uniquely named and
//! torn down on drop, also when a test fails.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use weft_node_agent::netns::NetNs;
use weft_testkit::eventually;

/// Where Debian's containernetworking-plugins live.
pub const DEBIAN_CNI_DIR: &str = "/usr/lib/cni";

/// The `weft-cni` plugin binary the node agent installs. It is another
/// package's binary, so cargo gives this package no `CARGO_BIN_EXE_` for it;
/// a workspace build (`cargo test --workspace`, which `make test` runs) puts
/// it beside the agent's.
pub fn plugin_binary() -> PathBuf {
    let agent = Path::new(env!("CARGO_BIN_EXE_weft-node-agent"));
    let plugin = agent.with_file_name("weft-cni");
    assert!(
        plugin.exists(),
        "{} is missing: build the workspace's binaries (cargo build --workspace --bins)",
        plugin.display()
    );
    plugin
}

/// Fails the test with a clear message unless we are root and the tools
/// exist: a test that cannot run must not pass.
pub fn require_root_and_tools() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test creates network namespaces and must run as root (CI runs `make test` as root)"
    );
    for tool in ["bridge", "host-local", "loopback"] {
        let p = Path::new(DEBIAN_CNI_DIR).join(tool);
        assert!(
            p.exists(),
            "{} missing: apt-get install -y containernetworking-plugins",
            p.display()
        );
    }
    for tool in ["ip", "nft", "iptables", "iptables-save", "iptables-restore"] {
        let found = std::env::var_os("PATH")
            .map(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).exists()))
            .unwrap_or(false);
        assert!(
            found,
            "{tool} missing: apt-get install -y iproute2 nftables iptables"
        );
    }
}

/// A unique prefix for this process and call.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs a command, panicking with its output on failure.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct NamedNetns {
    pub name: String,
}

impl NamedNetns {
    pub fn new(prefix: &str) -> NamedNetns {
        let name = unique(prefix);
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        NamedNetns { name }
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.name))
    }

    pub fn open(&self) -> NetNs {
        NetNs::open(self.path()).expect("open netns")
    }

    /// Runs a command inside.
    pub fn exec(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }
}

impl Drop for NamedNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A CNI plugin dir holding the installed weft-cni, and a conflist.
pub struct CniEnvFixture {
    pub dir: tempfile::TempDir,
}

impl CniEnvFixture {
    pub fn new() -> CniEnvFixture {
        CniEnvFixture {
            dir: tempfile::tempdir().expect("tmp"),
        }
    }
    pub fn bin_dir(&self) -> PathBuf {
        self.dir.path().join("bin")
    }
    pub fn conf_dir(&self) -> PathBuf {
        self.dir.path().join("net.d")
    }
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    pub fn ipam_dir(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }
    pub fn agent_socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }
    pub fn cache(&self) -> PathBuf {
        self.dir.path().join("enrollment.json")
    }

    /// The primary network's conflist, as a node's CNI would write it.
    pub fn primary_conflist(&self, subnet: &str) -> String {
        serde_json::to_string_pretty(&serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "weft-test",
            "plugins": [
                {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
                 "ipam": {"type": "host-local", "subnet": subnet, "dataDir": self.ipam_dir()}}
            ]
        }))
        .expect("json")
    }

    /// Installs weft-cni (binary + conflist entry) as the agent does.
    pub fn install(&self, subnet: &str) -> weft_node_agent::install::ConfInstaller {
        std::fs::create_dir_all(self.conf_dir()).expect("mkdir");
        std::fs::write(
            self.conf_dir().join("10-weft-test.conflist"),
            self.primary_conflist(subnet),
        )
        .expect("write");
        weft_node_agent::install::install_binary(&plugin_binary(), &self.bin_dir()).expect("bin");
        let installer = weft_node_agent::install::ConfInstaller::new(
            self.conf_dir(),
            self.state_dir(),
            serde_json::json!({
                "agentSocket": self.agent_socket(),
                "enrollmentCache": self.cache(),
                "agentTimeoutMs": 2000,
            }),
        );
        installer.ensure().expect("install conflist");
        installer
    }

    /// The active conflist.
    pub fn conflist(&self) -> Value {
        let installer = weft_node_agent::install::ConfInstaller::new(
            self.conf_dir(),
            self.state_dir(),
            Value::Null,
        );
        let path = installer.active_config().expect("list").expect("a config");
        serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("json")
    }
}

/// The outcome of running a chain.
#[derive(Debug)]
pub struct ChainResult {
    pub ok: bool,
    /// The last plugin's stdout (the result, or an error object).
    pub stdout: String,
    /// Which plugin ended the chain.
    pub plugin: String,
    /// Every plugin's stdout, in order.
    pub outputs: Vec<String>,
}

/// Runs `command` through the plugins of `conflist` the way libcni does:
/// each plugin gets its own entry plus `cniVersion`, `name` and the previous
/// plugin's result as `prevResult`, the CNI_* environment, and is looked up
/// in CNI_PATH. Plugins run inside the node namespace `node`, so the bridge
/// and host veths live there and never in the machine's own namespace.
pub fn run_chain(
    node: &NamedNetns,
    conflist: &Value,
    cni_path: &[&Path],
    command: &str,
    pod: &PodSpec<'_>,
    prev: Option<&str>,
) -> ChainResult {
    let plugins: Vec<Value> = conflist["plugins"].as_array().expect("plugins").clone();
    let order: Vec<Value> = if command == "DEL" {
        plugins.into_iter().rev().collect()
    } else {
        plugins
    };
    let mut prev_result: Option<String> = prev.map(str::to_string);
    let path_var = cni_path
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let mut last = String::new();
    let mut outputs = Vec::new();
    for plugin in order {
        let kind = plugin["type"].as_str().expect("type").to_string();
        let mut conf = plugin.clone();
        conf["cniVersion"] = conflist["cniVersion"].clone();
        conf["name"] = conflist["name"].clone();
        if let Some(prev) = &prev_result {
            conf["prevResult"] = serde_json::from_str(prev).expect("prev result json");
        }
        let binary = cni_path
            .iter()
            .map(|d| d.join(&kind))
            .find(|p| p.exists())
            .expect("plugin in CNI_PATH");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &node.name])
            .arg(&binary)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", pod.container_id())
            .env("CNI_NETNS", pod.netns.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", &path_var)
            .env("CNI_ARGS", pod.cni_args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn plugin");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(serde_json::to_string(&conf).expect("json").as_bytes())
            .expect("write stdin");
        let out = child.wait_with_output().expect("plugin output");
        last = String::from_utf8_lossy(&out.stdout).into_owned();
        outputs.push(last.clone());
        if !out.status.success() {
            return ChainResult {
                ok: false,
                stdout: last,
                plugin: kind,
                outputs,
            };
        }
        if command == "ADD" {
            prev_result = Some(last.clone());
        }
    }
    ChainResult {
        ok: true,
        stdout: last,
        plugin: String::new(),
        outputs,
    }
}

/// A pod as the runtime names it.
pub struct PodSpec<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub uid: String,
    pub netns: &'a NamedNetns,
}

impl PodSpec<'_> {
    pub fn container_id(&self) -> String {
        format!("ctr-{}", self.uid)
    }
    pub fn cni_args(&self) -> String {
        format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_UID={}",
            self.namespace, self.name, self.uid
        )
    }
}

/// The first IPv4 address of a CNI result.
pub fn result_ip(result: &str) -> Ipv4Addr {
    let v: Value = serde_json::from_str(result).expect("result json");
    let addr = v["ips"][0]["address"].as_str().expect("address");
    addr.split('/').next().expect("ip").parse().expect("ipv4")
}

/// A TCP listener created inside `ns` on `port` (all addresses).
pub fn listen_in(ns: &NetNs, port: u16) -> TcpListener {
    let l = ns
        .run(|| TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))))
        .expect("enter netns")
        .unwrap_or_else(|e| panic!("bind :{port}: {e}"));
    l.set_nonblocking(true).expect("nonblocking");
    l
}

/// Connects from inside `ns` to `dst`, optionally with `SO_MARK`.
pub fn connect_from(
    ns: &NetNs,
    dst: SocketAddrV4,
    mark: Option<u32>,
) -> std::io::Result<TcpStream> {
    ns.run(|| {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        if let Some(mark) = mark {
            sock.set_mark(mark)?;
        }
        sock.connect_timeout(&SocketAddr::V4(dst).into(), Duration::from_secs(5))?;
        Ok(TcpStream::from(sock))
    })
    .expect("enter netns")
}

/// Waits (bounded) for a connection on `l`; `None` if none came.
pub fn accept_within(l: &TcpListener, limit: Duration) -> Option<TcpStream> {
    let deadline = Instant::now() + limit;
    loop {
        match l.accept() {
            Ok((s, _)) => return Some(s),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// `SO_ORIGINAL_DST` of an accepted, redirected connection.
pub fn original_dst(s: &TcpStream) -> SocketAddrV4 {
    let sa = nix::sys::socket::getsockopt(&s.as_fd(), nix::sys::socket::sockopt::OriginalDst)
        .expect("SO_ORIGINAL_DST");
    SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
        u16::from_be(sa.sin_port),
    )
}

/// The labels map of a test object.
pub fn labels(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

/// The listening sockets a [`FakeZtunnel`] holds, by pod uid.
pub type HeldListeners = std::sync::Arc<
    std::sync::Mutex<
        std::collections::HashMap<
            String,
            Vec<(weft_api::nodeagent::Listener, std::os::fd::OwnedFd)>,
        >,
    >,
>;

/// A stand-in ztunnel on the handoff socket: says Hello, acks everything,
/// records what it got (and the netns inode of every AddPod fd), holds the
/// listeners each AddPod carried and gives them back in its KeepPod acks, as
/// ztunnel does.
pub struct FakeZtunnel {
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    pub held: HeldListeners,
    pub thread: Option<std::thread::JoinHandle<()>>,
    stop: std::os::fd::OwnedFd,
}

impl FakeZtunnel {
    pub fn connect(path: &Path, known: Vec<String>) -> FakeZtunnel {
        Self::connect_holding(path, known, HeldListeners::default())
    }

    /// Connects holding `held` already (a ztunnel that outlived its agent):
    /// its Hello names those pods.
    pub fn connect_holding(path: &Path, known: Vec<String>, held: HeldListeners) -> FakeZtunnel {
        Self::start(path, known, held, "ztunnel", false)
    }

    /// Connects as the ztunnel process `instance`, stopping (a leaving
    /// `Hello`) or not.
    pub fn connect_as(path: &Path, instance: &str, leaving: bool) -> FakeZtunnel {
        Self::start(path, vec![], HeldListeners::default(), instance, leaving)
    }

    fn start(
        path: &Path,
        known: Vec<String>,
        held: HeldListeners,
        instance: &str,
        leaving: bool,
    ) -> FakeZtunnel {
        use weft_api::handoff_wire;
        use weft_api::nodeagent::{Ack, Hello, ZtunnelMessage, agent_message, ztunnel_message};
        let sock = handoff_wire::connect(path).expect("connect handoff socket");
        let stop = sock.try_clone().expect("dup");
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log2 = log.clone();
        let held2 = held.clone();
        handoff_wire::send(
            sock.as_fd(),
            &ZtunnelMessage {
                kind: Some(ztunnel_message::Kind::Hello(Hello {
                    version: handoff_wire::PROTOCOL_VERSION,
                    known_pod_uids: known,
                    leaving,
                    instance: instance.into(),
                })),
            },
            &[],
        )
        .expect("hello");
        let thread = std::thread::spawn(move || {
            while let Ok(Some((msg, fds))) =
                handoff_wire::recv::<weft_api::nodeagent::AgentMessage>(sock.as_fd())
            {
                let mut ack = Ack::default();
                let mut returned = Vec::new();
                let entry = match msg.kind {
                    Some(agent_message::Kind::Add(add)) => {
                        let uid = add.pod.map(|p| p.uid).unwrap_or_default();
                        let mut fds = fds.into_iter();
                        let inode = fds
                            .next()
                            .map(|fd| nix::sys::stat::fstat(&fd).map(|s| s.st_ino).unwrap_or(0))
                            .unwrap_or(0);
                        let listeners = add.listeners.into_iter().zip(fds).collect();
                        held2.lock().expect("held").insert(uid.clone(), listeners);
                        format!("add {uid} {inode}")
                    }
                    Some(agent_message::Kind::Keep(k)) => {
                        if let Some(listeners) = held2.lock().expect("held").get(&k.uid) {
                            for (l, fd) in listeners {
                                ack.listeners.push(*l);
                                returned.push(fd.try_clone().expect("dup"));
                            }
                        }
                        format!("keep {}", k.uid)
                    }
                    Some(agent_message::Kind::Delete(d)) => {
                        held2.lock().expect("held").remove(&d.uid);
                        format!("delete {}", d.uid)
                    }
                    Some(agent_message::Kind::SnapshotSent(_)) => "snapshot_sent".to_string(),
                    None => "empty".to_string(),
                };
                log2.lock().expect("log").push(entry);
                let ack = ZtunnelMessage {
                    kind: Some(ztunnel_message::Kind::Ack(ack)),
                };
                let fds: Vec<_> = returned.iter().map(|fd| fd.as_fd()).collect();
                if handoff_wire::send(sock.as_fd(), &ack, &fds).is_err() {
                    break;
                }
            }
        });
        FakeZtunnel {
            log,
            held,
            thread: Some(thread),
            stop,
        }
    }

    pub fn entries(&self) -> Vec<String> {
        self.log.lock().expect("log").clone()
    }

    /// Waits (bounded) until the log has `n` entries.
    pub fn wait_for(&self, n: usize) -> Vec<String> {
        eventually(
            &format!("the fake ztunnel to get {n} entries"),
            Duration::from_secs(10),
            || match self.entries() {
                entries if entries.len() >= n => Ok(entries),
                entries => Err(format!("fake ztunnel got only {entries:?}")),
            },
        )
    }
}

impl Drop for FakeZtunnel {
    fn drop(&mut self) {
        let _ = nix::sys::socket::shutdown(
            std::os::fd::AsRawFd::as_raw_fd(&self.stop),
            nix::sys::socket::Shutdown::Both,
        );
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
