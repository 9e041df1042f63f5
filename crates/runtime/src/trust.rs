//! The trust bundle a proxy verifies peers with: one handle shared by the
//! HBONE server's TLS and the client pool, replaced when the controller
//! rotates roots.

use std::sync::Arc;

use parking_lot::RwLock;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use weft_hbone::{TrustBundle, TunnelPool};

use crate::store::WorkloadStore;

/// The current trust bundle, replaced when the controller rotates roots.
#[derive(Clone)]
pub struct TrustState {
    inner: Arc<RwLock<(u64, Arc<TrustBundle>)>>,
}

impl TrustState {
    pub fn new(bundle: TrustBundle) -> Self {
        TrustState {
            inner: Arc::new(RwLock::new((1, Arc::new(bundle)))),
        }
    }

    pub fn get(&self) -> (u64, Arc<TrustBundle>) {
        self.inner.read().clone()
    }

    /// Returns true if the bundle changed.
    pub fn set(&self, bundle: TrustBundle) -> bool {
        let mut inner = self.inner.write();
        if inner.1.roots() == bundle.roots() {
            return false;
        }
        inner.0 += 1;
        inner.1 = Arc::new(bundle);
        true
    }
}

/// Keeps `trust` and `pool` in step with the bundle the config stream
/// carries for `trust_domain`, until `shutdown`. A bundle that does not
/// parse is refused and the current one kept.
pub async fn follow_trust_bundle(
    store: WorkloadStore,
    trust: TrustState,
    pool: TunnelPool,
    trust_domain: String,
    shutdown: CancellationToken,
) {
    let mut changes = store.subscribe();
    loop {
        if let Some(bundle) = store.trust_bundle(&trust_domain) {
            match TrustBundle::from_pems(&trust_domain, &bundle.roots_pem) {
                Ok(bundle) => {
                    if trust.set(bundle.clone()) {
                        info!(roots = bundle.roots().len(), "trust bundle updated");
                        pool.set_trust_bundle(bundle);
                    }
                }
                Err(e) => warn!(error = %e, "trust bundle from the controller refused"),
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = changes.changed() => if changed.is_err() { return },
        }
    }
}
