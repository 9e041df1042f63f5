//! Disruptions: the controller stopped and started, ztunnel restarted.

use std::time::Duration;

use super::{Cluster, record};
use crate::error::{Error, Result};

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
    /// surge does: the new one starts beside the old one (binding the same
    /// listeners with SO_REUSEPORT) and becomes ready, then the old one gets
    /// SIGTERM and drains for up to `drain`.
    pub fn restart_ztunnel(&mut self, index: usize, drain: Duration) -> Result<()> {
        if !self.ztunnel {
            return Err(Error::Invalid("this cluster runs no ztunnel".into()));
        }
        let bins = self.bins.clone();
        let name = self.node(index)?.name().to_string();
        self.say(&format!(
            "{name}: starting a new ztunnel beside the old one"
        ));
        let node = index
            .checked_sub(1)
            .and_then(|i| self.nodes.get_mut(i))
            .ok_or_else(|| Error::Invalid(format!("no node {index}")))?;
        let new = node.start_ztunnel(&bins, &self.controller)?;
        record(&mut self.state, &new)?;
        let node = self.node_mut(index)?;
        if let Some(mut old) = node.set_ztunnel(Some(new)) {
            (self.config.progress)(&format!("{name}: old ztunnel draining"));
            old.stop(drain);
        }
        Ok(())
    }
}
