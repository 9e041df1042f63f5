use super::*;
use weft_api::config::{BackendRef, QueryParamMatch, RouteParent};

fn wp() -> WaypointName {
    WaypointName {
        namespace: "shop".into(),
        name: "waypoint".into(),
    }
}

fn backend(name: &str, weight: u32) -> BackendRef {
    BackendRef {
        namespace: "shop".into(),
        name: name.into(),
        port: 80,
        weight,
        ..BackendRef::default()
    }
}

fn prefix(p: &str) -> RouteMatch {
    RouteMatch {
        path: Some(PathMatch {
            kind: Some(path_match::Kind::Prefix(p.into())),
        }),
        ..Default::default()
    }
}

fn exact(p: &str) -> RouteMatch {
    RouteMatch {
        path: Some(PathMatch {
            kind: Some(path_match::Kind::Exact(p.into())),
        }),
        ..Default::default()
    }
}

fn route(name: &str, parent_kind: &str, parent: &str, rules: Vec<RouteRule>) -> Arc<Route> {
    Arc::new(Route {
        name: name.into(),
        namespace: "shop".into(),
        kind: RouteKind::Http as i32,
        parents: vec![RouteParent {
            kind: parent_kind.into(),
            namespace: "shop".into(),
            name: parent.into(),
            port: 0,
        }],
        hostnames: vec![],
        rules,
    })
}

fn rule(matches: Vec<RouteMatch>, to: &str) -> RouteRule {
    RouteRule {
        matches,
        backends: vec![backend(to, 1)],
        ..Default::default()
    }
}

struct Req {
    method: Method,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    host: String,
    client_namespace: String,
}

impl Req {
    fn get(path: &str) -> Req {
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
            None => (path.to_owned(), None),
        };
        Req {
            method: Method::GET,
            path,
            query,
            headers: HeaderMap::new(),
            host: "reviews.shop.svc.cluster.local".into(),
            client_namespace: "shop".into(),
        }
    }

    fn header(mut self, k: &'static str, v: &'static str) -> Req {
        self.headers.append(k, HeaderValue::from_static(v));
        self
    }

    fn view(&self) -> RequestView<'_> {
        RequestView {
            method: &self.method,
            path: &self.path,
            query: self.query.as_deref(),
            headers: &self.headers,
            host: &self.host,
            client_namespace: &self.client_namespace,
        }
    }
}

fn target(table: &RouteTable, req: &Req) -> Option<String> {
    let rule = table.find(&req.view(), 80, false)?.rule;
    match rule.choose(|_| 0) {
        BackendChoice::Backend(b) => Some(b.name.clone()),
        other => Some(format!("{other:?}")),
    }
}

#[test]
fn most_specific_match_wins() {
    let routes = vec![route(
        "r",
        "Service",
        "reviews",
        vec![
            rule(vec![prefix("/")], "root"),
            rule(vec![prefix("/api")], "api"),
            rule(vec![prefix("/api/v2")], "v2"),
            rule(vec![exact("/api/v2/health")], "health"),
            rule(
                vec![RouteMatch {
                    method: "POST".into(),
                    ..prefix("/api")
                }],
                "api-post",
            ),
        ],
    )];
    let (routes, warnings) = Routes::build(&routes, &wp());
    assert!(warnings.is_empty(), "{warnings:?}");
    let t = routes.for_service("shop", "reviews").unwrap();
    assert_eq!(target(t, &Req::get("/")).unwrap(), "root");
    assert_eq!(
        target(t, &Req::get("/apix")).unwrap(),
        "root",
        "prefix is per path element"
    );
    assert_eq!(target(t, &Req::get("/api")).unwrap(), "api");
    assert_eq!(target(t, &Req::get("/api/v1")).unwrap(), "api");
    assert_eq!(target(t, &Req::get("/api/v2/x")).unwrap(), "v2");
    assert_eq!(target(t, &Req::get("/api/v2/health")).unwrap(), "health");
    let mut post = Req::get("/api/x");
    post.method = Method::POST;
    assert_eq!(target(t, &post).unwrap(), "api-post");
}

