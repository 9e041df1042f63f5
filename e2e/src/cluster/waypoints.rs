//! Waypoints: the harness plays the controller's deployer and the kubelet
//! for every Gateway of class `weft-waypoint` in the manifest directory
//! (there is no deployer in files mode), and L7 objects (HTTPRoutes,
//! AuthorizationPolicies) are applied like any YAML.
//!
//! A waypoint is: a pod in the Gateway's namespace, created by the real CNI
//! chain like any pod, labelled `gateway.networking.k8s.io/gateway-name` and
//! `weft.dev/dataplane-mode=none` (ztunnel does not capture it: it speaks
//! HBONE itself), running as service account `<gateway>-weft-waypoint`,
//! which the harness writes as the deployer makes it (labelled with the
//! Gateway's name, the Gateway its controlling owner); its bootstrap token in
//! `<run>/controller/tokens/waypoints/<ns>/<gateway>-weft-waypoint`; and the
//! `waypoint` binary inside the pod with `--controller`, ready once it holds
//! its config and its certificate. The controller finds its address from
//! the pod (no Service VIP in files mode).

use std::time::Duration;

use super::{Cluster, record};
use crate::binaries;
use crate::components::waypoint::{self as component, WaypointLaunch};
use crate::error::{Error, Result};
use crate::manifests::{self, DATAPLANE_MODE, GATEWAY_NAME};
use crate::pod::{Pod, PodSpec};
use crate::process::{self, ManagedProcess};
use crate::service::Service;
use crate::state::WaypointRecord;
use crate::waypoint::{Waypoint, WaypointSpec};

/// A waypoint the harness runs: its handle and its process.
#[derive(Debug)]
pub(crate) struct RunningWaypoint {
    pub(crate) handle: Waypoint,
    pub(crate) process: ManagedProcess,
    token: std::path::PathBuf,
}

impl Cluster {
    /// Makes the running waypoints match the waypoint Gateways of the
    /// manifest directory, whoever wrote them (this harness, `weftctl
    /// waypoint apply` in local mode, a user's YAML): starts one for each
    /// Gateway without a running waypoint (also one whose process died),
    /// and stops those whose Gateway is gone. Returns the running ones.
    ///
    /// Idempotent; call it after anything that writes or removes Gateways.
    /// A Gateway's namespace must have been created with
    /// [`Cluster::add_namespace`] (its pod needs it). A waypoint's node is
    /// the one [`Cluster::apply_waypoint`] asked for, else the node with the
    /// fewest pods.
    pub fn reconcile_waypoints(&mut self) -> Result<Vec<Waypoint>> {
        let wanted = self.manifests.waypoint_gateways()?;
        let mut i = 0;
        while i < self.waypoints.len() {
            let w = &mut self.waypoints[i];
            let key = (w.handle.namespace.clone(), w.handle.name.clone());
            if wanted.contains(&key) && w.process.exit_status().is_none() {
                i += 1;
                continue;
            }
            let w = self.waypoints.remove(i);
            if wanted.contains(&key) {
                self.say(&format!(
                    "waypoint {}: process exited; starting it again",
                    w.handle.key()
                ));
            }
            self.stop_waypoint(w)?;
        }
        for (namespace, name) in wanted {
            if !self
                .waypoints
                .iter()
                .any(|w| w.handle.namespace == namespace && w.handle.name == name)
            {
                self.start_waypoint(&namespace, &name)?;
            }
        }
        Ok(self.waypoints())
    }

    /// Creates a waypoint as a user would — writes its Gateway (`kubectl
    /// apply`) — and runs it ([`Cluster::reconcile_waypoints`]). Returns
    /// once it is ready. Bind Services, pods or namespaces to it with the
    /// label `weft.dev/use-waypoint=<name>`, then wait with
    /// [`Cluster::wait_service_bound`] / [`Cluster::wait_pod_bound`].
    pub fn apply_waypoint(&mut self, spec: WaypointSpec) -> Result<Waypoint> {
        if !self.namespaces.contains_key(&spec.namespace) {
            return Err(Error::Invalid(format!(
                "waypoint {}/{}: no namespace {} (add it first)",
                spec.namespace, spec.name, spec.namespace
            )));
        }
        if let Some(node) = spec.node {
            self.node(node)?;
            self.waypoint_nodes
                .insert((spec.namespace.clone(), spec.name.clone()), node);
        }
        self.manifests.write(
            &manifests::gateway_stem(&spec.namespace, &spec.name),
            &[manifests::waypoint_gateway(
                &spec.namespace,
                &spec.name,
                spec.waypoint_for.label(),
            )],
        )?;
        self.reconcile_waypoints()?;
        self.waypoint(&spec.namespace, &spec.name).ok_or_else(|| {
            Error::Invalid(format!(
                "waypoint {}/{} did not start",
                spec.namespace, spec.name
            ))
        })
    }

