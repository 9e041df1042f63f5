//! `weftctl explain` on typed objects: a table of cases over one cluster
//! (tests/fixtures/explain-cluster.yaml), built by the controller's model
//! builder and evaluated by `weft_api::authz`. The e2e cluster test runs the
//! same kind of table as real traffic.

use weft_cluster::model::ModelConfig;
use weft_cluster::registry::ClusterState;
use weftctl::args::{AppProtocol, ExplainArgs};
use weftctl::commands::explain::path::{Explanation, Verdict};
use weftctl::commands::explain::{add_objects, explain};

const CLUSTER: &str = include_str!("fixtures/explain-cluster.yaml");

fn state() -> ClusterState {
    let mut state = ClusterState {
        synced: true,
        ..ClusterState::default()
    };
    add_objects(&mut state, "explain-cluster.yaml", CLUSTER).expect("fixture");
    state
}

fn args(from: &str, to: &str) -> ExplainArgs {
    ExplainArgs {
        from: from.into(),
        to: to.into(),
        namespace: "mesh".into(),
        method: None,
        path: None,
        host: None,
        headers: Vec::new(),
        protocol: None,
        with_files: Vec::new(),
    }
}

struct Case {
    name: &'static str,
    from: &'static str,
    to: &'static str,
    method: Option<&'static str>,
    path: Option<&'static str>,
    headers: &'static [&'static str],
    protocol: Option<AppProtocol>,
    verdict: Verdict,
    /// The enforcers of the first path, in order.
    enforcers: &'static [&'static str],
    /// The rule that decided, as `POLICY rule N`: the stopping hop's, else
    /// the first allowing one.
    decided_by: Option<&'static str>,
    /// A warning that must be present.
    warning: Option<&'static str>,
}

const fn case(
    name: &'static str,
    from: &'static str,
    to: &'static str,
    verdict: Verdict,
    enforcers: &'static [&'static str],
    decided_by: Option<&'static str>,
) -> Case {
    Case {
        name,
        from,
        to,
        method: None,
        path: None,
        headers: &[],
        protocol: None,
        verdict,
        enforcers,
        decided_by,
        warning: None,
    }
}

impl Case {
    const fn request(mut self, method: &'static str, path: &'static str) -> Case {
        self.method = Some(method);
        self.path = Some(path);
        self
    }
    const fn headers(mut self, headers: &'static [&'static str]) -> Case {
        self.headers = headers;
        self
    }
    const fn protocol(mut self, protocol: AppProtocol) -> Case {
        self.protocol = Some(protocol);
        self
    }
    const fn warns(mut self, warning: &'static str) -> Case {
        self.warning = Some(warning);
        self
    }
}

use Verdict::{Allowed, Denied, Unreachable};

const Z2: &str = "ztunnel on node-2";
const WP: &str = "waypoint wp/waypoint";

