//! The waypoint on loopback, end to end: real HBONE in (as the client's
//! identity), real hyper clients in the tunnels, real HBONE out to pods whose
//! stand-in ztunnels run an HTTP app.

mod support;

use std::time::Duration;

use support::*;
use weft_api::authz::parse_string_match;
use weft_api::config::{
    Action, BackendRef, HeaderMatch, Mirror, Operation, PathMatch, PathModifier, Redirect,
    RetryPolicy, Rewrite, Route, RouteKind, RouteMatch, RouteParent, RouteRule, Rule, Source,
    header_match, path_match, path_modifier,
};

fn allow_get_from(principal: &str) -> Rule {
    Rule {
        from: vec![Source {
            principals: vec![parse_string_match(principal)],
            ..Default::default()
        }],
        to: vec![Operation {
            methods: vec!["GET".into()],
            ..Default::default()
        }],
        when: vec![],
    }
}

fn route_to(name: &str, rules: Vec<RouteRule>) -> Route {
    Route {
        name: name.into(),
        namespace: NS.into(),
        kind: RouteKind::Http as i32,
        parents: vec![RouteParent {
            kind: "Service".into(),
            namespace: NS.into(),
            name: "reviews".into(),
            port: 0,
        }],
        hostnames: vec![],
        rules,
    }
}

/// A rule's matches: one path prefix.
fn on_prefix(prefix: &str) -> Vec<RouteMatch> {
    vec![RouteMatch {
        path: Some(PathMatch {
            kind: Some(path_match::Kind::Prefix(prefix.into())),
        }),
        ..Default::default()
    }]
}

fn backend(name: &str, weight: u32) -> BackendRef {
    BackendRef {
        namespace: NS.into(),
        name: name.into(),
        port: u32::from(SVC_PORT),
        weight,
        ..BackendRef::default()
    }
}

#[tokio::test]
async fn l7_policy_allows_get_and_denies_post() {
    let mut mesh = Mesh::new().await;
    let pod = mesh.pod("reviews-1", "reviews").await;
    let vip = mesh.service("reviews", &[&pod], true);
    mesh.policies.push(waypoint_policy(
        "get-only",
        "Service",
        "reviews",
        Action::Allow,
        vec![allow_get_from("cluster.local/ns/shop/sa/web")],
    ));
    mesh.apply();
    let web = mesh.client(NS, "web");

    let get = web.get(vip, "/reviews/1").await;
    assert_eq!(get.status, 200, "{}", get.body);
    assert_eq!(get.pod(), "reviews-1");
    assert_eq!(get.json()["path"], "/reviews/1");

    let post = web.request(vip, "POST", "/reviews/1", &[]).await;
    assert_eq!(post.status, 403);
    assert_eq!(post.body, "access denied\n");
    assert_eq!(
        pod.state.requests.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the denied request never reached the app"
    );
}

#[tokio::test]
async fn an_identity_the_policy_does_not_allow_gets_403() {
    let mut mesh = Mesh::new().await;
    let pod = mesh.pod("reviews-1", "reviews").await;
    let vip = mesh.service("reviews", &[&pod], true);
    mesh.policies.push(waypoint_policy(
        "web-only",
        "Service",
        "reviews",
        Action::Allow,
        vec![allow_get_from("cluster.local/ns/shop/sa/web")],
    ));
    mesh.apply();
    let web = mesh.client(NS, "web");
    let intruder = mesh.client("other", "web");
    assert_eq!(web.get(vip, "/").await.status, 200);
    let denied = intruder.get(vip, "/").await;
    assert_eq!(denied.status, 403);
}

#[tokio::test]
async fn deny_by_path_sees_the_normalized_path() {
    let mut mesh = Mesh::new().await;
    let pod = mesh.pod("reviews-1", "reviews").await;
    let vip = mesh.service("reviews", &[&pod], true);
    mesh.policies.push(waypoint_policy(
        "no-admin",
        "Gateway",
        "waypoint",
        Action::Deny,
        vec![Rule {
            to: vec![Operation {
                paths: vec![parse_string_match("/admin*")],
                ..Default::default()
            }],
            ..Default::default()
        }],
    ));
    mesh.apply();
    let web = mesh.client(NS, "web");
    for path in [
        "/admin",
        "/admin/users",
        "//admin",
        "/x/../admin",
        "/%61dmin",
    ] {
        let reply = web.get(vip, path).await;
        assert_eq!(reply.status, 403, "{path}");
    }
    let ok = web.get(vip, "/public/./page").await;
    assert_eq!(ok.status, 200);
    assert_eq!(
        ok.json()["path"],
        "/public/page",
        "the app sees the normalized path"
    );
}

