//! Finding (and, from a source checkout, building) the binaries a cluster
//! runs: the controller, the node agent and its CNI plugin, ztunnel, the
//! waypoint, the sample workload.
//!
//! They are looked for beside the running executable (for a test binary in
//! `target/<profile>/deps/`, in `target/<profile>/`), or in
//! `WEFT_E2E_BIN_DIR`. Tests and the demo call [`Binaries::build`] first, so
//! they always run what the source says, not a stale binary; that is a no-op
//! when everything is fresh.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::exec;

/// The controller.
pub const CONTROLLER: &str = "weft-controller";
/// The node agent.
pub const NODE_AGENT: &str = "weft-node-agent";
/// The chained CNI plugin (installed by the node agent).
pub const CNI_PLUGIN: &str = "weft-cni";
/// The node proxy.
pub const ZTUNNEL: &str = "ztunnel";
/// The L7 proxy, run for each Gateway of class `weft-waypoint`.
pub const WAYPOINT: &str = "waypoint";
/// The CLI.
pub const WEFTCTL: &str = "weftctl";
/// The sample workload of this crate.
pub const APP: &str = "weft-e2e-app";

/// The packages whose binaries every cluster needs.
const REQUIRED_PACKAGES: &[&str] = &["weft-controller", "weft-cni", "weft-node-agent", "weft-e2e"];
/// Packages whose binaries are used when they build (they are being written).
const OPTIONAL_PACKAGES: &[&str] = &["weft-ztunnel", "weft-waypoint", "weftctl"];

/// A directory of weft binaries.
#[derive(Clone, Debug)]
pub struct Binaries {
    dir: PathBuf,
    /// Binaries taken from elsewhere than `dir`.
    overrides: Vec<(String, PathBuf)>,
}

impl Binaries {
    /// `WEFT_E2E_BIN_DIR`, or the directory of the running executable.
    pub fn locate() -> Result<Binaries> {
        if let Some(dir) = std::env::var_os("WEFT_E2E_BIN_DIR") {
            return Ok(Binaries::in_dir(dir));
        }
        let exe = std::env::current_exe().map_err(Error::io("/proc/self/exe"))?;
        let mut dir = exe
            .parent()
            .map(Path::to_path_buf)
            .ok_or_else(|| Error::Invalid(format!("{} has no directory", exe.display())))?;
        if dir.file_name().is_some_and(|n| n == "deps") {
            dir.pop();
        }
        Ok(Binaries::in_dir(dir))
    }

