//! weftctl run as users run it: a process with a kubeconfig, nothing
//! inherited from the caller's environment.

use std::path::{Path, PathBuf};
use std::process::Command;

/// What one weftctl process did.
pub struct Ran {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// Asserts exit 0.
    pub fn ok(self, what: &str) -> Ran {
        assert_eq!(
            self.code,
            Some(0),
            "weftctl {what}: exit {:?}\nstdout: {}\nstderr: {}",
            self.code,
            self.stdout,
            self.stderr
        );
        self
    }

    /// stdout as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

/// weftctl with one kubeconfig.
pub struct Weftctl {
    binary: PathBuf,
    kubeconfig: PathBuf,
    /// Where the API server is reachable from (a kube cluster's control
    /// plane namespace), if not here.
    netns: Option<String>,
}

impl Weftctl {
    pub fn new(kubeconfig: &Path) -> Weftctl {
        let binary = weft_e2e::binaries::Binaries::locate()
            .and_then(|b| b.require(weft_e2e::binaries::WEFTCTL))
            .expect("weftctl built (cargo build --workspace --bins)");
        Weftctl {
            binary,
            kubeconfig: kubeconfig.to_path_buf(),
            netns: None,
        }
    }

    /// weftctl as the admin of a kube cluster, run in its control plane's
    /// namespace as its kubectl is.
    pub fn for_cluster(cluster: &weft_e2e::kube::KubeCluster) -> Weftctl {
        let plane = cluster.control_plane();
        Weftctl {
            netns: plane.toolchain().netns().map(str::to_string),
            ..Weftctl::new(plane.kubectl().kubeconfig())
        }
    }

    /// A command with no cluster chosen by the environment: neither a local
    /// run nor a kubeconfig leaks in from the caller's.
    fn bare(&self) -> Command {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns]).arg(&self.binary);
                cmd
            }
            None => Command::new(&self.binary),
        };
        for var in ["WEFT_RUN_DIR", "WEFT_MANIFESTS", "KUBECONFIG"] {
            cmd.env_remove(var);
        }
        cmd
    }

    fn output(cmd: &mut Command) -> Ran {
        let out = cmd.output().expect("run weftctl");
        Ran {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `weftctl --kubeconfig <it> args...`.
    pub fn run(&self, args: &[&str]) -> Ran {
        let mut cmd = self.bare();
        cmd.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        Weftctl::output(&mut cmd)
    }

    /// `KUBECONFIG=<it> weftctl args...`.
    pub fn run_with_env(&self, args: &[&str]) -> Ran {
        let mut cmd = self.bare();
        cmd.env("KUBECONFIG", &self.kubeconfig).args(args);
        Weftctl::output(&mut cmd)
    }
}
