//! PeerAuthentication resolved to each workload's mTLS mode.
//!
//! The narrowest policy that sets a mode wins: a selector in the workload's
//! namespace, then the namespace-wide policy, then the mesh-wide policy in the
//! root namespace; PERMISSIVE when none does. Among equals, the oldest (then
//! the first by name) wins, so the outcome does not depend on watch order.

use std::collections::BTreeMap;

use kube::ResourceExt;
use weft_api::config::MtlsMode;

use crate::crd::{MtlsModeSetting, PeerAuthentication};
use crate::registry::ClusterState;

pub(crate) struct MtlsIndex<'a> {
    /// Per namespace, its policies, oldest first.
    by_namespace: BTreeMap<String, Vec<&'a PeerAuthentication>>,
    root_namespace: String,
}

impl<'a> MtlsIndex<'a> {
    pub(crate) fn new(state: &'a ClusterState, root_namespace: &str) -> MtlsIndex<'a> {
        let mut by_namespace: BTreeMap<String, Vec<&PeerAuthentication>> = BTreeMap::new();
        for pa in state.peer_authentications.values() {
            by_namespace
                .entry(pa.namespace().unwrap_or_default())
                .or_default()
                .push(pa);
        }
        for list in by_namespace.values_mut() {
            list.sort_by(|a, b| {
                (
                    a.metadata.creation_timestamp.as_ref().map(|t| t.0),
                    a.name_any(),
                )
                    .cmp(&(
                        b.metadata.creation_timestamp.as_ref().map(|t| t.0),
                        b.name_any(),
                    ))
            });
        }
        MtlsIndex {
            by_namespace,
            root_namespace: root_namespace.to_string(),
        }
    }

    /// The mode for a pod with `labels` in `namespace`.
    pub(crate) fn mode_for(&self, namespace: &str, labels: &BTreeMap<String, String>) -> MtlsMode {
        let setting = |pa: &&PeerAuthentication| {
            pa.spec
                .mtls
                .as_ref()
                .map(|m| m.mode)
                .filter(|m| *m != MtlsModeSetting::Unset)
        };
        let local = self
            .by_namespace
            .get(namespace)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let root = self
            .by_namespace
            .get(&self.root_namespace)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let selected = local
            .iter()
            .filter(|pa| pa.spec.selector.as_ref().is_some_and(|s| s.matches(labels)))
            .find_map(&setting);
        let namespace_wide = || {
            local
                .iter()
                .filter(|pa| pa.spec.selector.is_none())
                .find_map(&setting)
        };
        let mesh_wide = || {
            root.iter()
                .filter(|pa| pa.spec.selector.is_none())
                .find_map(&setting)
        };
        match selected.or_else(namespace_wide).or_else(mesh_wide) {
            Some(MtlsModeSetting::Strict) => MtlsMode::Strict,
            _ => MtlsMode::Permissive,
        }
    }
}
