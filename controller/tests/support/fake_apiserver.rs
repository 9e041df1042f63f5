//! An HTTP-level fake Kubernetes API server: list and watch with resource
//! versions, bookmarks, `410 Gone` after compaction; GET, create (POST),
//! replace (PUT), merge / strategic merge PATCH and server-side apply of
//! objects and their status, with optimistic concurrency (a stale
//! `metadata.resourceVersion` gets `409 Conflict`) and field ownership (an
//! apply without `force` that changes another manager's field gets `409`).
//! kube-rs's real client, watcher and kube-lease-manager talk to it over
//! loopback, so the registry, the writers and leader election are tested
//! through the same code paths they use against a real API server.
//!
//! Every request is logged with its `User-Agent`; give each replica its own
//! client ([`FakeApiServer::config_as`]) to tell their requests apart.

mod fields;

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
    /// Every request, as (user agent, "METHOD path?query").
    requests: Vec<(String, String)>,
    /// (collection, namespace, name) -> who owns which field.
    owners: HashMap<(String, String, String), fields::Owners>,
    /// Bodies of status patches, as "collection/ns/name".
    status_patches: Vec<(String, Value)>,
    /// (user agent, collection) whose writes answer 500, as an API server
    /// having trouble with one client's requests.
    failing_writes: Vec<(String, String)>,
    /// Collections that exist (others answer 404).
    served: Vec<String>,
    /// Tokens TokenReview knows.
    tokens: HashMap<String, ReviewedToken>,
    /// TokenReview answers without `status.audiences`, as an API server
    /// that does not check audiences would.
    ignore_audiences: bool,
}

/// A token as TokenReview sees it.
#[derive(Clone, Debug)]
struct ReviewedToken {
    username: String,
    audiences: Vec<String>,
    extra: Value,
}

/// The audience of tokens requested without one (the automounted token).
pub const API_SERVER_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

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
        "leases" => "Lease",
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

impl Store {
    fn object(&self, collection: &str, key: &(String, String)) -> Option<&Value> {
        self.objects.get(collection).and_then(|m| m.get(key))
    }

    fn owners(&mut self, collection: &str, key: &(String, String)) -> &mut fields::Owners {
        self.owners
            .entry((collection.to_string(), key.0.clone(), key.1.clone()))
            .or_default()
    }

    /// Stores `obj` (keyed by its metadata) at a new resource version, logs
    /// and broadcasts the event; returns the stored object.
    fn commit(
        &mut self,
        events: &broadcast::Sender<(String, Value)>,
        collection: &str,
        mut obj: Value,
    ) -> Value {
        self.rv += 1;
        let rv = self.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let existed = self
            .objects
            .entry(collection.to_string())
            .or_default()
            .insert(key_of(&obj), obj.clone())
            .is_some();
        let kind = if existed { "MODIFIED" } else { "ADDED" };
        self.log
            .entry(collection.to_string())
            .or_default()
            .push((rv, kind, obj.clone()));
        let _ = events.send((
            collection.to_string(),
            json!({"type": kind, "object": obj.clone()}),
        ));
        obj
    }
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

    /// From now on, writes by user agent `agent` to `collection` fail with
    /// 500 (reads still work).
    pub fn fail_writes_from(&self, agent: &str, collection: &str) {
        self.store
            .lock()
            .expect("lock")
            .failing_writes
            .push((agent.to_string(), collection.to_string()));
    }

    /// Makes TokenReview accept `token` as ServiceAccount `namespace/name`
    /// for `audiences` (the API server's own when empty), bound to `node`
    /// when given.
    pub fn add_token(
        &self,
        token: &str,
        (namespace, name): (&str, &str),
        audiences: &[&str],
        node: Option<&str>,
    ) {
        let audiences = if audiences.is_empty() {
            vec![API_SERVER_AUDIENCE.to_string()]
        } else {
            audiences.iter().map(|a| a.to_string()).collect()
        };
        let extra = match node {
            Some(node) => json!({"authentication.kubernetes.io/node-name": [node]}),
            None => json!({}),
        };
        self.store.lock().expect("lock").tokens.insert(
            token.to_string(),
            ReviewedToken {
                username: format!("system:serviceaccount:{namespace}:{name}"),
                audiences,
                extra,
            },
        );
    }

    /// From now on TokenReview does not check audiences (and says none).
    pub fn ignore_audiences(&self) {
        self.store.lock().expect("lock").ignore_audiences = true;
    }

    /// A kube client for this server.
    pub fn client(&self) -> kube::Client {
        kube::Client::try_from(self.config_as("")).expect("client")
    }

    /// A client config for this server whose requests carry `User-Agent:
    /// agent` (see [`FakeApiServer::requests_from`]). Building a client from
    /// it needs a Tokio runtime, so a replica can build its own on its own.
    pub fn config_as(&self, agent: &str) -> kube::Config {
        let mut config = kube::Config::new(format!("http://{}", self.addr).parse().expect("uri"));
        if !agent.is_empty() {
            config
                .headers
                .push((http::header::USER_AGENT, agent.parse().expect("user agent")));
        }
        config
    }

