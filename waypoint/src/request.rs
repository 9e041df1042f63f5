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

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body, Incoming};
use hyper_util::rt::TokioIo;
use tracing::debug;
use weft_api::authz::{ConnectionAttrs, RequestAttrs};
use weft_api::config::{Service, Workload};

use crate::destination::{self, Destination};
use crate::observe::{RequestRecord, TunnelMetrics};
use crate::otel::{ClientSpan, Outcome, ServerSpan};
use crate::path;
use crate::policy::{self, Client};
use crate::proxy::Proxy;
use crate::routing::{Backend, BackendChoice, MirrorRule, RequestView, RetryRule, Rule, Selected};
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
    /// What the waypoint's policies see of the connection (the client to
    /// the authority): the same for every request of the tunnel.
    pub connection: ConnectionAttrs,
    pub metrics: TunnelMetrics,
    /// The trace context the tunnel's CONNECT carried (a client ztunnel's
    /// connection span): the parent of requests that bring none of their
    /// own. Empty when it carried none, or a malformed one.
    pub connect_trace: http::HeaderMap,
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
    service: Option<Arc<Service>>,
    endpoint: Option<(Arc<Workload>, SocketAddr)>,
    route: Option<(String, usize)>,
    attempts: u32,
    /// "allow" unless a refusal says why not: no allocation on the usual
    /// path.
    verdict: Cow<'static, str>,
    /// The request's SERVER span, when tracing is on.
    span: Option<ServerSpan>,
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
        span: proxy.tracing.as_ref().map(|t| {
            t.server(
                &request,
                &tunnel.connect_trace,
                tunnel.authority,
                &tunnel.client.principal,
                tunnel.client.ip,
            )
        }),
    };
    let response = serve(&proxy, &tunnel, request, &mut trace, started).await;
    if let Some(span) = trace.span.take() {
        span.end(Outcome {
            status: response.status(),
            verdict: trace.verdict.as_ref(),
            route: trace.route.as_ref().map(|(r, i)| (r.as_str(), *i)),
            service: trace.service.as_deref().map(|s| s.hostname.as_str()),
            endpoint: trace
                .endpoint
                .as_ref()
                .map(|(w, a)| (format!("{}/{}", w.namespace, w.name), *a)),
            attempts: trace.attempts,
        });
    }
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
        verdict: trace.verdict.as_ref(),
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

/// The waypoint's own answer in place of the upstream's: what the client
/// sees, and the verdict the request is recorded with.
struct Refusal {
    status: StatusCode,
    body: &'static str,
    why: String,
}

impl Refusal {
    fn new(status: StatusCode, body: &'static str, why: impl Into<String>) -> Refusal {
        Refusal {
            status,
            body,
            why: why.into(),
        }
    }
}

fn refuse(trace: &mut Trace, refusal: Refusal) -> Response<ResponseBody> {
    trace.verdict = Cow::Owned(refusal.why);
    local(refusal.status, refusal.body)
}

async fn serve(
    proxy: &Arc<Proxy>,
    tunnel: &TunnelContext,
    request: Request<Incoming>,
    trace: &mut Trace,
    started: Instant,
) -> Response<ResponseBody> {
    match exchange(proxy, tunnel, request, trace, started).await {
        Ok(response) => response,
        Err(refusal) => refuse(trace, refusal),
    }
}

