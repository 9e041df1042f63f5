//! The local-leg bypass (docs/design.md §7): a BPF `sockops` program on the
//! node's root cgroup pairs an enrolled pod's application socket with
//! ztunnel's socket of the same connection, and an `sk_msg` program moves
//! each send of one straight into the other's receive queue. The program is
//! `bpf/local_bypass.bpf.c`; this module loads it, tells it which network
//! namespaces are enrolled pods, and reads its counters.
//!
//! Everything here is optional: when the kernel refuses a step, the agent
//! runs without the bypass and the local legs stay on TCP, exactly as with
//! `--local-bypass off`; the coverage report (and `weftctl check`) says
//! which path the node uses and why.

use std::fs::File;
use std::path::{Path, PathBuf};

use aya::maps::{HashMap, MapData, PerCpuArray, SockHash};
use aya::programs::{CgroupAttachMode, SkMsg, SockOps};
use parking_lot::Mutex;
use weft_cni::report::{BypassCounters, LocalLegs, LocalPath};
use weft_netns::NetNs;

/// The compiled program (empty when the agent was built without clang).
static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/local_bypass.bpf.o"));

/// Indices of the program's `counters` map (`enum counter` in the C).
const BYPASSED_BYTES: u32 = 0;
const BYPASSED_SENDS: u32 = 1;
const PAIRED_LEGS: u32 = 2;
const FIRST_SEND_OVER_TCP: u32 = 3;

/// Why the bypass is not running.
#[derive(Debug, thiserror::Error)]
pub enum BypassError {
    /// The agent was built without a BPF compiler.
    #[error(
        "this build of the node agent has no BPF program (clang was missing when it was built)"
    )]
    NotBuilt,
    /// No cgroup v2 hierarchy to attach to.
    #[error("no cgroup v2 hierarchy at {0} (the bypass attaches to the node's root cgroup)")]
    NoCgroup2(PathBuf),
    /// The kernel refused to load or attach the program, or a map.
    #[error("the kernel refused the bypass at {step}: {source}")]
    Kernel {
        /// What was being done.
        step: &'static str,
        /// The loader's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A pod's network namespace cookie could not be read.
    #[error("cannot read the network namespace cookie of {path}: {source}")]
    Cookie {
        /// The namespace.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn kernel<E: std::error::Error + Send + Sync + 'static>(
    step: &'static str,
) -> impl FnOnce(E) -> BypassError {
    move |e| BypassError::Kernel {
        step,
        source: Box::new(e),
    }
}

/// The loaded bypass. Dropping it detaches the programs; sockets already
/// paired keep their pairing until they close.
pub struct LocalBypass {
    pods: Mutex<HashMap<MapData, u64, u32>>,
    counters: PerCpuArray<MapData, u64>,
    // Holds the programs and their links to the cgroup and the map.
    _ebpf: aya::Ebpf,
}

impl std::fmt::Debug for LocalBypass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBypass").finish_non_exhaustive()
    }
}

impl LocalBypass {
    /// Loads the programs and attaches them to the cgroup v2 hierarchy at
    /// `cgroup` (the node's root cgroup, so every pod's sockets are seen).
    pub fn load(cgroup: &Path) -> Result<LocalBypass, BypassError> {
        if OBJECT.is_empty() {
            return Err(BypassError::NotBuilt);
        }
        if !is_cgroup2(cgroup) {
            return Err(BypassError::NoCgroup2(cgroup.to_path_buf()));
        }
        let cgroup_dir = File::open(cgroup).map_err(kernel("opening the cgroup"))?;
        let mut ebpf = aya::Ebpf::load(OBJECT).map_err(kernel("loading the object"))?;
        let legs: SockHash<MapData, [u8; 40]> = SockHash::try_from(
            ebpf.take_map("legs")
                .ok_or_else(|| missing("the legs map"))?,
        )
        .map_err(kernel("opening the legs map"))?;
        let legs_fd = legs
            .fd()
            .try_clone()
            .map_err(kernel("opening the legs map"))?;
        let sk_msg: &mut SkMsg = ebpf
            .program_mut("weft_local_bypass_sk_msg")
            .ok_or_else(|| missing("the sk_msg program"))?
            .try_into()
            .map_err(kernel("the sk_msg program"))?;
        sk_msg
            .load()
            .map_err(kernel("loading the sk_msg program"))?;
        sk_msg
            .attach(&legs_fd)
            .map_err(kernel("attaching the sk_msg program to its map"))?;
        let sockops: &mut SockOps = ebpf
            .program_mut("weft_local_bypass_sockops")
            .ok_or_else(|| missing("the sockops program"))?
            .try_into()
            .map_err(kernel("the sockops program"))?;
        sockops
            .load()
            .map_err(kernel("loading the sockops program"))?;
        // aya attaches with a BPF link where the kernel has them, and links
        // on one cgroup always coexist: several agents may share a kernel
        // (one per node of the local cluster), each program acting only on
        // its own node's pods. (`AllowMultiple` would pass a flag link
        // creation refuses.)
        sockops
            .attach(cgroup_dir, CgroupAttachMode::Single)
            .map_err(kernel("attaching the sockops program to the cgroup"))?;
        let pods = HashMap::try_from(
            ebpf.take_map("pods")
                .ok_or_else(|| missing("the pods map"))?,
        )
        .map_err(kernel("opening the pods map"))?;
        let counters = PerCpuArray::try_from(
            ebpf.take_map("counters")
                .ok_or_else(|| missing("the counters map"))?,
        )
        .map_err(kernel("opening the counters map"))?;
        Ok(LocalBypass {
            pods: Mutex::new(pods),
            counters,
            _ebpf: ebpf,
        })
    }

