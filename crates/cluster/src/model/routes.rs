//! HTTPRoutes and GRPCRoutes attached to Services (GAMMA) or waypoints.
//!
//! Only routes with at least one parent that is a Service, or a Gateway of
//! class `weft-waypoint`, are sent: routes of other Gateways belong to other
//! controllers.

use std::collections::BTreeMap;
use std::str::FromStr;

// HTTPRoutes are decoded with the experimental channel's types (a superset
// of the standard channel's), for `retry`; see the registry.
use gateway_api::experimental::httproutes::{
    HttpRoute, HttpRouteRulesFilters, HttpRouteRulesFiltersRequestRedirectPathType,
    HttpRouteRulesFiltersRequestRedirectScheme, HttpRouteRulesFiltersUrlRewritePathType,
    HttpRouteRulesMatchesHeadersType, HttpRouteRulesMatchesPathType,
    HttpRouteRulesMatchesQueryParamsType, HttpRouteRulesRetry,
};
use gateway_api::gateways::{Gateway, GatewayListenersAllowedRoutesNamespacesFrom};
use gateway_api::grpcroutes::{GrpcRoute, GrpcRouteRulesFilters, GrpcRouteRulesMatchesHeadersType};
use kube::ResourceExt;
use weft_api::config::{
    BackendRef, HeaderMatch, HeaderModifier, Mirror, PathMatch, PathModifier, QueryParamMatch,
    Redirect, RetryPolicy, Rewrite, Route, RouteKind, RouteMatch, RouteParent, RouteRule,
    header_match, path_match, path_modifier,
};

use super::route_report::{ParentRef, ParentReport, Problem, Reason, RouteReport, first_of};
use super::waypoints::is_waypoint_gateway;
use crate::registry::{ClusterState, ObjectKey};

/// What a route says that its config form does not keep: its parents as
/// written, its backends' kinds and the filters weft does not support.
struct Written {
    grpc: bool,
    namespace: String,
    generation: Option<i64>,
    parents: Vec<ParentRef>,
    /// Per rule: (group, kind) of each backend, then of each mirror, in
    /// the config's order.
    backend_kinds: Vec<Vec<(Option<String>, Option<String>)>>,
    mirror_kinds: Vec<Vec<(Option<String>, Option<String>)>>,
    /// Fields weft ignores, as `spec.rules[i]...: why`.
    unsupported: Vec<String>,
}

