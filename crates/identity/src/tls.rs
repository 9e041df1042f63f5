//! rustls configurations for HBONE: TLS 1.3 only, ALPN `h2`, AES-GCM suites,
//! and peer verification by SPIFFE ID instead of hostname.
//!
//! Both sides verify the peer's chain against the trust bundle. The client
//! then requires the server's SPIFFE ID to be the identity it expected; the
//! server requires a valid SPIFFE ID and hands it to policy. Refused: expired
//! certificates, another trust domain, more than one URI SAN, a CA certificate
//! used as a leaf, no SPIFFE SAN, more intermediate CAs than the root's own
//! pathLenConstraint allows.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, Error, ServerConfig,
    SignatureScheme,
};
use x509_parser::prelude::*;

use crate::certs::{CertError, TrustBundle, WorkloadCertificate, spiffe_id_of};
use crate::identity::SpiffeId;

/// The ALPN protocol HBONE speaks.
pub const ALPN_H2: &[u8] = b"h2";

/// The crypto provider weft uses everywhere: ring, restricted to the TLS 1.3
/// AES-GCM suites (docs/design.md §4).
pub fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::{cipher_suite, default_provider};
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS13_AES_256_GCM_SHA384,
        ],
        ..default_provider()
    })
}

#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("rustls: {0}")]
    Rustls(#[from] Error),
}

/// Client config for a connection from `cert`'s identity to a server that must
/// prove it is `expected`.
pub fn client_config(
    cert: &WorkloadCertificate,
    bundle: &TrustBundle,
    expected: &SpiffeId,
) -> Result<Arc<ClientConfig>, TlsConfigError> {
    let provider = provider();
    let verifier = Arc::new(SpiffeServerVerifier {
        bundle: bundle.clone(),
        expected: expected.clone(),
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(cert.chain().to_vec(), cert.key().clone_key())?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // Resumption would skip the peer-identity check on later connections to
    // the same address; identities change as pods come and go, so never.
    config.resumption = rustls::client::Resumption::disabled();
    config.enable_sni = false;
    Ok(Arc::new(config))
}

/// Server config presenting `cert` and requiring a client certificate that
/// chains to `bundle` and carries a SPIFFE ID of its trust domain.
pub fn server_config(
    cert: &WorkloadCertificate,
    bundle: &TrustBundle,
) -> Result<Arc<ServerConfig>, TlsConfigError> {
    let provider = provider();
    let verifier = Arc::new(SpiffeClientVerifier {
        bundle: bundle.clone(),
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(cert.chain().to_vec(), cert.key().clone_key())?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(Arc::new(config))
}

/// The SPIFFE ID of the peer of an established connection.
pub fn peer_identity(conn: &rustls::CommonState) -> Option<SpiffeId> {
    let leaf = conn.peer_certificates()?.first()?;
    let (_, parsed) = X509Certificate::from_der(leaf).ok()?;
    spiffe_id_of(&parsed).ok()
}

/// Verifies an X.509-SVID chain and returns its SPIFFE ID. Shared by both
/// verifiers so client and server refuse exactly the same certificates.
pub fn verify_svid(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    bundle: &TrustBundle,
    algorithms: &WebPkiSupportedAlgorithms,
    usage: webpki::KeyUsage,
    now: UnixTime,
) -> Result<SpiffeId, Error> {
    let (_, parsed) = X509Certificate::from_der(end_entity)
        .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
    // webpki would refuse a CA as an end entity too, but with a less useful
    // error; say exactly what was wrong.
    if parsed.is_ca() {
        return Err(refusal("a CA certificate was presented as a leaf"));
    }
    let identity = spiffe_id_of(&parsed).map_err(|e| match e {
        CertError::ManyUris(n) => refusal(&format!("leaf has {n} URI SANs, expected exactly one")),
        CertError::NoSpiffeId => refusal("leaf has no SPIFFE URI SAN"),
        other => refusal(&other.to_string()),
    })?;
    if identity.trust_domain() != bundle.trust_domain() {
        return Err(refusal(&format!(
            "peer {identity} is in trust domain {:?}, expected {:?}",
            identity.trust_domain(),
            bundle.trust_domain()
        )));
    }
    let ee = webpki::EndEntityCert::try_from(end_entity)
        .map_err(|e| Error::InvalidCertificate(webpki_error(e)))?;
    // webpki's trust anchor carries no basicConstraints, so it never applies
    // the root's pathLenConstraint: check each candidate path here. Refusing
    // from the callback (rather than after webpki returns) lets webpki try
    // another path, e.g. through another root of a rotating bundle.
    let anchor_refusal = std::cell::RefCell::new(None);
    let check_anchor = |path: &webpki::VerifiedPath<'_>| {
        bundle
            .check_path_len(path.anchor(), path.intermediate_certificates().count())
            .map_err(|reason| {
                *anchor_refusal.borrow_mut() = Some(reason);
                webpki::Error::PathLenConstraintViolated
            })
    };
    ee.verify_for_usage(
        algorithms.all,
        bundle.anchors(),
        intermediates,
        now,
        usage,
        None,
        Some(&check_anchor),
    )
    .map_err(|e| match (e, anchor_refusal.take()) {
        (webpki::Error::PathLenConstraintViolated, Some(reason)) => refusal(&reason),
        (e, _) => Error::InvalidCertificate(webpki_error(e)),
    })?;
    Ok(identity)
}

/// Rewrites a TLS handshake error so it reads as a sentence: rustls prints
/// certificate errors with `Debug`, which buries our refusal reasons.
pub fn explain_handshake_error(err: std::io::Error) -> std::io::Error {
    let Some(tls) = err.get_ref().and_then(|e| e.downcast_ref::<Error>()) else {
        return err;
    };
    let text = match tls {
        Error::InvalidCertificate(CertificateError::Other(other)) => {
            format!("peer certificate refused: {}", other.0)
        }
        Error::InvalidCertificate(e) => format!("peer certificate refused: {e:?}"),
        Error::AlertReceived(alert) => format!("the peer refused our certificate ({alert:?})"),
        other => other.to_string(),
    };
    std::io::Error::new(err.kind(), text)
}

fn refusal(reason: &str) -> Error {
    Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
        SvidRefused(reason.to_owned()),
    ))))
}

