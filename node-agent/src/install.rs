//! Installing the plugin on a node: the binary into the CNI bin dir, and an
//! entry at the end of the `plugins` of the node's active network config.
//!
//! The active config is the lexically first `*.conf`, `*.conflist` or
//! `*.json` file in the CNI config dir, the one a runtime's libcni picks. A
//! single-plugin `.conf` is rewritten as a `.conflist` (same stem) holding the
//! original plugin then ours, and the `.conf` removed, because only a list can
//! chain. Every write is atomic (temp file in the same directory, fsync,
//! rename), so a runtime never reads half a file.
//!
//! Before changing a file the installer records its original bytes in a
//! backup in its state dir; [`ConfInstaller::uninstall`] puts those bytes back
//! verbatim if the file is still what weft wrote, and otherwise only takes
//! weft's entry out. [`ConfInstaller::ensure`] is idempotent: called again
//! after another component rewrote the config, it re-inserts the entry (and
//! records the rewritten file as the new original).

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use weft_cni::files::write_atomically;

/// The plugin's `type`, and its binary's file name in the CNI bin dir.
pub const PLUGIN_TYPE: &str = "weft-cni";

const BACKUP_FILE: &str = "cni-conf-backup.json";

/// Why installing or uninstalling failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The active CNI config is not valid JSON or not a network config.
    #[error("{path} is not a CNI network configuration: {reason}")]
    InvalidConfig {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Copies the plugin binary into `bin_dir` as [`PLUGIN_TYPE`] (atomically, so
/// a runtime never executes a half-copied file). Returns the installed path.
pub fn install_binary(source: &Path, bin_dir: &Path) -> Result<PathBuf, InstallError> {
    let bytes = fs::read(source).map_err(io_err(source))?;
    fs::create_dir_all(bin_dir).map_err(io_err(bin_dir))?;
    let target = bin_dir.join(PLUGIN_TYPE);
    write_atomically(&target, &bytes, Some(0o755)).map_err(io_err(&target))?;
    Ok(target)
}

/// Removes the plugin binary from `bin_dir` (absent is fine).
pub fn uninstall_binary(bin_dir: &Path) -> Result<(), InstallError> {
    let target = bin_dir.join(PLUGIN_TYPE);
    match fs::remove_file(&target) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(&target)(e)),
        _ => Ok(()),
    }
}

/// What [`ConfInstaller::ensure`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Ensured {
    /// The entry was added to this file.
    Inserted(PathBuf),
    /// The entry was already the last plugin of this file.
    AlreadyPresent(PathBuf),
    /// The config dir holds no network config yet (the primary CNI has not
    /// written one); try again later.
    NoConfig,
}

/// Inserts and removes weft's entry in a CNI config dir.
#[derive(Clone, Debug)]
pub struct ConfInstaller {
    conf_dir: PathBuf,
    state_dir: PathBuf,
    entry: Value,
}

/// The original of the file weft last changed, and what weft wrote.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Backup {
    original_path: PathBuf,
    original: String,
    installed_path: PathBuf,
    installed: String,
}

impl ConfInstaller {
    /// An installer for `conf_dir` that inserts `entry` (a plugin object whose
    /// `type` is [`PLUGIN_TYPE`]) and keeps its backup in `state_dir`.
    pub fn new(
        conf_dir: impl Into<PathBuf>,
        state_dir: impl Into<PathBuf>,
        entry: Value,
    ) -> ConfInstaller {
        let mut entry = entry;
        if let Some(obj) = entry.as_object_mut() {
            obj.insert("type".into(), Value::String(PLUGIN_TYPE.into()));
        }
        ConfInstaller {
            conf_dir: conf_dir.into(),
            state_dir: state_dir.into(),
            entry,
        }
    }

