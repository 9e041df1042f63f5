//! Kubeconfig files, one per identity: the admin's, each control-plane
//! component's (client certificates) and ServiceAccounts' (bearer tokens).

use std::path::{Path, PathBuf};

use serde_json::json;

use super::pki::CertFiles;
use super::write_private;
use crate::error::{Error, Result};

/// How a kubeconfig's user proves who it is.
#[derive(Clone, Debug)]
pub enum Credentials {
    /// A client certificate signed by the control plane's CA.
    Certificate(CertFiles),
    /// A bearer token (a ServiceAccount's, from TokenRequest).
    Token(String),
}

/// Writes a kubeconfig for `server`, trusting `ca`, as `user`. JSON is YAML,
/// so every Kubernetes client reads it.
pub fn write(
    path: &Path,
    server: &str,
    ca: &Path,
    user: &str,
    credentials: &Credentials,
) -> Result<PathBuf> {
    let auth = match credentials {
        Credentials::Certificate(files) => json!({
            "client-certificate": files.cert,
            "client-key": files.key,
        }),
        Credentials::Token(token) => json!({ "token": token }),
    };
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "weft-e2e", "cluster": { "server": server, "certificate-authority": ca } }],
        "users": [{ "name": user, "user": auth }],
        "contexts": [{ "name": user, "context": { "cluster": "weft-e2e", "user": user } }],
        "current-context": user,
    });
    let text =
        serde_json::to_string_pretty(&config).map_err(|e| Error::decode("a kubeconfig", e))?;
    write_private(path, &text)?;
    Ok(path.to_path_buf())
}
