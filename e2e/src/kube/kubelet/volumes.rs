//! A pod's volumes, made on the node before its containers start: emptyDir,
//! ConfigMap, Secret, downward API and projected volumes (ServiceAccount
//! tokens from the TokenRequest API, bound to the pod) are written under the
//! pod's directory; hostPath volumes are paths of the node's own filesystem
//! ([`NodeFs`]).
//!
//! Not done: refreshing tokens and ConfigMaps while the pod runs (a test
//! lasts minutes; tokens are asked for with at least an hour of life).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{
    ConfigMap, DownwardAPIVolumeFile, KeyToPath, Pod, Secret, ServiceAccount, Volume,
};
use kube::Api;
use kube::api::PostParams;
use serde_json::json;

use super::env::{self, PodFacts};

/// The node's own filesystem: where its hostPath volumes are. Kernel
/// interfaces (`/proc`, `/sys`, `/dev`, `/run/netns`) are the machine's,
/// which the netns nodes share; every other path is the node's directory.
#[derive(Clone, Debug)]
pub struct NodeFs {
    /// The node's root.
    pub root: PathBuf,
}

/// Paths every node shares with the machine.
const SHARED: &[&str] = &["/proc", "/sys", "/dev", "/run/netns"];

impl NodeFs {
    /// Where the node's `path` is on this machine (`/var/run` is `/run`,
    /// as on any host).
    pub fn host_path(&self, path: &str) -> PathBuf {
        let path = match path.strip_prefix("/var/run") {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => format!("/run{rest}"),
            _ => path.to_string(),
        };
        let path = path.as_str();
        if SHARED
            .iter()
            .any(|s| path == *s || path.starts_with(&format!("{s}/")))
        {
            return PathBuf::from(path);
        }
        self.root.join(path.trim_start_matches('/'))
    }
}

/// A volume made ready: where its files are, and whether containers may
/// only read it.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// The directory (or file) to mount.
    pub source: PathBuf,
    /// ConfigMap, Secret, projected and downward API volumes are read-only.
    pub read_only: bool,
}

fn io(what: &Path) -> impl FnOnce(std::io::Error) -> String + '_ {
    move |e| format!("{}: {e}", what.display())
}

fn write_file(dir: &Path, rel: &str, data: &[u8], mode: u32) -> Result<(), String> {
    if rel.split('/').any(|part| part == ".." || part.is_empty()) {
        return Err(format!("volume item path {rel:?} is not a relative path"));
    }
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    std::fs::write(&path, data).map_err(io(&path))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).map_err(io(&path))
}

/// Writes `data`'s keys (or only `items`) into `dir`.
fn write_keys(
    dir: &Path,
    kind: &str,
    name: &str,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    mode: u32,
) -> Result<(), String> {
    match items {
        Some(items) => {
            for item in items {
                let value = data
                    .get(&item.key)
                    .ok_or_else(|| format!("{kind} {name:?} has no key {:?}", item.key))?;
                write_file(dir, &item.path, value, item.mode.map_or(mode, |m| m as u32))?;
            }
        }
        None => {
            for (key, value) in data {
                write_file(dir, key, value, mode)?;
            }
        }
    }
    Ok(())
}

fn write_downward(
    dir: &Path,
    pod: &Pod,
    facts: &PodFacts,
    items: &[DownwardAPIVolumeFile],
    mode: u32,
) -> Result<(), String> {
    for item in items {
        let Some(f) = &item.field_ref else {
            return Err(format!(
                "downwardAPI item {}: only fieldRef is supported by the harness' kubelet",
                item.path
            ));
        };
        let value = env::field(pod, facts, &f.field_path)?;
        write_file(
            dir,
            &item.path,
            value.as_bytes(),
            item.mode.map_or(mode, |m| m as u32),
        )?;
    }
    Ok(())
}

/// Reads ConfigMaps and Secrets of the pod's namespace.
pub struct Reader {
    config_maps: Api<ConfigMap>,
    secrets: Api<Secret>,
    accounts: Api<ServiceAccount>,
}

impl Reader {
    /// A reader for `namespace`.
    pub fn new(client: kube::Client, namespace: &str) -> Reader {
        Reader {
            config_maps: Api::namespaced(client.clone(), namespace),
            secrets: Api::namespaced(client.clone(), namespace),
            accounts: Api::namespaced(client, namespace),
        }
    }

