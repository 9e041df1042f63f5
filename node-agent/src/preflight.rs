//! What a node offers weft before it is installed (`weft-node-agent
//! preflight`, run by `weftctl check --pre` in a short-lived pod per node):
//! the CNI config the agent would chain weft-cni into, whether the plugins
//! it names are on the node, and whether nftables or iptables work.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use weft_cni::report::NodeReport;

use crate::install::ConfInstaller;

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
}