    /// Lets the pod whose network namespace has `cookie` take the bypass
    /// (connections established from now on).
    pub fn enroll(&self, cookie: u64) -> Result<(), BypassError> {
        self.pods
            .lock()
            .insert(cookie, 1, 0)
            .map_err(kernel("adding a pod to the pods map"))
    }

    /// Stops pairing the pod's new connections.
    pub fn forget(&self, cookie: u64) {
        // Absent already is fine: the pod was never enrolled here.
        let _ = self.pods.lock().remove(&cookie);
    }

    /// The program's counters, summed over CPUs.
    pub fn counters(&self) -> BypassCounters {
        let sum = |index: u32| -> u64 {
            self.counters
                .get(&index, 0)
                .map(|per_cpu| per_cpu.iter().sum())
                .unwrap_or(0)
        };
        BypassCounters {
            bypassed_bytes: sum(BYPASSED_BYTES),
            bypassed_sends: sum(BYPASSED_SENDS),
            paired_legs: sum(PAIRED_LEGS),
            first_send_over_tcp: sum(FIRST_SEND_OVER_TCP),
        }
    }
}

fn missing(what: &str) -> BypassError {
    BypassError::Kernel {
        step: "reading the object",
        source: format!("{what} is not in it").into(),
    }
}

/// The bypass as the agent runs it: loaded, off, or refused.
#[derive(Debug)]
pub enum Bypass {
    /// `--local-bypass off`.
    Off,
    /// Asked for, but not running.
    Refused(String),
    /// Running.
    Running(Box<LocalBypass>),
}

impl Bypass {
    /// Starts the bypass if `requested`, logging why not when it cannot.
    pub fn start(requested: bool, cgroup: &Path) -> Bypass {
        if !requested {
            return Bypass::Off;
        }
        match LocalBypass::load(cgroup) {
            Ok(b) => {
                tracing::info!(cgroup = %cgroup.display(), "local-leg bypass loaded: local legs go socket to socket");
                Bypass::Running(Box::new(b))
            }
            Err(e) => {
                tracing::warn!(error = %e, "local-leg bypass unavailable: local legs stay on TCP");
                Bypass::Refused(e.to_string())
            }
        }
    }

    /// The running bypass, if any.
    pub fn running(&self) -> Option<&LocalBypass> {
        match self {
            Bypass::Running(b) => Some(b),
            _ => None,
        }
    }

    /// For the coverage report.
    pub fn report(&self) -> LocalLegs {
        match self {
            Bypass::Off => LocalLegs {
                path: LocalPath::Tcp,
                reason: Some("the bypass is off (--local-bypass off)".into()),
                requested: false,
                counters: BypassCounters::default(),
            },
            Bypass::Refused(reason) => LocalLegs {
                path: LocalPath::Tcp,
                reason: Some(reason.clone()),
                requested: true,
                counters: BypassCounters::default(),
            },
            Bypass::Running(b) => LocalLegs {
                path: LocalPath::Sockmap,
                reason: None,
                requested: true,
                counters: b.counters(),
            },
        }
    }
}

/// The cookie of the pod's network namespace, as the program sees it.
pub fn netns_cookie(ns: &NetNs) -> Result<u64, BypassError> {
    ns.cookie().map_err(|e| BypassError::Cookie {
        path: ns.path().to_path_buf(),
        source: std::io::Error::other(e),
    })
}

/// The node's cgroup v2 root: `/sys/fs/cgroup` on a unified hierarchy,
/// `/sys/fs/cgroup/unified` on a hybrid one.
pub fn default_cgroup() -> PathBuf {
    let unified = Path::new("/sys/fs/cgroup");
    if is_cgroup2(unified) {
        unified.to_path_buf()
    } else {
        unified.join("unified")
    }
}

fn is_cgroup2(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
}
