//! One subscriber's stream: snapshot, then deltas, one response in flight.
//!
//! The controller sends the next response only after the previous one was
//! ACKed or NACKed, and computes it against what the subscriber last
//! acknowledged. So a NACKed change is not assumed applied, and a slow
//! subscriber gets one combined delta instead of a queue of stale ones.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};
use weft_api::config::{ConfigRequest, ConfigResponse, ResourceType, config_request};

use super::callers::CallerStream;
use super::encoded::{Encoded, SnapshotCache};
use super::subscribers::Subscribers;
use crate::pipeline::ModelVersion;
use weft_cluster::model::audience::{Audience, Visible};
use weft_cluster::model::{Delta, Model};

/// What a subscriber holds: a model version as seen through its view.
#[derive(Clone)]
struct Seen {
    version: u64,
    model: Arc<Model>,
    view: Option<Arc<Visible>>,
}

struct Pending {
    nonce: String,
    seen: Seen,
    /// Held from building a full snapshot until the proxy answers it (or
    /// [`SNAPSHOT_ANSWER_TIMEOUT`] passes), so that a thousand proxies
    /// reconnecting at once do not hold a thousand snapshots in memory at
    /// once, and a proxy that never answers cannot hold a slot forever.
    snapshot: Option<SnapshotSlot>,
    sent_at: tokio::time::Instant,
}

/// A slot of the caller's share and one of the global slots, held together,
/// and the snapshot's encoded resources: held until the answer so that the
/// snapshots in flight share them (see [`SnapshotCache`]).
struct SnapshotSlot {
    _caller: Option<OwnedSemaphorePermit>,
    _global: OwnedSemaphorePermit,
    _encoded: Vec<Arc<Bytes>>,
}

/// How long a snapshot slot waits for the proxy's answer.
const SNAPSHOT_ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

pub(crate) struct SubscriberStream {
    pub id: u64,
    pub types: Vec<ResourceType>,
    /// Who it is for, and so which view of the model it gets.
    pub audience: Audience,
    pub models: watch::Receiver<Arc<ModelVersion>>,
    pub subscribers: Arc<Subscribers>,
    pub tx: mpsc::Sender<Result<Encoded, Status>>,
    /// Encoded snapshot resources, shared by the streams of a version.
    pub snapshot_cache: Arc<SnapshotCache>,
    pub snapshots: Arc<Semaphore>,
    /// The caller's place under its stream limit and its snapshot share;
    /// `None` when authentication is off.
    pub caller: Option<CallerStream>,
    pub shutdown: CancellationToken,
}

