//! Disruptions: the controller stopped and started, ztunnel and the node
//! agent restarted.

use std::time::Duration;

use super::{Cluster, record};
use crate::error::{Error, Result};
use crate::node::Node;

impl Cluster {
    /// Stops the controller (the data plane keeps its last config).
    pub fn stop_controller(&mut self) {
        self.say("controller: stopping");
        self.controller.stop();
    }

    /// Starts the controller again (same root CA, same tokens).
    pub fn start_controller(&mut self) -> Result<()> {
        self.say("controller: starting");
        let p = self.controller.start()?;
        record(&mut self.state, p)
    }

    /// Restarts node `index`'s ztunnel the way a DaemonSet rollout with
    /// surge does: the new one starts beside the old one (the node agent
    /// sends it the pods' listeners, which both then accept from) and
    /// becomes ready, then the old one gets SIGTERM and drains for up to
    /// `drain`.
    pub fn restart_ztunnel(&mut self, index: usize, drain: Duration) -> Result<()> {
        if !self.ztunnel {
            return Err(Error::Invalid("this cluster runs no ztunnel".into()));
        }
        let bins = self.bins.clone();
        let name = self.node(index)?.name().to_string();
        self.say(&format!(
            "{name}: starting a new ztunnel beside the old one"
        ));
        let node = nth(&mut self.nodes, index)?;
        let new = node.start_ztunnel(&bins, &self.controller)?;
        record(&mut self.state, &new)?;
        let node = self.node_mut(index)?;
        if let Some(mut old) = node.set_ztunnel(Some(new)) {
            (self.config.progress)(&format!("{name}: old ztunnel draining"));
            old.stop(drain);
        }
        Ok(())
    }

    /// Restarts node `index`'s ztunnel without an overlap: the old one
    /// drains (up to `drain`) and exits, then the new one starts. Meanwhile
    /// nothing accepts; new connections wait in the pods' listeners, which
    /// the node agent holds.
    pub fn restart_ztunnel_without_overlap(&mut self, index: usize, drain: Duration) -> Result<()> {
        if !self.ztunnel {
            return Err(Error::Invalid("this cluster runs no ztunnel".into()));
        }
        let name = self.node(index)?.name().to_string();
        self.say(&format!(
            "{name}: stopping ztunnel, then starting a new one"
        ));
        if let Some(mut old) = self.node_mut(index)?.set_ztunnel(None) {
            old.stop(drain);
        }
        let bins = self.bins.clone();
        let node = nth(&mut self.nodes, index)?;
        let new = node.start_ztunnel(&bins, &self.controller)?;
        record(&mut self.state, &new)?;
        self.node_mut(index)?.set_ztunnel(Some(new));
        Ok(())
    }

    /// Restarts node `index`'s node agent (SIGTERM: a restart keeps the
    /// plugin and the pods' rules), as a DaemonSet rollout does; ztunnel
    /// keeps running and reconnects to the new one.
    pub fn restart_node_agent(&mut self, index: usize) -> Result<()> {
        let name = self.node(index)?.name().to_string();
        self.say(&format!("{name}: restarting weft-node-agent"));
        let (bins, backend) = (self.bins.clone(), self.config.backend.clone());
        let local_bypass = self.config.local_bypass;
        let node = nth(&mut self.nodes, index)?;
        node.stop_agent();
        let p = node.start_agent(&bins, &self.manifests, &backend, local_bypass)?;
        record(&mut self.state, p)
    }
}

/// Node `index` (from 1) of `nodes`: the lookup for a method that also
/// borrows other parts of the cluster.
fn nth(nodes: &mut [Node], index: usize) -> Result<&mut Node> {
    index
        .checked_sub(1)
        .and_then(|i| nodes.get_mut(i))
        .ok_or_else(|| Error::Invalid(format!("no node {index}")))
}