#[tokio::test]
async fn a_target_normalizing_leaves_alone_reaches_the_app_as_sent() {
    let mut mesh = Mesh::new().await;
    let pod = mesh.pod("reviews-1", "reviews").await;
    let vip = mesh.service("reviews", &[&pod], true);
    mesh.apply();
    let web = mesh.client(NS, "web");
    let reply = web.get(vip, "/public/page?a=1&b=%20x").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["path"], "/public/page");
    assert_eq!(reply.json()["query"], "a=1&b=%20x");
    // And one it changes keeps its query.
    let reply = web.get(vip, "/public/./page?a=1").await;
    assert_eq!(reply.json()["path"], "/public/page");
    assert_eq!(reply.json()["query"], "a=1");
}

/// Two pods of `reviews`, `reviews-v1` and `reviews-v2`, behind the
/// waypoint-bound Service `reviews` (its address returned) and a Service of
/// each version's own.
async fn reviews_in_two_versions(mesh: &mut Mesh) -> std::net::SocketAddr {
    let v1 = mesh.pod("reviews-v1", "reviews").await;
    let v2 = mesh.pod("reviews-v2", "reviews").await;
    let vip = mesh.service("reviews", &[&v1, &v2], true);
    mesh.service("reviews-v1", &[&v1], false);
    mesh.service("reviews-v2", &[&v2], false);
    vip
}

#[tokio::test]
async fn routes_by_header() {
    let mut mesh = Mesh::new().await;
    let vip = reviews_in_two_versions(&mut mesh).await;
    mesh.routes.push(route_to(
        "by-header",
        vec![
            RouteRule {
                matches: vec![RouteMatch {
                    headers: vec![HeaderMatch {
                        name: "x-version".into(),
                        kind: Some(header_match::Kind::Exact("v2".into())),
                    }],
                    ..Default::default()
                }],
                backends: vec![backend("reviews-v2", 1)],
                request_header_modifiers: vec![weft_api::config::HeaderModifier {
                    name: "x-routed".into(),
                    value: "v2".into(),
                    op: "SET".into(),
                }],
                ..Default::default()
            },
            RouteRule {
                backends: vec![backend("reviews-v1", 1)],
                ..Default::default()
            },
        ],
    ));
    mesh.apply();
    let web = mesh.client(NS, "web");
    for _ in 0..5 {
        assert_eq!(web.get(vip, "/").await.pod(), "reviews-v1");
        let reply = web.request(vip, "GET", "/", &[("x-version", "v2")]).await;
        assert_eq!(reply.pod(), "reviews-v2");
        assert_eq!(reply.json()["headers"]["x-routed"], "v2");
    }
}

#[tokio::test]
async fn routes_by_path_and_unmatched_requests_get_404() {
    let mut mesh = Mesh::new().await;
    let pod = mesh.pod("reviews-1", "reviews").await;
    let vip = mesh.service("reviews", &[&pod], true);
    mesh.routes.push(route_to(
        "api-only",
        vec![RouteRule {
            matches: on_prefix("/api"),
            ..Default::default()
        }],
    ));
    mesh.apply();
    let web = mesh.client(NS, "web");
    assert_eq!(web.get(vip, "/api/items").await.status, 200);
    assert_eq!(web.get(vip, "/other").await.status, 404);
}

#[tokio::test]
async fn weighted_split_over_two_backends() {
    let mut mesh = Mesh::new().await;
    let vip = reviews_in_two_versions(&mut mesh).await;
    mesh.routes.push(route_to(
        "split",
        vec![RouteRule {
            backends: vec![backend("reviews-v1", 80), backend("reviews-v2", 20)],
            ..Default::default()
        }],
    ));
    mesh.apply();
    let web = mesh.client(NS, "web");
    let mut sender = web.http1(vip).await;
    let total = 1000;
    let mut to_v2 = 0;
    for _ in 0..total {
        let reply = send(&mut sender, "GET", "/", &[]).await;
        assert_eq!(reply.status, 200);
        if reply.pod() == "reviews-v2" {
            to_v2 += 1;
        }
    }
    // 20% of 1000 = 200, standard deviation ~12.6: ±60 is beyond 4.5 sigma.
    assert!(
        (140..=260).contains(&to_v2),
        "{to_v2} of {total} went to v2"
    );
}

#[tokio::test]
async fn retries_a_503_for_idempotent_requests() {
    let mut mesh = Mesh::new().await;
    let pod = mesh.pod("reviews-1", "reviews").await;
    let vip = mesh.service("reviews", &[&pod], true);
    mesh.apply();
    let web = mesh.client(NS, "web");
    use std::sync::atomic::Ordering::SeqCst;

    // Default policy: two more tries for an idempotent request.
    pod.state.fail_first.store(2, SeqCst);
    let reply = web.get(vip, "/").await;
    assert_eq!(reply.status, 200);
    assert_eq!(pod.state.requests.load(SeqCst), 3);

    // More failures than tries: the last 503 comes back.
    pod.state.fail_first.store(5, SeqCst);
    let reply = web.get(vip, "/").await;
    assert_eq!(reply.status, 503);
    assert_eq!(pod.state.requests.load(SeqCst), 6);
    pod.state.fail_first.store(0, SeqCst);

    // POST is not retried by default...
    pod.state.fail_first.store(1, SeqCst);
    let reply = web.request(vip, "POST", "/", &[]).await;
    assert_eq!(reply.status, 503);
    assert_eq!(pod.state.requests.load(SeqCst), 7);
}