/// [`Written`] of an HTTPRoute or GRPCRoute (the same field names in two
/// generated types).
macro_rules! written {
    ($route:expr, $grpc:expr) => {{
        let route = $route;
        let rules = route.spec.rules.as_deref().unwrap_or_default();
        let mut unsupported = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            for (j, f) in rule.filters.iter().flatten().enumerate() {
                let kind = filter_type(&f.r#type);
                if !SUPPORTED_FILTERS.contains(&kind.as_str()) {
                    unsupported.push(format!(
                        "spec.rules[{i}].filters[{j}]: filter type {kind} is not supported"
                    ));
                }
            }
            for (j, b) in rule.backend_refs.iter().flatten().enumerate() {
                for (k, f) in b.filters.iter().flatten().enumerate() {
                    let kind = filter_type(&f.r#type);
                    if !BACKEND_FILTERS.contains(&kind.as_str()) {
                        unsupported.push(format!(
                            "spec.rules[{i}].backendRefs[{j}].filters[{k}]: filter type {kind} is not supported on a backend"
                        ));
                    }
                }
            }
        }
        Written {
            grpc: $grpc,
            namespace: route.namespace().unwrap_or_default(),
            generation: route.metadata.generation,
            parents: route
                .spec
                .parent_refs
                .iter()
                .flatten()
                .map(|p| ParentRef {
                    group: p.group.clone(),
                    kind: p.kind.clone(),
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                    port: p.port,
                })
                .collect(),
            backend_kinds: rules
                .iter()
                .map(|r| {
                    r.backend_refs
                        .iter()
                        .flatten()
                        .map(|b| (b.group.clone(), b.kind.clone()))
                        .collect()
                })
                .collect(),
            mirror_kinds: rules
                .iter()
                .map(|r| {
                    r.filters
                        .iter()
                        .flatten()
                        .filter_map(|f| f.request_mirror.as_ref())
                        .map(|m| (m.backend_ref.group.clone(), m.backend_ref.kind.clone()))
                        .collect()
                })
                .collect(),
            unsupported,
        }
    }};
}

/// A filter's `type` as the API writes it (`RequestHeaderModifier`).
fn filter_type(kind: &impl serde::Serialize) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The filter types weft applies (docs/waypoint.md).
const SUPPORTED_FILTERS: &[&str] = &[
    "RequestHeaderModifier",
    "ResponseHeaderModifier",
    "RequestRedirect",
    "URLRewrite",
    "RequestMirror",
];

/// The filter types weft applies on a backendRef: the header changes (a
/// redirect or rewrite there would change the rule, which the spec leaves to
/// the rule's own filters).
const BACKEND_FILTERS: &[&str] = &["RequestHeaderModifier", "ResponseHeaderModifier"];

/// The routes weft serves, by `namespace/name`, and what it found of each
/// (for its status).
pub(crate) fn build(
    state: &ClusterState,
) -> (BTreeMap<String, Route>, BTreeMap<String, RouteReport>) {
    let mut routes = BTreeMap::new();
    let mut reports = BTreeMap::new();
    for (key, route) in &state.http_routes {
        let mut written = written!(route, false);
        let converted = http_route(route, &mut written.unsupported);
        if let Some((r, report)) = check(state, written, converted) {
            routes.extend(r.map(|r| (key.to_string(), r)));
            reports.insert(key.to_string(), report);
        }
    }
    for (key, route) in &state.grpc_routes {
        // An HttpRoute and a GrpcRoute of the same name: the HttpRoute wins,
        // as the older API.
        if reports.contains_key(&key.to_string()) {
            continue;
        }
        let written = written!(route, true);
        let converted = grpc_route(route);
        if let Some((r, report)) = check(state, written, converted) {
            routes.extend(r.map(|r| (key.to_string(), r)));
            reports.insert(key.to_string(), report);
        }
    }
    (routes, reports)
}

/// Checks a converted route against the cluster: which parents it attaches
/// to, whether every backend resolves (one that does not is kept, marked,
/// and gets 500s), whether it uses anything weft does not support (then it
/// is attached nowhere). `None`: no parent is weft's.
fn check(
    state: &ClusterState,
    written: Written,
    mut route: Route,
) -> Option<(Option<Route>, RouteReport)> {
    let ns = written.namespace.clone();
    let route_kind = if written.grpc {
        "GRPCRoute"
    } else {
        "HTTPRoute"
    };
    let mut invalid = written
        .unsupported
        .iter()
        .map(|m| Problem::new(Reason::UnsupportedValue, m.clone()))
        .collect::<Vec<_>>();
    invalid.extend(invalid_regexes(&route));
    let mut unresolved = Vec::new();
    for (i, rule) in route.rules.iter_mut().enumerate() {
        for (j, b) in rule.backends.iter_mut().enumerate() {
            let kind = written.backend_kinds.get(i).and_then(|k| k.get(j));
            if let Some(problem) =
                backend_problem(state, route_kind, &ns, &written.parents, kind, b)
            {
                b.unresolved = problem.message.clone();
                unresolved.push(Problem::new(
                    problem.reason,
                    format!("spec.rules[{i}].backendRefs[{j}]: {}", problem.message),
                ));
            }
        }
        let mut k = 0;
        rule.mirrors.retain(|m| {
            let kind = written.mirror_kinds.get(i).and_then(|kinds| kinds.get(k));
            k += 1;
            let Some(b) = &m.backend else { return false };
            match backend_problem(state, route_kind, &ns, &written.parents, kind, b) {
                None => true,
                Some(problem) => {
                    unresolved.push(Problem::new(
                        problem.reason,
                        format!("spec.rules[{i}] RequestMirror: {}", problem.message),
                    ));
                    false
                }
            }
        });
    }
    let mut parents = Vec::new();
    let mut attached = Vec::new();
    for parent_ref in written.parents {
        let Some((parent, problem)) = parent(state, &ns, route_kind, &parent_ref) else {
            continue;
        };
        let accepted = match problem {
            Some(p) => Err(p),
            None => first_of(invalid.clone()),
        };
        if accepted.is_ok() {
            attached.push(parent);
        }
        parents.push(ParentReport {
            parent_ref,
            accepted,
            resolved_refs: first_of(unresolved.clone()),
        });
    }
    if parents.is_empty() {
        return None;
    }
    let report = RouteReport {
        grpc: written.grpc,
        generation: written.generation,
        parents,
    };
    route.parents = attached;
    Some(((!route.parents.is_empty()).then_some(route), report))
}

/// Regexes the waypoint could not compile: the whole route is refused, not
/// left to match nothing in silence.
fn invalid_regexes(route: &Route) -> Vec<Problem> {
    let mut out = Vec::new();
    for (i, rule) in route.rules.iter().enumerate() {
        for (j, m) in rule.matches.iter().enumerate() {
            let mut check = |field: String, pattern: &str| {
                if let Err(e) = regex::Regex::new(&format!("^(?:{pattern})$")) {
                    let first = e.to_string();
                    let first = first.lines().last().unwrap_or_default().trim().to_owned();
                    out.push(Problem::new(
                        Reason::UnsupportedValue,
                        format!("spec.rules[{i}].matches[{j}].{field}: invalid regular expression {pattern:?}: {first}"),
                    ));
                }
            };
            if let Some(path_match::Kind::Regex(p)) = m.path.as_ref().and_then(|p| p.kind.as_ref())
            {
                check("path.value".into(), p);
            }
            for (k, h) in m.headers.iter().enumerate() {
                if let Some(header_match::Kind::Regex(p)) = &h.kind {
                    check(format!("headers[{k}].value"), p);
                }
            }
            for (k, q) in m.query_params.iter().enumerate() {
                if !q.regex.is_empty() {
                    check(format!("queryParams[{k}].value"), &q.regex);
                }
            }
        }
    }
    out
}

/// Why a backend cannot be used, if it cannot: not a Service, in another
/// namespace without a ReferenceGrant there, or missing.
///
/// A consumer route (GAMMA: on a Service of another namespace) may name
/// the very Service it is attached to as its backend without a grant: the
/// route changes only its own namespace's requests to that Service, which
/// they could send anyway, and the mesh conformance suite's consumer route
/// does exactly that.
fn backend_problem(
    state: &ClusterState,
    route_kind: &str,
    route_ns: &str,
    parents: &[ParentRef],
    kind: Option<&(Option<String>, Option<String>)>,
    b: &BackendRef,
) -> Option<Problem> {
    let (group, kind) = kind.cloned().unwrap_or_default();
    let group = group.unwrap_or_default();
    let kind = kind.unwrap_or_else(|| "Service".into());
    if !matches!(group.as_str(), "" | "core") || kind != "Service" {
        return Some(Problem::new(
            Reason::InvalidKind,
            format!(
                "{kind} {}/{} is not a Service (group {group:?})",
                b.namespace, b.name
            ),
        ));
    }
    let own_parent = parents.iter().any(|p| {
        p.kind.as_deref() == Some("Service")
            && matches!(p.group.as_deref(), None | Some("" | "core"))
            && p.namespace.as_deref() == Some(b.namespace.as_str())
            && p.name == b.name
    });
    if b.namespace != route_ns
        && !own_parent
        && !reference_granted(state, route_kind, route_ns, &b.namespace, &b.name)
    {
        return Some(Problem::new(
            Reason::RefNotPermitted,
            format!(
                "Service {}/{} is in another namespace and no ReferenceGrant there allows {route_kind}s from {route_ns}",
                b.namespace, b.name
            ),
        ));
    }
    if !state
        .services
        .contains_key(&ObjectKey::new(b.namespace.clone(), &b.name))
    {
        return Some(Problem::new(
            Reason::BackendNotFound,
            format!("Service {}/{} does not exist", b.namespace, b.name),
        ));
    }
    None
}

/// Whether a ReferenceGrant in `to_ns` lets `route_kind`s of `from_ns`
/// name the Service `to_ns/name`.
pub(crate) fn reference_granted(
    state: &ClusterState,
    route_kind: &str,
    from_ns: &str,
    to_ns: &str,
    name: &str,
) -> bool {
    state
        .reference_grants
        .iter()
        .filter(|(key, _)| key.namespace == to_ns)
        .any(|(_, grant)| {
            grant.spec.from.iter().any(|f| {
                f.group == "gateway.networking.k8s.io"
                    && f.kind == route_kind
                    && f.namespace == from_ns
            }) && grant.spec.to.iter().any(|t| {
                matches!(t.group.as_str(), "" | "core")
                    && t.kind == "Service"
                    && t.name.as_deref().is_none_or(|n| n == name)
            })
        })
}

/// One parent of a route, if it is weft's (a Service, or a Gateway of class
/// `weft-waypoint`): its config form, and why the route cannot attach to
/// it, if it cannot.
fn parent(
    state: &ClusterState,
    route_ns: &str,
    route_kind: &str,
    p: &ParentRef,
) -> Option<(RouteParent, Option<Problem>)> {
    let namespace = p.namespace.clone().unwrap_or_else(|| route_ns.to_string());
    let key = ObjectKey::new(namespace.clone(), &p.name);
    let group = p.group.as_deref().unwrap_or("gateway.networking.k8s.io");
    let kind = p.kind.as_deref().unwrap_or("Gateway");
    let problem = match (group, kind) {
        ("" | "core", "Service") => (!state.services.contains_key(&key)).then(|| {
            Problem::new(
                Reason::NoMatchingParent,
                format!("Service {key} does not exist"),
            )
        }),
        ("gateway.networking.k8s.io", "Gateway") => {
            let gw = state
                .gateways
                .get(&key)
                .filter(|g| is_waypoint_gateway(g))?;
            (!listeners_admit(state, gw, route_ns, route_kind)).then(|| {
                Problem::new(
                    Reason::NotAllowedByListeners,
                    format!(
                        "no listener of waypoint {key} allows {route_kind}s from namespace {route_ns}"
                    ),
                )
            })
        }
        _ => return None,
    };
    let kind = if kind == "Service" {
        "Service"
    } else {
        "Gateway"
    };
    Some((
        RouteParent {
            kind: kind.to_string(),
            namespace,
            name: p.name.clone(),
            port: p.port.and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
        },
        problem,
    ))
}

/// Whether some listener of `gw` admits routes of `route_kind` from
/// `route_ns` (`allowedRoutes`: `Same` namespace by default, `All`, or a
/// `Selector` on the namespace's labels; kinds, if listed).
fn listeners_admit(state: &ClusterState, gw: &Gateway, route_ns: &str, route_kind: &str) -> bool {
    let gw_ns = gw.namespace().unwrap_or_default();
    gw.spec.listeners.iter().any(|l| {
        let allowed = l.allowed_routes.as_ref();
        let kinds_ok = allowed
            .and_then(|a| a.kinds.as_ref())
            .is_none_or(|kinds| kinds.is_empty() || kinds.iter().any(|k| k.kind == route_kind));
        let namespaces = allowed.and_then(|a| a.namespaces.as_ref());
        let ns_ok = match namespaces.and_then(|n| n.from.as_ref()) {
            Some(GatewayListenersAllowedRoutesNamespacesFrom::All) => true,
            Some(GatewayListenersAllowedRoutesNamespacesFrom::Selector) => {
                let labels = state
                    .namespaces
                    .get(&ObjectKey::new("", route_ns))
                    .map(|n| n.labels().clone())
                    .unwrap_or_default();
                namespaces
                    .and_then(|n| n.selector.as_ref())
                    .is_some_and(|sel| {
                        sel.match_labels
                            .iter()
                            .flatten()
                            .all(|(k, v)| labels.get(k) == Some(v))
                            && sel.match_expressions.as_ref().is_none_or(Vec::is_empty)
                    })
            }
            _ => route_ns == gw_ns,
        };
        kinds_ok && ns_ok
    })
}

/// A Gateway API Duration (GEP-2257: "1h2m3s4ms") in milliseconds.
fn duration_ms(value: &str) -> Result<u64, String> {
    gateway_api::Duration::from_str(value).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn timeout_ms(value: Option<&str>) -> u64 {
    value.and_then(|v| duration_ms(v).ok()).unwrap_or(0)
}

/// What weft uses where GEP-1731 leaves `retry.attempts` and
/// `retry.backoff` to the implementation: the waypoint's default policy's
/// values (`RetryRule::default_policy` in waypoint/src/routing.rs), so that
/// `retry: {codes: [502]}` keeps the default's count and pace (though, as
/// the rule's own policy, it applies to every method).
const DEFAULT_RETRY_ATTEMPTS: u32 = 2;
const DEFAULT_RETRY_BACKOFF_MS: u64 = 25;

/// The status codes GEP-1731 allows in `retry.codes`: the CRD's bounds,
/// checked again because manifests read from files (weftctl, the files
/// registry) never met an API server.
const RETRY_CODES: std::ops::RangeInclusive<i64> = 400..=599;

/// Rule `i`'s `retry` (GEP-1731, experimental channel) as the waypoint's
/// [`RetryPolicy`], or what is wrong with it (`spec.rules[i].retry...: why`),
/// which refuses the route as a bad regex does.
///
/// `attempts` maps as it is: the GEP's "maximum number of times a request
/// should be retried" counts retries after the first attempt, as
/// `RetryPolicy.attempts` does (the waypoint makes at most `attempts + 1`
/// attempts). No `codes`: any 5xx (and connection failures, which the
/// waypoint retries whatever the codes). `backoff` is the minimum wait
/// before the first retry; the waypoint grows it and adds jitter on top,
/// never below it.
///
/// Nothing else in the controller sets `RouteRule.retry`, so `retry` is the
/// only source: with it the rule's policy applies to every method; without
/// it the waypoint's default (idempotent methods only) applies.
fn retry(i: usize, r: &HttpRouteRulesRetry) -> Result<RetryPolicy, Vec<String>> {
    let mut problems = Vec::new();
    let attempts = match r.attempts {
        None => DEFAULT_RETRY_ATTEMPTS,
        Some(n) => u32::try_from(n).unwrap_or_else(|_| {
            problems.push(format!(
                "spec.rules[{i}].retry.attempts: {n} is not a number of retries (0 or more)"
            ));
            0
        }),
    };
    let mut codes = Vec::new();
    for (j, &code) in r.codes.iter().flatten().enumerate() {
        match u32::try_from(code) {
            Ok(c) if RETRY_CODES.contains(&code) => codes.push(c),
            _ => problems.push(format!(
                "spec.rules[{i}].retry.codes[{j}]: {code} is not an HTTP error status (400-599)"
            )),
        }
    }
    let backoff_ms = match r.backoff.as_deref() {
        None => DEFAULT_RETRY_BACKOFF_MS,
        Some(b) => duration_ms(b).unwrap_or_else(|e| {
            problems.push(format!(
                "spec.rules[{i}].retry.backoff: invalid duration {b:?}: {e}"
            ));
            0
        }),
    };
    if problems.is_empty() {
        Ok(RetryPolicy {
            attempts,
            codes,
            backoff_ms,
        })
    } else {
        Err(problems)
    }
}

fn backend(
    route_ns: &str,
    namespace: Option<&String>,
    name: &str,
    port: Option<i32>,
    weight: Option<i32>,
) -> BackendRef {
    BackendRef {
        namespace: namespace.cloned().unwrap_or_else(|| route_ns.to_string()),
        name: name.to_string(),
        port: port.and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
        weight: weight.map_or(1, |w| u32::try_from(w).unwrap_or(0)),
        ..BackendRef::default()
    }
}

/// Adds a filter's `RequestHeaderModifier` and `ResponseHeaderModifier`
/// (of any of the generated filter types) to `$out`'s lists (a rule's or a
/// backendRef's).
macro_rules! header_filters {
    ($f:expr, $out:expr) => {{
        $out.request_header_modifiers
            .extend(header_modifiers(header_lists!(
                $f.request_header_modifier.as_ref()
            )));
        $out.response_header_modifiers
            .extend(header_modifiers(header_lists!(
                $f.response_header_modifier.as_ref()
            )));
    }};
}

/// A backendRef of either route kind (the same shape in two generated
/// types), with its own header filters.
macro_rules! backend_ref {
    ($route_ns:expr, $b:expr) => {{
        let b = $b;
        let mut out = backend($route_ns, b.namespace.as_ref(), &b.name, b.port, b.weight);
        for f in b.filters.iter().flatten() {
            header_filters!(f, out);
        }
        out
    }};
}

/// The `set`, `add` and `remove` lists of a header modifier filter (request
/// or response, HTTPRoute or GRPCRoute: the same shape in four types).
struct HeaderLists<'a> {
    set: Vec<(&'a str, &'a str)>,
    add: Vec<(&'a str, &'a str)>,
    remove: Vec<&'a str>,
}

/// Borrows a header modifier filter of any of the generated types as
/// [`HeaderLists`].
macro_rules! header_lists {
    ($m:expr) => {
        $m.map(|m| HeaderLists {
            set: m
                .set
                .iter()
                .flatten()
                .map(|h| (h.name.as_str(), h.value.as_str()))
                .collect(),
            add: m
                .add
                .iter()
                .flatten()
                .map(|h| (h.name.as_str(), h.value.as_str()))
                .collect(),
            remove: m.remove.iter().flatten().map(String::as_str).collect(),
        })
    };
}

fn header_modifiers(m: Option<HeaderLists<'_>>) -> Vec<HeaderModifier> {
    let Some(m) = m else { return Vec::new() };
    let op = |op: &str, name: &str, value: &str| HeaderModifier {
        name: name.to_string(),
        value: value.to_string(),
        op: op.to_string(),
    };
    let mut out: Vec<HeaderModifier> = Vec::new();
    out.extend(m.set.iter().map(|(n, v)| op("SET", n, v)));
    out.extend(m.add.iter().map(|(n, v)| op("ADD", n, v)));
    out.extend(m.remove.iter().map(|n| op("REMOVE", n, "")));
    out
}

/// A `RequestMirror` filter of either route kind (the same shape in two
/// generated types) as a [`Mirror`].
macro_rules! mirror {
    ($route_ns:expr, $m:expr) => {{
        let b = &$m.backend_ref;
        let share = $m
            .fraction
            .as_ref()
            .map(|f| (f.numerator, f.denominator))
            .or($m.percent.map(|p| (p, Some(100))));
        mirror($route_ns, b.namespace.as_ref(), &b.name, b.port, share)
    }};
}

/// A mirror's share: `percent`, or `fraction` (denominator 100 when unset);
/// neither = every request.
fn mirror(
    route_ns: &str,
    namespace: Option<&String>,
    name: &str,
    port: Option<i32>,
    share: Option<(i32, Option<i32>)>,
) -> Mirror {
    let (numerator, denominator) = match share {
        Some((n, d)) => (
            u32::try_from(n).unwrap_or(0),
            u32::try_from(d.unwrap_or(100)).unwrap_or(0),
        ),
        None => (0, 0),
    };
    Mirror {
        backend: Some(backend(route_ns, namespace, name, port, None)),
        numerator,
        denominator,
    }
}

fn path_modifier(full: bool, full_path: Option<&String>, prefix: Option<&String>) -> PathModifier {
    PathModifier {
        kind: Some(if full {
            path_modifier::Kind::Full(full_path.cloned().unwrap_or_else(|| "/".into()))
        } else {
            path_modifier::Kind::Prefix(prefix.cloned().unwrap_or_else(|| "/".into()))
        }),
    }
}

/// The filters of an HTTPRoute rule, into the rule.
fn http_filters(route_ns: &str, filters: &[HttpRouteRulesFilters], rule: &mut RouteRule) {
    for f in filters {
        header_filters!(f, rule);
        if let Some(r) = &f.request_redirect {
            rule.redirect = Some(Redirect {
                scheme: match r.scheme {
                    Some(HttpRouteRulesFiltersRequestRedirectScheme::Https) => "https".into(),
                    Some(HttpRouteRulesFiltersRequestRedirectScheme::Http) => "http".into(),
                    None => String::new(),
                },
                hostname: r.hostname.clone().unwrap_or_default(),
                path: r.path.as_ref().map(|p| {
                    path_modifier(
                        p.r#type == HttpRouteRulesFiltersRequestRedirectPathType::ReplaceFullPath,
                        p.replace_full_path.as_ref(),
                        p.replace_prefix_match.as_ref(),
                    )
                }),
                port: r.port.and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
                status: r
                    .status_code
                    .and_then(|c| u32::try_from(c).ok())
                    .unwrap_or(0),
            });
        }
        if let Some(r) = &f.url_rewrite {
            rule.rewrite = Some(Rewrite {
                hostname: r.hostname.clone().unwrap_or_default(),
                path: r.path.as_ref().map(|p| {
                    path_modifier(
                        p.r#type == HttpRouteRulesFiltersUrlRewritePathType::ReplaceFullPath,
                        p.replace_full_path.as_ref(),
                        p.replace_prefix_match.as_ref(),
                    )
                }),
            });
        }
        if let Some(m) = &f.request_mirror {
            rule.mirrors.push(mirror!(route_ns, m));
        }
    }
}

/// The filters of a GRPCRoute rule (headers and mirrors; the spec has no
/// redirect or rewrite for gRPC).
fn grpc_filters(route_ns: &str, filters: &[GrpcRouteRulesFilters], rule: &mut RouteRule) {
    for f in filters {
        header_filters!(f, rule);
        if let Some(m) = &f.request_mirror {
            rule.mirrors.push(mirror!(route_ns, m));
        }
    }
}

/// The config form of an HttpRoute, before [`check`] decides its parents and
/// backends; values it cannot convert (a bad `retry`) go to `invalid`, as
/// `spec.rules[i]...: why`.
fn http_route(route: &HttpRoute, invalid: &mut Vec<String>) -> Route {
    let ns = route.namespace().unwrap_or_default();
    let rules = route
        .spec
        .rules
        .iter()
        .flatten()
        .map(|rule| RouteRule {
            matches: rule
                .matches
                .iter()
                .flatten()
                .map(|m| RouteMatch {
                    path: m.path.as_ref().map(|p| {
                        let value = p.value.clone().unwrap_or_else(|| "/".into());
                        PathMatch {
                            kind: Some(match p.r#type {
                                Some(HttpRouteRulesMatchesPathType::Exact) => {
                                    path_match::Kind::Exact(value)
                                }
                                Some(HttpRouteRulesMatchesPathType::RegularExpression) => {
                                    path_match::Kind::Regex(value)
                                }
                                _ => path_match::Kind::Prefix(value),
                            }),
                        }
                    }),
                    headers: m
                        .headers
                        .iter()
                        .flatten()
                        .map(|h| HeaderMatch {
                            name: h.name.clone(),
                            kind: Some(match h.r#type {
                                Some(HttpRouteRulesMatchesHeadersType::RegularExpression) => {
                                    header_match::Kind::Regex(h.value.clone())
                                }
                                _ => header_match::Kind::Exact(h.value.clone()),
                            }),
                        })
                        .collect(),
                    method: m
                        .method
                        .as_ref()
                        .and_then(|m| serde_json::to_value(m).ok())
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                    query_params: m
                        .query_params
                        .iter()
                        .flatten()
                        .map(|q| match q.r#type {
                            Some(HttpRouteRulesMatchesQueryParamsType::RegularExpression) => {
                                QueryParamMatch {
                                    name: q.name.clone(),
                                    regex: q.value.clone(),
                                    ..QueryParamMatch::default()
                                }
                            }
                            _ => QueryParamMatch {
                                name: q.name.clone(),
                                exact: q.value.clone(),
                                ..QueryParamMatch::default()
                            },
                        })
                        .collect(),
                    grpc_service: String::new(),
                    grpc_method: String::new(),
                })
                .collect(),
            backends: rule
                .backend_refs
                .iter()
                .flatten()
                .map(|b| backend_ref!(&ns, b))
                .collect(),
            timeout_ms: timeout_ms(rule.timeouts.as_ref().and_then(|t| t.request.as_deref())),
            backend_timeout_ms: timeout_ms(
                rule.timeouts
                    .as_ref()
                    .and_then(|t| t.backend_request.as_deref()),
            ),
            ..RouteRule::default()
        })
        .zip(route.spec.rules.iter().flatten())
        .enumerate()
        .map(|(i, (mut out, rule))| {
            http_filters(&ns, rule.filters.as_deref().unwrap_or_default(), &mut out);
            out.retry = rule
                .retry
                .as_ref()
                .and_then(|r| retry(i, r).map_err(|e| invalid.extend(e)).ok());
            out
        })
        .collect();
    Route {
        name: route.name_any(),
        namespace: ns,
        kind: RouteKind::Http as i32,
        parents: Vec::new(),
        hostnames: route.spec.hostnames.clone().unwrap_or_default(),
        rules,
    }
}

