//! One HTTP request, from the client's tunnel to a response: authorize,
//! route, forward (with retries and a deadline), record.
//!
//! 1. The path is normalized ([`crate::path`]); policy, routing and the
//!    application all see the normalized one.
//! 2. The policies that apply at this waypoint decide (403 on deny).
//! 3. The route table picks a rule ([`crate::routing`]): a direct status,
//!    header changes, a weighted backend — or, with no route, the
//!    destination the client addressed.
//! 4. Per attempt: an endpoint of the backend (healthy, least loaded of two
//!    random ones), the destination workload's own policies (403 on deny),
//!    and the request on a pooled connection to it.
//! 5. A 503 (or the rule's codes) or a failed connection is retried while
//!    the retry budget lasts and the request can be sent again; the rule's
//!    timeout bounds the whole exchange up to the response head (504).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body, Incoming};
use weft_api::authz::RequestAttrs;
use weft_api::config::{Service, Workload};

use crate::destination::{self, Destination};
use crate::observe::{RequestRecord, TunnelMetrics};
use crate::path;
use crate::policy::{self, Client};
use crate::proxy::Proxy;
use crate::routing::{BackendChoice, RequestView, RetryRule, Rule};
use crate::snapshot::Snapshot;
use crate::upstream::pool::{Failed, PoolKey, PooledBody, RequestBody, SendError};
use crate::upstream::{ConnectError, Endpoint};

/// What the waypoint answers with: the upstream's body, or its own.
pub type ResponseBody = Either<PooledBody, Full<Bytes>>;

/// What a tunnel's requests share.
#[derive(Debug)]
pub struct TunnelContext {
    pub id: u64,
    pub client: Client,
    /// The tunnel's `:authority`.
    pub authority: SocketAddr,
    pub metrics: TunnelMetrics,
}

/// Where a request is going after routing.
enum Target {
    Service {
        service: Arc<Service>,
        /// Index into `service.ports`.
        port: usize,
    },
    Workload {
        workload: Arc<Workload>,
        addr: SocketAddr,
    },
}

/// What happened to a request, for the record.
struct Trace {
    path: String,
    service: Option<String>,
    endpoint: Option<(Arc<Workload>, SocketAddr)>,
    route: Option<(String, usize)>,
    attempts: u32,
    verdict: String,
}

/// Serves one request.
pub async fn handle(
    proxy: Arc<Proxy>,
    tunnel: Arc<TunnelContext>,
    request: Request<Incoming>,
) -> Response<ResponseBody> {
    let started = Instant::now();
    let method = request.method().clone();
    let mut trace = Trace {
        path: request.uri().path().to_owned(),
        service: None,
        endpoint: None,
        route: None,
        attempts: 0,
        verdict: "allow".into(),
    };
    let response = serve(&proxy, &tunnel, request, &mut trace, started).await;
    proxy.observer.request(&RequestRecord {
        tunnel: tunnel.id,
        metrics: &tunnel.metrics,
        client: &tunnel.client,
        method: &method,
        path: &trace.path,
        authority: tunnel.authority,
        service: trace.service.as_deref(),
        endpoint: trace.endpoint.as_ref().map(|(w, a)| (w.as_ref(), *a)),
        route: trace.route.as_ref().map(|(r, i)| (r.as_str(), *i)),
        status: response.status(),
        duration: started.elapsed(),
        attempts: trace.attempts,
        verdict: &trace.verdict,
    });
    response
}

/// A response of the waypoint's own.
pub fn local(status: StatusCode, body: &'static str) -> Response<ResponseBody> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from_static(
        body.as_bytes(),
    ))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

fn refuse(
    trace: &mut Trace,
    status: StatusCode,
    body: &'static str,
    why: String,
) -> Response<ResponseBody> {
    trace.verdict = why;
    local(status, body)
}