fn cases() -> Vec<Case> {
    vec![
        case(
            "allowed principal via service",
            "client",
            "server:80",
            Allowed,
            &[Z2],
            Some("mesh/allow-client rule 0"),
        ),
        case(
            "other principal denied",
            "other",
            "server:80",
            Denied,
            &[Z2],
            None,
        ),
        case(
            "service account as the client",
            "mesh/client",
            "server:80",
            Allowed,
            &[Z2],
            Some("mesh/allow-client rule 0"),
        ),
        case(
            "SPIFFE ID as the client",
            "spiffe://cluster.local/ns/mesh/sa/client",
            "server:80",
            Allowed,
            &[Z2],
            Some("mesh/allow-client rule 0"),
        ),
        case(
            "pod addressed on the allowed port",
            "client",
            "pod/mesh/server:8080",
            Allowed,
            &[Z2],
            Some("mesh/allow-client rule 0"),
        ),
        case(
            "pod addressed on another port",
            "client",
            "pod/mesh/server:9090",
            Denied,
            &[Z2],
            None,
        ),
        case(
            "plaintext client has no identity",
            "plain/outsider",
            "mesh/server:80",
            Denied,
            &[Z2],
            None,
        ),
        case(
            "STRICT refuses plaintext",
            "plain/outsider",
            "pod/mesh/strict:8080",
            Denied,
            &[Z2],
            None,
        ),
        case(
            "STRICT accepts mTLS",
            "client",
            "pod/mesh/strict:8080",
            Allowed,
            &[Z2],
            None,
        ),
        case(
            "DENY with L7 fields denies the whole connection at L4",
            "client",
            "pod/mesh/l7deny:8080",
            Denied,
            &[Z2],
            Some("mesh/deny-delete rule 0"),
        )
        .request("GET", "/")
        .warns("applies to the whole connection"),
        case(
            "ALLOW with L7 fields matches nothing at L4",
            "client",
            "pod/mesh/l7allow:8080",
            Denied,
            &[Z2],
            None,
        )
        .request("GET", "/")
        .warns("matches nothing there"),
        case(
            "AUDIT only records",
            "client",
            "pod/mesh/audited:8080",
            Allowed,
            &[Z2],
            None,
        ),
        case(
            "mesh-wide DENY by source address",
            "far",
            "pod/mesh/audited:8080",
            Denied,
            &[Z2],
            Some("weft-system/deny-far rule 0"),
        ),
        case(
            "destination outside the mesh",
            "client",
            "plain/web:80",
            Allowed,
            &["none"],
            None,
        )
        .warns("not in the mesh"),
        case(
            "neither end in the mesh",
            "plain/outsider",
            "plain/web:80",
            Allowed,
            &["none"],
            None,
        ),
        case(
            "waypoint allows GET on /api/",
            "client",
            "wp/api:80",
            Allowed,
            &[WP, WP, Z2],
            Some("wp/get-only rule 0"),
        )
        .request("GET", "/api/items"),
        case(
            "waypoint refuses POST",
            "client",
            "wp/api:80",
            Denied,
            &[WP],
            None,
        )
        .request("POST", "/api/items"),
        case(
            "waypoint refuses another path",
            "client",
            "wp/api:80",
            Denied,
            &[WP],
            None,
        )
        .request("GET", "/admin"),
        case(
            "waypoint admits any principal of the allowed namespace",
            "mesh/other",
            "wp/api:80",
            Allowed,
            &[WP, WP, Z2],
            Some("wp/get-only rule 0"),
        )
        .request("GET", "/api/items"),
        case(
            "waypoint refuses a service account of another namespace",
            "sa/wl/backend",
            "wp/api:80",
            Denied,
            &[WP],
            None,
        )
        .request("GET", "/api/items"),
        case(
            "a client outside the mesh never reaches the waypoint",
            "plain/outsider",
            "wp/api:80",
            Allowed,
            &[Z2],
            None,
        )
        .request("GET", "/api/items")
        .warns("cannot be sent to the waypoint"),
        case(
            "waypoint DENY by header, Service-targeted",
            "client",
            "wp/api:80",
            Denied,
            &[WP],
            Some("wp/deny-admin-header rule 0"),
        )
        .request("GET", "/api/items")
        .headers(&["X-Admin=1"]),
        case(
            "ztunnel behind the waypoint sees the waypoint's identity",
            "client",
            "wp/api2:80",
            Denied,
            &[WP, WP, Z2],
            None,
        )
        .request("GET", "/api/x")
        .warns("sees the waypoint's identity"),
        case(
            "the waypoint applies the destination's own policies to the client",
            "mesh/other",
            "wp/api2:80",
            Denied,
            &[WP, WP],
            None,
        )
        .request("GET", "/api/x"),
        case(
            "TCP through the waypoint: a DENY rule with L7 fields refuses the connection",
            "client",
            "wp/api:80",
            Denied,
            &[WP],
            Some("wp/deny-admin-header rule 0"),
        )
        .protocol(AppProtocol::Tcp)
        .warns("(enforced by waypoint wp/waypoint)"),
        case(
            "pod addressed bypasses a Service waypoint",
            "client",
            "pod/wp/api:8080",
            Allowed,
            &[Z2],
            None,
        )
        .warns("serves service traffic"),
        case(
            "waypoint not ready",
            "client",
            "wp/lonely:80",
            Denied,
            &["waypoint wp/broken"],
            None,
        )
        .warns("has no address yet"),
        case(
            "workload waypoint for Service traffic",
            "client",
            "wl/backend:80",
            Allowed,
            &["waypoint wl/wl-waypoint", "waypoint wl/wl-waypoint", Z2],
            None,
        ),
        // Fails closed: refused, never sent around the missing waypoint.
        case(
            "label names a missing waypoint",
            "client",
            "server2:80",
            Denied,
            &["waypoint mesh/nope"],
            None,
        )
        .warns("Gateway mesh/nope of class weft-waypoint does not exist"),
        case(
            "Service policy without a waypoint is not enforced",
            "client",
            "server:80",
            Allowed,
            &[Z2],
            Some("mesh/allow-client rule 0"),
        )
        .warns("nothing enforces it"),
        case(
            "L7 attributes without a waypoint",
            "client",
            "server:80",
            Allowed,
            &[Z2],
            Some("mesh/allow-client rule 0"),
        )
        .request("DELETE", "/")
        .warns("not seen by any enforcer"),
        case(
            "service without endpoints",
            "client",
            "empty:80",
            Unreachable,
            &[],
            None,
        )
        .warns("has no endpoint"),
        case(
            "service account without an address and IP rules",
            "sa/mesh/far",
            "pod/mesh/audited:8080",
            Allowed,
            &[Z2],
            None,
        )
        .warns("matches on source addresses"),
    ]
}

