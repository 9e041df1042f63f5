//! kubectl, at the control plane's own release, run as a user would: every
//! call is a real `kubectl` process with a kubeconfig.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::toolchain::Toolchain;
use crate::error::{Error, Result};
use crate::exec;

/// kubectl with one identity's kubeconfig.
#[derive(Clone, Debug)]
pub struct Kubectl {
    toolchain: Toolchain,
    kubeconfig: PathBuf,
}

impl Kubectl {
    /// kubectl as the user of `kubeconfig`.
    pub fn new(toolchain: &Toolchain, kubeconfig: &Path) -> Kubectl {
        Kubectl {
            toolchain: toolchain.clone(),
            kubeconfig: kubeconfig.to_path_buf(),
        }
    }

    /// The kubeconfig it uses.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The command for `args`, ready to run.
    pub fn command<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Command {
        let mut cmd = self.toolchain.command("kubectl");
        cmd.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        cmd
    }

    /// Runs `kubectl args...`; a non-zero exit is an error quoting stderr.
    /// Returns stdout.
    pub fn run<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Result<String> {
        let out = exec::run(&mut self.command(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `kubectl args...` whatever its exit status: for commands that
    /// are expected to be refused.
    pub fn output<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Result<Output> {
        exec::output(&mut self.command(args))
    }

    /// `kubectl apply -f -` of `manifest`; returns what kubectl printed, or
    /// the refusal.
    pub fn apply(&self, manifest: &str) -> Result<String> {
        self.apply_args(manifest, &["apply", "-f", "-"])
    }

    /// `kubectl apply --server-side` of `manifest` as `field_manager` (as
    /// weftctl or a controller applies).
    pub fn apply_as(&self, manifest: &str, field_manager: &str) -> Result<String> {
        let manager = format!("--field-manager={field_manager}");
        self.apply_args(manifest, &["apply", "--server-side", &manager, "-f", "-"])
    }

    fn apply_args(&self, manifest: &str, args: &[&str]) -> Result<String> {
        let mut cmd = self.command(args);
        let out = exec::output_with_stdin(&mut cmd, manifest.as_bytes())?;
        if !out.status.success() {
            return Err(Error::Command {
                command: exec::describe(&cmd),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `kubectl wait -n <namespace> --for=condition=<condition> <object>`,
    /// for at most `seconds`.
    pub fn wait_for(
        &self,
        namespace: &str,
        condition: &str,
        object: &str,
        seconds: u32,
    ) -> Result<()> {
        self.run(&[
            "wait",
            "-n",
            namespace,
            &format!("--for=condition={condition}"),
            object,
            &format!("--timeout={seconds}s"),
        ])
        .map(|_| ())
    }

    /// `kubectl get ... -o json`, decoded.
    pub fn get_json<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Result<serde_json::Value> {
        let mut all: Vec<std::ffi::OsString> = vec!["get".into()];
        all.extend(args.iter().map(|a| a.as_ref().to_os_string()));
        all.extend(["-o".into(), "json".into()]);
        let text = self.run(&all)?;
        serde_json::from_str(&text).map_err(|e| Error::decode("kubectl get -o json", e))
    }

    /// The cluster IP of Service `namespace/name`.
    pub fn cluster_ip(&self, namespace: &str, name: &str) -> Result<String> {
        let ip = self.run(&[
            "get",
            "service",
            "-n",
            namespace,
            name,
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])?;
        Ok(ip.trim().to_string())
    }
}