/// Authorize, route, forward. Every refusal comes back as `Err`, so the
/// verdict is recorded in one place, by `serve`.
async fn exchange(
    proxy: &Arc<Proxy>,
    tunnel: &TunnelContext,
    request: Request<Incoming>,
    trace: &mut Trace,
    started: Instant,
) -> Result<Response<ResponseBody>, Refusal> {
    let snapshot = proxy.config.snapshot();
    let mut admitted = admit(proxy, tunnel, &snapshot, request, trace)?;
    let port = tunnel.authority.port();
    let rule = match route(&snapshot, &mut admitted, tunnel, trace)? {
        Routed::Answer(status) => {
            let mut response = local(status, "");
            *response.body_mut() = Either::Right(Full::new(Bytes::new()));
            return Ok(response);
        }
        Routed::Redirect { status, location } => {
            let mut response = local(status, "");
            *response.body_mut() = Either::Right(Full::new(Bytes::new()));
            let location = HeaderValue::from_str(&location).map_err(|e| {
                Refusal::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "bad redirect\n",
                    format!("redirect location: {e}"),
                )
            })?;
            response.headers_mut().insert(header::LOCATION, location);
            response.headers_mut().remove(header::CONTENT_TYPE);
            return Ok(response);
        }
        Routed::Forward(rule) => rule,
    };
    let Admitted {
        dest,
        mut parts,
        body,
        path,
        host,
        mut attrs,
    } = admitted;
    let (target, backend) = choose_target(&proxy.config.store, rule.as_deref(), &dest, port)
        .map_err(|why| Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, "no backend\n", why))?;
    for op in backend.iter().flat_map(|b| &b.header_ops) {
        op.apply(&mut parts.headers);
    }
    // The rule's response changes, then the backend's own.
    let response_ops = || {
        rule.iter()
            .flat_map(|r| &r.response_header_ops)
            .chain(backend.iter().flat_map(|b| &b.response_header_ops))
    };
    // An `Upgrade` (WebSocket, ...) or a `CONNECT` the server side can hand
    // over: policy and routing applied to it above like any request, then
    // one attempt on a connection of its own.
    if let Some(switch) = switch_of(&parts)
        && let Some(client) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
    {
        let forward = Forward {
            proxy,
            snapshot: &snapshot,
            tunnel,
            parts: &parts,
            path: &path,
            host: &host,
            http2: false,
            backend_timeout: rule.as_deref().and_then(|r| r.backend_timeout),
        };
        let deadline = rule.as_deref().and_then(|r| r.timeout);
        let upgrade = Box::pin(forward.upgrade(&target, switch, client, body, &mut attrs, trace));
        let mut response = within(deadline, upgrade).await.map_err(|_| {
            Refusal::new(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream request timeout\n",
                "route timeout",
            )
        })??;
        for op in response_ops() {
            op.apply(response.headers_mut());
        }
        return Ok(response);
    }
    let retries = Retries::new(
        rule.as_deref(),
        &proxy.settings.default_retry,
        &parts.method,
        started,
    );

    let mirrors = rule.as_deref().map_or(&[][..], |r| r.mirrors.as_slice());
    let mut body = prepare_body(
        body,
        retries.may_retry() || !mirrors.is_empty(),
        proxy.settings.max_retry_body,
    )
    .await;
    if matches!(body, PreparedBody::Failed) {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "bad request body\n",
            "request body failed",
        ));
    }

    let forward = Forward {
        proxy,
        snapshot: &snapshot,
        tunnel,
        parts: &parts,
        path: &path,
        host: &host,
        http2: parts.version == Version::HTTP_2 || dest.wants_h2(),
        backend_timeout: rule.as_deref().and_then(|r| r.backend_timeout),
    };
    for m in mirrors {
        if m.takes(|n| rand::random_range(0..n)) {
            forward.mirror(proxy, m, port, &mut body);
        }
    }
    // The deadline covers every attempt and backoff up to the response
    // head; the response body streams on after it.
    let deadline = retries.deadline;
    // Boxed where it is made: a named local keeps its room in this
    // function's state even after it is moved.
    let attempts = Box::pin(forward.with_retries(&target, &mut body, &mut attrs, retries, trace));
    let response = within_deadline(deadline, attempts).await.map_err(|_| {
        Refusal::new(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream request timeout\n",
            "route timeout",
        )
    })??;
    let mut response = respond(response);
    for op in response_ops() {
        op.apply(response.headers_mut());
    }
    Ok(response)
}

