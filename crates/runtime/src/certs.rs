//! Certificates for the identities of the pods on this node.
//!
//! For every identity some local pod needs, a task asks the CA (a CSR with a
//! fresh key), keeps the certificate, renews it at half-life, and retries with
//! backoff when the CA is unreachable — meanwhile the certificate it has
//! stays in use. A connection that arrives before its identity's first
//! certificate waits for it, up to a bound, rather than failing at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::backoff::Backoff;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use weft_hbone::{
    CertificateAuthority, CertificateStore, SpiffeId, WorkloadCertificate, ca::generate_csr,
};

/// Something that signs CSRs: the controller's CA over gRPC, or (local mode)
/// an in-process CA.
pub trait CaClient: Send + Sync + 'static {
    fn sign(&self, csr_pem: String) -> BoxFuture<'_, Result<Vec<String>, String>>;
}

/// An in-process CA from a root on disk: for local mode and tests only —
/// it lets this ztunnel sign any identity, which the controller's CA would not.
pub struct LocalCa {
    ca: CertificateAuthority,
    ttl: Duration,
}

impl LocalCa {
    pub fn new(ca: CertificateAuthority, ttl: Duration) -> Self {
        LocalCa { ca, ttl }
    }
}

impl CaClient for LocalCa {
    fn sign(&self, csr_pem: String) -> BoxFuture<'_, Result<Vec<String>, String>> {
        Box::pin(async move {
            let request =
                weft_hbone::CertificateRequest::from_pem(&csr_pem).map_err(|e| e.to_string())?;
            self.ca.sign(&request, self.ttl).map_err(|e| e.to_string())
        })
    }
}

/// The controller's CA over gRPC.
pub struct GrpcCa {
    client: weft_api::ca::certificate_authority_client::CertificateAuthorityClient<
        tonic::transport::Channel,
    >,
    token: crate::config_client::TokenSource,
    node: String,
}

impl GrpcCa {
    pub fn new(
        channel: tonic::transport::Channel,
        token: crate::config_client::TokenSource,
        node: String,
    ) -> Self {
        GrpcCa {
            client: weft_api::ca::certificate_authority_client::CertificateAuthorityClient::new(
                channel,
            ),
            token,
            node,
        }
    }
}

