//! What each subscriber of the config stream is sent (docs/design.md §6).
//!
//! Workloads, Services and trust bundles go to every proxy: a ztunnel routes
//! from its pods to any destination (it must know whether that is a meshed
//! workload, its identity, a Service's endpoints and waypoint), and a
//! waypoint forwards to any Service its routes name and attributes every
//! client. Authorizations and routes are what a proxy enforces, and each
//! proxy enforces few of them:
//!
//! - the ztunnel of node N: mesh-wide policies, the namespace policies of
//!   the namespaces with a workload on N, and the selector policies those
//!   workloads list; no waypoint policies and no routes.
//! - the waypoint of Gateway G: the policies targeting G or a Service bound
//!   to G; the routes whose parent is G or a Service bound to G; and, for
//!   the workloads it may forward to (the workloads bound to G, the
//!   endpoints of Services bound to G and of its routes' backends and
//!   mirrors), the mesh-wide, namespace and selector policies that apply to
//!   them (a waypoint enforces the destination's own policies too).
//!
//! [`Views::build`] works this out once per model version for every node
//! and waypoint, as sets of keys: a view shares the model's resources, so
//! trimming costs one small set per node and waypoint, not a copy of the
//! config per subscriber.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use weft_api::config::{PolicyScope, Resource, ResourceKey, ResourceType, Workload, resource};

use super::{Delta, Model};
use crate::registry::ObjectKey;

/// Who a config stream is for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Audience {
    /// Everything (a CLI, or a subscriber of unspecified kind where
    /// authentication is off).
    Everything,
    /// The ztunnel of a node.
    Ztunnel(String),
    /// The waypoint of a Gateway.
    Waypoint(ObjectKey),
}

/// The authorizations and routes one audience is sent, by key; every
/// workload, Service and trust bundle is sent to all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Visible {
    /// `namespace/name` of the Authorizations.
    pub authorizations: BTreeSet<String>,
    /// `namespace/name` of the Routes.
    pub routes: BTreeSet<String>,
}

impl Visible {
    /// True when the resource of `kind` and `key` is sent.
    pub fn shows(&self, kind: ResourceType, key: &str) -> bool {
        match kind {
            ResourceType::Authorization => self.authorizations.contains(key),
            ResourceType::Route => self.routes.contains(key),
            _ => true,
        }
    }
}

/// What is visible through an optional view: `None` shows everything.
fn shows(view: Option<&Visible>, kind: ResourceType, key: &str) -> bool {
    view.is_none_or(|v| v.shows(kind, key))
}

/// Every node's and waypoint's view of one model version.
#[derive(Debug, Default)]
pub struct Views {
    ztunnels: HashMap<String, Arc<Visible>>,
    waypoints: HashMap<ObjectKey, Arc<Visible>>,
    /// A node or waypoint with nothing of its own: the mesh-wide policies.
    mesh_only: Arc<Visible>,
}

