//! Kube mode: the real Kubernetes control plane under weft's tests
//! (docs/e2e.md).
//!
//! - [`toolchain`]: the control plane's binary and the Gateway API CRDs,
//!   built once per machine by `scripts/build-kube.sh`.
//! - [`control_plane`]: etcd, kube-apiserver, kube-controller-manager and
//!   kube-scheduler on loopback, with the run's own CA ([`pki`]) and a
//!   kubeconfig per identity ([`kubeconfig`]).
//! - [`kubectl`]: kubectl at the same release, run as users run it.
//! - [`install`]: the Gateway API CRDs and `deploy/`, applied with kubectl.
//! - [`helm`]: Helm from Go modules, for the chart (`deploy/charts/weft`).
//! - [`controller`]: weft's controller run as its own ServiceAccount.
//! - [`conformance`]: the Gateway API conformance suite, run against weft.
//! - [`dns`]: the cluster DNS add-on (CoreDNS) of a kube cluster.
//! - [`kubelet`]: the netns nodes' kubelet: Nodes, pods through the CNI
//!   chain, containers under runc from the images' binaries.
//! - [`cluster`]: [`KubeCluster`], the netns nodes as a Kubernetes cluster:
//!   the control plane on the underlay, a kubelet and kube-proxy per node.
//! - [`apps`]: the echo servers tests and the demo run on it.
//! - [`demo`]: the narrated demo on it (`make demo`).
//! - [`KubeRun`]: a control plane owning a run of its own (run id, files,
//!   teardown on drop, panic or Ctrl-C), for tests that need no nodes.

pub mod apps;
pub mod cluster;
pub mod conformance;
pub mod control_plane;
pub mod controller;
pub mod dashboards;
pub mod demo;
pub mod dns;
pub mod helm;
pub mod install;
pub mod kubeconfig;
pub mod kubectl;
pub mod kubelet;
pub mod pki;
pub mod prometheus;
pub mod toolchain;

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;

pub use cluster::{KubeCluster, KubeClusterConfig, KubeNode};
pub use control_plane::{ControlPlane, Placement};
pub use controller::ControllerProcess;
pub use kubectl::Kubectl;
pub use toolchain::Toolchain;

use crate::cleanup;
use crate::error::{Error, Result};
use crate::names::RunId;
use crate::signals;
use crate::state::RunState;

/// What `scripts/<script>` built from Go modules (the path it prints), or
/// `$<env>` when set. A script runs at most once per process (a hash when
/// warm, minutes when cold; its progress goes to stderr), and a failure is
/// remembered rather than paid again by every test. `usable` checks what it
/// printed; `what` names it in errors.
pub(crate) fn built_by_script(
    script: &'static str,
    env: &str,
    what: &str,
    usable: fn(&Path) -> bool,
) -> Result<std::path::PathBuf> {
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::sync::{Mutex, OnceLock};
    type Built = std::result::Result<PathBuf, String>;
    static BUILT: OnceLock<Mutex<BTreeMap<&'static str, Built>>> = OnceLock::new();
    if let Some(path) = std::env::var_os(env) {
        return Ok(PathBuf::from(path));
    }
    let mut built = BUILT
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let result = built.entry(script).or_insert_with(|| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../scripts")
            .join(script);
        crate::exec::run(std::process::Command::new(&path).stderr(std::process::Stdio::inherit()))
            .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(path) if usable(path) => Ok(path.clone()),
        Ok(path) => Err(Error::Missing {
            what: format!("{what} at {}", path.display()),
            hint: format!("run scripts/{script}"),
        }),
        Err(e) => Err(Error::Missing {
            what: what.into(),
            hint: format!("scripts/{script} failed: {e}"),
        }),
    }
}

/// Writes `text` to `path`, readable by its owner only: keys, certificates
/// and kubeconfigs alike, as a node keeps them.
pub(crate) fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).map_err(Error::io(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(Error::io(path))
}

/// A free loopback address (the port is released for the caller to bind).
pub(crate) fn free_loopback_addr() -> Result<SocketAddr> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map_err(|e| Error::Invalid(format!("no free loopback port: {e}")))
}

/// A control plane in a run of its own, torn down when dropped.
pub struct KubeRun {
    state: RunState,
    plane: Option<ControlPlane>,
}

impl KubeRun {
    /// Starts a control plane in a fresh run under `root`.
    pub fn start(root: &Path, progress: &dyn Fn(&str)) -> Result<KubeRun> {
        if !nix::unistd::Uid::effective().is_root() {
            return Err(Error::NotRoot);
        }
        let toolchain = Toolchain::locate()?;
        std::fs::create_dir_all(root).map_err(Error::io(root))?;
        let id = RunId::generate(root);
        let dir = root.join(id.as_str());
        std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
        let state = RunState::new(id, dir.clone());
        state.save()?;
        signals::register(dir.clone());
        let mut run = KubeRun { state, plane: None };
        let plane = ControlPlane::start(
            &toolchain,
            &Placement::Loopback,
            &dir.join("kube"),
            &mut run.state,
            progress,
        )?;
        run.plane = Some(plane);
        Ok(run)
    }

    /// The control plane.
    pub fn plane(&self) -> &ControlPlane {
        // Set by `start` before a `KubeRun` is returned.
        self.plane
            .as_ref()
            .expect("a started run has a control plane")
    }

    /// The control plane, mutably.
    pub fn plane_mut(&mut self) -> &mut ControlPlane {
        self.plane
            .as_mut()
            .expect("a started run has a control plane")
    }

    /// The run's state (its directory, processes).
    pub fn state(&self) -> &RunState {
        &self.state
    }

    /// The run's state, to record processes a test starts.
    pub fn state_mut(&mut self) -> &mut RunState {
        &mut self.state
    }

    /// Prints the end of every component's log.
    pub fn print_logs(&self) {
        if let Some(plane) = &self.plane {
            for (name, tail) in plane.log_tails(30) {
                eprintln!("----- {name} (last lines) -----\n{tail}");
            }
        }
    }
}

impl Drop for KubeRun {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_logs();
        }
        if let Some(mut plane) = self.plane.take() {
            plane.stop();
        }
        let report = cleanup::teardown(&self.state);
        signals::unregister(&self.state.dir);
        for e in &report.errors {
            eprintln!("teardown: {e}");
        }
    }
}