    /// The file a runtime would use now, if any.
    pub fn active_config(&self) -> Result<Option<PathBuf>, InstallError> {
        let mut files: Vec<PathBuf> = Vec::new();
        let dir = match fs::read_dir(&self.conf_dir) {
            Ok(dir) => dir,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&self.conf_dir)(e)),
        };
        for entry in dir {
            let path = entry.map_err(io_err(&self.conf_dir))?.path();
            let ext = path
                .extension()
                .and_then(|e| e.to_str())
                .unwrap_or_default();
            if matches!(ext, "conf" | "conflist" | "json") && path.is_file() {
                files.push(path);
            }
        }
        files.sort();
        Ok(files.into_iter().next())
    }

    /// Makes sure weft's entry is the last plugin of the active config.
    pub fn ensure(&self) -> Result<Ensured, InstallError> {
        let Some(path) = self.active_config()? else {
            return Ok(Ensured::NoConfig);
        };
        let original = fs::read_to_string(&path).map_err(io_err(&path))?;
        let parsed: Value =
            serde_json::from_str(&original).map_err(|e| InstallError::InvalidConfig {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        let mut list = to_conflist(parsed).map_err(|reason| InstallError::InvalidConfig {
            path: path.clone(),
            reason,
        })?;
        let Some(plugins) = list.get_mut("plugins").and_then(Value::as_array_mut) else {
            return Err(InstallError::InvalidConfig {
                path,
                reason: "`plugins` is not an array".into(),
            });
        };
        if plugins.last().is_some_and(is_weft) {
            return Ok(Ensured::AlreadyPresent(path));
        }
        // Present but not last (another component appended after us): move
        // it to the end, where a chained plugin must be.
        plugins.retain(|p| !is_weft(p));
        plugins.push(self.entry.clone());
        let installed = format!(
            "{}\n",
            serde_json::to_string_pretty(&list).unwrap_or_default()
        );
        let target = if path.extension().is_some_and(|e| e == "conflist") {
            path.clone()
        } else {
            path.with_extension("conflist")
        };
        // Record the original first: if we crash between the two writes,
        // uninstall still has what it needs.
        let mode = fs::metadata(&path)
            .map(|m| m.permissions().mode() & 0o7777)
            .ok();
        let backup = Backup {
            original_path: path.clone(),
            original,
            installed_path: target.clone(),
            installed: installed.clone(),
        };
        self.store_backup(&backup)?;
        write_atomically(&target, installed.as_bytes(), mode).map_err(io_err(&target))?;
        if target != path {
            fs::remove_file(&path).map_err(io_err(&path))?;
        }
        Ok(Ensured::Inserted(target))
    }

    /// Takes weft's entry out: restores the original bytes if the file is
    /// still what weft wrote, otherwise removes just the entry.
    pub fn uninstall(&self) -> Result<(), InstallError> {
        if let Some(backup) = self.load_backup()? {
            let current = fs::read_to_string(&backup.installed_path).ok();
            if current.as_deref() == Some(backup.installed.as_str()) {
                let mode = fs::metadata(&backup.installed_path)
                    .map(|m| m.permissions().mode() & 0o7777)
                    .ok();
                write_atomically(&backup.original_path, backup.original.as_bytes(), mode)
                    .map_err(io_err(&backup.original_path))?;
                if backup.installed_path != backup.original_path {
                    fs::remove_file(&backup.installed_path)
                        .map_err(io_err(&backup.installed_path))?;
                }
            } else if current.is_some() {
                self.remove_entry(&backup.installed_path)?;
            }
        }
        // Whatever the backup said, the active file must not keep our entry.
        if let Some(path) = self.active_config()? {
            self.remove_entry(&path)?;
        }
        let backup_path = self.state_dir.join(BACKUP_FILE);
        match fs::remove_file(&backup_path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(&backup_path)(e)),
            _ => Ok(()),
        }
    }

    /// Calls [`ensure`](Self::ensure) every `interval`, forever: another
    /// component (the primary CNI's own agent, an upgrade) may rewrite the
    /// file at any time. Polling keeps this simple and independent of
    /// inotify's limits; the cost is one small read per interval.
    pub async fn keep_installed(self, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let installer = self.clone();
            match tokio::task::spawn_blocking(move || installer.ensure()).await {
                Ok(Ok(Ensured::Inserted(path))) => {
                    tracing::info!(path = %path.display(), "inserted weft-cni into the CNI config")
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot install weft-cni into the CNI config")
                }
                Err(e) => tracing::warn!(error = %e, "CNI config installer task failed"),
            }
        }
    }

    fn remove_entry(&self, path: &Path) -> Result<(), InstallError> {
        let Ok(text) = fs::read_to_string(path) else {
            return Ok(());
        };
        let Ok(mut value) = serde_json::from_str::<Value>(&text) else {
            return Ok(());
        };
        let Some(plugins) = value.get_mut("plugins").and_then(Value::as_array_mut) else {
            return Ok(());
        };
        if !plugins.iter().any(is_weft) {
            return Ok(());
        }
        plugins.retain(|p| !is_weft(p));
        let mode = fs::metadata(path)
            .map(|m| m.permissions().mode() & 0o7777)
            .ok();
        let body = format!(
            "{}\n",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
        write_atomically(path, body.as_bytes(), mode).map_err(io_err(path))
    }

    fn store_backup(&self, backup: &Backup) -> Result<(), InstallError> {
        fs::create_dir_all(&self.state_dir).map_err(io_err(&self.state_dir))?;
        let path = self.state_dir.join(BACKUP_FILE);
        let body = serde_json::to_vec_pretty(backup).unwrap_or_default();
        write_atomically(&path, &body, Some(0o600)).map_err(io_err(&path))
    }

    fn load_backup(&self) -> Result<Option<Backup>, InstallError> {
        let path = self.state_dir.join(BACKUP_FILE);
        match fs::read(&path) {
            // A corrupt backup is treated as absent: uninstall then falls
            // back to removing the entry from the active file.
            Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }
}

fn is_weft(plugin: &Value) -> bool {
    plugin.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE)
}

