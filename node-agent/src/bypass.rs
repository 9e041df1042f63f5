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
//!
//! The maps and the cgroup link are pinned in a BPF filesystem (by default
//! `/sys/fs/bpf/weft/<object digest>`), so they outlive the agent: a paired
//! socket's queued bytes belong to the sockhash, and a sockhash freed with
//! its last holder drops them. An agent restart finds the pins and takes
//! them over; an agent with another program detaches the old one's link
//! (its maps stay while they hold sockets); `--local-bypass off` and
//! uninstall remove the pins.

use std::fs::File;
use std::path::{Path, PathBuf};

use aya::maps::{HashMap, MapData, PerCpuArray, SockHash};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{CgroupAttachMode, SkMsg, SockOps};
use parking_lot::Mutex;
use sha2::Digest;
use weft_cni::report::{BypassCounters, LocalLegs, LocalPath};
use weft_netns::NetNs;

/// The compiled program (empty when the agent was built without clang).
static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/local_bypass.bpf.o"));

/// The pin directory's default parent.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/weft";

/// The object's maps, all pinned: sockets and their state must survive the
/// agent together.
const MAPS: [&str; 5] = ["pods", "legs", "actives", "state", "counters"];

/// The cgroup link's pin, beside the maps.
const LINK_PIN: &str = "sockops-link";

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
    /// The pin directory could not be made a BPF filesystem.
    #[error("cannot pin the bypass in {path}: {reason}")]
    Pins {
        /// The directory.
        path: PathBuf,
        /// Why.
        reason: String,
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

/// The loaded bypass. Dropping it detaches the programs unless they are
/// pinned (then they stay, for the next agent); sockets already paired keep
/// their pairing until they close.
pub struct LocalBypass {
    pods: Mutex<HashMap<MapData, u64, u32>>,
    counters: PerCpuArray<MapData, u64>,
    // Holds the programs (and, unpinned, their links).
    _ebpf: aya::Ebpf,
    _link: Option<PinnedLink>,
}

impl std::fmt::Debug for LocalBypass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBypass").finish_non_exhaustive()
    }
}

impl LocalBypass {
    /// Loads the programs and attaches them to the cgroup v2 hierarchy at
    /// `cgroup` (the node's root cgroup, so every pod's sockets are seen).
    /// With `pin_root`, the maps and the link are pinned under it (see the
    /// module's docs); without, they live as long as this value.
    pub fn load(cgroup: &Path, pin_root: Option<&Path>) -> Result<LocalBypass, BypassError> {
        if OBJECT.is_empty() {
            return Err(BypassError::NotBuilt);
        }
        let cgroup = cgroup_root(cgroup)?;
        let cgroup_dir = File::open(&cgroup).map_err(kernel("opening the cgroup"))?;
        let pins = pin_root.map(prepare_pins).transpose()?;
        let mut loader = aya::EbpfLoader::new();
        if let Some(dir) = &pins {
            for name in MAPS {
                loader.map_pin_path(name, dir.join(name));
            }
        }
        let mut ebpf = loader.load(OBJECT).map_err(kernel("loading the object"))?;
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
        let sk_msg_link = sk_msg
            .attach(&legs_fd)
            .map_err(kernel("attaching the sk_msg program to its map"))?;
        if pins.is_some() {
            // The pinned sockhash keeps this program after the agent exits
            // (a restarted agent's attach replaces it); aya would detach it
            // when the link is dropped, so the link is never dropped.
            std::mem::forget(
                sk_msg
                    .take_link(sk_msg_link)
                    .map_err(kernel("keeping the sk_msg program attached"))?,
            );
        }
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
        let sockops_link = sockops
            .attach(cgroup_dir, CgroupAttachMode::Single)
            .map_err(kernel("attaching the sockops program to the cgroup"))?;
        let link = match &pins {
            Some(dir) => {
                let link = FdLink::try_from(
                    sockops
                        .take_link(sockops_link)
                        .map_err(kernel("taking the cgroup link"))?,
                )
                .map_err(kernel("the cgroup link (this kernel has no BPF links)"))?;
                Some(replace_pinned_link(dir, link)?)
            }
            None => None,
        };
        let mut pods: HashMap<MapData, u64, u32> = HashMap::try_from(
            ebpf.take_map("pods")
                .ok_or_else(|| missing("the pods map"))?,
        )
        .map_err(kernel("opening the pods map"))?;
        // A pinned map holds the pods of the agent before this one, some of
        // which may have left the mesh while no agent ran; the agent enrolls
        // the pods it has again. Meanwhile new connections take TCP, which
        // is always correct.
        let stale: Vec<u64> = pods.keys().filter_map(Result::ok).collect();
        for cookie in stale {
            let _ = pods.remove(&cookie);
        }
        let counters = PerCpuArray::try_from(
            ebpf.take_map("counters")
                .ok_or_else(|| missing("the counters map"))?,
        )
        .map_err(kernel("opening the counters map"))?;
        Ok(LocalBypass {
            pods: Mutex::new(pods),
            counters,
            _ebpf: ebpf,
            _link: link,
        })
    }