impl Views {
    /// The views of `model`.
    pub fn build(model: &Model) -> Views {
        let mut mesh_only = Visible::default();
        for (key, p) in &model.authorizations {
            if p.scope == PolicyScope::Mesh as i32 {
                mesh_only.authorizations.insert(key.clone());
            }
        }
        // Which policies apply to a set of workloads, per namespace and by
        // selector, found once and looked up per node and waypoint.
        let mut namespace_policies: HashMap<&str, Vec<&String>> = HashMap::new();
        for (key, p) in &model.authorizations {
            if p.scope == PolicyScope::Namespace as i32 {
                namespace_policies
                    .entry(p.namespace.as_str())
                    .or_default()
                    .push(key);
            }
        }
        let workload_policies = |visible: &mut Visible, workloads: &[&Workload]| {
            let namespaces: HashSet<&str> =
                workloads.iter().map(|w| w.namespace.as_str()).collect();
            for ns in namespaces {
                for key in namespace_policies.get(ns).into_iter().flatten() {
                    visible.authorizations.insert((*key).clone());
                }
            }
            for w in workloads {
                for key in &w.authorization_policies {
                    if model.authorizations.contains_key(key) {
                        visible.authorizations.insert(key.clone());
                    }
                }
            }
        };

        let mut on_node: HashMap<&str, Vec<&Workload>> = HashMap::new();
        for w in model.workloads.values() {
            if !w.node.is_empty() {
                on_node.entry(w.node.as_str()).or_default().push(w);
            }
        }
        let ztunnels = on_node
            .iter()
            .map(|(node, workloads)| {
                let mut visible = mesh_only.clone();
                workload_policies(&mut visible, workloads);
                (node.to_string(), Arc::new(visible))
            })
            .collect();

        let waypoints = waypoint_reach(model)
            .into_iter()
            .map(|(gateway, reach)| {
                let mut visible = mesh_only.clone();
                let destinations: Vec<&Workload> = reach
                    .workloads
                    .iter()
                    .filter_map(|uid| model.workloads.get(*uid))
                    .collect();
                workload_policies(&mut visible, &destinations);
                for (key, p) in &model.authorizations {
                    let Some(target) = p.target.as_ref() else {
                        continue;
                    };
                    let target_key = ObjectKey::new(target.namespace.clone(), target.name.clone());
                    let applies = p.scope == PolicyScope::Waypoint as i32
                        && match target.kind.as_str() {
                            "Gateway" => target_key == gateway,
                            "Service" => reach.services.contains(&target_key),
                            _ => false,
                        };
                    if applies {
                        visible.authorizations.insert(key.clone());
                    }
                }
                visible.routes = reach.routes;
                (gateway, Arc::new(visible))
            })
            .collect();
        Views {
            ztunnels,
            waypoints,
            mesh_only: Arc::new(mesh_only),
        }
    }

    /// The view of `audience`; `None` for [`Audience::Everything`].
    pub fn of(&self, audience: &Audience) -> Option<Arc<Visible>> {
        let view = match audience {
            Audience::Everything => return None,
            Audience::Ztunnel(node) => self.ztunnels.get(node),
            Audience::Waypoint(gateway) => self.waypoints.get(gateway),
        };
        Some(view.unwrap_or(&self.mesh_only).clone())
    }
}

/// What a waypoint serves and forwards to.
#[derive(Default)]
struct Reach<'m> {
    /// The Services bound to it.
    services: HashSet<ObjectKey>,
    /// The workloads it may forward to, by uid.
    workloads: HashSet<&'m str>,
    /// Its routes' keys.
    routes: BTreeSet<String>,
}

/// Every waypoint named by a binding, a policy target or a route parent,
/// with what it serves and forwards to.
fn waypoint_reach(model: &Model) -> HashMap<ObjectKey, Reach<'_>> {
    let mut reach: HashMap<ObjectKey, Reach<'_>> = HashMap::new();
    let key_of = |namespace: &str, name: &str| ObjectKey::new(namespace, name);
    let endpoints = |key: &ObjectKey| {
        model
            .services
            .get(&key.to_string())
            .into_iter()
            .flat_map(|s| s.endpoints.iter().map(|e| e.workload_uid.as_str()))
    };
    for (uid, w) in &model.workloads {
        if let Some(wp) = &w.waypoint {
            reach
                .entry(key_of(&wp.namespace, &wp.name))
                .or_default()
                .workloads
                .insert(uid.as_str());
        }
    }
    for s in model.services.values() {
        if let Some(wp) = &s.waypoint {
            let service = key_of(&s.namespace, &s.name);
            let r = reach.entry(key_of(&wp.namespace, &wp.name)).or_default();
            r.workloads.extend(endpoints(&service));
            r.services.insert(service);
        }
    }
    for p in model.authorizations.values() {
        if let Some(t) = p.target.as_ref().filter(|t| t.kind == "Gateway") {
            reach.entry(key_of(&t.namespace, &t.name)).or_default();
        }
    }
    let gateways: Vec<ObjectKey> = reach.keys().cloned().collect();
    for (key, route) in &model.routes {
        for parent in &route.parents {
            let parent_key = key_of(&parent.namespace, &parent.name);
            let owners: Vec<ObjectKey> = match parent.kind.as_str() {
                "Gateway" => vec![parent_key],
                "Service" => gateways
                    .iter()
                    .filter(|g| reach[*g].services.contains(&parent_key))
                    .cloned()
                    .collect(),
                _ => Vec::new(),
            };
            for owner in owners {
                let r = reach.entry(owner).or_default();
                r.routes.insert(key.clone());
                // Mirrors are forwarded to as well: their policies judge
                // the copies.
                let backends = route.rules.iter().flat_map(|rule| {
                    rule.backends
                        .iter()
                        .chain(rule.mirrors.iter().filter_map(|m| m.backend.as_ref()))
                });
                for b in backends {
                    r.workloads
                        .extend(endpoints(&key_of(&b.namespace, &b.name)));
                }
            }
        }
    }
    reach
}

