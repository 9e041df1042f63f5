//! Local mode: the same config model from a YAML file instead of the
//! controller, reloaded when the file changes.
//!
//! The file holds the proto3 JSON mapping of `weft.config.v1` resources
//! (camelCase fields, enums by name):
//!
//! ```yaml
//! workloads:
//!   - uid: web-1
//!     name: web-1
//!     namespace: shop
//!     serviceAccount: web
//!     node: node-a
//!     addresses: ["10.244.1.5"]
//!     protocol: TUNNEL_PROTOCOL_HBONE
//! services:
//!   - name: web
//!     namespace: shop
//!     vips: ["10.96.0.10"]
//!     ports: [{ servicePort: 80, targetPort: 8080 }]
//!     endpoints: [{ workloadUid: web-1, ports: { "80": 8080 } }]
//! policies:
//!   - name: deny-other
//!     namespace: shop
//!     action: ACTION_DENY
//!     rules: [{ from: [{ namespaces: [{ exact: other }] }] }]
//! ```
//!
//! Policies are written in their full form; ztunnel compiles the L4 form
//! itself (the same `compile_l4` the controller uses) when `l4Rules` is absent.
//! A waypoint's file may also hold `routes:` (`weft.config.v1.Route`).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use weft_api::config::{Authorization, Route, Service, Workload, resource};

use crate::store::{ConfigUpdate, WorkloadStore};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LocalConfig {
    #[serde(default)]
    workloads: Vec<Workload>,
    #[serde(default)]
    services: Vec<Service>,
    #[serde(default)]
    policies: Vec<Authorization>,
    #[serde(default)]
    routes: Vec<Route>,
}

#[derive(Debug, thiserror::Error)]
pub enum LocalConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        source: Box<weft_api::yaml::Error>,
    },
    #[error("{path}: {source}")]
    Invalid {
        path: String,
        source: crate::store::StoreError,
    },
}

/// Parses a local config file into a full-snapshot update.
pub fn load(path: &Path, version: u64) -> Result<ConfigUpdate, LocalConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| LocalConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text, version).map_err(|source| LocalConfigError::Parse {
        path: path.display().to_string(),
        source: Box::new(source),
    })
}

fn parse(text: &str, version: u64) -> Result<ConfigUpdate, weft_api::yaml::Error> {
    let config: LocalConfig = if text.trim().is_empty() {
        LocalConfig::default()
    } else {
        weft_api::yaml::from_str(text)?
    };
    let mut resources = Vec::new();
    resources.extend(config.workloads.into_iter().map(resource::Kind::Workload));
    resources.extend(config.services.into_iter().map(resource::Kind::Service));
    for mut policy in config.policies {
        if policy.l4_rules.is_empty() && !policy.rules.is_empty() {
            let action = weft_api::config::Action::try_from(policy.action)
                .unwrap_or(weft_api::config::Action::Deny);
            let (l4, warnings) = weft_api::authz::compile_l4(action, &policy.rules);
            for w in &warnings {
                warn!(policy = %crate::store::policy_key(&policy), "{w}");
            }
            policy.l4_rules = l4;
            policy.l4_warnings = warnings;
        }
        resources.push(resource::Kind::Authorization(policy));
    }
    resources.extend(config.routes.into_iter().map(resource::Kind::Route));
    Ok(ConfigUpdate {
        version,
        full_snapshot: true,
        resources,
        removed: Vec::new(),
    })
}

/// Loads `path` into `store`, then reloads it whenever it changes. A file
/// that does not parse or validate is reported and the last good config kept.
pub struct LocalConfigSource {
    pub path: PathBuf,
    pub store: WorkloadStore,
    pub poll: Duration,
}

impl LocalConfigSource {
    /// The first load; an error here stops start-up.
    pub fn load_initial(&self) -> Result<(), LocalConfigError> {
        let update = load(&self.path, 1)?;
        self.store
            .apply(update)
            .map_err(|source| LocalConfigError::Invalid {
                path: self.path.display().to_string(),
                source,
            })
    }

    pub async fn watch(self, shutdown: CancellationToken) {
        let mut last = stamp(&self.path);
        let mut version = 1;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.poll) => {}
            }
            let now = stamp(&self.path);
            if now == last {
                continue;
            }
            last = now;
            version += 1;
            match load(&self.path, version).map(|u| self.store.apply(u)) {
                Ok(Ok(())) => info!(path = %self.path.display(), version, "local config reloaded"),
                Ok(Err(e)) => {
                    warn!(path = %self.path.display(), error = %e, "local config refused; keeping the last good one")
                }
                Err(e) => {
                    warn!(error = %e, "local config does not parse; keeping the last good one")
                }
            }
        }
    }
}

/// What tells us the file changed: modification time and size.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let doc = include_str!("local_config.rs")
            .lines()
            .skip_while(|l| !l.contains("```yaml"))
            .skip(1)
            .take_while(|l| !l.contains("```"))
            .map(|l| l.trim_start_matches("//!").strip_prefix(' ').unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        let update = parse(&doc, 7).unwrap();
        assert_eq!(update.version, 7);
        assert_eq!(update.resources.len(), 3);
        let store = WorkloadStore::default();
        store.apply(update).unwrap();
        let w = store.workload("web-1").unwrap();
        assert_eq!(w.protocol, weft_api::config::TunnelProtocol::Hbone as i32);
        let svc = store.service_by_vip("10.96.0.10".parse().unwrap()).unwrap();
        assert_eq!(svc.endpoints[0].ports.get(&80), Some(&8080));
        let policy = &store.policies()[0];
        assert_eq!(policy.l4_rules.len(), 1, "compiled to L4 on load");
    }

    #[test]
    fn errors_name_the_problem() {
        let err = parse("workloads: [{ uid: a, protocl: X }]", 1).unwrap_err();
        assert!(err.to_string().contains("protocl"), "{err}");
        let err = parse("nonsense: 1", 1).unwrap_err();
        assert!(err.to_string().contains("nonsense"), "{err}");
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_text_is_parsed_or_refused_never_panicked(text in "(workloads|services|policies|uid|addresses|:|\\[|\\]|\\{|\\}|-| |\n|[a-z0-9.]){0,200}") {
            if let Ok(update) = parse(&text, 1) {
                let _ = WorkloadStore::default().apply(update);
            }
        }
    }
}
