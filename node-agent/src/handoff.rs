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
//!
//! The hub also holds each pod's listening sockets ([`listeners`]): made when
//! the pod is added, sent with every `AddPod`, and, when the ports are
//! already held (by a ztunnel, after this agent restarted), taken back from
//! the `Ack` of the `KeepPod` that ztunnel gets. No snapshot is served before
//! the agent's first sync ([`HandoffHub::mark_synced`]): an empty one would
//! make a reconnecting ztunnel drop every pod, and with it the sockets.
//!
//! A connection whose `AddPod` could not be sent for want of listeners (a
//! restarted agent, with a new ztunnel connected before the old one gave
//! the sockets back) keeps the pod waiting and sends it as soon as the
//! listeners are had: taken back from any ztunnel, or bound again once their
//! last holder has gone. Without that, an agent and a ztunnel rolled
//! together left the new ztunnel without the pod for good.
//!
//! An agent told to stop for a restart waits ([`HandoffHub::hand_over`])
//! until a ztunnel that is not stopping itself holds every pod's listeners:
//! its copies are otherwise the last ones whenever the old ztunnel has
//! already exited (it did, trusting this agent to hold them) and the new one
//! has not had its snapshot yet, and every connection to the pods would be
//! refused until the next agent binds them again. A stopping ztunnel says so
//! in its `Hello` (it reconnects to say it), so two peers stopping together
//! cannot each count on the other.

mod listeners;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use weft_api::handoff_wire;
use weft_api::nodeagent::{
    AddPod, AgentMessage, DeletePod, KeepPod, Listener, PodIdentity, SnapshotSent, ZtunnelMessage,
    agent_message, ztunnel_message,
};
use weft_cni::report::AckStatus;
use weft_netns::fd::register;

use crate::netns::NetNs;
pub use listeners::{ListenerError, PodListener, PodListeners};

/// Default path of the handoff socket on the node.
pub const DEFAULT_HANDOFF_SOCKET: &str = "/var/run/weft/ztunnel.sock";

/// How long a stopping agent waits for a ztunnel to hold the pods'
/// listeners: with the registry's exit decision (at most
/// [`crate::on_exit::DECISION_BOUND`]), inside the default 30 s grace period.
pub const HANDOVER_BOUND: Duration = Duration::from_secs(15);

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
    /// ztunnel speaks another version of the handoff.
    #[error(
        "ztunnel speaks handoff version {got}, this agent version {want}: upgrade the older of the two (version 2 moved the pods' listeners to the agent)"
    )]
    Version {
        /// What ztunnel said in `Hello`.
        got: u32,
        /// What this agent speaks.
        want: u32,
    },
}

#[derive(Default)]
struct HubState {
    pods: BTreeMap<String, Arc<HandoffPod>>,
    subscribers: Vec<(u64, mpsc::UnboundedSender<Change>)>,
    next_id: u64,
    acks: HashMap<String, AckStatus>,
    /// Each pod's listening sockets, by uid, once made or taken back.
    listeners: HashMap<String, Arc<PodListeners>>,
    /// The agent is exiting, handed over: a stopping ztunnel gets no more
    /// snapshot (it would take that for this agent holding the listeners).
    closing: bool,
    /// The `Hello.instance` of every ztunnel that said it is stopping: none
    /// of its connections counts as a holder again.
    leaving: HashSet<String>,
}

/// The enrolled pods, their listeners, and the connected ztunnels.
pub struct HandoffHub {
    state: Mutex<HubState>,
    /// Serialises making and adopting listeners: two binds racing for one
    /// pod would fail each other.
    binding: Mutex<()>,
    /// Whether the agent has synced with its registry once.
    synced: tokio::sync::watch::Sender<bool>,
    /// Bumped whenever the hub comes to hold a pod's listeners: connections
    /// with pods waiting for them try again at once.
    listeners_had: tokio::sync::watch::Sender<u64>,
    /// The connections whose ztunnel holds every pod's listeners (snapshot
    /// replayed, no pod waiting) and is not stopping, with that ztunnel's
    /// instance. Changed only under `state`'s lock.
    holders: tokio::sync::watch::Sender<BTreeMap<u64, Option<String>>>,
}