    /// A specific directory.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Binaries {
        Binaries {
            dir: dir.into(),
            overrides: Vec::new(),
        }
    }

    /// Runs binary `name` from `path` instead of from the directory (the
    /// benchmarks measure ztunnel as it ships, built with `--profile dist`).
    pub fn with_binary(mut self, name: &str, path: impl Into<PathBuf>) -> Binaries {
        self.overrides.retain(|(n, _)| n != name);
        self.overrides.push((name.to_owned(), path.into()));
        self
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of binary `name` (it may not exist).
    pub fn path(&self, name: &str) -> PathBuf {
        self.overrides
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.clone())
            .unwrap_or_else(|| self.dir.join(name))
    }

    /// True when binary `name` exists.
    pub fn has(&self, name: &str) -> bool {
        self.path(name).is_file()
    }

    /// The path of `name`, or an error saying how to build it.
    pub fn require(&self, name: &str) -> Result<PathBuf> {
        let path = self.path(name);
        if path.is_file() {
            return Ok(path);
        }
        Err(Error::Missing {
            what: path.display().to_string(),
            hint: format!(
                "build it with `cargo build{} --workspace --bins`, or point WEFT_E2E_BIN_DIR at a directory holding it",
                self.profile_flag()
                    .map(|f| format!(" {f}"))
                    .unwrap_or_default()
            ),
        })
    }

    /// Builds the binaries with cargo, in the profile of this directory, when
    /// running from the source checkout this crate was built in (otherwise,
    /// and when `WEFT_E2E_NO_BUILD` is set, it only checks they exist).
    /// Optional components that do not build yet are skipped with a note. If
    /// the build fails (a teammate's half-done change in a shared checkout)
    /// but the binaries exist, they are used, with a warning. Runs cargo once
    /// per process.
    pub fn build(&self, progress: &dyn Fn(&str)) -> Result<()> {
        static BUILT: Mutex<Option<Vec<String>>> = Mutex::new(None);
        if let Some(workspace) = buildable_workspace() {
            let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
            let notes = built.get_or_insert_with(|| {
                let mut notes = Vec::new();
                progress("building the weft binaries (cargo build --bins)");
                if let Err(e) = self.cargo_build(&workspace, REQUIRED_PACKAGES) {
                    notes.push(format!(
                        "cargo build failed; using the binaries already in {}: {e}",
                        self.dir.display()
                    ));
                }
                for package in OPTIONAL_PACKAGES {
                    if let Err(e) = self.cargo_build(&workspace, &[package]) {
                        notes.push(format!(
                            "{package} does not build; running without it if missing: {e}"
                        ));
                    }
                }
                notes
            });
            for note in notes.iter() {
                progress(&first_lines(note, 6));
            }
        }
        for name in [CONTROLLER, NODE_AGENT, CNI_PLUGIN, APP] {
            self.require(name)?;
        }
        Ok(())
    }

    fn cargo_build(&self, workspace: &Path, packages: &[&str]) -> Result<()> {
        cargo_build(workspace, packages, self.profile_flag().as_deref())
    }

    /// Builds `package` with cargo profile `profile` into the sibling
    /// directory of this one and runs binary `name` from there. From a
    /// source checkout only: with `WEFT_E2E_BIN_DIR` or `WEFT_E2E_NO_BUILD`
    /// set, the directory's own binary is kept.
    pub fn with_profile_build(
        self,
        package: &str,
        name: &str,
        profile: &str,
        progress: &dyn Fn(&str),
    ) -> Result<Binaries> {
        let (Some(workspace), Some(target)) = (buildable_workspace(), self.dir.parent()) else {
            return Ok(self);
        };
        progress(&format!(
            "building {package} with --profile {profile} (a few minutes the first time)"
        ));
        cargo_build(
            &workspace,
            &[package],
            Some(&format!("--profile {profile}")),
        )?;
        let path = target.join(profile).join(name);
        Ok(self.with_binary(name, path))
    }

    /// The cargo flag selecting this directory's profile (`target/debug` is
    /// the default profile and needs none).
    fn profile_flag(&self) -> Option<String> {
        match self.dir.file_name()?.to_str()? {
            "debug" => None,
            "release" => Some("--release".into()),
            other => Some(format!("--profile {other}")),
        }
    }
}

/// The source checkout this crate was built in, when binaries may be built
/// from it: not with `WEFT_E2E_NO_BUILD` or `WEFT_E2E_BIN_DIR` set.
fn buildable_workspace() -> Option<PathBuf> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    (std::env::var_os("WEFT_E2E_NO_BUILD").is_none()
        && std::env::var_os("WEFT_E2E_BIN_DIR").is_none()
        && workspace.join("Cargo.toml").is_file())
    .then_some(workspace)
}

fn cargo_build(workspace: &Path, packages: &[&str], profile_flag: Option<&str>) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args(["build", "--quiet", "--bins"]);
    for p in packages {
        cmd.args(["-p", p]);
    }
    if let Some(flag) = profile_flag {
        cmd.args(flag.split(' '));
    }
    exec::run(&mut cmd).map(|_| ())
}

fn first_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() <= n {
        text.to_string()
    } else {
        format!(
            "{}\n  ... ({} more lines)",
            lines[..n].join("\n"),
            lines.len() - n
        )
    }
}