/// The config form of a GrpcRoute, before [`check`] decides its parents and
/// backends.
fn grpc_route(route: &GrpcRoute) -> Route {
    let ns = route.namespace().unwrap_or_default();
    let rules = route
        .spec
        .rules
        .iter()
        .flatten()
        .map(|rule| RouteRule {
            matches: rule
                .matches
                .iter()
                .flatten()
                .map(|m| RouteMatch {
                    path: None,
                    headers: m
                        .headers
                        .iter()
                        .flatten()
                        .map(|h| HeaderMatch {
                            name: h.name.clone(),
                            kind: Some(match h.r#type {
                                Some(GrpcRouteRulesMatchesHeadersType::RegularExpression) => {
                                    header_match::Kind::Regex(h.value.clone())
                                }
                                _ => header_match::Kind::Exact(h.value.clone()),
                            }),
                        })
                        .collect(),
                    method: String::new(),
                    query_params: Vec::new(),
                    grpc_service: m
                        .method
                        .as_ref()
                        .and_then(|m| m.service.clone())
                        .unwrap_or_default(),
                    grpc_method: m
                        .method
                        .as_ref()
                        .and_then(|m| m.method.clone())
                        .unwrap_or_default(),
                })
                .collect(),
            backends: rule
                .backend_refs
                .iter()
                .flatten()
                .map(|b| backend_ref!(&ns, b))
                .collect(),
            ..RouteRule::default()
        })
        .zip(route.spec.rules.iter().flatten())
        .map(|(mut out, rule)| {
            grpc_filters(&ns, rule.filters.as_deref().unwrap_or_default(), &mut out);
            out
        })
        .collect();
    Route {
        name: route.name_any(),
        namespace: ns,
        kind: RouteKind::Grpc as i32,
        parents: Vec::new(),
        hostnames: route.spec.hostnames.clone().unwrap_or_default(),
        rules,
    }
}