impl SubscriberStream {
    pub(crate) async fn run(mut self, mut requests: Streaming<ConfigRequest>) {
        let mut acked: Option<Seen> = None;
        let mut pending: Option<Pending> = None;
        let mut nacked_version: Option<u64> = None;
        let mut sent: u64 = 0;
        loop {
            if pending.is_none() {
                let current = self.models.borrow_and_update().clone();
                let up_to_date = acked.as_ref().is_some_and(|a| a.version == current.version);
                if current.version > 0 && !up_to_date && nacked_version != Some(current.version) {
                    let responded = tokio::select! {
                        r = self.respond(&current, acked.as_ref(), &mut sent) => r,
                        _ = self.shutdown.cancelled() => Respond::Closed,
                    };
                    match responded {
                        Respond::Sent(p) => pending = Some(p),
                        Respond::NothingForUs(seen) => {
                            self.subscribers
                                .update(self.id, |i| i.acked_version = seen.version);
                            acked = Some(seen);
                        }
                        Respond::Closed => break,
                    }
                }
            }
            let holds_slot = pending.as_ref().is_some_and(|p| p.snapshot.is_some());
            let slot_deadline = pending
                .as_ref()
                .map_or_else(tokio::time::Instant::now, |p| {
                    p.sent_at + SNAPSHOT_ANSWER_TIMEOUT
                });
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = tokio::time::sleep_until(slot_deadline), if holds_slot => {
                    tracing::warn!(stream = self.id, "no answer to the snapshot; releasing its slot");
                    if let Some(p) = pending.as_mut() {
                        p.snapshot = None;
                    }
                }
                request = requests.message() => {
                    let Ok(Some(request)) = request else { break };
                    match request.kind {
                        Some(config_request::Kind::Ack(ack)) => {
                            if pending.as_ref().is_some_and(|p| p.nonce == ack.nonce) {
                                let p = pending.take().expect("checked above");
                                self.subscribers.update(self.id, |i| {
                                    i.acked_version = p.seen.version;
                                    i.pending_nonce = None;
                                });
                                acked = Some(p.seen);
                            } else {
                                tracing::debug!(stream = self.id, nonce = ack.nonce, "ACK for an unknown nonce");
                            }
                        }
                        Some(config_request::Kind::Nack(nack)) => {
                            if pending.as_ref().is_some_and(|p| p.nonce == nack.nonce) {
                                let p = pending.take().expect("checked above");
                                tracing::warn!(stream = self.id, version = p.seen.version, "subscriber rejected config: {}", nack.message);
                                metrics::counter!("weft_config_nacks_total").increment(1);
                                self.subscribers.update(self.id, |i| {
                                    i.nacks += 1;
                                    i.last_nack = Some(nack.message.clone());
                                    i.nacked_version = Some(p.seen.version);
                                    i.pending_nonce = None;
                                });
                                nacked_version = Some(p.seen.version);
                            }
                        }
                        Some(config_request::Kind::Subscribe(_)) | None => {
                            tracing::debug!(stream = self.id, "ignoring a second Subscribe");
                        }
                    }
                }
                changed = self.models.changed(), if pending.is_none() => {
                    if changed.is_err() { break }
                }
            }
        }
        self.subscribers.remove(self.id);
    }

    async fn respond(
        &self,
        current: &ModelVersion,
        acked: Option<&Seen>,
        sent: &mut u64,
    ) -> Respond {
        let seen = Seen {
            version: current.version,
            model: current.model.clone(),
            view: current.views.of(&self.audience),
        };
        let view = seen.view.as_deref();
        let mut permit = None;
        let mut shared = Vec::new();
        let (full_snapshot, resources, removed) = match acked {
            None => {
                // The caller's share first: a caller waiting for its own
                // slots must not sit on global ones meanwhile.
                let caller = match &self.caller {
                    Some(c) => match c.snapshots().acquire_owned().await {
                        Ok(p) => Some(p),
                        Err(_) => return Respond::Closed,
                    },
                    None => None,
                };
                let Ok(global) = self.snapshots.clone().acquire_owned().await else {
                    return Respond::Closed;
                };
                shared = self
                    .types
                    .iter()
                    .map(|t| {
                        self.snapshot_cache
                            .resources(current.version, &current.model, *t, view)
                    })
                    .collect();
                permit = Some(SnapshotSlot {
                    _caller: caller,
                    _global: global,
                    _encoded: shared.clone(),
                });
                (true, Vec::new(), Vec::new())
            }
            Some(acked) => {
                let own;
                let delta: &Delta = if acked.version == current.previous {
                    &current.delta
                } else {
                    own = Model::diff(&acked.model, &current.model);
                    &own
                };
                let (resources, removed) =
                    delta.select_visible(&self.types, &current.model, acked.view.as_deref(), view);
                if resources.is_empty() && removed.is_empty() {
                    return Respond::NothingForUs(seen);
                }
                (false, resources, removed)
            }
        };
        *sent += 1;
        let nonce = format!("{}-{}", self.id, sent);
        let response = ConfigResponse {
            nonce: nonce.clone(),
            version: current.version,
            full_snapshot,
            resources,
            removed,
        };
        let encoded = Encoded::response(&response, &shared);
        drop(shared);
        if self.tx.send(Ok(encoded)).await.is_err() {
            return Respond::Closed;
        }
        metrics::counter!("weft_config_pushes_total", "snapshot" => if full_snapshot { "true" } else { "false" })
            .increment(1);
        metrics::histogram!("weft_config_push_latency_seconds")
            .record(current.changed_at.elapsed().as_secs_f64());
        self.subscribers.update(self.id, |i| {
            i.responses += 1;
            i.sent_version = current.version;
            i.pending_nonce = Some(nonce.clone());
        });
        Respond::Sent(Pending {
            nonce,
            seen,
            snapshot: permit,
            sent_at: tokio::time::Instant::now(),
        })
    }
}

enum Respond {
    Sent(Pending),
    /// Nothing changed in its view: it is up to date with this version.
    NothingForUs(Seen),
    Closed,
}
