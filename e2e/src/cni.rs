//! Attaching pods the way a container runtime does (what libcni does inside
//! containerd or CRI-O): read the node's active network config, run each
//! plugin of its chain with the `CNI_*` environment and its own config on
//! stdin, pass each result to the next plugin as `prevResult`, and on DEL
//! run the chain backwards with the ADD result.
//!
//! The node's primary network is Debian's `bridge` + `host-local`; the node
//! agent appends `weft-cni` to the same conflist, so the chain the harness
//! runs is exactly what a kubelet's runtime would run on that node. Plugins
//! run inside the node's namespace, so the pod bridge and the host ends of
//! the pods' veths live there.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::exec;
use crate::netns::Netns;
use crate::topology::POD_BRIDGE;

/// Where Debian's containernetworking-plugins are installed.
pub const DEBIAN_CNI_DIR: &str = "/usr/lib/cni";

/// The file the harness writes the node's primary network config to.
pub const PRIMARY_CONFLIST: &str = "10-weft-e2e.conflist";

/// The node's primary network, as a node's network provider would write it:
/// Debian's bridge plugin on the node's pod bridge with host-local IPAM, a
/// default route via the bridge (so a pod's connection to any address, a
/// Service VIP included, is routed, and thus reaches the pod's own redirect
/// rules), and no masquerading (pods talk to pods with their own addresses).
pub fn primary_conflist(subnet: &str, gateway: Ipv4Addr, ipam_dir: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "weft-e2e",
        "plugins": [{
            "type": "bridge",
            "bridge": POD_BRIDGE,
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": subnet, "gateway": gateway.to_string()}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": ipam_dir,
            },
        }],
    })
}

/// The active network config in `conf_dir`: the lexically first `*.conf`,
/// `*.conflist` or `*.json` (the one libcni picks), as a conflist.
pub fn active_conflist(conf_dir: &Path) -> Result<(PathBuf, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(conf_dir)
        .map_err(Error::io(conf_dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "conf" | "conflist" | "json"))
        })
        .collect();
    files.sort();
    let path = files.into_iter().next().ok_or_else(|| Error::Missing {
        what: format!("a network config in {}", conf_dir.display()),
        hint: "the node's primary conflist was not written".into(),
    })?;
    let text = std::fs::read_to_string(&path).map_err(Error::io(&path))?;
    let mut conf: Value =
        serde_json::from_str(&text).map_err(|e| Error::decode(path.display().to_string(), e))?;
    if conf.get("plugins").is_none() {
        // A single-plugin .conf is a list of one.
        let name = conf["name"].clone();
        let version = conf["cniVersion"].clone();
        conf = json!({"cniVersion": version, "name": name, "plugins": [conf]});
    }
    Ok((path, conf))
}

/// The plugin types of a conflist, in order.
pub fn plugin_types(conflist: &Value) -> Vec<String> {
    conflist["plugins"]
        .as_array()
        .map(|plugins| {
            plugins
                .iter()
                .filter_map(|p| p["type"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// A pod as the runtime names it to CNI.
#[derive(Clone, Debug)]
pub struct CniPod<'a> {
    /// Kubernetes namespace.
    pub namespace: &'a str,
    /// Name.
    pub name: &'a str,
    /// `metadata.uid`.
    pub uid: &'a str,
    /// The sandbox's netns path (`CNI_NETNS`).
    pub netns_path: &'a Path,
}

impl CniPod<'_> {
    /// `CNI_CONTAINERID`: the sandbox id.
    pub fn container_id(&self) -> String {
        format!("sandbox-{}", self.uid)
    }

    /// `CNI_ARGS` as the kubelet's runtime sets them.
    pub fn cni_args(&self) -> String {
        format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
            self.namespace,
            self.name,
            self.container_id(),
            self.uid
        )
    }
}

/// ADD or DEL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CniCommand {
    /// Attach.
    Add,
    /// Detach.
    Del,
}

impl CniCommand {
    fn as_str(self) -> &'static str {
        match self {
            CniCommand::Add => "ADD",
            CniCommand::Del => "DEL",
        }
    }
}

/// What a chain run produced.
#[derive(Clone, Debug)]
pub struct ChainOutput {
    /// The final result (ADD), the input to DEL's `prevResult`.
    pub result: String,
    /// The plugins run, in order.
    pub plugins: Vec<String>,
}

