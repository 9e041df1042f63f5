//! The model builder, on typed objects: one test per rule.

mod support;

use std::sync::Arc;

use support::deployed_service_account;

use serde_json::json;
use weft_api::config::{
    Action, HealthStatus, MtlsMode, PolicyScope, ResourceType, TunnelProtocol, path_modifier,
};
use weft_cluster::model::{self, Model, ModelConfig};
use weft_cluster::registry::{AnyObject, ClusterState, Kind};

/// Builds a state from JSON manifests (the same decoding the registries use).
fn state(objects: &[serde_json::Value]) -> ClusterState {
    let mut state = ClusterState {
        synced: true,
        ..ClusterState::default()
    };
    for o in objects {
        let kind = Kind::from_type_meta(
            o["apiVersion"].as_str().expect("apiVersion"),
            o["kind"].as_str().expect("kind"),
        )
        .expect("known kind");
        AnyObject::from_value(kind, o.clone())
            .expect("valid object")
            .insert_into(&mut state);
    }
    state
}

fn build(objects: &[serde_json::Value]) -> Model {
    model::build(&state(objects), &ModelConfig::default())
}

fn ns(name: &str, labels: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

fn pod(ns: &str, name: &str, ip: &str, labels: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"), "labels": labels},
        "spec": {"nodeName": "node-a", "serviceAccountName": "sa-".to_string() + name, "containers": [
            {"name": "app", "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"podIP": ip}
    })
}

fn service(ns: &str, name: &str, ip: &str, labels: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"clusterIP": ip, "selector": {"app": name},
                 "ports": [{"name": "http", "port": 80, "targetPort": "http", "appProtocol": "http"}]}
    })
}

fn waypoint(ns: &str, name: &str, waypoint_for: Option<&str>) -> Vec<serde_json::Value> {
    let mut labels = json!({});
    if let Some(f) = waypoint_for {
        labels = json!({"weft.dev/waypoint-for": f});
    }
    vec![
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": name, "namespace": ns, "labels": labels, "uid": format!("{name}-uid")},
            "spec": {"gatewayClassName": "weft-waypoint",
                     "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}
        }),
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": "10.96.9.9", "ports": [{"name": "mesh", "port": 15008}]}
        }),
        deployed_service_account(ns, name, &format!("{name}-uid")),
    ]
}

/// Security finding 11: a waypoint is trusted only with the ServiceAccount
/// the deployer made for it. One named the same way by someone else (before
/// the Gateway, or claiming another Gateway uid as owner) leaves what binds
/// to the waypoint refused, with no identity anyone could pass for.
#[test]
fn a_waypoint_whose_service_account_is_not_the_deployers_is_not_trusted() {
    let bound = |objects: &[serde_json::Value]| {
        let m = build(objects);
        m.services["in/web"]
            .waypoint
            .clone()
            .expect("the binding is kept")
    };
    let mut objects = vec![
        ns("in", json!({"weft.dev/dataplane-mode": "ambient"})),
        service(
            "in",
            "web",
            "10.96.0.1",
            json!({"weft.dev/use-waypoint": "wp"}),
        ),
    ];
    let proper = waypoint("in", "wp", None);
    let gateway_and_service = &proper[..2];
    objects.extend_from_slice(gateway_and_service);

    // No ServiceAccount from the deployer yet.
    let r = bound(&objects);
    assert_eq!(
        r.unavailable,
        "waypoint in/wp has no ServiceAccount in/wp-weft-waypoint from the deployer yet"
    );
    assert!(r.identity.is_empty(), "{r:?}");
    // One a user made under that name, labelled and even naming the Gateway
    // as owner, but not by its uid; or with no owner at all.
    for squatter in [
        deployed_service_account("in", "wp", "another-uid"),
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": "wp-weft-waypoint", "namespace": "in",
                            "labels": {"gateway.networking.k8s.io/gateway-name": "wp"}}}),
    ] {
        let mut with = objects.clone();
        with.push(squatter);
        let r = bound(&with);
        assert_eq!(
            r.unavailable,
            "ServiceAccount in/wp-weft-waypoint was not made by the waypoint deployer for \
             Gateway in/wp"
        );
        assert!(r.identity.is_empty() && r.addresses.is_empty(), "{r:?}");
    }
    // The deployer's: trusted, under the distinct name.
    let r = bound(&[objects.clone(), proper[2..].to_vec()].concat());
    assert_eq!(r.unavailable, "");
    assert_eq!(
        r.identity,
        "spiffe://cluster.local/ns/in/sa/wp-weft-waypoint"
    );
}

#[test]
fn enrollment_by_namespace_and_pod_label() {
    let m = build(&[
        ns("in", json!({"weft.dev/dataplane-mode": "ambient"})),
        ns("out", json!({})),
        pod("in", "a", "10.0.0.1", json!({})),
        pod(
            "in",
            "optout",
            "10.0.0.2",
            json!({"weft.dev/dataplane-mode": "none"}),
        ),
        pod("out", "b", "10.0.0.3", json!({})),
        pod(
            "out",
            "optin",
            "10.0.0.4",
            json!({"weft.dev/dataplane-mode": "ambient"}),
        ),
    ]);
    let proto = |uid: &str| m.workloads[uid].protocol;
    assert_eq!(proto("uid-a"), TunnelProtocol::Hbone as i32);
    assert_eq!(proto("uid-optout"), TunnelProtocol::None as i32);
    assert_eq!(proto("uid-b"), TunnelProtocol::None as i32);
    assert_eq!(proto("uid-optin"), TunnelProtocol::Hbone as i32);
}