#[test]
fn headers_and_query_match() {
    let with_header = RouteMatch {
        headers: vec![HeaderMatch {
            name: "X-Version".into(),
            kind: Some(header_match::Kind::Exact("v2".into())),
        }],
        ..Default::default()
    };
    let with_regex = RouteMatch {
        headers: vec![HeaderMatch {
            name: "user".into(),
            kind: Some(header_match::Kind::Regex("(alice|bob)".into())),
        }],
        ..Default::default()
    };
    let with_query = RouteMatch {
        query_params: vec![QueryParamMatch {
            name: "canary".into(),
            exact: "1".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let routes = vec![route(
        "r",
        "Service",
        "reviews",
        vec![
            rule(vec![], "v1"),
            rule(vec![with_header], "v2"),
            rule(vec![with_regex], "friends"),
            rule(vec![with_query], "canary"),
        ],
    )];
    let (routes, _) = Routes::build(&routes, &wp());
    let t = routes.for_service("shop", "reviews").unwrap();
    assert_eq!(target(t, &Req::get("/")).unwrap(), "v1");
    assert_eq!(
        target(t, &Req::get("/").header("x-version", "v2")).unwrap(),
        "v2"
    );
    assert_eq!(
        target(t, &Req::get("/").header("x-version", "v3")).unwrap(),
        "v1"
    );
    assert_eq!(
        target(t, &Req::get("/").header("user", "alice")).unwrap(),
        "friends"
    );
    assert_eq!(
        target(t, &Req::get("/").header("user", "alicex")).unwrap(),
        "v1",
        "regex matches the whole value"
    );
    assert_eq!(target(t, &Req::get("/?a=b&canary=1")).unwrap(), "canary");
    assert_eq!(target(t, &Req::get("/?canary=2")).unwrap(), "v1");
}

#[test]
fn weights_split_and_zero_weights_are_unavailable() {
    let r = RouteRule {
        backends: vec![backend("a", 1), backend("b", 3), backend("off", 0)],
        ..Default::default()
    };
    let (routes, _) = Routes::build(&[route("r", "Service", "reviews", vec![r])], &wp());
    let rule = routes
        .for_service("shop", "reviews")
        .unwrap()
        .find(&Req::get("/").view(), 80, false)
        .unwrap()
        .rule
        .clone();
    let picks: Vec<String> = (0..4)
        .map(|i| {
            match rule.choose(|total| {
                assert_eq!(total, 4);
                i
            }) {
                BackendChoice::Backend(b) => b.name.clone(),
                other => panic!("{other:?}"),
            }
        })
        .collect();
    assert_eq!(picks, ["a", "b", "b", "b"]);

    let zero = Rule {
        route: "r".into(),
        index: 0,
        backends: vec![Backend {
            namespace: "shop".into(),
            name: "x".into(),
            port: 0,
            weight: 0,
            ..Backend::default()
        }],
        timeout: None,
        backend_timeout: None,
        retry: None,
        header_ops: vec![],
        response_header_ops: vec![],
        direct_status: None,
        redirect: None,
        rewrite: None,
        mirrors: vec![],
    };
    assert_eq!(zero.choose(|_| 0), BackendChoice::Unavailable);
}

#[test]
fn gateway_routes_filter_by_host_and_other_gateways_are_ignored() {
    let mut mine = (*route("mine", "Gateway", "waypoint", vec![rule(vec![], "x")])).clone();
    mine.hostnames = vec!["*.example.com".into()];
    let theirs = route("theirs", "Gateway", "other", vec![rule(vec![], "y")]);
    let (routes, _) = Routes::build(&[Arc::new(mine), theirs], &wp());
    let t = routes.gateway();
    let mut req = Req::get("/");
    req.host = "api.example.com:8080".into();
    assert!(t.find(&req.view(), 80, true).is_some());
    req.host = "example.com".into();
    assert!(t.find(&req.view(), 80, true).is_none());
    assert!(routes.for_service("shop", "other").is_none());
}

#[test]
fn parent_port_limits_a_route() {
    let mut r = (*route("r", "Service", "reviews", vec![rule(vec![], "x")])).clone();
    r.parents[0].port = 9080;
    let (routes, _) = Routes::build(&[Arc::new(r)], &wp());
    let t = routes.for_service("shop", "reviews").unwrap();
    assert!(t.find(&Req::get("/").view(), 9080, false).is_some());
    assert!(t.find(&Req::get("/").view(), 80, false).is_none());
    assert!(t.is_empty_for(80, "shop"));
}

#[test]
fn grpc_methods_match_the_path() {
    let mut r = (*route(
        "g",
        "Service",
        "reviews",
        vec![
            rule(
                vec![RouteMatch {
                    grpc_service: "pkg.Reviews".into(),
                    ..Default::default()
                }],
                "svc",
            ),
            rule(
                vec![RouteMatch {
                    grpc_service: "pkg.Reviews".into(),
                    grpc_method: "Get".into(),
                    ..Default::default()
                }],
                "get",
            ),
        ],
    ))
    .clone();
    r.kind = RouteKind::Grpc as i32;
    let (routes, _) = Routes::build(&[Arc::new(r)], &wp());
    let t = routes.for_service("shop", "reviews").unwrap();
    assert_eq!(target(t, &Req::get("/pkg.Reviews/Get")).unwrap(), "get");
    assert_eq!(target(t, &Req::get("/pkg.Reviews/List")).unwrap(), "svc");
    assert!(
        t.find(&Req::get("/pkg.Other/Get").view(), 80, false)
            .is_none()
    );
}

#[test]
fn bad_regexes_match_nothing_and_say_so() {
    let bad = RouteMatch {
        path: Some(PathMatch {
            kind: Some(path_match::Kind::Regex("(".into())),
        }),
        ..Default::default()
    };
    let (routes, warnings) = Routes::build(
        &[route("r", "Service", "reviews", vec![rule(vec![bad], "x")])],
        &wp(),
    );
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let t = routes.for_service("shop", "reviews").unwrap();
    assert!(t.find(&Req::get("/").view(), 80, false).is_none());
}

#[test]
fn header_modifiers() {
    let r = RouteRule {
        request_header_modifiers: vec![
            weft_api::config::HeaderModifier {
                name: "X-Set".into(),
                value: "1".into(),
                op: "SET".into(),
            },
            weft_api::config::HeaderModifier {
                name: "x-add".into(),
                value: "2".into(),
                op: "ADD".into(),
            },
            weft_api::config::HeaderModifier {
                name: "x-gone".into(),
                value: String::new(),
                op: "REMOVE".into(),
            },
        ],
        ..Default::default()
    };
    let (routes, _) = Routes::build(&[route("r", "Service", "reviews", vec![r])], &wp());
    let rule = routes
        .for_service("shop", "reviews")
        .unwrap()
        .find(&Req::get("/").view(), 80, false)
        .unwrap()
        .rule
        .clone();
    let mut headers = HeaderMap::new();
    headers.insert("x-set", HeaderValue::from_static("0"));
    headers.insert("x-add", HeaderValue::from_static("1"));
    headers.insert("x-gone", HeaderValue::from_static("1"));
    for op in &rule.header_ops {
        op.apply(&mut headers);
    }
    assert_eq!(headers.get("x-set").unwrap(), "1");
    assert_eq!(headers.get_all("x-add").iter().count(), 2);
    assert!(headers.get("x-gone").is_none());
    assert_eq!(rule.choose(|_| 0), BackendChoice::Destination);
}

#[test]
fn a_prefix_change_replaces_what_the_match_matched() {
    let cases = [
        // (replacement, matched prefix, path, result)
        ("/v2", Some("/api"), "/api/items", "/v2/items"),
        ("/v2", Some("/api"), "/api", "/v2"),
        ("/", Some("/api"), "/api/items", "/items"),
        ("/", Some("/api"), "/api", "/"),
        ("/v2/", Some("/api"), "/api/x", "/v2/x"),
        ("/v2", Some(""), "/anything", "/v2/anything"),
        ("/v2", None, "/exact", "/v2"),
    ];
    for (replacement, matched, path, want) in cases {
        assert_eq!(
            PathChange::Prefix(replacement.into()).apply(path, matched),
            want,
            "{replacement} over {matched:?} of {path}"
        );
    }
    assert_eq!(
        PathChange::Full("/moved".into()).apply("/a/b", Some("/a")),
        "/moved"
    );
}

#[test]
fn a_redirect_location_follows_the_gateway_api_port_rules() {
    let redirect = |scheme: Option<&str>, port: Option<u16>| RedirectRule {
        scheme: scheme.map(str::to_owned),
        hostname: None,
        path: None,
        port,
        status: StatusCode::FOUND,
    };
    let loc = |r: &RedirectRule| r.location("web.shop:8080", 8080, "/a", Some("q=1"), None);
    // Same scheme, no port: the listener's port.
    assert_eq!(loc(&redirect(None, None)), "http://web.shop:8080/a?q=1");
    // A scheme change without a port: the scheme's own, left out.
    assert_eq!(
        loc(&redirect(Some("https"), None)),
        "https://web.shop/a?q=1"
    );
    // An explicit well-known port is left out too; another is kept.
    assert_eq!(
        loc(&redirect(Some("http"), Some(80))),
        "http://web.shop/a?q=1"
    );
    assert_eq!(
        loc(&redirect(None, Some(9090))),
        "http://web.shop:9090/a?q=1"
    );
    let moved = RedirectRule {
        hostname: Some("example.com".into()),
        path: Some(PathChange::Prefix("/new".into())),
        ..redirect(None, Some(80))
    };
    assert_eq!(
        moved.location("web", 80, "/old/page", None, Some("/old")),
        "http://example.com/new/page"
    );
}

#[test]
fn a_mirror_takes_its_share() {
    let mirror = |numerator, denominator| MirrorRule {
        backend: Backend {
            namespace: "shop".into(),
            name: "shadow".into(),
            port: 0,
            weight: 1,
            ..Backend::default()
        },
        numerator,
        denominator,
    };
    assert!(mirror(1, 1).takes(|_| unreachable!("all: no roll")));
    let ten_percent = mirror(10, 100);
    assert!(ten_percent.takes(|n| {
        assert_eq!(n, 100);
        9
    }));
    assert!(!ten_percent.takes(|_| 10));
    assert!(!mirror(0, 100).takes(|_| 0));
}

#[test]
fn query_parameters_match_by_regex_and_a_bad_regex_matches_nothing() {
    let by = |regex: &str| RouteMatch {
        query_params: vec![QueryParamMatch {
            name: "v".into(),
            regex: regex.into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let (routes, warnings) = Routes::build(
        &[
            route(
                "good",
                "Service",
                "reviews",
                vec![rule(vec![by("[0-9]+")], "digits")],
            ),
            route(
                "bad",
                "Service",
                "other",
                vec![rule(vec![by("(")], "never")],
            ),
        ],
        &wp(),
    );
    let table = routes.for_service("shop", "reviews").unwrap();
    let hit = |path: &str| table.find(&Req::get(path).view(), 80, false).is_some();
    assert!(hit("/?v=42"));
    assert!(!hit("/?v=4x"), "the whole value must match");
    assert!(!hit("/"));
    let other = routes.for_service("shop", "other").unwrap();
    assert!(other.find(&Req::get("/?v=(").view(), 80, false).is_none());
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("route shop/bad") && w.contains("regex")),
        "{warnings:?}"
    );
}

/// GAMMA: a route in another namespace on `shop/reviews` (a consumer route)
/// decides for that namespace's clients only, in place of the Service's own
/// (producer) routes; every other client gets the producer's.
#[test]
fn consumer_routes_apply_to_their_namespace_only() {
    let producer = route("own", "Service", "reviews", vec![rule(vec![], "v1")]);
    let mut consumer = (*route(
        "web-view",
        "Service",
        "reviews",
        vec![rule(vec![prefix("/a")], "v2")],
    ))
    .clone();
    consumer.namespace = "web".into();
    let (routes, _) = Routes::build(&[producer, Arc::new(consumer)], &wp());
    let table = routes.for_service("shop", "reviews").unwrap();
    let from = |ns: &str, path: &str| {
        let mut req = Req::get(path);
        req.client_namespace = ns.into();
        req
    };
    assert_eq!(target(table, &from("shop", "/a")).as_deref(), Some("v1"));
    assert_eq!(target(table, &from("other", "/a")).as_deref(), Some("v1"));
    assert_eq!(target(table, &from("web", "/a")).as_deref(), Some("v2"));
    assert_eq!(
        target(table, &from("web", "/b")),
        None,
        "the consumer's routes replace the producer's for web: no match"
    );
    assert!(!table.is_empty_for(80, "web"));
    assert!(!table.is_empty_for(80, "other"));
}