#[tokio::test]
async fn a_configured_retry_policy_retries_any_method() {
    let mut mesh = Mesh::new().await;
    let pod = mesh.pod("reviews-1", "reviews").await;
    let vip = mesh.service("reviews", &[&pod], true);
    mesh.routes.push(route_to(
        "retry",
        vec![RouteRule {
            retry: Some(RetryPolicy {
                attempts: 3,
                codes: vec![503],
                backoff_ms: 1,
            }),
            ..Default::default()
        }],
    ));
    mesh.apply();
    let web = mesh.client(NS, "web");
    use std::sync::atomic::Ordering::SeqCst;
    pod.state.fail_first.store(3, SeqCst);
    let reply = web.request(vip, "POST", "/", &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["body_len"], 11, "the body was sent again");
    assert_eq!(pod.state.requests.load(SeqCst), 4);
}

/// Issue 16: a rule's retry as the controller converts an HTTPRoute's
/// `retry` (GEP-1731): only the listed codes are retried (a GET's default
/// 503 retry is replaced, not added to), and `backoff` is a minimum — the
/// jitter never makes a retry come sooner; each retry waits longer.
#[tokio::test]
async fn a_rule_retry_retries_only_its_codes_and_waits_at_least_its_backoff() {
    use std::sync::atomic::Ordering::SeqCst;
    let mut mesh = Mesh::new().await;
    let pod = mesh.pod("reviews-1", "reviews").await;
    let vip = mesh.service("reviews", &[&pod], true);
    mesh.routes.push(route_to(
        "retry",
        vec![
            RouteRule {
                matches: on_prefix("/listed"),
                retry: Some(RetryPolicy {
                    attempts: 2,
                    codes: vec![503],
                    backoff_ms: 50,
                }),
                ..Default::default()
            },
            RouteRule {
                matches: on_prefix("/unlisted"),
                retry: Some(RetryPolicy {
                    attempts: 2,
                    codes: vec![502],
                    backoff_ms: 1,
                }),
                ..Default::default()
            },
        ],
    ));
    mesh.apply();
    let web = mesh.client(NS, "web");

    // Jitter is random: several rounds, so a jitter that could subtract
    // would show.
    for round in 1..=5 {
        pod.state.fail_first.store(2, SeqCst);
        let started = std::time::Instant::now();
        let reply = web.get(vip, "/listed").await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(pod.state.requests.load(SeqCst), 3 * round, "two retries");
        // 50 ms before the first retry, then 100 ms (the backoff grows
        // with each attempt); jitter only adds.
        assert!(
            started.elapsed() >= Duration::from_millis(150),
            "retried after {:?}",
            started.elapsed()
        );
    }

    pod.state.fail_first.store(1, SeqCst);
    let reply = web.get(vip, "/unlisted").await;
    assert_eq!(reply.status, 503, "503 is not among the rule's codes");
    assert_eq!(pod.state.requests.load(SeqCst), 16, "not retried");
}

#[tokio::test]
async fn a_route_timeout_answers_504() {
    let mut mesh = Mesh::new().await;
    let pod = mesh.pod("reviews-1", "reviews").await;
    let vip = mesh.service("reviews", &[&pod], true);
    mesh.routes.push(route_to(
        "timeout",
        vec![RouteRule {
            timeout_ms: 200,
            ..Default::default()
        }],
    ));
    mesh.apply();
    let web = mesh.client(NS, "web");
    let reply = web.get(vip, "/slow").await;
    assert_eq!(reply.status, 504);
    assert_eq!(web.get(vip, "/fast").await.status, 200);
}