#[test]
fn workload_identity_node_and_health() {
    let mut p = pod("in", "a", "10.0.0.1", json!({"app": "web"}));
    p["status"]["conditions"] = json!([{"type": "Ready", "status": "False"}]);
    p["status"]["podIPs"] = json!([{"ip": "10.0.0.1"}, {"ip": "fd00::1"}]);
    let m = build(&[ns("in", json!({"weft.dev/dataplane-mode": "ambient"})), p]);
    let w = &m.workloads["uid-a"];
    assert_eq!(w.service_account, "sa-a");
    assert_eq!(w.trust_domain, "cluster.local");
    assert_eq!(w.node, "node-a");
    assert_eq!(w.addresses, vec!["10.0.0.1", "fd00::1"]);
    assert_eq!(w.status, HealthStatus::Unhealthy as i32);
    assert_eq!(w.canonical_name, "web");
}

#[test]
fn pods_without_ip_or_finished_are_not_workloads() {
    let mut done = pod("in", "done", "10.0.0.2", json!({}));
    done["status"]["phase"] = json!("Succeeded");
    let mut no_ip = pod("in", "pending", "10.0.0.3", json!({}));
    no_ip["status"] = json!({});
    let m = build(&[done, no_ip]);
    assert!(m.workloads.is_empty());
}

#[test]
fn waypoint_precedence_pod_over_namespace_and_service_over_namespace() {
    let mut objects = vec![
        ns(
            "in",
            json!({"weft.dev/dataplane-mode": "ambient", "weft.dev/use-waypoint": "ns-wp"}),
        ),
        pod("in", "plain", "10.0.0.1", json!({"app": "plain"})),
        pod(
            "in",
            "own",
            "10.0.0.2",
            json!({"weft.dev/use-waypoint": "pod-wp"}),
        ),
        pod(
            "in",
            "optout",
            "10.0.0.3",
            json!({"weft.dev/use-waypoint": "none"}),
        ),
        service("in", "plain", "10.96.0.1", json!({})),
        service(
            "in",
            "special",
            "10.96.0.2",
            json!({"weft.dev/use-waypoint": "svc-wp"}),
        ),
    ];
    objects.extend(waypoint("in", "ns-wp", Some("all")));
    objects.extend(waypoint("in", "pod-wp", Some("workload")));
    objects.extend(waypoint("in", "svc-wp", None));
    let m = build(&objects);
    let wp = |uid: &str| m.workloads[uid].waypoint.as_ref().map(|w| w.name.clone());
    assert_eq!(wp("uid-plain").as_deref(), Some("ns-wp"));
    assert_eq!(wp("uid-own").as_deref(), Some("pod-wp"));
    assert_eq!(wp("uid-optout"), None);
    let swp = |key: &str| m.services[key].waypoint.as_ref().map(|w| w.name.clone());
    assert_eq!(swp("in/plain").as_deref(), Some("ns-wp"));
    assert_eq!(swp("in/special").as_deref(), Some("svc-wp"));
    assert_eq!(
        swp("in/svc-wp"),
        None,
        "a waypoint's own Service is never bound"
    );
    let r = m.services["in/special"].waypoint.clone().expect("bound");
    assert_eq!(r.addresses, vec!["10.96.9.9"]);
    assert_eq!(r.hbone_port, 15008);
    assert_eq!(
        r.identity,
        "spiffe://cluster.local/ns/in/sa/svc-wp-weft-waypoint"
    );
}

#[test]
fn waypoint_for_limits_what_binds() {
    let mut objects = vec![
        ns("in", json!({"weft.dev/dataplane-mode": "ambient"})),
        pod(
            "in",
            "a",
            "10.0.0.1",
            json!({"weft.dev/use-waypoint": "svc-only"}),
        ),
        pod(
            "in",
            "b",
            "10.0.0.2",
            json!({"weft.dev/use-waypoint": "off"}),
        ),
        service(
            "in",
            "s1",
            "10.96.0.1",
            json!({"weft.dev/use-waypoint": "wl-only"}),
        ),
        service(
            "in",
            "s2",
            "10.96.0.2",
            json!({"weft.dev/use-waypoint": "svc-only"}),
        ),
    ];
    objects.extend(waypoint("in", "svc-only", None));
    objects.extend(waypoint("in", "wl-only", Some("workload")));
    objects.extend(waypoint("in", "off", Some("none")));
    let m = build(&objects);
    assert!(
        m.workloads["uid-a"].waypoint.is_none(),
        "service waypoint does not take workload traffic"
    );
    assert!(m.workloads["uid-b"].waypoint.is_none(), "waypoint-for none");
    assert!(
        m.services["in/s1"].waypoint.is_none(),
        "workload waypoint does not take service traffic"
    );
    assert!(m.services["in/s2"].waypoint.is_some());
}

