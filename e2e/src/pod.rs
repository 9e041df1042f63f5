//! Pods: what a test asks for ([`PodSpec`]), and the handle it gets back
//! ([`Pod`]) to run commands and the sample workload's client inside the
//! pod's namespace and to look at its redirect rules.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;

use crate::app::protocol::EchoReply;
use crate::error::{Error, Result};
use crate::exec;
use crate::netns::Netns;

/// The echo server's TCP port in pods that run it.
pub const ECHO_TCP_PORT: u16 = 9000;
/// The echo server's HTTP port in pods that run it.
pub const ECHO_HTTP_PORT: u16 = 8080;

/// A pod to create.
#[derive(Clone, Debug)]
pub struct PodSpec {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The node (1-based index).
    pub node: usize,
    /// `spec.serviceAccountName` (default `default`).
    pub service_account: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Run the sample echo server (TCP [`ECHO_TCP_PORT`], HTTP
    /// [`ECHO_HTTP_PORT`]) as the pod's container.
    pub echo_server: bool,
}

impl PodSpec {
    /// A pod `namespace/name` on node 1, service account `default`, no
    /// labels, no server.
    pub fn new(namespace: &str, name: &str) -> PodSpec {
        PodSpec {
            namespace: namespace.into(),
            name: name.into(),
            node: 1,
            service_account: "default".into(),
            labels: BTreeMap::new(),
            echo_server: false,
        }
    }

    /// On node `index` (1-based).
    pub fn on_node(mut self, index: usize) -> PodSpec {
        self.node = index;
        self
    }

    /// Runs as service account `sa`.
    pub fn service_account(mut self, sa: &str) -> PodSpec {
        self.service_account = sa.into();
        self
    }

    /// Adds a label.
    pub fn label(mut self, key: &str, value: &str) -> PodSpec {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Runs the sample echo server.
    pub fn echo_server(mut self) -> PodSpec {
        self.echo_server = true;
        self
    }
}

#[derive(Debug)]
pub(crate) struct PodInner {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub node: String,
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
    pub ip: Ipv4Addr,
    pub netns: Netns,
    pub app: PathBuf,
    pub cni_result: String,
    pub echo_server: bool,
}

/// A running pod. Cheap to clone; the cluster owns the pod itself.
#[derive(Clone, Debug)]
pub struct Pod {
    pub(crate) inner: Arc<PodInner>,
}

impl Pod {
    /// Kubernetes namespace.
    pub fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    /// Name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.inner.namespace, self.inner.name)
    }

    /// `metadata.uid`.
    pub fn uid(&self) -> &str {
        &self.inner.uid
    }

    /// Its node's name.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// Its service account.
    pub fn service_account(&self) -> &str {
        &self.inner.service_account
    }

    /// Its labels at creation.
    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.inner.labels
    }

    /// Its IP (from the CNI result).
    pub fn ip(&self) -> Ipv4Addr {
        self.inner.ip
    }

    /// Its network namespace.
    pub fn netns(&self) -> &Netns {
        &self.inner.netns
    }

    /// The CNI chain's final result for it.
    pub fn cni_result(&self) -> &str {
        &self.inner.cni_result
    }

    /// Its echo server's TCP address (if it runs one).
    pub fn echo_tcp(&self) -> SocketAddr {
        SocketAddr::from((self.inner.ip, ECHO_TCP_PORT))
    }

    /// Its echo server's HTTP address (if it runs one).
    pub fn echo_http(&self) -> SocketAddr {
        SocketAddr::from((self.inner.ip, ECHO_HTTP_PORT))
    }

    /// A command run inside the pod.
    pub fn command(&self, program: &str) -> Command {
        self.inner.netns.command(program)
    }

    /// Runs `program args...` inside the pod; returns its output whatever
    /// the exit status.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<Output> {
        exec::output(self.command(program).args(args))
    }

    /// A command running the sample workload (`weft-e2e-app`) inside the pod.
    pub fn app_command(&self) -> Command {
        self.inner.netns.command(&self.inner.app)
    }

    /// Connects to `addr` from inside the pod, sends `message`, and returns
    /// the echo server's reply (who it is, and which caller address it saw).
    pub fn tcp_echo(&self, addr: SocketAddr, message: &str) -> Result<EchoReply> {
        let mut cmd = self.app_command();
        cmd.args(["tcp", &addr.to_string(), "--message", message]);
        let out = exec::run(&mut cmd)?;
        serde_json::from_slice(&out.stdout).map_err(|e| {
            Error::decode(
                format!("the echo reply from {addr}"),
                format!("{e}: {}", String::from_utf8_lossy(&out.stdout)),
            )
        })
    }

    /// Like [`Pod::tcp_echo`], but returns the client's error text instead of
    /// failing when the connection fails (refused, reset, timed out).
    pub fn tcp_echo_result(
        &self,
        addr: SocketAddr,
        message: &str,
    ) -> Result<std::result::Result<EchoReply, String>> {
        match self.tcp_echo(addr, message) {
            Ok(reply) => Ok(Ok(reply)),
            Err(Error::Command { stderr, .. }) => Ok(Err(stderr)),
            Err(e) => Err(e),
        }
    }

    /// An HTTP request from inside the pod: `(status, body)`.
    pub fn http(&self, method: &str, url: &str, headers: &[(&str, &str)]) -> Result<(u16, String)> {
        let mut cmd = self.app_command();
        cmd.args(["http", url, "--method", method]);
        for (k, v) in headers {
            cmd.args(["--header", &format!("{k}: {v}")]);
        }
        let out = exec::run(&mut cmd)?;
        let text = String::from_utf8_lossy(&out.stdout);
        let (status, body) = text.split_once('\n').unwrap_or((&text, ""));
        let status = status
            .trim()
            .strip_prefix("HTTP ")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Error::decode("the HTTP client's output", text.to_string()))?;
        Ok((status, body.to_string()))
    }

    /// The redirect rules found inside the pod.
    pub fn redirect_rules(&self) -> Result<RedirectRules> {
        let ns = &self.inner.netns;
        let nft = exec::output(ns.command("nft").args(["list", "table", "inet", "weft"]))?;
        let iptables = exec::output(&mut ns.command("iptables-save"))?;
        let rules = exec::output(ns.command("ip").args(["rule", "show"]))?;
        Ok(RedirectRules {
            nftables: nft.status.success(),
            iptables: String::from_utf8_lossy(&iptables.stdout).contains("WEFT_"),
            policy_route: String::from_utf8_lossy(&rules.stdout).contains("0x111"),
            text: format!(
                "{}{}",
                String::from_utf8_lossy(&nft.stdout),
                String::from_utf8_lossy(&iptables.stdout)
            ),
        })
    }
}

/// What redirection a pod's namespace holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedirectRules {
    /// nftables table `inet weft`.
    pub nftables: bool,
    /// iptables `WEFT_*` chains.
    pub iptables: bool,
    /// The `fwmark 0x111` rule of source preservation.
    pub policy_route: bool,
    /// The rules as the tools print them.
    pub text: String,
}

impl RedirectRules {
    /// The pod's traffic is captured.
    pub fn present(&self) -> bool {
        (self.nftables || self.iptables) && self.policy_route
    }

    /// Nothing of weft is left in the pod.
    pub fn absent(&self) -> bool {
        !self.nftables && !self.iptables && !self.policy_route
    }
}
