//! Start-up steps the proxies share (ztunnel and the waypoint): reading the
//! files their flags name, a local CA from `--ca-dir`, and following a local
//! config file.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use weft_hbone::{CertificateAuthority, TrustBundle};

use crate::identity::LocalCa;
use crate::local_config::LocalConfigSource;
use crate::state::WorkloadStore;

/// Reads the file a flag names, saying which flag when it cannot.
pub fn read(path: Option<&Path>, what: &str) -> anyhow::Result<String> {
    let path = path.with_context(|| format!("{what}: no path given"))?;
    std::fs::read_to_string(path).with_context(|| format!("{what}: reading {}", path.display()))
}

/// Local mode's CA: `root-cert.pem` and `root-key.pem` in `dir`, which must
/// be for `trust_domain`; the proxy signs its own certificates with it.
pub fn local_ca(
    dir: &Path,
    trust_domain: &str,
    ttl: Duration,
) -> anyhow::Result<(LocalCa, TrustBundle)> {
    let cert = read(Some(&dir.join("root-cert.pem")), "CA root")?;
    let key = read(Some(&dir.join("root-key.pem")), "CA key")?;
    let ca = CertificateAuthority::from_pem(&cert, &key, trust_domain)
        .with_context(|| format!("the CA in {}", dir.display()))?;
    let trust = TrustBundle::from_pems(trust_domain, &[cert])?;
    Ok((LocalCa::new(ca, ttl), trust))
}

/// Loads the local config file into `store` and reloads it when it changes,
/// until `shutdown`. Returns the source as the admin API names it.
pub fn follow_config_file(
    path: &Path,
    store: &WorkloadStore,
    shutdown: &CancellationToken,
) -> anyhow::Result<String> {
    let local = LocalConfigSource {
        path: path.to_path_buf(),
        store: store.clone(),
        poll: Duration::from_millis(500),
    };
    local.load_initial()?;
    tokio::spawn(local.watch(shutdown.clone()));
    Ok(format!("file {}", path.display()))
}