fn run(c: &Case, state: &ClusterState) -> Explanation {
    let mut a = args(c.from, c.to);
    a.method = c.method.map(str::to_owned);
    a.path = c.path.map(str::to_owned);
    a.headers = c.headers.iter().map(|h| h.to_string()).collect();
    a.protocol = c.protocol;
    explain(state, &ModelConfig::default(), &a)
        .unwrap_or_else(|e| panic!("{}: explain failed: {e}", c.name))
}

#[test]
fn the_table() {
    let state = state();
    let cases = cases();
    assert!(cases.len() >= 20);
    for c in &cases {
        let e = run(c, &state);
        let text = weftctl::commands::explain::render::text(&e, true);
        assert_eq!(e.verdict, c.verdict, "{}:\n{text}", c.name);
        let enforcers: Vec<&str> = e
            .paths
            .first()
            .map(|p| p.hops.iter().map(|h| h.enforcer.as_str()).collect())
            .unwrap_or_default();
        assert_eq!(enforcers, c.enforcers, "{}:\n{text}", c.name);
        // The hop that stopped it, else the first rule that let it through.
        let hops = e.paths.first().map(|p| p.hops.as_slice()).unwrap_or(&[]);
        let deciding = hops
            .iter()
            .find(|h| !h.allowed)
            .or_else(|| hops.iter().find(|h| h.decided_by.is_some()));
        let decided = deciding
            .and_then(|h| h.decided_by.as_ref())
            .map(|r| format!("{} rule {}", r.policy, r.rule));
        assert_eq!(decided.as_deref(), c.decided_by, "{}:\n{text}", c.name);
        if let Some(w) = c.warning {
            assert!(
                e.warnings.iter().any(|x| x.contains(w)),
                "{}: no warning containing {w:?}:\n{text}",
                c.name
            );
        }
    }
}

#[test]
fn audit_is_recorded() {
    let state = state();
    let e = run(
        &case("", "client", "pod/mesh/audited:8080", Allowed, &[], None),
        &state,
    );
    let hop = &e.paths[0].hops[0];
    assert_eq!(hop.audited.len(), 1);
    assert_eq!(hop.audited[0].policy, "mesh/audit-all");
}