#[tokio::test]
async fn direct_status_answers_without_a_backend() {
    let mut mesh = Mesh::new().await;
    let pod = mesh.pod("reviews-1", "reviews").await;
    let vip = mesh.service("reviews", &[&pod], true);
    mesh.routes.push(route_to(
        "fault",
        vec![RouteRule {
            direct_status: 418,
            ..Default::default()
        }],
    ));
    mesh.apply();
    let web = mesh.client(NS, "web");
    assert_eq!(web.get(vip, "/").await.status, 418);
    assert_eq!(
        pod.state.requests.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

#[tokio::test]
async fn upstream_tunnels_present_the_waypoint_identity() {
    let mut mesh = Mesh::new().await;
    let pod = mesh.pod("reviews-1", "reviews").await;
    let vip = mesh.service("reviews", &[&pod], true);
    mesh.apply();
    let web = mesh.client(NS, "web");
    let reply = web.get(vip, "/").await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.json()["peer"],
        "spiffe://cluster.local/ns/shop/sa/waypoint"
    );
    let peers = pod.state.peers.lock().unwrap().clone();
    assert!(!peers.is_empty());
    assert!(peers.iter().all(|p| *p == id(NS, "waypoint")), "{peers:?}");
    let authorities = pod.state.authorities.lock().unwrap().clone();
    assert!(
        authorities.iter().all(|a| *a == pod.addr()),
        ":authority is the pod's address and target port: {authorities:?}"
    );
}

#[tokio::test]
async fn upstream_connections_are_reused() {
    let mut mesh = Mesh::new().await;
    let pod = mesh.pod("reviews-1", "reviews").await;
    let vip = mesh.service("reviews", &[&pod], true);
    mesh.apply();
    let web = mesh.client(NS, "web");
    for _ in 0..20 {
        assert_eq!(web.get(vip, "/").await.status, 200);
    }
    let tunnels = pod.state.peers.lock().unwrap().len();
    assert_eq!(
        tunnels, 1,
        "one pooled upstream connection served all requests"
    );
    assert_eq!(mesh.waypoint.tunnels.connections_opened(), 1);
}

#[tokio::test]
async fn workload_addressed_traffic_and_unbound_destinations() {
    let mut mesh = Mesh::new().await;
    let bound = mesh.pod_with("bound-1", NS, "bound", true, true).await;
    let free = mesh.pod("free-1", "free").await;
    let unbound_vip = mesh.service("free", &[&free], false);
    mesh.apply();
    let web = mesh.client(NS, "web");
    let reply = web.get(bound.addr(), "/").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.pod(), "bound-1");

    // Not bound to this waypoint: the tunnel itself is refused.
    match web.tunnel(unbound_vip).await {
        Err(weft_hbone::HboneError::Refused(status)) => assert_eq!(status, 403),
        other => panic!("expected a refusal, got {other:?}"),
    }
    match web.tunnel(free.addr()).await {
        Err(weft_hbone::HboneError::Refused(status)) => assert_eq!(status, 403),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn the_destination_workloads_own_policies_see_the_real_client() {
    let mut mesh = Mesh::new().await;
    let pod = mesh.pod("reviews-1", "reviews").await;
    let vip = mesh.service("reviews", &[&pod], true);
    // A namespace-wide DENY of the shop namespace's own policy: ztunnel at
    // the pod would see only the waypoint; the waypoint sees the client.
    mesh.policies.push(weft_api::config::Authorization {
        name: "no-intruders".into(),
        namespace: NS.into(),
        scope: weft_api::config::PolicyScope::Namespace as i32,
        action: Action::Deny as i32,
        rules: vec![Rule {
            from: vec![Source {
                namespaces: vec![parse_string_match("other")],
                ..Default::default()
            }],
            to: vec![Operation {
                methods: vec!["DELETE".into()],
                ..Default::default()
            }],
            when: vec![],
        }],
        ..Default::default()
    });
    mesh.apply();
    let web = mesh.client(NS, "web");
    let intruder = mesh.client("other", "x");
    assert_eq!(web.request(vip, "DELETE", "/r/1", &[]).await.status, 200);
    assert_eq!(intruder.request(vip, "GET", "/r/1", &[]).await.status, 200);
    assert_eq!(
        intruder.request(vip, "DELETE", "/r/1", &[]).await.status,
        403
    );
}

#[tokio::test]
async fn plain_destinations_get_plain_tcp() {
    let mut mesh = Mesh::new().await;
    let legacy = mesh.pod_with("legacy-1", NS, "legacy", false, false).await;
    let vip = mesh.service("legacy", &[&legacy], true);
    mesh.apply();
    let web = mesh.client(NS, "web");
    let reply = web.get(vip, "/").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.pod(), "legacy-1");
    assert_eq!(reply.json()["peer"], serde_json::Value::Null);
}

#[tokio::test]
async fn http2_clients_are_served() {
    let mut mesh = Mesh::new().await;
    let pod = mesh.pod("reviews-1", "reviews").await;
    let vip = mesh.service("reviews", &[&pod], true);
    mesh.apply();
    let web = mesh.client(NS, "web");
    let mut sender = web.http2(vip).await;
    let mut handles = Vec::new();
    for i in 0..10 {
        let request = http::Request::builder()
            .uri(format!("http://reviews.shop.svc.cluster.local/item/{i}"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        sender.ready().await.unwrap();
        handles.push(sender.send_request(request));
    }
    for (i, h) in handles.into_iter().enumerate() {
        let reply = read(h.await.expect("response")).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["path"], format!("/item/{i}"));
        assert_eq!(reply.json()["version"], "HTTP/2.0", "HTTP/2 end to end");
    }
}

#[tokio::test]
async fn malformed_http_gets_400_and_other_tunnels_carry_on() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut mesh = Mesh::new().await;
    let pod = mesh.pod("reviews-1", "reviews").await;
    let vip = mesh.service_with("reviews", &[&pod], true, "http");
    mesh.apply();
    let web = mesh.client(NS, "web");
    let mut good = web.http1(vip).await;
    assert_eq!(send(&mut good, "GET", "/", &[]).await.status, 200);

    // Same pooled HBONE connection, another tunnel, garbage HTTP.
    let mut bad = web.tunnel(vip).await.expect("tunnel");
    bad.write_all(b"GET / HTTP/1.1\r\nthis is not a header\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), bad.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");

    assert_eq!(send(&mut good, "GET", "/again", &[]).await.status, 200);
    assert_eq!(mesh.waypoint.tunnels.connections_opened(), 1);
    assert_eq!(
        web.pool.connections_opened(),
        1,
        "both tunnels shared one HBONE connection"
    );
}

#[tokio::test]
async fn tcp_ports_are_authorized_at_l4_and_copied() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut mesh = Mesh::new().await;
    let pod = mesh.pod("echo-1", "echo").await;
    let vip = mesh.service("echo", &[&pod], true);
    let tcp_vip = std::net::SocketAddr::new(vip.ip(), 7000);
    // Only GETs from web: an L7 ALLOW can never match a TCP connection.
    mesh.policies.push(waypoint_policy(
        "get-only",
        "Service",
        "echo",
        Action::Allow,
        vec![allow_get_from("cluster.local/ns/shop/sa/web")],
    ));
    mesh.apply();
    let web = mesh.client(NS, "web");
    match web.tunnel(tcp_vip).await {
        Err(weft_hbone::HboneError::Refused(status)) => assert_eq!(status, 401),
        other => panic!("expected a refusal, got {other:?}"),
    }

    mesh.policies.clear();
    mesh.policies.push(waypoint_policy(
        "web-only",
        "Service",
        "echo",
        Action::Allow,
        vec![Rule {
            from: vec![Source {
                principals: vec![parse_string_match("cluster.local/ns/shop/sa/web")],
                ..Default::default()
            }],
            ..Default::default()
        }],
    ));
    mesh.apply();
    let mut stream = web.tunnel(tcp_vip).await.expect("tunnel");
    stream.write_all(b"\x00\x01binary, not HTTP").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut echoed = Vec::new();
    stream.read_to_end(&mut echoed).await.unwrap();
    assert_eq!(echoed, b"\x00\x01binary, not HTTP");
    let other = mesh.client("other", "web");
    assert!(other.tunnel(tcp_vip).await.is_err());
}

