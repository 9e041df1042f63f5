//! Helm, built from Go modules by `scripts/build-helm.sh` (once per
//! machine, cached in `/var/cache/weft/helm-<key>`), run as users run it:
//! a real `helm` process with the cluster admin's kubeconfig, from where the
//! API server is reachable (the control plane's namespace in a kube
//! cluster).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::control_plane::ControlPlane;
use crate::error::{Error, Result};
use crate::exec;

/// The repository's chart, the one source of deploy/base.
pub fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/charts/weft")
}

/// The helm binary: `$WEFT_HELM`, else what `scripts/build-helm.sh` built
/// (a hash when warm, minutes when cold; its progress goes to stderr).
pub fn binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("WEFT_HELM") {
        return Ok(PathBuf::from(path));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-helm.sh");
    let out = exec::run(Command::new(&script).stderr(std::process::Stdio::inherit()))?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::Missing {
            what: format!("helm at {}", path.display()),
            hint: "run scripts/build-helm.sh (or `make helm`)".into(),
        })
    }
}

/// helm against one control plane, as its admin.
#[derive(Clone, Debug)]
pub struct Helm {
    binary: PathBuf,
    netns: Option<String>,
    kubeconfig: PathBuf,
    home: PathBuf,
}

impl Helm {
    /// helm for `plane`; its caches and config live beside the kubeconfig,
    /// never in the machine's `~/.config/helm`.
    pub fn new(plane: &ControlPlane) -> Result<Helm> {
        let kubeconfig = plane.kubectl().kubeconfig().to_path_buf();
        let home = kubeconfig
            .parent()
            .map(|d| d.join("helm"))
            .ok_or_else(|| Error::Invalid("the kubeconfig has no directory".into()))?;
        std::fs::create_dir_all(&home).map_err(Error::io(&home))?;
        Ok(Helm {
            binary: binary()?,
            netns: plane.toolchain().netns().map(str::to_string),
            kubeconfig,
            home,
        })
    }

    /// The command for `args`, ready to run.
    pub fn command<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Command {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns]).arg(&self.binary);
                cmd
            }
            None => Command::new(&self.binary),
        };
        for (var, dir) in [
            ("HELM_CACHE_HOME", "cache"),
            ("HELM_CONFIG_HOME", "config"),
            ("HELM_DATA_HOME", "data"),
        ] {
            cmd.env(var, self.home.join(dir));
        }
        cmd.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        cmd
    }

    /// Runs `helm args...` whatever its exit status.
    pub fn output<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Result<Output> {
        exec::output(&mut self.command(args))
    }
}
