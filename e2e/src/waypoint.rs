//! Waypoints: what a test asks for ([`WaypointSpec`], written as a Gateway
//! of class `weft-waypoint`) and the handle it gets back ([`Waypoint`]: its
//! pod, identity and admin API).
//!
//! In Kubernetes the controller's deployer turns such a Gateway into a
//! Deployment; in the files-registry cluster the harness plays deployer and
//! kubelet ([`crate::Cluster::reconcile_waypoints`]): a pod labelled
//! `gateway.networking.k8s.io/gateway-name=<gateway>` and
//! `weft.dev/dataplane-mode=none`, running as service account `<gateway>`,
//! with the real `waypoint` binary inside.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use crate::components::waypoint as component;
use crate::error::{Error, Result};
use crate::pod::Pod;

/// What a waypoint serves (label `weft.dev/waypoint-for` on its Gateway).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaypointFor {
    /// Traffic addressed to a bound Service (the default).
    Service,
    /// Traffic addressed to a bound pod directly.
    Workload,
    /// Both.
    All,
}

impl WaypointFor {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            WaypointFor::Service => "service",
            WaypointFor::Workload => "workload",
            WaypointFor::All => "all",
        }
    }
}

/// A waypoint to create.
#[derive(Clone, Debug)]
pub struct WaypointSpec {
    /// The Gateway's namespace (where its pod runs too).
    pub namespace: String,
    /// The Gateway's name (also its service account).
    pub name: String,
    /// What it serves.
    pub waypoint_for: WaypointFor,
    /// The node its pod runs on (1-based); `None`: the node with the fewest
    /// pods, as a scheduler would spread them.
    pub node: Option<usize>,
}

impl WaypointSpec {
    /// Waypoint `namespace/name` for Services, on any node.
    pub fn new(namespace: &str, name: &str) -> WaypointSpec {
        WaypointSpec {
            namespace: namespace.into(),
            name: name.into(),
            waypoint_for: WaypointFor::Service,
            node: None,
        }
    }

    /// Serves `what`.
    pub fn waypoint_for(mut self, what: WaypointFor) -> WaypointSpec {
        self.waypoint_for = what;
        self
    }

    /// Runs on node `index` (1-based).
    pub fn on_node(mut self, index: usize) -> WaypointSpec {
        self.node = Some(index);
        self
    }
}

/// A running waypoint. Cheap to clone; the cluster owns the process.
#[derive(Clone, Debug)]
pub struct Waypoint {
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) identity: String,
    pub(crate) pod: Pod,
    pub(crate) admin_socket: PathBuf,
    pub(crate) log: PathBuf,
}

impl Waypoint {
    /// The Gateway's namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The Gateway's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Its SPIFFE identity,
    /// `spiffe://cluster.local/ns/<ns>/sa/<gateway>-weft-waypoint`.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Its pod.
    pub fn pod(&self) -> &Pod {
        &self.pod
    }

    /// Its pod's IP: the waypoint's address while it has no Service.
    pub fn ip(&self) -> Ipv4Addr {
        self.pod.ip()
    }

    /// Where it accepts HBONE.
    pub fn hbone(&self) -> SocketAddr {
        SocketAddr::from((self.pod.ip(), component::HBONE_PORT))
    }

    /// Its admin API's unix socket.
    pub fn admin_socket(&self) -> &Path {
        &self.admin_socket
    }

    /// Its log file (one access-log line per request).
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// GET `path` (`/config_dump`, `/services`, `/routes`, `/policies`,
    /// `/connections`...) from its admin API, as JSON.
    pub fn admin(&self, path: &str) -> Result<serde_json::Value> {
        let response = component::admin(&self.admin_socket, path)?;
        if response.status != 200 {
            return Err(Error::Invalid(format!(
                "waypoint {} {path} answered {}: {}",
                self.key(),
                response.status,
                response.body.trim()
            )));
        }
        response.json()
    }

    /// Its Prometheus metrics, as text.
    pub fn metrics(&self) -> Result<String> {
        let response = component::metrics(self.pod.netns())?;
        if response.status != 200 {
            return Err(Error::Invalid(format!(
                "waypoint {} /metrics answered {}",
                self.key(),
                response.status
            )));
        }
        Ok(response.body)
    }
}