    /// ConfigMap `name`'s data (`None` if it does not exist).
    pub async fn config_map(
        &self,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
        let cm = self
            .config_maps
            .get_opt(name)
            .await
            .map_err(|e| format!("reading ConfigMap {name}: {e}"))?;
        Ok(cm.map(|cm| {
            let mut data: BTreeMap<String, Vec<u8>> = cm
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            data.extend(
                cm.binary_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0)),
            );
            data
        }))
    }

    /// Secret `name`'s data (`None` if it does not exist).
    pub async fn secret(&self, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
        let secret = self
            .secrets
            .get_opt(name)
            .await
            .map_err(|e| format!("reading Secret {name}: {e}"))?;
        Ok(secret.map(|s| {
            s.data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect()
        }))
    }

    /// The data of the ConfigMap or Secret `name` (`None` if it does not
    /// exist).
    pub async fn read(
        &self,
        kind: Keys,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
        match kind {
            Keys::ConfigMap => self.config_map(name).await,
            Keys::Secret => self.secret(name).await,
        }
    }

    /// A token of the pod's ServiceAccount for `audience` (the API server's
    /// own when `None`), bound to the pod, as the kubelet asks for it.
    pub async fn token(
        &self,
        pod: &Pod,
        audience: Option<&str>,
        expiration: i64,
    ) -> Result<String, String> {
        let account = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into());
        let request = json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": audience.map(|a| vec![a]).unwrap_or_default(),
                // The kubelet asks for at least an hour and refreshes; this
                // one does not refresh, so it asks for a day.
                "expirationSeconds": expiration.max(24 * 3600),
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": pod.metadata.name,
                    "uid": pod.metadata.uid,
                },
            },
        });
        let reply: serde_json::Value = self
            .accounts
            .create_subresource("token", &account, &PostParams::default(), &request)
            .await
            .map_err(|e| format!("TokenRequest for ServiceAccount {account}: {e}"))?;
        reply["status"]["token"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| {
                format!("TokenRequest for ServiceAccount {account}: no token in the reply")
            })
    }
}

/// ConfigMap or Secret: the two kinds whose keys volumes project.
#[derive(Clone, Copy, Debug)]
pub enum Keys {
    /// A ConfigMap.
    ConfigMap,
    /// A Secret.
    Secret,
}

impl Keys {
    /// The kind's name.
    pub fn label(self) -> &'static str {
        match self {
            Keys::ConfigMap => "ConfigMap",
            Keys::Secret => "Secret",
        }
    }
}

/// Writes the keys of ConfigMap or Secret `name` into `target`; a missing
/// object is an error unless `optional`.
async fn write_object(
    reader: &Reader,
    target: &Path,
    kind: Keys,
    name: &str,
    items: Option<&Vec<KeyToPath>>,
    optional: Option<bool>,
    mode: u32,
) -> Result<(), String> {
    let label = kind.label();
    match reader.read(kind, name).await? {
        Some(data) => write_keys(target, label, name, &data, items, mode),
        None if optional == Some(true) => Ok(()),
        None => Err(format!("{label} {name:?} not found")),
    }
}

