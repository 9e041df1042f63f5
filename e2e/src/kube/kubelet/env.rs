//! A container's environment as the kubelet computes it: the Service
//! variables of the API server, `env` (values, the downward API, ConfigMap
//! and Secret keys) and `envFrom`, with `$(VAR)` references expanded the way
//! Kubernetes does in env values, commands and args.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};

/// ConfigMaps' and Secrets' data, by name, in the pod's namespace: fetched
/// before the container starts.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    /// ConfigMap name → key → value.
    pub config_maps: BTreeMap<String, BTreeMap<String, String>>,
    /// Secret name → key → decoded value.
    pub secrets: BTreeMap<String, BTreeMap<String, String>>,
}

/// What the downward API reads besides the Pod object.
#[derive(Clone, Debug)]
pub struct PodFacts {
    /// The pod's IP.
    pub pod_ip: String,
    /// Its node's IP.
    pub host_ip: String,
}

/// Expands `$(NAME)` from `vars`; `$$` is a literal `$`, and a reference to
/// an unknown name is left as written (both as Kubernetes does).
pub fn expand(text: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('(')
            && let Some(end) = body.find(')')
        {
            let name = &body[..end];
            match vars.get(name) {
                Some(value) => out.push_str(value),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The value of a downward-API `fieldPath` for `pod`.
pub fn field(pod: &Pod, facts: &PodFacts, path: &str) -> Result<String, String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let keyed = |prefix: &str, map: Option<&BTreeMap<String, String>>| {
        path.strip_prefix(prefix)
            .and_then(|k| k.strip_suffix("']"))
            .map(|key| map.and_then(|m| m.get(key)).cloned().unwrap_or_default())
    };
    if let Some(v) = keyed("metadata.labels['", meta.labels.as_ref()) {
        return Ok(v);
    }
    if let Some(v) = keyed("metadata.annotations['", meta.annotations.as_ref()) {
        return Ok(v);
    }
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" | "status.podIPs" => facts.pod_ip.clone(),
        "status.hostIP" | "status.hostIPs" => facts.host_ip.clone(),
        other => return Err(format!("fieldRef {other:?} is not a downward API field")),
    })
}

fn lookup<'a>(
    kind: &str,
    maps: &'a BTreeMap<String, BTreeMap<String, String>>,
    name: &str,
    key: &str,
    optional: bool,
) -> Result<Option<&'a String>, String> {
    match maps.get(name).and_then(|m| m.get(key)) {
        Some(v) => Ok(Some(v)),
        None if optional => Ok(None),
        None => Err(format!("{kind} {name:?} has no key {key:?}")),
    }
}

/// The environment of `container` in `pod`, in order, after `base` (the
/// variables the kubelet itself sets).
pub fn resolve(
    pod: &Pod,
    container: &Container,
    facts: &PodFacts,
    sources: &Sources,
    base: &[(String, String)],
) -> Result<BTreeMap<String, String>, String> {
    let mut vars: BTreeMap<String, String> = base.iter().cloned().collect();
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (kind, maps, name, optional) = if let Some(r) = &from.config_map_ref {
            ("ConfigMap", &sources.config_maps, &r.name, r.optional)
        } else if let Some(r) = &from.secret_ref {
            ("Secret", &sources.secrets, &r.name, r.optional)
        } else {
            continue;
        };
        match maps.get(name) {
            Some(data) => {
                for (k, v) in data {
                    vars.insert(format!("{prefix}{k}"), v.clone());
                }
            }
            None if optional == Some(true) => {}
            None => return Err(format!("envFrom: {kind} {name:?} not found")),
        }
    }
    for var in container.env.iter().flatten() {
        let value = if let Some(source) = &var.value_from {
            if let Some(f) = &source.field_ref {
                Some(field(pod, facts, &f.field_path)?)
            } else if let Some(r) = &source.config_map_key_ref {
                lookup(
                    "ConfigMap",
                    &sources.config_maps,
                    &r.name,
                    &r.key,
                    r.optional == Some(true),
                )?
                .cloned()
            } else if let Some(r) = &source.secret_key_ref {
                lookup(
                    "Secret",
                    &sources.secrets,
                    &r.name,
                    &r.key,
                    r.optional == Some(true),
                )?
                .cloned()
            } else {
                return Err(format!(
                    "env {}: only fieldRef, configMapKeyRef and secretKeyRef are supported by the harness' kubelet",
                    var.name
                ));
            }
        } else {
            Some(expand(var.value.as_deref().unwrap_or_default(), &vars))
        };
        if let Some(value) = value {
            vars.insert(var.name.clone(), value);
        }
    }
    Ok(vars)
}