#[test]
fn a_binding_that_cannot_be_honoured_is_kept_and_marked_unavailable() {
    let objects = vec![
        ns("in", json!({"weft.dev/dataplane-mode": "ambient"})),
        pod(
            "in",
            "a",
            "10.0.0.1",
            json!({"weft.dev/use-waypoint": "missing"}),
        ),
        service(
            "in",
            "s1",
            "10.96.0.1",
            json!({"weft.dev/use-waypoint": "missing"}),
        ),
        service(
            "in",
            "s2",
            "10.96.0.2",
            json!({"weft.dev/use-waypoint": "pending"}),
        ),
        // A waypoint Gateway with no Service, no status address and no pod.
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "pending", "namespace": "in"},
            "spec": {"gatewayClassName": "weft-waypoint",
                     "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}
        }),
    ];
    let m = build(&objects);
    for (what, binding) in [
        ("pod a", m.workloads["uid-a"].waypoint.clone()),
        ("service s1", m.services["in/s1"].waypoint.clone()),
    ] {
        let r = binding.unwrap_or_else(|| panic!("{what}: the binding is kept"));
        assert_eq!((r.namespace.as_str(), r.name.as_str()), ("in", "missing"));
        assert!(r.addresses.is_empty() && r.identity.is_empty(), "{r:?}");
        assert_eq!(
            r.unavailable, "Gateway in/missing of class weft-waypoint does not exist",
            "{what}"
        );
    }
    let r = m.services["in/s2"].waypoint.clone().expect("kept");
    assert!(r.unavailable.contains("has no address yet"), "{r:?}");
    // Once the Gateway exists and has an address, the binding is usable.
    let mut objects = objects;
    objects.extend(waypoint("in", "missing", Some("all")));
    let m = build(&objects);
    let r = m.workloads["uid-a"].waypoint.clone().expect("bound");
    assert!(r.unavailable.is_empty() && !r.addresses.is_empty(), "{r:?}");
}

#[test]
fn waypoint_in_another_namespace() {
    let mut objects = vec![
        ns(
            "app",
            json!({"weft.dev/dataplane-mode": "ambient",
            "weft.dev/use-waypoint": "shared", "weft.dev/use-waypoint-namespace": "infra"}),
        ),
        service("app", "web", "10.96.0.1", json!({})),
    ];
    objects.extend(waypoint("infra", "shared", None));
    let m = build(&objects);
    let r = m.services["app/web"].waypoint.clone().expect("bound");
    assert_eq!((r.namespace.as_str(), r.name.as_str()), ("infra", "shared"));
}

#[test]
fn a_terminating_pod_stays_in_the_mesh_but_takes_no_new_load_balanced_connections() {
    let mut leaving = pod("in", "web-1", "10.0.0.1", json!({"app": "web"}));
    leaving["metadata"]["deletionTimestamp"] = json!("2026-12-04T12:00:00Z");
    leaving["status"]["conditions"] = json!([{"type": "Ready", "status": "True"}]);
    let m = build(&[
        ns("in", json!({"weft.dev/dataplane-mode": "ambient"})),
        leaving,
        pod("in", "web-2", "10.0.0.2", json!({"app": "web"})),
        service("in", "web", "10.96.0.1", json!({})),
    ]);
    // Still a workload in the tunnel, with its identity: its traffic during
    // the grace period is mTLS and policy applies to it.
    let w = &m.workloads["uid-web-1"];
    assert_eq!(w.protocol, TunnelProtocol::Hbone as i32);
    assert_eq!(w.status, HealthStatus::Unhealthy as i32);
    let status = |uid: &str| {
        m.services["in/web"]
            .endpoints
            .iter()
            .find(|e| e.workload_uid == uid)
            .map(|e| e.status)
    };
    assert_eq!(status("uid-web-1"), Some(HealthStatus::Unhealthy as i32));
    assert_eq!(status("uid-web-2"), Some(HealthStatus::Healthy as i32));
}

#[test]
fn endpoints_from_slices_and_selector_fallback() {
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-abc", "namespace": "in", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 9090}],
        "endpoints": [
            {"addresses": ["10.0.0.1"], "targetRef": {"kind": "Pod", "name": "web-1", "namespace": "in"},
             "conditions": {"ready": false}},
            {"addresses": ["10.0.0.2"]}
        ]
    });
    let m = build(&[
        pod("in", "web-1", "10.0.0.1", json!({"app": "web"})),
        pod("in", "web-2", "10.0.0.2", json!({"app": "nope"})),
        pod("in", "api-1", "10.0.0.3", json!({"app": "api"})),
        pod("other", "api-x", "10.0.0.4", json!({"app": "api"})),
        service("in", "web", "10.96.0.1", json!({})),
        service("in", "api", "10.96.0.2", json!({})),
        slice,
    ]);
    let web = &m.services["in/web"];
    assert_eq!(web.hostname, "web.in.svc.cluster.local");
    assert!(!web.prefer_same_node);
    assert_eq!(web.ports[0].service_port, 80);
    assert_eq!(web.ports[0].target_port, 0, "named target port");
    let uids: Vec<_> = web
        .endpoints
        .iter()
        .map(|e| e.workload_uid.as_str())
        .collect();
    assert_eq!(
        uids,
        vec!["uid-web-1", "uid-web-2"],
        "the slice, not the selector, decides"
    );
    assert_eq!(web.endpoints[0].status, HealthStatus::Unhealthy as i32);
    assert_eq!(web.endpoints[0].ports.get(&80), Some(&9090));
    let api = &m.services["in/api"];
    assert_eq!(
        api.endpoints.len(),
        1,
        "selector fallback stays in the namespace"
    );
    assert_eq!(
        api.endpoints[0].ports.get(&80),
        Some(&8080),
        "named port resolved on the pod"
    );
}

#[test]
fn traffic_distribution_prefers_the_same_node() {
    let mut close = service("in", "close", "10.96.0.3", json!({}));
    close["spec"]["trafficDistribution"] = json!("PreferClose");
    let m = build(&[close]);
    assert!(m.services["in/close"].prefer_same_node);
}

