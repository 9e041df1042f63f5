//! rustls configurations for HBONE: TLS 1.3 only, ALPN `h2`, AES-GCM suites,
//! post-quantum hybrid key exchange first, and peer verification by SPIFFE
//! ID instead of hostname.
//!
//! Both sides verify the peer's chain against the trust bundle. The client
//! then requires the server's SPIFFE ID to be the identity it expected; the
//! server requires a valid SPIFFE ID and hands it to policy. Refused: expired
//! certificates, another trust domain, more than one URI SAN, a CA certificate
//! used as a leaf, no SPIFFE SAN, more intermediate CAs than the root's own
//! pathLenConstraint allows.
//!
//! This module is the one place that chooses weft's crypto: the provider
//! (aws-lc-rs, the only one of rustls's providers with ML-KEM) and the key
//! exchange groups, for HBONE ([`provider`]) and for the rest of weft's TLS
//! ([`process_provider`]: the controller's gRPC server, the proxies' gRPC
//! client, the Kubernetes client). docs/design.md §4.

use std::sync::{Arc, LazyLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::aws_lc_rs;
use rustls::crypto::{CryptoProvider, SupportedKxGroup, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName,
    Error, PeerIncompatible, ServerConfig, SignatureScheme,
};
use x509_parser::prelude::*;

use crate::certs::{CertError, TrustBundle, WorkloadCertificate, spiffe_id_of};
use crate::identity::SpiffeId;

/// The ALPN protocol HBONE speaks.
pub const ALPN_H2: &[u8] = b"h2";

/// The key exchange groups weft offers, most preferred first. The hybrid
/// X25519MLKEM768 (ML-KEM-768 combined with X25519, as Istio's ztunnel, Go
/// and browsers offer it) keeps traffic recorded today from being decrypted
/// by a future quantum computer, and is no weaker than X25519 if ML-KEM
/// falls. X25519 and the NIST curves, what weft offered before, stay so that
/// peers without ML-KEM still connect: rustls sends an X25519 key share
/// beside the hybrid one, so such a peer costs no extra round trip.
pub static KX_GROUPS: &[&dyn SupportedKxGroup] = &[
    aws_lc_rs::kx_group::X25519MLKEM768,
    aws_lc_rs::kx_group::X25519,
    aws_lc_rs::kx_group::SECP256R1,
    aws_lc_rs::kx_group::SECP384R1,
];

/// The crypto provider of every HBONE connection (client and server, in
/// ztunnel and the waypoint): aws-lc-rs, restricted to the TLS 1.3 AES-GCM
/// suites, with [`KX_GROUPS`] (docs/design.md §4).
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: LazyLock<Arc<CryptoProvider>> = LazyLock::new(|| {
        Arc::new(CryptoProvider {
            cipher_suites: vec![
                aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256,
                aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384,
            ],
            kx_groups: KX_GROUPS.to_vec(),
            ..aws_lc_rs::default_provider()
        })
    });
    PROVIDER.clone()
}

/// The crypto provider of weft's other TLS: the controller's gRPC server
/// (CA and config stream), the proxies' client of it, the Kubernetes client.
/// aws-lc-rs's default suites and versions (API servers and tools may still
/// need TLS 1.2), with the same key exchange groups as HBONE.
pub fn process_provider() -> Arc<CryptoProvider> {
    static PROVIDER: LazyLock<Arc<CryptoProvider>> = LazyLock::new(|| {
        Arc::new(CryptoProvider {
            kx_groups: KX_GROUPS.to_vec(),
            ..aws_lc_rs::default_provider()
        })
    });
    PROVIDER.clone()
}

/// Makes [`process_provider`] the process default, which the libraries
/// that build their own rustls configs (tonic's client, kube's) use. Needed
/// where rustls is compiled with more than one provider (the benchmarks):
/// rustls then cannot choose one by itself. A provider installed before
/// (by an earlier call) is kept.
pub fn install_process_provider() {
    if CryptoProvider::get_default().is_none() {
        // Err only if another thread installed one in between: also fine.
        let _ = CryptoProvider::install_default(Arc::unwrap_or_clone(process_provider()));
    }
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
    client_config_with(provider(), cert, bundle, expected)
}

/// [`client_config`] with another provider: for tests of peers that offer
/// other groups, and the benchmark of providers.
pub fn client_config_with(
    provider: Arc<CryptoProvider>,
    cert: &WorkloadCertificate,
    bundle: &TrustBundle,
    expected: &SpiffeId,
) -> Result<Arc<ClientConfig>, TlsConfigError> {
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
    server_config_with(provider(), cert, bundle)
}

