//! The cluster's "API server": the directory of Kubernetes YAML that the
//! controller and the node agents watch (their `files` registry).
//!
//! The harness writes here what a real cluster's API would hold: Namespaces,
//! Services (with a cluster IP, as the API server would allocate), Pods as
//! the kubelet reports them once running (`spec.nodeName`, `status.podIP`,
//! phase Running, and the `weft.dev/netns` annotation the node agent uses to
//! find a running pod's namespace in local mode), and anything a user applies
//! (policies, Gateways). One file per object, written atomically (a
//! temporary file without the `.yaml` suffix, then a rename), so a watcher
//! never reads half an object.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::error::{Error, Result};

/// The label that enrolls a namespace or pod (docs/design.md §2).
pub const DATAPLANE_MODE: &str = "weft.dev/dataplane-mode";
/// The annotation carrying a pod's netns path in local mode.
pub const NETNS_ANNOTATION: &str = "weft.dev/netns";

/// The class of the Gateways that are weft waypoints (docs/design.md §2).
pub const WAYPOINT_CLASS: &str = "weft-waypoint";
/// The label binding a namespace, Service or pod to a waypoint.
pub const USE_WAYPOINT: &str = "weft.dev/use-waypoint";
/// The label on a waypoint's Gateway saying what it serves.
pub const WAYPOINT_FOR: &str = "weft.dev/waypoint-for";
/// The label the deployer puts on a waypoint's pods.
pub const GATEWAY_NAME: &str = "gateway.networking.k8s.io/gateway-name";

/// The manifest directory.
#[derive(Clone, Debug)]
pub struct Manifests {
    dir: PathBuf,
}