#[test]
fn peer_authentication_precedence() {
    let pa = |ns: &str, name: &str, selector: Option<serde_json::Value>, mode: &str| {
        let mut spec = json!({"mtls": {"mode": mode}});
        if let Some(s) = selector {
            spec["selector"] = json!({"matchLabels": s});
        }
        json!({"apiVersion": "security.weft.dev/v1alpha1", "kind": "PeerAuthentication",
               "metadata": {"name": name, "namespace": ns}, "spec": spec})
    };
    let m = build(&[
        pa("weft-system", "mesh", None, "STRICT"),
        pa("relaxed", "ns", None, "PERMISSIVE"),
        pa("relaxed", "one", Some(json!({"app": "secure"})), "STRICT"),
        pa("inherit", "unset", None, "UNSET"),
        pod("relaxed", "a", "10.0.0.1", json!({})),
        pod("relaxed", "b", "10.0.0.2", json!({"app": "secure"})),
        pod("inherit", "c", "10.0.0.3", json!({})),
    ]);
    assert_eq!(m.workloads["uid-a"].mtls_mode, MtlsMode::Permissive as i32);
    assert_eq!(m.workloads["uid-b"].mtls_mode, MtlsMode::Strict as i32);
    assert_eq!(
        m.workloads["uid-c"].mtls_mode,
        MtlsMode::Strict as i32,
        "mesh-wide via UNSET"
    );
    let m = build(&[pod("x", "d", "10.0.0.4", json!({}))]);
    assert_eq!(
        m.workloads["uid-d"].mtls_mode,
        MtlsMode::Permissive as i32,
        "default"
    );
}

fn policy(ns: &str, name: &str, spec: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "security.weft.dev/v1alpha1", "kind": "AuthorizationPolicy",
           "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

#[test]
fn authorization_scopes_and_selector_binding() {
    let m = build(&[
        policy(
            "weft-system",
            "mesh",
            json!({"action": "DENY", "rules": [{"from": [{"source": {"ipBlocks": ["1.2.3.4/32"]}}]}]}),
        ),
        policy("in", "ns-wide", json!({"rules": [{}]})),
        policy(
            "in",
            "sel",
            json!({"selector": {"matchLabels": {"app": "db"}},
            "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/in/sa/*"]}}],
                       "to": [{"operation": {"ports": [5432, "5433"]}}]}]}),
        ),
        policy(
            "weft-system",
            "root-sel",
            json!({"selector": {"matchLabels": {"app": "db"}}, "action": "AUDIT"}),
        ),
        policy(
            "in",
            "at-waypoint",
            json!({"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "wp"}],
            "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]}),
        ),
        pod("in", "db", "10.0.0.1", json!({"app": "db"})),
        pod("other", "db2", "10.0.0.2", json!({"app": "db"})),
    ]);
    let scope = |k: &str| m.authorizations[k].scope;
    assert_eq!(scope("weft-system/mesh"), PolicyScope::Mesh as i32);
    assert_eq!(scope("in/ns-wide"), PolicyScope::Namespace as i32);
    assert_eq!(scope("in/sel"), PolicyScope::WorkloadSelector as i32);
    assert_eq!(scope("in/at-waypoint"), PolicyScope::Waypoint as i32);
    assert_eq!(
        m.authorizations["weft-system/mesh"].action,
        Action::Deny as i32
    );
    let target = m.authorizations["in/at-waypoint"]
        .target
        .clone()
        .expect("target");
    assert_eq!(
        (
            target.kind.as_str(),
            target.namespace.as_str(),
            target.name.as_str()
        ),
        ("Gateway", "in", "wp")
    );
    let sel = &m.authorizations["in/sel"];
    assert_eq!(sel.rules[0].to[0].ports, vec![5432, 5433]);
    assert!(matches!(
        sel.rules[0].from[0].principals[0].kind,
        Some(weft_api::config::string_match::Kind::Prefix(ref p)) if p == "cluster.local/ns/in/sa/"
    ));
    assert_eq!(
        m.workloads["uid-db"].authorization_policies,
        vec!["in/sel", "weft-system/root-sel"]
    );
    assert_eq!(
        m.workloads["uid-db2"].authorization_policies,
        vec!["weft-system/root-sel"]
    );
    assert!(m.policy_reports["in/sel"].accepted);
    assert!(!m.policy_reports["in/at-waypoint"].enforced_by_ztunnel);
}

#[test]
fn invalid_policies_fail_closed() {
    let m = build(&[
        policy(
            "in",
            "bad-allow",
            json!({"rules": [{"to": [{"operation": {"ports": ["http"]}}]}]}),
        ),
        policy(
            "in",
            "bad-deny",
            json!({"action": "DENY", "rules": [{"from": [{"source": {"ipBlocks": ["nope"]}}]}]}),
        ),
    ]);
    let allow = &m.authorizations["in/bad-allow"];
    assert!(allow.rules.is_empty(), "an unreadable ALLOW allows nothing");
    let deny = &m.authorizations["in/bad-deny"];
    assert_eq!(
        deny.rules,
        vec![weft_api::config::Rule::default()],
        "an unreadable DENY denies everything"
    );
    let report = &m.policy_reports["in/bad-deny"];
    assert!(!report.accepted);
    assert!(report.errors[0].contains("ipBlocks"), "{:?}", report.errors);
}

