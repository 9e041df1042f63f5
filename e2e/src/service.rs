//! Services: what a test asks for ([`ServiceSpec`]) and what it gets back
//! ([`Service`], with the cluster IP the harness allocated, as an API server
//! would).
//!
//! How VIP traffic flows: pods have a default route via their node's pod
//! bridge, so a connection to a VIP is routed (the route lookup happens
//! before the `nat OUTPUT` hook) and then, in an enrolled pod, captured by
//! the pod's own redirect rules and handed to ztunnel with the VIP as its
//! original destination: ztunnel picks the endpoint. Nothing else in the
//! cluster knows VIPs (there is no kube-proxy): a connection from a pod
//! outside the mesh to a VIP leaves its pod, reaches a node that has no
//! route for 10.96.0.0/16, and fails. Tests from non-mesh pods target pod
//! IPs.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};

use crate::manifests::ServicePort;

/// A Service to create.
#[derive(Clone, Debug)]
pub struct ServiceSpec {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Labels (e.g. `weft.dev/use-waypoint`).
    pub labels: BTreeMap<String, String>,
    /// The pods it selects.
    pub selector: BTreeMap<String, String>,
    /// Its ports.
    pub ports: Vec<ServicePort>,
}

impl ServiceSpec {
    /// A Service `namespace/name` with no selector and no ports yet.
    pub fn new(namespace: &str, name: &str) -> ServiceSpec {
        ServiceSpec {
            namespace: namespace.into(),
            name: name.into(),
            labels: BTreeMap::new(),
            selector: BTreeMap::new(),
            ports: Vec::new(),
        }
    }

    /// Selects pods labelled `key=value`.
    pub fn select(mut self, key: &str, value: &str) -> ServiceSpec {
        self.selector.insert(key.into(), value.into());
        self
    }

    /// Adds a label to the Service.
    pub fn label(mut self, key: &str, value: &str) -> ServiceSpec {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Adds port `port` → the pods' `target_port`.
    pub fn port(mut self, name: &str, port: u16, target_port: u16) -> ServiceSpec {
        self.ports.push(ServicePort {
            name: name.into(),
            port,
            target_port,
            app_protocol: None,
        });
        self
    }

    /// Adds an HTTP port (`appProtocol: http`).
    pub fn http_port(mut self, name: &str, port: u16, target_port: u16) -> ServiceSpec {
        self.ports.push(ServicePort {
            name: name.into(),
            port,
            target_port,
            app_protocol: Some("http".into()),
        });
        self
    }
}

/// A created Service.
#[derive(Clone, Debug)]
pub struct Service {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Its cluster IP.
    pub vip: Ipv4Addr,
    /// Its ports.
    pub ports: Vec<ServicePort>,
}

impl Service {
    /// `vip:port` of the port called `name` (the first port if none is).
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.ports
            .iter()
            .find(|p| p.name == name)
            .or(self.ports.first())
            .map(|p| SocketAddr::from((self.vip, p.port)))
    }

    /// The `cluster.local` host name.
    pub fn hostname(&self) -> String {
        format!("{}.{}.svc.cluster.local", self.name, self.namespace)
    }
}
