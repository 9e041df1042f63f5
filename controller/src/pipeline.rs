//! Registry state → model versions, debounced.
//!
//! One task watches the registry, waits for a burst of changes to settle,
//! rebuilds the model (off the async threads: it is CPU work), diffs it
//! against the previous version, works out what each node's ztunnel and each
//! waypoint is sent of it (`Views`), and publishes them. Subscribers that are
//! one version behind send the shared diff; others diff for themselves.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use weft_cluster::model::audience::Views;
use weft_cluster::model::{self, Delta, Model, ModelConfig};
use weft_cluster::registry::ClusterState;

/// One published model.
#[derive(Debug)]
pub struct ModelVersion {
    /// Increases by one per published model; 0 = nothing built yet.
    pub version: u64,
    /// The model.
    pub model: Arc<Model>,
    /// The version `delta` starts from.
    pub previous: u64,
    /// The change from `previous` to `version`.
    pub delta: Arc<Delta>,
    /// What each node's ztunnel and each waypoint is sent of `model`.
    pub views: Arc<Views>,
    /// When the registry change that caused this version was first seen.
    pub changed_at: Instant,
}

impl ModelVersion {
    /// The empty version 0, before the registry has synced.
    pub fn initial() -> ModelVersion {
        ModelVersion {
            version: 0,
            model: Arc::new(Model::default()),
            previous: 0,
            delta: Arc::new(Delta::default()),
            views: Arc::new(Views::default()),
            changed_at: Instant::now(),
        }
    }
}

/// How the pipeline batches changes.
#[derive(Clone, Copy, Debug)]
pub struct Debounce {
    /// Quiet time after a change before building.
    pub quiet: Duration,
    /// Longest delay from the first change of a burst to a build.
    pub max_delay: Duration,
}

impl Default for Debounce {
    fn default() -> Debounce {
        Debounce {
            quiet: Duration::from_millis(20),
            max_delay: Duration::from_millis(100),
        }
    }
}

/// Starts the pipeline. The receiver holds version 0 until the registry has
/// synced: serving a partial model would make proxies drop what they know.
pub fn spawn(
    mut states: watch::Receiver<Arc<ClusterState>>,
    config: ModelConfig,
    debounce: Debounce,
) -> (watch::Receiver<Arc<ModelVersion>>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(Arc::new(ModelVersion::initial()));
    let task = tokio::spawn(async move {
        let config = Arc::new(config);
        let mut current = Arc::new(ModelVersion::initial());
        // The initial value counts as a change.
        states.mark_changed();
        loop {
            if states.changed().await.is_err() {
                return;
            }
            let changed_at = Instant::now();
            let deadline = tokio::time::Instant::now() + debounce.max_delay;
            loop {
                let quiet = tokio::time::sleep(debounce.quiet);
                tokio::select! {
                    _ = quiet => break,
                    _ = tokio::time::sleep_until(deadline) => break,
                    r = states.changed() => if r.is_err() { return },
                }
            }
            let state = states.borrow_and_update().clone();
            if !state.synced {
                continue;
            }
            let config = config.clone();
            let previous = current.model.clone();
            let started = Instant::now();
            let built = tokio::task::spawn_blocking(move || {
                let model = model::build(&state, &config);
                let delta = Model::diff(&previous, &model);
                let views = Views::build(&model);
                (model, delta, views)
            })
            .await;
            let Ok((model, delta, views)) = built else {
                tracing::error!("model build panicked; keeping version {}", current.version);
                continue;
            };
            metrics::histogram!("weft_model_build_seconds").record(started.elapsed().as_secs_f64());
            if delta.is_empty() && current.version > 0 {
                // Nothing a proxy sees changed, but what the controller
                // found of its objects may have (a route that cannot be
                // attached changes no config): the status writers need that
                // model. Same version: no subscriber is sent anything.
                if model.policy_reports != current.model.policy_reports
                    || model.route_reports != current.model.route_reports
                {
                    current = Arc::new(ModelVersion {
                        version: current.version,
                        model: Arc::new(model),
                        previous: current.previous,
                        delta: current.delta.clone(),
                        views: current.views.clone(),
                        changed_at: current.changed_at,
                    });
                    if tx.send(current.clone()).is_err() {
                        return;
                    }
                }
                continue;
            }
            metrics::gauge!("weft_model_resources").set(model.len() as f64);
            metrics::gauge!("weft_model_bytes").set(model.encoded_len() as f64);
            current = Arc::new(ModelVersion {
                version: current.version + 1,
                model: Arc::new(model),
                previous: current.version,
                delta: Arc::new(delta),
                views: Arc::new(views),
                changed_at,
            });
            tracing::debug!(
                version = current.version,
                changes = current.delta.entries.len(),
                "model published"
            );
            if tx.send(current.clone()).is_err() {
                return;
            }
        }
    });
    (rx, task)
}
