//! Who may subscribe to the config stream, as what, and so what they get.
//!
//! The stream carries every workload and service of the mesh and the
//! policies and routes its subscriber enforces, so being authenticated is
//! not enough: in Kubernetes mode every pod's ServiceAccount token
//! authenticates. A node's ztunnel may subscribe as the ztunnel of its node,
//! a waypoint's ServiceAccount as that waypoint, and no one else at all.
//! Whether a ServiceAccount is a waypoint's is the same rule the CA applies
//! ([`waypoints_run_by`]). What it may subscribe as decides what it is sent
//! ([`audience`]).

use tonic::Status;
use weft_api::config::{ProxyInfo, ProxyKind};

use crate::auth::Caller;
use weft_cluster::model::audience::Audience;
use weft_cluster::model::waypoints::waypoints_run_by;
use weft_cluster::registry::{ClusterState, ObjectKey};

/// How a kind reads in a refusal.
fn kind_name(kind: i32) -> &'static str {
    match ProxyKind::try_from(kind) {
        Ok(ProxyKind::Ztunnel) => "a ztunnel",
        Ok(ProxyKind::Waypoint) => "a waypoint",
        Ok(ProxyKind::Cli) => "a CLI",
        _ => "an unspecified kind",
    }
}

/// Decides whether `caller` may subscribe as `proxy`; the status says why
/// not. `state` is the cluster as the registry last saw it.
pub(crate) fn subscriber(
    caller: &Caller,
    proxy: &ProxyInfo,
    state: &ClusterState,
) -> Result<(), Status> {
    match caller {
        Caller::Anonymous => Ok(()),
        Caller::Ztunnel { node: bound } => {
            if proxy.kind != ProxyKind::Ztunnel as i32 {
                return Err(Status::permission_denied(format!(
                    "caller is the ztunnel of node {bound:?} and may subscribe only as a \
                     ztunnel, not as {}",
                    kind_name(proxy.kind)
                )));
            }
            // The node comes from the credential; the one subscribed as is
            // only checked against it, so a ztunnel cannot read as another.
            if *bound != proxy.node {
                return Err(Status::permission_denied(format!(
                    "caller is the ztunnel of node {bound:?}, but subscribes as the ztunnel of \
                     node {:?}",
                    proxy.node
                )));
            }
            Ok(())
        }
        Caller::ServiceAccount { namespace, name } => {
            if !state.synced {
                // Not knowing the Gateways yet is not a refusal: the
                // waypoint retries.
                return Err(Status::unavailable(
                    "the controller has not read the cluster yet",
                ));
            }
            let gateways: Vec<String> = waypoints_run_by(state, namespace, name)
                .map(|key| format!("{}/{}", key.namespace, key.name))
                .collect();
            if gateways.is_empty() {
                return Err(Status::permission_denied(format!(
                    "service account {namespace}/{name} is neither the ztunnel's nor a \
                     waypoint's (no Gateway of class weft-waypoint in namespace {namespace} \
                     runs as it), so it may not read the mesh config"
                )));
            }
            if proxy.kind != ProxyKind::Waypoint as i32 {
                return Err(Status::permission_denied(format!(
                    "service account {namespace}/{name} is a waypoint's and may subscribe only \
                     as a waypoint, not as {}",
                    kind_name(proxy.kind)
                )));
            }
            let asked = format!("{}/{}", proxy.namespace, proxy.name);
            if !gateways.contains(&asked) {
                return Err(Status::permission_denied(format!(
                    "service account {namespace}/{name} may subscribe only as waypoint {}, \
                     not as {asked}",
                    gateways.join(" or ")
                )));
            }
            Ok(())
        }
    }
}

/// The view of the config `proxy` is sent, once [`subscriber`] has tied its
/// kind, node and Gateway to the caller's credential: a ztunnel, what its
/// node enforces; a waypoint, what its Gateway does; anything else (a CLI,
/// where authentication is off), everything.
pub(crate) fn audience(proxy: &ProxyInfo) -> Audience {
    match ProxyKind::try_from(proxy.kind) {
        Ok(ProxyKind::Ztunnel) => Audience::Ztunnel(proxy.node.clone()),
        Ok(ProxyKind::Waypoint) => {
            Audience::Waypoint(ObjectKey::new(proxy.namespace.clone(), proxy.name.clone()))
        }
        _ => Audience::Everything,
    }
}

