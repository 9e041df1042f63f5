//! HTTPRoutes and GRPCRoutes attached to Services (GAMMA) or waypoints.
//!
//! Only routes with at least one parent that is a Service, or a Gateway of
//! class `weft-waypoint`, are sent: routes of other Gateways belong to other
//! controllers.

use std::collections::BTreeMap;
use std::str::FromStr;

use gateway_api::grpcroutes::{GrpcRoute, GrpcRouteRulesFilters, GrpcRouteRulesMatchesHeadersType};
use gateway_api::httproutes::{
    HttpRoute, HttpRouteRulesFilters, HttpRouteRulesFiltersRequestRedirectPathType,
    HttpRouteRulesFiltersRequestRedirectScheme, HttpRouteRulesFiltersUrlRewritePathType,
    HttpRouteRulesMatchesHeadersType, HttpRouteRulesMatchesPathType,
    HttpRouteRulesMatchesQueryParamsType,
};
use kube::ResourceExt;
use weft_api::config::{
    BackendRef, HeaderMatch, HeaderModifier, Mirror, PathMatch, PathModifier, QueryParamMatch,
    Redirect, Rewrite, Route, RouteKind, RouteMatch, RouteParent, RouteRule, header_match,
    path_match, path_modifier,
};

use super::waypoints::is_waypoint_gateway;
use crate::registry::{ClusterState, ObjectKey};

pub(crate) fn build(state: &ClusterState) -> BTreeMap<String, Route> {
    let mut out = BTreeMap::new();
    for (key, route) in &state.http_routes {
        if let Some(r) = http_route(state, route) {
            out.insert(key.to_string(), r);
        }
    }
    for (key, route) in &state.grpc_routes {
        // An HttpRoute and a GrpcRoute of the same name: the HttpRoute wins,
        // as the older API.
        if out.contains_key(&key.to_string()) {
            continue;
        }
        if let Some(r) = grpc_route(state, route) {
            out.insert(key.to_string(), r);
        }
    }
    out
}

struct ParentIn<'a> {
    group: Option<&'a str>,
    kind: Option<&'a str>,
    namespace: Option<&'a str>,
    name: &'a str,
    port: Option<i32>,
}

fn parents(state: &ClusterState, route_ns: &str, refs: Vec<ParentIn<'_>>) -> Vec<RouteParent> {
    refs.into_iter()
        .filter_map(|p| {
            let namespace = p.namespace.unwrap_or(route_ns).to_string();
            let key = ObjectKey::new(namespace.clone(), p.name);
            let kind = match (
                p.group.unwrap_or("gateway.networking.k8s.io"),
                p.kind.unwrap_or("Gateway"),
            ) {
                ("" | "core", "Service") => "Service",
                ("gateway.networking.k8s.io", "Gateway")
                    if state
                        .gateways
                        .get(&key)
                        .is_some_and(|g| is_waypoint_gateway(g)) =>
                {
                    "Gateway"
                }
                _ => return None,
            };
            Some(RouteParent {
                kind: kind.to_string(),
                namespace,
                name: p.name.to_string(),
                port: p.port.and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
            })
        })
        .collect()
}

fn timeout_ms(value: Option<&str>) -> u64 {
    value
        .and_then(|v| gateway_api::Duration::from_str(v).ok())
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
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
    }
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
        rule.request_header_modifiers
            .extend(header_modifiers(header_lists!(
                f.request_header_modifier.as_ref()
            )));
        rule.response_header_modifiers
            .extend(header_modifiers(header_lists!(
                f.response_header_modifier.as_ref()
            )));
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
        rule.request_header_modifiers
            .extend(header_modifiers(header_lists!(
                f.request_header_modifier.as_ref()
            )));
        rule.response_header_modifiers
            .extend(header_modifiers(header_lists!(
                f.response_header_modifier.as_ref()
            )));
        if let Some(m) = &f.request_mirror {
            rule.mirrors.push(mirror!(route_ns, m));
        }
    }
}

fn http_route(state: &ClusterState, route: &HttpRoute) -> Option<Route> {
    let ns = route.namespace().unwrap_or_default();
    let refs = route
        .spec
        .parent_refs
        .iter()
        .flatten()
        .map(|p| ParentIn {
            group: p.group.as_deref(),
            kind: p.kind.as_deref(),
            namespace: p.namespace.as_deref(),
            name: &p.name,
            port: p.port,
        })
        .collect();
    let parents = parents(state, &ns, refs);
    if parents.is_empty() {
        return None;
    }
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
                .map(|b| backend(&ns, b.namespace.as_ref(), &b.name, b.port, b.weight))
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
        .map(|(mut out, rule)| {
            http_filters(&ns, rule.filters.as_deref().unwrap_or_default(), &mut out);
            out
        })
        .collect();
    Some(Route {
        name: route.name_any(),
        namespace: ns,
        kind: RouteKind::Http as i32,
        parents,
        hostnames: route.spec.hostnames.clone().unwrap_or_default(),
        rules,
    })
}

fn grpc_route(state: &ClusterState, route: &GrpcRoute) -> Option<Route> {
    let ns = route.namespace().unwrap_or_default();
    let refs = route
        .spec
        .parent_refs
        .iter()
        .flatten()
        .map(|p| ParentIn {
            group: p.group.as_deref(),
            kind: p.kind.as_deref(),
            namespace: p.namespace.as_deref(),
            name: &p.name,
            port: p.port,
        })
        .collect();
    let parents = parents(state, &ns, refs);
    if parents.is_empty() {
        return None;
    }
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
                .map(|b| backend(&ns, b.namespace.as_ref(), &b.name, b.port, b.weight))
                .collect(),
            ..RouteRule::default()
        })
        .zip(route.spec.rules.iter().flatten())
        .map(|(mut out, rule)| {
            grpc_filters(&ns, rule.filters.as_deref().unwrap_or_default(), &mut out);
            out
        })
        .collect();
    Some(Route {
        name: route.name_any(),
        namespace: ns,
        kind: RouteKind::Grpc as i32,
        parents,
        hostnames: route.spec.hostnames.clone().unwrap_or_default(),
        rules,
    })
}
