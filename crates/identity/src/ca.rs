//! Certificate authority primitives: a root (ECDSA P-256), CSR validation, and
//! signing X.509-SVIDs exactly as docs/design.md §5 says: one URI SAN, `cA=false`,
//! keyUsage digitalSignature (critical), EKU serverAuth + clientAuth.
//!
//! The CA decides what goes into a certificate; the CSR only contributes its
//! public key and the one SPIFFE ID it asks for, and a CSR that asks for
//! anything else is refused rather than trimmed, so a misconfigured client
//! finds out at once.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
use x509_parser::prelude::*;

use crate::certs::WorkloadCertificate;
use crate::identity::{IdentityError, SpiffeId};

/// The default lifetime of a workload certificate.
pub const DEFAULT_SVID_TTL: Duration = Duration::from_secs(24 * 3600);
/// The default lifetime of a generated root.
pub const DEFAULT_ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Certificates start a little in the past so that peers whose clocks lag
/// slightly do not see them as not-yet-valid.
const BACKDATE: Duration = Duration::from_secs(5 * 60);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("root certificate: {0}")]
    Root(String),
    #[error("root key: {0}")]
    RootKey(String),
    #[error("signing failed: {0}")]
    Sign(#[from] rcgen::Error),
    #[error("certificate request refused: {0}")]
    Csr(#[from] CsrError),
    #[error("invalid identity: {0}")]
    Identity(#[from] IdentityError),
    #[error("this CA signs for trust domain {ours:?}, not {asked:?}")]
    TrustDomain { ours: String, asked: String },
    #[error("lifetime {0:?} is out of range")]
    Lifetime(Duration),
}

/// Why a CSR was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    #[error("not a PEM CERTIFICATE REQUEST: {0}")]
    Pem(String),
    #[error("malformed PKCS#10 request: {0}")]
    Der(String),
    #[error("the request's signature does not verify")]
    Signature,
    #[error("the key must be ECDSA P-256, got {0}")]
    KeyAlgorithm(String),
    #[error(
        "the request must carry exactly one subject alternative name, the SPIFFE ID; it has {0}"
    )]
    SanCount(usize),
    #[error("the subject alternative name must be a URI, got {0}")]
    SanKind(String),
    #[error("the URI SAN is not a valid SPIFFE ID: {0}")]
    Identity(#[from] IdentityError),
    #[error("the request asks for a CA certificate")]
    AsksForCa,
    #[error("the request asks for extension {0}, which the CA does not grant")]
    Extension(String),
    #[error(
        "the request asks for key usage or extended key usage beyond digitalSignature, serverAuth, clientAuth"
    )]
    Usage,
}

/// A validated certificate signing request: a proof-of-possession-checked
/// public key and the single identity it asks for.
#[derive(Debug)]
pub struct CertificateRequest {
    identity: SpiffeId,
    params: CertificateSigningRequestParams,
}

impl CertificateRequest {
    pub fn from_pem(pem: &str) -> Result<Self, CsrError> {
        let der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| CsrError::Pem(e.to_string()))?;
        Self::from_der(&der)
    }

    pub fn from_der(der: &CertificateSigningRequestDer<'_>) -> Result<Self, CsrError> {
        let (rest, csr) = X509CertificationRequest::from_der(der.as_ref())
            .map_err(|e| CsrError::Der(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CsrError::Der(format!("{} trailing bytes", rest.len())));
        }
        csr.verify_signature().map_err(|_| CsrError::Signature)?;
        check_key_is_p256(&csr.certification_request_info.subject_pki)?;
        let identity = requested_identity(&csr)?;
        // rcgen re-parses the request to give us a public key it can sign for.
        let params = CertificateSigningRequestParams::from_der(der)
            .map_err(|e| CsrError::Der(e.to_string()))?;
        Ok(CertificateRequest { identity, params })
    }

    /// The SPIFFE ID the request asks for.
    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }
}

fn check_key_is_p256(spki: &SubjectPublicKeyInfo<'_>) -> Result<(), CsrError> {
    let alg = &spki.algorithm;
    let is_ec = alg.algorithm == x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY;
    let curve = alg
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|oid| oid.to_id_string());
    if is_ec && curve.as_deref() == Some("1.2.840.10045.3.1.7") {
        Ok(())
    } else {
        Err(CsrError::KeyAlgorithm(match curve {
            Some(curve) if is_ec => format!("EC curve {curve}"),
            _ => alg.algorithm.to_id_string(),
        }))
    }
}