async fn serve(
    proxy: &Proxy,
    tunnel: &TunnelContext,
    request: Request<Incoming>,
    trace: &mut Trace,
    started: Instant,
) -> Response<ResponseBody> {
    let snapshot = proxy.config.snapshot();
    let store = &proxy.config.store;
    let dest = match destination::resolve(store, &proxy.me, tunnel.authority) {
        Ok(dest) => dest,
        Err(e) => {
            return refuse(
                trace,
                e.status(),
                "destination not served by this waypoint\n",
                e.to_string(),
            );
        }
    };
    trace.service = dest.service().map(|(ns, n)| format!("{ns}/{n}"));
    let (mut parts, body) = request.into_parts();
    let path = match path::normalize(parts.uri.path()) {
        Ok(p) => p.into_owned(),
        Err(e) => {
            return refuse(
                trace,
                StatusCode::BAD_REQUEST,
                "bad request path\n",
                e.to_string(),
            );
        }
    };
    trace.path.clone_from(&path);
    let host = request_host(&parts, tunnel.authority);

    // Policies at this waypoint, before anything else happens.
    let mut attrs = LazyAttrs::default();
    let waypoint_policies = snapshot.waypoint_policies(dest.service());
    if !waypoint_policies.is_empty() {
        let attrs = attrs.get(&waypoint_policies, &parts, &path, &host);
        let conn = tunnel.client.connection(tunnel.authority);
        let decision = policy::authorize_request(&waypoint_policies, &conn, attrs);
        if !decision.allowed {
            return refuse(
                trace,
                StatusCode::FORBIDDEN,
                "access denied\n",
                decision.reason.to_string(),
            );
        }
    }

    // Routing.
    let view = RequestView {
        method: &parts.method,
        path: &path,
        query: parts.uri.query(),
        headers: &parts.headers,
        host: &host,
    };
    let rule = match select_rule(&snapshot, &dest, &view, tunnel.authority.port()) {
        Ok(rule) => rule,
        Err(()) => {
            return refuse(
                trace,
                StatusCode::NOT_FOUND,
                "no route\n",
                "no route matched".into(),
            );
        }
    };
    if let Some(rule) = &rule {
        trace.route = Some((rule.route.clone(), rule.index));
        if let Some(status) = rule.direct_status {
            let mut response = local(status, "");
            *response.body_mut() = Either::Right(Full::new(Bytes::new()));
            return response;
        }
        for op in &rule.header_ops {
            op.apply(&mut parts.headers);
        }
    }
    let target = match choose_target(store, rule.as_deref(), &dest, tunnel.authority.port()) {
        Ok(target) => target,
        Err(why) => {
            return refuse(
                trace,
                StatusCode::INTERNAL_SERVER_ERROR,
                "no backend\n",
                why,
            );
        }
    };
    let retry = rule
        .as_ref()
        .and_then(|r| r.retry.clone())
        .unwrap_or_else(|| proxy.settings.default_retry.clone());
    let deadline = rule.as_ref().and_then(|r| r.timeout).map(|t| started + t);
    let http2_upstream = parts.version == Version::HTTP_2 || dest.wants_h2();

    let retryable_method = retry.configured || is_idempotent(&parts.method);
    let mut body = prepare_body(
        body,
        retryable_method && retry.attempts > 0,
        proxy.settings.max_retry_body,
    )
    .await;
    let body_error = matches!(body, PreparedBody::Failed);
    if body_error {
        return refuse(
            trace,
            StatusCode::BAD_REQUEST,
            "bad request body\n",
            "request body failed".into(),
        );
    }

    let forward = Forward {
        proxy,
        snapshot: &snapshot,
        tunnel,
        parts: &parts,
        path: &path,
        host: &host,
        http2: http2_upstream,
    };
    let attempts = async {
        let mut last_failure = (
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream unavailable\n",
            String::new(),
        );
        loop {
            trace.attempts += 1;
            let budget_left = trace.attempts <= retry.attempts;
            let endpoint = match forward.pick(&target) {
                Ok(e) => e,
                Err(why) => {
                    return refuse(
                        trace,
                        StatusCode::SERVICE_UNAVAILABLE,
                        "no healthy upstream\n",
                        why,
                    );
                }
            };
            trace.endpoint = Some((endpoint.workload.clone(), endpoint.addr));
            if let Err(why) = forward.authorize_endpoint(&endpoint, &mut attrs) {
                return refuse(trace, StatusCode::FORBIDDEN, "access denied\n", why);
            }
            let Some(request_body) = body.take() else {
                // The body went out with an earlier attempt.
                let (status, text, why) = last_failure;
                return refuse(trace, status, text, why);
            };
            let upstream = match forward.request(request_body) {
                Ok(r) => r,
                Err(why) => return refuse(trace, StatusCode::BAD_REQUEST, "bad request\n", why),
            };
            let key = PoolKey {
                addr: endpoint.addr,
                transport: endpoint.transport.clone(),
                http2: http2_upstream,
            };
            let sent_at = Instant::now();
            match proxy.http.send(&key, upstream).await {
                Ok(response) => {
                    let status = response.status();
                    if let Some(load) = &endpoint.load {
                        load.connected(sent_at.elapsed());
                    }
                    if budget_left
                        && body.replayable()
                        && retryable_method
                        && retry.retries_status(status)
                    {
                        last_failure = (
                            status,
                            "upstream error\n",
                            format!("upstream answered {status}"),
                        );
                        drain_briefly(response).await;
                        backoff(&retry, trace.attempts, deadline).await;
                        continue;
                    }
                    return respond(response);
                }
                Err(Failed { error, unsent }) => {
                    if let Some(load) = &endpoint.load {
                        load.failed();
                    }
                    let never_sent = unsent.is_some();
                    if let Some(unsent) = unsent {
                        body.put_back(unsent.into_body());
                    }
                    last_failure = failure(&error);
                    let may_retry = budget_left
                        && body.has_body()
                        && (never_sent || (retryable_method && body.replayable()));
                    if may_retry {
                        backoff(&retry, trace.attempts, deadline).await;
                        continue;
                    }
                    let (status, text, why) = last_failure;
                    return refuse(trace, status, text, why);
                }
            }
        }
    };
    match deadline {
        None => attempts.await,
        Some(deadline) => match tokio::time::timeout_at(deadline.into(), attempts).await {
            Ok(response) => response,
            Err(_) => refuse(
                trace,
                StatusCode::GATEWAY_TIMEOUT,
                "upstream request timeout\n",
                "route timeout".into(),
            ),
        },
    }
}