/// `fut`, within `limit` if there is one, as one future. Awaiting the two
/// cases in two arms gave each its own room in the caller's state, and
/// with the nesting a request's future was 49 KB, held for every request
/// in flight (callers box the big ones, see the size test).
fn within<F: Future>(
    limit: Option<Duration>,
    fut: F,
) -> impl Future<Output = Result<F::Output, tokio::time::error::Elapsed>> {
    use tokio_util::either::Either;
    match limit {
        None => Either::Left(async move { Ok(fut.await) }),
        Some(limit) => Either::Right(tokio::time::timeout(limit, fut)),
    }
}

/// [`within`], until an instant.
fn within_deadline<F: Future>(
    deadline: Option<Instant>,
    fut: F,
) -> impl Future<Output = Result<F::Output, tokio::time::error::Elapsed>> {
    within(
        deadline.map(|d| d.saturating_duration_since(Instant::now())),
        fut,
    )
}

/// A request this waypoint's own policies let through.
struct Admitted {
    dest: Destination,
    parts: Parts,
    body: Incoming,
    /// Normalized: policy, routing and the upstream all see this one.
    path: String,
    host: String,
    /// Kept for the endpoint's policies, so the request is read once.
    attrs: LazyAttrs,
}

/// Resolves the destination, normalizes the path and applies the policies
/// at this waypoint, before anything else happens.
fn admit(
    proxy: &Proxy,
    tunnel: &TunnelContext,
    snapshot: &Snapshot,
    request: Request<Incoming>,
    trace: &mut Trace,
) -> Result<Admitted, Refusal> {
    let dest =
        destination::resolve(&proxy.config.store, &proxy.me, tunnel.authority).map_err(|e| {
            Refusal::new(
                e.status(),
                "destination not served by this waypoint\n",
                e.to_string(),
            )
        })?;
    trace.service = dest.addressed_service().cloned();
    let (parts, body) = request.into_parts();
    if parts.method == Method::CONNECT && parts.version == Version::HTTP_2 {
        return Err(Refusal::new(
            StatusCode::NOT_IMPLEMENTED,
            "CONNECT over HTTP/2 is not supported; use HTTP/1.1\n",
            "CONNECT over HTTP/2",
        ));
    }
    // A CONNECT names a host and port, no path: policies and route matches
    // see it as `/` (a route selects it by `method: CONNECT`).
    let target = match parts.method {
        Method::CONNECT => "/",
        _ => parts.uri.path(),
    };
    let path = match path::normalize(target) {
        Ok(p) => p.into_owned(),
        Err(e) => {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "bad request path\n",
                e.to_string(),
            ));
        }
    };
    trace.path.clone_from(&path);
    let host = request_host(&parts, tunnel.authority);

    let mut attrs = LazyAttrs::default();
    let waypoint_policies = snapshot.waypoint_policies(dest.service());
    if !waypoint_policies.is_empty() {
        let attrs = attrs.get(&waypoint_policies, &parts, &path, &host);
        let decision = policy::authorize_request(&waypoint_policies, &tunnel.connection, attrs);
        if !decision.allowed {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                "access denied\n",
                decision.reason.to_string(),
            ));
        }
    }
    Ok(Admitted {
        dest,
        parts,
        body,
        path,
        host,
        attrs,
    })
}

/// What routing made of a request.
enum Routed {
    /// The rule answers with a status of its own; nothing goes upstream.
    Answer(StatusCode),
    /// The rule redirects the client.
    Redirect {
        status: StatusCode,
        location: String,
    },
    /// On to a backend, by this rule (`None`: to the destination).
    Forward(Option<Arc<Rule>>),
}