#[tokio::test]
async fn sniffed_tcp_on_a_port_without_app_protocol() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut mesh = Mesh::new().await;
    let pod = mesh.pod("reviews-1", "reviews").await;
    let vip = mesh.service("reviews", &[&pod], true);
    mesh.apply();
    let web = mesh.client(NS, "web");
    // Port 80 has no appProtocol: bytes that are not HTTP are copied to the
    // app as they are (here the app answers garbage with a 400 of its own).
    let mut stream = web.tunnel(vip).await.expect("tunnel");
    stream
        .write_all(b"\x16\x03\x01 not http\r\n\r\n")
        .await
        .unwrap();
    let mut answer = vec![0u8; 12];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut answer))
        .await
        .expect("an answer")
        .unwrap();
    assert!(String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 400"));
    let tunnels = mesh.waypoint.proxy.observer.tunnels();
    assert!(tunnels.iter().any(|t| t.bytes_sent > 0), "{tunnels:?}");
}

#[tokio::test]
async fn tap_streams_request_events() {
    let mut mesh = Mesh::new().await;
    let pod = mesh.pod("reviews-1", "reviews").await;
    let vip = mesh.service("reviews", &[&pod], true);
    mesh.policies.push(waypoint_policy(
        "get-only",
        "Service",
        "reviews",
        Action::Allow,
        vec![allow_get_from("cluster.local/ns/shop/sa/web")],
    ));
    mesh.apply();
    let mut tap = mesh.waypoint.proxy.observer.subscribe_tap();
    let web = mesh.client(NS, "web");
    assert_eq!(web.get(vip, "/a?secret=1").await.status, 200);
    assert_eq!(web.request(vip, "POST", "/b", &[]).await.status, 403);
    let first = tap.recv().await.unwrap();
    assert_eq!(first.kind, weft_api::admin::TapKind::Request);
    assert_eq!(first.request.as_deref(), Some("GET /a"));
    assert_eq!(first.status, Some(200));
    assert_eq!(first.connection.waypoint.as_deref(), Some("shop/waypoint"));
    assert_eq!(
        first.connection.source.identity.as_deref(),
        Some("spiffe://cluster.local/ns/shop/sa/web")
    );
    assert_eq!(
        first.connection.destination.workload.as_deref(),
        Some("shop/reviews-1")
    );
    let second = tap.recv().await.unwrap();
    assert_eq!(second.request.as_deref(), Some("POST /b"));
    assert_eq!(second.status, Some(403));
    assert!(
        second
            .verdict
            .unwrap()
            .contains("no rule of the ALLOW policies")
    );
}

