//! The `files` registry: a directory of Kubernetes YAML, watched and reloaded.
//!
//! Every `*.yaml` / `*.yml` file under the directory (recursively, in name
//! order) may hold several `---`-separated documents. Each document of a known
//! kind becomes a typed object; documents of other kinds are ignored. A
//! document that does not decode is recorded in [`ClusterState::invalid`]
//! with its file, index and field, and skipped; the rest of the file and the
//! directory are kept. Any change under the directory reloads it as a whole,
//! so a deleted file or document removes its objects.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::object::{AnyObject, Kind};
use super::state::{ClusterState, InvalidObject, ObjectKey};
use super::{RegistryConfig, RegistryError};

/// How long the directory must be quiet before it is reloaded: editors and
/// harnesses write a file in several steps.
const SETTLE: Duration = Duration::from_millis(30);

/// Loads the directory once, then reloads it on every change.
pub(super) async fn start(
    dir: PathBuf,
    config: RegistryConfig,
) -> Result<(watch::Receiver<Arc<ClusterState>>, JoinSet<()>), RegistryError> {
    std::fs::metadata(&dir).map_err(|source| RegistryError::Directory {
        path: dir.clone(),
        source,
    })?;
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Reading the files ourselves produces access events; only changes
        // count. A closed receiver means the registry is gone.
        let relevant = match &event {
            Ok(e) => !matches!(e.kind, notify::EventKind::Access(_)),
            Err(_) => true,
        };
        if relevant {
            let _ = events_tx.send(());
        }
    })
    .map_err(|source| RegistryError::Watch {
        path: dir.clone(),
        source,
    })?;
    watcher
        .watch(&dir, RecursiveMode::Recursive)
        .map_err(|source| RegistryError::Watch {
            path: dir.clone(),
            source,
        })?;

    let first = load_blocking(dir.clone(), config.clone()).await;
    let (tx, rx) = watch::channel(Arc::new(first));
    let mut tasks = JoinSet::new();
    tasks.spawn(async move {
        // The watcher lives as long as this task.
        let _watcher = watcher;
        while events.recv().await.is_some() {
            // Coalesce a burst of events into one reload.
            loop {
                match tokio::time::timeout(SETTLE, events.recv()).await {
                    Ok(Some(_)) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            let state = load_blocking(dir.clone(), config.clone()).await;
            tracing::debug!(
                objects = state.len(),
                invalid = state.invalid.len(),
                "reloaded {}",
                dir.display()
            );
            if tx.send(Arc::new(state)).is_err() {
                return;
            }
        }
    });
    Ok((rx, tasks))
}

async fn load_blocking(dir: PathBuf, config: RegistryConfig) -> ClusterState {
    let fallback = dir.clone();
    tokio::task::spawn_blocking(move || load_dir(&dir, &config))
        .await
        .unwrap_or_else(|e| {
            tracing::error!("loading {} panicked: {e}", fallback.display());
            ClusterState::default()
        })
}

/// Reads every manifest under `dir` into a state (synchronously).
pub fn load_dir(dir: &Path, config: &RegistryConfig) -> ClusterState {
    let mut state = ClusterState {
        synced: true,
        ..ClusterState::default()
    };
    let mut files = Vec::new();
    collect_files(dir, &mut files);
    files.sort();
    let mut seen: HashMap<(Kind, ObjectKey), (String, usize)> = HashMap::new();
    for file in files {
        let name = file
            .strip_prefix(dir)
            .unwrap_or(&file)
            .display()
            .to_string();
        match std::fs::read_to_string(&file) {
            Ok(text) => load_text(&name, &text, config, &mut state, &mut seen),
            Err(e) => state.invalid.push(InvalidObject {
                file: name,
                document: 0,
                object: String::new(),
                field: ".".into(),
                message: format!("cannot read file: {e}"),
            }),
        }
    }
    for bad in &state.invalid {
        tracing::warn!("skipped invalid object: {bad}");
    }
    metrics::gauge!("weft_registry_invalid_objects").set(state.invalid.len() as f64);
    state
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if hidden {
            continue;
        }
        if path.is_dir() {
            collect_files(&path, out);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
        }
    }
}

/// Decodes every document of one file into `state`.
pub(crate) fn load_text(
    file: &str,
    text: &str,
    config: &RegistryConfig,
    state: &mut ClusterState,
    seen: &mut HashMap<(Kind, ObjectKey), (String, usize)>,
) {
    for document in weft_api::yaml::documents(text) {
        let index = document.index;
        let invalid = |object: String, field: String, message: String| InvalidObject {
            file: file.to_string(),
            document: index,
            object,
            field,
            message,
        };
        let value = match document.parse::<serde_json::Value>() {
            Ok(serde_json::Value::Null) => continue,
            Ok(value) => value,
            Err(e) => {
                // Documents are split before parsing, so a syntax error
                // spoils only its own document.
                state
                    .invalid
                    .push(invalid(String::new(), ".".into(), format!("not YAML: {e}")));
                continue;
            }
        };
        match decode(value, config) {
            Ok(None) => {}
            Ok(Some(obj)) => {
                let id = (obj.kind(), obj.key());
                if let Some((first_file, first_doc)) = seen.get(&id) {
                    state.invalid.push(invalid(
                        describe(&obj),
                        "metadata.name".into(),
                        format!("duplicate of {first_file} document {first_doc}"),
                    ));
                    continue;
                }
                seen.insert(id, (file.to_string(), index));
                obj.insert_into(state);
            }
            Err(Invalid {
                object,
                field,
                message,
            }) => state.invalid.push(invalid(object, field, message)),
        }
    }
}