/// Picks the route rule and applies its header changes.
fn route(
    snapshot: &Snapshot,
    request: &mut Admitted,
    tunnel: &TunnelContext,
    trace: &mut Trace,
) -> Result<Routed, Refusal> {
    let port = tunnel.authority.port();
    let view = RequestView {
        method: &request.parts.method,
        path: &request.path,
        query: request.parts.uri.query(),
        headers: &request.parts.headers,
        host: &request.host,
        client_namespace: tunnel.client.identity.namespace(),
    };
    let selected = select_rule(snapshot, &request.dest, &view, port)
        .map_err(|()| Refusal::new(StatusCode::NOT_FOUND, "no route\n", "no route matched"))?;
    let Some((rule, prefix)) = selected else {
        return Ok(Routed::Forward(None));
    };
    trace.route = Some((rule.route.clone(), rule.index));
    if let Some(redirect) = &rule.redirect {
        let location = redirect.location(
            &request.host,
            port,
            &request.path,
            request.parts.uri.query(),
            prefix.as_deref(),
        );
        return Ok(Routed::Redirect {
            status: redirect.status,
            location,
        });
    }
    if let Some(status) = rule.direct_status {
        return Ok(Routed::Answer(status));
    }
    for op in &rule.header_ops {
        op.apply(&mut request.parts.headers);
    }
    if let Some(rewrite) = &rule.rewrite {
        if let Some(change) = &rewrite.path {
            request.path = change.apply(&request.path, prefix.as_deref());
        }
        if let Some(hostname) = &rewrite.hostname {
            let value = HeaderValue::from_str(hostname).map_err(|e| {
                Refusal::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "bad rewrite\n",
                    format!("rewrite hostname: {e}"),
                )
            })?;
            request.parts.headers.insert(header::HOST, value);
            request.host.clone_from(hostname);
        }
        // The endpoint's policies judge the request it will receive.
        request.attrs = LazyAttrs::default();
    }
    Ok(Routed::Forward(Some(rule)))
}

/// One request's retry state: how many attempts it may make, the backoff
/// between them, the route's deadline, and what to answer once it gives up.
struct Retries {
    rule: RetryRule,
    /// Sending the request twice is safe: the route asked for retries, or
    /// the method is idempotent.
    method_retryable: bool,
    deadline: Option<Instant>,
    /// Attempts started so far, the first included.
    made: u32,
    /// The answer if no later attempt does better.
    last_failure: Refusal,
}

impl Retries {
    fn new(rule: Option<&Rule>, default: &RetryRule, method: &Method, started: Instant) -> Retries {
        let retry = rule
            .and_then(|r| r.retry.clone())
            .unwrap_or_else(|| default.clone());
        let deadline = rule.and_then(|r| r.timeout).map(|t| started + t);
        Retries {
            method_retryable: retry.configured || is_idempotent(method),
            rule: retry,
            deadline,
            made: 0,
            // Reported only if the body is gone before any attempt failed.
            last_failure: Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream unavailable\n",
                String::new(),
            ),
        }
    }

    /// Whether any retry could happen, so the body is worth buffering.
    fn may_retry(&self) -> bool {
        self.method_retryable && self.rule.attempts > 0
    }

    /// Counts the attempt about to start; returns its number (from 1).
    fn begin_attempt(&mut self) -> u32 {
        self.made += 1;
        self.made
    }

    /// `rule.attempts` counts retries, so the first attempt is free.
    fn budget_left(&self) -> bool {
        self.made <= self.rule.attempts
    }

    /// The upstream answered, but with a status the rule retries. Only a
    /// buffered body can be sent again.
    fn should_retry_status(&self, status: StatusCode, body: &PreparedBody) -> bool {
        self.budget_left()
            && body.replayable()
            && self.method_retryable
            && self.rule.retries_status(status)
    }

    /// The exchange failed. A request that never left may go again whatever
    /// its method; one that did only if it is safe and its body replayable.
    fn should_retry_failure(&self, never_sent: bool, body: &PreparedBody) -> bool {
        self.budget_left()
            && body.has_body()
            && (never_sent || (self.method_retryable && body.replayable()))
    }

    fn record_failure(&mut self, failure: Refusal) {
        self.last_failure = failure;
    }

    fn give_up(self) -> Refusal {
        self.last_failure
    }

    /// Waits longer after each attempt (capped), jittered so that clients
    /// retrying together spread out, and never past the deadline. The
    /// jitter only adds: the rule's backoff is a minimum (an HTTPRoute's
    /// `retry.backoff`, GEP-1731: never retried sooner).
    async fn backoff(&self) {
        let base = self.rule.backoff.saturating_mul(self.made.min(8));
        let wait = base.mul_f64(1.0 + rand::random::<f64>() / 2.0);
        let wait = match self.deadline {
            Some(d) => wait.min(d.saturating_duration_since(Instant::now())),
            None => wait,
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// A rule a request matched and the path prefix of that match, owned.
type MatchedRule = (Arc<Rule>, Option<String>);

/// The route rule for a request and the path prefix its match had:
/// `Ok(None)` = no route applies (go to the destination), `Err` = routes
/// apply and none matched (404).
fn select_rule(
    snapshot: &Snapshot,
    dest: &Destination,
    view: &RequestView<'_>,
    port: u16,
) -> Result<Option<MatchedRule>, ()> {
    let owned = |s: Selected<'_>| (s.rule.clone(), s.prefix.map(str::to_owned));
    if let Some((ns, name)) = dest.service()
        && let Some(table) = snapshot.routes.for_service(ns, name)
        && !table.is_empty_for(port, view.client_namespace)
    {
        return table.find(view, port, false).map(owned).map(Some).ok_or(());
    }
    Ok(snapshot.routes.gateway().find(view, port, true).map(owned))
}

/// Where the request goes, and the route's backend it went to (`None`: to
/// its destination, no route or no backends listed).
fn choose_target<'r>(
    store: &weft_runtime::store::WorkloadStore,
    rule: Option<&'r Rule>,
    dest: &Destination,
    request_port: u16,
) -> Result<(Target, Option<&'r Backend>), String> {
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
        return Ok((to_destination(), None));
    };
    match rule.choose(|total| rand::random_range(0..total)) {
        BackendChoice::Destination => Ok((to_destination(), None)),
        BackendChoice::Unavailable => Err(format!(
            "route {} rule {}: every backend has weight 0",
            rule.route, rule.index
        )),
        BackendChoice::Backend(b) => Ok((backend_target(store, b, request_port)?, Some(b))),
    }
}

