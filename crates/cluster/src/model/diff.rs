//! The minimal change between two models.

use std::collections::BTreeMap;

use weft_api::config::{Resource, ResourceKey, ResourceType, resource};

use super::Model;

/// One changed resource: `Some` = added or changed, `None` = removed.
#[derive(Clone, Debug, PartialEq)]
pub struct DeltaEntry {
    /// The resource type.
    pub kind: ResourceType,
    /// Its key (uid, `namespace/name`, or trust domain).
    pub key: String,
    /// The new resource, or `None` when it was removed.
    pub resource: Option<Resource>,
}

/// Everything that changed between two models, in [`super::RESOURCE_TYPES`]
/// order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Delta {
    /// Changed and removed resources.
    pub entries: Vec<DeltaEntry>,
}

impl Model {
    /// What a subscriber that has `old` needs to have `new`.
    pub fn diff(old: &Model, new: &Model) -> Delta {
        let mut entries = Vec::new();
        diff_map(
            &old.trust_bundles,
            &new.trust_bundles,
            ResourceType::TrustBundle,
            resource::Kind::TrustBundle,
            &mut entries,
        );
        diff_map(
            &old.workloads,
            &new.workloads,
            ResourceType::Workload,
            resource::Kind::Workload,
            &mut entries,
        );
        diff_map(
            &old.services,
            &new.services,
            ResourceType::Service,
            resource::Kind::Service,
            &mut entries,
        );
        diff_map(
            &old.authorizations,
            &new.authorizations,
            ResourceType::Authorization,
            resource::Kind::Authorization,
            &mut entries,
        );
        diff_map(
            &old.routes,
            &new.routes,
            ResourceType::Route,
            resource::Kind::Route,
            &mut entries,
        );
        Delta { entries }
    }
}

fn diff_map<T: PartialEq + Clone>(
    old: &BTreeMap<String, T>,
    new: &BTreeMap<String, T>,
    kind: ResourceType,
    wrap: fn(T) -> resource::Kind,
    out: &mut Vec<DeltaEntry>,
) {
    for (key, value) in new {
        if old.get(key) != Some(value) {
            out.push(DeltaEntry {
                kind,
                key: key.clone(),
                resource: Some(Resource {
                    kind: Some(wrap(value.clone())),
                }),
            });
        }
    }
    for key in old.keys() {
        if !new.contains_key(key) {
            out.push(DeltaEntry {
                kind,
                key: key.clone(),
                resource: None,
            });
        }
    }
}

impl Delta {
    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The added/changed resources and removed keys of the given types.
    pub fn select(&self, types: &[ResourceType]) -> (Vec<Resource>, Vec<ResourceKey>) {
        let mut resources = Vec::new();
        let mut removed = Vec::new();
        for e in self.entries.iter().filter(|e| types.contains(&e.kind)) {
            match &e.resource {
                Some(r) => resources.push(r.clone()),
                None => removed.push(ResourceKey {
                    r#type: e.kind as i32,
                    key: e.key.clone(),
                }),
            }
        }
        (resources, removed)
    }
}
