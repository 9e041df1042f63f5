//! A node: a namespace on the underlay with its pod bridge, its CNI
//! directories, its node agent and (when built) its ztunnel.

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::addresses;
use crate::binaries::{self, Binaries};
use crate::cni;
use crate::components::controller::Controller;
use crate::components::node_agent::{self, AgentLaunch, NodeLayout};
use crate::components::ztunnel::{self, ZtunnelLaunch};
use crate::error::{Error, Result};
use crate::manifests::Manifests;
use crate::netns::Netns;
use crate::process::ManagedProcess;

/// One node of the cluster.
#[derive(Debug)]
pub struct Node {
    index: usize,
    name: String,
    netns: Netns,
    layout: NodeLayout,
    agent: Option<ManagedProcess>,
    ztunnel: Option<ManagedProcess>,
    ztunnel_instances: u32,
}

impl Node {
    pub(crate) fn new(index: usize, netns: Netns, layout: NodeLayout) -> Result<Node> {
        layout.create()?;
        // The node's network provider: its primary conflist.
        let conf = cni::primary_conflist(
            &addresses::pod_cidr(index),
            addresses::pod_gateway(index),
            &layout.ipam_dir(),
        );
        let path = layout.cni_conf_dir().join(cni::PRIMARY_CONFLIST);
        let text = serde_json::to_string_pretty(&conf).map_err(|e| Error::decode("conflist", e))?;
        std::fs::write(&path, text).map_err(Error::io(&path))?;
        Ok(Node {
            index,
            name: addresses::node_name(index),
            netns,
            layout,
            agent: None,
            ztunnel: None,
            ztunnel_instances: 0,
        })
    }

    /// 1-based index.
    pub fn index(&self) -> usize {
        self.index
    }

    /// `node-<index>`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its namespace.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// Its files.
    pub fn layout(&self) -> &NodeLayout {
        &self.layout
    }

    /// Its underlay address.
    pub fn ip(&self) -> Ipv4Addr {
        addresses::node_ip(self.index)
    }

    /// Its pod CIDR.
    pub fn pod_cidr(&self) -> String {
        addresses::pod_cidr(self.index)
    }

    /// Its pod bridge address (pods' gateway, probe source).
    pub fn gateway(&self) -> Ipv4Addr {
        addresses::pod_gateway(self.index)
    }

    /// The node agent, while running.
    pub fn agent(&mut self) -> Option<&mut ManagedProcess> {
        self.agent.as_mut()
    }

    /// ztunnel, while running.
    pub fn ztunnel(&mut self) -> Option<&mut ManagedProcess> {
        self.ztunnel.as_mut()
    }

    /// True when ztunnel runs here.
    pub fn has_ztunnel(&self) -> bool {
        self.ztunnel.is_some()
    }

    /// Starts the node agent and waits until it has installed the plugin.
    pub(crate) fn start_agent(
        &mut self,
        bins: &Binaries,
        manifests: &Manifests,
        backend: &str,
        local_bypass: bool,
    ) -> Result<&ManagedProcess> {
        let binary = bins.require(binaries::NODE_AGENT)?;
        let plugin = bins.require(binaries::CNI_PLUGIN)?;
        let cmd = node_agent::command(
            &self.netns,
            &AgentLaunch {
                node: &self.name,
                layout: &self.layout,
                manifests: manifests.dir(),
                binary: &binary,
                plugin: &plugin,
                probe_source: self.gateway(),
                backend,
                local_bypass,
            },
        );
        let mut process = ManagedProcess::spawn(
            &format!("{}/node-agent", self.name),
            cmd,
            &self.layout.agent_log(),
        )?;
        node_agent::wait_ready(&mut process, &self.layout)?;
        Ok(self.agent.insert(process))
    }

    /// Stops the node agent.
    pub(crate) fn stop_agent(&mut self) {
        if let Some(mut p) = self.agent.take() {
            p.stop(Duration::from_secs(3));
        }
    }

    /// Starts ztunnel and waits until it is ready. The old one, if any, is
    /// left running: that is how an upgrade overlaps two ztunnels.
    pub(crate) fn start_ztunnel(
        &mut self,
        bins: &Binaries,
        controller: &Controller,
    ) -> Result<ManagedProcess> {
        let binary = bins.require(binaries::ZTUNNEL)?;
        let token = controller.token_file(&self.name);
        let root = controller.root_cert();
        let url = controller.url();
        let instance = self.ztunnel_instances;
        self.ztunnel_instances += 1;
        let cmd = ztunnel::command(
            &self.netns,
            &ZtunnelLaunch {
                node: &self.name,
                layout: &self.layout,
                binary: &binary,
                instance,
                controller_url: &url,
                controller_ca: &root,
                token_file: &token,
            },
        );
        let name = match instance {
            0 => format!("{}/ztunnel", self.name),
            n => format!("{}/ztunnel-{n}", self.name),
        };
        let mut process = ManagedProcess::spawn(&name, cmd, &self.layout.ztunnel_log(instance))?;
        ztunnel::wait_ready(&mut process, &self.layout, instance)?;
        Ok(process)
    }

    /// Makes `process` this node's ztunnel, returning the previous one.
    pub(crate) fn set_ztunnel(
        &mut self,
        process: Option<ManagedProcess>,
    ) -> Option<ManagedProcess> {
        std::mem::replace(&mut self.ztunnel, process)
    }

    /// Stops every process of the node (ztunnel first, then the agent).
    pub(crate) fn stop_all(&mut self) {
        if let Some(mut z) = self.ztunnel.take() {
            z.stop(Duration::from_secs(3));
        }
        self.stop_agent();
    }

    /// Leaves its processes running when the harness exits (`--keep`).
    pub(crate) fn detach_all(&mut self) {
        for p in [self.ztunnel.take(), self.agent.take()]
            .into_iter()
            .flatten()
        {
            p.detach();
        }
    }

    /// Log tails of its processes, for failure reports.
    pub(crate) fn log_tails(&self, lines: usize) -> Vec<(String, String)> {
        [&self.agent, &self.ztunnel]
            .into_iter()
            .flatten()
            .map(|p| (p.name().to_string(), p.log_tail(lines)))
            .collect()
    }
}