impl Model {
    /// The resources of `kind` that `view` shows (all for `None`); only
    /// those are copied.
    pub fn visible_resources(&self, kind: ResourceType, view: Option<&Visible>) -> Vec<Resource> {
        let keys = match (view, kind) {
            (Some(v), ResourceType::Authorization) => &v.authorizations,
            (Some(v), ResourceType::Route) => &v.routes,
            _ => return self.resources(kind).into_iter().map(|(_, r)| r).collect(),
        };
        keys.iter()
            .filter_map(|key| self.resource(kind, key))
            .collect()
    }

    /// One trimmed resource by key.
    fn resource(&self, kind: ResourceType, key: &str) -> Option<Resource> {
        let kind = match kind {
            ResourceType::Authorization => {
                resource::Kind::Authorization(self.authorizations.get(key)?.clone())
            }
            ResourceType::Route => resource::Kind::Route(self.routes.get(key)?.clone()),
            _ => return None,
        };
        Some(Resource { kind: Some(kind) })
    }
}

impl Delta {
    /// What a subscriber that had `old` seen through `old_view` needs to
    /// have `new` seen through `new_view`, for `types`, given that this delta
    /// goes from `old` to `new`: the changes it may see, plus what came into
    /// or went out of its view without changing itself (a pod moving onto
    /// its node brings its namespace's policies).
    pub fn select_visible(
        &self,
        types: &[ResourceType],
        new: &Model,
        old_view: Option<&Visible>,
        new_view: Option<&Visible>,
    ) -> (Vec<Resource>, Vec<ResourceKey>) {
        let mut resources = Vec::new();
        let mut removed = Vec::new();
        let mut touched: HashSet<(ResourceType, &str)> = HashSet::new();
        let remove = |kind: ResourceType, key: &str| ResourceKey {
            r#type: kind as i32,
            key: key.to_string(),
        };
        for e in self.entries.iter().filter(|e| types.contains(&e.kind)) {
            touched.insert((e.kind, e.key.as_str()));
            let (was, is) = (
                shows(old_view, e.kind, &e.key),
                shows(new_view, e.kind, &e.key),
            );
            match &e.resource {
                Some(r) if is => resources.push(r.clone()),
                Some(_) | None if was => removed.push(remove(e.kind, &e.key)),
                _ => {}
            }
        }
        let (Some(old_view), Some(new_view)) = (old_view, new_view) else {
            return (resources, removed);
        };
        for kind in [ResourceType::Authorization, ResourceType::Route] {
            if !types.contains(&kind) {
                continue;
            }
            let (was, is) = match kind {
                ResourceType::Authorization => (&old_view.authorizations, &new_view.authorizations),
                _ => (&old_view.routes, &new_view.routes),
            };
            for key in is.difference(was) {
                if !touched.contains(&(kind, key.as_str()))
                    && let Some(r) = new.resource(kind, key)
                {
                    resources.push(r);
                }
            }
            for key in was.difference(is) {
                if !touched.contains(&(kind, key.as_str())) {
                    removed.push(remove(kind, key));
                }
            }
        }
        (resources, removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_api::config::{
        Authorization, BackendRef, Endpoint, PolicyTarget, Route, RouteParent, RouteRule, Service,
        WaypointRef,
    };

    fn workload(uid: &str, ns: &str, node: &str, policies: &[&str]) -> (String, Workload) {
        let w = Workload {
            uid: uid.into(),
            namespace: ns.into(),
            node: node.into(),
            authorization_policies: policies.iter().map(|p| p.to_string()).collect(),
            ..Workload::default()
        };
        (uid.into(), w)
    }

    fn policy(
        ns: &str,
        name: &str,
        scope: PolicyScope,
        target: Option<(&str, &str)>,
    ) -> (String, Authorization) {
        let p = Authorization {
            namespace: ns.into(),
            name: name.into(),
            scope: scope as i32,
            target: target.map(|(kind, name)| PolicyTarget {
                kind: kind.into(),
                namespace: ns.into(),
                name: name.into(),
            }),
            ..Authorization::default()
        };
        (format!("{ns}/{name}"), p)
    }

    fn service(
        ns: &str,
        name: &str,
        endpoints: &[&str],
        waypoint: Option<&str>,
    ) -> (String, Service) {
        let s = Service {
            namespace: ns.into(),
            name: name.into(),
            endpoints: endpoints
                .iter()
                .map(|uid| Endpoint {
                    workload_uid: uid.to_string(),
                    ..Endpoint::default()
                })
                .collect(),
            waypoint: waypoint.map(|wp| WaypointRef {
                namespace: ns.into(),
                name: wp.into(),
                ..WaypointRef::default()
            }),
            ..Service::default()
        };
        (format!("{ns}/{name}"), s)
    }

    fn route(ns: &str, name: &str, parent: (&str, &str), backend: (&str, &str)) -> (String, Route) {
        let r = Route {
            namespace: ns.into(),
            name: name.into(),
            parents: vec![RouteParent {
                kind: parent.0.into(),
                namespace: ns.into(),
                name: parent.1.into(),
                port: 0,
            }],
            rules: vec![RouteRule {
                backends: vec![BackendRef {
                    namespace: backend.0.into(),
                    name: backend.1.into(),
                    ..BackendRef::default()
                }],
                ..RouteRule::default()
            }],
            ..Route::default()
        };
        (format!("{ns}/{name}"), r)
    }

    fn keys(set: &BTreeSet<String>) -> Vec<&str> {
        set.iter().map(String::as_str).collect()
    }

    #[test]
    fn a_waypoint_gets_its_own_routes_and_the_policies_of_what_it_forwards_to() {
        let model = Model {
            workloads: [
                workload("web-1", "shop", "node-a", &["shop/web-only"]),
                workload("cart-1", "cart", "node-b", &[]),
                workload("other-1", "other", "node-b", &["other/other-only"]),
            ]
            .into(),
            services: [
                service("shop", "web", &["web-1"], Some("wp")),
                // Only a route's backend: the waypoint forwards to it.
                service("cart", "cart", &["cart-1"], None),
                service("shop", "elsewhere", &["other-1"], Some("other-wp")),
            ]
            .into(),
            authorizations: [
                policy("weft-system", "mesh", PolicyScope::Mesh, None),
                policy("shop", "web-only", PolicyScope::WorkloadSelector, None),
                policy("cart", "cart-ns", PolicyScope::Namespace, None),
                policy("other", "other-ns", PolicyScope::Namespace, None),
                policy("other", "other-only", PolicyScope::WorkloadSelector, None),
                policy(
                    "shop",
                    "at-wp",
                    PolicyScope::Waypoint,
                    Some(("Gateway", "wp")),
                ),
                policy(
                    "shop",
                    "at-web",
                    PolicyScope::Waypoint,
                    Some(("Service", "web")),
                ),
                policy(
                    "shop",
                    "at-other",
                    PolicyScope::Waypoint,
                    Some(("Gateway", "other-wp")),
                ),
                policy(
                    "shop",
                    "at-elsewhere",
                    PolicyScope::Waypoint,
                    Some(("Service", "elsewhere")),
                ),
            ]
            .into(),
            routes: [
                route("shop", "to-cart", ("Service", "web"), ("cart", "cart")),
                route("shop", "gw-route", ("Gateway", "wp"), ("shop", "web")),
                route(
                    "shop",
                    "not-ours",
                    ("Service", "elsewhere"),
                    ("shop", "elsewhere"),
                ),
            ]
            .into(),
            ..Model::default()
        };
        let views = Views::build(&model);
        let wp = views
            .of(&Audience::Waypoint(ObjectKey::new("shop", "wp")))
            .expect("a view");
        assert_eq!(
            keys(&wp.authorizations),
            [
                "cart/cart-ns",
                "shop/at-web",
                "shop/at-wp",
                "shop/web-only",
                "weft-system/mesh"
            ]
        );
        assert_eq!(keys(&wp.routes), ["shop/gw-route", "shop/to-cart"]);
        // A ztunnel never gets waypoint policies or routes.
        let node_b = views
            .of(&Audience::Ztunnel("node-b".into()))
            .expect("a view");
        assert_eq!(
            keys(&node_b.authorizations),
            [
                "cart/cart-ns",
                "other/other-ns",
                "other/other-only",
                "weft-system/mesh"
            ]
        );
        assert!(node_b.routes.is_empty());
        // A node with nothing on it, and a waypoint nothing names.
        for audience in [
            Audience::Ztunnel("node-z".into()),
            Audience::Waypoint(ObjectKey::new("shop", "unknown")),
        ] {
            let view = views.of(&audience).expect("a view");
            assert_eq!(keys(&view.authorizations), ["weft-system/mesh"]);
            assert!(view.routes.is_empty());
        }
        assert!(views.of(&Audience::Everything).is_none());
        // A snapshot through the view copies only what it shows.
        let sent = model.visible_resources(ResourceType::Route, Some(&wp));
        assert_eq!(sent.len(), 2);
    }

    #[test]
    fn a_waypoint_gets_the_policies_of_what_its_routes_mirror_to() {
        let (key, mut mirrored) = route("shop", "mirrored", ("Service", "web"), ("shop", "web"));
        mirrored.rules[0].mirrors.push(weft_api::config::Mirror {
            backend: Some(BackendRef {
                namespace: "other".into(),
                name: "shadow".into(),
                ..BackendRef::default()
            }),
            ..Default::default()
        });
        let model = Model {
            workloads: [
                workload("web-1", "shop", "node-a", &[]),
                workload("shadow-1", "other", "node-b", &["other/shadow-only"]),
            ]
            .into(),
            services: [
                service("shop", "web", &["web-1"], Some("wp")),
                service("other", "shadow", &["shadow-1"], None),
            ]
            .into(),
            authorizations: [
                policy("other", "shadow-only", PolicyScope::WorkloadSelector, None),
                policy("other", "other-ns", PolicyScope::Namespace, None),
            ]
            .into(),
            routes: [(key, mirrored)].into(),
            ..Model::default()
        };
        let views = Views::build(&model);
        let wp = views
            .of(&Audience::Waypoint(ObjectKey::new("shop", "wp")))
            .expect("a view");
        assert_eq!(
            keys(&wp.authorizations),
            ["other/other-ns", "other/shadow-only"]
        );
    }
}
