//! A map keyed by Service `(namespace, name)` that is looked up with
//! borrowed strings, so the request path allocates no key.

use std::collections::HashMap;

#[derive(Debug)]
pub struct ServiceMap<V> {
    by_namespace: HashMap<String, HashMap<String, V>>,
}

impl<V> Default for ServiceMap<V> {
    fn default() -> Self {
        ServiceMap {
            by_namespace: HashMap::new(),
        }
    }
}

impl<V> ServiceMap<V> {
    pub fn get(&self, namespace: &str, name: &str) -> Option<&V> {
        self.by_namespace.get(namespace)?.get(name)
    }

    /// The entry for `(namespace, name)`, created empty if missing.
    pub fn entry(&mut self, namespace: &str, name: &str) -> &mut V
    where
        V: Default,
    {
        self.by_namespace
            .entry(namespace.to_owned())
            .or_default()
            .entry(name.to_owned())
            .or_default()
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.by_namespace.values_mut().flat_map(|m| m.values_mut())
    }

    pub fn into_entries(self) -> impl Iterator<Item = ((String, String), V)> {
        self.by_namespace
            .into_iter()
            .flat_map(|(ns, m)| m.into_iter().map(move |(n, v)| ((ns.clone(), n), v)))
    }
}
