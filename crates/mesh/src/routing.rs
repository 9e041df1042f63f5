//! Where a client's ztunnel sends a connection: through a waypoint, straight
//! to the destination's ztunnel, or out in plain TCP. ztunnel's outbound
//! routing and `weftctl explain` both ask here, so explain shows the path
//! the proxy takes.
//!
//! The Service's binding comes first: a connection to a Service VIP bound
//! to a waypoint goes to the waypoint, which picks the endpoint. Otherwise
//! the endpoint's own binding decides, then whether it is in the mesh. A
//! waypoint's own connections are never sent back to it. A binding that
//! cannot be honoured refuses the connection (fail closed).

use weft_api::config::{Service, TunnelProtocol, WaypointRef, Workload};

use crate::admission::{spiffe_id, waypoint_available};
use crate::denial::Denial;

/// The next hop of a connection to one endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextHop<'a> {
    /// Through this waypoint.
    Waypoint(&'a WaypointRef),
    /// An HBONE tunnel to the endpoint's ztunnel.
    Direct,
    /// Plain TCP: the endpoint is not in the mesh.
    Passthrough,
}

/// The waypoint a connection to `service` goes through, if the Service is
/// bound to one (and `client` is not that waypoint). `Err`: bound to a
/// waypoint that cannot take traffic.
pub fn service_waypoint<'a>(
    service: &'a Service,
    client: Option<&Workload>,
) -> Result<Option<&'a WaypointRef>, Denial> {
    let Some(waypoint) = usable(service.waypoint.as_ref(), client) else {
        return Ok(None);
    };
    waypoint_available(
        waypoint,
        &format!("service {}/{}", service.namespace, service.name),
    )?;
    Ok(Some(waypoint))
}

/// The next hop to `endpoint` once no Service waypoint applies (the
/// connection is to the pod itself, or to a Service without a waypoint).
pub fn endpoint_hop<'a>(
    endpoint: &'a Workload,
    client: Option<&Workload>,
) -> Result<NextHop<'a>, Denial> {
    if let Some(waypoint) = usable(endpoint.waypoint.as_ref(), client) {
        waypoint_available(
            waypoint,
            &format!("workload {}/{}", endpoint.namespace, endpoint.name),
        )?;
        return Ok(NextHop::Waypoint(waypoint));
    }
    if endpoint.protocol == TunnelProtocol::Hbone as i32 {
        Ok(NextHop::Direct)
    } else {
        Ok(NextHop::Passthrough)
    }
}

/// A waypoint applies unless the client is that waypoint itself: its own
/// connections onward to the destination must not loop back to it.
fn usable<'a>(
    waypoint: Option<&'a WaypointRef>,
    client: Option<&Workload>,
) -> Option<&'a WaypointRef> {
    let waypoint = waypoint?;
    let is_self = client.is_some_and(|c| c.is_waypoint && spiffe_id(c) == waypoint.identity);
    (!is_self).then_some(waypoint)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waypoint(name: &str, unavailable: &str) -> WaypointRef {
        WaypointRef {
            namespace: "shop".into(),
            name: name.into(),
            identity: format!("spiffe://cluster.local/ns/shop/sa/{name}"),
            addresses: vec!["10.0.9.9".into()],
            unavailable: unavailable.into(),
            ..Default::default()
        }
    }

    fn pod(name: &str, hbone: bool, bound: Option<WaypointRef>) -> Workload {
        Workload {
            uid: name.into(),
            name: name.into(),
            namespace: "shop".into(),
            service_account: name.into(),
            protocol: if hbone {
                TunnelProtocol::Hbone as i32
            } else {
                TunnelProtocol::None as i32
            },
            waypoint: bound,
            ..Default::default()
        }
    }

    fn the_waypoint_pod(name: &str) -> Workload {
        Workload {
            is_waypoint: true,
            ..pod(name, false, None)
        }
    }

    fn service(bound: Option<WaypointRef>) -> Service {
        Service {
            namespace: "shop".into(),
            name: "cart".into(),
            waypoint: bound,
            ..Default::default()
        }
    }

    /// Every combination that decides the hop: the Service's binding, the
    /// endpoint's binding and mesh membership, the client being the
    /// waypoint (or only sharing its name), and unavailable waypoints.
    #[test]
    fn the_table() {
        let wp = waypoint("wp", "");
        let other = waypoint("other", "");
        let gone = waypoint("gone", "Gateway shop/gone does not exist");
        let client = pod("client", true, None);
        let wp_pod = the_waypoint_pod("wp");
        // A plain pod running under the waypoint's service account is not
        // the waypoint.
        let impostor = pod("wp", true, None);

        // Service bindings.
        assert_eq!(
            service_waypoint(&service(Some(wp.clone())), Some(&client)),
            Ok(Some(&wp))
        );
        let svc = service(Some(wp.clone()));
        assert_eq!(service_waypoint(&svc, Some(&wp_pod)), Ok(None));
        assert_eq!(service_waypoint(&svc, Some(&impostor)), Ok(Some(&wp)));
        assert_eq!(service_waypoint(&svc, None), Ok(Some(&wp)));
        assert_eq!(service_waypoint(&service(None), Some(&client)), Ok(None));
        let err = service_waypoint(&service(Some(gone.clone())), Some(&client)).unwrap_err();
        assert_eq!(err.label(), "waypoint_unavailable");
        assert!(err.to_string().contains("service shop/cart"), "{err}");

        // Endpoint bindings and membership.
        let bound = pod("db", true, Some(other.clone()));
        assert_eq!(
            endpoint_hop(&bound, Some(&client)),
            Ok(NextHop::Waypoint(&other))
        );
        assert_eq!(
            endpoint_hop(&pod("db", true, None), Some(&client)),
            Ok(NextHop::Direct)
        );
        assert_eq!(
            endpoint_hop(&pod("db", false, None), Some(&client)),
            Ok(NextHop::Passthrough)
        );
        // A binding applies even to an endpoint outside the mesh: the
        // waypoint connects onward in plain TCP.
        let outside_bound = pod("db", false, Some(wp.clone()));
        assert_eq!(
            endpoint_hop(&outside_bound, Some(&client)),
            Ok(NextHop::Waypoint(&wp))
        );
        // The waypoint itself goes to the endpoint.
        let bound_to_wp = pod("db", true, Some(wp.clone()));
        assert_eq!(
            endpoint_hop(&bound_to_wp, Some(&wp_pod)),
            Ok(NextHop::Direct)
        );
        assert_eq!(
            endpoint_hop(&outside_bound, Some(&wp_pod)),
            Ok(NextHop::Passthrough)
        );
        let err = endpoint_hop(&pod("db", true, Some(gone)), None).unwrap_err();
        assert!(err.to_string().contains("workload shop/db"), "{err}");
    }
}
