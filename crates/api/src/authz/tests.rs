use super::*;
use crate::config::Workload;

fn conn(principal: Option<&str>, ns: Option<&str>, ip: &str, port: u16) -> ConnectionAttrs {
    ConnectionAttrs {
        source_principal: principal.map(str::to_owned),
        source_namespace: ns.map(str::to_owned),
        source_ip: ip.parse().unwrap(),
        destination_ip: "10.244.1.10".parse().unwrap(),
        destination_port: port,
    }
}

fn sm(p: &str) -> StringMatch {
    parse_string_match(p)
}

fn policy(name: &str, action: Action, rules: Vec<Rule>) -> Authorization {
    let (l4_rules, l4_warnings) = compile_l4(action, &rules);
    Authorization {
        name: name.into(),
        namespace: "prod".into(),
        scope: PolicyScope::Namespace as i32,
        action: action as i32,
        rules,
        l4_rules,
        l4_warnings,
        target: None,
    }
}

fn from_principal(p: &str) -> Rule {
    Rule {
        from: vec![Source {
            principals: vec![sm(p)],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn to_port(port: u32) -> Rule {
    Rule {
        to: vec![Operation {
            ports: vec![port],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn get_only() -> Rule {
    Rule {
        to: vec![Operation {
            methods: vec!["GET".into()],
            ..Default::default()
        }],
        ..Default::default()
    }
}

const WEB: &str = "spiffe://cluster.local/ns/prod/sa/web";
const EVIL: &str = "spiffe://cluster.local/ns/other/sa/evil";

#[test]
fn no_policy_allows() {
    let d = evaluate_l4([], &conn(Some(WEB), Some("prod"), "10.0.0.1", 80));
    assert!(d.allowed);
    assert_eq!(d.reason, Reason::NoPolicy);
}

#[test]
fn allow_by_principal_in_both_spellings() {
    for pattern in [
        "cluster.local/ns/prod/sa/web",
        WEB,
        "cluster.local/ns/prod/*",
    ] {
        let p = policy("allow-web", Action::Allow, vec![from_principal(pattern)]);
        let ok = evaluate_l4([&p], &conn(Some(WEB), Some("prod"), "10.0.0.1", 80));
        assert!(ok.allowed, "{pattern}");
        assert!(
            matches!(ok.reason, Reason::Allowed(ref r) if r.name == "allow-web" && r.rule == 0)
        );
        let no = evaluate_l4([&p], &conn(Some(EVIL), Some("other"), "10.0.0.1", 80));
        assert!(!no.allowed, "{pattern}");
        assert!(matches!(no.reason, Reason::NoAllowMatched { .. }));
    }
}

#[test]
fn deny_wins_over_allow() {
    let allow_all = policy("allow-all", Action::Allow, vec![Rule::default()]);
    let deny_8080 = policy("deny-8080", Action::Deny, vec![to_port(8080)]);
    let c = conn(Some(WEB), Some("prod"), "10.0.0.1", 8080);
    let d = evaluate_l4([&allow_all, &deny_8080], &c);
    assert!(!d.allowed);
    assert!(matches!(d.reason, Reason::Denied(ref r) if r.name == "deny-8080"));
    let d = evaluate_l4(
        [&allow_all, &deny_8080],
        &conn(Some(WEB), Some("prod"), "10.0.0.1", 80),
    );
    assert!(d.allowed);
}

#[test]
fn allow_nothing_policy_denies_everything() {
    let p = policy("allow-nothing", Action::Allow, vec![]);
    assert!(!evaluate_l4([&p], &conn(Some(WEB), Some("prod"), "10.0.0.1", 80)).allowed);
}

#[test]
fn audit_records_without_deciding() {
    let audit = policy("audit-all", Action::Audit, vec![Rule::default()]);
    let d = evaluate_l4([&audit], &conn(None, None, "10.0.0.1", 80));
    assert!(d.allowed);
    assert_eq!(d.audited.len(), 1);
    assert_eq!(d.audited[0].name, "audit-all");
}

#[test]
fn namespaces_ip_blocks_and_negations() {
    let rule = Rule {
        from: vec![Source {
            namespaces: vec![sm("prod")],
            not_ip_blocks: vec!["10.0.0.0/24".into()],
            ..Default::default()
        }],
        ..Default::default()
    };
    let p = policy("p", Action::Allow, vec![rule]);
    assert!(evaluate_l4([&p], &conn(Some(WEB), Some("prod"), "10.1.0.1", 80)).allowed);
    assert!(!evaluate_l4([&p], &conn(Some(WEB), Some("prod"), "10.0.0.9", 80)).allowed);
    assert!(!evaluate_l4([&p], &conn(Some(EVIL), Some("other"), "10.1.0.1", 80)).allowed);
    // A plaintext peer has no identity: a principal rule cannot match it.
    let by_principal = policy("q", Action::Allow, vec![from_principal("*")]);
    assert!(!evaluate_l4([&by_principal], &conn(None, Some("prod"), "10.1.0.1", 80)).allowed);
}

#[test]
fn when_conditions_at_l4() {
    let rule = Rule {
        when: vec![Condition {
            key: "source.ip".into(),
            values: vec![sm("192.168.0.0/16")],
            not_values: vec![],
        }],
        ..Default::default()
    };
    let p = policy("p", Action::Allow, vec![rule]);
    assert!(evaluate_l4([&p], &conn(None, None, "192.168.3.4", 80)).allowed);
    assert!(!evaluate_l4([&p], &conn(None, None, "10.0.0.1", 80)).allowed);
}

#[test]
fn allow_with_l7_fields_matches_nothing_at_l4() {
    let p = policy("get-only", Action::Allow, vec![get_only()]);
    assert!(p.l4_rules.is_empty());
    assert_eq!(p.l4_warnings.len(), 1);
    assert!(p.l4_warnings[0].contains("matches nothing"));
    let d = evaluate_l4([&p], &conn(Some(WEB), Some("prod"), "10.0.0.1", 80));
    assert!(
        !d.allowed,
        "an L7-only ALLOW must not let everything through at L4"
    );
    // The waypoint, seeing the request, allows GET and not POST.
    let c = conn(Some(WEB), Some("prod"), "10.0.0.1", 80);
    let get = RequestAttrs {
        method: "GET".into(),
        path: "/".into(),
        ..Default::default()
    };
    let post = RequestAttrs {
        method: "POST".into(),
        ..get.clone()
    };
    assert!(evaluate_l7([&p], &c, &get).allowed);
    assert!(!evaluate_l7([&p], &c, &post).allowed);
}

#[test]
fn deny_with_l7_fields_denies_the_whole_connection_at_l4() {
    let rule = Rule {
        from: vec![Source {
            namespaces: vec![sm("other")],
            ..Default::default()
        }],
        to: vec![Operation {
            ports: vec![80],
            methods: vec!["POST".into()],
            ..Default::default()
        }],
        when: vec![Condition {
            key: "request.headers[x-debug]".into(),
            values: vec![sm("*")],
            not_values: vec![],
        }],
    };
    let p = policy("deny-post", Action::Deny, vec![rule]);
    assert_eq!(p.l4_rules.len(), 1);
    assert!(p.l4_rules[0].when.is_empty(), "L7 condition dropped");
    assert_eq!(p.l4_rules[0].to[0].ports, vec![80]);
    assert!(p.l4_warnings[0].contains("whole connection"));
    // At L4: every connection from `other` to port 80 is denied...
    assert!(!evaluate_l4([&p], &conn(Some(EVIL), Some("other"), "10.0.0.1", 80)).allowed);
    // ...but not other ports or namespaces.
    assert!(evaluate_l4([&p], &conn(Some(EVIL), Some("other"), "10.0.0.1", 81)).allowed);
    assert!(evaluate_l4([&p], &conn(Some(WEB), Some("prod"), "10.0.0.1", 80)).allowed);
}

#[test]
fn l7_paths_hosts_and_headers() {
    let rule = Rule {
        to: vec![Operation {
            paths: vec![sm("/api/*")],
            hosts: vec![sm("Shop.Example")],
            ..Default::default()
        }],
        when: vec![Condition {
            key: "request.headers[X-User]".into(),
            values: vec![sm("alice")],
            not_values: vec![],
        }],
        ..Default::default()
    };
    let p = policy("p", Action::Allow, vec![rule]);
    let c = conn(Some(WEB), Some("prod"), "10.0.0.1", 80);
    let req = RequestAttrs {
        method: "GET".into(),
        path: "/api/items".into(),
        host: "shop.example:8080".into(),
        headers: vec![("x-user".into(), "alice".into())],
    };
    assert!(evaluate_l7([&p], &c, &req).allowed);
    let wrong_path = RequestAttrs {
        path: "/admin".into(),
        ..req.clone()
    };
    assert!(!evaluate_l7([&p], &c, &wrong_path).allowed);
    let no_header = RequestAttrs {
        headers: vec![],
        ..req
    };
    assert!(!evaluate_l7([&p], &c, &no_header).allowed);
}

#[test]
fn scope_decides_which_policies_apply() {
    let wl = Workload {
        namespace: "prod".into(),
        authorization_policies: vec!["prod/selected".into()],
        ..Default::default()
    };
    let mut p = policy("selected", Action::Allow, vec![]);
    p.scope = PolicyScope::WorkloadSelector as i32;
    assert!(applies_to(&p, &wl));
    p.name = "other".into();
    assert!(!applies_to(&p, &wl));
    p.scope = PolicyScope::Namespace as i32;
    assert!(applies_to(&p, &wl));
    p.namespace = "dev".into();
    assert!(!applies_to(&p, &wl));
    p.scope = PolicyScope::Mesh as i32;
    assert!(applies_to(&p, &wl));
    p.scope = PolicyScope::Waypoint as i32;
    assert!(
        !applies_to(&p, &wl),
        "waypoint policies are enforced at the waypoint"
    );
}

#[test]
fn string_match_forms_round_trip() {
    for p in ["*", "prefix*", "*suffix", "exact"] {
        assert_eq!(format_string_match(&parse_string_match(p)), p);
    }
    assert!(parse_ip_block("10.0.0.0/8").is_ok());
    assert!(parse_ip_block("10.0.0.1").is_ok());
    assert!(parse_ip_block("nonsense").is_err());
}