#[test]
fn routes_attach_to_services_and_waypoints_only() {
    let route = |name: &str, parent: serde_json::Value| {
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": "in"},
            "spec": {"parentRefs": [parent], "rules": [{
                "matches": [{"path": {"type": "PathPrefix", "value": "/api"}, "method": "GET",
                             "headers": [{"name": "x-user", "value": "a"}]}],
                "backendRefs": [{"name": "web-v2", "port": 80, "weight": 90}, {"name": "web-v1", "port": 80}],
                "timeouts": {"request": "1500ms"},
                "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-a", "value": "1"}], "remove": ["x-b"]}}]
            }]}
        })
    };
    let mut objects = vec![
        route(
            "gamma",
            json!({"group": "", "kind": "Service", "name": "web", "port": 80}),
        ),
        route("to-wp", json!({"name": "wp"})),
        route("elsewhere", json!({"name": "ingress"})),
        service("in", "web", "10.96.0.1", json!({})),
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
               "metadata": {"name": "ingress", "namespace": "in"},
               "spec": {"gatewayClassName": "other", "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}}),
    ];
    objects.extend(waypoint("in", "wp", None));
    let m = build(&objects);
    assert_eq!(
        m.routes.keys().collect::<Vec<_>>(),
        vec!["in/gamma", "in/to-wp"]
    );
    let r = &m.routes["in/gamma"];
    assert_eq!(r.parents[0].kind, "Service");
    assert_eq!(r.parents[0].port, 80);
    let rule = &r.rules[0];
    assert_eq!(rule.matches[0].method, "GET");
    assert_eq!(rule.backends[0].weight, 90);
    assert_eq!(rule.backends[1].weight, 1);
    assert_eq!(rule.backends[1].namespace, "in");
    assert_eq!(rule.timeout_ms, 1500);
    assert_eq!(rule.request_header_modifiers.len(), 2);
}

/// Issue 16: every HTTPRoute filter of the standard channel, the backend
/// timeout and regex query matches reach the waypoint's config; GRPCRoute
/// gets the filters its spec has.
#[test]
fn route_filters_timeouts_and_query_regexes_are_converted() {
    let mut objects = vec![
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "filters", "namespace": "in"},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web"}], "rules": [
                {
                    "matches": [{"queryParams": [
                        {"type": "RegularExpression", "name": "v", "value": "[0-9]+"},
                        {"name": "exact", "value": "1"}]}],
                    "timeouts": {"request": "5s", "backendRequest": "250ms"},
                    "filters": [
                        {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"add": [{"name": "x-served-by", "value": "weft"}]}},
                        {"type": "URLRewrite", "urlRewrite": {"hostname": "api.internal", "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2"}}},
                        {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "shadow", "port": 8080}, "percent": 10}},
                        {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "audit", "namespace": "ops", "port": 80}, "fraction": {"numerator": 1, "denominator": 3}}}
                    ],
                    "backendRefs": [{"name": "web", "port": 80, "filters": [
                        {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-backend", "value": "web"}], "remove": ["x-drop"]}},
                        {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"add": [{"name": "x-from", "value": "web"}]}}
                    ]}]
                },
                {
                    "filters": [{"type": "RequestRedirect", "requestRedirect": {
                        "scheme": "https", "hostname": "example.com", "port": 8443, "statusCode": 301,
                        "path": {"type": "ReplaceFullPath", "replaceFullPath": "/moved"}}}]
                }
            ]}
        }),
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
            "metadata": {"name": "grpc", "namespace": "in"},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "rpc"}], "rules": [{
                "filters": [
                    {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"remove": ["x-internal"]}},
                    {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "rpc-shadow", "port": 9090}}}
                ]
            }]}
        }),
    ];
    objects.extend([
        service("in", "web", "10.96.0.1", json!({})),
        service("in", "rpc", "10.96.0.2", json!({})),
        service("in", "shadow", "10.96.0.3", json!({})),
        service("in", "rpc-shadow", "10.96.0.4", json!({})),
        service("ops", "audit", "10.96.0.5", json!({})),
        // The mirror in ops is another namespace's: allowed by its owner.
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "ReferenceGrant",
               "metadata": {"name": "from-in", "namespace": "ops"},
               "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "in"}],
                        "to": [{"group": "", "kind": "Service"}]}}),
    ]);
    objects.extend(waypoint("in", "wp", None));
    let m = build(&objects);
    let rules = &m.routes["in/filters"].rules;
    let query = &rules[0].matches[0].query_params;
    assert_eq!(
        (query[0].regex.as_str(), query[0].exact.as_str()),
        ("[0-9]+", "")
    );
    assert_eq!(
        (query[1].regex.as_str(), query[1].exact.as_str()),
        ("", "1")
    );
    assert_eq!(
        (rules[0].timeout_ms, rules[0].backend_timeout_ms),
        (5000, 250)
    );
    let response = &rules[0].response_header_modifiers;
    assert_eq!(
        (
            response[0].op.as_str(),
            response[0].name.as_str(),
            response[0].value.as_str()
        ),
        ("ADD", "x-served-by", "weft")
    );
    // A backendRef's own header filters stay with that backend.
    let ops = |m: &[weft_api::config::HeaderModifier]| -> Vec<(String, String, String)> {
        m.iter()
            .map(|h| (h.op.clone(), h.name.clone(), h.value.clone()))
            .collect()
    };
    let web = &rules[0].backends[0];
    assert_eq!(
        ops(&web.request_header_modifiers),
        [
            ("SET".into(), "x-backend".into(), "web".into()),
            ("REMOVE".into(), "x-drop".into(), String::new())
        ]
    );
    assert_eq!(
        ops(&web.response_header_modifiers),
        [("ADD".into(), "x-from".into(), "web".into())]
    );
    assert!(rules[0].request_header_modifiers.is_empty());
    let rewrite = rules[0].rewrite.as_ref().expect("rewrite");
    assert_eq!(rewrite.hostname, "api.internal");
    assert_eq!(
        rewrite.path.as_ref().and_then(|p| p.kind.clone()),
        Some(path_modifier::Kind::Prefix("/v2".into()))
    );
    let mirrors: Vec<(String, String, u32, u32, u32)> = rules[0]
        .mirrors
        .iter()
        .map(|m| {
            let b = m.backend.clone().unwrap_or_default();
            (b.namespace, b.name, b.port, m.numerator, m.denominator)
        })
        .collect();
    assert_eq!(
        mirrors,
        vec![
            ("in".into(), "shadow".into(), 8080, 10, 100),
            ("ops".into(), "audit".into(), 80, 1, 3),
        ]
    );
    let redirect = rules[1].redirect.as_ref().expect("redirect");
    assert_eq!(
        (
            redirect.scheme.as_str(),
            redirect.hostname.as_str(),
            redirect.port,
            redirect.status
        ),
        ("https", "example.com", 8443, 301)
    );
    assert_eq!(
        redirect.path.as_ref().and_then(|p| p.kind.clone()),
        Some(path_modifier::Kind::Full("/moved".into()))
    );
    assert!(rules[1].backends.is_empty());

    let grpc = &m.routes["in/grpc"].rules[0];
    assert_eq!(grpc.response_header_modifiers[0].op, "REMOVE");
    let shadow = &grpc.mirrors[0];
    assert_eq!(
        (
            shadow.backend.as_ref().map(|b| b.name.as_str()),
            shadow.numerator,
            shadow.denominator
        ),
        (Some("rpc-shadow"), 0, 0),
        "no share given: every request"
    );
}