fn requested_identity(csr: &X509CertificationRequest<'_>) -> Result<SpiffeId, CsrError> {
    let mut identity = None;
    for ext in csr.requested_extensions().into_iter().flatten() {
        match ext {
            ParsedExtension::SubjectAlternativeName(san) => {
                if san.general_names.len() != 1 || identity.is_some() {
                    return Err(CsrError::SanCount(san.general_names.len()));
                }
                identity = Some(match &san.general_names[0] {
                    GeneralName::URI(uri) => uri.parse::<SpiffeId>()?,
                    other => return Err(CsrError::SanKind(general_name_kind(other))),
                });
            }
            ParsedExtension::BasicConstraints(bc) if bc.ca => return Err(CsrError::AsksForCa),
            ParsedExtension::BasicConstraints(_) => {}
            ParsedExtension::KeyUsage(ku) => {
                if ku.flags & !1 != 0 {
                    return Err(CsrError::Usage);
                }
            }
            ParsedExtension::ExtendedKeyUsage(eku) => {
                let extra = eku.any
                    || eku.code_signing
                    || eku.email_protection
                    || eku.time_stamping
                    || eku.ocsp_signing
                    || !eku.other.is_empty();
                if extra {
                    return Err(CsrError::Usage);
                }
            }
            other => return Err(CsrError::Extension(format!("{other:?}"))),
        }
    }
    identity.ok_or(CsrError::SanCount(0))
}

fn general_name_kind(name: &GeneralName<'_>) -> String {
    match name {
        GeneralName::DNSName(d) => format!("DNS name {d:?}"),
        GeneralName::IPAddress(_) => "an IP address".into(),
        GeneralName::RFC822Name(e) => format!("email {e:?}"),
        other => format!("{other}"),
    }
}

/// Creates a fresh P-256 key and a CSR for `identity`; the client side of
/// `CreateCertificate`.
pub fn generate_csr(identity: &SpiffeId) -> Result<(String, KeyPair), CaError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![spiffe_san(identity)?];
    let csr = params.serialize_request(&key)?;
    Ok((csr.pem()?, key))
}

fn spiffe_san(identity: &SpiffeId) -> Result<SanType, rcgen::Error> {
    Ok(SanType::URI(identity.to_string().try_into()?))
}

