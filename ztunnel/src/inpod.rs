//! The node agent handoff (docs/design.md §7), ztunnel's side: connect to the
//! agent's SEQPACKET socket, say hello, take the snapshot of enrolled pods
//! (each with its network namespace fd), drop pods that were not in it, then
//! follow adds and deletes. Every agent message is acknowledged, with an
//! error text if ztunnel could not act on it.
//!
//! A pod's listeners are the sockets the agent made in the pod and sent with
//! its `AddPod`; ztunnel serves them while the pod is enrolled, keeps a copy
//! of each to give back when a restarted agent sends `KeepPod`, and, when
//! the pod is removed, stops accepting while its open connections drain.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use weft_api::handoff_wire;
use weft_api::nodeagent::{
    Ack, AddPod, Hello, Listener, ZtunnelMessage, agent_message, ztunnel_message,
};
use weft_hbone::SpiffeId;
use weft_runtime::backoff::Backoff;

use crate::pod_network::NetnsNetwork;
use crate::proxy::{Pod, Proxy, serve_pod};
use crate::socket::Netns;

struct Enrolled {
    pod: Arc<Pod>,
    stop: CancellationToken,
    /// Copies of the pod's listening sockets, for the agent's `KeepPod`.
    listeners: Vec<(Listener, OwnedFd)>,
}

/// The pods handed over by the node agent, and their listeners.
#[derive(Clone)]
pub struct Pods {
    proxy: Arc<Proxy>,
    /// The node's network namespace, where ztunnel runs and returns to after
    /// making a socket in a pod's.
    home: Arc<Netns>,
    trust_domain: String,
    enrolled: Arc<Mutex<HashMap<String, Enrolled>>>,
    /// Parent of every pod's stop token: cancelling it closes all listeners.
    drain: CancellationToken,
    snapshot_done: Arc<tokio::sync::watch::Sender<bool>>,
    /// A node agent is connected and has replayed its snapshot, so it holds
    /// a copy of every listener this ztunnel serves.
    agent_holds: Arc<tokio::sync::watch::Sender<bool>>,
    /// This ztunnel is stopping: the agent is told (a reconnect with
    /// `Hello.leaving`), so it does not count on this ztunnel's copies.
    leaving: Arc<tokio::sync::watch::Sender<bool>>,
    /// This process in every `Hello` (random), so the agent knows a
    /// leaving `Hello` comes from the ztunnel of an earlier connection.
    instance: Arc<str>,
}

impl Pods {
    pub fn new(
        proxy: Arc<Proxy>,
        home: Netns,
        trust_domain: String,
        drain: CancellationToken,
    ) -> Self {
        Pods {
            proxy,
            home: Arc::new(home),
            trust_domain,
            enrolled: Arc::default(),
            drain,
            snapshot_done: Arc::new(tokio::sync::watch::channel(false).0),
            agent_holds: Arc::new(tokio::sync::watch::channel(false).0),
            leaving: Arc::new(tokio::sync::watch::channel(false).0),
            instance: format!("{:016x}", rand::random::<u64>()).into(),
        }
    }

