//! The kinds a registry knows, and one enum that holds an object of any of
//! them.

use std::sync::Arc;

use gateway_api::experimental::httproutes::HttpRoute;
use gateway_api::gatewayclasses::GatewayClass;
use gateway_api::gateways::Gateway;
use gateway_api::grpcroutes::GrpcRoute;
use gateway_api::referencegrants::ReferenceGrant;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::state::{ClusterState, ObjectKey};
use crate::crd::{AuthorizationPolicy, PeerAuthentication};

/// One watched kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// v1 Namespace.
    Namespace,
    /// v1 Pod.
    Pod,
    /// v1 Service.
    Service,
    /// discovery.k8s.io/v1 EndpointSlice.
    EndpointSlice,
    /// gateway.networking.k8s.io/v1 Gateway.
    Gateway,
    /// gateway.networking.k8s.io/v1 GatewayClass.
    GatewayClass,
    /// gateway.networking.k8s.io/v1 HTTPRoute.
    HttpRoute,
    /// gateway.networking.k8s.io/v1 GRPCRoute.
    GrpcRoute,
    /// security.weft.dev/v1alpha1 AuthorizationPolicy.
    AuthorizationPolicy,
    /// security.weft.dev/v1alpha1 PeerAuthentication.
    PeerAuthentication,
    /// v1 ServiceAccount: only waypoints' (those labelled with their
    /// Gateway's name), to tell the deployer's from one a user named alike.
    ServiceAccount,
    /// gateway.networking.k8s.io/v1 ReferenceGrant: what a route may name
    /// in another namespace.
    ReferenceGrant,
}

impl Kind {
    /// Every kind, in a stable order.
    pub const ALL: [Kind; 12] = [
        Kind::Namespace,
        Kind::Pod,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Gateway,
        Kind::GatewayClass,
        Kind::HttpRoute,
        Kind::GrpcRoute,
        Kind::AuthorizationPolicy,
        Kind::PeerAuthentication,
        Kind::ServiceAccount,
        Kind::ReferenceGrant,
    ];

    /// (apiVersion, kind) as written in manifests.
    pub fn type_meta(self) -> (&'static str, &'static str) {
        match self {
            Kind::Namespace => ("v1", "Namespace"),
            Kind::Pod => ("v1", "Pod"),
            Kind::Service => ("v1", "Service"),
            Kind::EndpointSlice => ("discovery.k8s.io/v1", "EndpointSlice"),
            Kind::Gateway => ("gateway.networking.k8s.io/v1", "Gateway"),
            Kind::GatewayClass => ("gateway.networking.k8s.io/v1", "GatewayClass"),
            Kind::HttpRoute => ("gateway.networking.k8s.io/v1", "HTTPRoute"),
            Kind::GrpcRoute => ("gateway.networking.k8s.io/v1", "GRPCRoute"),
            Kind::AuthorizationPolicy => ("security.weft.dev/v1alpha1", "AuthorizationPolicy"),
            Kind::PeerAuthentication => ("security.weft.dev/v1alpha1", "PeerAuthentication"),
            Kind::ServiceAccount => ("v1", "ServiceAccount"),
            Kind::ReferenceGrant => ("gateway.networking.k8s.io/v1", "ReferenceGrant"),
        }
    }

    /// The kind for a manifest's `apiVersion` and `kind`.
    pub fn from_type_meta(api_version: &str, kind: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.type_meta() == (api_version, kind))
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// A set of kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kinds(u16);

impl Kinds {
    /// Everything the controller watches.
    pub const ALL: Kinds = Kinds(0xfff);
    /// What the node agent needs: Namespaces and Pods.
    pub const NODE_AGENT: Kinds = Kinds(1 << (Kind::Namespace as u16) | 1 << (Kind::Pod as u16));

    /// An explicit set.
    pub fn of(kinds: &[Kind]) -> Kinds {
        Kinds(kinds.iter().fold(0, |acc, k| acc | k.bit()))
    }