impl HandoffHub {
    /// An empty hub, serving no snapshot until [`HandoffHub::mark_synced`].
    pub fn new() -> Arc<HandoffHub> {
        Arc::new(HandoffHub {
            state: Mutex::default(),
            binding: Mutex::new(()),
            synced: tokio::sync::watch::channel(false).0,
            listeners_had: tokio::sync::watch::channel(0).0,
            holders: tokio::sync::watch::channel(BTreeMap::new()).0,
        })
    }

    /// The agent knows which pods are enrolled: snapshots may be served.
    pub fn mark_synced(&self) {
        self.synced.send_replace(true);
    }

    /// Adds (or replaces) a pod and tells every connected ztunnel. Its
    /// listeners are made now, so the ports are held from enrollment on;
    /// a pod whose netns is unchanged keeps the ones it has.
    pub fn add(&self, pod: HandoffPod) {
        let pod = Arc::new(pod);
        if let Err(e) = self.listeners_for(&pod) {
            // After an agent restart, the ztunnel holding them gives them
            // back in its KeepPod ack; otherwise AddPod reports the error.
            tracing::info!(uid = %pod.identity.uid, error = %e, "pod listeners not made yet");
        }
        let mut st = self.state.lock();
        st.pods.insert(pod.identity.uid.clone(), pod.clone());
        st.acks.insert(pod.identity.uid.clone(), AckStatus::Pending);
        st.subscribers
            .retain(|(_, tx)| tx.send(Change::Add(pod.clone())).is_ok());
    }

    /// Removes a pod (closing the agent's copies of its listeners) and tells
    /// every connected ztunnel. Unknown uids are ignored.
    pub fn delete(&self, uid: &str) {
        let mut st = self.state.lock();
        st.acks.remove(uid);
        st.listeners.remove(uid);
        if st.pods.remove(uid).is_some() {
            st.subscribers
                .retain(|(_, tx)| tx.send(Change::Delete(uid.to_string())).is_ok());
        }
    }

    /// The uids of the pods ztunnel should have.
    pub fn pod_uids(&self) -> Vec<String> {
        self.state.lock().pods.keys().cloned().collect()
    }

    /// The listeners the agent holds for `uid`.
    pub fn listeners(&self, uid: &str) -> Option<Arc<PodListeners>> {
        self.state.lock().listeners.get(uid).cloned()
    }

    /// The pod's listeners: those held if they are in its current netns,
    /// else new ones.
    fn listeners_for(&self, pod: &HandoffPod) -> Result<Arc<PodListeners>, ListenerError> {
        let _one = self.binding.lock();
        let uid = &pod.identity.uid;
        let inode = pod.netns.inode();
        if let Some(held) = self.state.lock().listeners.get(uid)
            && held.netns_inode == inode
        {
            return Ok(held.clone());
        }
        // The old netns's sockets (a re-created sandbox) go now: the pod's
        // ztunnels replace the pod, and so drop theirs, on this AddPod.
        self.state.lock().listeners.remove(uid);
        let made = Arc::new(PodListeners::bind(&pod.netns, &pod.addresses)?);
        self.state
            .lock()
            .listeners
            .insert(uid.clone(), made.clone());
        self.listeners_had.send_modify(|n| *n += 1);
        Ok(made)
    }

    /// Takes back the listeners a ztunnel returned for `uid` if the agent
    /// has none (it restarted while the ztunnel held them); otherwise the
    /// returned copies are closed: they are the same sockets, since no two
    /// can listen on one port of a pod.
    fn adopt(&self, uid: &str, described: &[Listener], fds: Vec<OwnedFd>) {
        let _one = self.binding.lock();
        let Some(pod) = self.state.lock().pods.get(uid).cloned() else {
            return;
        };
        if self
            .state
            .lock()
            .listeners
            .get(uid)
            .is_some_and(|held| held.netns_inode == pod.netns.inode())
        {
            return;
        }
        match PodListeners::adopt(&pod.netns, &pod.addresses, described, fds) {
            Ok(adopted) => {
                tracing::info!(%uid, "pod listeners taken back from ztunnel");
                self.state
                    .lock()
                    .listeners
                    .insert(uid.to_string(), Arc::new(adopted));
                self.listeners_had.send_modify(|n| *n += 1);
            }
            Err(e) => tracing::warn!(%uid, error = %e, "cannot take back the pod's listeners"),
        }
    }