impl Manifests {
    /// The directory `dir`, created if needed.
    pub fn create(dir: &Path) -> Result<Manifests> {
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        Ok(Manifests {
            dir: dir.to_path_buf(),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file(&self, stem: &str) -> PathBuf {
        self.dir.join(format!("{stem}.yaml"))
    }

    /// Writes `docs` as the YAML documents of file `<stem>.yaml`, replacing it.
    pub fn write(&self, stem: &str, docs: &[Value]) -> Result<PathBuf> {
        let mut text = String::new();
        for doc in docs {
            if !text.is_empty() {
                text.push_str("---\n");
            }
            text.push_str(
                &weft_api::yaml::to_string(doc)
                    .map_err(|e| Error::decode(format!("{stem}.yaml"), e))?,
            );
        }
        self.write_text(stem, &text)
    }

    /// Writes YAML text (several documents allowed) as `<stem>.yaml`.
    pub fn write_text(&self, stem: &str, text: &str) -> Result<PathBuf> {
        let path = self.file(stem);
        let tmp = self.dir.join(format!(".{stem}.tmp"));
        std::fs::write(&tmp, text).map_err(Error::io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(Error::io(&path))?;
        Ok(path)
    }

    /// Removes `<stem>.yaml` (missing is fine).
    pub fn remove(&self, stem: &str) -> Result<()> {
        let path = self.file(stem);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(path)(e)),
            _ => Ok(()),
        }
    }

    /// Reads `<stem>.yaml` back as its first document, if it exists.
    pub fn read(&self, stem: &str) -> Result<Option<Value>> {
        let path = self.file(stem);
        match std::fs::read_to_string(&path) {
            Ok(text) => weft_api::yaml::from_str(&text)
                .map(Some)
                .map_err(|e| Error::decode(path.display().to_string(), e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path)(e)),
        }
    }
}

impl Manifests {
    /// Every document of every `*.yaml` file, whoever wrote it (the harness,
    /// `weftctl` in local mode, a user). Files that do not parse are
    /// skipped, as the controller skips them.
    pub fn documents(&self) -> Result<Vec<Value>> {
        let mut docs = Vec::new();
        // Subdirectories too, as the controller's files registry reads them,
        // so the harness and the controller agree on what exists.
        let mut paths = Vec::new();
        let mut dirs = vec![self.dir.clone()];
        while let Some(dir) = dirs.pop() {
            let entries = std::fs::read_dir(&dir).map_err(Error::io(&dir))?;
            for path in entries.flatten().map(|e| e.path()) {
                if path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                {
                    continue;
                }
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                    paths.push(path);
                }
            }
        }
        paths.sort();
        for path in paths {
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            // Each document on its own: one that does not parse is skipped,
            // the others of the file are kept, as the controller does.
            for doc in weft_api::yaml::documents(&text) {
                if let Ok(value @ Value::Object(_)) = doc.parse::<Value>() {
                    docs.push(value);
                }
            }
        }
        Ok(docs)
    }

    /// The waypoint Gateways (class [`WAYPOINT_CLASS`]) in the directory,
    /// as `(namespace, name)`, sorted.
    pub fn waypoint_gateways(&self) -> Result<Vec<(String, String)>> {
        let mut found: Vec<(String, String)> = self
            .documents()?
            .iter()
            .filter(|d| d["kind"] == "Gateway" && d["spec"]["gatewayClassName"] == WAYPOINT_CLASS)
            .filter_map(|d| {
                let name = d["metadata"]["name"].as_str()?;
                let namespace = d["metadata"]["namespace"].as_str().unwrap_or("default");
                Some((namespace.to_string(), name.to_string()))
            })
            .collect();
        found.sort();
        found.dedup();
        Ok(found)
    }

    /// The `metadata.uid` of Gateway `namespace/name`, empty when it has
    /// none (Gateways written by hand in files mode often have none).
    pub fn gateway_uid(&self, namespace: &str, name: &str) -> Result<String> {
        Ok(self
            .documents()?
            .iter()
            .find(|d| {
                d["kind"] == "Gateway"
                    && d["metadata"]["name"] == name
                    && d["metadata"]["namespace"].as_str().unwrap_or("default") == namespace
            })
            .and_then(|d| d["metadata"]["uid"].as_str())
            .unwrap_or_default()
            .to_string())
    }
}

/// What the deployer appends to a Gateway's name for its waypoint's
/// ServiceAccount (docs/design.md §5).
pub const WAYPOINT_SERVICE_ACCOUNT_SUFFIX: &str = "-weft-waypoint";

/// The ServiceAccount a waypoint of Gateway `name` runs as.
pub fn waypoint_service_account_name(name: &str) -> String {
    format!("{name}{WAYPOINT_SERVICE_ACCOUNT_SUFFIX}")
}

/// The file stem of a ServiceAccount object.
pub fn service_account_stem(namespace: &str, name: &str) -> String {
    format!("serviceaccount-{namespace}-{name}")
}

/// The ServiceAccount the deployer makes for waypoint Gateway
/// `namespace/gateway` (uid `gateway_uid`): labelled with the Gateway's name
/// and controlled by it, which is what the controller checks before it
/// treats the ServiceAccount as the waypoint's.
pub fn waypoint_service_account(namespace: &str, gateway: &str, gateway_uid: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {
            "name": waypoint_service_account_name(gateway),
            "namespace": namespace,
            "labels": {GATEWAY_NAME: gateway},
            "ownerReferences": [{
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "Gateway",
                "name": gateway,
                "uid": gateway_uid,
                "controller": true,
            }],
        },
    })
}

/// The file stem of a Gateway object.
pub fn gateway_stem(namespace: &str, name: &str) -> String {
    format!("gateway-{namespace}-{name}")
}

/// A waypoint: a Gateway of class [`WAYPOINT_CLASS`] with the HBONE
/// listener, serving `waypoint_for` (`service`, `workload`, `all`).
pub fn waypoint_gateway(namespace: &str, name: &str, waypoint_for: &str) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {WAYPOINT_FOR: waypoint_for},
        },
        "spec": {
            "gatewayClassName": WAYPOINT_CLASS,
            "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
        },
    })
}

/// The file stem of a Namespace object.
pub fn namespace_stem(name: &str) -> String {
    format!("namespace-{name}")
}

/// The file stem of a Pod object.
pub fn pod_stem(namespace: &str, name: &str) -> String {
    format!("pod-{namespace}-{name}")
}

/// The file stem of a Service object.
pub fn service_stem(namespace: &str, name: &str) -> String {
    format!("service-{namespace}-{name}")
}

/// A Namespace.
pub fn namespace(name: &str, labels: &BTreeMap<String, String>) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": labels},
    })
}

