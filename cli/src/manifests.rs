//! Edits of a directory of Kubernetes YAML — the controller's `files`
//! registry — the way `kubectl apply` edits an API server: find the object by
//! kind, namespace and name, change it, write the file back atomically.
//!
//! Only the document that changes is re-serialized; the other documents of
//! its file keep their bytes (comments, order, formatting). Files are replaced
//! by rename, so the registry, which reloads on every change, never reads half
//! a file. New objects go to `<dir>/weftctl.<kind>.<namespace>.<name>.yaml`:
//! at the top of the directory, where readers that do not descend into
//! subdirectories (`kubectl apply -f DIR`, the e2e harness's deployer) find
//! them too.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::exit::{CliError, Result};

/// The prefix of the files new objects are written to.
pub const OWN_PREFIX: &str = "weftctl.";

/// Identifies one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectRef {
    /// `kind`, e.g. `Namespace`.
    pub kind: String,
    /// Empty for cluster-scoped kinds.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
}

impl ObjectRef {
    /// A namespaced object.
    pub fn namespaced(kind: &str, namespace: &str, name: &str) -> ObjectRef {
        ObjectRef {
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// A cluster-scoped object.
    pub fn cluster(kind: &str, name: &str) -> ObjectRef {
        ObjectRef::namespaced(kind, "", name)
    }

    fn matches(&self, doc: &Value) -> bool {
        let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        let meta = doc.get("metadata");
        let namespace = meta.and_then(|m| text(m, "namespace"));
        // As the files registry does: a namespaced object without a namespace
        // is in "default".
        let namespace = match (namespace, self.namespace.is_empty()) {
            (_, true) => String::new(),
            (Some(ns), false) => ns,
            (None, false) => "default".into(),
        };
        text(doc, "kind").as_deref() == Some(self.kind.as_str())
            && meta.and_then(|m| text(m, "name")).as_deref() == Some(self.name.as_str())
            && namespace == self.namespace
    }

    fn file_name(&self) -> String {
        let kind = self.kind.to_ascii_lowercase();
        if self.namespace.is_empty() {
            format!("{OWN_PREFIX}{kind}.{}.yaml", self.name)
        } else {
            format!("{OWN_PREFIX}{kind}.{}.{}.yaml", self.namespace, self.name)
        }
    }
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// A manifest directory.
#[derive(Clone, Debug)]
pub struct ManifestDir {
    root: PathBuf,
}

/// One `---`-separated document of a file, as written.
#[derive(Clone, Debug, PartialEq)]
struct Chunk {
    /// The separator line before it, if any.
    separator: Option<String>,
    /// The document's text, with its trailing newline.
    text: String,
}

impl Chunk {
    fn value(&self) -> Option<Value> {
        weft_api::yaml::from_str::<Value>(&self.text)
            .ok()
            .filter(|v| !v.is_null())
    }
}

fn split_documents(text: &str) -> Vec<Chunk> {
    let mut chunks = vec![Chunk {
        separator: None,
        text: String::new(),
    }];
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end();
        if bare == "---" || bare.starts_with("--- ") {
            chunks.push(Chunk {
                separator: Some(bare.to_string()),
                text: String::new(),
            });
        } else if let Some(last) = chunks.last_mut() {
            last.text.push_str(line);
        }
    }
    chunks
}

fn join_documents(chunks: &[Chunk]) -> String {
    let mut out = String::new();
    for chunk in chunks {
        if let Some(sep) = &chunk.separator {
            out.push_str(sep);
            out.push('\n');
        }
        out.push_str(&chunk.text);
        if !chunk.text.is_empty() && !chunk.text.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

fn to_yaml(value: &Value) -> Result<String> {
    weft_api::yaml::to_string(value).map_err(CliError::other)
}

impl ManifestDir {
    /// The directory at `root`; it must exist.
    pub fn open(root: impl Into<PathBuf>) -> Result<ManifestDir> {
        let root = root.into();
        if !root.is_dir() {
            return Err(CliError::unreachable(
                format!("manifest directory {}", root.display()),
                "not a directory",
                "pass the controller's manifest directory with --manifests, or the run directory with --run-dir",
            ));
        }
        Ok(ManifestDir { root })
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The YAML files, recursively, in name order; hidden entries skipped
    /// (the registry skips them too, and temporary files are hidden).
    fn files(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with('.') {
                    continue;
                }
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, out);
                } else if matches!(
                    path.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml")
                ) {
                    out.push(path);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.root, &mut out);
        out.sort();
        out
    }

    /// Finds the object: its file, the chunks of that file, and its index.
    fn locate(&self, object: &ObjectRef) -> Result<Option<(PathBuf, Vec<Chunk>, usize)>> {
        for file in self.files() {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| CliError::other(format!("cannot read {}: {e}", file.display())))?;
            let chunks = split_documents(&text);
            let found = chunks
                .iter()
                .position(|c| c.value().is_some_and(|v| object.matches(&v)));
            if let Some(index) = found {
                return Ok(Some((file, chunks, index)));
            }
        }
        Ok(None)
    }

    /// The object as written, if it exists.
    pub fn get(&self, object: &ObjectRef) -> Result<Option<Value>> {
        Ok(self
            .locate(object)?
            .and_then(|(_, chunks, i)| chunks[i].value()))
    }

    /// Changes the object in place; `Ok(false)` if it does not exist. When
    /// `change` leaves it as it was, nothing is written.
    pub fn update(&self, object: &ObjectRef, change: impl FnOnce(&mut Value)) -> Result<bool> {
        let Some((file, mut chunks, index)) = self.locate(object)? else {
            return Ok(false);
        };
        let Some(mut value) = chunks[index].value() else {
            return Ok(false);
        };
        let before = value.clone();
        change(&mut value);
        if value != before {
            chunks[index].text = to_yaml(&value)?;
            write_atomically(&file, join_documents(&chunks).as_bytes())?;
        }
        Ok(true)
    }

    /// Writes the object: replaces it where it is, or creates its own file.
    /// Returns the file written.
    pub fn put(&self, object: &ObjectRef, value: &Value) -> Result<PathBuf> {
        if let Some((file, mut chunks, index)) = self.locate(object)? {
            chunks[index].text = to_yaml(value)?;
            write_atomically(&file, join_documents(&chunks).as_bytes())?;
            return Ok(file);
        }
        let file = self.root.join(object.file_name());
        write_atomically(&file, to_yaml(value)?.as_bytes())?;
        Ok(file)
    }

    /// Removes the object; `Ok(false)` if it does not exist. A file left
    /// without documents is removed.
    pub fn delete(&self, object: &ObjectRef) -> Result<bool> {
        let Some((file, mut chunks, index)) = self.locate(object)? else {
            return Ok(false);
        };
        chunks.remove(index);
        if chunks.iter().all(|c| c.value().is_none()) {
            std::fs::remove_file(&file)
                .map_err(|e| CliError::other(format!("cannot remove {}: {e}", file.display())))?;
        } else {
            write_atomically(&file, join_documents(&chunks).as_bytes())?;
        }
        Ok(true)
    }
}

/// Replaces `path` with `bytes`: a hidden temporary file beside it, synced,
/// with the original's permissions, renamed over it.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let fail = |what: &str, e: std::io::Error| {
        CliError::other(format!("cannot {what} {}: {e}", path.display()))
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.weftctl-{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        if let Ok(meta) = std::fs::metadata(path) {
            f.set_permissions(meta.permissions())?;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(|e| fail("write", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# the cluster\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: a   # keep me\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: b\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec: {}\n";

    #[test]
    fn split_and_join_round_trip() {
        let chunks = split_documents(FILE);
        assert_eq!(chunks.len(), 4);
        assert_eq!(join_documents(&chunks), FILE);
        assert!(chunks[0].value().is_none());
    }

    #[test]
    fn update_rewrites_only_that_document() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, FILE).expect("write");
        let m = ManifestDir::open(dir.path()).expect("open");
        let found = m
            .update(&ObjectRef::cluster("Namespace", "b"), |v| {
                v["metadata"]["labels"] = serde_json::json!({"x": "y"});
            })
            .expect("update");
        assert!(found);
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.contains("name: a   # keep me"), "{text}");
        let b = m
            .get(&ObjectRef::cluster("Namespace", "b"))
            .expect("get")
            .expect("b");
        assert_eq!(b["metadata"]["labels"]["x"], "y");
        // The pod without a namespace is in "default".
        assert!(
            m.get(&ObjectRef::namespaced("Pod", "default", "p"))
                .expect("get")
                .is_some()
        );
        assert!(
            !m.update(&ObjectRef::cluster("Namespace", "zz"), |_| {})
                .expect("update")
        );
    }

    #[test]
    fn put_and_delete() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = ManifestDir::open(dir.path()).expect("open");
        let gw = ObjectRef::namespaced("Gateway", "ns", "waypoint");
        let value = serde_json::json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"name": "waypoint", "namespace": "ns"}});
        let file = m.put(&gw, &value).expect("put");
        assert_eq!(file, dir.path().join("weftctl.gateway.ns.waypoint.yaml"));
        assert_eq!(m.get(&gw).expect("get"), Some(value.clone()));
        // A second put replaces in place.
        assert_eq!(m.put(&gw, &value).expect("put"), file);
        assert!(m.delete(&gw).expect("delete"));
        assert!(!file.exists());
        assert!(!m.delete(&gw).expect("delete"));
        // No temporary file is left behind.
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").collect();
        assert!(leftovers.is_empty());
    }
}