/// The route rule for a request: `Ok(None)` = no route applies (go to the
/// destination), `Err` = routes apply and none matched (404).
fn select_rule(
    snapshot: &Snapshot,
    dest: &Destination,
    view: &RequestView<'_>,
    port: u16,
) -> Result<Option<Arc<Rule>>, ()> {
    if let Some((ns, name)) = dest.service()
        && let Some(table) = snapshot.routes.for_service(ns, name)
        && !table.is_empty_for(port)
    {
        return table.find(view, port, false).cloned().map(Some).ok_or(());
    }
    Ok(snapshot.routes.gateway().find(view, port, true).cloned())
}

fn choose_target(
    store: &weft_ztunnel::state::WorkloadStore,
    rule: Option<&Rule>,
    dest: &Destination,
    request_port: u16,
) -> Result<Target, String> {
    let to_destination = || match dest {
        Destination::Service { service, port, .. } => Target::Service {
            service: service.clone(),
            port: *port,
        },
        Destination::Workload { workload, addr } => Target::Workload {
            workload: workload.clone(),
            addr: *addr,
        },
    };
    let Some(rule) = rule else {
        return Ok(to_destination());
    };
    match rule.choose(|total| rand::random_range(0..total)) {
        BackendChoice::Destination => Ok(to_destination()),
        BackendChoice::Unavailable => Err(format!(
            "route {} rule {}: every backend has weight 0",
            rule.route, rule.index
        )),
        BackendChoice::Backend(b) => {
            let key = format!("{}/{}", b.namespace, b.name);
            let service = store
                .service(&key)
                .ok_or_else(|| format!("backend service {key} does not exist"))?;
            let port_number = if b.port == 0 {
                u32::from(request_port)
            } else {
                b.port
            };
            let port = service
                .ports
                .iter()
                .position(|p| p.service_port == port_number)
                .ok_or_else(|| format!("backend service {key} has no port {port_number}"))?;
            Ok(Target::Service { service, port })
        }
    }
}