    /// Deletes the Gateway [`Cluster::apply_waypoint`] wrote and stops its
    /// waypoint.
    pub fn delete_waypoint(&mut self, namespace: &str, name: &str) -> Result<()> {
        self.manifests
            .remove(&manifests::gateway_stem(namespace, name))?;
        self.waypoint_nodes
            .remove(&(namespace.to_string(), name.to_string()));
        self.reconcile_waypoints().map(drop)
    }

    /// The running waypoints.
    pub fn waypoints(&self) -> Vec<Waypoint> {
        self.waypoints.iter().map(|w| w.handle.clone()).collect()
    }

    /// Waypoint `namespace/name`, if running.
    pub fn waypoint(&self, namespace: &str, name: &str) -> Option<Waypoint> {
        self.waypoints
            .iter()
            .find(|w| w.handle.namespace == namespace && w.handle.name == name)
            .map(|w| w.handle.clone())
    }

    /// Waits until every ztunnel sends `service`'s traffic to `waypoint`
    /// (the Service carries `weft.dev/use-waypoint`, directly or through
    /// its namespace) and the waypoint knows the Service.
    pub fn wait_service_bound(
        &self,
        service: &Service,
        waypoint: &Waypoint,
        limit: Duration,
    ) -> Result<()> {
        let (ns, name, ip) = (
            service.namespace.as_str(),
            service.name.as_str(),
            waypoint.ip().to_string(),
        );
        let bound = |v: &serde_json::Value| {
            v["services"].as_array().is_some_and(|ss| {
                ss.iter().any(|s| {
                    s["namespace"] == ns
                        && s["name"] == name
                        && s["waypoint"]["addresses"]
                            .as_array()
                            .is_some_and(|a| a.iter().any(|x| x == ip.as_str()))
                })
            })
        };
        let what = format!("{ns}/{name} bound to waypoint {}", waypoint.key());
        self.wait_for_ztunnels(&what, "/services", limit, bound)?;
        process::wait_until(
            &format!("waypoint {}: {what}", waypoint.key()),
            limit,
            || waypoint.admin("/services").is_ok_and(|v| bound(&v)),
        )
    }

    /// Waits until every ztunnel sends traffic addressed to `pod` to
    /// `waypoint` (the pod, or its namespace, carries
    /// `weft.dev/use-waypoint` and the waypoint serves workloads) and the
    /// waypoint knows the pod.
    pub fn wait_pod_bound(&self, pod: &Pod, waypoint: &Waypoint, limit: Duration) -> Result<()> {
        let (uid, ip) = (pod.uid().to_string(), waypoint.ip().to_string());
        let bound = |v: &serde_json::Value| {
            v["workloads"].as_array().is_some_and(|ws| {
                ws.iter().any(|w| {
                    w["uid"] == uid.as_str()
                        && w["waypoint"]["addresses"]
                            .as_array()
                            .is_some_and(|a| a.iter().any(|x| x == ip.as_str()))
                })
            })
        };
        let what = format!("{} bound to waypoint {}", pod.key(), waypoint.key());
        self.wait_for_ztunnels(&what, "/workloads", limit, bound)?;
        process::wait_until(
            &format!("waypoint {}: {what}", waypoint.key()),
            limit,
            || waypoint.admin("/workloads").is_ok_and(|v| bound(&v)),
        )
    }

    /// Waits until `waypoint`'s admin `path` (`/policies`, `/routes`...)
    /// satisfies `check`: e.g. an applied policy or route is in force there.
    pub fn wait_for_waypoint(
        &self,
        waypoint: &Waypoint,
        what: &str,
        path: &str,
        limit: Duration,
        mut check: impl FnMut(&serde_json::Value) -> bool,
    ) -> Result<()> {
        process::wait_until(
            &format!("waypoint {}: {what}", waypoint.key()),
            limit,
            || waypoint.admin(path).is_ok_and(|v| check(&v)),
        )
    }

