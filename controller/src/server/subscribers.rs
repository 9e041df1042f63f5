//! The connected subscribers, for the debug API and metrics.

use std::collections::BTreeMap;
use std::time::SystemTime;

use parking_lot::Mutex;
use serde::Serialize;

/// What the controller knows about one subscriber.
#[derive(Clone, Debug, Serialize)]
pub struct SubscriberInfo {
    /// Stream id, unique per controller process.
    pub stream: u64,
    /// `ProxyInfo.id`.
    pub proxy_id: String,
    /// ztunnel, waypoint or cli.
    pub kind: String,
    /// A ztunnel's node.
    pub node: String,
    /// A waypoint's `namespace/name`.
    pub waypoint: String,
    /// The subscribed resource types.
    pub types: Vec<String>,
    /// Seconds since the epoch.
    pub connected_at: u64,
    /// The last model version sent to the subscriber.
    pub sent_version: u64,
    /// The last model version the subscriber acknowledged (or was told
    /// nothing about, having nothing in it).
    pub acked_version: u64,
    /// The last model version it refused.
    pub nacked_version: Option<u64>,
    /// The nonce of the response awaiting an answer.
    pub pending_nonce: Option<String>,
    /// Responses sent.
    pub responses: u64,
    /// NACKs received.
    pub nacks: u64,
    /// The last NACK's message.
    pub last_nack: Option<String>,
}

/// Every connected subscriber, by stream id.
#[derive(Default)]
pub struct Subscribers {
    inner: Mutex<BTreeMap<u64, SubscriberInfo>>,
}

impl Subscribers {
    pub(crate) fn insert(&self, info: SubscriberInfo) {
        let mut map = self.inner.lock();
        map.insert(info.stream, info);
        metrics::gauge!("weft_config_subscribers").set(map.len() as f64);
    }

    pub(crate) fn update(&self, stream: u64, f: impl FnOnce(&mut SubscriberInfo)) {
        if let Some(info) = self.inner.lock().get_mut(&stream) {
            f(info);
        }
    }

    pub(crate) fn remove(&self, stream: u64) {
        let mut map = self.inner.lock();
        map.remove(&stream);
        metrics::gauge!("weft_config_subscribers").set(map.len() as f64);
    }

    /// A copy of every subscriber's info.
    pub fn list(&self) -> Vec<SubscriberInfo> {
        self.inner.lock().values().cloned().collect()
    }

    /// The number of connected subscribers.
    pub fn len(&self) -> usize {
        self.inner.lock().len()
    }

    /// True when nobody is connected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
