//! What a node offers weft before it is installed (`weft-node-agent
//! preflight`, run by `weftctl check --pre` in a short-lived pod per node):
//! the CNI config the agent would chain weft-cni into, whether the plugins
//! it names are on the node, whether nftables or iptables work, and whether
//! the kernel takes the very rules the agent would install (weft redirects
//! with nat `redirect`, not TPROXY, so that is what is checked).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use weft_cni::report::NodeReport;

use crate::install::ConfInstaller;
use crate::probes::HostProbes;
use crate::redirect::{Backend, DEFAULT_PROBE_SOURCE, Redirector, check_nft};

/// Looks at `conf_dir` and `bin_dirs` and tries both rule tools.
pub fn gather(conf_dir: &Path, bin_dirs: &[PathBuf]) -> NodeReport {
    let mut report = NodeReport {
        nftables: works("nft", &["list", "tables"]),
        iptables: works("iptables", &["-t", "nat", "-L", "-n"]),
        ..NodeReport::default()
    };
    let installer = ConfInstaller::new(conf_dir, conf_dir, serde_json::Value::Null);
    match installer.active_config() {
        Ok(Some(path)) => {
            match std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|t| plugin_types(&t))
            {
                Ok(types) => report.plugins = types,
                Err(e) => report.cni_config_error = Some(e),
            }
            report.cni_config = Some(path);
        }
        Ok(None) => {
            report.cni_config_error = Some(format!(
                "no *.conf, *.conflist or *.json in {}",
                conf_dir.display()
            ))
        }
        Err(e) => report.cni_config_error = Some(e.to_string()),
    }
    report.rules_error = rules_refused(report.nftables, report.iptables);
    report.missing_plugins = report
        .plugins
        .iter()
        .filter(|t| *t != crate::install::PLUGIN_TYPE)
        .filter(|t| !bin_dirs.iter().any(|d| d.join(t).is_file()))
        .cloned()
        .collect();
    report
}

/// The `type` of every plugin of a config (a single `.conf` is its own).
fn plugin_types(text: &str) -> Result<Vec<String>, String> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let types: Vec<String> = match value.get("plugins").and_then(|p| p.as_array()) {
        Some(plugins) => plugins
            .iter()
            .filter_map(|p| p["type"].as_str().map(str::to_string))
            .collect(),
        None => value["type"]
            .as_str()
            .map(str::to_string)
            .into_iter()
            .collect(),
    };
    if types.is_empty() {
        return Err("neither a `plugins` list nor a plugin `type`".into());
    }
    Ok(types)
}

/// Why the kernel would refuse the agent's rules, checked without
/// committing them: the in-pod redirect rules with the tool the agent would
/// pick (nftables when it works), and the host's probe SNAT table, which is
/// nftables only.
fn rules_refused(nftables: bool, iptables: bool) -> Option<String> {
    let source = DEFAULT_PROBE_SOURCE;
    let probe_target = [(std::net::Ipv4Addr::new(10, 0, 0, 1), 8080)].into();
    let backend = match (nftables, iptables) {
        (true, _) => Backend::Nftables,
        (false, true) => Backend::Iptables,
        (false, false) => return None,
    };
    let redirect = Redirector::new(backend, source)
        .check(backend)
        .map_err(|e| format!("the in-pod redirect rules: {e}"));
    let probes = || {
        check_nft(&HostProbes::new(source).ruleset(&probe_target))
            .map_err(|e| format!("the host's probe SNAT table: {e}"))
    };
    redirect.and_then(|()| probes()).err()
}

fn works(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_and_its_missing_binaries_are_reported() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (conf, bin) = (tmp.path().join("net.d"), tmp.path().join("bin"));
        std::fs::create_dir_all(&conf).expect("mkdir");
        std::fs::create_dir_all(&bin).expect("mkdir");
        let report = gather(&conf, std::slice::from_ref(&bin));
        assert!(report.cni_config.is_none());
        assert!(
            report
                .cni_config_error
                .expect("error")
                .contains("no *.conf")
        );

        std::fs::write(
            conf.join("10-pods.conflist"),
            r#"{"cniVersion":"1.0.0","name":"p","plugins":[{"type":"bridge"},{"type":"portmap"}]}"#,
        )
        .expect("write");
        std::fs::write(bin.join("bridge"), b"").expect("write");
        let report = gather(&conf, &[bin]);
        assert_eq!(report.plugins, ["bridge", "portmap"]);
        assert_eq!(report.missing_plugins, ["portmap"]);

        std::fs::write(conf.join("00-bad.conf"), "{").expect("write");
        let report = gather(&conf, &[]);
        assert!(report.cni_config_error.is_some());
    }

    /// Needs root and nftables, as the node agent does; this machine has
    /// both (as CI's does), so a refusal here is a real one.
    #[test]
    fn the_kernel_is_asked_for_the_agents_own_rules_and_nothing_is_committed() {
        let before = std::process::Command::new("nft")
            .args(["list", "tables"])
            .output()
            .expect("nft");
        assert_eq!(rules_refused(true, false), None);
        let after = std::process::Command::new("nft")
            .args(["list", "tables"])
            .output()
            .expect("nft");
        assert_eq!(before.stdout, after.stdout, "a check committed a table");
        let refused = check_nft(
            "table inet weft_check { chain c { type nat hook output priority 0; bogus } }",
        )
        .expect_err("a rule the kernel does not know");
        assert!(refused.to_string().contains("bogus"), "{refused}");
    }
}