    /// Starts the waypoint of Gateway `namespace/name`: token, pod, process.
    fn start_waypoint(&mut self, namespace: &str, name: &str) -> Result<()> {
        let key = format!("{namespace}/{name}");
        if !self.namespaces.contains_key(namespace) {
            return Err(Error::Invalid(format!(
                "waypoint {key}: namespace {namespace} was not created through the harness \
                 (Cluster::add_namespace), so it cannot run a pod there"
            )));
        }
        let node = self
            .waypoint_nodes
            .get(&(namespace.to_string(), name.to_string()))
            .copied()
            .unwrap_or_else(|| self.least_loaded_node());
        // The harness plays the deployer: the ServiceAccount it makes for
        // the Gateway, which the controller checks before it trusts it.
        let service_account = manifests::waypoint_service_account_name(name);
        let service_account = service_account.as_str();
        let gateway_uid = self.manifests.gateway_uid(namespace, name)?;
        self.manifests.write(
            &manifests::service_account_stem(namespace, service_account),
            &[manifests::waypoint_service_account(
                namespace,
                name,
                &gateway_uid,
            )],
        )?;
        self.say(&format!(
            "waypoint {key}: deploying (pod on node-{node}, service account {service_account})"
        ));
        let token = self
            .controller
            .create_waypoint_token(namespace, service_account)?;
        let pod = self.add_pod(
            PodSpec::new(namespace, &format!("{name}-waypoint"))
                .on_node(node)
                .service_account(service_account)
                .label(GATEWAY_NAME, name)
                .label(DATAPLANE_MODE, "none"),
        )?;
        let dir = self.dir().join("waypoints");
        std::fs::create_dir_all(&dir).map_err(Error::io(&dir))?;
        let admin_socket = dir.join(format!("{namespace}-{name}-admin.sock"));
        let _ = std::fs::remove_file(&admin_socket);
        let binary = self.bins.require(binaries::WAYPOINT)?;
        let (url, root) = (self.controller.url(), self.controller.root_cert());
        let cmd = component::command(
            pod.netns(),
            &WaypointLaunch {
                namespace,
                name,
                service_account,
                pod: pod.name(),
                node: pod.node(),
                binary: &binary,
                controller_url: &url,
                controller_ca: &root,
                token_file: &token,
                admin_socket: &admin_socket,
            },
        );
        let log = dir.join(format!("{namespace}-{name}.log"));
        let process = ManagedProcess::spawn(&format!("waypoint/{key}"), cmd, &log)?;
        record(&mut self.state, &process)?;
        let identity = format!("spiffe://cluster.local/ns/{namespace}/sa/{service_account}");
        self.state.waypoints.push(WaypointRecord {
            namespace: namespace.to_string(),
            name: name.to_string(),
            pod: pod.name().to_string(),
            node: pod.node().to_string(),
            ip: pod.ip().to_string(),
            identity: identity.clone(),
            admin_socket: admin_socket.clone(),
            token_file: token.clone(),
        });
        self.state.save()?;
        let mut running = RunningWaypoint {
            handle: Waypoint {
                namespace: namespace.to_string(),
                name: name.to_string(),
                identity,
                pod,
                admin_socket: admin_socket.clone(),
                log,
            },
            process,
            token,
        };
        if let Err(e) = component::wait_ready(&mut running.process, &admin_socket) {
            self.say(&format!("waypoint {key}: not ready, removing it: {e}"));
            if let Err(cleanup) = self.stop_waypoint(running) {
                self.say(&format!("waypoint {key}: {cleanup}"));
            }
            return Err(e);
        }
        self.say(&format!(
            "waypoint {key}: ready at {} as {}",
            running.handle.hbone(),
            running.handle.identity
        ));
        self.waypoints.push(running);
        Ok(())
    }

    /// Stops a waypoint: its process, its token, its pod (CNI DEL).
    fn stop_waypoint(&mut self, mut w: RunningWaypoint) -> Result<()> {
        self.say(&format!("waypoint {}: stopping", w.handle.key()));
        w.process.stop(Duration::from_secs(3));
        let pid = w.process.pid();
        self.state.processes.retain(|p| p.pid != pid);
        self.state
            .waypoints
            .retain(|r| !(r.namespace == w.handle.namespace && r.name == w.handle.name));
        self.state.save()?;
        match std::fs::remove_file(&w.token) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::io(&w.token)(e));
            }
            _ => {}
        }
        let _ = std::fs::remove_file(&w.handle.admin_socket);
        self.manifests.remove(&manifests::service_account_stem(
            &w.handle.namespace,
            &manifests::waypoint_service_account_name(&w.handle.name),
        ))?;
        self.delete_pod(&w.handle.pod)
    }

    /// Stops every waypoint process (teardown; the pods go with the run).
    pub(crate) fn stop_waypoint_processes(&mut self) {
        for mut w in self.waypoints.drain(..) {
            w.process.stop(Duration::from_secs(3));
        }
    }

    /// The node (1-based) with the fewest pods; the first of equals.
    fn least_loaded_node(&self) -> usize {
        (1..=self.nodes.len())
            .min_by_key(|&i| {
                let name = self.nodes[i - 1].name();
                self.pods.iter().filter(|p| p.node() == name).count()
            })
            .unwrap_or(1)
    }
}
