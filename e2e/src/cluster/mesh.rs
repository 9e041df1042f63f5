//! Watching the mesh converge: the controller's model, the ztunnels' admin
//! APIs, the pods' rules, captures of the underlay.

use std::time::Duration;

use super::Cluster;
use crate::binaries;
use crate::capture::Capture;
use crate::components::node_agent;
use crate::components::ztunnel;
use crate::error::{Error, Result};
use crate::netns::Netns;
use crate::pod::Pod;
use crate::process;

impl Cluster {
    /// Waits until the controller's model satisfies `check`.
    pub fn wait_for_model(
        &self,
        what: &str,
        limit: Duration,
        mut check: impl FnMut(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value> {
        let mut last = serde_json::Value::Null;
        let result =
            process::wait_until(&format!("controller model: {what}"), limit, || {
                match self.controller.model() {
                    Ok(model) => {
                        let ok = check(&model);
                        last = model;
                        ok
                    }
                    Err(_) => false,
                }
            });
        result.map(|()| last)
    }

    /// Waits until `pod`'s redirect rules are present (`true`) or gone.
    pub fn wait_redirected(&self, pod: &Pod, present: bool, limit: Duration) -> Result<()> {
        let what = format!(
            "redirect rules {} in pod {}",
            if present { "installed" } else { "removed" },
            pod.key()
        );
        process::wait_until(&what, limit, || {
            pod.redirect_rules()
                .is_ok_and(|r| if present { r.present() } else { r.absent() })
        })
    }

    /// GET `path` (`/workloads`, `/connections`, `/certs`, `/policies`...)
    /// from node `index`'s ztunnel admin API, as JSON.
    pub fn ztunnel_admin(&self, index: usize, path: &str) -> Result<serde_json::Value> {
        let node = self.node(index)?;
        let response = ztunnel::admin(node.layout(), path)?;
        if response.status != 200 {
            return Err(Error::Invalid(format!(
                "{} ztunnel {path} answered {}: {}",
                node.name(),
                response.status,
                response.body.trim()
            )));
        }
        response.json()
    }

    /// Waits until every ztunnel's admin `path` satisfies `check`.
    pub fn wait_for_ztunnels(
        &self,
        what: &str,
        path: &str,
        limit: Duration,
        mut check: impl FnMut(&serde_json::Value) -> bool,
    ) -> Result<()> {
        if !self.ztunnel {
            return Err(Error::Invalid("this cluster runs no ztunnel".into()));
        }
        process::wait_until(&format!("every ztunnel: {what}"), limit, || {
            (1..=self.nodes.len()).all(|i| self.ztunnel_admin(i, path).is_ok_and(|v| check(&v)))
        })
    }

    /// The index (1-based) of the node `pod` runs on.
    fn node_index_of(&self, pod: &Pod) -> Result<usize> {
        self.nodes
            .iter()
            .position(|n| n.name() == pod.node())
            .map(|i| i + 1)
            .ok_or_else(|| Error::Invalid(format!("no node {}", pod.node())))
    }

    /// Waits until the ztunnel of `pod`'s node, the one that enforces its
    /// inbound policy, has an admin `path` that satisfies `check`. Policies
    /// reach only the ztunnels whose workloads they apply to (docs/design.md
    /// §6), so this, not [`Cluster::wait_for_ztunnels`], is how to wait for
    /// a selector or namespace policy.
    pub fn wait_for_ztunnel_of(
        &self,
        pod: &Pod,
        what: &str,
        path: &str,
        limit: Duration,
        mut check: impl FnMut(&serde_json::Value) -> bool,
    ) -> Result<()> {
        if !self.ztunnel {
            return Err(Error::Invalid("this cluster runs no ztunnel".into()));
        }
        let index = self.node_index_of(pod)?;
        process::wait_until(
            &format!("the ztunnel of {}: {what}", pod.node()),
            limit,
            || self.ztunnel_admin(index, path).is_ok_and(|v| check(&v)),
        )
    }

    /// Waits until `pod` is fully in the mesh: its redirect rules are in
    /// place, ztunnel listens inside it (15001, 15006, 15008), its node's
    /// ztunnel holds its certificate, and every ztunnel knows it as an HBONE
    /// workload (so no client treats it as outside the mesh).
    pub fn wait_in_mesh(&self, pod: &Pod, limit: Duration) -> Result<()> {
        self.wait_redirected(pod, true, limit)?;
        if !self.ztunnel {
            return Ok(());
        }
        process::wait_until(
            &format!("ztunnel listening in pod {}", pod.key()),
            limit,
            || {
                pod.netns()
                    .listening_tcp_ports()
                    .is_ok_and(|p| [15001, 15006, 15008].iter().all(|port| p.contains(port)))
            },
        )?;
        let uid = pod.uid().to_string();
        self.wait_for_ztunnels(
            &format!("{} is an HBONE workload", pod.key()),
            "/workloads",
            limit,
            |v| {
                v["workloads"].as_array().is_some_and(|ws| {
                    ws.iter().any(|w| {
                        w["uid"] == uid.as_str() && w["protocol"] == "TUNNEL_PROTOCOL_HBONE"
                    })
                })
            },
        )?;
        let identity = format!(
            "spiffe://cluster.local/ns/{}/sa/{}",
            pod.namespace(),
            pod.service_account()
        );
        let index = self.node_index_of(pod)?;
        process::wait_until(
            &format!("{} holds a certificate for {identity}", pod.node()),
            limit,
            || {
                self.ztunnel_admin(index, "/certs").is_ok_and(|v| {
                    v["certificates"].as_array().is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c["identity"] == identity.as_str() && c["state"] == "valid")
                    })
                })
            },
        )
    }

    /// Waits until every ztunnel knows `pod` (mesh or not) by its IP.
    pub fn wait_known(&self, pod: &Pod, limit: Duration) -> Result<()> {
        let ip = pod.ip().to_string();
        self.wait_for_ztunnels(
            &format!("{} is known", pod.key()),
            "/workloads",
            limit,
            |v| {
                v["workloads"].as_array().is_some_and(|ws| {
                    ws.iter().any(|w| {
                        w["addresses"]
                            .as_array()
                            .is_some_and(|a| a.iter().any(|x| x == ip.as_str()))
                    })
                })
            },
        )
    }

    /// Starts a packet capture of everything nodes send each other over
    /// the underlay (see [`Capture`]); files `<run>/<name>-<node>.pcap`.
    pub fn capture(&self, name: &str) -> Result<Capture> {
        let ports: Vec<String> = self.nodes.iter().map(|n| n.name().to_string()).collect();
        Capture::start(&self.underlay, self.dir(), name, &ports)
    }

    /// The underlay's namespace.
    pub fn underlay(&self) -> &Netns {
        &self.underlay
    }

    /// Node `index`'s agent coverage report, and whether it reports no drift.
    pub fn coverage(&self, index: usize) -> Result<(serde_json::Value, bool)> {
        let node = self.node(index)?;
        node_agent::coverage(&self.bins.require(binaries::NODE_AGENT)?, node.layout())
    }
}
