//! L7 routing: HTTPRoutes and GRPCRoutes compiled into match tables, and the
//! choice of a backend.
//!
//! Which table applies (docs/waypoint.md, "Routing"):
//! - routes whose parent is the destination Service (GAMMA) decide traffic
//!   addressed to it: a request that matches none of their rules gets 404;
//! - otherwise routes whose parent is this waypoint's Gateway apply, if their
//!   `hostnames` match the request's host (or they have none); a request
//!   that matches none of them goes to its destination unchanged;
//! - with no route at all, the request goes to its destination (the Service
//!   it was addressed to, or the pod).
//!
//! A parent's `port` (0 = all) limits a route to traffic for that port.
//! Within a table the most specific match wins, as the Gateway API orders
//! them: exact path, then regex, then the longest path prefix; then a method
//! match; then the most header matches; then the most query matches; ties
//! go to the route first by `namespace/name`, then to the rule and match
//! written first. Regexes match the whole value.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use regex::Regex;
use weft_api::config::{
    HeaderMatch, PathMatch, Route, RouteKind, RouteMatch, RouteRule, header_match, path_match,
    path_modifier,
};

use crate::destination::WaypointName;
use crate::service_map::ServiceMap;

/// What routing looks at in a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a Method,
    /// Normalized (see [`crate::path`]), without the query.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// The request's host (`Host` or `:authority`), port included if sent.
    pub host: &'a str,
    /// The client's namespace (from its proved identity): GAMMA consumer
    /// routes apply to their own namespace's clients only.
    pub client_namespace: &'a str,
}

/// A backend: a Service, a port on it (0 = the port the request came for),
/// and its share of the traffic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backend {
    pub namespace: String,
    pub name: String,
    pub port: u32,
    pub weight: u32,
    /// Why the controller could not resolve it: requests it is picked for
    /// get 500 (the Gateway API's rule for an invalid backend).
    pub unresolved: Option<String>,
    /// The backendRef's own header changes, applied after the rule's to
    /// requests sent to it and to its responses.
    pub header_ops: Vec<HeaderOp>,
    pub response_header_ops: Vec<HeaderOp>,
}

/// A request header change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderOp {
    Set(HeaderName, HeaderValue),
    Add(HeaderName, HeaderValue),
    Remove(HeaderName),
}

impl HeaderOp {
    pub fn apply(&self, headers: &mut HeaderMap) {
        match self {
            HeaderOp::Set(name, value) => {
                headers.insert(name.clone(), value.clone());
            }
            HeaderOp::Add(name, value) => {
                headers.append(name.clone(), value.clone());
            }
            HeaderOp::Remove(name) => {
                headers.remove(name);
            }
        }
    }
}

/// When to try a request again (see `docs/waypoint.md`, "Retries").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryRule {
    /// Further attempts after the first.
    pub attempts: u32,
    /// Response codes that are retried; empty = any 5xx.
    pub codes: Vec<u16>,
    pub backoff: Duration,
    /// Set by the route: applies to every method. The default applies only
    /// to idempotent ones.
    pub configured: bool,
}

impl RetryRule {
    /// Used when a rule says nothing: two more tries of an idempotent
    /// request after a 503 or a connection failure.
    pub fn default_policy() -> RetryRule {
        RetryRule {
            attempts: 2,
            codes: vec![503],
            backoff: Duration::from_millis(25),
            configured: false,
        }
    }

    pub fn retries_status(&self, status: StatusCode) -> bool {
        if self.codes.is_empty() {
            status.is_server_error()
        } else {
            self.codes.contains(&status.as_u16())
        }
    }
}

/// A path change of a redirect or rewrite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathChange {
    /// The whole path.
    Full(String),
    /// The prefix the rule matched (the whole path when the match was not a
    /// prefix match).
    Prefix(String),
}

impl PathChange {
    /// `path` changed; `matched` is the prefix the rule's match had.
    pub fn apply(&self, path: &str, matched: Option<&str>) -> String {
        match self {
            PathChange::Full(full) => full.clone(),
            PathChange::Prefix(replacement) => {
                let rest = matched.and_then(|m| path.strip_prefix(m)).unwrap_or("");
                let replacement = replacement.trim_end_matches('/');
                match (replacement.is_empty(), rest.is_empty()) {
                    (true, true) => "/".to_owned(),
                    (true, false) => rest.to_owned(),
                    (false, _) => format!("{replacement}{rest}"),
                }
            }
        }
    }
}