/// What the kubelet reports of a running pod.
#[derive(Clone, Debug)]
pub struct PodObject<'a> {
    /// Namespace.
    pub namespace: &'a str,
    /// Name.
    pub name: &'a str,
    /// `metadata.uid`.
    pub uid: &'a str,
    /// Labels.
    pub labels: &'a BTreeMap<String, String>,
    /// `spec.serviceAccountName`.
    pub service_account: &'a str,
    /// `spec.nodeName`.
    pub node: &'a str,
    /// The node's address (`status.hostIP`).
    pub host_ip: &'a str,
    /// `status.podIP`.
    pub ip: &'a str,
    /// The pod's netns path (annotation [`NETNS_ANNOTATION`]).
    pub netns_path: &'a Path,
    /// Container ports, for readers; weft does not need them.
    pub ports: &'a [u16],
}

/// A running Pod.
pub fn pod(p: &PodObject<'_>) -> Value {
    let ports: Vec<Value> = p
        .ports
        .iter()
        .map(|port| json!({"containerPort": port, "protocol": "TCP"}))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": p.name,
            "namespace": p.namespace,
            "uid": p.uid,
            "labels": p.labels,
            "annotations": {NETNS_ANNOTATION: p.netns_path.display().to_string()},
        },
        "spec": {
            "nodeName": p.node,
            "serviceAccountName": p.service_account,
            "containers": [{"name": "app", "image": "weft-e2e-app", "ports": ports}],
        },
        "status": {
            "phase": "Running",
            "hostIP": p.host_ip,
            "podIP": p.ip,
            "podIPs": [{"ip": p.ip}],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    })
}

/// A port of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// Its name.
    pub name: String,
    /// The port on the VIP.
    pub port: u16,
    /// The pods' port.
    pub target_port: u16,
    /// `appProtocol` (`http`, `tcp`), if any.
    pub app_protocol: Option<String>,
}

/// A ClusterIP Service selecting pods by `selector`.
pub fn service(
    namespace: &str,
    name: &str,
    labels: &BTreeMap<String, String>,
    selector: &BTreeMap<String, String>,
    vip: &str,
    ports: &[ServicePort],
) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|p| {
            let mut v = json!({
                "name": p.name,
                "port": p.port,
                "targetPort": p.target_port,
                "protocol": "TCP",
            });
            if let Some(proto) = &p.app_protocol {
                v["appProtocol"] = json!(proto);
            }
            v
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": vip,
            "clusterIPs": [vip],
            "selector": selector,
            "ports": ports,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_atomic_and_readable() {
        let dir = std::env::temp_dir().join(format!("weft-e2e-manifests-{}", std::process::id()));
        let m = Manifests::create(&dir).expect("dir");
        let labels: BTreeMap<String, String> =
            [(DATAPLANE_MODE.to_string(), "ambient".to_string())].into();
        m.write(&namespace_stem("mesh"), &[namespace("mesh", &labels)])
            .expect("write");
        let back = m
            .read(&namespace_stem("mesh"))
            .expect("read")
            .expect("exists");
        assert_eq!(back["metadata"]["labels"][DATAPLANE_MODE], "ambient");
        let names: Vec<String> = std::fs::read_dir(&dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["namespace-mesh.yaml".to_string()]);
        m.remove(&namespace_stem("mesh")).expect("remove");
        m.remove(&namespace_stem("mesh")).expect("remove twice");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn finds_waypoint_gateways_whoever_wrote_them() {
        let dir = std::env::temp_dir().join(format!("weft-e2e-gateways-{}", std::process::id()));
        let m = Manifests::create(&dir).expect("dir");
        m.write(
            &gateway_stem("shop", "wp"),
            &[waypoint_gateway("shop", "wp", "service")],
        )
        .expect("write");
        // As weftctl or a user might: several documents, another class, a
        // broken file.
        m.write_text(
            "user",
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
             metadata: {name: ingress, namespace: web}\nspec: {gatewayClassName: other}\n---\n\
             apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
             metadata: {name: api-wp, namespace: api}\nspec: {gatewayClassName: weft-waypoint}\n",
        )
        .expect("write");
        m.write_text("broken", "kind: [").expect("write");
        assert_eq!(
            m.waypoint_gateways().expect("read"),
            vec![
                ("api".to_string(), "api-wp".to_string()),
                ("shop".to_string(), "wp".to_string())
            ]
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