/// The identity per-caller limits count against: a node's ztunnel, a
/// ServiceAccount. `None` when authentication is off: then there is no one
/// to tell apart.
pub(crate) fn limit_key(caller: &Caller) -> Option<String> {
    match caller {
        Caller::Anonymous => None,
        Caller::Ztunnel { node } => Some(format!("the ztunnel of node {node:?}")),
        Caller::ServiceAccount { namespace, name } => {
            Some(format!("service account {namespace}/{name}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_cluster::registry::{AnyObject, Kind};

    fn object(value: serde_json::Value) -> AnyObject {
        let kind = Kind::from_type_meta(
            value["apiVersion"].as_str().unwrap_or_default(),
            value["kind"].as_str().unwrap_or_default(),
        )
        .expect("kind");
        AnyObject::from_value(kind, value).expect("object")
    }

    fn gateway(ns: &str, name: &str, class: &str) -> AnyObject {
        object(serde_json::json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": name, "namespace": ns, "uid": format!("{name}-uid")},
            "spec": {"gatewayClassName": class, "listeners": []}
        }))
    }

    /// What the deployer makes for Gateway `ns/gateway`.
    fn deployed_service_account(ns: &str, gateway: &str) -> AnyObject {
        object(serde_json::json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": format!("{gateway}-weft-waypoint"), "namespace": ns,
                "labels": {"gateway.networking.k8s.io/gateway-name": gateway},
                "ownerReferences": [{"apiVersion": "gateway.networking.k8s.io/v1",
                    "kind": "Gateway", "name": gateway, "uid": format!("{gateway}-uid"),
                    "controller": true}]}
        }))
    }

    fn cluster() -> ClusterState {
        let mut state = ClusterState {
            synced: true,
            ..ClusterState::default()
        };
        gateway("shop", "shop-waypoint", "weft-waypoint").insert_into(&mut state);
        deployed_service_account("shop", "shop-waypoint").insert_into(&mut state);
        gateway("shop", "ingress", "some-other-class").insert_into(&mut state);
        deployed_service_account("shop", "ingress").insert_into(&mut state);
        state
    }

    fn waypoint(ns: &str, name: &str) -> ProxyInfo {
        ProxyInfo {
            kind: ProxyKind::Waypoint as i32,
            namespace: ns.into(),
            name: name.into(),
            ..ProxyInfo::default()
        }
    }

    fn sa(ns: &str, name: &str) -> Caller {
        Caller::ServiceAccount {
            namespace: ns.into(),
            name: name.into(),
        }
    }

    fn ztunnel(node: &str) -> ProxyInfo {
        ProxyInfo {
            kind: ProxyKind::Ztunnel as i32,
            node: node.into(),
            ..ProxyInfo::default()
        }
    }

    #[test]
    fn a_waypoint_service_account_subscribes_only_as_its_own_gateway() {
        let state = cluster();
        let caller = sa("shop", "shop-waypoint-weft-waypoint");
        assert!(subscriber(&caller, &waypoint("shop", "shop-waypoint"), &state).is_ok());
        let other = subscriber(&caller, &waypoint("bank", "shop-waypoint"), &state)
            .expect_err("another namespace");
        assert_eq!(other.code(), tonic::Code::PermissionDenied);
        assert!(
            other
                .message()
                .contains("only as waypoint shop/shop-waypoint")
        );
        let as_ztunnel = subscriber(&caller, &ztunnel("node-a"), &state).expect_err("ztunnel");
        assert!(
            as_ztunnel
                .message()
                .contains("only as a waypoint, not as a ztunnel")
        );
    }

    #[test]
    fn other_service_accounts_are_refused_and_told_why() {
        let state = cluster();
        // A Gateway of another class does not make its name a waypoint,
        // nor does the Gateway's own name (the deployer's name used to be
        // that).
        for caller in [
            sa("shop", "web"),
            sa("shop", "ingress-weft-waypoint"),
            sa("shop", "shop-waypoint"),
            sa("bank", "shop-waypoint-weft-waypoint"),
        ] {
            let refused = subscriber(&caller, &waypoint("shop", "shop-waypoint"), &state)
                .expect_err("not a waypoint");
            assert_eq!(refused.code(), tonic::Code::PermissionDenied);
            assert!(
                refused
                    .message()
                    .contains("neither the ztunnel's nor a waypoint's"),
                "{}",
                refused.message()
            );
        }
        // Before the registry has synced nobody is refused for good.
        let unsynced = ClusterState::default();
        let later =
            subscriber(&sa("shop", "web"), &ztunnel("node-a"), &unsynced).expect_err("unsynced");
        assert_eq!(later.code(), tonic::Code::Unavailable);
    }

    #[test]
    fn a_ztunnel_subscribes_only_as_the_ztunnel_of_its_node() {
        let state = cluster();
        let caller = Caller::Ztunnel {
            node: "node-a".into(),
        };
        assert!(subscriber(&caller, &ztunnel("node-a"), &state).is_ok());
        // Another node, or none: the request cannot choose the node.
        for other in ["node-b", ""] {
            let refused = subscriber(&caller, &ztunnel(other), &state).expect_err("other node");
            assert_eq!(refused.code(), tonic::Code::PermissionDenied);
            assert_eq!(
                refused.message(),
                format!(
                    "caller is the ztunnel of node \"node-a\", but subscribes as the ztunnel \
                     of node {other:?}"
                )
            );
        }
        let as_waypoint =
            subscriber(&caller, &waypoint("shop", "shop-waypoint"), &state).expect_err("waypoint");
        assert!(
            as_waypoint
                .message()
                .contains("only as a ztunnel, not as a waypoint"),
            "{}",
            as_waypoint.message()
        );
        assert_eq!(
            limit_key(&caller).as_deref(),
            Some("the ztunnel of node \"node-a\"")
        );
        assert_eq!(limit_key(&Caller::Anonymous), None);
    }
}