impl CaClient for GrpcCa {
    fn sign(&self, csr_pem: String) -> BoxFuture<'_, Result<Vec<String>, String>> {
        Box::pin(async move {
            let mut request = tonic::Request::new(weft_api::ca::CreateCertificateRequest {
                csr_pem,
                node: self.node.clone(),
                ttl_seconds: 0,
            });
            self.token
                .authorize(request.metadata_mut())
                .map_err(|e| e.to_string())?;
            let response = self
                .client
                .clone()
                .create_certificate(request)
                .await
                .map_err(|status| format!("{}: {}", status.code(), status.message()))?;
            Ok(response.into_inner().cert_chain_pem)
        })
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum CertWaitError {
    #[error("no pod on this node has identity {0}")]
    NotLocal(String),
    #[error("no certificate for {identity} after {waited:?}: {reason}")]
    Timeout {
        identity: String,
        waited: Duration,
        reason: String,
    },
}

struct Entry {
    refs: usize,
    cert: watch::Sender<Option<Arc<WorkloadCertificate>>>,
    last_error: Arc<Mutex<Option<String>>>,
    stop: CancellationToken,
}

/// What the admin API shows per identity.
#[derive(Debug, Clone)]
pub struct CertStatus {
    pub identity: SpiffeId,
    pub cert: Option<Arc<WorkloadCertificate>>,
    pub last_error: Option<String>,
}

/// Fetches, caches and renews certificates by identity.
#[derive(Clone)]
pub struct CertManager {
    ca: Arc<dyn CaClient>,
    store: CertificateStore,
    entries: Arc<Mutex<HashMap<SpiffeId, Entry>>>,
    wait_limit: Duration,
}

const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl CertManager {
    pub fn new(ca: Arc<dyn CaClient>, wait_limit: Duration) -> Self {
        CertManager {
            ca,
            store: CertificateStore::default(),
            entries: Arc::default(),
            wait_limit,
        }
    }

    /// A pod with `identity` arrived: make sure its certificate is fetched.
    pub fn want(&self, identity: &SpiffeId) {
        let mut entries = self.entries.lock();
        let entry = entries.entry(identity.clone()).or_insert_with(|| {
            let entry = Entry {
                refs: 0,
                cert: watch::channel(None).0,
                last_error: Arc::default(),
                stop: CancellationToken::new(),
            };
            self.spawn_fetcher(identity.clone(), &entry);
            entry
        });
        entry.refs += 1;
    }

    /// A pod with `identity` left; the last one stops renewal.
    pub fn release(&self, identity: &SpiffeId) {
        let mut entries = self.entries.lock();
        if let Some(entry) = entries.get_mut(identity) {
            entry.refs = entry.refs.saturating_sub(1);
            if entry.refs == 0 {
                entry.stop.cancel();
                entries.remove(identity);
                self.store.remove(identity);
            }
        }
    }

    /// The current certificate for `identity`, waiting (bounded) for the
    /// first one. Only identities of pods on this node (see [`Self::want`])
    /// are fetched: an identity no local pod has any more is refused rather
    /// than fetched again, or a connection racing a pod's removal (or a pod
    /// handed over again with another service account) would keep asking
    /// the CA for it forever.
    pub async fn get(
        &self,
        identity: &SpiffeId,
    ) -> Result<Arc<WorkloadCertificate>, CertWaitError> {
        if let Some(cert) = self.store.get_valid(identity, SystemTime::now()) {
            return Ok(cert);
        }
        let (mut rx, last_error) = {
            let entries = self.entries.lock();
            let Some(entry) = entries.get(identity) else {
                return Err(CertWaitError::NotLocal(identity.to_string()));
            };
            (entry.cert.subscribe(), entry.last_error.clone())
        };
        let wait = rx.wait_for(|c| c.as_ref().is_some_and(|c| !c.is_expired(SystemTime::now())));
        match tokio::time::timeout(self.wait_limit, wait).await {
            Ok(Ok(cert)) => cert
                .clone()
                .ok_or_else(|| self.timeout(identity, &last_error)),
            _ => Err(self.timeout(identity, &last_error)),
        }
    }

    fn timeout(&self, identity: &SpiffeId, last_error: &Mutex<Option<String>>) -> CertWaitError {
        CertWaitError::Timeout {
            identity: identity.to_string(),
            waited: self.wait_limit,
            reason: last_error
                .lock()
                .clone()
                .unwrap_or_else(|| "the CA has not answered yet".into()),
        }
    }

    /// Every wanted identity and what we hold for it.
    pub fn status(&self) -> Vec<CertStatus> {
        let entries = self.entries.lock();
        let mut out: Vec<CertStatus> = entries
            .iter()
            .map(|(id, e)| CertStatus {
                identity: id.clone(),
                cert: self.store.get(id),
                last_error: e.last_error.lock().clone(),
            })
            .collect();
        out.sort_by(|a, b| a.identity.cmp(&b.identity));
        out
    }

    fn spawn_fetcher(&self, identity: SpiffeId, entry: &Entry) {
        let ca = self.ca.clone();
        let store = self.store.clone();
        let tx = entry.cert.clone();
        let last_error = entry.last_error.clone();
        let stop = entry.stop.clone();
        tokio::spawn(async move {
            let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
            loop {
                let wait = match fetch(&*ca, &identity).await {
                    Ok(cert) => {
                        info!(%identity, serial = cert.serial(), "certificate issued");
                        let renew_in = cert
                            .renew_at()
                            .duration_since(SystemTime::now())
                            .unwrap_or(Duration::ZERO);
                        let cert = store.insert(cert);
                        tx.send_replace(Some(cert));
                        *last_error.lock() = None;
                        backoff.reset();
                        renew_in.max(MIN_BACKOFF)
                    }
                    Err(e) => {
                        let wait = backoff.next_delay();
                        warn!(%identity, error = %e, retry_in = ?wait, "certificate request failed");
                        *last_error.lock() = Some(e);
                        wait
                    }
                };
                tokio::select! {
                    _ = stop.cancelled() => {
                        debug!(%identity, "no local pod needs this identity any more");
                        return;
                    }
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        });
    }
}

async fn fetch(ca: &dyn CaClient, identity: &SpiffeId) -> Result<WorkloadCertificate, String> {
    let (csr, key) = generate_csr(identity).map_err(|e| e.to_string())?;
    let chain = ca.sign(csr).await?;
    let cert =
        WorkloadCertificate::from_pem(&chain, &key.serialize_pem()).map_err(|e| e.to_string())?;
    if cert.identity() != identity {
        return Err(format!(
            "the CA issued {} instead of {identity}",
            cert.identity()
        ));
    }
    Ok(cert)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A CA that fails the first `fail` requests.
    struct Flaky {
        ca: LocalCa,
        fail: usize,
        calls: AtomicUsize,
    }

    impl CaClient for Flaky {
        fn sign(&self, csr: String) -> BoxFuture<'_, Result<Vec<String>, String>> {
            Box::pin(async move {
                if self.calls.fetch_add(1, Ordering::SeqCst) < self.fail {
                    return Err("unavailable".into());
                }
                self.ca.sign(csr).await
            })
        }
    }

    fn flaky(fail: usize) -> Arc<Flaky> {
        let ca =
            CertificateAuthority::generate("cluster.local", Duration::from_secs(3600)).unwrap();
        Arc::new(Flaky {
            ca: LocalCa::new(ca, Duration::from_secs(600)),
            fail,
            calls: AtomicUsize::new(0),
        })
    }

    #[tokio::test]
    async fn waits_for_the_first_certificate_through_failures() {
        let ca = flaky(2);
        let manager = CertManager::new(ca.clone(), Duration::from_secs(10));
        let id: SpiffeId = "spiffe://cluster.local/ns/a/sa/b".parse().unwrap();
        manager.want(&id);
        let cert = manager.get(&id).await.expect("issued after retries");
        assert_eq!(cert.identity(), &id);
        assert_eq!(ca.calls.load(Ordering::SeqCst), 3);
        let status = manager.status();
        assert_eq!(status.len(), 1);
        assert!(status[0].cert.is_some() && status[0].last_error.is_none());
    }

    #[tokio::test]
    async fn waiting_is_bounded_and_says_why() {
        let manager = CertManager::new(flaky(usize::MAX), Duration::from_millis(300));
        let id: SpiffeId = "spiffe://cluster.local/ns/a/sa/b".parse().unwrap();
        manager.want(&id);
        let err = manager.get(&id).await.unwrap_err();
        assert!(err.to_string().contains("unavailable"), "{err}");
    }

    #[tokio::test]
    async fn identities_of_no_local_pod_are_not_fetched() {
        let ca = flaky(0);
        let manager = CertManager::new(ca.clone(), Duration::from_secs(5));
        let gone: SpiffeId = "spiffe://cluster.local/ns/a/sa/default".parse().unwrap();
        let err = manager.get(&gone).await.unwrap_err();
        assert!(matches!(err, CertWaitError::NotLocal(_)), "{err}");
        assert_eq!(ca.calls.load(Ordering::SeqCst), 0);
        assert!(manager.status().is_empty());
    }

    #[tokio::test]
    async fn the_last_release_forgets_the_identity() {
        let manager = CertManager::new(flaky(0), Duration::from_secs(5));
        let id: SpiffeId = "spiffe://cluster.local/ns/a/sa/b".parse().unwrap();
        manager.want(&id);
        manager.want(&id);
        manager.get(&id).await.unwrap();
        manager.release(&id);
        assert_eq!(manager.status().len(), 1);
        manager.release(&id);
        assert!(manager.status().is_empty());
    }
}
