//! The registry: one typed view of the cluster, fed by either source.
//!
//! - [`files`]: a directory of Kubernetes YAML, watched and reloaded.
//! - [`kubernetes`]: kube-rs watchers against an API server.
//!
//! Both publish the same [`ClusterState`] (k8s-openapi, gateway-api and weft
//! CRD types) through a `tokio::sync::watch` channel, so the model builder and
//! the node agent read one structure whichever source is configured.
//!
//! ```no_run
//! # async fn demo() -> Result<(), weft_cluster::registry::RegistryError> {
//! use weft_cluster::registry::{Kinds, Registry, RegistryConfig};
//! let config = RegistryConfig { kinds: Kinds::NODE_AGENT, node: Some("node-a".into()) };
//! let registry = Registry::files("/etc/weft/cluster", config).await?;
//! let mut states = registry.subscribe();
//! while states.changed().await.is_ok() {
//!     let state = states.borrow_and_update().clone();
//!     if !state.synced { continue; }
//!     for pod in state.pods.values() { /* ... */ let _ = pod; }
//! }
//! # Ok(()) }
//! ```

pub mod files;
pub mod kubernetes;
mod object;
mod state;

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinSet;

pub use object::{AnyObject, Kind, Kinds};
pub use state::{ClusterState, InvalidObject, ObjectKey, Objects};

/// What a registry watches.
#[derive(Clone, Debug, Default)]
pub struct RegistryConfig {
    /// The kinds to watch; others stay empty in [`ClusterState`].
    pub kinds: Kinds,
    /// Only the pods scheduled to this node (`spec.nodeName`); `None` = all.
    pub node: Option<String>,
}

/// Why a registry could not start.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The manifest directory is missing or unreadable.
    #[error("cannot read manifest directory {path}: {source}")]
    Directory {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file watcher could not be set up.
    #[error("cannot watch {path}: {source}")]
    Watch {
        /// The directory.
        path: PathBuf,
        /// The notify error.
        source: notify::Error,
    },
    /// A Kubernetes client could not be built.
    #[error("kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// A running registry. Dropping it stops its tasks; receivers then see the
/// channel close.
pub struct Registry {
    states: watch::Receiver<Arc<ClusterState>>,
    _tasks: JoinSet<()>,
}

impl Registry {
    /// Watches a directory of multi-document Kubernetes YAML (`*.yaml`,
    /// `*.yml`, recursively). The first state is published, with
    /// `synced = true`, before this returns.
    pub async fn files(
        dir: impl Into<PathBuf>,
        config: RegistryConfig,
    ) -> Result<Registry, RegistryError> {
        let (states, tasks) = files::start(dir.into(), config).await?;
        Ok(Registry {
            states,
            _tasks: tasks,
        })
    }

    /// Watches the API server behind `client`. The state is published with
    /// `synced = false` until every watched kind has been listed once.
    pub fn kubernetes(client: kube::Client, config: RegistryConfig) -> Registry {
        let (states, tasks) = kubernetes::start(client, config);
        Registry {
            states,
            _tasks: tasks,
        }
    }

    /// A receiver of every new state. The current value is always complete:
    /// a consumer that only reads the latest state misses nothing it needs.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.states.clone()
    }

    /// The current state.
    pub fn current(&self) -> Arc<ClusterState> {
        self.states.borrow().clone()
    }

    /// Waits until the state has `synced = true`, and returns it.
    pub async fn synced(&self) -> Option<Arc<ClusterState>> {
        let mut rx = self.states.clone();
        let state = rx.wait_for(|s| s.synced).await.ok()?;
        Some(state.clone())
    }
}
