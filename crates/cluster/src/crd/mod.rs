//! weft's own custom resources, in `security.weft.dev/v1alpha1`.
//!
//! The Rust types are the source of truth; the CRD manifests under
//! `deploy/charts/weft/crds/` are generated from them by [`crd_manifests`] (and a test
//! fails when the checked-in YAML is stale; regenerate with
//! `WEFT_UPDATE_CRDS=1 cargo test -p weft-controller crds_are_current`).

mod authorization_policy;
mod peer_authentication;

pub use authorization_policy::{
    AuthorizationPolicy, AuthorizationPolicySpec, AuthorizationPolicyStatus, Condition, Operation,
    PolicyAction, PolicyTargetRef, Rule, RuleFrom, RuleTo, Source,
};
pub use peer_authentication::{
    MtlsModeSetting, PeerAuthentication, PeerAuthenticationSpec, PeerMtls, WorkloadSelector,
};

use kube::CustomResourceExt;

/// The API group of weft's CRDs.
pub const GROUP: &str = "security.weft.dev";

/// Every CRD as (file name, YAML), in a stable order.
pub fn crd_manifests() -> Vec<(&'static str, String)> {
    vec![
        (
            "authorizationpolicies.security.weft.dev.yaml",
            to_yaml(&AuthorizationPolicy::crd()),
        ),
        (
            "peerauthentications.security.weft.dev.yaml",
            to_yaml(&PeerAuthentication::crd()),
        ),
    ]
}

fn to_yaml(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> String {
    let body =
        weft_api::yaml::to_string(crd).unwrap_or_else(|e| format!("# serialization failed: {e}\n"));
    format!("# Generated from controller/src/crd by weft-controller; do not edit.\n{body}")
}