/// Issue 16: HTTPRoute's `ResponseHeaderModifier` changes what the client
/// receives, not what the app sent.
#[tokio::test]
async fn response_headers_are_modified_on_the_way_back() {
    let mut mesh = Mesh::new().await;
    let pod = mesh.pod("reviews-1", "reviews").await;
    let vip = mesh.service("reviews", &[&pod], true);
    mesh.routes.push(route_to(
        "stamp",
        vec![RouteRule {
            response_header_modifiers: vec![
                weft_api::config::HeaderModifier {
                    name: "x-served-by".into(),
                    value: "weft".into(),
                    op: "SET".into(),
                },
                weft_api::config::HeaderModifier {
                    name: "content-type".into(),
                    value: String::new(),
                    op: "REMOVE".into(),
                },
            ],
            ..Default::default()
        }],
    ));
    mesh.apply();
    let reply = mesh.client(NS, "web").get(vip, "/").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["x-served-by"], "weft");
    assert!(!reply.headers.contains_key("content-type"));
    assert!(
        !reply.json()["headers"]
            .as_object()
            .is_some_and(|h| h.contains_key("x-served-by")),
        "a response header never reaches the app"
    );
}

/// Issue 16: a backendRef's own header filters apply only to the requests
/// sent to that backend and to its responses, after the rule's.
#[tokio::test]
async fn a_backends_own_header_filters_apply_to_its_share_only() {
    let mut mesh = Mesh::new().await;
    let vip = reviews_in_two_versions(&mut mesh).await;
    let op = |op: &str, name: &str, value: &str| weft_api::config::HeaderModifier {
        name: name.into(),
        value: value.into(),
        op: op.into(),
    };
    let mut to_v1 = backend("reviews-v1", 1);
    to_v1.request_header_modifiers = vec![op("SET", "x-rule", "backend-wins")];
    to_v1.response_header_modifiers = vec![op("ADD", "x-answered-by", "v1")];
    mesh.routes.push(route_to(
        "per-backend",
        vec![RouteRule {
            backends: vec![to_v1, backend("reviews-v2", 1)],
            request_header_modifiers: vec![op("SET", "x-rule", "rule")],
            ..Default::default()
        }],
    ));
    mesh.apply();
    let web = mesh.client(NS, "web");
    let mut sender = web.http1(vip).await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let reply = send(&mut sender, "GET", "/", &[]).await;
        assert_eq!(reply.status, 200);
        let sent = reply.json()["headers"]["x-rule"]
            .as_str()
            .map(str::to_owned);
        let answered = reply
            .headers
            .get("x-answered-by")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        match reply.pod().as_str() {
            "reviews-v1" => {
                assert_eq!(sent.as_deref(), Some("backend-wins"));
                assert_eq!(answered.as_deref(), Some("v1"));
            }
            other => {
                assert_eq!(other, "reviews-v2");
                assert_eq!(sent.as_deref(), Some("rule"), "the rule's change only");
                assert_eq!(answered, None);
            }
        }
        seen.insert(reply.pod());
    }
    assert_eq!(seen.len(), 2, "both backends answered in 40 requests");
}