    /// Starts serving a pod; replaces it if already known (a re-created
    /// sandbox brings a new netns). `fds`: the pod's netns, then one
    /// listening socket per entry of `add.listeners`.
    pub fn add(&self, add: AddPod, fds: Vec<OwnedFd>) -> Result<(), String> {
        let info = add.pod.ok_or("AddPod without pod")?;
        let mut fds = fds.into_iter();
        let netns = fds.next().ok_or("AddPod without a network namespace fd")?;
        if add.listeners.is_empty() {
            return Err(format!(
                "AddPod without listening sockets: the node agent speaks an older handoff than version {}; upgrade it",
                handoff_wire::PROTOCOL_VERSION
            ));
        }
        let sockets: Vec<OwnedFd> = fds.collect();
        if sockets.len() != add.listeners.len() {
            return Err(format!(
                "AddPod describes {} listeners but carries {} sockets",
                add.listeners.len(),
                sockets.len()
            ));
        }
        let mut served = HashMap::new();
        let mut copies = Vec::new();
        for (listener, fd) in add.listeners.iter().zip(sockets) {
            let port = u16::try_from(listener.port)
                .map_err(|_| format!("listener port {} out of range", listener.port))?;
            copies.push((
                *listener,
                fd.try_clone()
                    .map_err(|e| format!("duplicating a listener: {e}"))?,
            ));
            served.insert((port, listener.ipv6), fd);
        }
        let identity = SpiffeId::new(&self.trust_domain, &info.namespace, &info.service_account)
            .map_err(|e| format!("pod {}/{}: {e}", info.namespace, info.name))?;
        let addresses = add
            .addresses
            .iter()
            .map(|a| {
                a.parse::<IpAddr>()
                    .map_err(|_| format!("address {a:?} is not an IP"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // The fd must be a network namespace: anything else would put the
        // pod's listeners in the wrong place.
        let netns = Netns::from_fd(netns, format!("pod {}/{}", info.namespace, info.name))
            .map_err(|e| e.to_string())?;
        let pod = Arc::new(Pod {
            uid: info.uid.clone(),
            namespace: info.namespace,
            name: info.name,
            service_account: info.service_account,
            addresses,
            identity,
            network: Box::new(NetnsNetwork {
                netns,
                home: self.home.clone(),
                listeners: Mutex::new(served),
            }),
        });
        self.remove(&pod.uid);
        let stop = self.drain.child_token();
        serve_pod(&self.proxy, &pod, stop.clone())
            .map_err(|e| format!("listening in {}: {e}", pod.workload_name()))?;
        self.proxy.certs.want(&pod.identity);
        info!(pod = %pod.workload_name(), uid = %pod.uid, addresses = ?pod.addresses, "pod enrolled");
        self.enrolled.lock().insert(
            pod.uid.clone(),
            Enrolled {
                pod,
                stop,
                listeners: copies,
            },
        );
        Ok(())
    }

    /// Copies of a pod's listening sockets, to give back to the agent.
    fn listener_copies(&self, uid: &str) -> Result<(Vec<Listener>, Vec<OwnedFd>), String> {
        let enrolled = self.enrolled.lock();
        let pod = enrolled
            .get(uid)
            .ok_or_else(|| format!("KeepPod for unknown pod {uid}"))?;
        let mut described = Vec::new();
        let mut fds = Vec::new();
        for (listener, fd) in &pod.listeners {
            described.push(*listener);
            fds.push(
                fd.try_clone()
                    .map_err(|e| format!("duplicating a listener: {e}"))?,
            );
        }
        Ok((described, fds))
    }

    /// Stops serving a pod: it stops accepting and closes its copies of the
    /// pod's listeners (the agent closes its own when the pod leaves the
    /// mesh), and its connections drain.
    pub fn remove(&self, uid: &str) -> bool {
        let Some(enrolled) = self.enrolled.lock().remove(uid) else {
            return false;
        };
        enrolled.stop.cancel();
        self.proxy.certs.release(&enrolled.pod.identity);
        info!(pod = %enrolled.pod.workload_name(), uid, "pod removed");
        true
    }

    /// After a snapshot: drop every pod the agent did not mention.
    fn retain(&self, keep: &HashSet<String>) {
        let stale: Vec<String> = self
            .enrolled
            .lock()
            .keys()
            .filter(|uid| !keep.contains(*uid))
            .cloned()
            .collect();
        for uid in stale {
            self.remove(&uid);
        }
    }

    pub fn list(&self) -> Vec<Arc<Pod>> {
        let mut pods: Vec<_> = self
            .enrolled
            .lock()
            .values()
            .map(|e| e.pod.clone())
            .collect();
        pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        pods
    }

    pub fn uids(&self) -> Vec<String> {
        self.enrolled.lock().keys().cloned().collect()
    }

    /// True once a snapshot from the agent has been applied.
    pub fn snapshot_received(&self) -> bool {
        *self.snapshot_done.borrow()
    }

    /// Whether exiting now would close the last copy of some pod's
    /// listeners: this ztunnel serves pods and no node agent holds them.
    pub fn sole_holder(&self) -> bool {
        !*self.agent_holds.borrow() && !self.enrolled.lock().is_empty()
    }

    /// This ztunnel is stopping: tells the node agent, which then waits for
    /// another ztunnel to hold the pods' listeners before it exits itself
    /// (an agent restarted at the same moment would otherwise count on this
    /// ztunnel's copies, while this one counts on the agent's).
    pub fn leave(&self) {
        self.leaving.send_replace(true);
    }

    /// Resolves once exiting closes no pod's last listener. A node agent
    /// restarted together with this ztunnel's rolling update could not
    /// make the pods' sockets while this ztunnel held them; it takes them
    /// back when this ztunnel reconnects, and closing them before that
    /// would refuse the pods' connections until it made new ones.
    pub async fn handed_back(&self) {
        let mut holds = self.agent_holds.subscribe();
        while self.sole_holder() {
            if holds.changed().await.is_err() {
                return;
            }
        }
    }
}

/// Follows the node agent at `socket` until `shutdown`, reconnecting with
/// backoff. Pods stay served while the agent is away.
pub async fn follow_agent(socket: PathBuf, pods: Pods, shutdown: CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let started = std::time::Instant::now();
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = session(&socket, &pods) => r,
        };
        pods.agent_holds.send_replace(false);
        if let Ok(Ended::ToLeave) = result {
            info!("reconnecting to the node agent to say this ztunnel is stopping");
            continue;
        }
        // A session that lasted was a success: the next failure starts over
        // from the shortest delay (it used to stay at the longest for ever).
        if started.elapsed() > Duration::from_secs(30) {
            backoff.reset();
        }
        let wait = backoff.next_delay();
        match result {
            Ok(_) => info!(retry_in = ?wait, "node agent closed the handoff; reconnecting"),
            Err(e) => {
                warn!(socket = %socket.display(), error = %e, retry_in = ?wait, "node agent handoff failed; retrying")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Why a session with the node agent ended without an error.
enum Ended {
    /// The agent closed it.
    ByAgent,
    /// This ztunnel started stopping; it reconnects to say so.
    ToLeave,
}

async fn session(socket: &std::path::Path, pods: &Pods) -> std::io::Result<Ended> {
    let fd = handoff_wire::connect(socket)?;
    handoff_wire::set_nonblocking(&fd)?;
    let fd = weft_netns::fd::register(fd, Interest::READABLE | Interest::WRITABLE)?;
    let mut leaving = pods.leaving.subscribe();
    let left = *leaving.borrow_and_update();
    send(
        &fd,
        ztunnel_message::Kind::Hello(Hello {
            version: handoff_wire::PROTOCOL_VERSION,
            known_pod_uids: pods.uids(),
            leaving: left,
            instance: pods.instance.to_string(),
        }),
        &[],
    )
    .await?;
    info!(leaving = left, "connected to the node agent");
    let mut in_snapshot = Some(HashSet::new());
    loop {
        let received = tokio::select! {
            r = fd.async_io(Interest::READABLE, |fd| {
                handoff_wire::recv::<weft_api::nodeagent::AgentMessage>(fd.as_fd())
            }) => r?,
            // Between messages, so no ack is cut off.
            Ok(()) = leaving.changed(), if !left => return Ok(Ended::ToLeave),
        };
        let Some((message, fds)) = received else {
            return Ok(Ended::ByAgent);
        };
        // What the ack carries back: the listeners of a kept pod.
        let mut returned = (Vec::new(), Vec::new());
        let result = match message.kind {
            Some(agent_message::Kind::Add(add)) => {
                let uid = add.pod.as_ref().map(|p| p.uid.clone()).unwrap_or_default();
                if let Some(seen) = in_snapshot.as_mut() {
                    seen.insert(uid);
                }
                pods.add(add, fds)
            }
            Some(agent_message::Kind::Keep(keep)) => {
                if let Some(seen) = in_snapshot.as_mut() {
                    seen.insert(keep.uid.clone());
                }
                pods.listener_copies(&keep.uid)
                    .map(|copies| returned = copies)
            }
            Some(agent_message::Kind::Delete(delete)) => {
                pods.remove(&delete.uid);
                Ok(())
            }
            Some(agent_message::Kind::SnapshotSent(_)) => {
                if let Some(seen) = in_snapshot.take() {
                    pods.retain(&seen);
                }
                pods.snapshot_done.send_replace(true);
                pods.agent_holds.send_replace(true);
                info!(
                    pods = pods.uids().len(),
                    "snapshot from the node agent applied"
                );
                Ok(())
            }
            None => Err("empty message".into()),
        };
        let error = result.err().unwrap_or_default();
        if !error.is_empty() {
            warn!(%error, "could not act on a node agent message");
        }
        let (listeners, fds) = returned;
        let ack = Ack { error, listeners };
        send(&fd, ztunnel_message::Kind::Ack(ack), &fds).await?;
    }
}

async fn send(
    fd: &AsyncFd<OwnedFd>,
    kind: ztunnel_message::Kind,
    fds: &[OwnedFd],
) -> std::io::Result<()> {
    let msg = ZtunnelMessage { kind: Some(kind) };
    let fds: Vec<_> = fds.iter().map(|fd| fd.as_fd()).collect();
    fd.async_io(Interest::WRITABLE, |sock| {
        handoff_wire::send(sock.as_fd(), &msg, &fds)
    })
    .await
}
