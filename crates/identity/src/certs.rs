//! Workload certificates (an identity's key and chain, with its expiry and
//! renewal time), the trust bundle (one or more roots of a trust domain), and
//! a store of certificates by identity.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls_pki_types::TrustAnchor;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::prelude::*;

use crate::identity::SpiffeId;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("no certificate in PEM input")]
    NoCertificate,
    #[error("bad PEM: {0}")]
    Pem(String),
    #[error("certificate does not parse: {0}")]
    Parse(String),
    #[error("private key: {0}")]
    Key(String),
    #[error("certificate has no SPIFFE URI SAN")]
    NoSpiffeId,
    #[error("certificate has {0} URI SANs; an X.509-SVID has exactly one")]
    ManyUris(usize),
    #[error("SPIFFE ID in certificate: {0}")]
    Identity(#[from] crate::identity::IdentityError),
    #[error("trust bundle for {trust_domain:?} is empty")]
    EmptyBundle { trust_domain: String },
    #[error("root is not usable as a trust anchor: {0}")]
    Anchor(String),
}

/// An identity's certificate chain and private key.
pub struct WorkloadCertificate {
    identity: SpiffeId,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    not_before: SystemTime,
    not_after: SystemTime,
    serial: String,
}

impl std::fmt::Debug for WorkloadCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadCertificate")
            .field("identity", &self.identity.to_string())
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl WorkloadCertificate {
    /// From the CA's answer (PEM certificates, leaf first) and the PEM key.
    pub fn from_pem(chain_pem: &[String], key_pem: &str) -> Result<Self, CertError> {
        let mut chain = Vec::new();
        for pem in chain_pem {
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                chain.push(cert.map_err(|e| CertError::Pem(e.to_string()))?);
            }
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| CertError::Key(e.to_string()))?;
        Self::from_der(chain, key)
    }

    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, CertError> {
        let leaf = chain.first().ok_or(CertError::NoCertificate)?;
        let (_, parsed) =
            X509Certificate::from_der(leaf).map_err(|e| CertError::Parse(e.to_string()))?;
        let identity = spiffe_id_of(&parsed)?;
        let validity = parsed.validity();
        let not_before = to_system_time(validity.not_before.timestamp());
        let not_after = to_system_time(validity.not_after.timestamp());
        let serial = parsed.raw_serial_as_string();
        Ok(WorkloadCertificate {
            identity,
            chain,
            key,
            not_before,
            not_after,
            serial,
        })
    }

    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    pub fn key(&self) -> &PrivateKeyDer<'static> {
        &self.key
    }

    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Colon-separated hex, as `openssl x509 -serial` would show it.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// Half-way through the certificate's lifetime.
    pub fn renew_at(&self) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or(Duration::ZERO);
        self.not_before + lifetime / 2
    }

    pub fn needs_renewal(&self, now: SystemTime) -> bool {
        now >= self.renew_at()
    }

    pub fn is_expired(&self, now: SystemTime) -> bool {
        now >= self.not_after
    }

    /// The private key as PKCS#8 PEM, for writing it to a file.
    pub fn key_pem(&self) -> String {
        to_pem("PRIVATE KEY", self.key.secret_der())
    }

    /// PEM of the chain, leaf first (for the admin API and `weftctl certs`).
    pub fn chain_pem(&self) -> Vec<String> {
        self.chain
            .iter()
            .map(|c| to_pem("CERTIFICATE", c))
            .collect()
    }
}

fn to_system_time(unix_secs: i64) -> SystemTime {
    match u64::try_from(unix_secs) {
        Ok(secs) => SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
        Err(_) => SystemTime::UNIX_EPOCH,
    }
}

/// The SPIFFE ID of a parsed X.509-SVID: exactly one URI SAN, and it must
/// parse. Other SAN kinds are tolerated (a DNS name does no harm), a second
/// URI is not: which one would be the identity?
pub(crate) fn spiffe_id_of(cert: &X509Certificate<'_>) -> Result<SpiffeId, CertError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| CertError::Parse(e.to_string()))?
        .ok_or(CertError::NoSpiffeId)?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [] => Err(CertError::NoSpiffeId),
        [uri] if uri.starts_with("spiffe://") => Ok(uri.parse()?),
        [_] => Err(CertError::NoSpiffeId),
        many => Err(CertError::ManyUris(many.len())),
    }
}

pub(crate) fn to_pem(label: &str, der: &[u8]) -> String {
    ::pem::encode(&::pem::Pem::new(label, der))
}

/// The roots trusted for one trust domain. During a root rotation it holds
/// both the old and the new root, so peers with either chain are accepted.
///
/// Only CA certificates (basicConstraints CA:TRUE) are accepted as roots, and
/// a root's pathLenConstraint is kept beside its anchor: webpki's trust anchor
/// is only a subject and a key, so the verifiers apply the root's own limit
/// through [`TrustBundle::check_path_len`].
#[derive(Clone)]
pub struct TrustBundle {
    trust_domain: String,
    roots: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
    /// Parallel to `roots`: each root's subject and pathLenConstraint.
    limits: Vec<RootLimits>,
}

