//! Where the control plane's binary and the Gateway API CRDs come from:
//! `scripts/build-kube.sh`, which builds them once per machine into a cache
//! outside the clone (docs/e2e.md). `WEFT_KUBE_DIR` names a directory made
//! by that script and skips it.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Error, Result};
use crate::exec;

/// The control plane's files on this machine.
#[derive(Clone, Debug)]
pub struct Toolchain {
    dir: PathBuf,
    /// The network namespace every command runs in (the control plane's,
    /// when it lives on the cluster's underlay), or the harness' own.
    netns: Option<String>,
}

impl Toolchain {
    /// Finds (building on first use) the control plane for this checkout.
    pub fn locate() -> Result<Toolchain> {
        if let Some(dir) = std::env::var_os("WEFT_KUBE_DIR") {
            return Toolchain::in_dir(PathBuf::from(dir));
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-kube.sh");
        // The script's progress goes to this process' stderr: a cold build
        // takes minutes and says so.
        let out = exec::run(Command::new(&script).stderr(std::process::Stdio::inherit()))?;
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Toolchain::in_dir(PathBuf::from(dir))
    }

    fn in_dir(dir: PathBuf) -> Result<Toolchain> {
        let toolchain = Toolchain { dir, netns: None };
        for needed in [
            toolchain.binary(),
            toolchain.gateway_api_crds(),
            toolchain.dns_binary(),
        ] {
            if !needed.exists() {
                return Err(Error::Missing {
                    what: needed.display().to_string(),
                    hint: "run scripts/build-kube.sh (make test and make demo do)".into(),
                });
            }
        }
        Ok(toolchain)
    }

    /// The multi-call binary: `weft-kube COMPONENT ARGS...`.
    pub fn binary(&self) -> PathBuf {
        self.dir.join("weft-kube")
    }

    /// The cluster DNS (CoreDNS), run for the DNS add-on's image.
    pub fn dns_binary(&self) -> PathBuf {
        self.dir.join("weft-dns")
    }

    /// The pinned Gateway API standard-channel CRDs.
    pub fn gateway_api_crds(&self) -> PathBuf {
        self.dir.join("gateway-api")
    }

    /// The same toolchain, its commands run inside network namespace
    /// `netns` (where the API server is reachable).
    pub fn in_netns(&self, netns: &str) -> Toolchain {
        Toolchain {
            dir: self.dir.clone(),
            netns: Some(netns.to_string()),
        }
    }

    /// The network namespace its commands run in, if not the harness' own.
    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    /// A command running `component` of the control plane.
    pub fn command(&self, component: &str) -> Command {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns]).arg(self.binary());
                cmd
            }
            None => Command::new(self.binary()),
        };
        cmd.arg(component);
        cmd
    }
}
