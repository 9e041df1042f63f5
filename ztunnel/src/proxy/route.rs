//! Where an outbound connection goes: a typed decision made from the store,
//! so the outbound handler reads as "decide, then carry out".

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use weft_api::config::{Service, WaypointRef, Workload};
use weft_hbone::SpiffeId;
use weft_mesh::NextHop;

use weft_runtime::lb::{EndpointLoad, LoadBalancer, service_candidates};
use weft_runtime::store::{WorkloadStore, workload_identity};

/// The HBONE port of workloads and waypoints.
pub const HBONE_PORT: u16 = weft_mesh::admission::HBONE_PORT;

/// An outbound routing decision.
#[derive(Debug)]
pub enum Route {
    /// Not in the mesh (or unknown): plain TCP from the pod.
    Passthrough {
        dst: SocketAddr,
        load: Option<EndpointLoad>,
    },
    /// An HBONE-capable workload, reached at `<pod IP>:15008`.
    Direct(Tunnel),
    /// Through the waypoint that serves the destination.
    Waypoint(Tunnel),
    /// Nothing can take it (a VIP with no endpoints, a port the Service does
    /// not expose): the client is reset.
    Unreachable { reason: String },
    /// The mesh refuses it: the destination is bound to a waypoint that
    /// cannot take traffic (fail closed, never around the waypoint).
    Refused(weft_mesh::Denial),
}

/// A tunnel to open: where, expecting whom, for which original destination.
#[derive(Debug)]
pub struct Tunnel {
    pub hbone_addr: SocketAddr,
    pub identity: SpiffeId,
    /// `:authority`: the pod's `IP:port`, or the VIP's when a waypoint must
    /// see which Service was asked for.
    pub authority: SocketAddr,
    /// The destination workload, when known (metrics, `/connections`).
    pub workload: Option<Arc<Workload>>,
    pub service: Option<Arc<Service>>,
    /// `namespace/name` of the waypoint, if through one.
    pub waypoint: Option<String>,
    /// Held while the connection lasts: the endpoint's outstanding count.
    pub load: Option<EndpointLoad>,
}

/// Decides the route for a connection from a pod on `node` to `dst`.
pub fn route(
    store: &WorkloadStore,
    lb: &LoadBalancer,
    node: &str,
    source: Option<&Workload>,
    dst: SocketAddr,
) -> Route {
    if let Some(service) = store.service_by_vip(dst.ip()) {
        return route_service(store, lb, node, source, service, dst);
    }
    match store.workload_by_ip(dst.ip()) {
        Some(workload) => route_workload(store, lb, source, workload, dst, None, None),
        None => Route::Passthrough { dst, load: None },
    }
}

fn route_service(
    store: &WorkloadStore,
    lb: &LoadBalancer,
    node: &str,
    source: Option<&Workload>,
    service: Arc<Service>,
    dst: SocketAddr,
) -> Route {
    let svc_port = u32::from(dst.port());
    let Some(port) = service.ports.iter().find(|p| p.service_port == svc_port) else {
        return Route::Unreachable {
            reason: format!(
                "service {}/{} has no port {}",
                service.namespace, service.name, svc_port
            ),
        };
    };
    match weft_mesh::service_waypoint(&service, source) {
        Err(denial) => return Route::Refused(denial),
        // The waypoint resolves the Service itself: it must see the VIP.
        Ok(Some(waypoint)) => {
            return match waypoint_tunnel(store, lb, waypoint, dst, None, Some(service.clone())) {
                Some(t) => Route::Waypoint(t),
                None => unreachable_waypoint(waypoint),
            };
        }
        Ok(None) => {}
    }
    let candidates = service_candidates(store, &service, port);
    let prefer_node = service.prefer_same_node.then_some(node);
    let Some((chosen, load)) = lb.pick(&candidates, prefer_node) else {
        return Route::Unreachable {
            reason: format!(
                "service {}/{} has no healthy endpoint",
                service.namespace, service.name
            ),
        };
    };
    route_workload(
        store,
        lb,
        source,
        chosen.workload.clone(),
        chosen.addr,
        Some(service),
        Some(load),
    )
}