/// An HTTP redirect the waypoint answers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectRule {
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub path: Option<PathChange>,
    pub port: Option<u16>,
    pub status: StatusCode,
}

impl RedirectRule {
    /// The `Location` for a request to `host` (`Host`, maybe with a port)
    /// on `path` (normalized) with `query`, received on `listener_port`;
    /// `matched` is the prefix the rule matched.
    pub fn location(
        &self,
        host: &str,
        listener_port: u16,
        path: &str,
        query: Option<&str>,
        matched: Option<&str>,
    ) -> String {
        let scheme = self.scheme.as_deref().unwrap_or("http");
        let hostname = self.hostname.as_deref().unwrap_or_else(|| strip_port(host));
        // Gateway API: a scheme change without a port goes to the scheme's
        // own port; otherwise the port the request came to. The scheme's
        // well-known port is left out of the URL.
        let port = match (self.port, &self.scheme) {
            (Some(port), _) => port,
            (None, Some(scheme)) if scheme == "https" => 443,
            (None, Some(_)) => 80,
            (None, None) => listener_port,
        };
        let default = matches!((scheme, port), ("http", 80) | ("https", 443));
        let host = if hostname.contains(':') && !hostname.starts_with('[') {
            format!("[{hostname}]")
        } else {
            hostname.to_owned()
        };
        let path = match &self.path {
            Some(change) => change.apply(path, matched),
            None => path.to_owned(),
        };
        let mut location = if default {
            format!("{scheme}://{host}{path}")
        } else {
            format!("{scheme}://{host}:{port}{path}")
        };
        if let Some(q) = query {
            location.push('?');
            location.push_str(q);
        }
        location
    }
}

/// A change to the request sent upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewriteRule {
    pub hostname: Option<String>,
    pub path: Option<PathChange>,
}

/// A copy of each request (or a share of them) sent to another backend,
/// its answer ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorRule {
    pub backend: Backend,
    /// Mirrored share: numerator of denominator (1 of 1 = all).
    pub numerator: u32,
    pub denominator: u32,
}

impl MirrorRule {
    /// Whether this request is mirrored; `roll` returns a number below its
    /// argument.
    pub fn takes(&self, roll: impl FnOnce(u64) -> u64) -> bool {
        if self.numerator >= self.denominator {
            return true;
        }
        roll(u64::from(self.denominator)) < u64::from(self.numerator)
    }
}

/// One compiled rule of a route.
#[derive(Debug)]
pub struct Rule {
    /// `namespace/name` of its route.
    pub route: String,
    pub index: usize,
    pub backends: Vec<Backend>,
    pub timeout: Option<Duration>,
    /// Each attempt's limit (`timeouts.backendRequest`).
    pub backend_timeout: Option<Duration>,
    pub retry: Option<RetryRule>,
    pub header_ops: Vec<HeaderOp>,
    pub response_header_ops: Vec<HeaderOp>,
    pub direct_status: Option<StatusCode>,
    pub redirect: Option<RedirectRule>,
    pub rewrite: Option<RewriteRule>,
    pub mirrors: Vec<MirrorRule>,
}

/// The rule a request matched, and the path prefix of the match that
/// selected it (for `ReplacePrefixMatch`).
#[derive(Debug, Clone, Copy)]
pub struct Selected<'a> {
    pub rule: &'a Arc<Rule>,
    pub prefix: Option<&'a str>,
}

/// Where a rule sends a request.
#[derive(Debug, PartialEq, Eq)]
pub enum BackendChoice<'a> {
    /// No backends listed: to the destination the request was addressed to.
    Destination,
    Backend(&'a Backend),
    /// Backends listed, all with weight 0: nothing may take it (500).
    Unavailable,
}

impl Rule {
    /// Picks a backend by weight; `roll` returns a number below its argument.
    pub fn choose(&self, roll: impl FnOnce(u64) -> u64) -> BackendChoice<'_> {
        if self.backends.is_empty() {
            return BackendChoice::Destination;
        }
        let total: u64 = self.backends.iter().map(|b| u64::from(b.weight)).sum();
        if total == 0 {
            return BackendChoice::Unavailable;
        }
        let mut point = roll(total);
        for backend in &self.backends {
            let w = u64::from(backend.weight);
            if point < w {
                return BackendChoice::Backend(backend);
            }
            point -= w;
        }
        // `roll` broke its contract; the last weighted backend is as good
        // an answer as any.
        self.backends
            .iter()
            .rev()
            .find(|b| b.weight > 0)
            .map_or(BackendChoice::Unavailable, BackendChoice::Backend)
    }
}