/// `RequestRedirect` answers without a backend: scheme, host, port and a
/// prefix replacement as the Gateway API says, the query kept.
#[tokio::test]
async fn a_redirect_answers_with_its_location() {
    let mut mesh = Mesh::new().await;
    let pod = mesh.pod("reviews-1", "reviews").await;
    let vip = mesh.service("reviews", &[&pod], true);
    mesh.routes.push(route_to(
        "moved",
        vec![RouteRule {
            matches: on_prefix("/old"),
            redirect: Some(Redirect {
                scheme: "https".into(),
                hostname: "reviews.example.com".into(),
                path: Some(PathModifier {
                    kind: Some(path_modifier::Kind::Prefix("/new".into())),
                }),
                port: 0,
                status: 301,
            }),
            ..Default::default()
        }],
    ));
    mesh.apply();
    let reply = mesh.client(NS, "web").get(vip, "/old/page?x=1").await;
    assert_eq!(reply.status, 301);
    assert_eq!(
        reply.headers["location"],
        "https://reviews.example.com/new/page?x=1"
    );
    assert_eq!(
        pod.state.requests.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

/// `URLRewrite`: the app receives the rewritten path and host; the match
/// that selected the rule is what a prefix replacement replaces.
#[tokio::test]
async fn a_rewrite_changes_the_path_and_host_the_app_sees() {
    let mut mesh = Mesh::new().await;
    let pod = mesh.pod("reviews-1", "reviews").await;
    let vip = mesh.service("reviews", &[&pod], true);
    let rewrite = |prefix: &str, path: path_modifier::Kind, host: &str| RouteRule {
        matches: on_prefix(prefix),
        rewrite: Some(Rewrite {
            hostname: host.into(),
            path: Some(PathModifier { kind: Some(path) }),
        }),
        ..Default::default()
    };
    mesh.routes.push(route_to(
        "rewrite",
        vec![
            rewrite(
                "/api",
                path_modifier::Kind::Prefix("/v2".into()),
                "internal.reviews",
            ),
            rewrite("/all", path_modifier::Kind::Full("/one".into()), ""),
        ],
    ));
    mesh.apply();
    let web = mesh.client(NS, "web");
    let reply = web.get(vip, "/api/items?page=2").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let seen = reply.json();
    assert_eq!(seen["path"], "/v2/items");
    assert_eq!(seen["query"], "page=2");
    assert_eq!(seen["headers"]["host"], "internal.reviews");
    let reply = web.get(vip, "/all/of/it").await;
    assert_eq!(reply.json()["path"], "/one");
    assert_eq!(
        reply.json()["headers"]["host"],
        "reviews.shop.svc.cluster.local",
        "no hostname: the client's"
    );
}

/// `RequestMirror`: the mirror gets a copy (body included), the client
/// gets the real backend's answer, and a mirror that fails costs the
/// client nothing.
#[tokio::test]
async fn a_mirror_gets_a_copy_and_the_client_the_real_answer() {
    use std::sync::atomic::Ordering::SeqCst;
    let mut mesh = Mesh::new().await;
    let pod = mesh.pod("reviews-1", "reviews").await;
    let shadow = mesh.pod("shadow-1", "shadow").await;
    let vip = mesh.service("reviews", &[&pod], true);
    mesh.service("shadow", &[&shadow], false);
    let mirror_to = |name: &str| Mirror {
        backend: Some(backend(name, 1)),
        numerator: 0,
        denominator: 0,
    };
    mesh.routes.push(route_to(
        "mirror",
        vec![RouteRule {
            mirrors: vec![mirror_to("shadow"), mirror_to("missing")],
            ..Default::default()
        }],
    ));
    mesh.apply();
    let web = mesh.client(NS, "web");
    for _ in 0..3 {
        let reply = web.request(vip, "POST", "/orders", &[]).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.pod(), "reviews-1");
        assert_eq!(reply.json()["body_len"], 11);
    }
    let mirrored = tokio::time::timeout(Duration::from_secs(10), async {
        while shadow.state.requests.load(SeqCst) < 3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        mirrored.is_ok(),
        "the mirror saw {}",
        shadow.state.requests.load(SeqCst)
    );
    assert_eq!(pod.state.requests.load(SeqCst), 3);
}

/// `timeouts.backendRequest` limits each attempt; a retry gets a fresh
/// limit, and the client gets 504 once the attempts are spent.
#[tokio::test]
async fn a_backend_timeout_limits_each_attempt() {
    use std::sync::atomic::Ordering::SeqCst;
    let mut mesh = Mesh::new().await;
    let pod = mesh.pod("reviews-1", "reviews").await;
    let vip = mesh.service("reviews", &[&pod], true);
    mesh.routes.push(route_to(
        "per-try",
        vec![RouteRule {
            timeout_ms: 10_000,
            backend_timeout_ms: 200,
            retry: Some(RetryPolicy {
                attempts: 1,
                codes: vec![503],
                backoff_ms: 1,
            }),
            ..Default::default()
        }],
    ));
    mesh.apply();
    let web = mesh.client(NS, "web");
    let started = std::time::Instant::now();
    let reply = web.get(vip, "/slow").await;
    assert_eq!(reply.status, 504, "{}", reply.body);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "each attempt was cut at its limit, not the route's"
    );
    assert_eq!(
        pod.state.requests.load(SeqCst),
        2,
        "the first attempt and one retry"
    );
    assert_eq!(web.get(vip, "/fast").await.status, 200);
}

/// Issue 16: a backend the controller could not resolve (no ReferenceGrant,
/// missing, not a Service) takes its share of requests and answers them
/// 500, as the Gateway API says; the other backends go on serving.
#[tokio::test]
async fn an_unresolved_backend_answers_500_for_its_share() {
    let mut mesh = Mesh::new().await;
    let v1 = mesh.pod("reviews-v1", "reviews").await;
    let vip = mesh.service("reviews", &[&v1], true);
    mesh.service("reviews-v1", &[&v1], false);
    let mut refused = backend("reviews-v1", 1);
    refused.unresolved = "no ReferenceGrant".into();
    mesh.routes.push(route_to(
        "half-refused",
        vec![
            RouteRule {
                matches: on_prefix("/refused"),
                backends: vec![refused],
                ..Default::default()
            },
            RouteRule {
                backends: vec![backend("reviews-v1", 1)],
                ..Default::default()
            },
        ],
    ));
    mesh.apply();
    let web = mesh.client(NS, "web");
    assert_eq!(web.get(vip, "/refused").await.status, 500);
    assert_eq!(web.get(vip, "/served").await.status, 200);
}

/// Issue 16: a WebSocket through the waypoint. The upgrade request is an
/// HTTP request: the waypoint's L7 policy decides it (a GET upgrade is
/// allowed, the same upgrade from another identity is refused with 403
/// before anything reaches the app), and once the app accepts, messages
/// flow both ways over the joined connections.
#[tokio::test]
async fn a_websocket_passes_the_waypoint_under_its_l7_policy() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut mesh = Mesh::new().await;
    let pod = mesh.pod("reviews-1", "reviews").await;
    let vip = mesh.service("reviews", &[&pod], true);
    mesh.policies.push(waypoint_policy(
        "web-may-get",
        "Service",
        "reviews",
        Action::Allow,
        vec![allow_get_from("cluster.local/ns/shop/sa/web")],
    ));
    mesh.apply();
    let request = || {
        "ws://reviews.shop.svc.cluster.local/chat"
            .into_client_request()
            .expect("request")
    };

    let web = mesh.client(NS, "web");
    let stream = web.tunnel(vip).await.expect("tunnel");
    let (mut ws, response) = tokio_tungstenite::client_async(request(), stream)
        .await
        .expect("the WebSocket handshake passes the waypoint");
    assert_eq!(response.status(), 101);
    for text in ["hello", "again"] {
        ws.send(Message::Text(text.into())).await.expect("send");
        let echo = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("an echo in time")
            .expect("a message")
            .expect("not an error");
        assert_eq!(echo, Message::Text(format!("reviews-1: {text}").into()));
    }
    ws.close(None).await.expect("close");

    let requests = pod.state.requests.load(std::sync::atomic::Ordering::SeqCst);
    let intruder = mesh.client("other", "web");
    let stream = intruder.tunnel(vip).await.expect("tunnel");
    match tokio_tungstenite::client_async(request(), stream).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403)
        }
        other => panic!(
            "the policy refuses the upgrade: {:?}",
            other.map(|(_, r)| r.status())
        ),
    }
    assert_eq!(
        pod.state.requests.load(std::sync::atomic::Ordering::SeqCst),
        requests,
        "the refused upgrade never reached the app"
    );
}

