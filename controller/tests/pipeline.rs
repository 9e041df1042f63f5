//! The model pipeline: registry states in, published model versions out.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;
use weft_cluster::model::ModelConfig;
use weft_cluster::registry::{AnyObject, ClusterState, Kind};
use weft_controller::pipeline::{self, Debounce};

fn state(objects: &[serde_json::Value]) -> Arc<ClusterState> {
    let mut state = ClusterState {
        synced: true,
        ..ClusterState::default()
    };
    for o in objects {
        let kind = Kind::from_type_meta(
            o["apiVersion"].as_str().unwrap_or_default(),
            o["kind"].as_str().unwrap_or_default(),
        )
        .expect("a known kind");
        AnyObject::from_value(kind, o.clone())
            .expect("decodes")
            .insert_into(&mut state);
    }
    Arc::new(state)
}

/// Issue 16: a route that cannot be attached changes no proxy's config, so
/// no new version is pushed; but the status writers must see its report, so
/// the model is republished under the same version.
#[tokio::test]
async fn a_change_only_the_status_sees_is_published_without_a_new_version() {
    let service = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 80}]}});
    let broken = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "broken", "namespace": "shop"},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web"}],
                 "rules": [{"matches": [{"path": {"type": "RegularExpression", "value": "("}}]}]}});
    let (tx, states) = watch::channel(state(std::slice::from_ref(&service)));
    let debounce = Debounce {
        quiet: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
    };
    let (mut models, _task) = pipeline::spawn(states, ModelConfig::default(), debounce);
    let first = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let m = models.borrow_and_update().clone();
            if m.version > 0 {
                return m;
            }
            models.changed().await.expect("pipeline alive");
        }
    })
    .await
    .expect("a first model");
    assert!(first.model.route_reports.is_empty());

    tx.send(state(&[service, broken])).expect("send");
    let next = tokio::time::timeout(Duration::from_secs(5), async {
        models.changed().await.expect("pipeline alive");
        models.borrow_and_update().clone()
    })
    .await
    .expect("republished");
    assert_eq!(next.version, first.version, "no proxy has anything new");
    assert!(
        next.model.route_reports.contains_key("shop/broken"),
        "the writers see the route's report"
    );
    assert!(next.model.routes.is_empty());
}