    /// `pod` is the hub's pod for its uid, not an older or deleted one.
    fn is_current(&self, pod: &Arc<HandoffPod>) -> bool {
        self.state
            .lock()
            .pods
            .get(&pod.identity.uid)
            .is_some_and(|now| Arc::ptr_eq(now, pod))
    }

    /// What ztunnel last answered for `uid`.
    pub fn ack_status(&self, uid: &str) -> Option<AckStatus> {
        self.state.lock().acks.get(uid).cloned()
    }

    /// Whether the agent may exit without closing the last copy of a pod's
    /// listeners: it holds none, or a ztunnel that is not stopping holds
    /// them all.
    pub fn is_handed_over(&self) -> bool {
        Self::handed_over_in(&self.state.lock(), &self.holders)
    }

    fn handed_over_in(
        st: &HubState,
        holders: &tokio::sync::watch::Sender<BTreeMap<u64, Option<String>>>,
    ) -> bool {
        !holders.borrow().is_empty() || st.listeners.is_empty()
    }

    /// What a stopping agent waits for (bounded by [`HANDOVER_BOUND`])
    /// while its server still serves: [`HandoffHub::is_handed_over`]. Then,
    /// in the same step, the hub closes to stopping ztunnels, so none takes
    /// this agent's copies for held after the check.
    pub async fn hand_over(&self) {
        let mut holders = self.holders.subscribe();
        loop {
            {
                let mut st = self.state.lock();
                if Self::handed_over_in(&st, &self.holders) {
                    st.closing = true;
                    return;
                }
            }
            if holders.changed().await.is_err() {
                return;
            }
        }
    }

    /// A ztunnel said it is stopping: its earlier connections stop counting
    /// as holders at once (their disconnect is noticed later), and for good.
    fn forget_holder(&self, instance: &Option<String>) {
        let mut st = self.state.lock();
        if let Some(leaving) = instance {
            st.leaving.insert(leaving.clone());
            self.holders.send_if_modified(|holders| {
                let before = holders.len();
                holders.retain(|_, i| i != instance);
                holders.len() != before
            });
        }
    }