#[derive(Debug)]
struct SvidRefused(String);

impl std::fmt::Display for SvidRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SvidRefused {}

fn webpki_error(e: webpki::Error) -> CertificateError {
    use webpki::Error as W;
    match e {
        W::CertExpired { .. } => CertificateError::Expired,
        W::CertNotValidYet { .. } => CertificateError::NotValidYet,
        W::UnknownIssuer => CertificateError::UnknownIssuer,
        W::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        W::CaUsedAsEndEntity => CertificateError::Other(rustls::OtherError(Arc::new(SvidRefused(
            "a CA certificate was presented as a leaf".into(),
        )))),
        other => CertificateError::Other(rustls::OtherError(Arc::new(SvidRefused(format!(
            "{other:?}"
        ))))),
    }
}

#[derive(Debug)]
struct SpiffeServerVerifier {
    bundle: TrustBundle,
    expected: SpiffeId,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let identity = verify_svid(
            end_entity,
            intermediates,
            &self.bundle,
            &self.algorithms,
            webpki::KeyUsage::server_auth(),
            now,
        )?;
        if identity != self.expected {
            return Err(refusal(&format!(
                "server is {identity}, expected {}",
                self.expected
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        // The configs only enable TLS 1.3.
        Err(Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[derive(Debug)]
struct SpiffeClientVerifier {
    bundle: TrustBundle,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        verify_svid(
            end_entity,
            intermediates,
            &self.bundle,
            &self.algorithms,
            webpki::KeyUsage::client_auth(),
            now,
        )?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        Err(Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
