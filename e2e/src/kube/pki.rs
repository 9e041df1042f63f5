//! The control plane's certificates: one CA the harness makes per run, the
//! API server's serving certificate, a client certificate per component
//! identity, and the ServiceAccount token signing key. All ECDSA P-256,
//! valid for a day (a run lasts minutes).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use super::write_private;
use crate::error::{Error, Result};

const LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// A certificate and its key, written as PEM files.
#[derive(Clone, Debug)]
pub struct CertFiles {
    /// The certificate.
    pub cert: PathBuf,
    /// Its PKCS#8 key.
    pub key: PathBuf,
}

/// The run's control-plane CA.
pub struct Pki {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    ca: PathBuf,
}

fn sign_error(what: &str) -> impl FnOnce(rcgen::Error) -> Error + '_ {
    move |e| Error::Invalid(format!("making the {what} certificate: {e}"))
}

fn validity(params: &mut CertificateParams) {
    let now = std::time::SystemTime::now();
    // A minute of slack for clocks read at slightly different moments.
    params.not_before = (now - Duration::from_secs(60)).into();
    params.not_after = (now + LIFETIME).into();
}

impl Pki {
    /// A fresh CA in `dir` (created).
    pub fn create(dir: &Path) -> Result<Pki> {
        std::fs::create_dir_all(dir).map_err(Error::io(dir))?;
        let key =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(sign_error("CA"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "weft-e2e kubernetes CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params);
        let cert = params.self_signed(&key).map_err(sign_error("CA"))?;
        let ca = dir.join("ca.crt");
        write_private(&ca, &cert.pem())?;
        write_private(&dir.join("ca.key"), &key.serialize_pem())?;
        Ok(Pki {
            dir: dir.to_path_buf(),
            issuer: Issuer::new(params, key),
            ca,
        })
    }

    /// The CA certificate every client trusts and the API server checks
    /// client certificates against.
    pub fn ca(&self) -> &Path {
        &self.ca
    }

    /// The CA's key file (kube-controller-manager's CSR signer, if enabled).
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }

    fn issue(
        &self,
        file: &str,
        dn: DistinguishedName,
        sans: Vec<SanType>,
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<CertFiles> {
        let key =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(sign_error(file))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![usage];
        validity(&mut params);
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(sign_error(file))?;
        let files = CertFiles {
            cert: self.dir.join(format!("{file}.crt")),
            key: self.dir.join(format!("{file}.key")),
        };
        write_private(&files.cert, &cert.pem())?;
        write_private(&files.key, &key.serialize_pem())?;
        Ok(files)
    }

    /// A serving certificate for `dns` names and `ips`.
    pub fn server(&self, file: &str, dns: &[&str], ips: &[IpAddr]) -> Result<CertFiles> {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, file);
        let mut sans = Vec::new();
        for name in dns {
            sans.push(SanType::DnsName(
                (*name)
                    .try_into()
                    .map_err(|e| Error::Invalid(format!("DNS name {name:?}: {e}")))?,
            ));
        }
        sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        self.issue(file, dn, sans, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate for the user `user` in `groups`: how the API
    /// server names a component that authenticates by certificate.
    pub fn client(&self, file: &str, user: &str, groups: &[&str]) -> Result<CertFiles> {
        let mut dn = DistinguishedName::new();
        for group in groups {
            dn.push(DnType::OrganizationName, *group);
        }
        dn.push(DnType::CommonName, user);
        self.issue(file, dn, Vec::new(), ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// The ServiceAccount token signing key pair: the private key (signs)
    /// and the public key (verifies).
    pub fn service_account_key(&self) -> Result<CertFiles> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(sign_error("service-account"))?;
        let files = CertFiles {
            cert: self.dir.join("service-account.pub"),
            key: self.dir.join("service-account.key"),
        };
        write_private(&files.key, &key.serialize_pem())?;
        write_private(&files.cert, &key.public_key_pem())?;
        Ok(files)
    }
}
