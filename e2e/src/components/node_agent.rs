//! The node agent: `weft-node-agent run --registry files` in a node's
//! namespace, with the node's CNI directories under `<run>/nodes/<node>/`.
//! It installs `weft-cni` into the node's CNI bin dir and appends it to the
//! node's conflist; it is ready when that is done and its request socket
//! exists (the plugin's first request then meets an agent that knows the
//! namespaces).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::cni;
use crate::error::Result;
use crate::netns::Netns;
use crate::process::ManagedProcess;

/// How long the agent may take to install the plugin.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A node's files, as the agent (and the runtime) use them.
#[derive(Clone, Debug)]
pub struct NodeLayout {
    /// `<run>/nodes/<node>`.
    pub dir: PathBuf,
}

impl NodeLayout {
    /// The CNI plugin binary dir the agent installs `weft-cni` into.
    pub fn cni_bin_dir(&self) -> PathBuf {
        self.dir.join("cni/bin")
    }
    /// The CNI config dir (the primary conflist, rewritten by the agent).
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.dir.join("cni/net.d")
    }
    /// host-local's allocations.
    pub fn ipam_dir(&self) -> PathBuf {
        self.dir.join("cni/ipam")
    }
    /// The agent's state (the original conflist).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("agent-state")
    }
    /// The agent's request socket (plugin, coverage).
    pub fn agent_socket(&self) -> PathBuf {
        self.dir.join("cni.sock")
    }
    /// Where the agent pins the local-leg bypass (a BPF filesystem it
    /// mounts; the run's teardown unmounts it).
    pub fn bpf_pin_dir(&self) -> PathBuf {
        self.dir.join("bpf")
    }
    /// The handoff socket ztunnel connects to.
    pub fn handoff_socket(&self) -> PathBuf {
        self.dir.join("ztunnel-handoff.sock")
    }
    /// The enrollment cache the plugin falls back on.
    pub fn enrollment_cache(&self) -> PathBuf {
        self.dir.join("enrollment.json")
    }
    /// The agent's log.
    pub fn agent_log(&self) -> PathBuf {
        self.dir.join("node-agent.log")
    }
    /// The log of the node's `instance`th ztunnel (0: the first; restarts
    /// start new instances beside the old ones).
    pub fn ztunnel_log(&self, instance: u32) -> PathBuf {
        match instance {
            0 => self.dir.join("ztunnel.log"),
            n => self.dir.join(format!("ztunnel-{n}.log")),
        }
    }
    /// The admin API socket of the current ztunnel (reachable from outside
    /// the node's netns): a symlink to the current instance's socket.
    pub fn ztunnel_admin_socket(&self) -> PathBuf {
        self.dir.join("ztunnel-admin.sock")
    }
    /// The admin API socket of ztunnel `instance` itself: while two run
    /// side by side, only this says which one answers.
    pub fn ztunnel_instance_socket(&self, instance: u32) -> PathBuf {
        self.dir.join(format!("ztunnel-admin-{instance}.sock"))
    }
    /// Where the CNI chain finds plugins: Debian's, then weft's.
    pub fn cni_path(&self) -> Vec<PathBuf> {
        vec![PathBuf::from(cni::DEBIAN_CNI_DIR), self.cni_bin_dir()]
    }

    /// Creates the directories.
    pub fn create(&self) -> Result<()> {
        for d in [
            self.cni_bin_dir(),
            self.cni_conf_dir(),
            self.ipam_dir(),
            self.state_dir(),
        ] {
            std::fs::create_dir_all(&d).map_err(crate::error::Error::io(&d))?;
        }
        Ok(())
    }
}

/// What the agent needs to know.
#[derive(Clone, Debug)]
pub struct AgentLaunch<'a> {
    /// `spec.nodeName` of the node's pods.
    pub node: &'a str,
    /// The node's files.
    pub layout: &'a NodeLayout,
    /// The manifest directory.
    pub manifests: &'a std::path::Path,
    /// The agent binary.
    pub binary: &'a std::path::Path,
    /// The `weft-cni` binary it installs.
    pub plugin: &'a std::path::Path,
    /// The node's probe source: its pod bridge address.
    pub probe_source: std::net::Ipv4Addr,
    /// `auto`, `nftables` or `iptables`.
    pub backend: &'a str,
    /// `--local-bypass auto` rather than the default `off`.
    pub local_bypass: bool,
}

/// The agent's command line, run inside `node`.
pub fn command(node: &Netns, launch: &AgentLaunch<'_>) -> Command {
    let l = launch.layout;
    let mut cmd = node.command(launch.binary);
    cmd.args(["run", "--node", launch.node, "--registry", "files"])
        .arg("--manifests")
        .arg(launch.manifests)
        .arg("--cni-bin-dir")
        .arg(l.cni_bin_dir())
        .arg("--cni-conf-dir")
        .arg(l.cni_conf_dir())
        .arg("--state-dir")
        .arg(l.state_dir())
        .arg("--plugin-binary")
        .arg(launch.plugin)
        .arg("--agent-socket")
        .arg(l.agent_socket())
        .arg("--handoff-socket")
        .arg(l.handoff_socket())
        .arg("--enrollment-cache")
        .arg(l.enrollment_cache())
        .args([
            "--probe-source",
            &launch.probe_source.to_string(),
            "--backend",
            launch.backend,
            "--resync-seconds",
            "2",
            "--local-bypass",
            if launch.local_bypass { "auto" } else { "off" },
        ])
        .arg("--bpf-pin-dir")
        .arg(l.bpf_pin_dir());
    super::log_env(&mut cmd);
    cmd
}

/// Waits until the agent has installed `weft-cni` at the end of the node's
/// conflist and listens on its request socket.
pub fn wait_ready(process: &mut ManagedProcess, layout: &NodeLayout) -> Result<()> {
    process.wait_ready("weft-cni installed", READY_TIMEOUT, || {
        layout.agent_socket().exists()
            && layout.cni_bin_dir().join("weft-cni").is_file()
            && cni::active_conflist(&layout.cni_conf_dir()).is_ok_and(|(_, c)| {
                cni::plugin_types(&c)
                    .last()
                    .is_some_and(|t| t == "weft-cni")
            })
    })
}

/// Asks the agent for its coverage report (`weft-node-agent coverage`):
/// JSON, and whether it reports no drift.
pub fn coverage(
    binary: &std::path::Path,
    layout: &NodeLayout,
) -> Result<(serde_json::Value, bool)> {
    let out = crate::exec::output(
        Command::new(binary)
            .arg("coverage")
            .arg("--agent-socket")
            .arg(layout.agent_socket()),
    )?;
    let report = serde_json::from_slice(&out.stdout).map_err(|e| {
        crate::error::Error::decode(
            "the coverage report",
            format!("{e}: {}", String::from_utf8_lossy(&out.stderr).trim()),
        )
    })?;
    Ok((report, out.status.success()))
}
