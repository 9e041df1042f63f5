//! The controller process: wires the registry, pipeline, servers and (on
//! Kubernetes) the leader-only writers together.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::admin::{self, DebugState};
use crate::auth::{Authenticator, TokenDirectory, TokenReviewer};
use crate::ca::{CaService, root};
use crate::options::{Options, RegistryKind};
use crate::pipeline::{self, Debounce};
use crate::server::{self, ConfigServer, ConnectionLimits, ServerTls, incoming};
use crate::writers;
use weft_cluster::model::ModelConfig;
use weft_cluster::registry::{Registry, RegistryConfig};

/// Why the controller stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A flag is missing or wrong.
    #[error("configuration: {0}")]
    Config(String),
    /// The registry could not start.
    #[error(transparent)]
    Registry(#[from] weft_cluster::registry::RegistryError),
    /// The root CA could not be loaded or created.
    #[error(transparent)]
    Root(#[from] root::RootError),
    /// Bootstrap tokens could not be read.
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    /// The Kubernetes client could not be built.
    #[error("kubernetes client: {0}")]
    Kube(#[from] kube::Error),
    /// A listener could not be bound.
    #[error("bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The serving certificate could not be issued.
    #[error("serving certificate: {0}")]
    Serving(#[from] weft_identity::ca::CaError),
    /// The gRPC server failed.
    #[error("grpc server: {0}")]
    Grpc(#[from] server::ServeError),
}

async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener, RunError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::Bind { addr, source })
}

/// The audiences a proxy's token must carry; an empty flag value means the
/// API server's default audience.
pub fn token_audiences(options: &Options) -> Vec<String> {
    options
        .token_audiences
        .iter()
        .map(|a| a.trim())
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect()
}

/// The gRPC port's connection limits from the flags, lowered to fit the
/// open-file limit (a cap above it would not stop descriptor exhaustion).
fn connection_limits(options: &Options) -> ConnectionLimits {
    let asked = ConnectionLimits {
        handshake_timeout: Duration::from_secs(options.tls_handshake_timeout_seconds),
        max_pending_handshakes: options.max_pending_handshakes,
        max_pending_handshakes_per_source: options.max_pending_handshakes_per_source,
        max_connections: options.max_connections,
    };
    let Some(open_files) = incoming::open_file_limit() else {
        return asked;
    };
    let fitted = asked.fit_to_file_limit(open_files);
    if fitted != asked {
        tracing::warn!(
            open_files,
            max_connections = fitted.max_connections,
            max_pending_handshakes = fitted.max_pending_handshakes,
            "lowered the gRPC connection caps to fit the open-file limit; raise the limit \
             (ulimit -n) to serve more proxies"
        );
    }
    fitted
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    options: Options,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), RunError> {
    let required = |v: &Option<std::path::PathBuf>, flag: &str| {
        v.clone()
            .ok_or_else(|| RunError::Config(format!("{flag} is required with --registry files")))
    };
    if options.lease_grace_seconds >= options.lease_duration_seconds {
        return Err(RunError::Config(
            "--lease-grace-seconds must be less than --lease-duration-seconds".into(),
        ));
    }
    let (registry, ca, auth, client): (Registry, _, Arc<dyn Authenticator>, _) = match options
        .registry
    {
        RegistryKind::Files => {
            let dir = required(&options.manifests, "--manifests")?;
            let registry = Registry::files(dir, RegistryConfig::default()).await?;
            let ca = root::load_or_create_files(
                &required(&options.ca_dir, "--ca-dir")?,
                &options.trust_domain,
            )?;
            let tokens =
                TokenDirectory::open(&required(&options.bootstrap_tokens, "--bootstrap-tokens")?)?;
            (registry, ca, Arc::new(tokens), None)
        }
        RegistryKind::Kubernetes => {
            let client = kube::Client::try_default().await?;
            let registry = Registry::kubernetes(client.clone(), RegistryConfig::default());
            let ca = root::load_or_create_secret(
                client.clone(),
                &options.root_namespace,
                &options.ca_secret,
                &options.trust_domain,
            )
            .await?;
            let (ns, name) = options
                .ztunnel_service_account
                .split_once('/')
                .ok_or_else(|| {
                    RunError::Config("--ztunnel-service-account must be namespace/name".into())
                })?;
            let reviewer = TokenReviewer::new(
                client.clone(),
                (ns.to_string(), name.to_string()),
                token_audiences(&options),
            );
            (
                registry,
                ca,
                reviewer as Arc<dyn Authenticator>,
                Some(client),
            )
        }
    };
    let ca = Arc::new(ca);
    let states = registry.subscribe();
    let model_config = ModelConfig {
        trust_domain: options.trust_domain.clone(),
        cluster_domain: options.cluster_domain.clone(),
        root_namespace: options.root_namespace.clone(),
        roots_pem: vec![ca.root_pem().to_string()],
    };
    let debounce = Debounce {
        quiet: Duration::from_millis(options.debounce_ms),
        max_delay: Duration::from_millis(options.debounce_ms.saturating_mul(5).max(50)),
    };
    let (models, _pipeline) = pipeline::spawn(states.clone(), model_config, debounce);

    let config_server = ConfigServer::new(models.clone(), auth.clone())
        .with_concurrent_snapshots(options.concurrent_snapshots)
        .with_caller_limits(options.max_streams_per_caller, options.snapshots_per_caller)
        .with_cluster_state(states.clone());
    let subscribers = config_server.subscribers();
    let ca_service = CaService::new(
        ca.clone(),
        auth,
        states.clone(),
        Duration::from_secs(options.cert_ttl_seconds),
    );
    // The serving certificate lives as long as the process's usual lifetime
    // and is reissued on every start.
    let (chain_pem, key_pem) = ca.issue_serving(
        &options.serving_dns,
        &options.serving_ips,
        Duration::from_secs(365 * 24 * 3600),
    )?;

    let grpc = bind(options.grpc_addr).await?;
    let debug = bind(options.debug_addr).await?;
    tokio::spawn(admin::serve_debug(
        debug,
        DebugState {
            models: models.clone(),
            states: states.clone(),
            subscribers,
            replica: options.replica_name(),
        },
    ));
    if let Some(handle) = metrics {
        let listener = bind(options.metrics_addr).await?;
        let upkeep = handle.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                upkeep.run_upkeep();
            }
        });
        tokio::spawn(admin::serve_metrics(listener, handle, models.clone()));
    }
    let writers_stop = tokio_util::sync::CancellationToken::new();
    let writers = client.map(|client| {
        tokio::spawn(writers::run(
            client,
            options.clone(),
            models.clone(),
            states.clone(),
            ca.root_pem().to_string(),
            writers_stop.clone(),
        ))
    });
    tracing::info!(addr = %options.grpc_addr, "serving config stream and CA");
    server::serve_with(
        grpc,
        config_server,
        Some(ca_service),
        Some(ServerTls { chain_pem, key_pem }),
        connection_limits(&options),
        shutdown,
    )
    .await?;
    // Stop writing and hand the Lease over before exiting.
    writers_stop.cancel();
    if let Some(writers) = writers {
        let _ = writers.await;
    }
    drop(registry);
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::auth::CONTROLLER_AUDIENCE;

    #[test]
    fn tokens_must_be_for_weft_by_default() {
        let parse = |extra: &[&str]| {
            let mut args = vec!["weft-controller"];
            args.extend_from_slice(extra);
            token_audiences(&Options::parse_from(args))
        };
        assert_eq!(parse(&[]), vec![CONTROLLER_AUDIENCE.to_string()]);
        assert_eq!(parse(&["--token-audiences", "a,b"]), vec!["a", "b"]);
        // Spelled out: the API server's default audience.
        assert!(parse(&["--token-audiences", ""]).is_empty());
    }
}