/// Makes `volume` of `pod` under `dir` (the pod's volume directory).
pub async fn prepare(
    reader: &Reader,
    pod: &Pod,
    facts: &PodFacts,
    volume: &Volume,
    dir: &Path,
    node: &NodeFs,
) -> Result<Prepared, String> {
    let target = dir.join(&volume.name);
    let made = |read_only| {
        std::fs::create_dir_all(&target).map_err(io(&target))?;
        Ok::<_, String>(Prepared {
            source: target.clone(),
            read_only,
        })
    };
    if let Some(host) = &volume.host_path {
        let source = node.host_path(&host.path);
        let kind = host.type_.as_deref().unwrap_or("");
        match kind {
            "DirectoryOrCreate" => std::fs::create_dir_all(&source).map_err(io(&source))?,
            "" => {}
            _ if source.exists() => {}
            _ => {
                return Err(format!(
                    "hostPath {} ({kind}) does not exist on the node",
                    host.path
                ));
            }
        }
        return Ok(Prepared {
            source,
            read_only: false,
        });
    }
    if volume.empty_dir.is_some() {
        let prepared = made(false)?;
        // Any container user may write it, as with a runtime's emptyDir.
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o777))
            .map_err(io(&target))?;
        return Ok(prepared);
    }
    if let Some(cm) = &volume.config_map {
        let prepared = made(true)?;
        let mode = cm.default_mode.map_or(0o644, |m| m as u32);
        write_object(
            reader,
            &target,
            Keys::ConfigMap,
            &cm.name,
            cm.items.as_ref(),
            cm.optional,
            mode,
        )
        .await?;
        return Ok(prepared);
    }
    if let Some(secret) = &volume.secret {
        let prepared = made(true)?;
        let name = secret.secret_name.clone().unwrap_or_default();
        let mode = secret.default_mode.map_or(0o644, |m| m as u32);
        write_object(
            reader,
            &target,
            Keys::Secret,
            &name,
            secret.items.as_ref(),
            secret.optional,
            mode,
        )
        .await?;
        return Ok(prepared);
    }
    if let Some(downward) = &volume.downward_api {
        let prepared = made(true)?;
        let mode = downward.default_mode.map_or(0o644, |m| m as u32);
        write_downward(
            &target,
            pod,
            facts,
            downward.items.as_deref().unwrap_or_default(),
            mode,
        )?;
        return Ok(prepared);
    }
    if let Some(projected) = &volume.projected {
        let prepared = made(true)?;
        let mode = projected.default_mode.map_or(0o644, |m| m as u32);
        for source in projected.sources.iter().flatten() {
            if let Some(t) = &source.service_account_token {
                let token = reader
                    .token(
                        pod,
                        t.audience.as_deref(),
                        t.expiration_seconds.unwrap_or(3600),
                    )
                    .await?;
                write_file(&target, &t.path, token.as_bytes(), mode)?;
            } else if let Some(cm) = &source.config_map {
                write_object(
                    reader,
                    &target,
                    Keys::ConfigMap,
                    &cm.name,
                    cm.items.as_ref(),
                    cm.optional,
                    mode,
                )
                .await?;
            } else if let Some(secret) = &source.secret {
                write_object(
                    reader,
                    &target,
                    Keys::Secret,
                    &secret.name,
                    secret.items.as_ref(),
                    secret.optional,
                    mode,
                )
                .await?;
            } else if let Some(downward) = &source.downward_api {
                write_downward(
                    &target,
                    pod,
                    facts,
                    downward.items.as_deref().unwrap_or_default(),
                    mode,
                )?;
            } else {
                return Err(format!(
                    "projected volume {}: a source the harness' kubelet does not support",
                    volume.name
                ));
            }
        }
        return Ok(prepared);
    }
    Err(format!(
        "volume {}: its type is not supported by the harness' kubelet (emptyDir, hostPath, configMap, secret, downwardAPI and projected are)",
        volume.name
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_paths_are_the_nodes_except_kernel_interfaces() {
        let fs = NodeFs {
            root: PathBuf::from("/run/e2e/node-1/root"),
        };
        assert_eq!(
            fs.host_path("/etc/cni/net.d"),
            PathBuf::from("/run/e2e/node-1/root/etc/cni/net.d")
        );
        assert_eq!(fs.host_path("/proc"), PathBuf::from("/proc"));
        assert_eq!(fs.host_path("/var/run/netns"), PathBuf::from("/run/netns"));
        assert_eq!(fs.host_path("/var/run/weft"), fs.host_path("/run/weft"));
        assert_eq!(
            fs.host_path("/var/runner"),
            PathBuf::from("/run/e2e/node-1/root/var/runner")
        );
        assert_eq!(
            fs.host_path("/process"),
            PathBuf::from("/run/e2e/node-1/root/process")
        );
    }

    #[test]
    fn item_paths_may_not_leave_the_volume() {
        let dir = std::env::temp_dir().join(format!("weft-e2e-vol-{}", std::process::id()));
        assert!(write_file(&dir, "../x", b"", 0o644).is_err());
        assert!(write_file(&dir, "a//b", b"", 0o644).is_err());
        write_file(&dir, "a/b", b"v", 0o600).expect("write");
        assert_eq!(std::fs::read(dir.join("a/b")).expect("read"), b"v");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
