//! Namespaces, Services and applied objects: what `kubectl create` and
//! `kubectl apply` would put in the API server.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::{AGENT_SYNC, Cluster, enrollment_cache};
use crate::addresses;
use crate::error::{Error, Result};
use crate::manifests::{self, DATAPLANE_MODE};
use crate::process;
use crate::service::{Service, ServiceSpec};
use crate::state::ServiceRecord;

impl Cluster {
    // ---- namespaces ------------------------------------------------------------

    /// Creates namespace `name`, enrolled in the mesh if `ambient`.
    pub fn add_namespace(&mut self, name: &str, ambient: bool) -> Result<()> {
        let mut labels = BTreeMap::new();
        if ambient {
            labels.insert(DATAPLANE_MODE.to_string(), "ambient".to_string());
        }
        self.write_namespace(name, labels)
    }

    /// Sets (`Some`) or removes (`None`) a label of namespace `name`, as
    /// `kubectl label` would: running pods are not restarted.
    pub fn label_namespace(&mut self, name: &str, key: &str, value: Option<&str>) -> Result<()> {
        let mut labels = self
            .namespaces
            .get(name)
            .cloned()
            .ok_or_else(|| Error::Invalid(format!("no namespace {name}")))?;
        match value {
            Some(v) => labels.insert(key.to_string(), v.to_string()),
            None => labels.remove(key),
        };
        self.write_namespace(name, labels)
    }

    /// Writes the Namespace and returns once every node agent has seen it
    /// (its enrollment cache says whether the namespace is ambient): in a
    /// real cluster a namespace exists long before its pods, so the pods
    /// created next are decided at their CNI ADD, not later.
    fn write_namespace(&mut self, name: &str, labels: BTreeMap<String, String>) -> Result<()> {
        self.manifests.write(
            &manifests::namespace_stem(name),
            &[manifests::namespace(name, &labels)],
        )?;
        let ambient = labels.get(DATAPLANE_MODE).is_some_and(|v| v == "ambient");
        self.namespaces.insert(name.to_string(), labels);
        for node in &self.nodes {
            let cache = node.layout().enrollment_cache();
            process::wait_until(
                &format!("{}'s agent seeing namespace {name}", node.name()),
                AGENT_SYNC,
                || {
                    enrollment_cache(&cache).is_some_and(|c| {
                        c["ambientNamespaces"]
                            .as_array()
                            .is_some_and(|a| a.iter().any(|n| n == name) == ambient)
                    })
                },
            )?;
        }
        Ok(())
    }

    // ---- services and other objects -------------------------------------------

    /// Creates a Service with the next free cluster IP.
    pub fn add_service(&mut self, spec: ServiceSpec) -> Result<Service> {
        if !self.namespaces.contains_key(&spec.namespace) {
            return Err(Error::Invalid(format!(
                "service {}/{}: no namespace {}",
                spec.namespace, spec.name, spec.namespace
            )));
        }
        let vip = addresses::vip(self.services.len() as u32);
        self.manifests.write(
            &manifests::service_stem(&spec.namespace, &spec.name),
            &[manifests::service(
                &spec.namespace,
                &spec.name,
                &spec.labels,
                &spec.selector,
                &vip.to_string(),
                &spec.ports,
            )],
        )?;
        let service = Service {
            namespace: spec.namespace.clone(),
            name: spec.name.clone(),
            vip,
            ports: spec.ports.clone(),
        };
        self.say(&format!(
            "service {}/{}: cluster IP {vip}",
            spec.namespace, spec.name
        ));
        self.state.services.push(ServiceRecord {
            namespace: spec.namespace,
            name: spec.name,
            vip: vip.to_string(),
        });
        self.state.save()?;
        self.services.push(service.clone());
        Ok(service)
    }

    /// Applies Kubernetes YAML (policies, Gateways, ...) as `<name>.yaml` in
    /// the manifest directory, like `kubectl apply -f`; applying the same
    /// name again replaces it.
    pub fn apply(&self, name: &str, yaml: &str) -> Result<PathBuf> {
        self.manifests.write_text(&format!("applied-{name}"), yaml)
    }

    /// Removes what [`Cluster::apply`] wrote under `name`.
    pub fn unapply(&self, name: &str) -> Result<()> {
        self.manifests.remove(&format!("applied-{name}"))
    }
}
