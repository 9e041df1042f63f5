//! weft's own install, embedded in the binary: deploy/base/weft.yaml, the
//! Helm chart's default rendering (`make manifests`), so `weftctl install`
//! installs exactly what `kubectl apply -k deploy/base` and `helm install`
//! do. Applied server-side with the field manager `weftctl`, removed in
//! reverse order.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams, PropagationPolicy};
use kube::core::GroupVersionKind;
use kube::discovery::{self, ApiResource, Scope};
use kube::{Api, Client};
use serde_json::Value;

use crate::cluster::kube::{FIELD_MANAGER, kube_error};
use crate::exit::{CliError, Result};

/// The manifests, as `make manifests` rendered them.
pub const MANIFESTS: &str = include_str!("../../deploy/base/weft.yaml");

/// One object of the manifests.
#[derive(Clone, Debug)]
pub struct Object {
    /// `apiVersion`.
    pub api_version: String,
    /// `kind`.
    pub kind: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`, if namespaced.
    pub namespace: Option<String>,
    /// The whole object.
    pub body: Value,
}

impl Object {
    /// `Kind/name` or `Kind namespace/name`, for progress lines.
    pub fn describe(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.kind, self.name),
            None => format!("{} {}", self.kind, self.name),
        }
    }

    /// A CustomResourceDefinition.
    pub fn is_crd(&self) -> bool {
        self.kind == "CustomResourceDefinition"
    }
}

/// The embedded manifests as objects, in install order: CRDs, then the
/// Namespace, then the rest as rendered (Helm's kind order).
pub fn objects() -> Result<Vec<Object>> {
    let mut out = Vec::new();
    for doc in weft_api::yaml::documents(MANIFESTS) {
        let body: Value = doc
            .parse()
            .map_err(|e| CliError::other(format!("the embedded manifests: {e}")))?;
        if body.is_null() {
            continue;
        }
        let text = |v: &Value| v.as_str().map(str::to_string);
        let (Some(api_version), Some(kind), Some(name)) = (
            text(&body["apiVersion"]),
            text(&body["kind"]),
            text(&body["metadata"]["name"]),
        ) else {
            return Err(CliError::other(format!(
                "the embedded manifests: document {} is not an object",
                doc.index
            )));
        };
        out.push(Object {
            api_version,
            kind,
            name,
            namespace: text(&body["metadata"]["namespace"]),
            body,
        });
    }
    let rank = |o: &Object| match o.kind.as_str() {
        "CustomResourceDefinition" => 0,
        "Namespace" => 1,
        _ => 2,
    };
    // Stable: within a rank, the rendered order.
    out.sort_by_key(rank);
    Ok(out)
}

/// The label every object of weft's manifests carries (the chart's
/// `weft.labels`).
pub const PART_OF: (&str, &str) = ("app.kubernetes.io/part-of", "weft");

/// Kinds a release of weft may have shipped besides those of the current
/// manifests, looked at for pruning: an object of a kind the new release no
/// longer has at all must still go.
const PRUNABLE_KINDS: &[(&str, &str)] = &[
    ("v1", "ConfigMap"),
    ("v1", "Service"),
    ("v1", "ServiceAccount"),
    ("apps/v1", "Deployment"),
    ("apps/v1", "DaemonSet"),
    ("policy/v1", "PodDisruptionBudget"),
    ("rbac.authorization.k8s.io/v1", "Role"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
];

/// Whether weftctl itself applied `object` (its field manager, operation
/// Apply): only such objects are pruned, never what the controller made
/// (the CA Secret, waypoints) or what a user labelled alike.
fn applied_by_weftctl(object: &DynamicObject) -> bool {
    object.metadata.managed_fields.iter().flatten().any(|m| {
        m.manager.as_deref() == Some(FIELD_MANAGER) && m.operation.as_deref() == Some("Apply")
    })
}

/// Objects an earlier release installed that the current manifests no
/// longer have: labelled as weft's, applied by weftctl, of a kind weft
/// ships, in weft's namespace or cluster-scoped. CRDs and the Namespace are
/// never pruned. Found with the same discovery [`Resolver`] uses.
pub async fn stale(resolver: &mut Resolver, objects: &[Object]) -> Result<Vec<Object>> {
    let namespace = system_namespace(objects)
        .unwrap_or("weft-system")
        .to_string();
    let current: std::collections::BTreeSet<(String, Option<String>, String)> = objects
        .iter()
        .map(|o| (o.kind.clone(), o.namespace.clone(), o.name.clone()))
        .collect();
    let mut kinds: Vec<(String, String)> = PRUNABLE_KINDS
        .iter()
        .map(|(v, k)| (v.to_string(), k.to_string()))
        .collect();
    for o in objects {
        let kind = (o.api_version.clone(), o.kind.clone());
        if !o.is_crd() && o.kind != "Namespace" && !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    let selector = format!("{}={}", PART_OF.0, PART_OF.1);
    let mut out = Vec::new();
    for (api_version, kind) in kinds {
        let probe = Object {
            api_version: api_version.clone(),
            kind: kind.clone(),
            name: String::new(),
            namespace: Some(namespace.clone()),
            body: Value::Null,
        };
        let api = resolver.api(&probe).await?;
        let found = api
            .list(&kube::api::ListParams::default().labels(&selector))
            .await
            .map_err(|e| kube_error(&format!("listing {kind}s to prune"), e))?;
        for item in found.items {
            let (name, ns) = (
                item.metadata.name.clone().unwrap_or_default(),
                item.metadata.namespace.clone(),
            );
            if current.contains(&(kind.clone(), ns.clone(), name.clone()))
                || !applied_by_weftctl(&item)
            {
                continue;
            }
            out.push(Object {
                api_version: api_version.clone(),
                kind: kind.clone(),
                name,
                namespace: ns,
                body: Value::Null,
            });
        }
    }
    Ok(out)
}

/// The namespace weft runs in, as the manifests say.
pub fn system_namespace(objects: &[Object]) -> Option<&str> {
    objects
        .iter()
        .find(|o| o.kind == "Namespace")
        .map(|o| o.name.as_str())
}

/// The workloads whose rollout install and upgrade wait for.
pub fn workloads(objects: &[Object]) -> Vec<&Object> {
    objects
        .iter()
        .filter(|o| matches!(o.kind.as_str(), "Deployment" | "DaemonSet"))
        .collect()
}

/// Resolves objects' kinds against the API server, once per kind.
pub struct Resolver {
    client: Client,
    known: BTreeMap<(String, String), (ApiResource, Scope)>,
}

impl Resolver {
    /// A resolver on `client`.
    pub fn new(client: Client) -> Resolver {
        Resolver {
            client,
            known: BTreeMap::new(),
        }
    }

    /// The dynamic API for `object`.
    pub async fn api(&mut self, object: &Object) -> Result<Api<DynamicObject>> {
        let key = (object.api_version.clone(), object.kind.clone());
        if !self.known.contains_key(&key) {
            let (group, version) = match object.api_version.split_once('/') {
                Some((g, v)) => (g, v),
                None => ("", object.api_version.as_str()),
            };
            let gvk = GroupVersionKind::gvk(group, version, &object.kind);
            let (resource, caps) =
                discovery::pinned_kind(&self.client, &gvk)
                    .await
                    .map_err(|e| {
                        kube_error(
                            &format!(
                                "{} {} (is its API installed? `weftctl check --pre`)",
                                object.api_version, object.kind
                            ),
                            e,
                        )
                    })?;
            self.known.insert(key.clone(), (resource, caps.scope));
        }
        let (resource, scope) = &self.known[&key];
        Ok(match (scope, &object.namespace) {
            (Scope::Namespaced, Some(ns)) => {
                Api::namespaced_with(self.client.clone(), ns, resource)
            }
            _ => Api::all_with(self.client.clone(), resource),
        })
    }

    /// Server-side applies `object`, taking over fields others set (an
    /// upgrade from a kubectl or Helm install).
    pub async fn apply(&mut self, object: &Object) -> Result<()> {
        let api = self.api(object).await?;
        api.patch(
            &object.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&object.body),
        )
        .await
        .map_err(|e| kube_error(&object.describe(), e))?;
        Ok(())
    }

    /// Takes the live copy of `object` over from the other field managers
    /// that wrote it (a `kubectl apply` or Helm install), by applying its
    /// live fields back unchanged as weftctl. Server-side apply removes only
    /// what the applying manager owned and now leaves out, so without this
    /// a field an earlier release set and this one dropped (a container
    /// port, say) would stay for ever under its old owner. Returns whether
    /// anything was taken over; status writers do not count.
    pub async fn adopt(&mut self, object: &Object) -> Result<bool> {
        let api = self.api(object).await?;
        let live = api
            .get_opt(&object.name)
            .await
            .map_err(|e| kube_error(&object.describe(), e))?;
        let Some(live) = live else {
            return Ok(false);
        };
        let foreign = live.metadata.managed_fields.iter().flatten().any(|m| {
            m.manager.as_deref() != Some(FIELD_MANAGER)
                && m.subresource.as_deref().unwrap_or_default().is_empty()
        });
        if !foreign {
            return Ok(false);
        }
        let what = || format!("taking over {}", object.describe());
        let body = adoptable(object, &live);
        let owned = api
            .patch(
                &object.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await
            .map_err(|e| kube_error(&what(), e))?;
        // Applying the same values makes weftctl a co-owner, not the owner:
        // the other managers' entries go, so that what the next apply leaves
        // out has nobody left to keep it. Status writers stay.
        let kept: Vec<_> = owned
            .metadata
            .managed_fields
            .into_iter()
            .flatten()
            .filter(|m| {
                m.manager.as_deref() == Some(FIELD_MANAGER)
                    || !m.subresource.as_deref().unwrap_or_default().is_empty()
            })
            .collect();
        api.patch(
            &object.name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"managedFields": kept}})),
        )
        .await
        .map_err(|e| kube_error(&what(), e))?;
        Ok(true)
    }

    /// Deletes `object` (its dependents in the background); absent is fine.
    /// Returns whether it was there.
    pub async fn delete(&mut self, object: &Object) -> Result<bool> {
        let api = self.api(object).await?;
        let params = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..DeleteParams::default()
        };
        match api.delete(&object.name, &params).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
            Err(e) => Err(kube_error(&object.describe(), e)),
        }
    }

    /// Whether `object` exists.
    pub async fn exists(&mut self, object: &Object) -> Result<bool> {
        let api = self.api(object).await?;
        api.get_opt(&object.name)
            .await
            .map(|o| o.is_some())
            .map_err(|e| kube_error(&object.describe(), e))
    }
}

/// The live object as an apply body: its fields as they are, without what
/// the API server keeps for itself (status, uid, versions, managed fields)
/// or the client-side apply annotation.
fn adoptable(object: &Object, live: &DynamicObject) -> Value {
    let mut body = serde_json::to_value(live).unwrap_or(Value::Null);
    if let Some(map) = body.as_object_mut() {
        map.insert("apiVersion".into(), object.api_version.clone().into());
        map.insert("kind".into(), object.kind.clone().into());
        map.remove("status");
    }
    let mut metadata = serde_json::Map::new();
    metadata.insert("name".into(), object.name.clone().into());
    if let Some(ns) = &object.namespace {
        metadata.insert("namespace".into(), ns.clone().into());
    }
    if let Some(labels) = &live.metadata.labels {
        metadata.insert("labels".into(), serde_json::json!(labels));
    }
    if let Some(annotations) = &live.metadata.annotations {
        let kept: BTreeMap<&String, &String> = annotations
            .iter()
            .filter(|(k, _)| k.as_str() != "kubectl.kubernetes.io/last-applied-configuration")
            .collect();
        if !kept.is_empty() {
            metadata.insert("annotations".into(), serde_json::json!(kept));
        }
    }
    body["metadata"] = Value::Object(metadata);
    body
}

/// How far one workload's rollout is.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Rollout {
    /// `deployment/name` or `daemonset/name`.
    pub workload: String,
    /// Pods of the current spec that are ready.
    pub ready: i32,
    /// Pods wanted.
    pub wanted: i32,
    /// The controller has seen the current spec and every pod is current.
    pub done: bool,
}

/// Reads the rollout of a Deployment or DaemonSet.
pub async fn rollout(client: &Client, object: &Object) -> Result<Rollout> {
    let ns = object.namespace.as_deref().unwrap_or("default");
    let what = format!("{}/{}", object.kind.to_lowercase(), object.name);
    let generation_seen = |generation: Option<i64>, observed: Option<i64>| {
        observed.unwrap_or(0) >= generation.unwrap_or(0)
    };
    if object.kind == "Deployment" {
        let d = Api::<Deployment>::namespaced(client.clone(), ns)
            .get(&object.name)
            .await
            .map_err(|e| kube_error(&what, e))?;
        let wanted = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let status = d.status.unwrap_or_default();
        let ready = status.ready_replicas.unwrap_or(0);
        let done = generation_seen(d.metadata.generation, status.observed_generation)
            && status.updated_replicas.unwrap_or(0) == wanted
            && status.replicas.unwrap_or(0) == wanted
            && status.available_replicas.unwrap_or(0) == wanted;
        Ok(Rollout {
            workload: what,
            ready,
            wanted,
            done,
        })
    } else {
        let d = Api::<DaemonSet>::namespaced(client.clone(), ns)
            .get(&object.name)
            .await
            .map_err(|e| kube_error(&what, e))?;
        let status = d.status.unwrap_or_default();
        let wanted = status.desired_number_scheduled;
        let done = generation_seen(d.metadata.generation, status.observed_generation)
            && status.updated_number_scheduled.unwrap_or(0) == wanted
            && status.number_ready == wanted
            && status.number_available.unwrap_or(0) == wanted;
        Ok(Rollout {
            workload: what,
            ready: status.number_ready,
            wanted,
            done,
        })
    }
}

/// Waits until every workload has rolled out, calling `progress` whenever
/// one's state changes; gives up after `limit`.
pub async fn wait_rolled_out(
    client: &Client,
    workloads: &[&Object],
    limit: Duration,
    mut progress: impl FnMut(&Rollout),
) -> Result<Vec<Rollout>> {
    let deadline = Instant::now() + limit;
    let mut last: BTreeMap<String, Rollout> = BTreeMap::new();
    loop {
        let mut all = Vec::new();
        for w in workloads {
            let r = rollout(client, w).await?;
            if last.get(&r.workload) != Some(&r) {
                progress(&r);
                last.insert(r.workload.clone(), r.clone());
            }
            all.push(r);
        }
        if all.iter().all(|r| r.done) {
            return Ok(all);
        }
        if Instant::now() >= deadline {
            let pending: Vec<String> = all
                .iter()
                .filter(|r| !r.done)
                .map(|r| format!("{} ({}/{} ready)", r.workload, r.ready, r.wanted))
                .collect();
            return Err(CliError::other(format!(
                "not rolled out within {limit:?}: {}",
                pending.join(", ")
            )));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_manifests_are_weft_in_install_order() {
        let objects = objects().expect("objects");
        assert!(objects[0].is_crd() && objects[1].is_crd());
        assert_eq!(objects[2].kind, "Namespace");
        assert_eq!(system_namespace(&objects), Some("weft-system"));
        let names: Vec<String> = workloads(&objects)
            .iter()
            .map(|o| format!("{}/{}", o.kind, o.name))
            .collect();
        assert_eq!(
            names,
            [
                "DaemonSet/weft-node-agent",
                "DaemonSet/ztunnel",
                "Deployment/weft-controller"
            ]
        );
        for o in &objects[3..] {
            assert!(
                o.namespace.as_deref().is_none_or(|ns| ns == "weft-system"),
                "{}",
                o.describe()
            );
        }
    }
}
