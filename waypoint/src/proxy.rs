//! What every tunnel and request shares.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weft_runtime::lb::LoadBalancer;

use crate::destination::WaypointName;
use crate::observe::Observer;
use crate::otel::Tracing;
use crate::routing::RetryRule;
use crate::snapshot::ConfigView;
use crate::upstream::pool::HttpPool;

/// Tunables of the data path.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// The HBONE port of destination ztunnels.
    pub upstream_hbone_port: u16,
    /// How long a client of a port without `appProtocol` may stay silent
    /// before its tunnel is taken for TCP (a server-first protocol).
    pub sniff_timeout: Duration,
    /// Request bodies up to this size (known in advance) are buffered so a
    /// retry can send them again; larger or streamed bodies are sent once.
    pub max_retry_body: usize,
    /// Retries when a route rule sets none.
    pub default_retry: RetryRule,
    /// How long an HTTP/1 client may take to send a request's headers.
    pub header_read_timeout: Duration,
}

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings {
            upstream_hbone_port: 15008,
            sniff_timeout: Duration::from_secs(1),
            max_retry_body: 64 * 1024,
            default_retry: RetryRule::default_policy(),
            header_read_timeout: Duration::from_secs(30),
        }
    }
}

/// The shared parts of the data path.
pub struct Proxy {
    pub me: WaypointName,
    pub config: ConfigView,
    pub http: HttpPool,
    pub lb: LoadBalancer,
    pub observer: Arc<Observer>,
    /// Spans per request, when an OTLP endpoint is configured.
    pub tracing: Option<Tracing>,
    pub settings: ProxySettings,
    /// Fires on SIGTERM: HTTP connections finish their request and close.
    pub drain: CancellationToken,
    /// Every tunnel handler, so a drain can wait for them.
    pub tasks: TaskTracker,
}
