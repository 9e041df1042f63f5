//! The trust anchor's own basicConstraints apply: a root with pathlen:0 may
//! sign leaves directly, but no chain through an intermediate CA verifies
//! under it, in either verifier (security finding 12 of issue 14).

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConnection, ServerConnection};
use weft_identity::certs::CertError;
use weft_identity::{SpiffeId, TrustBundle, WorkloadCertificate, tls};

const TD: &str = "cluster.local";

struct Ca {
    der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

fn key() -> KeyPair {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key")
}

fn params(cn: &str, is_ca: IsCa) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.is_ca = is_ca;
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::hours(1);
    params.use_authority_key_identifier_extension = true;
    params
}

fn root(cn: &str, constraint: BasicConstraints) -> Ca {
    let key = key();
    let params = params(cn, IsCa::Ca(constraint));
    let cert = params.self_signed(&key).expect("self-sign root");
    Ca {
        der: cert.der().clone(),
        issuer: Issuer::new(params, key),
    }
}

fn intermediate(parent: &Ca, cn: &str) -> Ca {
    let key = key();
    let params = params(cn, IsCa::Ca(BasicConstraints::Unconstrained));
    let cert = params.signed_by(&key, &parent.issuer).expect("sign CA");
    Ca {
        der: cert.der().clone(),
        issuer: Issuer::new(params, key),
    }
}

/// A SPIFFE leaf signed by `issuer`, its chain being `[leaf, ...above]`.
fn leaf(issuer: &Ca, above: &[&Ca], sa: &str) -> Arc<WorkloadCertificate> {
    let key = key();
    let mut params = params(sa, IsCa::ExplicitNoCa);
    params.distinguished_name = DistinguishedName::new();
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.subject_alt_names = vec![SanType::URI(
        id(sa).to_string().try_into().expect("ia5 string"),
    )];
    let cert = params.signed_by(&key, &issuer.issuer).expect("sign leaf");
    let mut chain = vec![cert.der().clone()];
    chain.extend(above.iter().map(|ca| ca.der.clone()));
    Arc::new(
        WorkloadCertificate::from_der(chain, PrivateKeyDer::Pkcs8(key.serialize_der().into()))
            .expect("workload certificate"),
    )
}

fn id(sa: &str) -> SpiffeId {
    SpiffeId::new(TD, "test", sa).expect("identity")
}

fn bundle(root: &Ca) -> TrustBundle {
    let mut bundle = TrustBundle::new(TD);
    bundle
        .add_der(root.der.clone())
        .expect("root is a trust anchor");
    bundle
}

/// Which side of the handshake refused, and the explained error.
#[derive(Debug)]
struct Refused {
    by: &'static str,
    message: String,
}

/// An in-memory TLS handshake between a client presenting `client_cert` and
/// trusting `client_trusts`, and a server presenting `server_cert` and
/// trusting `server_trusts`.
fn handshake(
    client_cert: &WorkloadCertificate,
    client_trusts: &TrustBundle,
    server_cert: &WorkloadCertificate,
    server_trusts: &TrustBundle,
) -> Result<(), Refused> {
    let client_config =
        tls::client_config(client_cert, client_trusts, server_cert.identity()).expect("client");
    let server_config = tls::server_config(server_cert, server_trusts).expect("server");
    let name = ServerName::try_from("weft.invalid").expect("server name");
    let mut client = ClientConnection::new(client_config, name).expect("client connection");
    let mut server = ServerConnection::new(server_config).expect("server connection");
    let refused = |by, e: rustls::Error| Refused {
        by,
        message: tls::explain_handshake_error(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            e,
        ))
        .to_string(),
    };
    for _ in 0..16 {
        let mut bytes = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut bytes).expect("client write");
        }
        let mut input = &bytes[..];
        while !input.is_empty() {
            server.read_tls(&mut input).expect("server read");
            server
                .process_new_packets()
                .map_err(|e| refused("server", e))?;
        }
        let mut bytes = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut bytes).expect("server write");
        }
        let mut input = &bytes[..];
        while !input.is_empty() {
            client.read_tls(&mut input).expect("client read");
            client
                .process_new_packets()
                .map_err(|e| refused("client", e))?;
        }
        if !client.is_handshaking() && !server.is_handshaking() {
            return Ok(());
        }
    }
    panic!("handshake did not finish");
}

