//! The fake API server's field-level write semantics: JSON merge patches, and
//! which field manager owns which field, so a server-side apply without
//! `force` that would change another manager's field is refused (409), as
//! leader election relies on.
//!
//! Simplifications: a field has one owner (the last manager to set it), and
//! lists are atomic (owned and replaced as a whole).

use std::collections::BTreeMap;

use serde_json::Value;

/// Who owns which field of one object: JSON pointer of a leaf → manager.
pub type Owners = BTreeMap<String, String>;

/// Fields no manager owns: identity and bookkeeping.
const UNOWNED: &[&str] = &[
    "/apiVersion",
    "/kind",
    "/metadata/name",
    "/metadata/namespace",
    "/metadata/resourceVersion",
];

/// The leaves of `value` (scalars and lists), by JSON pointer. Nulls are
/// absent fields.
pub fn leaves(value: &Value) -> BTreeMap<String, Value> {
    fn walk(value: &Value, at: String, out: &mut BTreeMap<String, Value>) {
        match value {
            Value::Object(map) => {
                for (key, v) in map {
                    let key = key.replace('~', "~0").replace('/', "~1");
                    walk(v, format!("{at}/{key}"), out);
                }
            }
            Value::Null => {}
            leaf => {
                if !UNOWNED.contains(&at.as_str()) {
                    out.insert(at, leaf.clone());
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(value, String::new(), &mut out);
    out
}

/// RFC 7386 JSON merge patch: objects merge, `null` removes, anything else
/// replaces. A strategic merge patch means the same on objects whose lists
/// have no merge keys (a Lease).
pub fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let Value::Object(map) = target else {
        unreachable!("made an object above")
    };
    for (key, v) in patch {
        if v.is_null() {
            map.remove(key);
        } else {
            merge(map.entry(key.clone()).or_insert(Value::Null), v);
        }
    }
}

/// Removes the field at `pointer`, if it is there.
fn remove(target: &mut Value, pointer: &str) {
    let Some((parent, key)) = pointer.rsplit_once('/') else {
        return;
    };
    let key = key.replace("~1", "/").replace("~0", "~");
    if let Some(Value::Object(map)) = target.pointer_mut(parent) {
        map.remove(&key);
    }
}

/// The fields an apply by `manager` would change that another manager owns,
/// as (pointer, owner): what an apply without `force` is refused for.
pub fn apply_conflicts(
    current: &Value,
    owners: &Owners,
    manager: &str,
    applied: &Value,
) -> Vec<(String, String)> {
    let current = leaves(current);
    leaves(applied)
        .into_iter()
        .filter_map(|(pointer, value)| {
            let owner = owners.get(&pointer)?;
            (owner != manager && current.get(&pointer) != Some(&value))
                .then(|| (pointer, owner.clone()))
        })
        .collect()
}

/// A server-side apply by `manager`: the fields it applied before and no
/// longer does are removed, the rest is merged in, and it owns every field
/// it applied.
pub fn apply(current: &mut Value, owners: &mut Owners, manager: &str, applied: &Value) {
    let applied_leaves = leaves(applied);
    let dropped: Vec<String> = owners
        .iter()
        .filter(|(pointer, owner)| *owner == manager && !applied_leaves.contains_key(*pointer))
        .map(|(pointer, _)| pointer.clone())
        .collect();
    for pointer in dropped {
        remove(current, &pointer);
        owners.remove(&pointer);
    }
    merge(current, applied);
    for pointer in applied_leaves.into_keys() {
        owners.insert(pointer, manager.to_string());
    }
}

/// An update (create, PUT, merge patch) by `manager` from `before` to
/// `after`: it owns what it set or changed; removed fields have no owner.
pub fn update(owners: &mut Owners, manager: &str, before: &Value, after: &Value) {
    let before = leaves(before);
    let after = leaves(after);
    owners.retain(|pointer, _| after.contains_key(pointer));
    for (pointer, value) in after {
        if before.get(&pointer) != Some(&value) {
            owners.insert(pointer, manager.to_string());
        }
    }
}
