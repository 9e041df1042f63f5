//! A CA for tests: a fresh root for a trust domain (an hour's lifetime), its
//! trust bundle, workload certificates for any SPIFFE id, and certificates
//! crafted to be wrong (signed by the root but breaking the X.509-SVID
//! rules) for tests of the verifiers.

use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use weft_identity::{CertificateAuthority, SpiffeId, TrustBundle, WorkloadCertificate, tls};

/// The trust domain of tests that need only one.
pub const TRUST_DOMAIN: &str = "cluster.local";

/// How long the root and the certificates it issues live.
const LIFETIME: Duration = Duration::from_secs(3600);

/// `spiffe://cluster.local/ns/{ns}/sa/{sa}`.
pub fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new(TRUST_DOMAIN, ns, sa).expect("valid test identity")
}

/// A root CA and the trust bundle of just that root.
pub struct TestCa {
    pub ca: CertificateAuthority,
    pub bundle: TrustBundle,
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl TestCa {
    /// A CA for [`TRUST_DOMAIN`].
    pub fn new() -> Self {
        Self::for_domain(TRUST_DOMAIN)
    }

    pub fn for_domain(trust_domain: &str) -> Self {
        let ca = CertificateAuthority::generate(trust_domain, LIFETIME).expect("test root");
        let bundle = TrustBundle::from_pems(trust_domain, &[ca.root_pem()]).expect("bundle");
        TestCa { ca, bundle }
    }

    /// A workload certificate for `identity`, valid for an hour.
    pub fn issue(&self, identity: &SpiffeId) -> Arc<WorkloadCertificate> {
        Arc::new(self.ca.issue(identity, LIFETIME).expect("issue"))
    }

    pub fn root_pem(&self) -> &str {
        self.ca.root_pem()
    }

    pub fn key_pem(&self) -> &str {
        self.ca.key_pem()
    }

    /// Another `CertificateAuthority` with this root and key (it is not
    /// `Clone`), for code under test that takes one by value.
    pub fn copy(&self) -> CertificateAuthority {
        CertificateAuthority::from_pem(
            self.ca.root_pem(),
            self.ca.key_pem(),
            self.ca.trust_domain(),
        )
        .expect("copy of the test CA")
    }

    /// Signs arbitrary parameters with this CA's root, bypassing the CA's
    /// rules: for presenting certificates the verifiers must refuse.
    pub fn craft(&self, params: CertificateParams) -> Crafted {
        let root_key = KeyPair::from_pem(self.ca.key_pem()).expect("root key");
        let issuer = Issuer::from_ca_cert_pem(self.ca.root_pem(), root_key).expect("issuer");
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let cert = params.signed_by(&key, &issuer).expect("sign");
        Crafted {
            chain: vec![cert.der().clone(), self.ca.root_der().clone()],
            key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        }
    }
}

/// A certificate and key that may not be a valid X.509-SVID.
pub struct Crafted {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Crafted {
    /// As a workload certificate, for certificates that still carry one
    /// SPIFFE ID (expired, other trust domain).
    pub fn workload(&self) -> Arc<WorkloadCertificate> {
        Arc::new(
            WorkloadCertificate::from_der(self.chain.clone(), self.key.clone_key())
                .expect("crafted certificate has a SPIFFE ID"),
        )
    }

    /// A plain TLS server presenting this certificate, speaking h2, asking
    /// for no client certificate: the client's verifier is under test.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let mut config = rustls::ServerConfig::builder_with_provider(tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("tls13")
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .expect("server cert");
        config.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(config)
    }

    /// A plain TLS client presenting this certificate and trusting any
    /// server: the server's verifier is under test.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut config = rustls::ClientConfig::builder_with_provider(tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("tls13")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer))
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .expect("client cert");
        config.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(config)
    }
}

#[derive(Debug)]
struct AnyServer;

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        tls::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Parameters of a valid SVID for `uris`, to be spoiled by the test.
pub fn svid_params(uris: &[&str]) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = uris
        .iter()
        .map(|u| SanType::URI((*u).try_into().expect("ia5")))
        .collect();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::hours(1);
    params.use_authority_key_identifier_extension = true;
    params
}

/// Parameters of a CA certificate carrying `uri`, to be spoiled by the test.
pub fn ca_params(uri: &str) -> CertificateParams {
    let mut params = svid_params(&[uri]);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_certificates_its_bundle_trusts() {
        let ca = TestCa::new();
        let cert = ca.issue(&id("shop", "web"));
        assert_eq!(cert.identity(), &id("shop", "web"));
        assert_eq!(ca.copy().root_pem(), ca.root_pem());
        let other = TestCa::for_domain("corp.example");
        assert_ne!(other.root_pem(), ca.root_pem());
    }
}
