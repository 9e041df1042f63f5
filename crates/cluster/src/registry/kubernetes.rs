//! The `kubernetes` registry: one kube-rs watcher per kind, merged into one
//! [`ClusterState`].
//!
//! The watchers do list + watch with resource versions and bookmarks, relist
//! after `410 Gone`, and back off on errors. A kind whose API is not served
//! (for example the Gateway API CRDs are not installed) counts as empty, so
//! the rest of the mesh still works; its watcher keeps retrying. So does
//! ReferenceGrant when the role does not allow reading it yet (an upgrade
//! whose new controller starts before its new ClusterRole is applied): no
//! grant is known, so every cross-namespace reference is refused, never
//! allowed, until it can be read.

use std::fmt::Debug;
use std::sync::Arc;

use futures::StreamExt;
use gateway_api::experimental::httproutes::HttpRoute;
use gateway_api::gatewayclasses::GatewayClass;
use gateway_api::gateways::Gateway;
use gateway_api::grpcroutes::GrpcRoute;
use gateway_api::referencegrants::ReferenceGrant;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::RegistryConfig;
use super::object::{AnyObject, Kind, clear_kind, remove_from};
use super::state::{ClusterState, ObjectKey};
use crate::crd::{AuthorizationPolicy, PeerAuthentication};
use crate::model::labels::GATEWAY_NAME;

/// What one kind's watcher reports to the merger.
enum Update {
    /// The full set of objects of a kind, after a (re)list.
    Replace(Kind, Vec<AnyObject>),
    Apply(AnyObject),
    Delete(Kind, ObjectKey),
}

pub(super) fn start(
    client: Client,
    config: RegistryConfig,
) -> (watch::Receiver<Arc<ClusterState>>, JoinSet<()>) {
    let (updates_tx, updates) = mpsc::channel(1024);
    let mut tasks = JoinSet::new();
    for kind in config.kinds.iter() {
        let tx = updates_tx.clone();
        let client = client.clone();
        let mut cfg = watcher::Config::default();
        match kind {
            Kind::Namespace => spawn::<Namespace>(
                &mut tasks,
                Api::all(client),
                cfg,
                kind,
                AnyObject::Namespace,
                tx,
            ),
            Kind::Pod => {
                if let Some(node) = &config.node {
                    cfg = cfg.fields(&format!("spec.nodeName={node}"));
                }
                spawn::<Pod>(&mut tasks, Api::all(client), cfg, kind, AnyObject::Pod, tx)
            }
            Kind::Service => spawn::<Service>(
                &mut tasks,
                Api::all(client),
                cfg,
                kind,
                AnyObject::Service,
                tx,
            ),
            Kind::EndpointSlice => spawn::<EndpointSlice>(
                &mut tasks,
                Api::all(client),
                cfg,
                kind,
                AnyObject::EndpointSlice,
                tx,
            ),
            Kind::Gateway => spawn::<Gateway>(
                &mut tasks,
                Api::all(client),
                cfg,
                kind,
                AnyObject::Gateway,
                tx,
            ),
            Kind::GatewayClass => spawn::<GatewayClass>(
                &mut tasks,
                Api::all(client),
                cfg,
                kind,
                AnyObject::GatewayClass,
                tx,
            ),
            Kind::HttpRoute => spawn::<HttpRoute>(
                &mut tasks,
                Api::all(client),
                cfg,
                kind,
                AnyObject::HttpRoute,
                tx,
            ),
            Kind::GrpcRoute => spawn::<GrpcRoute>(
                &mut tasks,
                Api::all(client),
                cfg,
                kind,
                AnyObject::GrpcRoute,
                tx,
            ),
            Kind::AuthorizationPolicy => spawn::<AuthorizationPolicy>(
                &mut tasks,
                Api::all(client),
                cfg,
                kind,
                AnyObject::AuthorizationPolicy,
                tx,
            ),
            Kind::PeerAuthentication => spawn::<PeerAuthentication>(
                &mut tasks,
                Api::all(client),
                cfg,
                kind,
                AnyObject::PeerAuthentication,
                tx,
            ),
            // Only waypoints' candidates: a cluster's ServiceAccounts are
            // many, and none without the label can be a waypoint's.
            Kind::ServiceAccount => spawn::<ServiceAccount>(
                &mut tasks,
                Api::all(client),
                cfg.labels(GATEWAY_NAME),
                kind,
                AnyObject::ServiceAccount,
                tx,
            ),
            Kind::ReferenceGrant => spawn::<ReferenceGrant>(
                &mut tasks,
                Api::all(client),
                cfg,
                kind,
                AnyObject::ReferenceGrant,
                tx,
            ),
        }
    }
    drop(updates_tx);
    let (tx, rx) = watch::channel(Arc::new(ClusterState::default()));
    tasks.spawn(merge(updates, config.kinds.iter().collect(), tx));
    (rx, tasks)
}

