//! The agent's side of the ztunnel handoff (docs/design.md §7): a SEQPACKET server
//! that gives each connected ztunnel the node's enrolled pods.
//!
//! [`HandoffHub`] is the source of truth of what ztunnel should have: the
//! agent calls [`HandoffHub::add`] / [`HandoffHub::delete`] as pods enter and
//! leave the mesh. Each ztunnel connection, after its `Hello`, takes the
//! current snapshot and a queue of later changes in one step under the hub's
//! lock (so nothing falls between the two), replays the snapshot (`AddPod`
//! with the netns fd, or `KeepPod` for pods ztunnel says it still has), sends
//! `SnapshotSent`, then streams `AddPod`/`DeletePod`. Every message waits for
//! ztunnel's `Ack` before the next is sent. A reconnecting ztunnel starts
//! over and gets the snapshot again; two ztunnels (an upgrade) each get
//! everything. An `AddPod` for a uid ztunnel already has replaces it (the
//! pod's sandbox, and so its netns, was re-created).

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use weft_api::handoff_wire;
use weft_api::nodeagent::{
    AddPod, AgentMessage, DeletePod, KeepPod, PodIdentity, SnapshotSent, ZtunnelMessage,
    agent_message, ztunnel_message,
};
use weft_cni::report::AckStatus;
use weft_netns::fd::register;

use crate::netns::NetNs;

/// Default path of the handoff socket on the node.
pub const DEFAULT_HANDOFF_SOCKET: &str = "/var/run/weft/ztunnel.sock";

/// An enrolled pod as ztunnel needs it.
#[derive(Debug)]
pub struct HandoffPod {
    /// Who it is.
    pub identity: PodIdentity,
    /// Its IPs, as text.
    pub addresses: Vec<String>,
    /// Its network namespace (sent as SCM_RIGHTS with every `AddPod`).
    pub netns: NetNs,
}

/// A change after the snapshot.
#[derive(Clone, Debug)]
enum Change {
    Add(Arc<HandoffPod>),
    Delete(String),
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    /// Socket error.
    #[error("handoff socket: {0}")]
    Io(#[from] io::Error),
    /// ztunnel broke the protocol.
    #[error("handoff protocol: {0}")]
    Protocol(String),
    /// ztunnel did not ack in time.
    #[error("ztunnel did not acknowledge within {0:?}")]
    AckTimeout(Duration),
}

#[derive(Default)]
struct HubState {
    pods: BTreeMap<String, Arc<HandoffPod>>,
    subscribers: Vec<(u64, mpsc::UnboundedSender<Change>)>,
    next_id: u64,
    acks: HashMap<String, AckStatus>,
}

/// The enrolled pods and the connected ztunnels.
#[derive(Default)]
pub struct HandoffHub {
    state: Mutex<HubState>,
}

impl HandoffHub {
    /// An empty hub.
    pub fn new() -> Arc<HandoffHub> {
        Arc::new(HandoffHub::default())
    }

    /// Adds (or replaces) a pod and tells every connected ztunnel.
    pub fn add(&self, pod: HandoffPod) {
        let pod = Arc::new(pod);
        let mut st = self.state.lock();
        st.pods.insert(pod.identity.uid.clone(), pod.clone());
        st.acks.insert(pod.identity.uid.clone(), AckStatus::Pending);
        st.subscribers
            .retain(|(_, tx)| tx.send(Change::Add(pod.clone())).is_ok());
    }

    /// Removes a pod and tells every connected ztunnel. Unknown uids are
    /// ignored.
    pub fn delete(&self, uid: &str) {
        let mut st = self.state.lock();
        st.acks.remove(uid);
        if st.pods.remove(uid).is_some() {
            st.subscribers
                .retain(|(_, tx)| tx.send(Change::Delete(uid.to_string())).is_ok());
        }
    }

    /// The uids of the pods ztunnel should have.
    pub fn pod_uids(&self) -> Vec<String> {
        self.state.lock().pods.keys().cloned().collect()
    }

    /// What ztunnel last answered for `uid`.
    pub fn ack_status(&self, uid: &str) -> Option<AckStatus> {
        self.state.lock().acks.get(uid).cloned()
    }

    /// How many ztunnels are connected (past their `Hello`).
    pub fn connected(&self) -> usize {
        self.state
            .lock()
            .subscribers
            .iter()
            .filter(|(_, tx)| !tx.is_closed())
            .count()
    }

    fn subscribe(&self) -> (Vec<Arc<HandoffPod>>, Subscription<'_>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut st = self.state.lock();
        let id = st.next_id;
        st.next_id += 1;
        st.subscribers.push((id, tx));
        (
            st.pods.values().cloned().collect(),
            Subscription { hub: self, id, rx },
        )
    }

    fn record_ack(&self, uid: &str, status: AckStatus) {
        let mut st = self.state.lock();
        if st.pods.contains_key(uid) {
            st.acks.insert(uid.to_string(), status);
        }
    }
}

struct Subscription<'a> {
    hub: &'a HandoffHub,
    id: u64,
    rx: mpsc::UnboundedReceiver<Change>,
}

impl Drop for Subscription<'_> {
    fn drop(&mut self) {
        self.hub
            .state
            .lock()
            .subscribers
            .retain(|(id, _)| *id != self.id);
    }
}

/// The handoff server: listens on `path` and serves every ztunnel that
/// connects until the returned future is dropped.
pub struct HandoffServer {
    hub: Arc<HandoffHub>,
    listener: AsyncFd<OwnedFd>,
    ack_timeout: Duration,
}