fn route_workload(
    store: &WorkloadStore,
    lb: &LoadBalancer,
    source: Option<&Workload>,
    workload: Arc<Workload>,
    dst: SocketAddr,
    service: Option<Arc<Service>>,
    load: Option<EndpointLoad>,
) -> Route {
    match weft_mesh::endpoint_hop(&workload, source) {
        Err(denial) => return Route::Refused(denial),
        Ok(NextHop::Waypoint(waypoint)) => {
            return match waypoint_tunnel(store, lb, waypoint, dst, Some(workload.clone()), service)
            {
                Some(mut t) => {
                    // The destination's count, when it was picked from a
                    // Service, else the waypoint replica's.
                    if load.is_some() {
                        t.load = load;
                    }
                    Route::Waypoint(t)
                }
                None => unreachable_waypoint(waypoint),
            };
        }
        Ok(NextHop::Passthrough) => return Route::Passthrough { dst, load },
        Ok(NextHop::Direct) => {}
    }
    let Some(identity) = workload_identity(&workload).ok() else {
        return Route::Unreachable {
            reason: format!("workload {} has no valid identity", workload.uid),
        };
    };
    Route::Direct(Tunnel {
        hbone_addr: SocketAddr::new(dst.ip(), HBONE_PORT),
        identity,
        authority: dst,
        workload: Some(workload),
        service,
        waypoint: None,
        load,
    })
}

/// The tunnel to `waypoint`. Its address is usually its Service's VIP; the
/// VIP is resolved here to one of the waypoint's ready replicas, picked per
/// connection: HBONE connections are pooled per address, so tunnelling to
/// the VIP would send every connection from this node to whichever replica
/// took the pooled connection. An address the store does not know as a
/// Service is used as it is.
fn waypoint_tunnel(
    store: &WorkloadStore,
    lb: &LoadBalancer,
    waypoint: &WaypointRef,
    authority: SocketAddr,
    workload: Option<Arc<Workload>>,
    service: Option<Arc<Service>>,
) -> Option<Tunnel> {
    let ip: IpAddr = waypoint.addresses.iter().find_map(|a| a.parse().ok())?;
    let port = u16::try_from(waypoint.hbone_port)
        .ok()
        .filter(|p| *p != 0)
        .unwrap_or(HBONE_PORT);
    let candidates = store
        .service_by_vip(ip)
        .and_then(|svc| {
            let svc_port = svc
                .ports
                .iter()
                .find(|p| p.service_port == u32::from(port))?;
            Some(service_candidates(store, &svc, svc_port))
        })
        .unwrap_or_default();
    let (hbone_addr, load) = match lb.pick(&candidates, None) {
        Some((chosen, load)) => (chosen.addr, Some(load)),
        None => (SocketAddr::new(ip, port), None),
    };
    Some(Tunnel {
        hbone_addr,
        identity: waypoint.identity.parse().ok()?,
        authority,
        workload,
        service,
        waypoint: Some(format!("{}/{}", waypoint.namespace, waypoint.name)),
        load,
    })
}

fn unreachable_waypoint(waypoint: &WaypointRef) -> Route {
    Route::Unreachable {
        reason: format!(
            "waypoint {}/{} has no usable address or identity",
            waypoint.namespace, waypoint.name
        ),
    }
}

#[cfg(test)]
mod tests {
    use weft_api::config::{HealthStatus, ServicePort, TunnelProtocol, resource};

    use super::*;
    use weft_runtime::store::ConfigUpdate;

    fn unavailable() -> WaypointRef {
        WaypointRef {
            namespace: "shop".into(),
            name: "gone".into(),
            unavailable: "Gateway shop/gone of class weft-waypoint does not exist".into(),
            ..Default::default()
        }
    }