#[derive(Debug)]
enum PathMatcher {
    Any,
    Exact(String),
    /// Without a trailing `/`; empty matches everything.
    Prefix(String),
    Regex(Regex),
    /// gRPC `/service/method`: either part may be empty (= any).
    Grpc {
        service: String,
        method: String,
    },
    /// Could not be compiled: matches nothing.
    Invalid,
}

#[derive(Debug)]
enum ValueMatcher {
    Exact(String),
    Regex(Regex),
}

#[derive(Debug)]
struct Matcher {
    path: PathMatcher,
    /// `None` when a header name is invalid: the match can never hold.
    headers: Option<Vec<(HeaderName, ValueMatcher)>>,
    method: Option<Method>,
    /// `None` when a query regex is invalid: the match can never hold.
    query: Option<Vec<(String, ValueMatcher)>>,
}

/// Gateway API precedence, most specific first.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Specificity {
    path_kind: u8,
    path_len: usize,
    method: bool,
    headers: usize,
    query: usize,
}

#[derive(Debug)]
struct Entry {
    matcher: Matcher,
    specificity: Specificity,
    rule: Arc<Rule>,
    /// The parent's port (0 = every port).
    port: u32,
    /// The route's hostnames (empty = any).
    hostnames: Arc<[String]>,
    /// A consumer route's namespace (a route on a Service in another
    /// namespace): it applies to that namespace's clients only, and before
    /// the Service's own (producer) routes. `None`: a producer route.
    consumer: Option<Arc<str>>,
}

/// The rules that apply to one parent, most specific first.
#[derive(Debug, Default)]
pub struct RouteTable {
    entries: Vec<Entry>,
}

impl RouteTable {
    /// The entries that apply to a client of `client_namespace` on `port`:
    /// its namespace's consumer routes if it has any (GAMMA: they replace
    /// the producer's for that namespace), else the producer routes.
    fn applicable<'s, 'n>(
        &'s self,
        port: u16,
        client_namespace: &'n str,
    ) -> impl Iterator<Item = &'s Entry> + use<'s, 'n> {
        let on_port = move |e: &&Entry| e.port == 0 || e.port == u32::from(port);
        let consumer = self
            .entries
            .iter()
            .filter(on_port)
            .any(|e| e.consumer.as_deref() == Some(client_namespace));
        self.entries.iter().filter(on_port).filter(move |e| {
            if consumer {
                e.consumer.as_deref() == Some(client_namespace)
            } else {
                e.consumer.is_none()
            }
        })
    }

    /// True if no route applies to `port` for a client of
    /// `client_namespace`.
    pub fn is_empty_for(&self, port: u16, client_namespace: &str) -> bool {
        self.applicable(port, client_namespace).next().is_none()
    }

    /// The rule that takes the request, if any. `check_hosts` applies the
    /// routes' `hostnames` (Gateway parents; Service parents ignore them).
    pub fn find(
        &self,
        req: &RequestView<'_>,
        port: u16,
        check_hosts: bool,
    ) -> Option<Selected<'_>> {
        self.applicable(port, req.client_namespace)
            .filter(|e| !check_hosts || host_allowed(&e.hostnames, req.host))
            .find(|e| e.matcher.matches(req))
            .map(|e| Selected {
                rule: &e.rule,
                prefix: match &e.matcher.path {
                    PathMatcher::Prefix(p) => Some(p.as_str()),
                    _ => None,
                },
            })
    }

    /// True if some route of this table accepts the request's host.
    pub fn has_host(&self, host: &str, port: u16) -> bool {
        self.entries
            .iter()
            .filter(|e| e.port == 0 || e.port == u32::from(port))
            .any(|e| host_allowed(&e.hostnames, host))
    }

    fn sort(&mut self) {
        // Stable: entries were pushed in route key, rule, match order, which
        // breaks ties.
        self.entries
            .sort_by(|a, b| b.specificity.cmp(&a.specificity));
    }
}

/// All route tables of this waypoint.
#[derive(Debug, Default)]
pub struct Routes {
    services: ServiceMap<RouteTable>,
    gateway: RouteTable,
}