/// [`server_config`] with another provider (tests, benchmarks).
pub fn server_config_with(
    provider: Arc<CryptoProvider>,
    cert: &WorkloadCertificate,
    bundle: &TrustBundle,
) -> Result<Arc<ServerConfig>, TlsConfigError> {
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

/// Rewrites a TLS handshake error so it says which side refused what:
/// rustls prints certificate errors with `Debug`, which buries our refusal
/// reasons, and a peer's alert alone does not say whether the certificate
/// or the negotiation failed. The source of the result is a
/// [`HandshakeError`].
pub fn explain_handshake_error(err: std::io::Error) -> std::io::Error {
    let Some(tls) = err.get_ref().and_then(|e| e.downcast_ref::<Error>()) else {
        return err;
    };
    let explained = HandshakeError::from(tls.clone());
    std::io::Error::new(err.kind(), explained)
}

/// Why a TLS handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// We refused the peer's certificate.
    #[error("peer certificate refused: {0}")]
    PeerCertificateRefused(String),
    /// The peer's alert names a certificate problem: it refused ours.
    #[error("the peer refused our certificate (alert {0:?})")]
    OurCertificateRefused(AlertDescription),
    /// The peer's alert says it accepts none of the parameters we offered.
    /// rustls, BoringSSL and Go send `handshake_failure` when they share no
    /// key exchange group, cipher suite or signature scheme with the
    /// client (certificate problems have alerts of their own), and
    /// `insufficient_security` when they demand stronger ones.
    #[error(
        "the peer accepts none of the TLS parameters we offered (alert {alert:?}): it requires a key exchange group, cipher suite or signature scheme we do not offer; we offer {offered}"
    )]
    NoCommonParameters {
        alert: AlertDescription,
        offered: Offered,
    },
    /// The peer offered no key exchange group we accept.
    #[error("no key exchange group in common: the peer offered none of ours; we offer {0}")]
    NoCommonKeyExchange(Offered),
    /// The peer offered no cipher suite we accept.
    #[error("no cipher suite in common: the peer offered none of ours; we offer {0}")]
    NoCommonCipherSuite(Offered),
    /// No ALPN protocol in common (HBONE needs `h2`).
    #[error("no ALPN protocol in common: we speak h2")]
    NoCommonAlpn,
    /// The peer ended the handshake with another alert.
    #[error("the peer aborted the handshake (alert {0:?})")]
    PeerAborted(AlertDescription),
    /// Anything else rustls reports (a malformed or misbehaving peer).
    #[error("{0}")]
    Other(Error),
}

impl From<Error> for HandshakeError {
    fn from(err: Error) -> Self {
        use AlertDescription as A;
        match err {
            Error::InvalidCertificate(CertificateError::Other(other)) => {
                HandshakeError::PeerCertificateRefused(other.0.to_string())
            }
            Error::InvalidCertificate(e) => {
                HandshakeError::PeerCertificateRefused(format!("{e:?}"))
            }
            Error::AlertReceived(
                alert @ (A::BadCertificate
                | A::UnsupportedCertificate
                | A::CertificateRevoked
                | A::CertificateExpired
                | A::CertificateUnknown
                | A::UnknownCA
                | A::AccessDenied
                | A::CertificateRequired
                | A::DecryptError),
            ) => HandshakeError::OurCertificateRefused(alert),
            Error::AlertReceived(
                alert @ (A::HandshakeFailure | A::InsufficientSecurity | A::ProtocolVersion),
            ) => HandshakeError::NoCommonParameters {
                alert,
                offered: Offered,
            },
            Error::AlertReceived(A::NoApplicationProtocol) | Error::NoApplicationProtocol => {
                HandshakeError::NoCommonAlpn
            }
            Error::AlertReceived(alert) => HandshakeError::PeerAborted(alert),
            Error::PeerIncompatible(PeerIncompatible::NoKxGroupsInCommon) => {
                HandshakeError::NoCommonKeyExchange(Offered)
            }
            Error::PeerIncompatible(PeerIncompatible::NoCipherSuitesInCommon) => {
                HandshakeError::NoCommonCipherSuite(Offered)
            }
            other => HandshakeError::Other(other),
        }
    }
}

/// What weft's HBONE side of a handshake offers, for error messages.
#[derive(Debug)]
pub struct Offered;

impl std::fmt::Display for Offered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let provider = provider();
        let groups: Vec<String> = provider
            .kx_groups
            .iter()
            .map(|g| format!("{:?}", g.name()))
            .collect();
        let suites: Vec<String> = provider
            .cipher_suites
            .iter()
            .map(|s| format!("{:?}", s.suite()))
            .collect();
        write!(
            f,
            "TLS 1.3, key exchange {}, cipher suites {}",
            groups.join(", "),
            suites.join(", ")
        )
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn names(provider: &CryptoProvider) -> Vec<rustls::NamedGroup> {
        provider.kx_groups.iter().map(|g| g.name()).collect()
    }

    #[test]
    fn every_endpoint_prefers_the_hybrid_group_and_keeps_x25519() {
        use rustls::NamedGroup as G;
        let expected = [G::X25519MLKEM768, G::X25519, G::secp256r1, G::secp384r1];
        assert_eq!(names(&provider()), expected);
        assert_eq!(names(&process_provider()), expected);
    }

    #[test]
    fn alerts_are_told_apart_by_what_failed() {
        let text = |e: Error| HandshakeError::from(e).to_string();
        for alert in [
            AlertDescription::BadCertificate,
            AlertDescription::UnknownCA,
            AlertDescription::CertificateRequired,
        ] {
            let t = text(Error::AlertReceived(alert));
            assert!(t.starts_with("the peer refused our certificate"), "{t}");
        }
        for alert in [
            AlertDescription::HandshakeFailure,
            AlertDescription::InsufficientSecurity,
        ] {
            let t = text(Error::AlertReceived(alert));
            assert!(
                t.contains("accepts none of the TLS parameters we offered")
                    && t.contains("key exchange X25519MLKEM768, X25519, secp256r1, secp384r1")
                    && !t.contains("certificate"),
                "{t}"
            );
        }
        let t = text(Error::PeerIncompatible(
            PeerIncompatible::NoKxGroupsInCommon,
        ));
        assert!(t.starts_with("no key exchange group in common"), "{t}");
        let t = text(Error::PeerIncompatible(
            PeerIncompatible::NoCipherSuitesInCommon,
        ));
        assert!(t.starts_with("no cipher suite in common"), "{t}");
        let t = text(Error::InvalidCertificate(CertificateError::Expired));
        assert_eq!(t, "peer certificate refused: Expired");
    }
}