#[derive(Debug, Clone)]
struct RootLimits {
    subject: String,
    /// `None`: no pathLenConstraint, any number of intermediate CAs.
    path_len: Option<u32>,
}

/// The subject and basicConstraints of a root, refusing a certificate that is
/// not a CA: trusting a leaf as an anchor would let it vouch for anything
/// signed with its key.
fn root_limits(root: &CertificateDer<'_>) -> Result<RootLimits, CertError> {
    let (_, parsed) =
        X509Certificate::from_der(root).map_err(|e| CertError::Parse(e.to_string()))?;
    let subject = parsed.subject().to_string();
    let constraints = parsed
        .basic_constraints()
        .map_err(|e| CertError::Anchor(format!("{subject}: basicConstraints: {e}")))?;
    match constraints {
        Some(bc) if bc.value.ca => Ok(RootLimits {
            subject,
            path_len: bc.value.path_len_constraint,
        }),
        Some(_) => Err(CertError::Anchor(format!(
            "{subject} is not a CA certificate (its basicConstraints say CA:FALSE)"
        ))),
        None => Err(CertError::Anchor(format!(
            "{subject} is not a CA certificate (it has no basicConstraints CA:TRUE)"
        ))),
    }
}

impl std::fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustBundle")
            .field("trust_domain", &self.trust_domain)
            .field("roots", &self.roots.len())
            .finish()
    }
}

impl TrustBundle {
    pub fn new(trust_domain: &str) -> Self {
        TrustBundle {
            trust_domain: trust_domain.to_owned(),
            roots: Vec::new(),
            anchors: Vec::new(),
            limits: Vec::new(),
        }
    }

    /// A bundle from PEM roots (each string may hold several certificates).
    pub fn from_pems<S: AsRef<str>>(trust_domain: &str, pems: &[S]) -> Result<Self, CertError> {
        let mut bundle = TrustBundle::new(trust_domain);
        for pem in pems {
            bundle.add_pem(pem.as_ref())?;
        }
        if bundle.roots.is_empty() {
            return Err(CertError::EmptyBundle {
                trust_domain: trust_domain.to_owned(),
            });
        }
        Ok(bundle)
    }

    pub fn add_pem(&mut self, pem: &str) -> Result<(), CertError> {
        let mut any = false;
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            self.add_der(cert.map_err(|e| CertError::Pem(e.to_string()))?)?;
            any = true;
        }
        if any {
            Ok(())
        } else {
            Err(CertError::NoCertificate)
        }
    }

    pub fn add_der(&mut self, root: CertificateDer<'static>) -> Result<(), CertError> {
        if self.roots.contains(&root) {
            return Ok(());
        }
        let limits = root_limits(&root)?;
        let anchor = webpki::anchor_from_trusted_cert(&root)
            .map_err(|e| CertError::Anchor(format!("{e:?}")))?
            .to_owned();
        self.roots.push(root);
        self.anchors.push(anchor);
        self.limits.push(limits);
        Ok(())
    }

    /// Drops a root (the end of a rotation).
    pub fn remove_der(&mut self, root: &CertificateDer<'_>) {
        if let Some(i) = self.roots.iter().position(|r| r.as_ref() == root.as_ref()) {
            self.roots.remove(i);
            self.anchors.remove(i);
            self.limits.remove(i);
        }
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    pub fn roots_pem(&self) -> Vec<String> {
        self.roots
            .iter()
            .map(|c| to_pem("CERTIFICATE", c))
            .collect()
    }

    pub(crate) fn anchors(&self) -> &[TrustAnchor<'static>] {
        &self.anchors
    }

    /// Applies the root's own pathLenConstraint to a path webpki verified up
    /// to `anchor` through `intermediates` intermediate CAs (webpki checks the
    /// intermediates' constraints, not the anchor's). The error is the reason,
    /// for the verifiers' refusal.
    pub(crate) fn check_path_len(
        &self,
        anchor: &TrustAnchor<'_>,
        intermediates: usize,
    ) -> Result<(), String> {
        let Some(limits) = self
            .anchors
            .iter()
            .position(|a| {
                a.subject == anchor.subject
                    && a.subject_public_key_info == anchor.subject_public_key_info
            })
            .and_then(|i| self.limits.get(i))
        else {
            return Err("the chain's trust anchor is not a root of the bundle".to_owned());
        };
        match limits.path_len {
            Some(allowed) if intermediates > usize::try_from(allowed).unwrap_or(usize::MAX) => {
                let plural = if intermediates == 1 { "" } else { "s" };
                Err(format!(
                    "chain has {intermediates} intermediate CA{plural} but root {} allows pathlen {allowed}",
                    limits.subject
                ))
            }
            _ => Ok(()),
        }
    }
}

