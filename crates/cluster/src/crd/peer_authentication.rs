//! `PeerAuthentication`: the mTLS mode a workload accepts inbound.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Which inbound traffic a workload accepts: mTLS only (`STRICT`), or mTLS and
/// plaintext (`PERMISSIVE`, the default). A narrower policy (workload selector)
/// overrides a namespace-wide one, which overrides the mesh-wide one in the
/// root namespace.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "security.weft.dev",
    version = "v1alpha1",
    kind = "PeerAuthentication",
    plural = "peerauthentications",
    shortname = "pa",
    namespaced,
    derive = "PartialEq",
    derive = "Default"
)]
#[serde(rename_all = "camelCase")]
pub struct PeerAuthenticationSpec {
    /// The workloads this policy applies to; absent = the whole namespace
    /// (or the whole mesh in the root namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// The mTLS setting; absent = inherit from the broader scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<PeerMtls>,
}

/// Selects pods of the policy's namespace by labels.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSelector {
    /// Every label must be present with this value.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

impl WorkloadSelector {
    /// True when every label of the selector is on `labels`.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// The `mtls` block of a PeerAuthentication.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeerMtls {
    /// STRICT, PERMISSIVE, or UNSET (inherit).
    #[serde(default)]
    pub mode: MtlsModeSetting,
}

/// An mTLS mode as written by a user.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum MtlsModeSetting {
    /// Inherit from the broader scope.
    #[default]
    Unset,
    /// Accept mTLS and plaintext.
    Permissive,
    /// Accept only mTLS (HBONE).
    Strict,
}