/// Issue 16: an HTTPRoute rule's experimental `retry` (GEP-1731) becomes the
/// rule's retry policy: attempts counted as retries after the first, codes
/// as written, backoff in milliseconds; unset fields take the waypoint's
/// defaults, and a rule without `retry` has no policy (the waypoint's
/// default applies). A bad value refuses the route, naming the field.
#[test]
fn route_retry_is_converted_and_bad_values_refuse_the_route() {
    use weft_api::config::RetryPolicy;
    use weft_cluster::model::route_report::Reason;
    let route = |name: &str, rules: serde_json::Value| {
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": "in"},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web"}], "rules": rules}
        })
    };
    let to_web = json!([{"name": "web", "port": 80}]);
    let objects = vec![
        service("in", "web", "10.96.0.1", json!({})),
        route(
            "retry",
            json!([
                {"backendRefs": to_web, "retry": {"attempts": 3, "codes": [502, 503], "backoff": "1s250ms"}},
                {"backendRefs": to_web, "retry": {"codes": [500]}},
                {"backendRefs": to_web, "retry": {"attempts": 0}},
                {"backendRefs": to_web}
            ]),
        ),
        route(
            "bad-backoff",
            json!([{"backendRefs": to_web, "retry": {"attempts": 1, "backoff": "soon"}}]),
        ),
        route(
            "bad-code",
            json!([{"backendRefs": to_web}, {"backendRefs": to_web, "retry": {"codes": [503, 302, 600]}}]),
        ),
        route(
            "bad-attempts",
            json!([{"backendRefs": to_web, "retry": {"attempts": -1}}]),
        ),
        // Decoding with the experimental channel's types also keeps a route
        // with an experimental filter: refused by name, not lost.
        route(
            "external-auth",
            json!([{"backendRefs": to_web, "filters": [{"type": "ExternalAuth",
                "externalAuth": {"protocol": "HTTP", "backendRef": {"name": "auth"}}}]}]),
        ),
    ];
    let m = build(&objects);
    let rules = &m.routes["in/retry"].rules;
    assert_eq!(
        rules[0].retry,
        Some(RetryPolicy {
            attempts: 3,
            codes: vec![502, 503],
            backoff_ms: 1250
        })
    );
    assert_eq!(
        rules[1].retry,
        Some(RetryPolicy {
            attempts: 2,
            codes: vec![500],
            backoff_ms: 25
        }),
        "unset attempts and backoff: the waypoint's defaults"
    );
    assert_eq!(
        rules[2]
            .retry
            .as_ref()
            .map(|r| (r.attempts, r.codes.is_empty())),
        Some((0, true)),
        "attempts 0: no retry at all; no codes: any 5xx"
    );
    assert_eq!(rules[3].retry, None);

    let refused = |name: &str| {
        let report = &m.route_reports[&format!("in/{name}")];
        let problem = report.parents[0].accepted.clone().expect_err("refused");
        assert_eq!(problem.reason, Reason::UnsupportedValue, "{name}");
        assert!(
            !m.routes.contains_key(&format!("in/{name}")),
            "{name} is attached nowhere"
        );
        problem.message
    };
    let message = refused("bad-backoff");
    assert!(
        message.contains("spec.rules[0].retry.backoff") && message.contains("soon"),
        "{message}"
    );
    let message = refused("bad-code");
    assert!(
        message.contains("spec.rules[1].retry.codes[1]")
            && message.contains("spec.rules[1].retry.codes[2]")
            && !message.contains("codes[0]"),
        "{message}"
    );
    let message = refused("bad-attempts");
    assert!(
        message.contains("spec.rules[0].retry.attempts"),
        "{message}"
    );
    let message = refused("external-auth");
    assert!(message.contains("ExternalAuth"), "{message}");
    assert!(m.route_reports["in/retry"].parents[0].accepted.is_ok());
}