/// What one attempt needs.
struct Forward<'a> {
    proxy: &'a Proxy,
    snapshot: &'a Snapshot,
    tunnel: &'a TunnelContext,
    parts: &'a Parts,
    path: &'a str,
    host: &'a str,
    http2: bool,
}

impl Forward<'_> {
    fn pick(&self, target: &Target) -> Result<Endpoint, String> {
        let hbone_port = self.proxy.settings.upstream_hbone_port;
        match target {
            Target::Workload { workload, addr } => {
                Endpoint::new(workload.clone(), *addr, &self.proxy.me, hbone_port, None)
                    .map_err(|e| e.to_string())
            }
            Target::Service { service, port } => {
                let store = &self.proxy.config.store;
                let port = service
                    .ports
                    .get(*port)
                    .ok_or_else(|| "service port vanished".to_owned())?;
                let candidates = self.snapshot.candidates(store, service, port);
                let (chosen, load) = self.proxy.lb.pick(&candidates, None).ok_or_else(|| {
                    format!(
                        "service {}/{} has no healthy endpoint",
                        service.namespace, service.name
                    )
                })?;
                Endpoint::new(
                    chosen.workload.clone(),
                    chosen.addr,
                    &self.proxy.me,
                    hbone_port,
                    Some(load),
                )
                .map_err(|e| e.to_string())
            }
        }
    }

    /// The destination workload's own policies, with the real client.
    fn authorize_endpoint(&self, endpoint: &Endpoint, attrs: &mut LazyAttrs) -> Result<(), String> {
        let policies = self
            .snapshot
            .workload_policies(&self.proxy.config.store, &endpoint.workload);
        if policies.is_empty() {
            return Ok(());
        }
        let attrs = attrs.get(&policies, self.parts, self.path, self.host);
        let conn = self.tunnel.client.connection(endpoint.addr);
        let decision = policy::authorize_request(&policies, &conn, attrs);
        if decision.allowed {
            Ok(())
        } else {
            Err(decision.reason.to_string())
        }
    }

    /// The request as it goes upstream.
    fn request(&self, body: RequestBody) -> Result<Request<RequestBody>, String> {
        let path_and_query = match self.parts.uri.query() {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.to_owned(),
        };
        let mut headers = self.parts.headers.clone();
        strip_hop_by_hop(&mut headers, self.http2);
        let (uri, version) = if self.http2 {
            headers.remove(header::HOST);
            let uri = Uri::builder()
                .scheme("http")
                .authority(self.host)
                .path_and_query(path_and_query)
                .build()
                .map_err(|e| format!("request target: {e}"))?;
            (uri, Version::HTTP_2)
        } else {
            if !headers.contains_key(header::HOST) {
                let host = HeaderValue::from_str(self.host).map_err(|e| format!("host: {e}"))?;
                headers.insert(header::HOST, host);
            }
            let uri: Uri = path_and_query
                .parse()
                .map_err(|e| format!("request target: {e}"))?;
            (uri, Version::HTTP_11)
        };
        let mut request = Request::new(body);
        *request.method_mut() = self.parts.method.clone();
        *request.uri_mut() = uri;
        *request.version_mut() = version;
        *request.headers_mut() = headers;
        Ok(request)
    }
}

/// What the evaluator knows of the request, built on first use; headers
/// are copied only for policies that read them.
#[derive(Default)]
struct LazyAttrs {
    attrs: Option<RequestAttrs>,
    with_headers: bool,
}

impl LazyAttrs {
    fn get(
        &mut self,
        policies: &[Arc<weft_api::config::Authorization>],
        parts: &Parts,
        path: &str,
        host: &str,
    ) -> &RequestAttrs {
        let need_headers = policy::reads_headers(policies);
        if self.attrs.is_none() || (need_headers && !self.with_headers) {
            self.with_headers = need_headers;
            self.attrs = Some(policy::request_attrs(
                &parts.method,
                path,
                host,
                &parts.headers,
                need_headers,
            ));
        }
        self.attrs.get_or_insert_with(RequestAttrs::default)
    }
}

