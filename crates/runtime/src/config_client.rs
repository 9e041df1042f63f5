//! The controller connection: one TLS gRPC channel for the config stream and
//! the CA, authenticated with a bearer token read from a file (a projected
//! ServiceAccount token in Kubernetes, a bootstrap token in local mode; read
//! on every call so rotation needs no restart).
//!
//! The config stream subscribes to what the proxy needs, applies each response
//! to the store and ACKs it, or NACKs it and keeps the last good config.
//! When the stream breaks it reconnects with backoff; the controller then
//! sends a full snapshot.

use std::path::PathBuf;
use std::time::Duration;

use crate::backoff::Backoff;
use tokio_util::sync::CancellationToken;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tracing::{info, warn};
use weft_api::config::{
    Ack, ConfigRequest, ConfigResponse, Nack, ResourceType, Subscribe,
    config_discovery_client::ConfigDiscoveryClient, config_request,
};

use crate::store::{ConfigUpdate, WorkloadStore};

/// Where the bearer token comes from.
#[derive(Debug, Clone)]
pub struct TokenSource {
    path: PathBuf,
}

impl TokenSource {
    pub fn new(path: PathBuf) -> Self {
        TokenSource { path }
    }

    pub fn authorize(&self, metadata: &mut MetadataMap) -> Result<(), String> {
        let token = std::fs::read_to_string(&self.path)
            .map_err(|e| format!("reading token {}: {e}", self.path.display()))?;
        let value = MetadataValue::try_from(format!("Bearer {}", token.trim()))
            .map_err(|_| format!("token in {} is not valid header text", self.path.display()))?;
        metadata.insert("authorization", value);
        Ok(())
    }
}

/// A lazily connecting TLS channel to the controller.
pub fn channel(address: &str, root_pem: &str) -> Result<Channel, tonic::transport::Error> {
    // tonic builds its rustls config from the process default provider:
    // make that weft's (post-quantum key exchange first) before it does.
    weft_hbone::tls::install_process_provider();
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(root_pem));
    Ok(Endpoint::from_shared(address.to_owned())?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true)
        .connect_lazy())
}

/// Follows the config stream until `shutdown`.
pub struct ConfigClient {
    pub channel: Channel,
    pub token: TokenSource,
    pub store: WorkloadStore,
}

const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(15);

impl ConfigClient {
    /// Follows the stream with the proxy's subscription (ztunnel's: its
    /// node; a waypoint's: its Gateway, routes too) until `shutdown`.
    pub async fn run(self, subscription: Subscribe, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
        loop {
            let started = std::time::Instant::now();
            let result = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.follow(&subscription) => r,
            };
            // A stream that lived a while resets the backoff.
            if started.elapsed() > Duration::from_secs(30) {
                backoff.reset();
            }
            let wait = backoff.next_delay();
            match result {
                Ok(()) => info!(retry_in = ?wait, "config stream ended; reconnecting"),
                Err(e) => {
                    warn!(error = %e, retry_in = ?wait, "config stream failed; keeping the last good config")
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn follow(&self, subscription: &Subscribe) -> Result<(), String> {
        let (tx, rx) = tokio::sync::mpsc::channel::<ConfigRequest>(16);
        let subscribe = ConfigRequest {
            kind: Some(config_request::Kind::Subscribe(subscription.clone())),
        };
        tx.send(subscribe).await.map_err(|e| e.to_string())?;
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        self.token.authorize(request.metadata_mut())?;
        let mut client = ConfigDiscoveryClient::new(self.channel.clone())
            .max_decoding_message_size(256 * 1024 * 1024);
        let mut responses = client
            .subscribe(request)
            .await
            .map_err(|s| format!("subscribe: {}: {}", s.code(), s.message()))?
            .into_inner();
        info!("config stream connected");
        while let Some(response) = responses
            .message()
            .await
            .map_err(|s| format!("{}: {}", s.code(), s.message()))?
        {
            let nonce = response.nonce.clone();
            let reply = match self.store.apply(to_update(response)) {
                Ok(()) => config_request::Kind::Ack(Ack { nonce }),
                Err(e) => {
                    warn!(error = %e, "NACK: config update refused");
                    metrics::counter!("weft_config_nacks_total").increment(1);
                    config_request::Kind::Nack(Nack {
                        nonce,
                        message: e.to_string(),
                    })
                }
            };
            tx.send(ConfigRequest { kind: Some(reply) })
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

fn to_update(response: ConfigResponse) -> ConfigUpdate {
    ConfigUpdate {
        version: response.version,
        full_snapshot: response.full_snapshot,
        resources: response
            .resources
            .into_iter()
            .filter_map(|r| r.kind)
            .collect(),
        removed: response
            .removed
            .into_iter()
            .map(|k| {
                (
                    ResourceType::try_from(k.r#type).unwrap_or(ResourceType::Unspecified),
                    k.key,
                )
            })
            .collect(),
    }
}