/// Issue 16: what each route's status says, per parent, with the Gateway
/// API's reasons; a route with a field weft cannot honour is attached
/// nowhere, and the other routes are unaffected.
#[test]
fn route_reports_say_why_with_the_gateway_api_reasons() {
    use weft_cluster::model::route_report::Reason;
    let route = |name: &str, parent: serde_json::Value, rule: serde_json::Value| {
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": "in", "generation": 4},
            "spec": {"parentRefs": [parent], "rules": [rule]}
        })
    };
    let web = json!({"group": "", "kind": "Service", "name": "web"});
    let to = |ns: &str, name: &str| json!({"backendRefs": [{"name": name, "namespace": ns, "port": 80}]});
    let mut objects = vec![
        service("in", "web", "10.96.0.1", json!({})),
        service("other", "granted", "10.96.0.2", json!({})),
        service("other", "private", "10.96.0.3", json!({})),
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "ReferenceGrant",
               "metadata": {"name": "granted-only", "namespace": "other"},
               "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": "in"}],
                        "to": [{"group": "", "kind": "Service", "name": "granted"}]}}),
        route("ok", web.clone(), to("in", "web")),
        route("granted", web.clone(), to("other", "granted")),
        route("not-granted", web.clone(), to("other", "private")),
        route("missing", web.clone(), to("in", "nothing")),
        route(
            "wrong-kind",
            web.clone(),
            json!({"backendRefs": [{"group": "example.com", "kind": "Bucket", "name": "b"}]}),
        ),
        route(
            "bad-regex",
            web.clone(),
            json!({"matches": [{"headers": [{"type": "RegularExpression", "name": "x", "value": "(unclosed"}]}]}),
        ),
        route(
            "cors",
            web.clone(),
            json!({"filters": [{"type": "CORS", "cors": {"allowOrigins": ["https://a.example"]}}]}),
        ),
        route(
            "no-parent",
            json!({"group": "", "kind": "Service", "name": "ghost"}),
            to("in", "web"),
        ),
        route(
            "foreign-gateway",
            json!({"name": "ingress"}),
            to("in", "web"),
        ),
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
               "metadata": {"name": "ingress", "namespace": "in"},
               "spec": {"gatewayClassName": "other", "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}}),
        // A consumer route may send to the Service it is attached to, in
        // the producer's namespace, without a grant; any other Service
        // there still needs one.
        route(
            "consumer",
            json!({"group": "", "kind": "Service", "name": "private", "namespace": "other"}),
            to("other", "private"),
        ),
        route(
            "consumer-elsewhere",
            json!({"group": "", "kind": "Service", "name": "private", "namespace": "other"}),
            to("other", "granted-not"),
        ),
        // Only header changes may sit on a backendRef.
        route(
            "backend-redirect",
            web.clone(),
            json!({"backendRefs": [{"name": "web", "port": 80, "filters": [
                {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x", "value": "1"}]}},
                {"type": "RequestRedirect", "requestRedirect": {"hostname": "elsewhere.example"}}]}]}),
        ),
        // A waypoint in another namespace admits only its own namespace's
        // routes (the listeners' default).
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "across", "namespace": "in"},
            "spec": {"parentRefs": [{"name": "wp", "namespace": "mesh"}], "rules": [to("in", "web")]}
        }),
    ];
    objects.extend(waypoint("mesh", "wp", None));
    let m = build(&objects);
    let verdicts = |name: &str| {
        let report = &m.route_reports[&format!("in/{name}")];
        let p = &report.parents[0];
        (
            p.accepted.as_ref().err().map(|e| e.reason),
            p.resolved_refs.as_ref().err().map(|e| e.reason),
        )
    };
    assert_eq!(verdicts("ok"), (None, None));
    assert_eq!(verdicts("granted"), (None, None));
    assert_eq!(
        verdicts("not-granted"),
        (None, Some(Reason::RefNotPermitted))
    );
    assert_eq!(verdicts("consumer"), (None, None));
    assert_eq!(
        verdicts("consumer-elsewhere"),
        (None, Some(Reason::RefNotPermitted))
    );
    assert_eq!(
        verdicts("backend-redirect"),
        (Some(Reason::UnsupportedValue), None)
    );
    assert_eq!(verdicts("missing"), (None, Some(Reason::BackendNotFound)));
    assert_eq!(verdicts("wrong-kind"), (None, Some(Reason::InvalidKind)));
    assert_eq!(
        verdicts("bad-regex"),
        (Some(Reason::UnsupportedValue), None)
    );
    assert_eq!(verdicts("cors"), (Some(Reason::UnsupportedValue), None));
    assert_eq!(
        verdicts("no-parent"),
        (Some(Reason::NoMatchingParent), None)
    );
    assert_eq!(
        verdicts("across"),
        (Some(Reason::NotAllowedByListeners), None)
    );
    assert!(
        !m.route_reports.contains_key("in/foreign-gateway"),
        "another controller's Gateway: not ours to report"
    );
    let message = |name: &str| {
        m.route_reports[&format!("in/{name}")].parents[0]
            .accepted
            .as_ref()
            .err()
            .map(|e| e.message.clone())
            .unwrap_or_default()
    };
    assert!(
        message("bad-regex").contains("spec.rules[0].matches[0].headers[0].value"),
        "{}",
        message("bad-regex")
    );
    assert!(
        message("cors").contains("spec.rules[0].filters[0]") && message("cors").contains("CORS")
    );
    let why = message("backend-redirect");
    assert!(
        why.contains("spec.rules[0].backendRefs[0].filters[1]") && why.contains("RequestRedirect"),
        "{why}"
    );
    assert_eq!(m.route_reports["in/ok"].generation, Some(4));

    // Refused routes are attached nowhere; the rest are served, and an
    // unresolved backend is kept, marked, to be answered 500.
    let served: Vec<&str> = m.routes.keys().map(String::as_str).collect();
    assert_eq!(
        served,
        [
            "in/consumer",
            "in/consumer-elsewhere",
            "in/granted",
            "in/missing",
            "in/not-granted",
            "in/ok",
            "in/wrong-kind"
        ]
    );
    let unresolved = &m.routes["in/not-granted"].rules[0].backends[0].unresolved;
    assert!(unresolved.contains("ReferenceGrant"), "{unresolved}");
    assert!(m.routes["in/ok"].rules[0].backends[0].unresolved.is_empty());
}