impl HandoffServer {
    /// Binds the socket (replacing a stale one). Must be called inside a
    /// tokio runtime.
    pub fn bind(
        path: &Path,
        hub: Arc<HandoffHub>,
        ack_timeout: Duration,
    ) -> io::Result<HandoffServer> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let fd = handoff_wire::listen(path)?;
        crate::peers::restrict(path)?;
        handoff_wire::set_nonblocking(&fd)?;
        Ok(HandoffServer {
            hub,
            listener: register(fd, Interest::READABLE)?,
            ack_timeout,
        })
    }

    /// Accepts connections forever; each is served on its own task.
    pub async fn run(self) -> io::Result<()> {
        loop {
            let conn = self
                .listener
                .async_io(Interest::READABLE, |fd| handoff_wire::accept(fd.as_fd()))
                .await?;
            if let Err(refused) = crate::peers::check(&conn)? {
                tracing::warn!(error = %refused, "handoff connection refused");
                continue;
            }
            let hub = self.hub.clone();
            let ack_timeout = self.ack_timeout;
            tokio::spawn(async move {
                match serve_connection(&hub, conn, ack_timeout).await {
                    Ok(()) => tracing::info!("ztunnel disconnected from the handoff socket"),
                    Err(e) => tracing::warn!(error = %e, "ztunnel handoff connection ended"),
                }
            });
        }
    }
}

/// Serves one connected ztunnel until it disconnects or breaks the protocol.
pub async fn serve_connection(
    hub: &HandoffHub,
    conn: OwnedFd,
    ack_timeout: Duration,
) -> Result<(), HandoffError> {
    handoff_wire::set_nonblocking(&conn)?;
    let conn = Conn {
        fd: register(conn, Interest::READABLE | Interest::WRITABLE)?,
        ack_timeout,
    };
    let hello = match conn.recv().await? {
        None => return Ok(()),
        Some(ZtunnelMessage {
            kind: Some(ztunnel_message::Kind::Hello(hello)),
        }) => hello,
        Some(other) => {
            return Err(HandoffError::Protocol(format!(
                "expected Hello, got {other:?}"
            )));
        }
    };
    tracing::info!(
        version = hello.version,
        known = hello.known_pod_uids.len(),
        "ztunnel connected"
    );
    let (snapshot, mut sub) = hub.subscribe();
    for pod in snapshot {
        let uid = pod.identity.uid.clone();
        let status = if hello.known_pod_uids.contains(&uid) {
            conn.exchange(&keep(&uid), None).await?
        } else {
            conn.exchange(&add(&pod), Some(&pod.netns)).await?
        };
        hub.record_ack(&uid, status);
    }
    conn.exchange(
        &AgentMessage {
            kind: Some(agent_message::Kind::SnapshotSent(SnapshotSent {})),
        },
        None,
    )
    .await?;
    loop {
        tokio::select! {
            change = sub.rx.recv() => match change {
                Some(Change::Add(pod)) => {
                    let status = conn.exchange(&add(&pod), Some(&pod.netns)).await?;
                    hub.record_ack(&pod.identity.uid, status);
                }
                Some(Change::Delete(uid)) => {
                    let msg = AgentMessage { kind: Some(agent_message::Kind::Delete(DeletePod { uid })) };
                    conn.exchange(&msg, None).await?;
                }
                None => return Ok(()),
            },
            // Between changes ztunnel has nothing to say: readability here is
            // its disconnect (or a protocol violation).
            msg = conn.recv() => match msg? {
                None => return Ok(()),
                Some(other) => return Err(HandoffError::Protocol(format!("unsolicited message {other:?}"))),
            },
        }
    }
}

fn add(pod: &HandoffPod) -> AgentMessage {
    AgentMessage {
        kind: Some(agent_message::Kind::Add(AddPod {
            pod: Some(pod.identity.clone()),
            addresses: pod.addresses.clone(),
        })),
    }
}

fn keep(uid: &str) -> AgentMessage {
    AgentMessage {
        kind: Some(agent_message::Kind::Keep(KeepPod {
            uid: uid.to_string(),
        })),
    }
}

struct Conn {
    fd: AsyncFd<OwnedFd>,
    ack_timeout: Duration,
}

impl Conn {
    async fn recv(&self) -> Result<Option<ZtunnelMessage>, HandoffError> {
        let got = self
            .fd
            .async_io(Interest::READABLE, |fd| {
                handoff_wire::recv::<ZtunnelMessage>(fd.as_fd())
            })
            .await?;
        // ztunnel never sends fds; one that arrives anyway is closed here.
        Ok(got.map(|(msg, _fd)| msg))
    }

    /// Sends one message and waits for its ack.
    async fn exchange(
        &self,
        msg: &AgentMessage,
        netns: Option<&NetNs>,
    ) -> Result<AckStatus, HandoffError> {
        self.fd
            .async_io(Interest::WRITABLE, |fd| {
                handoff_wire::send(fd.as_fd(), msg, netns.map(|n| n.as_fd()))
            })
            .await?;
        let reply = tokio::time::timeout(self.ack_timeout, self.recv())
            .await
            .map_err(|_| HandoffError::AckTimeout(self.ack_timeout))??;
        match reply {
            None => Err(HandoffError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "ztunnel closed before acking",
            ))),
            Some(ZtunnelMessage {
                kind: Some(ztunnel_message::Kind::Ack(ack)),
            }) if ack.error.is_empty() => Ok(AckStatus::Acked),
            Some(ZtunnelMessage {
                kind: Some(ztunnel_message::Kind::Ack(ack)),
            }) => {
                tracing::warn!(error = %ack.error, "ztunnel reported an error for a handoff message");
                Ok(AckStatus::Failed(ack.error))
            }
            Some(other) => Err(HandoffError::Protocol(format!(
                "expected Ack, got {other:?}"
            ))),
        }
    }
}
