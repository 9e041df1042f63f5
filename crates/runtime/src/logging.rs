//! Process logging for the proxies (ztunnel and the waypoint): text or JSON
//! on stderr, ANSI colours only on a terminal, and a filter that the admin
//! API can read and change at runtime (`/logging`).

use std::sync::Arc;

use tracing_subscriber::{EnvFilter, layer::SubscriberExt, reload, util::SubscriberInitExt};

use crate::admin::LogControl;
use crate::flags::LogFormat;

/// Installs the global subscriber; `RUST_LOG` wins over `default_filter`.
/// Returns the handle the admin API uses to read and set the filter.
pub fn init(format: LogFormat, default_filter: &str) -> LogControl {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(false),
            )
            .init(),
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
            )
            .init(),
    }
    Arc::new(move |level: Option<&str>| {
        if let Some(level) = level {
            let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
            handle.reload(filter).map_err(|e| e.to_string())?;
        }
        handle
            .with_current(|f: &EnvFilter| f.to_string())
            .map_err(|e| e.to_string())
    })
}