/// The request's host: `:authority`, else `Host`, else the tunnel's address.
fn request_host(parts: &Parts, authority: SocketAddr) -> String {
    parts
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| authority.to_string())
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Headers that belong to one hop, not to the request.
fn strip_hop_by_hop(headers: &mut HeaderMap, http2: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().to_ascii_lowercase().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    // gRPC needs `te: trailers` over HTTP/2; any other TE is per hop.
    let keep_te = http2
        && headers
            .get(header::TE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    if !keep_te {
        headers.remove(header::TE);
    }
}

fn respond(response: Response<PooledBody>) -> Response<ResponseBody> {
    let (mut parts, body) = response.into_parts();
    let named: Vec<HeaderName> = parts
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().to_ascii_lowercase().as_bytes()).ok())
        .collect();
    for name in named {
        parts.headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        parts.headers.remove(name);
    }
    parts.headers.remove("keep-alive");
    parts.headers.remove("proxy-connection");
    Response::from_parts(parts, Either::Left(body))
}

/// Reads a small retried response to its end, so its connection can be
/// reused; a large one is dropped (and its connection closed).
async fn drain_briefly(response: Response<PooledBody>) {
    if response
        .body()
        .size_hint()
        .upper()
        .is_some_and(|n| n <= 16 * 1024)
    {
        let _ =
            tokio::time::timeout(Duration::from_millis(100), response.into_body().collect()).await;
    }
}

async fn backoff(retry: &RetryRule, attempt: u32, deadline: Option<Instant>) {
    let base = retry.backoff.saturating_mul(attempt.min(8));
    let wait = base.mul_f64(0.5 + rand::random::<f64>());
    let wait = match deadline {
        Some(d) => wait.min(d.saturating_duration_since(Instant::now())),
        None => wait,
    };
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
}

fn failure(error: &SendError) -> (StatusCode, &'static str, String) {
    match error {
        SendError::Connect(ConnectError::Timeout(_)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream connect timeout\n",
            error.to_string(),
        ),
        SendError::Connect(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream connect error\n",
            error.to_string(),
        ),
        SendError::Http(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream reset before response\n",
            error.to_string(),
        ),
    }
}

/// The request body across attempts.
enum PreparedBody {
    /// Buffered: every attempt sends a copy.
    Buffered(Bytes),
    /// Streamed: sent by one attempt only (or handed back unsent).
    Streaming(Option<RequestBody>),
    /// The client's body broke while buffering.
    Failed,
}

impl PreparedBody {
    fn take(&mut self) -> Option<RequestBody> {
        match self {
            PreparedBody::Buffered(bytes) => Some(Either::Right(Full::new(bytes.clone()))),
            PreparedBody::Streaming(body) => body.take(),
            PreparedBody::Failed => None,
        }
    }

    fn put_back(&mut self, body: RequestBody) {
        if let PreparedBody::Streaming(slot) = self {
            *slot = Some(body);
        }
    }

    fn replayable(&self) -> bool {
        matches!(self, PreparedBody::Buffered(_))
    }

    fn has_body(&self) -> bool {
        match self {
            PreparedBody::Buffered(_) => true,
            PreparedBody::Streaming(body) => body.is_some(),
            PreparedBody::Failed => false,
        }
    }
}

/// Buffers the body when a retry may need it again and it is small and of
/// known size; otherwise it streams through.
async fn prepare_body(body: Incoming, retry_possible: bool, limit: usize) -> PreparedBody {
    if body.is_end_stream() {
        return PreparedBody::Buffered(Bytes::new());
    }
    let small = body.size_hint().upper().is_some_and(|n| n <= limit as u64);
    if retry_possible && small {
        return match body.collect().await {
            Ok(collected) => PreparedBody::Buffered(collected.to_bytes()),
            Err(_) => PreparedBody::Failed,
        };
    }
    PreparedBody::Streaming(Some(Either::Left(body)))
}