    /// Removes every pin under `pin_root`: the programs detach and each
    /// map is freed once nothing holds it. For `--local-bypass off` and for
    /// weft leaving the node.
    pub fn remove_pins(pin_root: &Path) -> std::io::Result<()> {
        let entries = match std::fs::read_dir(pin_root) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            other => other?,
        };
        // The root itself may be the BPF filesystem's mount point, whose
        // own files (the kernel's `maps.debug`, `progs.debug`) stay: only
        // the objects' directories go.
        for entry in entries {
            let path = entry?.path();
            if path.is_dir() {
                remove_tree(&path)?;
            }
        }
        Ok(())
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
    /// Starts the bypass if `requested`, logging why not when it cannot;
    /// otherwise removes what an earlier run left pinned under `pin_root`.
    pub fn start(requested: bool, cgroup: &Path, pin_root: Option<&Path>) -> Bypass {
        if !requested {
            if let Some(root) = pin_root.filter(|r| r.exists()) {
                match LocalBypass::remove_pins(root) {
                    Ok(()) => {
                        tracing::info!(pins = %root.display(), "local-leg bypass off: removed its pins")
                    }
                    Err(e) => {
                        tracing::warn!(pins = %root.display(), error = %e, "cannot remove the local-leg bypass's pins")
                    }
                }
            }
            return Bypass::Off;
        }
        match LocalBypass::load(cgroup, pin_root) {
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

/// The node's cgroup mount, where [`LocalBypass::load`] looks for the
/// cgroup v2 root.
pub const DEFAULT_CGROUP: &str = "/sys/fs/cgroup";

/// The cgroup v2 root at or under `base`: `base` itself on a unified
/// hierarchy, `base/unified` on a hybrid one.
fn cgroup_root(base: &Path) -> Result<PathBuf, BypassError> {
    [base.to_path_buf(), base.join("unified")]
        .into_iter()
        .find(|p| is_cgroup2(p))
        .ok_or_else(|| BypassError::NoCgroup2(base.to_path_buf()))
}

/// The pin directory of this build's object under `root`, on a BPF
/// filesystem (mounted there if `root` is on none). Programs of other
/// builds lose their cgroup link, so only one pairs new connections; their
/// maps are removed once they hold no socket.
fn prepare_pins(root: &Path) -> Result<PathBuf, BypassError> {
    let fail = |reason: String| BypassError::Pins {
        path: root.to_path_buf(),
        reason,
    };
    std::fs::create_dir_all(root).map_err(|e| fail(e.to_string()))?;
    if !is_bpffs(root) {
        nix::mount::mount(
            Some("bpf"),
            root,
            Some("bpf"),
            nix::mount::MsFlags::MS_NOSUID
                | nix::mount::MsFlags::MS_NODEV
                | nix::mount::MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(|e| {
            fail(format!(
                "not a BPF filesystem, and mounting one failed: {e}"
            ))
        })?;
    }
    let digest = sha2::Sha256::digest(OBJECT);
    let version: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    let entries = std::fs::read_dir(root).map_err(|e| fail(e.to_string()))?;
    for other in entries.flatten() {
        if other.path().is_dir() && other.file_name().to_string_lossy() != version.as_str() {
            retire(&other.path());
        }
    }
    let dir = root.join(version);
    std::fs::create_dir_all(&dir).map_err(|e| fail(e.to_string()))?;
    Ok(dir)
}

/// Detaches another build's program; removes its maps once no socket is
/// paired in them (their queued bytes would go with them).
fn retire(dir: &Path) {
    if let Ok(link) = PinnedLink::from_pin(dir.join(LINK_PIN)) {
        // Dropping the unpinned link detaches the program.
        let _ = link.unpin();
    }
    let empty = MapData::from_pin(dir.join("legs"))
        .ok()
        .and_then(|m| SockHash::<MapData, [u8; 40]>::try_from(aya::maps::Map::SockHash(m)).ok())
        .is_none_or(|legs| legs.keys().next().is_none());
    if empty {
        let _ = remove_tree(dir);
    }
}

/// Pins `link` as this build's cgroup link. A link already pinned there
/// (the agent's previous run) is detached after the new one is attached, so
/// no connection is established while neither runs.
fn replace_pinned_link(dir: &Path, link: FdLink) -> Result<PinnedLink, BypassError> {
    let path = dir.join(LINK_PIN);
    if let Ok(previous) = PinnedLink::from_pin(&path) {
        let _ = previous.unpin();
    }
    link.pin(&path).map_err(kernel("pinning the cgroup link"))
}

/// Removes `path` and what is under it. (`std::fs::remove_dir_all` takes
/// a BPF filesystem's pinned objects for directories and fails on them.)
fn remove_tree(path: &Path) -> std::io::Result<()> {
    let named =
        |e: std::io::Error| std::io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    if std::fs::symlink_metadata(path).map_err(named)?.is_dir() {
        for entry in std::fs::read_dir(path).map_err(named)? {
            remove_tree(&entry?.path())?;
        }
        std::fs::remove_dir(path).map_err(named)
    } else {
        std::fs::remove_file(path).map_err(named)
    }
}

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
}

fn is_cgroup2(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
}
