//! The controller: `weft-controller --registry files` in the `ctl`
//! namespace on the underlay, watching the run's manifest directory, with
//! its root CA in `<run>/controller/ca` (created at first start), one
//! bootstrap token per node in `<run>/controller/tokens/nodes/<node>` and
//! one per waypoint in `<run>/controller/tokens/waypoints/<ns>/<sa>`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::addresses::CONTROLLER_IP;
use crate::error::{Error, Result};
use crate::http;
use crate::netns::Netns;
use crate::process::ManagedProcess;

/// gRPC (config stream + CA), TLS.
pub const GRPC_PORT: u16 = 15012;
/// Prometheus metrics.
pub const METRICS_PORT: u16 = 15014;
/// The debug API (`/model`, `/subscribers`, `/registry`, `/healthz/ready`),
/// on 127.0.0.1 inside the controller's namespace.
pub const DEBUG_PORT: u16 = 15000;

/// How long the controller may take to load the manifests.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The controller's files and how to start it.
#[derive(Debug)]
pub struct Controller {
    netns: Netns,
    dir: PathBuf,
    manifests: PathBuf,
    binary: PathBuf,
    process: Option<ManagedProcess>,
    starts: u32,
}

impl Controller {
    /// A controller in `netns` keeping its files in `dir`, not started yet.
    pub fn new(netns: Netns, dir: &Path, manifests: &Path, binary: &Path) -> Result<Controller> {
        for sub in ["ca", "tokens/nodes", "tokens/waypoints"] {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d).map_err(Error::io(&d))?;
        }
        Ok(Controller {
            netns,
            dir: dir.to_path_buf(),
            manifests: manifests.to_path_buf(),
            binary: binary.to_path_buf(),
            process: None,
            starts: 0,
        })
    }

    /// Its namespace.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// Its address on the underlay.
    pub fn ip(&self) -> Ipv4Addr {
        CONTROLLER_IP
    }

    /// The URL proxies reach it at.
    pub fn url(&self) -> String {
        format!("https://{CONTROLLER_IP}:{GRPC_PORT}")
    }

    /// The root certificate: proxies verify the controller's TLS with it,
    /// and it is the mesh's trust anchor. Exists after the first start.
    pub fn root_cert(&self) -> PathBuf {
        self.dir.join("ca/root-cert.pem")
    }

    /// The bootstrap token file of `node`.
    pub fn token_file(&self, node: &str) -> PathBuf {
        self.dir.join("tokens/nodes").join(node)
    }

    /// Creates `node`'s bootstrap token.
    pub fn create_token(&self, node: &str) -> Result<PathBuf> {
        self.write_token(&self.token_file(node))
    }

    /// The bootstrap token file of the waypoint running as service account
    /// `namespace/service_account`.
    pub fn waypoint_token_file(&self, namespace: &str, service_account: &str) -> PathBuf {
        self.dir
            .join("tokens/waypoints")
            .join(namespace)
            .join(service_account)
    }

    /// Creates the bootstrap token of the waypoint running as
    /// `namespace/service_account` (the controller reads the token directory
    /// at every call, so this works while it runs).
    pub fn create_waypoint_token(&self, namespace: &str, service_account: &str) -> Result<PathBuf> {
        let path = self.waypoint_token_file(namespace, service_account);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        }
        self.write_token(&path)
    }

    /// A fresh random token in `path`, written whole: a temporary file in
    /// the directory's root (which the controller does not read as tokens),
    /// then a rename.
    fn write_token(&self, path: &Path) -> Result<PathBuf> {
        use rand::Rng;
        let token: String = (0..32)
            .map(|_| format!("{:x}", rand::rng().random_range(0..16u8)))
            .collect();
        let tmp = self.dir.join("tokens/.token.tmp");
        // Owner-only from the start: a token is a credential, and the
        // harness's files live in a shared temporary directory.
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(Error::io(&tmp))?;
            file.write_all(token.as_bytes()).map_err(Error::io(&tmp))?;
        }
        std::fs::rename(&tmp, path).map_err(Error::io(path))?;
        Ok(path.to_path_buf())
    }

    /// Its log file.
    pub fn log(&self) -> PathBuf {
        self.dir.join("controller.log")
    }

    /// Its process, while running.
    pub fn process(&self) -> Option<&ManagedProcess> {
        self.process.as_ref()
    }

    /// Starts it and waits until it has loaded the manifests.
    pub fn start(&mut self) -> Result<&ManagedProcess> {
        if self
            .process
            .as_mut()
            .is_some_and(|p| p.exit_status().is_none())
        {
            return Err(Error::Invalid("the controller is already running".into()));
        }
        let mut cmd = self.netns.command(&self.binary);
        cmd.args(["--registry", "files", "--manifests"])
            .arg(&self.manifests)
            .arg("--ca-dir")
            .arg(self.dir.join("ca"))
            .arg("--bootstrap-tokens")
            .arg(self.dir.join("tokens"))
            .args([
                "--grpc-addr",
                &format!("0.0.0.0:{GRPC_PORT}"),
                "--metrics-addr",
                &format!("0.0.0.0:{METRICS_PORT}"),
                "--debug-addr",
                &format!("127.0.0.1:{DEBUG_PORT}"),
                "--serving-ips",
                &format!("{CONTROLLER_IP},127.0.0.1"),
            ]);
        self.starts += 1;
        super::log_env(&mut cmd);
        let mut process = ManagedProcess::spawn("controller", cmd, &self.log())?;
        let netns = &self.netns;
        process.wait_ready("ready on /healthz/ready", READY_TIMEOUT, || {
            get(netns, "/healthz/ready").is_ok_and(|r| r.status == 200)
        })?;
        Ok(self.process.insert(process))
    }

    /// Stops it (SIGTERM, then SIGKILL).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.stop(Duration::from_secs(3));
        }
    }

    /// Leaves it running when the harness exits (`--keep`).
    pub fn detach(&mut self) {
        if let Some(p) = self.process.take() {
            p.detach();
        }
    }

    /// GET `path` from its debug API.
    pub fn debug(&self, path: &str) -> Result<http::Response> {
        get(&self.netns, path)
    }

    /// The model it serves (`/model`).
    pub fn model(&self) -> Result<serde_json::Value> {
        let response = self.debug("/model")?;
        if response.status != 200 {
            return Err(Error::Invalid(format!(
                "controller /model answered {}: {}",
                response.status, response.body
            )));
        }
        response.json()
    }
}

fn get(netns: &Netns, path: &str) -> Result<http::Response> {
    http::get(
        Some(netns),
        SocketAddr::from(([127, 0, 0, 1], DEBUG_PORT)),
        path,
    )
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// Security finding 11: bootstrap tokens were written world-readable.
    #[test]
    fn bootstrap_tokens_are_owner_only() {
        let name = format!("wtok{}", std::process::id() % 100_000);
        let netns = Netns::create(&name).expect("netns (tests run as root)");
        let dir = std::env::temp_dir().join(format!("weft-token-test-{name}"));
        let controller =
            Controller::new(netns, &dir, &dir.join("manifests"), Path::new("/bin/true"))
                .expect("controller dir");
        let node = controller.create_token("node-1").expect("node token");
        let waypoint = controller
            .create_waypoint_token("shop", "waypoint")
            .expect("waypoint token");
        for path in [node, waypoint] {
            let mode = std::fs::metadata(&path)
                .expect("token")
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o600, "{} is {mode:o}", path.display());
        }
        let _ = std::fs::remove_dir_all(&dir);
        let _ = Netns::delete(&name);
    }
}