#[test]
fn root_with_pathlen_0_refuses_a_chain_through_an_intermediate() {
    let strict = root("strict root", BasicConstraints::Constrained(0));
    let sub = intermediate(&strict, "sub CA");
    let through_sub = leaf(&sub, &[&sub], "through-sub");
    let strict_bundle = bundle(&strict);

    // A second, well-formed PKI for the other side of each handshake.
    let other = root("other root", BasicConstraints::Constrained(0));
    let other_leaf = leaf(&other, &[], "other");
    let other_bundle = bundle(&other);

    // The client's verifier: the server presents the chain.
    let err = handshake(&other_leaf, &strict_bundle, &through_sub, &other_bundle)
        .expect_err("client must refuse a chain the root's pathlen forbids");
    assert_eq!(err.by, "client", "{err:?}");
    assert!(
        err.message
            .contains("chain has 1 intermediate CA but root CN=strict root allows pathlen 0"),
        "{err:?}"
    );

    // The server's verifier: the client presents the chain.
    let err = handshake(&through_sub, &other_bundle, &other_leaf, &strict_bundle)
        .expect_err("server must refuse a chain the root's pathlen forbids");
    assert_eq!(err.by, "server", "{err:?}");
    assert!(
        err.message
            .contains("chain has 1 intermediate CA but root CN=strict root allows pathlen 0"),
        "{err:?}"
    );
}

#[test]
fn a_chain_through_an_intermediate_verifies_when_the_root_allows_it() {
    for constraint in [
        BasicConstraints::Constrained(1),
        BasicConstraints::Unconstrained,
    ] {
        let root = root("permissive root", constraint);
        let sub = intermediate(&root, "sub CA");
        let a = leaf(&sub, &[&sub], "a");
        let b = leaf(&sub, &[&sub, &root], "b");
        let trusted = bundle(&root);
        handshake(&a, &trusted, &b, &trusted).unwrap_or_else(|e| panic!("{constraint:?}: {e:?}"));
        handshake(&b, &trusted, &a, &trusted).unwrap_or_else(|e| panic!("{constraint:?}: {e:?}"));
    }
}

#[test]
fn root_with_pathlen_0_still_signs_leaves_directly() {
    let strict = root("strict root", BasicConstraints::Constrained(0));
    let a = leaf(&strict, &[], "a");
    let b = leaf(&strict, &[&strict], "b");
    let trusted = bundle(&strict);
    handshake(&a, &trusted, &b, &trusted).expect("direct chain verifies");
    handshake(&b, &trusted, &a, &trusted).expect("direct chain verifies");

    // The weft CA's own roots are pathlen:0 and issue leaves directly.
    let ca =
        weft_identity::CertificateAuthority::generate(TD, std::time::Duration::from_secs(3600))
            .expect("ca");
    let trusted = TrustBundle::from_pems(TD, &[ca.root_pem()]).expect("bundle");
    let a = ca
        .issue(&id("a"), std::time::Duration::from_secs(600))
        .expect("a");
    let b = ca
        .issue(&id("b"), std::time::Duration::from_secs(600))
        .expect("b");
    handshake(&a, &trusted, &b, &trusted).expect("weft CA chain verifies");
}

#[test]
fn a_certificate_that_is_not_a_ca_is_not_a_trust_anchor() {
    for is_ca in [IsCa::ExplicitNoCa, IsCa::NoCa] {
        let key = key();
        let params = params("not a CA", is_ca);
        let cert = params.self_signed(&key).expect("self-sign");
        let mut bundle = TrustBundle::new(TD);
        let err = bundle
            .add_der(cert.der().clone())
            .expect_err("a non-CA certificate must not become a root");
        assert!(matches!(err, CertError::Anchor(_)), "{is_ca:?}: {err:?}");
        assert!(
            err.to_string()
                .contains("CN=not a CA is not a CA certificate"),
            "{is_ca:?}: {err}"
        );
        assert!(bundle.roots().is_empty());
    }
}