impl Routes {
    /// Compiles `routes` (in `namespace/name` order). Returns what could
    /// not be compiled as warnings: those matches match nothing.
    pub fn build(routes: &[Arc<Route>], waypoint: &WaypointName) -> (Routes, Vec<String>) {
        let mut out = Routes::default();
        let mut warnings = Vec::new();
        for route in routes {
            let key = format!("{}/{}", route.namespace, route.name);
            let hostnames: Arc<[String]> = route.hostnames.clone().into();
            let grpc = route.kind == RouteKind::Grpc as i32;
            let rules: Vec<(Arc<Rule>, &RouteRule)> = route
                .rules
                .iter()
                .enumerate()
                .map(|(i, r)| (Arc::new(compile_rule(&key, i, r, &mut warnings)), r))
                .collect();
            for parent in &route.parents {
                let table = match parent.kind.as_str() {
                    "Service" => out.services.entry(&parent.namespace, &parent.name),
                    "Gateway"
                        if parent.namespace == waypoint.namespace
                            && parent.name == waypoint.name =>
                    {
                        &mut out.gateway
                    }
                    _ => continue,
                };
                // A route on a Service of another namespace is its
                // namespace's (a consumer route); a Gateway's is everyone's.
                let consumer: Option<Arc<str>> = (parent.kind == "Service"
                    && parent.namespace != route.namespace)
                    .then(|| Arc::from(route.namespace.as_str()));
                for (rule, spec) in &rules {
                    let matches: Vec<Option<&RouteMatch>> = if spec.matches.is_empty() {
                        vec![None]
                    } else {
                        spec.matches.iter().map(Some).collect()
                    };
                    for m in matches {
                        let matcher = compile_match(m, grpc, &key, &mut warnings);
                        table.entries.push(Entry {
                            specificity: matcher.specificity(),
                            matcher,
                            rule: rule.clone(),
                            port: parent.port,
                            hostnames: hostnames.clone(),
                            consumer: consumer.clone(),
                        });
                    }
                }
            }
        }
        for table in out.services.values_mut() {
            table.sort();
        }
        out.gateway.sort();
        (out, warnings)
    }

    /// Routes attached to the Service `namespace/name`.
    pub fn for_service(&self, namespace: &str, name: &str) -> Option<&RouteTable> {
        self.services
            .get(namespace, name)
            .filter(|t| !t.entries.is_empty())
    }

    /// Routes attached to this waypoint's Gateway.
    pub fn gateway(&self) -> &RouteTable {
        &self.gateway
    }
}

fn compile_rule(route: &str, index: usize, rule: &RouteRule, warnings: &mut Vec<String>) -> Rule {
    let mut header_ops = |what: &str, modifiers: &[weft_api::config::HeaderModifier]| {
        modifiers
            .iter()
            .filter_map(|m| {
                let op = compile_header_op(m);
                if op.is_none() {
                    warnings.push(format!(
                        "route {route} rule {index}: {what} modifier {} {:?} is not valid; ignored",
                        m.op, m.name
                    ));
                }
                op
            })
            .collect::<Vec<_>>()
    };
    let response_header_ops = header_ops("response header", &rule.response_header_modifiers);
    let backends = rule
        .backends
        .iter()
        .map(|b| Backend {
            namespace: b.namespace.clone(),
            name: b.name.clone(),
            port: b.port,
            weight: b.weight,
            unresolved: (!b.unresolved.is_empty()).then(|| b.unresolved.clone()),
            header_ops: header_ops("backend header", &b.request_header_modifiers),
            response_header_ops: header_ops(
                "backend response header",
                &b.response_header_modifiers,
            ),
        })
        .collect();
    let header_ops = header_ops("header", &rule.request_header_modifiers);
    let direct_status = match rule.direct_status {
        0 => None,
        code => {
            let status = u16::try_from(code)
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok());
            if status.is_none() {
                warnings.push(format!(
                    "route {route} rule {index}: direct status {code} is not an HTTP status; 500 instead"
                ));
            }
            Some(status.unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        }
    };
    let path_change = |p: &Option<weft_api::config::PathModifier>| {
        p.as_ref().and_then(|p| p.kind.as_ref()).map(|k| match k {
            path_modifier::Kind::Full(f) => PathChange::Full(f.clone()),
            path_modifier::Kind::Prefix(p) => PathChange::Prefix(p.clone()),
        })
    };
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    let redirect = rule.redirect.as_ref().map(|r| RedirectRule {
        scheme: non_empty(&r.scheme),
        hostname: non_empty(&r.hostname),
        path: path_change(&r.path),
        port: u16::try_from(r.port).ok().filter(|p| *p != 0),
        status: match r.status {
            0 => StatusCode::FOUND,
            code => u16::try_from(code)
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .filter(StatusCode::is_redirection)
                .unwrap_or_else(|| {
                    warnings.push(format!(
                        "route {route} rule {index}: redirect status {code} is not a redirect; 302 instead"
                    ));
                    StatusCode::FOUND
                }),
        },
    });
    let rewrite = rule.rewrite.as_ref().map(|r| RewriteRule {
        hostname: non_empty(&r.hostname),
        path: path_change(&r.path),
    });
    let mirrors = rule
        .mirrors
        .iter()
        .filter_map(|m| {
            let b = m.backend.as_ref()?;
            Some(MirrorRule {
                backend: Backend {
                    namespace: b.namespace.clone(),
                    name: b.name.clone(),
                    port: b.port,
                    weight: 1,
                    ..Backend::default()
                },
                numerator: if m.denominator == 0 { 1 } else { m.numerator },
                denominator: m.denominator.max(1),
            })
        })
        .collect();
    Rule {
        route: route.to_owned(),
        index,
        backend_timeout: (rule.backend_timeout_ms > 0)
            .then(|| Duration::from_millis(rule.backend_timeout_ms)),
        response_header_ops,
        redirect,
        rewrite,
        mirrors,
        backends,
        timeout: (rule.timeout_ms > 0).then(|| Duration::from_millis(rule.timeout_ms)),
        retry: rule.retry.as_ref().map(|r| RetryRule {
            attempts: r.attempts,
            codes: r
                .codes
                .iter()
                .filter_map(|c| u16::try_from(*c).ok())
                .collect(),
            backoff: Duration::from_millis(r.backoff_ms),
            configured: true,
        }),
        header_ops,
        direct_status,
    }
}

