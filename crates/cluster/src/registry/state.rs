//! The typed snapshot both registries publish.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use gateway_api::experimental::httproutes::HttpRoute;
use gateway_api::gatewayclasses::GatewayClass;
use gateway_api::gateways::Gateway;
use gateway_api::grpcroutes::GrpcRoute;
use gateway_api::referencegrants::ReferenceGrant;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use serde::Serialize;

use crate::crd::{AuthorizationPolicy, PeerAuthentication};

/// `namespace/name` of an object; the namespace is empty for cluster-scoped
/// kinds (Namespace, GatewayClass).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ObjectKey {
    /// Empty for cluster-scoped objects.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
}

impl ObjectKey {
    /// A namespaced key.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> ObjectKey {
        ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The key of any Kubernetes object.
    pub fn of<K: kube::Resource>(obj: &K) -> ObjectKey {
        ObjectKey::new(obj.namespace().unwrap_or_default(), obj.name_any())
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// Objects of one kind, by key. `Arc` so that publishing a new state copies
/// pointers, not objects.
pub type Objects<K> = BTreeMap<ObjectKey, Arc<K>>;

/// An object a registry could not use, and why. Files mode fills this; the
/// object is skipped and everything else is kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InvalidObject {
    /// The file it came from.
    pub file: String,
    /// The 0-based index of the YAML document in that file.
    pub document: usize,
    /// `apiVersion`/`kind` and `namespace/name`, as far as they could be read.
    pub object: String,
    /// The path of the offending field (`spec.ports[0].port`), or `.` when the
    /// document as a whole is wrong.
    pub field: String,
    /// What was wrong.
    pub message: String,
}

impl fmt::Display for InvalidObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} document {} ({}): field {}: {}",
            self.file, self.document, self.object, self.field, self.message
        )
    }
}

/// Everything the controller and the node agent know about the cluster.
#[derive(Clone, Debug, Default)]
pub struct ClusterState {
    /// Core Namespaces (cluster-scoped).
    pub namespaces: Objects<Namespace>,
    /// Pods (only those of one node when the registry was configured so).
    pub pods: Objects<Pod>,
    /// Core Services.
    pub services: Objects<Service>,
    /// discovery.k8s.io EndpointSlices.
    pub endpoint_slices: Objects<EndpointSlice>,
    /// Gateway API Gateways.
    pub gateways: Objects<Gateway>,
    /// Gateway API GatewayClasses (cluster-scoped).
    pub gateway_classes: Objects<GatewayClass>,
    /// Gateway API HTTPRoutes, decoded with the experimental channel's type:
    /// a superset of the standard one, so `retry` and experimental filters
    /// survive decoding whichever channel's CRD the cluster has.
    pub http_routes: Objects<HttpRoute>,
    /// Gateway API GRPCRoutes.
    pub grpc_routes: Objects<GrpcRoute>,
    /// weft AuthorizationPolicies.
    pub authorization_policies: Objects<AuthorizationPolicy>,
    /// weft PeerAuthentications.
    pub peer_authentications: Objects<PeerAuthentication>,
    /// The ServiceAccounts labelled with a Gateway's name
    /// (`gateway.networking.k8s.io/gateway-name`): the waypoints' candidates.
    /// Others are not watched; none of them can be a waypoint's.
    pub service_accounts: Objects<ServiceAccount>,
    /// Gateway API ReferenceGrants.
    pub reference_grants: Objects<ReferenceGrant>,
    /// True once every watched kind has been read completely at least once.
    /// Before that, absence of an object means nothing.
    pub synced: bool,
    /// Objects that were skipped, and why (files mode).
    pub invalid: Vec<InvalidObject>,
}

impl ClusterState {
    /// The number of objects of every kind together.
    pub fn len(&self) -> usize {
        self.namespaces.len()
            + self.pods.len()
            + self.services.len()
            + self.endpoint_slices.len()
            + self.gateways.len()
            + self.gateway_classes.len()
            + self.http_routes.len()
            + self.grpc_routes.len()
            + self.authorization_policies.len()
            + self.peer_authentications.len()
            + self.service_accounts.len()
            + self.reference_grants.len()
    }

    /// True when no object of any kind is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