struct Invalid {
    object: String,
    field: String,
    message: String,
}

/// One document to a typed object: `Ok(None)` for kinds that are not watched.
fn decode(
    mut value: serde_json::Value,
    config: &RegistryConfig,
) -> Result<Option<AnyObject>, Invalid> {
    let text =
        |v: &serde_json::Value, key: &str| v.get(key).and_then(|x| x.as_str()).map(str::to_owned);
    let api_version = text(&value, "apiVersion");
    let kind_name = text(&value, "kind");
    let name = value.get("metadata").and_then(|m| text(m, "name"));
    let namespace = value.get("metadata").and_then(|m| text(m, "namespace"));
    let object = format!(
        "{}/{} {}{}",
        api_version.as_deref().unwrap_or("?"),
        kind_name.as_deref().unwrap_or("?"),
        namespace
            .as_deref()
            .map(|n| format!("{n}/"))
            .unwrap_or_default(),
        name.as_deref().unwrap_or("?"),
    );
    let fail = |field: &str, message: String| Invalid {
        object: object.clone(),
        field: field.to_string(),
        message,
    };
    let (Some(api_version), Some(kind_name)) = (api_version, kind_name) else {
        return Err(fail(".", "apiVersion and kind are required".into()));
    };
    let Some(kind) = Kind::from_type_meta(&api_version, &kind_name) else {
        tracing::debug!("ignoring {object}: not a kind weft reads");
        return Ok(None);
    };
    if !config.kinds.contains(kind) {
        return Ok(None);
    }
    if name.as_deref().is_none_or(str::is_empty) {
        return Err(fail("metadata.name", "required".into()));
    }
    let cluster_scoped = matches!(kind, Kind::Namespace | Kind::GatewayClass);
    if !cluster_scoped && namespace.is_none() {
        // As kubectl does: a namespaced object without a namespace is in "default".
        if let Some(meta) = value.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            meta.insert("namespace".into(), "default".into());
        }
    }
    let obj = AnyObject::from_value(kind, value).map_err(|e| {
        let path = e.path().to_string();
        fail(&path, e.into_inner().to_string())
    })?;
    if let AnyObject::Pod(pod) = &obj {
        validate_pod(pod).map_err(|(field, message)| fail(field, message))?;
        if let Some(node) = &config.node
            && pod.spec.as_ref().and_then(|s| s.node_name.as_ref()) != Some(node)
        {
            return Ok(None);
        }
    }
    if let AnyObject::Service(svc) = &obj {
        let ips = svc.spec.as_ref().map(|s| {
            s.cluster_ips
                .clone()
                .unwrap_or_default()
                .into_iter()
                .chain(s.cluster_ip.clone())
        });
        for ip in ips.into_iter().flatten() {
            if ip != "None" && !ip.is_empty() && ip.parse::<IpAddr>().is_err() {
                return Err(fail("spec.clusterIP", format!("not an IP address: {ip:?}")));
            }
        }
    }
    Ok(Some(obj))
}

/// The checks a kubelet-written Pod must pass beyond its schema: its
/// addresses are what the data plane routes on.
fn validate_pod(pod: &Pod) -> Result<(), (&'static str, String)> {
    let Some(status) = &pod.status else {
        return Ok(());
    };
    if let Some(ip) = &status.pod_ip
        && ip.parse::<IpAddr>().is_err()
    {
        return Err(("status.podIP", format!("not an IP address: {ip:?}")));
    }
    for ip in status.pod_ips.iter().flatten() {
        if ip.ip.parse::<IpAddr>().is_err() {
            return Err(("status.podIPs", format!("not an IP address: {:?}", ip.ip)));
        }
    }
    Ok(())
}

fn describe(obj: &AnyObject) -> String {
    let (api_version, kind) = obj.kind().type_meta();
    format!("{api_version}/{kind} {}", obj.key())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_syntax_error_spoils_only_its_document() {
        let pod = |name: &str| {
            format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop}}\n")
        };
        let text = format!(
            "{}---\nkind: [Pod\nmetadata: {{name: broken}}\n---\n{}",
            pod("a"),
            pod("b")
        );
        let mut state = ClusterState::default();
        let mut seen = HashMap::new();
        load_text(
            "pods.yaml",
            &text,
            &RegistryConfig::default(),
            &mut state,
            &mut seen,
        );
        assert_eq!(state.pods.len(), 2, "the documents around it are kept");
        assert_eq!(state.invalid.len(), 1, "{:?}", state.invalid);
        let bad = &state.invalid[0];
        assert_eq!((bad.file.as_str(), bad.document), ("pods.yaml", 1));
        assert!(bad.message.starts_with("not YAML: "), "{bad}");
        assert!(bad.message.contains("line 6"), "line in the file: {bad}");
    }
}