fn compile_header_op(m: &weft_api::config::HeaderModifier) -> Option<HeaderOp> {
    let name = HeaderName::from_bytes(m.name.to_ascii_lowercase().as_bytes()).ok()?;
    match m.op.to_ascii_uppercase().as_str() {
        "REMOVE" => Some(HeaderOp::Remove(name)),
        "ADD" => Some(HeaderOp::Add(name, HeaderValue::from_str(&m.value).ok()?)),
        // SET is also the default of an unnamed op.
        "SET" | "" => Some(HeaderOp::Set(name, HeaderValue::from_str(&m.value).ok()?)),
        _ => None,
    }
}

fn full_regex(pattern: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("^(?:{pattern})$"))
}

fn compile_match(
    m: Option<&RouteMatch>,
    grpc: bool,
    route: &str,
    warnings: &mut Vec<String>,
) -> Matcher {
    let Some(m) = m else {
        return Matcher {
            path: PathMatcher::Any,
            headers: Some(Vec::new()),
            method: None,
            query: Some(Vec::new()),
        };
    };
    let mut warn =
        |what: String| warnings.push(format!("route {route}: {what}; it matches nothing"));
    let path = if grpc || !m.grpc_service.is_empty() || !m.grpc_method.is_empty() {
        if m.grpc_service.is_empty() && m.grpc_method.is_empty() {
            PathMatcher::Any
        } else {
            PathMatcher::Grpc {
                service: m.grpc_service.clone(),
                method: m.grpc_method.clone(),
            }
        }
    } else {
        compile_path(m.path.as_ref(), &mut warn)
    };
    let headers = m
        .headers
        .iter()
        .map(|h| compile_header_match(h, &mut warn))
        .collect::<Option<Vec<_>>>();
    let method = if m.method.is_empty() {
        None
    } else {
        match Method::from_bytes(m.method.as_bytes()) {
            Ok(method) => Some(method),
            Err(_) => {
                warn(format!("method {:?} is not valid", m.method));
                return Matcher {
                    path: PathMatcher::Invalid,
                    headers,
                    method: None,
                    query: Some(Vec::new()),
                };
            }
        }
    };
    Matcher {
        path,
        headers,
        method,
        query: m
            .query_params
            .iter()
            .map(|q| {
                if q.regex.is_empty() {
                    return Some((q.name.clone(), ValueMatcher::Exact(q.exact.clone())));
                }
                match full_regex(&q.regex) {
                    Ok(re) => Some((q.name.clone(), ValueMatcher::Regex(re))),
                    Err(e) => {
                        warn(format!("query parameter {} regex: {e}", q.name));
                        None
                    }
                }
            })
            .collect(),
    }
}

