//! What a tunnel's `:authority` names: a Service (its VIP and port) or a
//! workload (its pod IP and port) — and only one bound to *this* waypoint.
//!
//! The waypoint forwards with its own identity. Serving a destination that is
//! not bound to it would let any mesh client borrow that identity to reach
//! workloads whose policies trust the waypoint, so such tunnels are refused.

use std::net::SocketAddr;
use std::sync::Arc;

use http::StatusCode;
use weft_api::config::{Service, ServicePort, WaypointRef, Workload};
use weft_runtime::store::WorkloadStore;

use crate::sniff::{self, Declared};

/// This waypoint: its Gateway's namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WaypointName {
    pub namespace: String,
    pub name: String,
}

impl WaypointName {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// True if `binding` names this waypoint.
    pub fn is(&self, binding: Option<&WaypointRef>) -> bool {
        binding.is_some_and(|w| w.namespace == self.namespace && w.name == self.name)
    }
}

impl std::fmt::Display for WaypointName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A destination this waypoint serves.
#[derive(Debug, Clone)]
pub enum Destination {
    /// Addressed to a Service VIP: routes and Service policies apply; the
    /// waypoint picks the endpoint.
    Service {
        service: Arc<Service>,
        /// Index of the port asked for in `service.ports`.
        port: usize,
        vip: SocketAddr,
    },
    /// Addressed to a pod.
    Workload {
        workload: Arc<Workload>,
        addr: SocketAddr,
    },
}

impl Destination {
    /// The address the client asked for.
    pub fn authority(&self) -> SocketAddr {
        match self {
            Destination::Service { vip, .. } => *vip,
            Destination::Workload { addr, .. } => *addr,
        }
    }

    /// The Service addressed, if one was.
    pub fn addressed_service(&self) -> Option<&Arc<Service>> {
        match self {
            Destination::Service { service, .. } => Some(service),
            Destination::Workload { .. } => None,
        }
    }

    /// The Service, as `(namespace, name)`, when addressed to one.
    pub fn service(&self) -> Option<(&str, &str)> {
        match self {
            Destination::Service { service, .. } => {
                Some((service.namespace.as_str(), service.name.as_str()))
            }
            Destination::Workload { .. } => None,
        }
    }

    /// The Service port asked for, when addressed to a Service.
    pub fn service_port(&self) -> Option<&ServicePort> {
        match self {
            Destination::Service { service, port, .. } => service.ports.get(*port),
            Destination::Workload { .. } => None,
        }
    }

    /// What the destination port says it speaks.
    pub fn declared(&self) -> Declared {
        match self.service_port() {
            Some(port) => sniff::declared(&port.app_protocol),
            None => Declared::Unknown,
        }
    }

    /// True if the port asks for HTTP/2 to the application.
    pub fn wants_h2(&self) -> bool {
        match self.service_port() {
            Some(port) => matches!(
                port.app_protocol.to_ascii_lowercase().as_str(),
                "http2" | "h2c" | "grpc" | "kubernetes.io/h2c"
            ),
            None => false,
        }
    }

    /// `namespace/name` of the Service or workload.
    pub fn name(&self) -> String {
        match self {
            Destination::Service { service, .. } => {
                format!("{}/{}", service.namespace, service.name)
            }
            Destination::Workload { workload, .. } => {
                format!("{}/{}", workload.namespace, workload.name)
            }
        }
    }
}

/// Why a tunnel's authority is not served here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unroutable {
    #[error("{0} is neither a Service VIP nor a workload address known to this waypoint")]
    Unknown(SocketAddr),
    #[error("service {service} has no port {port}")]
    NoPort { service: String, port: u16 },
    #[error("{what} is not bound to waypoint {waypoint}")]
    NotBound { what: String, waypoint: String },
}

impl Unroutable {
    /// The answer to the CONNECT.
    pub fn status(&self) -> StatusCode {
        match self {
            Unroutable::Unknown(_) | Unroutable::NoPort { .. } => StatusCode::NOT_FOUND,
            Unroutable::NotBound { .. } => StatusCode::FORBIDDEN,
        }
    }
}

/// Resolves an authority against the current config.
pub fn resolve(
    store: &WorkloadStore,
    me: &WaypointName,
    authority: SocketAddr,
) -> Result<Destination, Unroutable> {
    if let Some(service) = store.service_by_vip(authority.ip()) {
        if !me.is(service.waypoint.as_ref()) {
            return Err(Unroutable::NotBound {
                what: format!("service {}/{}", service.namespace, service.name),
                waypoint: me.key(),
            });
        }
        let port = service
            .ports
            .iter()
            .position(|p| p.service_port == u32::from(authority.port()))
            .ok_or_else(|| Unroutable::NoPort {
                service: format!("{}/{}", service.namespace, service.name),
                port: authority.port(),
            })?;
        return Ok(Destination::Service {
            service,
            port,
            vip: authority,
        });
    }
    let Some(workload) = store.workload_by_ip(authority.ip()) else {
        return Err(Unroutable::Unknown(authority));
    };
    if !me.is(workload.waypoint.as_ref()) {
        return Err(Unroutable::NotBound {
            what: format!("workload {}/{}", workload.namespace, workload.name),
            waypoint: me.key(),
        });
    }
    Ok(Destination::Workload {
        workload,
        addr: authority,
    })
}
