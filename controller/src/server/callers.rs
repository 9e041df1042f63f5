//! Per-caller limits on the config stream: streams open at once, and full
//! snapshots in flight at once.
//!
//! Without them one caller (one stolen token is enough) could open streams
//! until memory runs out, or take every global snapshot slot with streams
//! that never answer, and new proxies would wait for config until those
//! slots time out. A caller is a node's ztunnel or a ServiceAccount (see
//! [`super::authorize::limit_key`]).

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Semaphore;

/// Config streams one caller may have open at once, by default.
pub const DEFAULT_STREAMS_PER_CALLER: usize = 16;

/// Full snapshots one caller may have in flight at once, by default: a
/// small share of [`super::DEFAULT_CONCURRENT_SNAPSHOTS`].
pub const DEFAULT_SNAPSHOTS_PER_CALLER: usize = 2;

/// The open streams of every caller.
pub(crate) struct CallerLimits {
    max_streams: usize,
    max_snapshots: usize,
    callers: Mutex<HashMap<String, Entry>>,
}

struct Entry {
    streams: usize,
    /// Shared by the caller's streams.
    snapshots: Arc<Semaphore>,
}

/// One open stream of a caller; its place is freed when dropped.
pub(crate) struct CallerStream {
    limits: Arc<CallerLimits>,
    key: String,
    snapshots: Arc<Semaphore>,
}

impl CallerLimits {
    pub(crate) fn new(max_streams: usize, max_snapshots: usize) -> CallerLimits {
        CallerLimits {
            max_streams: max_streams.max(1),
            max_snapshots: max_snapshots.max(1),
            callers: Mutex::new(HashMap::new()),
        }
    }

    /// The most streams one caller may have open.
    pub(crate) fn max_streams(&self) -> usize {
        self.max_streams
    }

    /// A place for one more stream of `key`, unless it has all it may.
    pub(crate) fn open(self: &Arc<Self>, key: &str) -> Option<CallerStream> {
        let mut callers = self.callers.lock();
        let entry = callers.entry(key.to_string()).or_insert_with(|| Entry {
            streams: 0,
            snapshots: Arc::new(Semaphore::new(self.max_snapshots)),
        });
        if entry.streams >= self.max_streams {
            return None;
        }
        entry.streams += 1;
        Some(CallerStream {
            limits: self.clone(),
            key: key.to_string(),
            snapshots: entry.snapshots.clone(),
        })
    }
}

impl CallerStream {
    /// The caller's snapshot slots, shared by all its streams.
    pub(crate) fn snapshots(&self) -> Arc<Semaphore> {
        self.snapshots.clone()
    }
}

impl Drop for CallerStream {
    fn drop(&mut self) {
        let mut callers = self.limits.callers.lock();
        if let Some(entry) = callers.get_mut(&self.key) {
            entry.streams = entry.streams.saturating_sub(1);
            if entry.streams == 0 {
                callers.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_counted_per_caller_and_freed_when_dropped() {
        let limits = Arc::new(CallerLimits::new(2, 1));
        let a1 = limits.open("a").expect("first");
        let a2 = limits.open("a").expect("second");
        assert!(limits.open("a").is_none(), "a third stream of a");
        let b = limits.open("b").expect("another caller");
        // One caller's streams share its snapshot slots; another has its own.
        assert!(Arc::ptr_eq(&a1.snapshots(), &a2.snapshots()));
        assert!(!Arc::ptr_eq(&a1.snapshots(), &b.snapshots()));
        drop(a1);
        let _a3 = limits.open("a").expect("a place was freed");
        drop((a2, b));
        assert_eq!(
            limits.callers.lock().len(),
            1,
            "callers without streams are forgotten"
        );
    }
}
