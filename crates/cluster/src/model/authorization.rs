//! AuthorizationPolicy compiled to the wire form: the full rules (waypoints)
//! and the L4 form (ztunnel).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use serde::Serialize;
use weft_api::authz;
use weft_api::config::{
    self as wire, Action, Authorization, PolicyScope, PolicyTarget, StringMatch,
};

use super::ModelConfig;
use crate::crd::{AuthorizationPolicy, PolicyAction, WorkloadSelector};
use crate::registry::ClusterState;

/// What the controller concluded about one policy, for its status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PolicyReport {
    /// False when the policy could not be used as written; then ALLOW
    /// policies match nothing and DENY policies match everything (fail
    /// closed).
    pub accepted: bool,
    /// Why it was not accepted.
    pub errors: Vec<String>,
    /// True when ztunnel enforces it (no waypoint target).
    pub enforced_by_ztunnel: bool,
    /// How the L4 form differs from the written rules.
    pub l4_warnings: Vec<String>,
}

/// A selector-scoped policy, for matching pods.
pub(crate) struct SelectorPolicy {
    pub key: String,
    /// `None` = every namespace (a policy in the root namespace).
    pub namespace: Option<String>,
    pub selector: WorkloadSelector,
}

pub(crate) struct CompiledPolicies {
    pub authorizations: BTreeMap<String, Authorization>,
    pub reports: BTreeMap<String, PolicyReport>,
    pub selectors: Vec<SelectorPolicy>,
}

pub(crate) fn compile_all(state: &ClusterState, config: &ModelConfig) -> CompiledPolicies {
    let mut out = CompiledPolicies {
        authorizations: BTreeMap::new(),
        reports: BTreeMap::new(),
        selectors: Vec::new(),
    };
    for (key, policy) in &state.authorization_policies {
        let key = key.to_string();
        let (authorization, report) = compile_policy(policy, &config.root_namespace);
        if authorization.scope == PolicyScope::WorkloadSelector as i32
            && let Some(selector) = &policy.spec.selector
        {
            let namespace = policy.namespace().unwrap_or_default();
            out.selectors.push(SelectorPolicy {
                key: key.clone(),
                namespace: (namespace != config.root_namespace).then_some(namespace),
                selector: selector.clone(),
            });
        }
        out.authorizations.insert(key.clone(), authorization);
        out.reports.insert(key, report);
    }
    out
}

/// Compiles one policy. Pure; the report says what its status should show.
pub fn compile_policy(
    policy: &AuthorizationPolicy,
    root_namespace: &str,
) -> (Authorization, PolicyReport) {
    let namespace = policy.namespace().unwrap_or_default();
    let spec = &policy.spec;
    let mut errors = Vec::new();
    let target = spec.target_refs.first().map(|t| PolicyTarget {
        kind: t.kind.clone(),
        namespace: t.namespace.clone().unwrap_or_else(|| namespace.clone()),
        name: t.name.clone(),
    });
    if spec.target_refs.len() > 1 {
        errors.push("only one targetRef is supported".to_string());
    }
    if let Some(t) = &target
        && t.kind != "Gateway"
        && t.kind != "Service"
    {
        errors.push(format!(
            "targetRefs kind {:?}: must be Gateway or Service",
            t.kind
        ));
    }
    if target.is_some() && spec.selector.is_some() {
        errors.push("selector and targetRefs are mutually exclusive".to_string());
    }
    let scope = if target.is_some() {
        PolicyScope::Waypoint
    } else if spec.selector.is_some() {
        PolicyScope::WorkloadSelector
    } else if namespace == root_namespace {
        PolicyScope::Mesh
    } else {
        PolicyScope::Namespace
    };
    let action = match spec.action {
        PolicyAction::Allow => Action::Allow,
        PolicyAction::Deny => Action::Deny,
        PolicyAction::Audit => Action::Audit,
    };
    let mut rules: Vec<wire::Rule> = spec
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| convert_rule(r, &mut |e| errors.push(format!("rules[{i}]: {e}"))))
        .collect();
    if !errors.is_empty() {
        // Fail closed: an ALLOW (or AUDIT) policy that cannot be read allows
        // nothing; a DENY policy that cannot be read denies everything in scope.
        rules = match action {
            Action::Deny => vec![wire::Rule::default()],
            _ => Vec::new(),
        };
    }
    // The L4 form ztunnel enforces, compiled by the code every enforcer
    // shares, so the controller's warnings and ztunnel's behaviour agree.
    let (l4_rules, l4_warnings) = authz::compile_l4(action, &rules);
    let authorization = Authorization {
        name: policy.name_any(),
        namespace,
        scope: scope as i32,
        action: action as i32,
        rules,
        l4_rules,
        l4_warnings: l4_warnings.clone(),
        target,
    };
    let report = PolicyReport {
        accepted: errors.is_empty(),
        errors,
        enforced_by_ztunnel: scope != PolicyScope::Waypoint,
        l4_warnings,
    };
    (authorization, report)
}

fn convert_rule(rule: &crate::crd::Rule, error: &mut dyn FnMut(String)) -> wire::Rule {
    let from = rule
        .from
        .iter()
        .map(|f| {
            let s = &f.source;
            for block in s.ip_blocks.iter().chain(&s.not_ip_blocks) {
                if let Err(e) = authz::parse_ip_block(block) {
                    error(format!("ipBlocks: {e}"));
                }
            }
            wire::Source {
                principals: matches(&s.principals),
                not_principals: matches(&s.not_principals),
                namespaces: matches(&s.namespaces),
                not_namespaces: matches(&s.not_namespaces),
                ip_blocks: s.ip_blocks.clone(),
                not_ip_blocks: s.not_ip_blocks.clone(),
            }
        })
        .collect();
    let to = rule
        .to
        .iter()
        .map(|t| {
            let o = &t.operation;
            wire::Operation {
                ports: ports(&o.ports, &mut *error),
                not_ports: ports(&o.not_ports, &mut *error),
                methods: o.methods.clone(),
                not_methods: o.not_methods.clone(),
                paths: matches(&o.paths),
                not_paths: matches(&o.not_paths),
                hosts: matches(&o.hosts),
                not_hosts: matches(&o.not_hosts),
            }
        })
        .collect();
    let when = rule
        .when
        .iter()
        .map(|c| wire::Condition {
            key: c.key.clone(),
            values: matches(&c.values),
            not_values: matches(&c.not_values),
        })
        .collect();
    wire::Rule { from, to, when }
}

fn ports(values: &[IntOrString], error: &mut dyn FnMut(String)) -> Vec<u32> {
    values
        .iter()
        .filter_map(|v| {
            let port = match v {
                IntOrString::Int(i) => u16::try_from(*i).ok(),
                IntOrString::String(s) => s.parse::<u16>().ok(),
            };
            if port.is_none_or(|p| p == 0) {
                error(format!("port {v:?} is not a number in 1..=65535"));
            }
            port.map(u32::from)
        })
        .collect()
}

fn matches(values: &[String]) -> Vec<StringMatch> {
    values
        .iter()
        .map(|v| authz::parse_string_match(v))
        .collect()
}