/// Applies updates to one state and publishes it once per burst: a relist of
/// 10k pods becomes one new state, not 10k.
async fn merge(
    mut updates: mpsc::Receiver<Update>,
    mut unsynced: Vec<Kind>,
    tx: watch::Sender<Arc<ClusterState>>,
) {
    let mut state = ClusterState::default();
    while let Some(first) = updates.recv().await {
        let mut next = Some(first);
        while let Some(update) = next {
            match update {
                Update::Replace(kind, objects) => {
                    clear_kind(&mut state, kind);
                    for obj in objects {
                        obj.insert_into(&mut state);
                    }
                    unsynced.retain(|k| *k != kind);
                }
                Update::Apply(obj) => obj.insert_into(&mut state),
                Update::Delete(kind, key) => remove_from(&mut state, kind, &key),
            }
            next = updates.try_recv().ok();
        }
        state.synced = unsynced.is_empty();
        if tx.send(Arc::new(state.clone())).is_err() {
            return;
        }
    }
}

fn spawn<K>(
    tasks: &mut JoinSet<()>,
    api: Api<K>,
    cfg: watcher::Config,
    kind: Kind,
    wrap: fn(Arc<K>) -> AnyObject,
    tx: mpsc::Sender<Update>,
) where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    tasks.spawn(async move {
        let mut stream = watcher::watcher(api, cfg).default_backoff().boxed();
        let mut buffer: Vec<AnyObject> = Vec::new();
        while let Some(event) = stream.next().await {
            let update = match event {
                Ok(Event::Init) => {
                    buffer.clear();
                    continue;
                }
                Ok(Event::InitApply(obj)) => {
                    buffer.push(wrap(Arc::new(obj)));
                    continue;
                }
                Ok(Event::InitDone) => Update::Replace(kind, std::mem::take(&mut buffer)),
                Ok(Event::Apply(obj)) => Update::Apply(wrap(Arc::new(obj))),
                Ok(Event::Delete(obj)) => Update::Delete(kind, ObjectKey::of(&obj)),
                Err(e) => {
                    metrics::counter!("weft_registry_errors_total", "kind" => kind.type_meta().1)
                        .increment(1);
                    if is_not_served(&e) {
                        tracing::debug!(?kind, "API not served; treating as empty: {e}");
                        Update::Replace(kind, Vec::new())
                    } else if kind == Kind::ReferenceGrant && is_forbidden(&e) {
                        tracing::warn!(
                            "cannot read ReferenceGrants (RBAC); until it can, routes' cross-namespace references are refused: {e}"
                        );
                        Update::Replace(kind, Vec::new())
                    } else {
                        tracing::warn!(?kind, "watch failed, retrying: {e}");
                        continue;
                    }
                }
            };
            if tx.send(update).await.is_err() {
                return;
            }
        }
    });
}

/// A 403 on list: the role does not allow reading the kind.
fn is_forbidden(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status)) => status.code == 403,
        _ => false,
    }
}

/// A 404 on list means the resource type does not exist on this server.
fn is_not_served(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status)) => status.code == 404,
        _ => false,
    }
}
