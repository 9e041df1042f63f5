//! How many connections may be in their handshake at once, in all and per
//! source address.
//!
//! Before its certificate is verified a connection is anyone's: it holds a
//! socket, a task and TLS state, and the node's proxy serves every pod. A
//! bound in count (here) and in time (`ServerSettings::handshake_timeout`)
//! keeps a flood of silent or slow handshakes from one address, or from
//! many, from exhausting the process; a source over its share is refused
//! while others still get in.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;

/// Why a handshake was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GateRefusal {
    #[error("too many handshakes in progress ({0})")]
    Global(usize),
    #[error("too many handshakes in progress from this address ({0})")]
    PerSource(usize),
}

/// Counts handshakes in progress. Shared by every server that should count
/// together (all the pods of one ztunnel).
#[derive(Debug)]
pub struct HandshakeGate {
    global_limit: usize,
    per_source_limit: usize,
    state: Mutex<GateState>,
}

#[derive(Debug, Default)]
struct GateState {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
}

impl HandshakeGate {
    pub fn new(global_limit: usize, per_source_limit: usize) -> Arc<Self> {
        Arc::new(HandshakeGate {
            global_limit: global_limit.max(1),
            per_source_limit: per_source_limit.max(1),
            state: Mutex::default(),
        })
    }

    /// Admits one handshake from `source`, or says why not. The permit
    /// counts until it is dropped.
    pub fn enter(self: &Arc<Self>, source: IpAddr) -> Result<HandshakePermit, GateRefusal> {
        let mut state = self.state.lock();
        if state.total >= self.global_limit {
            return Err(GateRefusal::Global(self.global_limit));
        }
        let from_source = state.by_source.entry(source).or_default();
        if *from_source >= self.per_source_limit {
            return Err(GateRefusal::PerSource(self.per_source_limit));
        }
        *from_source += 1;
        state.total += 1;
        Ok(HandshakePermit {
            gate: self.clone(),
            source,
        })
    }

    /// Handshakes in progress now.
    pub fn in_progress(&self) -> usize {
        self.state.lock().total
    }
}

/// One admitted handshake.
#[derive(Debug)]
pub struct HandshakePermit {
    gate: Arc<HandshakeGate>,
    source: IpAddr,
}

impl Drop for HandshakePermit {
    fn drop(&mut self) {
        let mut state = self.gate.state.lock();
        state.total = state.total.saturating_sub(1);
        if let Some(n) = state.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                state.by_source.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_each_source_and_the_total_and_frees_on_drop() {
        let gate = HandshakeGate::new(5, 3);
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        let from_a: Vec<_> = (0..3)
            .map(|_| gate.enter(a).expect("under the cap"))
            .collect();
        assert_eq!(gate.enter(a).err(), Some(GateRefusal::PerSource(3)));
        let from_b: Vec<_> = (0..2)
            .map(|_| gate.enter(b).expect("b has its share"))
            .collect();
        assert_eq!(gate.enter(b).err(), Some(GateRefusal::Global(5)));
        assert_eq!(gate.in_progress(), 5);
        drop(from_a);
        assert_eq!(gate.in_progress(), 2);
        let _again = gate.enter(a).expect("freed on drop");
        drop(from_b);
        assert_eq!(gate.in_progress(), 1);
        assert_eq!(gate.state.lock().by_source.len(), 1, "no entry left for b");
    }
}