    /// Whether a stopping ztunnel may still be told the snapshot is sent.
    fn closing(&self) -> bool {
        self.state.lock().closing
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

    fn subscribe(&self, instance: Option<String>) -> (Vec<Arc<HandoffPod>>, Subscription<'_>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut st = self.state.lock();
        let id = st.next_id;
        st.next_id += 1;
        st.subscribers.push((id, tx));
        (
            st.pods.values().cloned().collect(),
            Subscription {
                hub: self,
                id,
                instance,
                rx,
            },
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
    /// The connected ztunnel's `Hello.instance`.
    instance: Option<String>,
    rx: mpsc::UnboundedReceiver<Change>,
}

impl Subscription<'_> {
    /// Records whether this connection's ztunnel holds every pod's
    /// listeners and will go on holding them.
    fn holds(&self, holds: bool) {
        let id = self.id;
        let st = self.hub.state.lock();
        let holds = holds
            && !self
                .instance
                .as_ref()
                .is_some_and(|i| st.leaving.contains(i));
        self.hub.holders.send_if_modified(|holders| {
            if holds {
                holders.insert(id, self.instance.clone()).is_none()
            } else {
                holders.remove(&id).is_some()
            }
        });
    }
}

impl Drop for Subscription<'_> {
    fn drop(&mut self) {
        self.holds(false);
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
        Some((
            ZtunnelMessage {
                kind: Some(ztunnel_message::Kind::Hello(hello)),
            },
            _,
        )) => hello,
        Some((other, _)) => {
            return Err(HandoffError::Protocol(format!(
                "expected Hello, got {other:?}"
            )));
        }
    };
    if hello.version != handoff_wire::PROTOCOL_VERSION {
        return Err(HandoffError::Version {
            got: hello.version,
            want: handoff_wire::PROTOCOL_VERSION,
        });
    }
    tracing::info!(
        version = hello.version,
        known = hello.known_pod_uids.len(),
        leaving = hello.leaving,
        "ztunnel connected"
    );
    // Empty from a ztunnel that does not say (an older one).
    let instance = Some(hello.instance.clone()).filter(|i| !i.is_empty());
    if hello.leaving {
        hub.forget_holder(&instance);
    }
    let mut synced = hub.synced.subscribe();
    // Err: the hub is gone, and so is the agent.
    let _ = synced.wait_for(|synced| *synced).await;
    let mut listeners_had = hub.listeners_had.subscribe();
    let (snapshot, mut sub) = hub.subscribe(instance);
    let mut waiting = Waiting::default();
    for pod in snapshot {
        let uid = pod.identity.uid.clone();
        if hello.known_pod_uids.contains(&uid) {
            let reply = conn.exchange(&keep(&uid), &[]).await?;
            hub.adopt(&uid, &reply.listeners, reply.fds);
            hub.record_ack(&uid, reply.status);
        } else {
            conn.add(hub, &pod, &mut waiting).await?;
        }
    }
    if hello.leaving && hub.closing() {
        // It keeps the pods' sockets (and waits for the next agent) rather
        // than exit trusting copies about to close.
        tracing::info!("this agent is exiting: a stopping ztunnel is not told it holds the pods");
        return Ok(());
    }
    conn.exchange(
        &AgentMessage {
            kind: Some(agent_message::Kind::SnapshotSent(SnapshotSent {})),
        },
        &[],
    )
    .await?;
    loop {
        sub.holds(!hello.leaving && waiting.pods.is_empty());
        tokio::select! {
            change = sub.rx.recv() => match change {
                Some(Change::Add(pod)) => conn.add(hub, &pod, &mut waiting).await?,
                Some(Change::Delete(uid)) => {
                    waiting.pods.remove(&uid);
                    let msg = AgentMessage { kind: Some(agent_message::Kind::Delete(DeletePod { uid })) };
                    conn.exchange(&msg, &[]).await?;
                }
                None => return Ok(()),
            },
            // A pod's listeners were made or taken back somewhere: try now.
            had = listeners_had.changed(), if !waiting.pods.is_empty() => {
                if had.is_ok() {
                    conn.retry(hub, &mut waiting).await?;
                }
            }
            // Or their last holder went, and binding them again may work.
            () = tokio::time::sleep_until(waiting.next), if !waiting.pods.is_empty() => {
                conn.retry(hub, &mut waiting).await?;
            }
            // Between changes ztunnel has nothing to say: readability here is
            // its disconnect (or a protocol violation).
            msg = conn.recv() => match msg? {
                None => return Ok(()),
                Some((other, _)) => return Err(HandoffError::Protocol(format!("unsolicited message {other:?}"))),
            },
        }
    }
}

/// The pods one connection could not send yet for want of listeners, and
/// when to try binding them again.
struct Waiting {
    pods: BTreeMap<String, Arc<HandoffPod>>,
    delays: backon::ExponentialBackoff,
    next: tokio::time::Instant,
}

impl Default for Waiting {
    fn default() -> Self {
        Waiting {
            pods: BTreeMap::new(),
            delays: Waiting::delays(),
            next: tokio::time::Instant::now(),
        }
    }
}

impl Waiting {
    /// From 50 ms, doubling to 2 s: the ports free up when the last
    /// ztunnel holding them exits, and every moment after that refuses
    /// the pod's connections.
    fn delays() -> backon::ExponentialBackoff {
        use backon::BackoffBuilder;
        backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_secs(2))
            .without_max_times()
            .build()
    }

    /// Adds a pod; the first one starts the delays over.
    fn wait(&mut self, pod: &Arc<HandoffPod>) {
        if self.pods.is_empty() {
            self.delays = Waiting::delays();
            self.schedule();
        }
        self.pods.insert(pod.identity.uid.clone(), pod.clone());
    }

    fn schedule(&mut self) {
        self.next =
            tokio::time::Instant::now() + self.delays.next().unwrap_or(Duration::from_secs(2));
    }
}