    /// True when `kind` is in the set.
    pub fn contains(self, kind: Kind) -> bool {
        self.0 & kind.bit() != 0
    }

    /// The kinds in the set.
    pub fn iter(self) -> impl Iterator<Item = Kind> {
        Kind::ALL.into_iter().filter(move |k| self.contains(*k))
    }
}

impl Default for Kinds {
    fn default() -> Kinds {
        Kinds::ALL
    }
}

/// An object of any watched kind.
#[derive(Clone, Debug)]
#[allow(missing_docs)]
pub enum AnyObject {
    Namespace(Arc<Namespace>),
    Pod(Arc<Pod>),
    Service(Arc<Service>),
    EndpointSlice(Arc<EndpointSlice>),
    Gateway(Arc<Gateway>),
    GatewayClass(Arc<GatewayClass>),
    HttpRoute(Arc<HttpRoute>),
    GrpcRoute(Arc<GrpcRoute>),
    AuthorizationPolicy(Arc<AuthorizationPolicy>),
    PeerAuthentication(Arc<PeerAuthentication>),
    ServiceAccount(Arc<ServiceAccount>),
    ReferenceGrant(Arc<ReferenceGrant>),
}

macro_rules! dispatch {
    ($self:expr, $obj:ident => $body:expr) => {
        match $self {
            AnyObject::Namespace($obj) => $body,
            AnyObject::Pod($obj) => $body,
            AnyObject::Service($obj) => $body,
            AnyObject::EndpointSlice($obj) => $body,
            AnyObject::Gateway($obj) => $body,
            AnyObject::GatewayClass($obj) => $body,
            AnyObject::HttpRoute($obj) => $body,
            AnyObject::GrpcRoute($obj) => $body,
            AnyObject::AuthorizationPolicy($obj) => $body,
            AnyObject::PeerAuthentication($obj) => $body,
            AnyObject::ServiceAccount($obj) => $body,
            AnyObject::ReferenceGrant($obj) => $body,
        }
    };
}

impl AnyObject {
    /// The object's kind.
    pub fn kind(&self) -> Kind {
        match self {
            AnyObject::Namespace(_) => Kind::Namespace,
            AnyObject::Pod(_) => Kind::Pod,
            AnyObject::Service(_) => Kind::Service,
            AnyObject::EndpointSlice(_) => Kind::EndpointSlice,
            AnyObject::Gateway(_) => Kind::Gateway,
            AnyObject::GatewayClass(_) => Kind::GatewayClass,
            AnyObject::HttpRoute(_) => Kind::HttpRoute,
            AnyObject::GrpcRoute(_) => Kind::GrpcRoute,
            AnyObject::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            AnyObject::PeerAuthentication(_) => Kind::PeerAuthentication,
            AnyObject::ServiceAccount(_) => Kind::ServiceAccount,
            AnyObject::ReferenceGrant(_) => Kind::ReferenceGrant,
        }
    }

    /// The object's key.
    pub fn key(&self) -> ObjectKey {
        dispatch!(self, o => ObjectKey::of(o.as_ref()))
    }

    /// Decodes a manifest of a known kind. The error names the field path.
    pub fn from_value(
        kind: Kind,
        value: serde_json::Value,
    ) -> Result<AnyObject, serde_path_to_error::Error<serde_json::Error>> {
        fn de<T: serde::de::DeserializeOwned>(
            v: serde_json::Value,
        ) -> Result<Arc<T>, serde_path_to_error::Error<serde_json::Error>> {
            serde_path_to_error::deserialize(v).map(Arc::new)
        }
        Ok(match kind {
            Kind::Namespace => AnyObject::Namespace(de(value)?),
            Kind::Pod => AnyObject::Pod(de(value)?),
            Kind::Service => AnyObject::Service(de(value)?),
            Kind::EndpointSlice => AnyObject::EndpointSlice(de(value)?),
            Kind::Gateway => AnyObject::Gateway(de(value)?),
            Kind::GatewayClass => AnyObject::GatewayClass(de(value)?),
            Kind::HttpRoute => AnyObject::HttpRoute(de(value)?),
            Kind::GrpcRoute => AnyObject::GrpcRoute(de(value)?),
            Kind::AuthorizationPolicy => AnyObject::AuthorizationPolicy(de(value)?),
            Kind::PeerAuthentication => AnyObject::PeerAuthentication(de(value)?),
            Kind::ServiceAccount => AnyObject::ServiceAccount(de(value)?),
            Kind::ReferenceGrant => AnyObject::ReferenceGrant(de(value)?),
        })
    }