/// A conflist as is, or a single-plugin conf wrapped into one.
fn to_conflist(config: Value) -> Result<Value, String> {
    let Value::Object(mut obj) = config else {
        return Err("not a JSON object".into());
    };
    if let Some(plugins) = obj.get("plugins") {
        return if plugins.is_array() {
            Ok(Value::Object(obj))
        } else {
            Err("`plugins` is not an array".into())
        };
    }
    if !obj.get("type").is_some_and(Value::is_string) {
        return Err("neither a `plugins` list nor a plugin `type`".into());
    }
    let mut list = Map::new();
    for key in ["cniVersion", "name"] {
        if let Some(v) = obj.remove(key) {
            list.insert(key.into(), v);
        }
    }
    list.insert("plugins".into(), Value::Array(vec![Value::Object(obj)]));
    Ok(Value::Object(list))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFLIST: &str = r#"{
  "cniVersion": "1.0.0",
  "name":   "pods",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local", "subnet": "10.244.0.0/24"}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
"#;

    fn installer(dir: &Path) -> ConfInstaller {
        ConfInstaller::new(
            dir.join("net.d"),
            dir.join("state"),
            serde_json::json!({"agentSocket": "/run/x.sock"}),
        )
    }

    fn weft_entries(path: &Path) -> usize {
        let v: Value =
            serde_json::from_str(&fs::read_to_string(path).expect("read")).expect("json");
        v["plugins"]
            .as_array()
            .expect("plugins")
            .iter()
            .filter(|p| is_weft(p))
            .count()
    }

    #[test]
    fn conflist_insert_rewrite_uninstall() {
        let tmp = tempfile::tempdir().expect("tmp");
        let netd = tmp.path().join("net.d");
        fs::create_dir_all(&netd).expect("mkdir");
        let file = netd.join("10-pods.conflist");
        fs::write(&file, CONFLIST).expect("write");
        fs::write(netd.join("99-other.conflist"), CONFLIST).expect("write");
        let inst = installer(tmp.path());

        assert_eq!(
            inst.ensure().expect("ensure"),
            Ensured::Inserted(file.clone())
        );
        assert_eq!(
            inst.ensure().expect("ensure"),
            Ensured::AlreadyPresent(file.clone())
        );
        assert_eq!(weft_entries(&file), 1);
        let v: Value =
            serde_json::from_str(&fs::read_to_string(&file).expect("read")).expect("json");
        assert_eq!(v["plugins"][2]["type"], PLUGIN_TYPE);
        assert_eq!(v["plugins"][0]["ipam"]["subnet"], "10.244.0.0/24");
        // The other file is not the active one and is left alone.
        assert_eq!(
            fs::read_to_string(netd.join("99-other.conflist")).expect("read"),
            CONFLIST
        );

        // Another CNI rewrites its config: the entry comes back, once.
        let rewritten = CONFLIST.replace("10.244.0.0/24", "10.244.9.0/24");
        fs::write(&file, &rewritten).expect("rewrite");
        assert_eq!(
            inst.ensure().expect("ensure"),
            Ensured::Inserted(file.clone())
        );
        assert_eq!(weft_entries(&file), 1);

        inst.uninstall().expect("uninstall");
        assert_eq!(
            fs::read_to_string(&file).expect("read"),
            rewritten,
            "byte-for-byte"
        );
        inst.uninstall().expect("uninstall twice is fine");
    }

    #[test]
    fn single_conf_becomes_conflist_and_back() {
        let tmp = tempfile::tempdir().expect("tmp");
        let netd = tmp.path().join("net.d");
        fs::create_dir_all(&netd).expect("mkdir");
        let conf = netd.join("10-bridge.conf");
        let original = "{\"cniVersion\":\"0.4.0\",\"name\":\"br\",\"type\":\"bridge\",\"ipam\":{\"type\":\"host-local\"}}";
        fs::write(&conf, original).expect("write");
        let inst = installer(tmp.path());
        let list = netd.join("10-bridge.conflist");
        assert_eq!(
            inst.ensure().expect("ensure"),
            Ensured::Inserted(list.clone())
        );
        assert!(!conf.exists());
        let v: Value =
            serde_json::from_str(&fs::read_to_string(&list).expect("read")).expect("json");
        assert_eq!(v["name"], "br");
        assert_eq!(v["plugins"][0]["type"], "bridge");
        assert_eq!(v["plugins"][1]["type"], PLUGIN_TYPE);
        inst.uninstall().expect("uninstall");
        assert_eq!(fs::read_to_string(&conf).expect("restored"), original);
        assert!(!list.exists());
    }

    #[test]
    fn entry_removed_when_file_changed_after_install() {
        let tmp = tempfile::tempdir().expect("tmp");
        let netd = tmp.path().join("net.d");
        fs::create_dir_all(&netd).expect("mkdir");
        let file = netd.join("10-pods.conflist");
        fs::write(&file, CONFLIST).expect("write");
        let inst = installer(tmp.path());
        inst.ensure().expect("ensure");
        // Someone edits the file and keeps our entry: uninstall must not
        // clobber their edit with the old original.
        let edited = fs::read_to_string(&file)
            .expect("read")
            .replace("cni0", "cni1");
        fs::write(&file, edited).expect("edit");
        inst.uninstall().expect("uninstall");
        let text = fs::read_to_string(&file).expect("read");
        assert!(text.contains("cni1"));
        assert_eq!(weft_entries(&file), 0);
    }

    #[test]
    fn no_config_and_garbage() {
        let tmp = tempfile::tempdir().expect("tmp");
        let inst = installer(tmp.path());
        assert_eq!(inst.ensure().expect("ensure"), Ensured::NoConfig);
        let netd = tmp.path().join("net.d");
        fs::create_dir_all(&netd).expect("mkdir");
        fs::write(netd.join("00-bad.conf"), "not json").expect("write");
        assert!(matches!(
            inst.ensure(),
            Err(InstallError::InvalidConfig { .. })
        ));
    }

    #[test]
    fn binary_install() {
        let tmp = tempfile::tempdir().expect("tmp");
        let src = tmp.path().join("src-bin");
        fs::write(&src, b"#!/bin/sh\n").expect("write");
        let bin = tmp.path().join("bin");
        let installed = install_binary(&src, &bin).expect("install");
        assert_eq!(
            fs::metadata(&installed).expect("meta").permissions().mode() & 0o777,
            0o755
        );
        uninstall_binary(&bin).expect("uninstall");
        assert!(!installed.exists());
        uninstall_binary(&bin).expect("absent is fine");
    }
}