/// Issue 16: `CONNECT` through the waypoint to a Service that is an HTTP
/// proxy: the waypoint's L7 policy decides the CONNECT like any request
/// (another identity gets 403 and the proxy never sees it); once the proxy
/// answers 200, bytes flow both ways over the joined connections.
#[tokio::test]
async fn a_connect_passes_the_waypoint_under_its_l7_policy() {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let mut mesh = Mesh::new().await;
    let pod = mesh.pod("egress-proxy-1", "egress-proxy").await;
    let vip = mesh.service("egress-proxy", &[&pod], true);
    let mut rule = allow_get_from("cluster.local/ns/shop/sa/web");
    rule.to[0].methods = vec!["CONNECT".into()];
    mesh.policies.push(waypoint_policy(
        "web-may-connect",
        "Service",
        "egress-proxy",
        Action::Allow,
        vec![rule],
    ));
    mesh.apply();
    let connect = b"CONNECT api.example.com:443 HTTP/1.1\r\nHost: api.example.com:443\r\n\r\n";

    let web = mesh.client(NS, "web");
    let stream = web.tunnel(vip).await.expect("tunnel");
    let mut stream = BufReader::new(stream);
    stream.get_mut().write_all(connect).await.expect("CONNECT");
    let mut head = String::new();
    loop {
        let mut line = String::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_line(&mut line))
            .await
            .expect("an answer in time")
            .expect("read");
        assert!(read > 0, "the answer ended early: {head}");
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut greeting = String::new();
    stream.read_line(&mut greeting).await.expect("greeting");
    assert_eq!(
        greeting, "egress-proxy-1 api.example.com:443\n",
        "the proxy got the target"
    );
    stream.get_mut().write_all(b"ping").await.expect("write");
    let mut echo = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut echo))
        .await
        .expect("an echo in time")
        .expect("read");
    assert_eq!(&echo, b"ping");

    let requests = pod.state.requests.load(std::sync::atomic::Ordering::SeqCst);
    let intruder = mesh.client("other", "web");
    let mut stream = intruder.tunnel(vip).await.expect("tunnel");
    stream.write_all(connect).await.expect("CONNECT");
    let mut answer = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
        .await
        .expect("an answer in time")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert_eq!(
        pod.state.requests.load(std::sync::atomic::Ordering::SeqCst),
        requests,
        "the refused CONNECT never reached the proxy"
    );
}

/// Issue 16: an HTTP/1.0 client (no `Host` required, the connection closes
/// after the answer) is served, and its answer is HTTP/1.x, not upgraded to
/// a version it cannot read.
#[tokio::test]
async fn an_http_1_0_client_is_served_and_the_connection_closes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut mesh = Mesh::new().await;
    let pod = mesh.pod("reviews-1", "reviews").await;
    let vip = mesh.service("reviews", &[&pod], true);
    mesh.apply();
    let web = mesh.client(NS, "web");
    let mut stream = web.tunnel(vip).await.expect("tunnel");
    stream
        .write_all(b"GET /legacy HTTP/1.0\r\n\r\n")
        .await
        .expect("request");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("the waypoint closes the connection after answering")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1."), "{answer}");
    assert!(answer.contains(" 200 "), "{answer}");
    assert!(answer.contains("\"path\":\"/legacy\""), "{answer}");
}