    /// Inserts or replaces the object in `state`.
    pub fn insert_into(self, state: &mut ClusterState) {
        let key = self.key();
        match self {
            AnyObject::Namespace(o) => state.namespaces.insert(key, o).map(drop),
            AnyObject::Pod(o) => state.pods.insert(key, o).map(drop),
            AnyObject::Service(o) => state.services.insert(key, o).map(drop),
            AnyObject::EndpointSlice(o) => state.endpoint_slices.insert(key, o).map(drop),
            AnyObject::Gateway(o) => state.gateways.insert(key, o).map(drop),
            AnyObject::GatewayClass(o) => state.gateway_classes.insert(key, o).map(drop),
            AnyObject::HttpRoute(o) => state.http_routes.insert(key, o).map(drop),
            AnyObject::GrpcRoute(o) => state.grpc_routes.insert(key, o).map(drop),
            AnyObject::AuthorizationPolicy(o) => {
                state.authorization_policies.insert(key, o).map(drop)
            }
            AnyObject::PeerAuthentication(o) => state.peer_authentications.insert(key, o).map(drop),
            AnyObject::ServiceAccount(o) => state.service_accounts.insert(key, o).map(drop),
            AnyObject::ReferenceGrant(o) => state.reference_grants.insert(key, o).map(drop),
        };
    }
}

/// Removes an object of `kind` from `state`.
pub(crate) fn remove_from(state: &mut ClusterState, kind: Kind, key: &ObjectKey) {
    match kind {
        Kind::Namespace => state.namespaces.remove(key).map(drop),
        Kind::Pod => state.pods.remove(key).map(drop),
        Kind::Service => state.services.remove(key).map(drop),
        Kind::EndpointSlice => state.endpoint_slices.remove(key).map(drop),
        Kind::Gateway => state.gateways.remove(key).map(drop),
        Kind::GatewayClass => state.gateway_classes.remove(key).map(drop),
        Kind::HttpRoute => state.http_routes.remove(key).map(drop),
        Kind::GrpcRoute => state.grpc_routes.remove(key).map(drop),
        Kind::AuthorizationPolicy => state.authorization_policies.remove(key).map(drop),
        Kind::PeerAuthentication => state.peer_authentications.remove(key).map(drop),
        Kind::ServiceAccount => state.service_accounts.remove(key).map(drop),
        Kind::ReferenceGrant => state.reference_grants.remove(key).map(drop),
    };
}

/// Removes every object of `kind` from `state` (before a relist).
pub(crate) fn clear_kind(state: &mut ClusterState, kind: Kind) {
    match kind {
        Kind::Namespace => state.namespaces.clear(),
        Kind::Pod => state.pods.clear(),
        Kind::Service => state.services.clear(),
        Kind::EndpointSlice => state.endpoint_slices.clear(),
        Kind::Gateway => state.gateways.clear(),
        Kind::GatewayClass => state.gateway_classes.clear(),
        Kind::HttpRoute => state.http_routes.clear(),
        Kind::GrpcRoute => state.grpc_routes.clear(),
        Kind::AuthorizationPolicy => state.authorization_policies.clear(),
        Kind::PeerAuthentication => state.peer_authentications.clear(),
        Kind::ServiceAccount => state.service_accounts.clear(),
        Kind::ReferenceGrant => state.reference_grants.clear(),
    }
}