    /// A binding the controller could not honour is refused, never routed
    /// around the waypoint: neither to the Service's endpoints nor to the
    /// pod directly.
    #[test]
    fn a_destination_bound_to_an_unavailable_waypoint_is_refused() {
        let store = WorkloadStore::default();
        let pod = Workload {
            uid: "web-1".into(),
            name: "web-1".into(),
            namespace: "shop".into(),
            service_account: "web".into(),
            addresses: vec!["10.0.0.7".into()],
            protocol: TunnelProtocol::Hbone as i32,
            status: HealthStatus::Healthy as i32,
            waypoint: Some(unavailable()),
            ..Default::default()
        };
        let service = Service {
            name: "web".into(),
            namespace: "shop".into(),
            vips: vec!["10.96.0.7".into()],
            ports: vec![ServicePort {
                service_port: 80,
                target_port: 8080,
                ..Default::default()
            }],
            waypoint: Some(unavailable()),
            ..Default::default()
        };
        store
            .apply(ConfigUpdate {
                version: 1,
                full_snapshot: true,
                resources: vec![
                    resource::Kind::Workload(pod),
                    resource::Kind::Service(service),
                ],
                removed: vec![],
            })
            .expect("config");
        let lb = LoadBalancer::default();
        for (dst, bound) in [
            ("10.96.0.7:80", "service shop/web"),
            ("10.0.0.7:8080", "workload shop/web-1"),
        ] {
            let dst: SocketAddr = dst.parse().expect("address");
            match route(&store, &lb, "node-1", None, dst) {
                Route::Refused(denial) => {
                    assert_eq!(denial.label(), "waypoint_unavailable");
                    assert_eq!(
                        denial.to_string(),
                        format!(
                            "{bound} is bound to waypoint shop/gone, which is unavailable: Gateway shop/gone of class weft-waypoint does not exist"
                        )
                    );
                }
                other => panic!("{dst}: {other:?}"),
            }
        }
    }

    /// A waypoint with two replicas behind its Service VIP: each connection
    /// picks a replica (pooled HBONE connections to the VIP would pin every
    /// connection to one), with the waypoint's identity.
    #[test]
    fn connections_through_a_waypoint_vip_spread_over_its_replicas() {
        let store = WorkloadStore::default();
        let waypoint = WaypointRef {
            namespace: "shop".into(),
            name: "wp".into(),
            addresses: vec!["10.96.0.99".into()],
            hbone_port: 15008,
            identity: "spiffe://cluster.local/ns/shop/sa/wp-weft-waypoint".into(),
            ..Default::default()
        };
        let replica = |n: u8| Workload {
            uid: format!("wp-{n}"),
            name: format!("wp-{n}"),
            namespace: "shop".into(),
            service_account: "wp-weft-waypoint".into(),
            addresses: vec![format!("10.0.1.{n}")],
            protocol: TunnelProtocol::Hbone as i32,
            status: HealthStatus::Healthy as i32,
            is_waypoint: true,
            ..Default::default()
        };
        let endpoint = |uid: &str| weft_api::config::Endpoint {
            workload_uid: uid.into(),
            status: HealthStatus::Healthy as i32,
            ..Default::default()
        };
        let waypoint_service = Service {
            name: "wp".into(),
            namespace: "shop".into(),
            vips: vec!["10.96.0.99".into()],
            ports: vec![ServicePort {
                service_port: 15008,
                target_port: 15008,
                ..Default::default()
            }],
            endpoints: vec![endpoint("wp-1"), endpoint("wp-2")],
            ..Default::default()
        };
        let bound = Service {
            name: "web".into(),
            namespace: "shop".into(),
            vips: vec!["10.96.0.7".into()],
            ports: vec![ServicePort {
                service_port: 80,
                target_port: 8080,
                ..Default::default()
            }],
            waypoint: Some(waypoint),
            ..Default::default()
        };
        store
            .apply(ConfigUpdate {
                version: 1,
                full_snapshot: true,
                resources: vec![
                    resource::Kind::Workload(replica(1)),
                    resource::Kind::Workload(replica(2)),
                    resource::Kind::Service(waypoint_service),
                    resource::Kind::Service(bound),
                ],
                removed: vec![],
            })
            .expect("config");
        let lb = LoadBalancer::default();
        let dst: SocketAddr = "10.96.0.7:80".parse().expect("address");
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..64 {
            match route(&store, &lb, "node-1", None, dst) {
                Route::Waypoint(t) => {
                    assert_eq!(t.authority, dst, "the waypoint still sees the VIP");
                    assert_eq!(
                        t.identity.to_string(),
                        "spiffe://cluster.local/ns/shop/sa/wp-weft-waypoint"
                    );
                    seen.insert(t.hbone_addr.to_string());
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            seen.into_iter().collect::<Vec<_>>(),
            ["10.0.1.1:15008", "10.0.1.2:15008"]
        );
    }
}