fn compile_path(path: Option<&PathMatch>, warn: &mut impl FnMut(String)) -> PathMatcher {
    match path.and_then(|p| p.kind.as_ref()) {
        None => PathMatcher::Any,
        Some(path_match::Kind::Exact(p)) => PathMatcher::Exact(p.clone()),
        Some(path_match::Kind::Prefix(p)) => {
            let trimmed = p.trim_end_matches('/');
            if trimmed.is_empty() {
                PathMatcher::Any
            } else {
                PathMatcher::Prefix(trimmed.to_owned())
            }
        }
        Some(path_match::Kind::Regex(r)) => match full_regex(r) {
            Ok(re) => PathMatcher::Regex(re),
            Err(e) => {
                warn(format!("path regex {r:?}: {e}"));
                PathMatcher::Invalid
            }
        },
    }
}

fn compile_header_match(
    h: &HeaderMatch,
    warn: &mut impl FnMut(String),
) -> Option<(HeaderName, ValueMatcher)> {
    let Ok(name) = HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes()) else {
        warn(format!("header name {:?} is not valid", h.name));
        return None;
    };
    let value = match &h.kind {
        Some(header_match::Kind::Exact(v)) => ValueMatcher::Exact(v.clone()),
        Some(header_match::Kind::Regex(r)) => match full_regex(r) {
            Ok(re) => ValueMatcher::Regex(re),
            Err(e) => {
                warn(format!("header regex {r:?}: {e}"));
                return None;
            }
        },
        None => ValueMatcher::Exact(String::new()),
    };
    Some((name, value))
}

impl Matcher {
    fn specificity(&self) -> Specificity {
        let (path_kind, path_len) = match &self.path {
            PathMatcher::Exact(p) => (4, p.len()),
            PathMatcher::Grpc { service, method } if !service.is_empty() && !method.is_empty() => {
                (4, service.len() + method.len())
            }
            PathMatcher::Regex(re) => (3, re.as_str().len()),
            PathMatcher::Prefix(p) => (2, p.len()),
            PathMatcher::Grpc { service, method } => (2, service.len() + method.len()),
            PathMatcher::Any => (1, 0),
            PathMatcher::Invalid => (0, 0),
        };
        Specificity {
            path_kind,
            path_len,
            method: self.method.is_some(),
            headers: self.headers.as_ref().map_or(0, Vec::len),
            query: self.query.as_ref().map_or(0, Vec::len),
        }
    }

    fn matches(&self, req: &RequestView<'_>) -> bool {
        let path_ok = match &self.path {
            PathMatcher::Any => true,
            PathMatcher::Invalid => false,
            PathMatcher::Exact(p) => req.path == p,
            PathMatcher::Prefix(p) => {
                req.path.starts_with(p.as_str())
                    && matches!(req.path.as_bytes().get(p.len()), None | Some(b'/'))
            }
            PathMatcher::Regex(re) => re.is_match(req.path),
            PathMatcher::Grpc { service, method } => {
                let mut parts = req.path.strip_prefix('/').unwrap_or("").splitn(2, '/');
                let (s, m) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                (service.is_empty() || s == service) && (method.is_empty() || m == method)
            }
        };
        if !path_ok {
            return false;
        }
        if self.method.as_ref().is_some_and(|m| m != req.method) {
            return false;
        }
        let Some(headers) = &self.headers else {
            return false;
        };
        let headers_ok = headers.iter().all(|(name, value)| {
            let mut values = req
                .headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok());
            match value {
                ValueMatcher::Exact(want) => values.any(|v| v == want),
                ValueMatcher::Regex(re) => values.any(|v| re.is_match(v)),
            }
        });
        let Some(query) = &self.query else {
            return false;
        };
        headers_ok
            && query.iter().all(|(name, want)| {
                query_value(req.query, name).is_some_and(|v| match want {
                    ValueMatcher::Exact(want) => v == want,
                    ValueMatcher::Regex(re) => re.is_match(v),
                })
            })
    }
}

/// The first value of query parameter `name`.
fn query_value<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// Route `hostnames` against a request host: exact or `*.suffix`,
/// case-insensitive, port ignored.
fn host_allowed(hostnames: &[String], host: &str) -> bool {
    if hostnames.is_empty() {
        return true;
    }
    let host = strip_port(host);
    hostnames.iter().any(|h| match h.strip_prefix('*') {
        Some(suffix) => {
            host.len() > suffix.len()
                && host.is_char_boundary(host.len() - suffix.len())
                && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
        }
        None => host.eq_ignore_ascii_case(h),
    })
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map_or(host, |(h, _)| &h[1..]);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests;
