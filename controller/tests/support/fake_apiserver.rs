//! An HTTP-level fake Kubernetes API server: list and watch with resource
//! versions, bookmarks, `410 Gone` after compaction, and server-side-apply
//! PATCH of objects and their status. kube-rs's real client and watcher talk
//! to it over loopback, so the registry is tested through the same code paths
//! it uses against a real API server.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};

type Body = BoxBody<Bytes, Infallible>;

#[derive(Default)]
struct Store {
    rv: u64,
    /// Events older than this are gone: watching from before it gets 410.
    compacted: u64,
    /// collection -> (namespace, name) -> object
    objects: HashMap<String, BTreeMap<(String, String), Value>>,
    /// collection -> events (rv, type, object)
    log: HashMap<String, Vec<(u64, &'static str, Value)>>,
    /// Every request, as "METHOD path?query".
    requests: Vec<String>,
    /// Bodies of status patches, as "collection/ns/name".
    status_patches: Vec<(String, Value)>,
    /// Collections that exist (others answer 404).
    served: Vec<String>,
}

/// The fake server. Dropping it stops serving.
pub struct FakeApiServer {
    pub addr: SocketAddr,
    store: Arc<Mutex<Store>>,
    events: broadcast::Sender<(String, Value)>,
    /// Bumped to end every open watch (a network blip).
    generation: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The collection of a manifest, e.g. `api/v1/pods`.
pub fn collection_of(obj: &Value) -> String {
    let api_version = obj["apiVersion"].as_str().unwrap_or("v1");
    let kind = obj["kind"].as_str().unwrap_or("");
    let plural = match kind {
        "EndpointSlice" => "endpointslices".to_string(),
        "AuthorizationPolicy" => "authorizationpolicies".to_string(),
        "GatewayClass" => "gatewayclasses".to_string(),
        other => format!("{}s", other.to_lowercase()),
    };
    if api_version.contains('/') {
        format!("apis/{api_version}/{plural}")
    } else {
        format!("api/{api_version}/{plural}")
    }
}

/// (apiVersion, kind) of a collection, as bookmarks carry them.
fn type_of(collection: &str) -> (String, String) {
    let (group_version, plural) = collection
        .rsplit_once('/')
        .unwrap_or(("api/v1", collection));
    let api_version = group_version
        .strip_prefix("apis/")
        .or_else(|| group_version.strip_prefix("api/"))
        .unwrap_or(group_version);
    let kind = match plural {
        "endpointslices" => "EndpointSlice",
        "gatewayclasses" => "GatewayClass",
        "authorizationpolicies" => "AuthorizationPolicy",
        "peerauthentications" => "PeerAuthentication",
        "serviceaccounts" => "ServiceAccount",
        "namespaces" => "Namespace",
        "pods" => "Pod",
        "services" => "Service",
        "gateways" => "Gateway",
        "deployments" => "Deployment",
        "configmaps" => "ConfigMap",
        other => other,
    };
    (api_version.to_string(), kind.to_string())
}

fn key_of(obj: &Value) -> (String, String) {
    (
        obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_string(),
        obj["metadata"]["name"].as_str().unwrap_or("").to_string(),
    )
}

impl FakeApiServer {
    /// Starts serving `collections` (e.g. `api/v1/pods`); others are 404.
    pub async fn start(collections: &[&str]) -> FakeApiServer {
        let store = Arc::new(Mutex::new(Store {
            served: collections.iter().map(|c| c.to_string()).collect(),
            rv: 100,
            ..Store::default()
        }));
        let (events, _) = broadcast::channel(1024);
        let (generation, _) = watch::channel(0u64);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let ctx = Ctx {
            store: store.clone(),
            events: events.clone(),
            generation: generation.subscribe(),
        };
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let ctx = ctx.clone();
                        async move { Ok::<_, Infallible>(ctx.handle(req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeApiServer {
            addr,
            store,
            events,
            generation,
            task,
        }
    }

    /// A kube client for this server.
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(format!("http://{}", self.addr).parse().expect("uri"));
        kube::Client::try_from(config).expect("client")
    }

    /// Creates or replaces an object (an ADDED or MODIFIED event).
    pub fn apply(&self, mut obj: Value) {
        let collection = collection_of(&obj);
        let mut store = self.store.lock().expect("lock");
        store.rv += 1;
        let rv = store.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let key = key_of(&obj);
        let existed = store
            .objects
            .entry(collection.clone())
            .or_default()
            .insert(key, obj.clone())
            .is_some();
        let kind = if existed { "MODIFIED" } else { "ADDED" };
        store
            .log
            .entry(collection.clone())
            .or_default()
            .push((rv, kind, obj.clone()));
        let _ = self
            .events
            .send((collection, json!({"type": kind, "object": obj})));
    }

    /// Deletes an object (a DELETED event).
    pub fn delete(&self, obj: &Value) {
        let collection = collection_of(obj);
        let mut store = self.store.lock().expect("lock");
        let Some(mut old) = store
            .objects
            .get_mut(&collection)
            .and_then(|m| m.remove(&key_of(obj)))
        else {
            return;
        };
        store.rv += 1;
        let rv = store.rv;
        old["metadata"]["resourceVersion"] = json!(rv.to_string());
        store
            .log
            .entry(collection.clone())
            .or_default()
            .push((rv, "DELETED", old.clone()));
        let _ = self
            .events
            .send((collection, json!({"type": "DELETED", "object": old})));
    }

    /// Forgets the event history: a watch resuming from before now gets 410.
    pub fn compact(&self) {
        let mut store = self.store.lock().expect("lock");
        store.compacted = store.rv;
        store.log.clear();
    }

    /// Ends every open watch, as a network blip or API server restart would.
    pub fn drop_watches(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// Sends a BOOKMARK at the current resource version on every open watch.
    pub fn bookmark(&self) {
        let store = self.store.lock().expect("lock");
        for collection in &store.served {
            let (api_version, kind) = type_of(collection);
            let _ = self.events.send((
                collection.clone(),
                json!({"type": "BOOKMARK", "object": {"apiVersion": api_version, "kind": kind,
                       "metadata": {"resourceVersion": store.rv.to_string()}}}),
            ));
        }
    }

    /// The current resource version.
    pub fn resource_version(&self) -> u64 {
        self.store.lock().expect("lock").rv
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<String> {
        self.store.lock().expect("lock").requests.clone()
    }

    /// The stored object, if any.
    pub fn get(&self, collection: &str, namespace: &str, name: &str) -> Option<Value> {
        self.store
            .lock()
            .expect("lock")
            .objects
            .get(collection)
            .and_then(|m| m.get(&(namespace.to_string(), name.to_string())))
            .cloned()
    }

    /// Status patches received, as (`collection/namespace/name`, body).
    pub fn status_patches(&self) -> Vec<(String, Value)> {
        self.store.lock().expect("lock").status_patches.clone()
    }
}

#[derive(Clone)]
struct Ctx {
    store: Arc<Mutex<Store>>,
    events: broadcast::Sender<(String, Value)>,
    generation: watch::Receiver<u64>,
}

fn full(status: StatusCode, body: Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": code, "reason": reason, "message": message})
}

/// A parsed request path.
struct Target {
    collection: String,
    namespace: String,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (prefix_len, rest) = match segs.first() {
        Some(&"api") => (2, &segs[2.min(segs.len())..]),
        Some(&"apis") => (3, &segs[3.min(segs.len())..]),
        _ => return None,
    };
    let prefix = segs[..prefix_len.min(segs.len())].join("/");
    let t = |plural: &str, namespace: &str, name: Option<&&str>, sub: Option<&&str>| Target {
        collection: format!("{prefix}/{plural}"),
        namespace: namespace.to_string(),
        name: name.map(|s| s.to_string()),
        subresource: sub.map(|s| s.to_string()),
    };
    match rest {
        [plural] => Some(t(plural, "", None, None)),
        ["namespaces", ns, plural, rest @ ..] => Some(t(plural, ns, rest.first(), rest.get(1))),
        [plural, name, rest @ ..] => Some(t(plural, "", Some(name), rest.first())),
        _ => None,
    }
}

impl Ctx {
    async fn handle(self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        let query: HashMap<String, String> = req
            .uri()
            .query()
            .map(|q| {
                q.split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.replace("%3D", "=").replace("%2F", "/")))
                    .collect()
            })
            .unwrap_or_default();
        self.store
            .lock()
            .expect("lock")
            .requests
            .push(format!("{} {}", req.method(), req.uri()));
        let Some(target) = parse_path(&path) else {
            return full(
                StatusCode::NOT_FOUND,
                status(404, "NotFound", "no such path"),
            );
        };
        let served = self
            .store
            .lock()
            .expect("lock")
            .served
            .contains(&target.collection);
        if !served {
            return full(
                StatusCode::NOT_FOUND,
                status(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                ),
            );
        }
        match (req.method().clone(), &target.name) {
            (Method::GET, None) if query.get("watch").map(String::as_str) == Some("true") => {
                self.watch(&target.collection, &query)
            }
            (Method::GET, None) => self.list(&target.collection, &query),
            (Method::GET, Some(name)) => {
                let store = self.store.lock().expect("lock");
                match store
                    .objects
                    .get(&target.collection)
                    .and_then(|m| m.get(&(target.namespace.clone(), name.clone())))
                {
                    Some(obj) => full(StatusCode::OK, obj.clone()),
                    None => full(StatusCode::NOT_FOUND, status(404, "NotFound", "not found")),
                }
            }
            (Method::PATCH, Some(name)) => {
                let Ok(body) = req.into_body().collect().await else {
                    return full(StatusCode::BAD_REQUEST, status(400, "BadRequest", "body"));
                };
                let Ok(patch) = serde_json::from_slice::<Value>(&body.to_bytes()) else {
                    return full(
                        StatusCode::BAD_REQUEST,
                        status(400, "BadRequest", "not JSON"),
                    );
                };
                self.patch(&target, name, patch)
            }
            _ => full(
                StatusCode::METHOD_NOT_ALLOWED,
                status(405, "MethodNotAllowed", ""),
            ),
        }
    }

    fn list(&self, collection: &str, query: &HashMap<String, String>) -> Response<Body> {
        let store = self.store.lock().expect("lock");
        let items: Vec<Value> = store
            .objects
            .get(collection)
            .map(|m| {
                m.values()
                    .filter(|o| field_selector_matches(o, query))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        full(
            StatusCode::OK,
            json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": store.rv.to_string()}, "items": items}),
        )
    }

    fn watch(&self, collection: &str, query: &HashMap<String, String>) -> Response<Body> {
        let from: u64 = query
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let (backlog, mut live) = {
            let store = self.store.lock().expect("lock");
            if from < store.compacted {
                let gone = json!({"type": "ERROR", "object": status(410, "Expired", "too old resource version")});
                let body = format!("{gone}\n");
                return Response::new(Full::new(Bytes::from(body)).boxed());
            }
            let backlog: Vec<Value> = store
                .log
                .get(collection)
                .map(|l| {
                    l.iter()
                        .filter(|(rv, _, obj)| *rv > from && field_selector_matches(obj, query))
                        .map(|(_, kind, obj)| json!({"type": kind, "object": obj}))
                        .collect()
                })
                .unwrap_or_default();
            (backlog, self.events.subscribe())
        };
        let mut generation = self.generation.clone();
        generation.mark_unchanged();
        let collection = collection.to_string();
        let query = query.clone();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(64);
        tokio::spawn(async move {
            for event in backlog {
                if tx
                    .send(Ok(Frame::data(Bytes::from(format!("{event}\n")))))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            loop {
                tokio::select! {
                    _ = generation.changed() => return,
                    event = live.recv() => {
                        let Ok((c, event)) = event else { return };
                        let bookmark = event["type"] == "BOOKMARK";
                        if c != collection || (!bookmark && !field_selector_matches(&event["object"], &query)) {
                            continue;
                        }
                        if tx.send(Ok(Frame::data(Bytes::from(format!("{event}\n"))))).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        Response::new(BodyExt::boxed(StreamBody::new(stream)))
    }

    fn patch(&self, target: &Target, name: &str, patch: Value) -> Response<Body> {
        let mut store = self.store.lock().expect("lock");
        store.rv += 1;
        let rv = store.rv;
        let key = (target.namespace.clone(), name.to_string());
        let existing = store
            .objects
            .get(&target.collection)
            .and_then(|m| m.get(&key))
            .cloned();
        let status_patch = target.subresource.as_deref() == Some("status");
        let mut obj = match (existing, status_patch) {
            (Some(mut obj), true) => {
                obj["status"] = patch["status"].clone();
                obj
            }
            (None, true) => {
                return full(StatusCode::NOT_FOUND, status(404, "NotFound", "not found"));
            }
            (Some(old), false) => {
                let mut obj = patch.clone();
                obj["status"] = old["status"].clone();
                obj
            }
            (None, false) => patch.clone(),
        };
        if status_patch {
            store.status_patches.push((
                format!("{}/{}/{}", target.collection, target.namespace, name),
                patch,
            ));
        }
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let kind = if store
            .objects
            .get(&target.collection)
            .is_some_and(|m| m.contains_key(&key))
        {
            "MODIFIED"
        } else {
            "ADDED"
        };
        store
            .objects
            .entry(target.collection.clone())
            .or_default()
            .insert(key, obj.clone());
        store
            .log
            .entry(target.collection.clone())
            .or_default()
            .push((rv, kind, obj.clone()));
        let _ = self.events.send((
            target.collection.clone(),
            json!({"type": kind, "object": obj}),
        ));
        full(StatusCode::OK, obj)
    }
}

/// Supports the one field selector weft uses: `spec.nodeName=<node>`.
fn field_selector_matches(obj: &Value, query: &HashMap<String, String>) -> bool {
    match query
        .get("fieldSelector")
        .and_then(|s| s.strip_prefix("spec.nodeName="))
    {
        Some(node) => obj["spec"]["nodeName"].as_str() == Some(node),
        None => true,
    }
}