fn add(pod: &HandoffPod, listeners: &PodListeners) -> AgentMessage {
    AgentMessage {
        kind: Some(agent_message::Kind::Add(AddPod {
            pod: Some(pod.identity.clone()),
            addresses: pod.addresses.clone(),
            listeners: listeners.describe(),
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

/// ztunnel's answer to one message.
struct Reply {
    status: AckStatus,
    /// What the fds are (an `Ack` to `KeepPod` returns the pod's listeners).
    listeners: Vec<Listener>,
    fds: Vec<OwnedFd>,
}

impl Conn {
    async fn recv(&self) -> Result<Option<(ZtunnelMessage, Vec<OwnedFd>)>, HandoffError> {
        Ok(self
            .fd
            .async_io(Interest::READABLE, |fd| {
                handoff_wire::recv::<ZtunnelMessage>(fd.as_fd())
            })
            .await?)
    }

    /// Sends `AddPod` with the pod's netns and listeners, and records
    /// ztunnel's answer. Without listeners (the ports are held by something
    /// else: a process of the pod's, or a ztunnel that has not given them
    /// back yet) ztunnel is not asked: the pod's status says why, and it
    /// waits in `waiting` for them. A newer `AddPod` replaces a waiting one.
    async fn add(
        &self,
        hub: &HandoffHub,
        pod: &Arc<HandoffPod>,
        waiting: &mut Waiting,
    ) -> Result<(), HandoffError> {
        waiting.pods.remove(&pod.identity.uid);
        if !self.try_add(hub, pod, false).await? {
            waiting.wait(pod);
        }
        Ok(())
    }

    /// Tries again every pod waiting for its listeners.
    async fn retry(&self, hub: &HandoffHub, waiting: &mut Waiting) -> Result<(), HandoffError> {
        let pods: Vec<Arc<HandoffPod>> = waiting.pods.values().cloned().collect();
        for pod in pods {
            // Replaced or deleted since: the change, queued for this
            // connection, says what to do; binding for a stale netns would
            // drop the current one's listeners.
            if !hub.is_current(&pod) {
                waiting.pods.remove(&pod.identity.uid);
                continue;
            }
            if self.try_add(hub, &pod, true).await? {
                waiting.pods.remove(&pod.identity.uid);
            }
        }
        waiting.schedule();
        Ok(())
    }

    /// One attempt: whether the `AddPod` was sent (and answered).
    async fn try_add(
        &self,
        hub: &HandoffHub,
        pod: &HandoffPod,
        retried: bool,
    ) -> Result<bool, HandoffError> {
        let uid = &pod.identity.uid;
        let listeners = match hub.listeners_for(pod) {
            Ok(listeners) => listeners,
            Err(e) => {
                if !retried {
                    tracing::warn!(%uid, error = %e, "pod not handed over yet: waiting for its listeners");
                    hub.record_ack(uid, AckStatus::Failed(e.to_string()));
                }
                return Ok(false);
            }
        };
        if retried {
            tracing::info!(%uid, "pod handed over now that its listeners are had");
        }
        let mut fds = vec![pod.netns.as_fd()];
        fds.extend(listeners.fds());
        let status = self.exchange(&add(pod, &listeners), &fds).await?.status;
        hub.record_ack(uid, status);
        Ok(true)
    }

    /// Sends one message and waits for its ack.
    async fn exchange(
        &self,
        msg: &AgentMessage,
        fds: &[BorrowedFd<'_>],
    ) -> Result<Reply, HandoffError> {
        self.fd
            .async_io(Interest::WRITABLE, |fd| {
                handoff_wire::send(fd.as_fd(), msg, fds)
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
            Some((
                ZtunnelMessage {
                    kind: Some(ztunnel_message::Kind::Ack(ack)),
                },
                fds,
            )) => {
                let status = if ack.error.is_empty() {
                    AckStatus::Acked
                } else {
                    tracing::warn!(error = %ack.error, "ztunnel reported an error for a handoff message");
                    AckStatus::Failed(ack.error)
                };
                Ok(Reply {
                    status,
                    listeners: ack.listeners,
                    fds,
                })
            }
            Some((other, _)) => Err(HandoffError::Protocol(format!(
                "expected Ack, got {other:?}"
            ))),
        }
    }
}
