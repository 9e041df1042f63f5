//! `AuthorizationPolicy`: L4 and L7 access control.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition as StatusCondition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::WorkloadSelector;

/// Who may talk to what. DENY policies are evaluated first, then ALLOW; if any
/// ALLOW policy applies to a workload and none matches, the request is denied;
/// AUDIT only records. A policy either selects workloads (`selector`, or the
/// whole namespace when absent; the whole mesh in the root namespace) and is
/// enforced by their ztunnels, or names `targetRefs` (a waypoint Gateway or a
/// Service behind one) and is enforced by that waypoint.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "security.weft.dev",
    version = "v1alpha1",
    kind = "AuthorizationPolicy",
    plural = "authorizationpolicies",
    shortname = "ap",
    namespaced,
    status = "AuthorizationPolicyStatus",
    derive = "PartialEq",
    derive = "Default",
    printcolumn = r#"{"name":"Action","type":"string","jsonPath":".spec.action"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    /// The workloads of this namespace the policy applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// The Gateways (waypoints) or Services the policy applies to, enforced by
    /// the waypoint. Mutually exclusive with `selector`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetRef>,
    /// ALLOW (default), DENY or AUDIT.
    #[serde(default)]
    pub action: PolicyAction,
    /// A request matches the policy when any rule matches. An ALLOW policy
    /// with no rules matches nothing; an empty rule `{}` matches everything.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
}

/// What a policy does when one of its rules matches.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum PolicyAction {
    /// Allow the request; with at least one ALLOW policy, unmatched requests are denied.
    #[default]
    Allow,
    /// Deny the request.
    Deny,
    /// Record the request; never changes the decision.
    Audit,
}

/// A reference to the Gateway or Service a policy is attached to.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyTargetRef {
    /// `gateway.networking.k8s.io` for a Gateway, `""` (core) for a Service.
    #[serde(default)]
    pub group: String,
    /// `Gateway` or `Service`.
    pub kind: String,
    /// The target's name, in the policy's namespace unless `namespace` is set.
    pub name: String,
    /// Only for policies in the root namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// One rule: any `from`, any `to`, and every `when`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// Sources; absent = any source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<RuleFrom>,
    /// Operations; absent = any operation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<RuleTo>,
    /// Extra conditions, all of which must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<Condition>,
}

/// A `from` entry.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RuleFrom {
    /// The peer's attributes.
    pub source: Source,
}

/// The peer. Every non-empty field must match; within one, any value may.
/// Strings match exactly, by `prefix*`, by `*suffix`, or `*` for presence.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    /// Peer identities, `<trust-domain>/ns/<ns>/sa/<sa>` (or a full SPIFFE ID).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    /// Peer identities that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    /// The peer's namespace (from its identity).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Namespaces that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
    /// Source IPs or CIDRs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<String>,
    /// Source IPs or CIDRs that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ip_blocks: Vec<String>,
}

/// A `to` entry.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RuleTo {
    /// The request's attributes.
    pub operation: Operation,
}

/// The request. Ports are L4 (enforced by ztunnel); methods, paths and hosts
/// are L7 and only a waypoint can enforce them.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    /// Destination ports (numbers, or numeric strings).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<IntOrString>,
    /// Destination ports that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<IntOrString>,
    /// HTTP methods (L7).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// HTTP methods that must not match (L7).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<String>,
    /// Request paths (L7).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Request paths that must not match (L7).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
    /// Request hosts (L7).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Request hosts that must not match (L7).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_hosts: Vec<String>,
}

/// A `when` condition: `key` is one of `source.ip`, `source.namespace`,
/// `source.principal`, `destination.ip`, `destination.port` (L4), or
/// `request.headers[<name>]`, `request.method`, `request.path`,
/// `request.host` (L7).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// The attribute.
    pub key: String,
    /// Any of these must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    /// None of these may match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_values: Vec<String>,
}

/// What the controller observed about a policy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicyStatus {
    /// `Accepted`, and `L4Enforcement` when ztunnel enforces a reduced form.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<StatusCondition>,
}