/// ConfigMaps and Secrets `pod`'s containers read their environment from.
pub fn referenced(pod: &Pod) -> (Vec<String>, Vec<String>) {
    let mut config_maps = Vec::new();
    let mut secrets = Vec::new();
    let spec = pod.spec.iter();
    for c in spec.flat_map(|s| s.init_containers.iter().flatten().chain(&s.containers)) {
        for from in c.env_from.iter().flatten() {
            config_maps.extend(from.config_map_ref.as_ref().map(|r| r.name.clone()));
            secrets.extend(from.secret_ref.as_ref().map(|r| r.name.clone()));
        }
        for var in c.env.iter().flatten() {
            if let Some(source) = &var.value_from {
                config_maps.extend(source.config_map_key_ref.as_ref().map(|r| r.name.clone()));
                secrets.extend(source.secret_key_ref.as_ref().map(|r| r.name.clone()));
            }
        }
    }
    (config_maps, secrets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn references_expand_escape_and_stay_when_unknown() {
        let v = vars(&[("A", "1"), ("B", "x y")]);
        assert_eq!(expand("$(A)-$(B)", &v), "1-x y");
        assert_eq!(expand("$$(A)", &v), "$(A)");
        assert_eq!(expand("$(C) $A $(", &v), "$(C) $A $(");
    }

    #[test]
    fn the_downward_api_and_keys_resolve_in_order() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "n", "uid": "u1", "labels": {"app": "web"}},
            "spec": {"nodeName": "node-1", "serviceAccountName": "sa", "containers": [{
                "name": "c",
                "env": [
                    {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                    {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "ADDR", "value": "$(IP):80"},
                    {"name": "K", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}},
                    {"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "missing", "optional": true}}}
                ],
                "envFrom": [{"prefix": "CM_", "configMapRef": {"name": "cm"}}]
            }]}
        }))
        .expect("pod");
        let container = &pod.spec.as_ref().expect("spec").containers[0];
        let facts = PodFacts {
            pod_ip: "10.244.1.5".into(),
            host_ip: "10.10.0.11".into(),
        };
        let mut sources = Sources::default();
        sources.config_maps.insert("cm".into(), vars(&[("k", "v")]));
        let env = resolve(
            &pod,
            container,
            &facts,
            &sources,
            &[("BASE".into(), "b".into())],
        )
        .expect("env");
        assert_eq!(env["POD"], "p");
        assert_eq!(env["APP"], "web");
        assert_eq!(env["ADDR"], "10.244.1.5:80");
        assert_eq!(env["K"], "v");
        assert_eq!(env["CM_k"], "v");
        assert_eq!(env["BASE"], "b");
        assert!(!env.contains_key("S"));
        assert_eq!(
            referenced(&pod),
            (
                vec!["cm".to_string(), "cm".to_string()],
                vec!["s".to_string()]
            )
        );

        sources.config_maps.clear();
        let err = resolve(&pod, container, &facts, &sources, &[]).unwrap_err();
        assert!(err.contains("\"cm\""), "{err}");
        assert!(field(&pod, &facts, "spec.bogus").is_err());
    }
}

/// The Service variables a container sees for `services` (its namespace's,
/// and the `kubernetes` Service), as the kubelet writes them:
/// `NAME_SERVICE_HOST`, `NAME_SERVICE_PORT` and `NAME_SERVICE_PORT_<PORT>`.
pub fn service_env(services: &[k8s_openapi::api::core::v1::Service]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for svc in services {
        let Some(spec) = &svc.spec else { continue };
        let Some(ip) = spec
            .cluster_ip
            .as_deref()
            .filter(|ip| !ip.is_empty() && *ip != "None")
        else {
            continue;
        };
        let name = svc
            .metadata
            .name
            .as_deref()
            .unwrap_or_default()
            .to_ascii_uppercase()
            .replace('-', "_");
        let ports = spec.ports.as_deref().unwrap_or_default();
        let Some(first) = ports.first() else { continue };
        out.push((format!("{name}_SERVICE_HOST"), ip.to_string()));
        out.push((format!("{name}_SERVICE_PORT"), first.port.to_string()));
        for port in ports {
            if let Some(port_name) = &port.name {
                out.push((
                    format!(
                        "{name}_SERVICE_PORT_{}",
                        port_name.to_ascii_uppercase().replace('-', "_")
                    ),
                    port.port.to_string(),
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod service_tests {
    use super::*;

    #[test]
    fn services_become_host_and_port_variables() {
        let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "weft-controller"},
            "spec": {"clusterIP": "10.96.0.20", "ports": [{"name": "grpc", "port": 15012}, {"name": "http-metrics", "port": 15014}]}
        }))
        .expect("svc");
        let headless: k8s_openapi::api::core::v1::Service =
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "h"}, "spec": {"clusterIP": "None", "ports": [{"port": 1}]}
            }))
            .expect("svc");
        let env: BTreeMap<String, String> = service_env(&[svc, headless]).into_iter().collect();
        assert_eq!(env["WEFT_CONTROLLER_SERVICE_HOST"], "10.96.0.20");
        assert_eq!(env["WEFT_CONTROLLER_SERVICE_PORT"], "15012");
        assert_eq!(env["WEFT_CONTROLLER_SERVICE_PORT_HTTP_METRICS"], "15014");
        assert!(!env.contains_key("H_SERVICE_HOST"));
    }
}
