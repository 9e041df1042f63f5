//! Start-up steps the proxies share: where config and certificates come
//! from ([`start_sources`]: the controller's stream and CA, or a local file
//! and CA root), reading the files their flags name, and the metrics
//! recorder.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;
use weft_api::config::Subscribe;
use weft_hbone::{CertificateAuthority, TrustBundle};

use crate::certs::{CaClient, GrpcCa, LocalCa};
use crate::config_client::{ConfigClient, TokenSource, channel};
use crate::flags::ProxyFlags;
use crate::local_config::LocalConfigSource;
use crate::standard_metrics;
use crate::store::WorkloadStore;

/// Where a running proxy's config and certificates come from.
pub struct Sources {
    pub ca: Arc<dyn CaClient>,
    /// The roots to trust until the config stream brings its bundle.
    pub trust: TrustBundle,
    /// `controller <address>` or `file <path>`, as the admin API names it.
    pub source: String,
}

/// Starts filling `store` from the controller's stream (as `subscription`)
/// or from the local config file, and sets up the CA client, until
/// `shutdown`. `node` names the caller to the controller's CA.
pub fn start_sources(
    flags: &ProxyFlags,
    node: &str,
    store: &WorkloadStore,
    subscription: Subscribe,
    shutdown: &CancellationToken,
) -> anyhow::Result<Sources> {
    let (ca, trust, source): (Arc<dyn CaClient>, TrustBundle, String) =
        match (&flags.controller, &flags.ca_dir) {
            (Some(address), _) => {
                let root = read(flags.controller_ca.as_deref(), "--controller-ca")?;
                let token = TokenSource::new(flags.token_file.clone());
                let channel = channel(address, &root)
                    .with_context(|| format!("controller address {address}"))?;
                let client = ConfigClient {
                    channel: channel.clone(),
                    token: token.clone(),
                    store: store.clone(),
                };
                tokio::spawn(client.run(subscription, shutdown.clone()));
                // Until the config stream brings the bundle, trust the root
                // the controller itself is verified with.
                let trust = TrustBundle::from_pems(&flags.trust_domain, &[root])?;
                let ca = GrpcCa::new(channel, token, node.to_owned());
                (Arc::new(ca), trust, format!("controller {address}"))
            }
            (None, Some(dir)) => {
                let ttl = Duration::from_secs(flags.cert_ttl_seconds);
                let (ca, trust) = local_ca(dir, &flags.trust_domain, ttl)?;
                (Arc::new(ca), trust, String::new())
            }
            (None, None) => bail!("either --controller or --ca-dir is required"),
        };
    let source = match &flags.config_file {
        Some(path) => follow_config_file(path, store, shutdown)?,
        None => source,
    };
    Ok(Sources { ca, trust, source })
}

/// Installs the process's Prometheus recorder, with explicit buckets for
/// the named histograms (the rest get the exporter's summaries) and Istio's
/// for its request duration, and sets the metric names `flags` choose.
pub fn install_metrics(
    flags: &ProxyFlags,
    histograms: &[(&str, &[f64])],
) -> anyhow::Result<PrometheusHandle> {
    standard_metrics::configure(standard_metrics::Dialect {
        names: flags.metric_names,
        cluster: flags.cluster_id.clone(),
    });
    let mut builder = PrometheusBuilder::new();
    let istio = [(
        standard_metrics::ISTIO_REQUEST_DURATION,
        standard_metrics::ISTIO_DURATION_BUCKETS_MS,
    )];
    for (name, buckets) in histograms.iter().chain(&istio) {
        builder = builder
            .set_buckets_for_metric(Matcher::Full((*name).to_owned()), buckets)
            .with_context(|| format!("histogram buckets of {name}"))?;
    }
    builder
        .install_recorder()
        .context("installing the metrics recorder")
}

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

/// Raises the soft limit on open files to the hard one, and logs what it
/// did (`open files limit`, before and after) or why not. Every tunnel
/// holds a descriptor on each side, and a container inherits whatever soft
/// limit its runtime sets (often 1024 or a few tens of thousands), far
/// below what a node's proxy may hold.
pub fn raise_open_files_limit() {
    match raise_nofile() {
        Ok((before, after)) => tracing::info!(before, after, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
    }
}

fn raise_nofile() -> nix::Result<(u64, u64)> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok((soft, hard.max(soft)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_files_limit_is_raised_to_the_hard_limit() {
        use nix::sys::resource::{Resource, getrlimit, setrlimit};
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
        // Lower the soft limit first, so there is something to raise.
        setrlimit(Resource::RLIMIT_NOFILE, hard.min(512), hard).expect("lower");
        let (before, after) = raise_nofile().expect("raise");
        assert_eq!(before, hard.min(512));
        assert_eq!(after, hard);
        assert_eq!(
            getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit"),
            (hard, hard)
        );
    }
}
