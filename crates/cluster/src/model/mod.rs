//! The model: typed cluster objects in, `weft_api::config` resources out.
//!
//! [`build`] is pure (no I/O, no clock), so tests feed it objects directly.
//! [`Model::diff`] turns two models into the minimal change a subscriber
//! needs.

pub mod audience;
mod authorization;
mod diff;
pub mod labels;
mod mtls;
pub mod route_report;
mod routes;
mod services;
pub mod waypoints;
pub mod workloads;

use std::collections::BTreeMap;

use weft_api::config::{
    Authorization, Resource, ResourceType, Route, Service, TrustBundle, Workload, resource,
};

use crate::registry::ClusterState;

pub use authorization::{PolicyReport, compile_policy};
pub use diff::{Delta, DeltaEntry};
pub use services::cluster_ips as services_cluster_ips;
pub use waypoints::{Waypoint, WaypointFor};

/// What the model builder needs besides the cluster objects.
#[derive(Clone, Debug)]
pub struct ModelConfig {
    /// SPIFFE trust domain of every workload identity.
    pub trust_domain: String,
    /// DNS suffix of Services (`<svc>.<ns>.svc.<cluster_domain>`).
    pub cluster_domain: String,
    /// Where mesh-wide policies live.
    pub root_namespace: String,
    /// PEM roots for the trust bundle resource.
    pub roots_pem: Vec<String>,
}

impl Default for ModelConfig {
    fn default() -> ModelConfig {
        ModelConfig {
            trust_domain: "cluster.local".into(),
            cluster_domain: "cluster.local".into(),
            root_namespace: "weft-system".into(),
            roots_pem: Vec::new(),
        }
    }
}

/// Everything the proxies are told, by type and key.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Model {
    /// By workload uid.
    pub workloads: BTreeMap<String, Workload>,
    /// By `namespace/name`.
    pub services: BTreeMap<String, Service>,
    /// By `namespace/name`.
    pub authorizations: BTreeMap<String, Authorization>,
    /// By `namespace/name`.
    pub routes: BTreeMap<String, Route>,
    /// By trust domain.
    pub trust_bundles: BTreeMap<String, TrustBundle>,
    /// Per AuthorizationPolicy, what the controller found (for its status).
    pub policy_reports: BTreeMap<String, PolicyReport>,
    /// Per HTTPRoute and GRPCRoute weft serves, what it found (for its
    /// status), by `namespace/name`.
    pub route_reports: BTreeMap<String, route_report::RouteReport>,
}

/// Builds the model of `state`.
pub fn build(state: &ClusterState, config: &ModelConfig) -> Model {
    let waypoints = waypoints::index(state, config);
    let peer_auth = mtls::MtlsIndex::new(state, &config.root_namespace);
    let policies = authorization::compile_all(state, config);
    let workloads = workloads::build(state, config, &waypoints, &peer_auth, &policies);
    let services = services::build(state, config, &waypoints, &workloads);
    let (routes, route_reports) = routes::build(state);
    let mut trust_bundles = BTreeMap::new();
    if !config.roots_pem.is_empty() {
        trust_bundles.insert(
            config.trust_domain.clone(),
            TrustBundle {
                trust_domain: config.trust_domain.clone(),
                roots_pem: config.roots_pem.clone(),
            },
        );
    }
    Model {
        workloads,
        services,
        authorizations: policies.authorizations,
        routes,
        trust_bundles,
        policy_reports: policies.reports,
        route_reports,
    }
}

impl Model {
    /// The resources of one type, by key.
    pub fn resources(&self, kind: ResourceType) -> Vec<(&str, Resource)> {
        fn wrap<T: Clone>(
            map: &BTreeMap<String, T>,
            f: fn(T) -> resource::Kind,
        ) -> Vec<(&str, Resource)> {
            map.iter()
                .map(|(k, v)| {
                    (
                        k.as_str(),
                        Resource {
                            kind: Some(f(v.clone())),
                        },
                    )
                })
                .collect()
        }
        match kind {
            ResourceType::Workload => wrap(&self.workloads, resource::Kind::Workload),
            ResourceType::Service => wrap(&self.services, resource::Kind::Service),
            ResourceType::Authorization => {
                wrap(&self.authorizations, resource::Kind::Authorization)
            }
            ResourceType::TrustBundle => wrap(&self.trust_bundles, resource::Kind::TrustBundle),
            ResourceType::Route => wrap(&self.routes, resource::Kind::Route),
            ResourceType::Unspecified => Vec::new(),
        }
    }

    /// The number of resources of every type.
    pub fn len(&self) -> usize {
        self.workloads.len()
            + self.services.len()
            + self.authorizations.len()
            + self.routes.len()
            + self.trust_bundles.len()
    }

    /// The protobuf size of every resource together: what a full snapshot
    /// of all types costs on the wire.
    pub fn encoded_len(&self) -> usize {
        use prost::Message;
        self.workloads
            .values()
            .map(Message::encoded_len)
            .sum::<usize>()
            + self
                .services
                .values()
                .map(Message::encoded_len)
                .sum::<usize>()
            + self
                .authorizations
                .values()
                .map(Message::encoded_len)
                .sum::<usize>()
            + self
                .routes
                .values()
                .map(Message::encoded_len)
                .sum::<usize>()
            + self
                .trust_bundles
                .values()
                .map(Message::encoded_len)
                .sum::<usize>()
    }

    /// True when the model has no resources.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The resource types the config stream serves, in push order: a proxy learns
/// about trust and workloads before the services and policies that name them.
pub const RESOURCE_TYPES: [ResourceType; 5] = [
    ResourceType::TrustBundle,
    ResourceType::Workload,
    ResourceType::Service,
    ResourceType::Authorization,
    ResourceType::Route,
];