/// The signer. Holds the root key; one per controller.
pub struct CertificateAuthority {
    trust_domain: String,
    root_pem: String,
    root_der: CertificateDer<'static>,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Generates a new self-signed ECDSA P-256 root for `trust_domain`.
    pub fn generate(trust_domain: &str, lifetime: Duration) -> Result<Self, CaError> {
        // Validates the trust domain with the same rules as identities.
        SpiffeId::new(trust_domain, "x", "x")?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "weft");
        dn.push(DnType::CommonName, format!("weft root CA ({trust_domain})"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.subject_alt_names =
            vec![SanType::URI(format!("spiffe://{trust_domain}").try_into()?)];
        let (not_before, not_after) = validity(lifetime)?;
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        let root_pem = cert.pem();
        let key_pem = key.serialize_pem();
        Self::from_pem(&root_pem, &key_pem, trust_domain)
    }

    /// Loads a root from its PEM certificate and PKCS#8 PEM key, for the
    /// configured `trust_domain`. Roots from existing PKIs carry no
    /// `spiffe://` URI SAN, so the trust domain comes from configuration;
    /// a root that does name one must name this one.
    pub fn from_pem(cert_pem: &str, key_pem: &str, trust_domain: &str) -> Result<Self, CaError> {
        SpiffeId::new(trust_domain, "x", "x")?;
        let root_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| CaError::Root(e.to_string()))?;
        let (_, parsed) =
            X509Certificate::from_der(&root_der).map_err(|e| CaError::Root(e.to_string()))?;
        if !parsed.is_ca() {
            return Err(CaError::Root("not a CA certificate".into()));
        }
        let named = parsed
            .subject_alternative_name()
            .ok()
            .flatten()
            .and_then(|san| {
                san.value.general_names.iter().find_map(|n| match n {
                    GeneralName::URI(u) => u.strip_prefix("spiffe://").map(str::to_owned),
                    _ => None,
                })
            });
        if let Some(named) = named
            && named != trust_domain
        {
            return Err(CaError::Root(format!(
                "the root is for trust domain {named:?}, not the configured {trust_domain:?}"
            )));
        }
        let trust_domain = trust_domain.to_owned();
        let key = KeyPair::from_pem(key_pem).map_err(|e| CaError::RootKey(e.to_string()))?;
        if key.public_key_raw() != parsed.public_key().subject_public_key.data.as_ref() {
            return Err(CaError::RootKey(
                "does not match the root certificate".into(),
            ));
        }
        let issuer = Issuer::from_ca_cert_der(&root_der, key)?;
        Ok(CertificateAuthority {
            trust_domain,
            root_pem: cert_pem.trim().to_owned() + "\n",
            root_der: root_der.into_owned(),
            key_pem: key_pem.to_owned(),
            issuer,
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    pub fn root_der(&self) -> &CertificateDer<'static> {
        &self.root_der
    }

    /// The root's private key, for storing it (Secret or file).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Signs a validated CSR. Returns the PEM chain: leaf, then root.
    /// The caller has already decided the requester may hold this identity.
    pub fn sign(
        &self,
        request: &CertificateRequest,
        ttl: Duration,
    ) -> Result<Vec<String>, CaError> {
        if request.identity.trust_domain() != self.trust_domain {
            return Err(CaError::TrustDomain {
                ours: self.trust_domain.clone(),
                asked: request.identity.trust_domain().to_owned(),
            });
        }
        let params = svid_params(&request.identity, ttl)?;
        let cert = params.signed_by(&request.params.public_key, &self.issuer)?;
        Ok(vec![cert.pem(), self.root_pem.clone()])
    }

    /// Generates a key and signs a certificate for `identity` in one step: for
    /// tests, the bench, and components that are their own CA client.
    pub fn issue(
        &self,
        identity: &SpiffeId,
        ttl: Duration,
    ) -> Result<WorkloadCertificate, CaError> {
        let (csr_pem, key) = generate_csr(identity)?;
        let request = CertificateRequest::from_pem(&csr_pem)?;
        let chain = self.sign(&request, ttl)?;
        WorkloadCertificate::from_pem(&chain, &key.serialize_pem())
            .map_err(|e| CaError::Root(format!("issued certificate does not parse: {e}")))
    }

    /// A TLS serving certificate with DNS/IP SANs (the controller's gRPC port),
    /// as PEM chain and PEM key.
    pub fn issue_serving(
        &self,
        dns_names: &[String],
        ips: &[IpAddr],
        ttl: Duration,
    ) -> Result<(Vec<String>, String), CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        if let Some(first) = dns_names.first() {
            params
                .distinguished_name
                .push(DnType::CommonName, first.clone());
        }
        for name in dns_names {
            params
                .subject_alt_names
                .push(SanType::DnsName(name.clone().try_into()?));
        }
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let (not_before, not_after) = validity(ttl)?;
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((vec![cert.pem(), self.root_pem.clone()], key.serialize_pem()))
    }
}

fn svid_params(identity: &SpiffeId, ttl: Duration) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    // Empty subject: the identity is the SAN, which rcgen then marks critical
    // as RFC 5280 requires.
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![spiffe_san(identity)?];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let (not_before, not_after) = validity(ttl)?;
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn validity(ttl: Duration) -> Result<(::time::OffsetDateTime, ::time::OffsetDateTime), CaError> {
    if ttl < Duration::from_secs(60) || ttl > Duration::from_secs(100 * 365 * 24 * 3600) {
        return Err(CaError::Lifetime(ttl));
    }
    let now = ::time::OffsetDateTime::from(SystemTime::now());
    Ok((now - BACKDATE, now + ttl))
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    // A positive 127-bit serial: clear the top bit so DER keeps it positive.
    rcgen_random(&mut bytes);
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

fn rcgen_random(out: &mut [u8]) {
    // The TLS provider's secure random; failure here means the OS RNG is gone.
    if crate::tls::provider().secure_random.fill(out).is_err() {
        // Fall back to time-derived bytes rather than panicking; serial
        // uniqueness is not a security property here.
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
            .to_le_bytes();
        for (o, n) in out.iter_mut().zip(nanos.iter().cycle()) {
            *o = *n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519};

    fn ca() -> CertificateAuthority {
        CertificateAuthority::generate("cluster.local", DEFAULT_ROOT_TTL).unwrap()
    }

    fn csr(
        alg: &'static rcgen::SignatureAlgorithm,
        edit: impl FnOnce(&mut CertificateParams),
    ) -> String {
        let key = KeyPair::generate_for(alg).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(
            "spiffe://cluster.local/ns/default/sa/web"
                .try_into()
                .unwrap(),
        )];
        edit(&mut params);
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    #[test]
    fn signs_an_svid_exactly_as_designed() {
        let ca = ca();
        let id: SpiffeId = "spiffe://cluster.local/ns/default/sa/web".parse().unwrap();
        let (pem, _key) = generate_csr(&id).unwrap();
        let request = CertificateRequest::from_pem(&pem).unwrap();
        assert_eq!(request.identity(), &id);
        let chain = ca.sign(&request, Duration::from_secs(3600)).unwrap();
        assert_eq!(chain.len(), 2);
        assert_eq!(chain[1].trim(), ca.root_pem().trim());

        let der = CertificateDer::from_pem_slice(chain[0].as_bytes()).unwrap();
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert_eq!(
            san.value.general_names,
            vec![GeneralName::URI("spiffe://cluster.local/ns/default/sa/web")]
        );
        let bc = cert.basic_constraints().unwrap().unwrap();
        assert!(!bc.value.ca);
        let ku = cert.key_usage().unwrap().unwrap();
        assert!(ku.critical, "keyUsage is critical");
        assert!(ku.value.digital_signature());
        assert!(!ku.value.key_cert_sign());
        let eku = cert.extended_key_usage().unwrap().unwrap();
        assert!(eku.value.server_auth && eku.value.client_auth);
        assert!(!eku.value.any && !eku.value.code_signing);
        let lifetime =
            cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert_eq!(lifetime, 3600 + BACKDATE.as_secs() as i64);
        // Issued by our root.
        assert_eq!(
            cert.issuer(),
            X509Certificate::from_der(ca.root_der())
                .unwrap()
                .1
                .subject()
        );
    }

    #[test]
    fn refuses_csrs_that_ask_for_anything_else() {
        type Case = (&'static str, String, fn(&CsrError) -> bool);
        let cases: Vec<Case> = vec![
            (
                "DNS SAN",
                csr(&PKCS_ECDSA_P256_SHA256, |p| {
                    p.subject_alt_names =
                        vec![SanType::DnsName("web.default.svc".try_into().unwrap())]
                }),
                |e| matches!(e, CsrError::SanKind(k) if k.contains("DNS")),
            ),
            (
                "two SANs",
                csr(&PKCS_ECDSA_P256_SHA256, |p| {
                    p.subject_alt_names.push(SanType::URI(
                        "spiffe://cluster.local/ns/default/sa/admin"
                            .try_into()
                            .unwrap(),
                    ))
                }),
                |e| matches!(e, CsrError::SanCount(2)),
            ),
            (
                "no SAN",
                csr(&PKCS_ECDSA_P256_SHA256, |p| p.subject_alt_names.clear()),
                |e| matches!(e, CsrError::SanCount(0)),
            ),
            (
                "not a SPIFFE URI",
                csr(&PKCS_ECDSA_P256_SHA256, |p| {
                    p.subject_alt_names =
                        vec![SanType::URI("https://example.com/x".try_into().unwrap())]
                }),
                |e| matches!(e, CsrError::Identity(_)),
            ),
            (
                "a CA",
                csr(&PKCS_ECDSA_P256_SHA256, |p| {
                    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained)
                }),
                |e| matches!(e, CsrError::AsksForCa),
            ),
            (
                "keyCertSign",
                csr(&PKCS_ECDSA_P256_SHA256, |p| {
                    p.key_usages = vec![KeyUsagePurpose::KeyCertSign]
                }),
                |e| matches!(e, CsrError::Usage),
            ),
            (
                "code signing",
                csr(&PKCS_ECDSA_P256_SHA256, |p| {
                    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning]
                }),
                |e| matches!(e, CsrError::Usage),
            ),
            ("P-384 key", csr(&PKCS_ECDSA_P384_SHA384, |_| {}), |e| {
                matches!(e, CsrError::KeyAlgorithm(_))
            }),
            ("Ed25519 key", csr(&PKCS_ED25519, |_| {}), |e| {
                matches!(e, CsrError::KeyAlgorithm(_))
            }),
            ("garbage", "hello".into(), |e| matches!(e, CsrError::Pem(_))),
        ];
        for (name, pem, expected) in cases {
            let err = CertificateRequest::from_pem(&pem).expect_err(name);
            assert!(expected(&err), "{name}: got {err:?}");
            assert!(!err.to_string().is_empty());
        }
    }

    #[test]
    fn refuses_a_tampered_csr() {
        let pem = csr(&PKCS_ECDSA_P256_SHA256, |_| {});
        let mut der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec();
        // Flip a byte inside the SAN (the identity asked for).
        let at = der
            .windows(3)
            .position(|w| w == b"web")
            .expect("identity in DER");
        der[at] = b'x';
        let err = CertificateRequest::from_der(&der.into()).unwrap_err();
        assert_eq!(err, CsrError::Signature);
    }

    #[test]
    fn refuses_another_trust_domain_and_bad_lifetimes() {
        let ca = ca();
        let other: SpiffeId = "spiffe://other.local/ns/a/sa/b".parse().unwrap();
        let (pem, _) = generate_csr(&other).unwrap();
        let request = CertificateRequest::from_pem(&pem).unwrap();
        assert!(matches!(
            ca.sign(&request, DEFAULT_SVID_TTL),
            Err(CaError::TrustDomain { .. })
        ));
        let id: SpiffeId = "spiffe://cluster.local/ns/a/sa/b".parse().unwrap();
        let (pem, _) = generate_csr(&id).unwrap();
        let request = CertificateRequest::from_pem(&pem).unwrap();
        assert!(matches!(
            ca.sign(&request, Duration::from_secs(1)),
            Err(CaError::Lifetime(_))
        ));
    }

    /// Wire compatibility: roots from existing PKIs carry no `spiffe://`
    /// SAN; the trust domain is configuration, and such a root signs and
    /// its leaves verify under a bundle of it.
    #[test]
    fn a_root_without_a_spiffe_san_is_used_for_the_configured_trust_domain() {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "Corp Root CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let root = params.self_signed(&key).unwrap();
        let ca = CertificateAuthority::from_pem(&root.pem(), &key.serialize_pem(), "corp.example")
            .expect("a root without a SPIFFE SAN");
        assert_eq!(ca.trust_domain(), "corp.example");
        let id: SpiffeId = "spiffe://corp.example/ns/a/sa/b".parse().unwrap();
        let leaf = ca.issue(&id, DEFAULT_SVID_TTL).expect("signs");
        let bundle =
            crate::certs::TrustBundle::from_pems("corp.example", &[root.pem()]).expect("bundle");
        let verified = crate::tls::verify_svid(
            &leaf.chain()[0],
            &[],
            &bundle,
            &crate::tls::provider().signature_verification_algorithms,
            webpki::KeyUsage::client_auth(),
            rustls::pki_types::UnixTime::now(),
        )
        .expect("the leaf verifies under the root");
        assert_eq!(verified, id);
    }

    #[test]
    fn a_stored_root_loads_back() {
        let ca = ca();
        let again =
            CertificateAuthority::from_pem(ca.root_pem(), ca.key_pem(), "cluster.local").unwrap();
        assert_eq!(again.trust_domain(), "cluster.local");
        let other = CertificateAuthority::generate("cluster.local", DEFAULT_ROOT_TTL).unwrap();
        assert!(matches!(
            CertificateAuthority::from_pem(ca.root_pem(), other.key_pem(), "cluster.local"),
            Err(CaError::RootKey(_))
        ));
        assert!(CertificateAuthority::from_pem("junk", ca.key_pem(), "cluster.local").is_err());
        // A root naming another trust domain is refused; the configured one
        // is what counts.
        let err = CertificateAuthority::from_pem(ca.root_pem(), ca.key_pem(), "example.org")
            .expect_err("another trust domain");
        assert!(
            err.to_string()
                .contains("\"cluster.local\", not the configured \"example.org\""),
            "{err}"
        );
    }
}

#[cfg(test)]
mod fuzz {
    //! Hostile input: arbitrary bytes and mangled requests never panic the
    //! CA's parser; they are refused with a reason.
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn arbitrary_der_is_refused_not_panicked(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = CertificateRequest::from_der(&bytes.into());
        }

        #[test]
        fn arbitrary_pem_is_refused_not_panicked(text in ".{0,512}") {
            let _ = CertificateRequest::from_pem(&text);
            let pem = format!("-----BEGIN CERTIFICATE REQUEST-----\n{text}\n-----END CERTIFICATE REQUEST-----\n");
            let _ = CertificateRequest::from_pem(&pem);
        }

        #[test]
        fn mangled_valid_requests_never_panic(at in 0usize..400, byte in any::<u8>()) {
            let id: SpiffeId = "spiffe://cluster.local/ns/a/sa/b".parse().unwrap();
            let (pem, _) = generate_csr(&id).unwrap();
            let der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes()).unwrap();
            let mut bytes = der.as_ref().to_vec();
            let i = at % bytes.len();
            bytes[i] = byte;
            if let Ok(request) = CertificateRequest::from_der(&bytes.into()) {
                // Whatever still parses must still be exactly one SPIFFE ID.
                prop_assert_eq!(request.identity().trust_domain(), "cluster.local");
            }
        }
    }
}
