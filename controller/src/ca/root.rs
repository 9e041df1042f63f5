//! Where the root lives: a Secret (Kubernetes) or two files (files mode).
//! Created on first start; later starts load it.

use std::path::{Path, PathBuf};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;
use kube::{Api, Client};
use weft_identity::CertificateAuthority;
use weft_identity::ca::{CaError, DEFAULT_ROOT_TTL};

/// The Secret keys and file names of the root.
pub const CERT_KEY: &str = "root-cert.pem";
/// See [`CERT_KEY`].
pub const KEY_KEY: &str = "root-key.pem";

/// Why the root could not be loaded or stored.
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    /// File I/O.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The stored root does not load, or a new one could not be made.
    #[error("root CA: {0}")]
    Ca(#[from] CaError),
    /// The Secret could not be read or written.
    #[error("root CA secret: {0}")]
    Kube(#[from] kube::Error),
    /// The Secret lacks a key.
    #[error("secret {0} lacks {1}")]
    Incomplete(String, &'static str),
}

/// Loads `<dir>/root-cert.pem` and `<dir>/root-key.pem`, or creates them.
pub fn load_or_create_files(
    dir: &Path,
    trust_domain: &str,
) -> Result<CertificateAuthority, RootError> {
    let cert_path = dir.join(CERT_KEY);
    let key_path = dir.join(KEY_KEY);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RootError::Io { path, source }
    };
    if cert_path.exists() {
        let cert = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
        let key = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
        return Ok(CertificateAuthority::from_pem(&cert, &key, trust_domain)?);
    }
    let ca = CertificateAuthority::generate(trust_domain, DEFAULT_ROOT_TTL)?;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    write_private(&key_path, ca.key_pem()).map_err(io(&key_path))?;
    std::fs::write(&cert_path, ca.root_pem()).map_err(io(&cert_path))?;
    tracing::info!("created root CA in {}", dir.display());
    Ok(ca)
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())
}

/// Loads the root from Secret `namespace/name`, or creates it. Two replicas
/// starting together race on create; the loser reads the winner's root.
pub async fn load_or_create_secret(
    client: Client,
    namespace: &str,
    name: &str,
    trust_domain: &str,
) -> Result<CertificateAuthority, RootError> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    if let Some(secret) = api.get_opt(name).await? {
        return from_secret(&secret, name, trust_domain);
    }
    let ca = CertificateAuthority::generate(trust_domain, DEFAULT_ROOT_TTL)?;
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            ..Default::default()
        },
        data: Some(
            [
                (
                    CERT_KEY.to_string(),
                    ByteString(ca.root_pem().as_bytes().to_vec()),
                ),
                (
                    KEY_KEY.to_string(),
                    ByteString(ca.key_pem().as_bytes().to_vec()),
                ),
            ]
            .into(),
        ),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!("created root CA in secret {namespace}/{name}");
            Ok(ca)
        }
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let secret = api.get(name).await?;
            from_secret(&secret, name, trust_domain)
        }
        Err(e) => Err(e.into()),
    }
}

fn from_secret(
    secret: &Secret,
    name: &str,
    trust_domain: &str,
) -> Result<CertificateAuthority, RootError> {
    let get = |key: &'static str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .ok_or_else(|| RootError::Incomplete(name.to_string(), key))
    };
    Ok(CertificateAuthority::from_pem(
        &get(CERT_KEY)?,
        &get(KEY_KEY)?,
        trust_domain,
    )?)
}