    /// Creates or replaces an object (an ADDED or MODIFIED event).
    pub fn apply(&self, obj: Value) {
        let collection = collection_of(&obj);
        self.store
            .lock()
            .expect("lock")
            .commit(&self.events, &collection, obj);
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
        let (namespace, name) = key_of(obj);
        store.owners.remove(&(collection.clone(), namespace, name));
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

    /// Every request so far, as "METHOD path?query".
    pub fn requests(&self) -> Vec<String> {
        let store = self.store.lock().expect("lock");
        store.requests.iter().map(|(_, r)| r.clone()).collect()
    }

    /// The requests sent with `User-Agent: agent`.
    pub fn requests_from(&self, agent: &str) -> Vec<String> {
        let store = self.store.lock().expect("lock");
        store
            .requests
            .iter()
            .filter(|(a, _)| a == agent)
            .map(|(_, r)| r.clone())
            .collect()
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
        let header = |name: http::header::HeaderName| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let agent = header(http::header::USER_AGENT);
        let content_type = header(http::header::CONTENT_TYPE);
        self.store
            .lock()
            .expect("lock")
            .requests
            .push((agent.clone(), format!("{} {}", req.method(), req.uri())));
        if req.method() == Method::POST
            && path.trim_end_matches('/') == "/apis/authentication.k8s.io/v1/tokenreviews"
        {
            return match json_body(req).await {
                Ok(review) => self.review(review),
                Err(refused) => refused,
            };
        }
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
        let failing = req.method() != Method::GET
            && self
                .store
                .lock()
                .expect("lock")
                .failing_writes
                .iter()
                .any(|(a, c)| *a == agent && *c == target.collection);
        if failing {
            return full(
                StatusCode::INTERNAL_SERVER_ERROR,
                status(500, "InternalError", "injected failure"),
            );
        }
        // As a real API server does, an unnamed writer is known by its agent.
        let writer = Writer {
            manager: query.get("fieldManager").cloned().unwrap_or(agent),
            force: query.get("force").map(String::as_str) == Some("true"),
        };
        match (req.method().clone(), target.name.clone()) {
            (Method::GET, None) if query.get("watch").map(String::as_str) == Some("true") => {
                self.watch(&target.collection, &query)
            }
            (Method::GET, None) => self.list(&target.collection, &query),
            (Method::GET, Some(name)) => {
                let store = self.store.lock().expect("lock");
                match store.object(&target.collection, &(target.namespace.clone(), name)) {
                    Some(obj) => full(StatusCode::OK, obj.clone()),
                    None => full(StatusCode::NOT_FOUND, status(404, "NotFound", "not found")),
                }
            }
            (Method::POST, None) => match json_body(req).await {
                Ok(obj) => self.create(&target, &writer, obj),
                Err(refused) => refused,
            },
            (Method::PUT, Some(name)) => match json_body(req).await {
                Ok(obj) => self.replace(&target, &name, &writer, obj),
                Err(refused) => refused,
            },
            (Method::PATCH, Some(name)) => match json_body(req).await {
                Ok(patch) => self.patch(&target, &name, &content_type, &writer, patch),
                Err(refused) => refused,
            },
            _ => full(
                StatusCode::METHOD_NOT_ALLOWED,
                status(405, "MethodNotAllowed", ""),
            ),
        }
    }

    /// TokenReview as the API server answers it: authenticated when the
    /// token is known and carries one of the requested audiences (the API
    /// server's own when none is requested), which `status.audiences` lists.
    fn review(&self, mut review: Value) -> Response<Body> {
        let store = self.store.lock().expect("lock");
        let token = review["spec"]["token"].as_str().unwrap_or("");
        let wanted: Vec<String> = match review["spec"]["audiences"].as_array() {
            Some(a) if !a.is_empty() => a
                .iter()
                .filter_map(|a| a.as_str().map(str::to_string))
                .collect(),
            _ => vec![API_SERVER_AUDIENCE.to_string()],
        };
        let status = match store.tokens.get(token) {
            Some(known) if store.ignore_audiences => json!({
                "authenticated": true,
                "user": {"username": known.username, "extra": known.extra},
            }),
            Some(known) => {
                let matched: Vec<&String> = wanted
                    .iter()
                    .filter(|a| known.audiences.contains(a))
                    .collect();
                if matched.is_empty() {
                    json!({"authenticated": false,
                           "error": "token audiences are invalid for the target audiences"})
                } else {
                    json!({
                        "authenticated": true,
                        "audiences": matched,
                        "user": {"username": known.username, "extra": known.extra},
                    })
                }
            }
            None => json!({"authenticated": false, "error": "invalid bearer token"}),
        };
        review["status"] = status;
        full(StatusCode::CREATED, review)
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
                    // A dropped watch delivers nothing sent after the drop.
                    biased;
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

    /// POST: a new object; `409 AlreadyExists` if it is there.
    fn create(&self, target: &Target, writer: &Writer, mut obj: Value) -> Response<Body> {
        if !target.namespace.is_empty() {
            obj["metadata"]["namespace"] = json!(target.namespace);
        }
        let key = key_of(&obj);
        let mut store = self.store.lock().expect("lock");
        if store.object(&target.collection, &key).is_some() {
            return full(
                StatusCode::CONFLICT,
                status(409, "AlreadyExists", &format!("{} already exists", key.1)),
            );
        }
        fields::update(
            store.owners(&target.collection, &key),
            &writer.manager,
            &Value::Null,
            &obj,
        );
        full(
            StatusCode::CREATED,
            store.commit(&self.events, &target.collection, obj),
        )
    }

    /// PUT: replaces the object (keeping its status), if `obj` carries no
    /// resource version or the current one.
    fn replace(
        &self,
        target: &Target,
        name: &str,
        writer: &Writer,
        mut obj: Value,
    ) -> Response<Body> {
        let key = (target.namespace.clone(), name.to_string());
        let mut store = self.store.lock().expect("lock");
        let Some(current) = store.object(&target.collection, &key).cloned() else {
            return full(StatusCode::NOT_FOUND, status(404, "NotFound", "not found"));
        };
        if let Some(refused) = stale(&current, &obj) {
            return refused;
        }
        identify(&mut obj, &key);
        if obj.get("status").is_none() && current.get("status").is_some() {
            obj["status"] = current["status"].clone();
        }
        fields::update(
            store.owners(&target.collection, &key),
            &writer.manager,
            &current,
            &obj,
        );
        full(
            StatusCode::OK,
            store.commit(&self.events, &target.collection, obj),
        )
    }

    /// PATCH of an object (server-side apply, merge or strategic merge
    /// patch) or of its status (the `status` of the body replaces it).
    fn patch(
        &self,
        target: &Target,
        name: &str,
        content_type: &str,
        writer: &Writer,
        patch: Value,
    ) -> Response<Body> {
        let key = (target.namespace.clone(), name.to_string());
        let mut store = self.store.lock().expect("lock");
        let existing = store.object(&target.collection, &key).cloned();
        if let Some(refused) = existing.as_ref().and_then(|current| stale(current, &patch)) {
            return refused;
        }
        let obj = if target.subresource.as_deref() == Some("status") {
            let Some(mut obj) = existing else {
                return full(StatusCode::NOT_FOUND, status(404, "NotFound", "not found"));
            };
            obj["status"] = patch["status"].clone();
            store.status_patches.push((
                format!("{}/{}/{}", target.collection, target.namespace, name),
                patch,
            ));
            obj
        } else if content_type.starts_with("application/apply-patch") {
            let mut obj = existing.unwrap_or_else(|| json!({}));
            let owners = store.owners(&target.collection, &key);
            let conflicts = fields::apply_conflicts(&obj, owners, &writer.manager, &patch);
            if !conflicts.is_empty() && !writer.force {
                let message = conflicts
                    .iter()
                    .map(|(field, owner)| format!("conflict with {owner:?}: {field}"))
                    .collect::<Vec<_>>()
                    .join("; ");
                return full(
                    StatusCode::CONFLICT,
                    status(409, "Conflict", &format!("Apply failed: {message}")),
                );
            }
            fields::apply(&mut obj, owners, &writer.manager, &patch);
            obj
        } else if content_type.starts_with("application/merge-patch")
            || content_type.starts_with("application/strategic-merge-patch")
        {
            let Some(mut obj) = existing else {
                return full(StatusCode::NOT_FOUND, status(404, "NotFound", "not found"));
            };
            let before = obj.clone();
            fields::merge(&mut obj, &patch);
            fields::update(
                store.owners(&target.collection, &key),
                &writer.manager,
                &before,
                &obj,
            );
            obj
        } else {
            return full(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                status(415, "UnsupportedMediaType", content_type),
            );
        };
        let mut obj = obj;
        identify(&mut obj, &key);
        full(
            StatusCode::OK,
            store.commit(&self.events, &target.collection, obj),
        )
    }
}

/// Who writes, as the request says: field manager and `force`.
struct Writer {
    manager: String,
    force: bool,
}

async fn json_body(req: Request<Incoming>) -> Result<Value, Response<Body>> {
    let Ok(body) = req.into_body().collect().await else {
        return Err(full(
            StatusCode::BAD_REQUEST,
            status(400, "BadRequest", "body"),
        ));
    };
    serde_json::from_slice(&body.to_bytes()).map_err(|_| {
        full(
            StatusCode::BAD_REQUEST,
            status(400, "BadRequest", "not JSON"),
        )
    })
}

/// `409 Conflict` if `sent` carries a resource version other than `current`'s.
fn stale(current: &Value, sent: &Value) -> Option<Response<Body>> {
    let sent = sent["metadata"]["resourceVersion"].as_str()?;
    (Some(sent) != current["metadata"]["resourceVersion"].as_str()).then(|| {
        full(
            StatusCode::CONFLICT,
            status(
                409,
                "Conflict",
                "the object has been modified; please apply your changes to the latest version and try again",
            ),
        )
    })
}

/// Names the object after the request path (a patch body need not).
fn identify(obj: &mut Value, (namespace, name): &(String, String)) {
    obj["metadata"]["name"] = json!(name);
    if !namespace.is_empty() {
        obj["metadata"]["namespace"] = json!(namespace);
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