/// A backend Service's port (0 = the port the request came for).
fn backend_target(
    store: &weft_runtime::store::WorkloadStore,
    b: &Backend,
    request_port: u16,
) -> Result<Target, String> {
    let key = format!("{}/{}", b.namespace, b.name);
    if let Some(why) = &b.unresolved {
        return Err(format!("backend {key}: {why}"));
    }
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

/// How long a mirrored copy may take before it is dropped: the client never
/// waits for it, but it holds a connection and a drain slot.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(10);

/// What one attempt needs.
struct Forward<'a> {
    proxy: &'a Proxy,
    snapshot: &'a Snapshot,
    tunnel: &'a TunnelContext,
    parts: &'a Parts,
    path: &'a str,
    host: &'a str,
    http2: bool,
    /// Each attempt's limit, from the rule.
    backend_timeout: Option<Duration>,
}

impl Forward<'_> {
    /// Attempts the request until one gets an answer worth returning, the
    /// retry budget runs out, or something refuses it outright.
    async fn with_retries(
        &self,
        target: &Target,
        body: &mut PreparedBody,
        attrs: &mut LazyAttrs,
        mut retries: Retries,
        trace: &mut Trace,
    ) -> Result<Response<PooledBody>, Refusal> {
        loop {
            trace.attempts = retries.begin_attempt();
            let endpoint = self.endpoint(target, attrs, trace)?;
            let Some(request_body) = body.take() else {
                // The body went out with an earlier attempt.
                return Err(retries.give_up());
            };
            let mut upstream = self
                .request(request_body)
                .map_err(|why| Refusal::new(StatusCode::BAD_REQUEST, "bad request\n", why))?;
            let span = client_span(trace, &mut upstream, &endpoint);
            let sent = match within(
                self.backend_timeout,
                Box::pin(self.send(&endpoint, upstream)),
            )
            .await
            {
                Ok(sent) => sent,
                Err(_) => {
                    if let Some(span) = span {
                        span.failed("timeout", "backend request timeout".into());
                    }
                    if let Some(load) = &endpoint.load {
                        load.failed();
                    }
                    retries.record_failure(Refusal::new(
                        StatusCode::GATEWAY_TIMEOUT,
                        "upstream request timeout\n",
                        "backend request timeout",
                    ));
                    if !retries.should_retry_failure(false, body) {
                        return Err(retries.give_up());
                    }
                    retries.backoff().await;
                    continue;
                }
            };
            if let Some(span) = span {
                match &sent {
                    Ok(response) => span.answered(response.status()),
                    Err(Failed { error, .. }) => span.failed(error_type(error), error.to_string()),
                }
            }
            match sent {
                Ok(response) => {
                    let status = response.status();
                    if !retries.should_retry_status(status, body) {
                        return Ok(response);
                    }
                    retries.record_failure(Refusal::new(
                        status,
                        "upstream error\n",
                        format!("upstream answered {status}"),
                    ));
                    drain_briefly(response).await;
                }
                Err(Failed { error, unsent }) => {
                    let never_sent = unsent.is_some();
                    if let Some(unsent) = unsent {
                        body.put_back(unsent.into_body());
                    }
                    retries.record_failure(failure(&error));
                    if !retries.should_retry_failure(never_sent, body) {
                        return Err(retries.give_up());
                    }
                }
            }
            retries.backoff().await;
        }
    }

    /// Sends a copy of the request to `mirror`'s backend and forgets it: the
    /// answer is drained and dropped, a failure only counted. Only a body
    /// held in memory can be copied, so a streamed one is not mirrored.
    fn mirror(&self, proxy: &Arc<Proxy>, mirror: &MirrorRule, port: u16, body: &mut PreparedBody) {
        let skipped = |reason: &'static str| {
            metrics::counter!("weft_mirror_requests_total", "result" => reason).increment(1);
        };
        if !body.replayable() {
            return skipped("streamed_body");
        }
        let Some(copy) = body.take() else {
            return skipped("no_body");
        };
        let prepared = backend_target(&proxy.config.store, &mirror.backend, port)
            .and_then(|target| self.pick(&target))
            .and_then(|endpoint| {
                // The mirror's workload judges the copy as it would the
                // request itself.
                let mut attrs = LazyAttrs::default();
                self.authorize_endpoint(&endpoint, &mut attrs)?;
                Ok((endpoint, self.request(copy)?))
            });
        let (endpoint, request) = match prepared {
            Ok(prepared) => prepared,
            Err(why) => {
                debug!(backend = %mirror.backend.name, %why, "request not mirrored");
                return skipped("unavailable");
            }
        };
        let key = PoolKey {
            addr: endpoint.addr,
            transport: endpoint.transport.clone(),
            http2: self.http2,
        };
        let proxy = proxy.clone();
        let tracked = proxy.tasks.token();
        tokio::spawn(async move {
            // A drain waits for the copy too.
            let _tracked = tracked;
            let started = Instant::now();
            let sent = tokio::time::timeout(MIRROR_TIMEOUT, proxy.http.send(&key, request)).await;
            let result = match sent {
                Ok(Ok(response)) => {
                    drain_briefly(response).await;
                    "sent"
                }
                Ok(Err(_)) | Err(_) => "failed",
            };
            if let Some(load) = &endpoint.load {
                if result == "sent" {
                    load.connected(started.elapsed());
                } else {
                    load.failed();
                }
            }
            metrics::counter!("weft_mirror_requests_total", "result" => result).increment(1);
        });
    }

    /// The endpoint an attempt goes to, recorded in the trace, once the
    /// destination workload's own policies let the request through.
    fn endpoint(
        &self,
        target: &Target,
        attrs: &mut LazyAttrs,
        trace: &mut Trace,
    ) -> Result<Endpoint, Refusal> {
        let endpoint = self.pick(target).map_err(|why| {
            Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no healthy upstream\n",
                why,
            )
        })?;
        trace.endpoint = Some((endpoint.workload.clone(), endpoint.addr));
        self.authorize_endpoint(&endpoint, attrs)
            .map_err(|why| Refusal::new(StatusCode::FORBIDDEN, "access denied\n", why))?;
        Ok(endpoint)
    }

    /// An `Upgrade` or `CONNECT` request: one attempt, on a connection of
    /// its own. When the endpoint switches (101 to an upgrade, 2xx to a
    /// CONNECT) the client's connection and the endpoint's are joined until
    /// either closes; any other answer goes back as it is.
    async fn upgrade(
        &self,
        target: &Target,
        switch: Switch,
        client: hyper::upgrade::OnUpgrade,
        body: Incoming,
        attrs: &mut LazyAttrs,
        trace: &mut Trace,
    ) -> Result<Response<ResponseBody>, Refusal> {
        trace.attempts = 1;
        let endpoint = self.endpoint(target, attrs, trace)?;
        let mut request = self
            .request(Either::Left(body))
            .map_err(|why| Refusal::new(StatusCode::BAD_REQUEST, "bad request\n", why))?;
        match &switch {
            Switch::Protocol(protocol) => {
                // Hop-by-hop, but the point of this hop: the endpoint must
                // see them.
                let headers = request.headers_mut();
                headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                headers.insert(header::UPGRADE, protocol.clone());
            }
            // The endpoint (a proxy) gets the client's target, in the
            // authority form CONNECT is sent in.
            Switch::Connect => {
                let target = Uri::try_from(self.host).map_err(|e| {
                    Refusal::new(
                        StatusCode::BAD_REQUEST,
                        "bad request\n",
                        format!("CONNECT target {:?}: {e}", self.host),
                    )
                })?;
                *request.uri_mut() = target;
            }
        }
        let span = client_span(trace, &mut request, &endpoint);
        let key = PoolKey {
            addr: endpoint.addr,
            transport: endpoint.transport.clone(),
            http2: false,
        };
        let sent_at = Instant::now();
        let sent = self.proxy.http.send_upgrade(&key, request).await;
        if let Some(span) = span {
            match &sent {
                Ok(response) => span.answered(response.status()),
                Err(Failed { error, .. }) => span.failed(error_type(error), error.to_string()),
            }
        }
        if let Some(load) = &endpoint.load {
            match &sent {
                Ok(_) => load.connected(sent_at.elapsed()),
                Err(_) => load.failed(),
            }
        }
        let mut response = sent.map_err(|f| failure(&f.error))?;
        let switched = match switch {
            Switch::Protocol(_) => response.status() == StatusCode::SWITCHING_PROTOCOLS,
            Switch::Connect => response.status().is_success(),
        };
        if !switched {
            return Ok(respond(response.map(PooledBody::unpooled)));
        }
        let upstream = hyper::upgrade::on(&mut response);
        let tracked = self.proxy.tasks.token();
        tokio::spawn(async move {
            // A drain waits for upgraded streams too.
            let _tracked = tracked;
            match tokio::try_join!(client, upstream) {
                Ok((client, upstream)) => {
                    let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
                    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await
                    {
                        debug!(error = %e, "upgraded stream ended");
                    }
                }
                Err(e) => debug!(error = %e, "upgrade not completed"),
            }
        });
        let (mut parts, _) = response.into_parts();
        parts.headers.remove(header::TRANSFER_ENCODING);
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.headers.remove("keep-alive");
        Ok(Response::from_parts(
            parts,
            Either::Right(Full::new(Bytes::new())),
        ))
    }

    /// Sends one attempt, telling the endpoint's load tracker how it went.
    async fn send(
        &self,
        endpoint: &Endpoint,
        request: Request<RequestBody>,
    ) -> Result<Response<PooledBody>, Failed> {
        let key = PoolKey {
            addr: endpoint.addr,
            transport: endpoint.transport.clone(),
            http2: self.http2,
        };
        let sent_at = Instant::now();
        let result = self.proxy.http.send(&key, request).await;
        if let Some(load) = &endpoint.load {
            match &result {
                Ok(_) => load.connected(sent_at.elapsed()),
                Err(_) => load.failed(),
            }
        }
        result
    }

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

    /// The normalized path with the request's query.
    fn path_and_query(&self) -> String {
        match self.parts.uri.query() {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.to_owned(),
        }
    }

    /// The HTTP/1.1 request target upstream: the request's own when it is
    /// in origin form and normalizing left its path alone (the usual case,
    /// then nothing is formatted or parsed again), else the normalized path
    /// with the query.
    fn origin_form(&self) -> Result<Uri, String> {
        let original = &self.parts.uri;
        if original.scheme().is_none()
            && original.authority().is_none()
            && original.path() == self.path
        {
            return Ok(original.clone());
        }
        self.path_and_query()
            .parse()
            .map_err(|e| format!("request target: {e}"))
    }

    /// The request as it goes upstream.
    fn request(&self, body: RequestBody) -> Result<Request<RequestBody>, String> {
        let mut headers = self.parts.headers.clone();
        strip_hop_by_hop(&mut headers, self.http2);
        let (uri, version) = if self.http2 {
            headers.remove(header::HOST);
            let uri = Uri::builder()
                .scheme("http")
                .authority(self.host)
                .path_and_query(self.path_and_query())
                .build()
                .map_err(|e| format!("request target: {e}"))?;
            (uri, Version::HTTP_2)
        } else {
            if !headers.contains_key(header::HOST) {
                let host = HeaderValue::from_str(self.host).map_err(|e| format!("host: {e}"))?;
                headers.insert(header::HOST, host);
            }
            (self.origin_form()?, Version::HTTP_11)
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

/// A request that turns its connection into a byte stream once the
/// endpoint agrees.
enum Switch {
    /// HTTP/1.1 `Connection: upgrade` with `Upgrade: X` (WebSocket, ...).
    Protocol(HeaderValue),
    /// An HTTP/1.x `CONNECT` to the endpoint (an HTTP proxy).
    Connect,
}

/// What a request asks to switch to, if it does.
fn switch_of(parts: &Parts) -> Option<Switch> {
    if parts.method == Method::CONNECT && parts.version <= Version::HTTP_11 {
        return Some(Switch::Connect);
    }
    upgrade_protocol(parts).map(Switch::Protocol)
}

/// The protocol an HTTP/1.1 request asks to switch to (`Connection:
/// upgrade` and `Upgrade: X`), if it does.
fn upgrade_protocol(parts: &Parts) -> Option<HeaderValue> {
    if parts.version != Version::HTTP_11 {
        return None;
    }
    let asks = parts
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| parts.headers.get(header::UPGRADE).cloned())
        .flatten()
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

/// The CLIENT span of an attempt, its context put on `request`, when the
/// request is traced.
fn client_span<B>(
    trace: &Trace,
    request: &mut Request<B>,
    endpoint: &Endpoint,
) -> Option<ClientSpan> {
    let span = trace.span.as_ref()?;
    let workload = format!("{}/{}", endpoint.workload.namespace, endpoint.workload.name);
    Some(span.attempt(request, endpoint.addr, &workload, trace.attempts))
}

/// An attempt's failure, for the span's `error.type`.
fn error_type(error: &SendError) -> &'static str {
    match error {
        SendError::Connect(ConnectError::Timeout(_)) => "connect_timeout",
        SendError::Connect(_) => "connect_error",
        SendError::Http(_) => "http_error",
    }
}

fn failure(error: &SendError) -> Refusal {
    let body = match error {
        SendError::Connect(ConnectError::Timeout(_)) => "upstream connect timeout\n",
        SendError::Connect(_) => "upstream connect error\n",
        SendError::Http(_) => "upstream reset before response\n",
    };
    Refusal::new(StatusCode::SERVICE_UNAVAILABLE, body, error.to_string())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::returned_size;

    /// Every request in flight holds this future (49 KB before the big
    /// awaits were boxed): it must stay small.
    #[test]
    fn a_requests_future_stays_small() {
        let size = returned_size(handle);
        assert!(size <= 8 * 1024, "request::handle's future is {size} bytes");
    }
}