#[test]
fn with_file_adds_an_uncommitted_policy() {
    let mut state = state();
    let before = run(&case("", "other", "server:80", Denied, &[], None), &state);
    assert_eq!(before.verdict, Denied);
    add_objects(
        &mut state,
        "extra.yaml",
        "apiVersion: security.weft.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: allow-other, namespace: mesh}\nspec:\n  selector: {matchLabels: {app: server}}\n  rules:\n  - from: [{source: {principals: [cluster.local/ns/mesh/sa/other]}}]\n",
    )
    .expect("extra");
    let after = run(&case("", "other", "server:80", Allowed, &[], None), &state);
    assert_eq!(after.verdict, Allowed);
    let hop = &after.paths[0].hops[0];
    assert_eq!(
        hop.decided_by.as_ref().map(|r| r.policy.as_str()),
        Some("mesh/allow-other")
    );
}

#[test]
fn unknown_names_and_bad_input() {
    let state = state();
    let err = |from: &str, to: &str| {
        explain(&state, &ModelConfig::default(), &args(from, to))
            .err()
            .map(|e| (e.code(), e.to_string()))
    };
    assert_eq!(err("client", "nosuch:80").map(|e| e.0), Some(4));
    assert_eq!(err("nosuch", "server:80").map(|e| e.0), Some(4));
    let (code, msg) = err("client", "server:81").expect("port");
    assert_eq!(code, 4);
    assert!(msg.contains("ports: 80"), "{msg}");
    assert_eq!(err("client", "server").map(|e| e.0), Some(2));
    let mut bad = ClusterState::default();
    assert!(
        add_objects(
            &mut bad,
            "x",
            "apiVersion: v1\nkind: Frobnicator\nmetadata: {name: a}\n"
        )
        .is_err()
    );
    assert!(add_objects(&mut bad, "x", "kind: [").is_err());
}

#[test]
fn json_is_a_stable_document() {
    let state = state();
    let e = run(
        &case("", "client", "wp/api:80", Allowed, &[], None).request("GET", "/api/a"),
        &state,
    );
    let v = serde_json::to_value(&e).expect("json");
    assert_eq!(v["verdict"], "allowed");
    assert_eq!(v["paths"][0]["hops"][0]["enforcer"], "waypoint wp/waypoint");
    assert_eq!(v["paths"][0]["hops"][0]["layer"], "L7");
    // The waypoint again (the destination's own policies, to the client),
    // then the destination's ztunnel, which sees the waypoint.
    assert_eq!(
        v["paths"][0]["hops"][1]["sees"],
        "spiffe://cluster.local/ns/mesh/sa/client"
    );
    assert_eq!(
        v["paths"][0]["hops"][2]["sees"],
        "spiffe://cluster.local/ns/wp/sa/waypoint-weft-waypoint"
    );
    assert_eq!(v["request"]["protocol"], "http");
    assert_eq!(v["request"]["method"], "GET");
    assert_eq!(
        v["from"]["identity"],
        "spiffe://cluster.local/ns/mesh/sa/client"
    );
}

/// Issue 16: a route on the destination Service that weft cannot honour
/// as written is named by `explain`, with its status reason and field.
#[test]
fn routes_with_a_problem_are_named_with_their_reason() {
    let mut state = state();
    add_objects(
        &mut state,
        "routes.yaml",
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bad-regex, namespace: wp}
spec:
  parentRefs: [{group: "", kind: Service, name: api}]
  rules: [{matches: [{path: {type: RegularExpression, value: "/(a"}}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: elsewhere, namespace: wp}
spec:
  parentRefs: [{group: "", kind: Service, name: api}]
  rules: [{backendRefs: [{name: backend, namespace: wl, port: 80}]}]
"#,
    )
    .expect("routes");
    let c = case("", "client", "wp/api:80", Allowed, &[], None).request("GET", "/api/items");
    let e = run(&c, &state);
    let said = |needle: &str| e.warnings.iter().any(|w| w.contains(needle));
    assert!(
        said("route wp/bad-regex is not in effect here (UnsupportedValue)")
            && said("spec.rules[0].matches[0].path.value"),
        "{:?}",
        e.warnings
    );
    assert!(
        said("route wp/elsewhere has a backend it cannot use (RefNotPermitted)"),
        "{:?}",
        e.warnings
    );
}