/// How a plugin is run inside `node`: directly, or (with `view`, pairs of
/// a node directory and where a host has it) in a mount namespace of its
/// own where the node's directories are at the host's paths, so a path in
/// a plugin's config means on the harness' node what it means on a host.
fn plugin_command(
    node: &Netns,
    binary: &Path,
    view: &[(PathBuf, PathBuf)],
) -> std::process::Command {
    if view.is_empty() {
        return node.command(binary);
    }
    // A mount namespace of its own, a slave of the machine's: the binds
    // stay in it and end with the plugin.
    let mut cmd = node.command("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "slave",
        "/bin/sh",
        "-c",
        r#"set -e; b="$1"; shift; while [ $# -ge 2 ]; do mkdir -p "$2"; mount --bind "$1" "$2"; shift 2; done; exec "$b""#,
        "sh",
    ])
    .arg(binary);
    for (source, at) in view {
        cmd.arg(source).arg(at);
    }
    cmd
}

/// Runs `command` for `pod` through `conflist`, looking plugins up in
/// `cni_path`, inside `node` (and its `view`, see [`plugin_command`]).
/// `prev` is the ADD result, for DEL.
pub fn run_chain(
    node: &Netns,
    view: &[(PathBuf, PathBuf)],
    conflist: &Value,
    cni_path: &[PathBuf],
    command: CniCommand,
    pod: &CniPod<'_>,
    prev: Option<&str>,
) -> Result<ChainOutput> {
    let mut plugins: Vec<Value> = conflist["plugins"].as_array().cloned().unwrap_or_default();
    if command == CniCommand::Del {
        plugins.reverse();
    }
    let path_var =
        std::env::join_paths(cni_path).map_err(|e| Error::Invalid(format!("CNI_PATH: {e}")))?;
    let mut prev_result: Option<Value> = match prev {
        Some(p) => Some(serde_json::from_str(p).map_err(|e| Error::decode("the ADD result", e))?),
        None => None,
    };
    let mut out = ChainOutput {
        result: String::new(),
        plugins: Vec::new(),
    };
    let pod_name = format!("{}/{}", pod.namespace, pod.name);
    for plugin in plugins {
        let kind = plugin["type"]
            .as_str()
            .ok_or_else(|| Error::decode("the conflist", "a plugin without a type"))?
            .to_string();
        let binary = cni_path
            .iter()
            .map(|d| d.join(&kind))
            .find(|p| p.is_file())
            .ok_or_else(|| Error::Missing {
                what: format!("CNI plugin {kind}"),
                hint: format!("not found in {}", path_var.to_string_lossy()),
            })?;
        let mut conf = plugin.clone();
        conf["cniVersion"] = conflist["cniVersion"].clone();
        conf["name"] = conflist["name"].clone();
        if let Some(prev) = &prev_result {
            conf["prevResult"] = prev.clone();
        }
        let stdin = serde_json::to_vec(&conf).map_err(|e| Error::decode("a plugin config", e))?;
        let mut cmd = plugin_command(node, &binary, view);
        cmd.env("CNI_COMMAND", command.as_str())
            .env("CNI_CONTAINERID", pod.container_id())
            .env("CNI_NETNS", pod.netns_path)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", &path_var)
            .env("CNI_ARGS", pod.cni_args());
        let output = exec::output_with_stdin(&mut cmd, &stdin)?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        out.plugins.push(kind.clone());
        if !output.status.success() {
            return Err(Error::Cni {
                command: command.as_str().into(),
                pod: pod_name,
                plugin: kind,
                output: format!(
                    "{}{}",
                    stdout.trim(),
                    String::from_utf8_lossy(&output.stderr).trim()
                ),
            });
        }
        if command == CniCommand::Add {
            prev_result = Some(
                serde_json::from_str(&stdout)
                    .map_err(|e| Error::decode(format!("the result of CNI plugin {kind}"), e))?,
            );
            out.result = stdout;
        }
    }
    Ok(out)
}

/// The first IPv4 address of a CNI result.
pub fn result_ipv4(result: &str) -> Result<Ipv4Addr> {
    let v: Value = serde_json::from_str(result).map_err(|e| Error::decode("a CNI result", e))?;
    v["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str()?.split('/').next()?.parse().ok())
        .next()
        .ok_or_else(|| Error::decode("a CNI result", format!("no IPv4 address in {result}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_address() {
        let r = r#"{"cniVersion":"1.0.0","ips":[{"address":"10.244.1.5/24","gateway":"10.244.1.1","interface":2}]}"#;
        assert_eq!(result_ipv4(r).expect("ip"), Ipv4Addr::new(10, 244, 1, 5));
        assert!(result_ipv4(r#"{"ips":[]}"#).is_err());
        assert!(result_ipv4("not json").is_err());
    }

    #[test]
    fn single_conf_is_a_list_of_one() {
        let dir = std::env::temp_dir().join(format!("weft-e2e-cni-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(
            dir.join("20-b.conf"),
            r#"{"cniVersion":"1.0.0","name":"n","type":"bridge"}"#,
        )
        .expect("write");
        let (path, conf) = active_conflist(&dir).expect("active");
        assert!(path.ends_with("20-b.conf"));
        assert_eq!(plugin_types(&conf), vec!["bridge".to_string()]);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