#[test]
fn diff_is_minimal() {
    let base = vec![
        ns("in", json!({"weft.dev/dataplane-mode": "ambient"})),
        pod("in", "a", "10.0.0.1", json!({"app": "web"})),
        pod("in", "b", "10.0.0.2", json!({"app": "web"})),
        service("in", "web", "10.96.0.1", json!({})),
    ];
    let old = build(&base);
    assert!(Model::diff(&old, &old).is_empty());
    let mut changed = base.clone();
    changed[2] = pod("in", "b", "10.0.0.9", json!({"app": "web"}));
    changed.push(pod("in", "c", "10.0.0.3", json!({"app": "other"})));
    changed.remove(1);
    let new = build(&changed);
    let delta = Model::diff(&old, &new);
    let summary: Vec<(ResourceType, &str, bool)> = delta
        .entries
        .iter()
        .map(|e| (e.kind, e.key.as_str(), e.resource.is_some()))
        .collect();
    assert_eq!(
        summary,
        vec![
            (ResourceType::Workload, "uid-b", true),
            (ResourceType::Workload, "uid-c", true),
            (ResourceType::Workload, "uid-a", false),
            (ResourceType::Service, "in/web", true),
        ]
    );
    let (resources, removed) = delta.select(&[ResourceType::Service]);
    assert_eq!((resources.len(), removed.len()), (1, 0));
}

#[test]
fn trust_bundle_is_a_resource() {
    let config = ModelConfig {
        roots_pem: vec!["-----BEGIN CERTIFICATE-----\n...".into()],
        ..ModelConfig::default()
    };
    let m = model::build(&Arc::new(ClusterState::default()), &config);
    assert_eq!(m.trust_bundles["cluster.local"].roots_pem.len(), 1);
}

#[test]
fn l7_rules_enforced_by_ztunnel_are_compiled_to_l4_and_reported() {
    let m = build(&[
        policy(
            "in",
            "allow-get",
            json!({"selector": {"matchLabels": {"app": "db"}},
            "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}, {"to": [{"operation": {"ports": [5432]}}]}]}),
        ),
        policy(
            "in",
            "deny-admin",
            json!({"action": "DENY",
            "rules": [{"to": [{"operation": {"ports": [8080], "paths": ["/admin*"]}}]}]}),
        ),
        policy(
            "in",
            "at-waypoint",
            json!({"targetRefs": [{"kind": "Gateway", "name": "wp"}],
            "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]}),
        ),
    ]);
    let allow = &m.authorizations["in/allow-get"];
    assert_eq!(
        allow.rules.len(),
        2,
        "the full form keeps L7 rules for waypoints"
    );
    assert_eq!(
        allow.l4_rules.len(),
        1,
        "the ALLOW rule with L7 fields matches nothing at L4"
    );
    assert_eq!(allow.l4_rules[0].to[0].ports, vec![5432]);
    assert_eq!(allow.l4_warnings.len(), 1);
    let deny = &m.authorizations["in/deny-admin"];
    assert_eq!(deny.l4_rules.len(), 1, "the DENY rule keeps its L4 part");
    assert_eq!(deny.l4_rules[0].to[0].ports, vec![8080]);
    assert_eq!(deny.l4_warnings.len(), 1);

    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
    );
    let report = &m.policy_reports["in/deny-admin"];
    assert!(report.enforced_by_ztunnel);
    let conditions =
        weft_controller::writers::status::policy_conditions(report, Some(2), now.clone());
    let l4 = conditions
        .iter()
        .find(|c| c.type_ == "L4Enforcement")
        .expect("L4Enforcement condition");
    assert_eq!(
        (l4.status.as_str(), l4.reason.as_str()),
        ("False", "L7RulesWithoutWaypoint")
    );
    assert!(l4.message.contains("whole connection"), "{}", l4.message);

    let report = &m.policy_reports["in/at-waypoint"];
    assert!(!report.enforced_by_ztunnel);
    let conditions = weft_controller::writers::status::policy_conditions(report, Some(1), now);
    assert!(
        conditions.iter().all(|c| c.type_ != "L4Enforcement"),
        "a waypoint enforces it in full"
    );
}