/// Certificates by identity, shared between the task that fetches and renews
/// them and the proxy paths that use them.
#[derive(Default, Clone)]
pub struct CertificateStore {
    inner: Arc<RwLock<HashMap<SpiffeId, Arc<WorkloadCertificate>>>>,
}

impl CertificateStore {
    pub fn get(&self, identity: &SpiffeId) -> Option<Arc<WorkloadCertificate>> {
        self.read().get(identity).cloned()
    }

    /// A valid (unexpired) certificate for `identity`, if there is one.
    pub fn get_valid(
        &self,
        identity: &SpiffeId,
        now: SystemTime,
    ) -> Option<Arc<WorkloadCertificate>> {
        self.get(identity).filter(|c| !c.is_expired(now))
    }

    pub fn insert(&self, cert: WorkloadCertificate) -> Arc<WorkloadCertificate> {
        let cert = Arc::new(cert);
        let mut map = self.inner.write().unwrap_or_else(|e| e.into_inner());
        map.insert(cert.identity().clone(), cert.clone());
        cert
    }

    pub fn remove(&self, identity: &SpiffeId) {
        let mut map = self.inner.write().unwrap_or_else(|e| e.into_inner());
        map.remove(identity);
    }

    /// Identities whose certificate has reached half-life (or expired).
    pub fn due_for_renewal(&self, now: SystemTime) -> Vec<SpiffeId> {
        self.read()
            .values()
            .filter(|c| c.needs_renewal(now))
            .map(|c| c.identity().clone())
            .collect()
    }

    /// The earliest renewal time among held certificates.
    pub fn next_renewal(&self) -> Option<SystemTime> {
        self.read().values().map(|c| c.renew_at()).min()
    }

    pub fn all(&self) -> Vec<Arc<WorkloadCertificate>> {
        let mut all: Vec<_> = self.read().values().cloned().collect();
        all.sort_by(|a, b| a.identity().cmp(b.identity()));
        all
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<SpiffeId, Arc<WorkloadCertificate>>> {
        // A panic while holding the lock cannot leave the map half-updated
        // (insert/remove are single operations), so a poisoned lock is safe.
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::CertificateAuthority;

    #[test]
    fn renewal_is_at_half_life() {
        let ca =
            CertificateAuthority::generate("cluster.local", Duration::from_secs(86400)).unwrap();
        let id: SpiffeId = "spiffe://cluster.local/ns/a/sa/b".parse().unwrap();
        let cert = ca.issue(&id, Duration::from_secs(7200)).unwrap();
        let lifetime = cert.not_after().duration_since(cert.not_before()).unwrap();
        assert_eq!(cert.renew_at(), cert.not_before() + lifetime / 2);
        assert!(!cert.needs_renewal(cert.not_before()));
        assert!(cert.needs_renewal(cert.renew_at()));
        assert!(!cert.is_expired(cert.renew_at()));
        assert!(cert.is_expired(cert.not_after()));

        let store = CertificateStore::default();
        store.insert(cert);
        assert!(store.due_for_renewal(SystemTime::now()).is_empty());
        let later = SystemTime::now() + Duration::from_secs(3700);
        assert_eq!(store.due_for_renewal(later), vec![id.clone()]);
        assert!(store.get_valid(&id, SystemTime::now()).is_some());
        assert!(
            store
                .get_valid(&id, later + Duration::from_secs(7200))
                .is_none()
        );
    }

    #[test]
    fn bundle_holds_several_roots_once_each() {
        let a =
            CertificateAuthority::generate("cluster.local", Duration::from_secs(86400)).unwrap();
        let b =
            CertificateAuthority::generate("cluster.local", Duration::from_secs(86400)).unwrap();
        let mut bundle = TrustBundle::from_pems("cluster.local", &[a.root_pem()]).unwrap();
        bundle.add_pem(b.root_pem()).unwrap();
        bundle.add_pem(a.root_pem()).unwrap();
        assert_eq!(bundle.roots().len(), 2);
        bundle.remove_der(a.root_der());
        assert_eq!(bundle.roots(), std::slice::from_ref(b.root_der()));
        assert!(TrustBundle::from_pems::<&str>("cluster.local", &[]).is_err());
        assert!(matches!(
            bundle.add_pem("nope"),
            Err(CertError::NoCertificate)
        ));
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn certificate_and_bundle_parsers_never_panic(text in ".{0,512}", bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
            let _ = WorkloadCertificate::from_pem(std::slice::from_ref(&text), &text);
            let _ = TrustBundle::from_pems("cluster.local", &[text]);
            let _ = WorkloadCertificate::from_der(
                vec![CertificateDer::from(bytes.clone())],
                PrivateKeyDer::Pkcs8(bytes.into()),
            );
        }
    }
}
