//! Authorization semantics, shared by every enforcer (ztunnel at L4, the
//! waypoint at L7) and by `weftctl explain`, so they cannot disagree.
//!
//! The model (docs/design.md §2): DENY policies first; then, if any ALLOW policy
//! applies to the workload, at least one ALLOW rule must match; AUDIT rules
//! only record. A rule matches when one of its `from` matches (or it has
//! none), one of its `to` matches (or it has none), and all its `when` hold.
//!
//! An L4 enforcer must not silently ignore L7 fields: [`compile_l4`] turns an
//! ALLOW rule with L7 fields into nothing (it can never match at L4) and a
//! DENY or AUDIT rule with L7 fields into its L4 part alone (so it applies to
//! the whole connection), and says so in warnings.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::config::{
    Action, Authorization, Condition, L4Operation, L4Rule, Operation, PolicyScope, Rule, Source,
    StringMatch, Workload, string_match,
};

/// What an L4 enforcer knows about a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionAttrs {
    /// The peer's SPIFFE ID (`spiffe://td/ns/x/sa/y`), when it proved one.
    pub source_principal: Option<String>,
    /// The source namespace: from the identity for mTLS; for plaintext, from
    /// the workload that owns the source IP (if any).
    pub source_namespace: Option<String>,
    pub source_ip: IpAddr,
    pub destination_ip: IpAddr,
    pub destination_port: u16,
}

/// What an L7 enforcer knows about one request, on top of its connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestAttrs {
    pub method: String,
    pub path: String,
    pub host: String,
    /// Header names lower-case.
    pub headers: Vec<(String, String)>,
}

/// Which policy and rule decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRef {
    pub namespace: String,
    pub name: String,
    pub action: Action,
    /// Index into the policy's rules (the L4 rules for an L4 decision).
    pub rule: usize,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}/{} rule {}",
            self.action.as_str_name().trim_start_matches("ACTION_"),
            self.namespace,
            self.name,
            self.rule
        )
    }
}

/// The outcome of evaluating the policies that apply to a workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: Reason,
    /// AUDIT rules that matched (recorded, not enforced).
    pub audited: Vec<RuleRef>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// No policy said anything: allowed by default.
    NoPolicy,
    /// A DENY rule matched.
    Denied(RuleRef),
    /// An ALLOW rule matched.
    Allowed(RuleRef),
    /// ALLOW policies apply and none of their rules matched.
    NoAllowMatched { allow_policies: Vec<String> },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NoPolicy => f.write_str("no ALLOW or DENY policy applies"),
            Reason::Denied(r) => write!(f, "denied by {r}"),
            Reason::Allowed(r) => write!(f, "allowed by {r}"),
            Reason::NoAllowMatched { allow_policies } => write!(
                f,
                "no rule of the ALLOW policies ({}) matched",
                allow_policies.join(", ")
            ),
        }
    }
}

/// Whether a policy applies to a workload at L4 (ztunnel). Waypoint-scoped
/// policies are enforced at the waypoint, not here.
pub fn applies_to(policy: &Authorization, workload: &Workload) -> bool {
    match PolicyScope::try_from(policy.scope) {
        Ok(PolicyScope::Mesh) => true,
        Ok(PolicyScope::Namespace) => policy.namespace == workload.namespace,
        Ok(PolicyScope::WorkloadSelector) => {
            let key = policy_key(policy);
            workload.authorization_policies.contains(&key)
        }
        Ok(PolicyScope::Waypoint) | Err(_) => false,
    }
}

/// Whether a waypoint-scoped policy applies at the waypoint
/// `waypoint_namespace/waypoint_name` to traffic for `service` (namespace,
/// name), when the traffic is addressed to a Service. A policy targeting the
/// Gateway applies to everything the waypoint carries; one targeting a
/// Service applies to that Service's traffic only.
pub fn applies_at_waypoint(
    policy: &Authorization,
    waypoint_namespace: &str,
    waypoint_name: &str,
    service: Option<(&str, &str)>,
) -> bool {
    if policy.scope != PolicyScope::Waypoint as i32 {
        return false;
    }
    let Some(target) = &policy.target else {
        return false;
    };
    match target.kind.as_str() {
        "Gateway" => target.namespace == waypoint_namespace && target.name == waypoint_name,
        "Service" => {
            service.is_some_and(|(ns, name)| target.namespace == ns && target.name == name)
        }
        _ => false,
    }
}

/// `namespace/name`, the key policies go by in the config stream.
pub fn policy_key(policy: &Authorization) -> String {
    format!("{}/{}", policy.namespace, policy.name)
}

/// Evaluates a connection against the L4 form of the policies that apply.
pub fn evaluate_l4<'a>(
    policies: impl IntoIterator<Item = &'a Authorization>,
    conn: &ConnectionAttrs,
) -> Decision {
    evaluate(policies, |policy| {
        first_match(&policy.l4_rules, |rule| l4_rule_matches(rule, conn))
    })
}

/// Evaluates a request against the full form of the policies that apply.
pub fn evaluate_l7<'a>(
    policies: impl IntoIterator<Item = &'a Authorization>,
    conn: &ConnectionAttrs,
    request: &RequestAttrs,
) -> Decision {
    evaluate(policies, |policy| {
        first_match(&policy.rules, |rule| rule_matches(rule, conn, request))
    })
}

fn first_match<R>(rules: &[R], matches: impl Fn(&R) -> bool) -> Option<usize> {
    rules.iter().position(matches)
}

fn evaluate<'a>(
    policies: impl IntoIterator<Item = &'a Authorization>,
    matching_rule: impl Fn(&Authorization) -> Option<usize>,
) -> Decision {
    let mut audited = Vec::new();
    let mut allow_policies = Vec::new();
    let mut allowed_by = None;
    let mut denied_by = None;
    for policy in policies {
        let action = Action::try_from(policy.action).unwrap_or(Action::Deny);
        let matched = matching_rule(policy).map(|rule| RuleRef {
            namespace: policy.namespace.clone(),
            name: policy.name.clone(),
            action,
            rule,
        });
        match action {
            Action::Deny => {
                if denied_by.is_none() {
                    denied_by = matched;
                }
            }
            Action::Audit => audited.extend(matched),
            Action::Allow => {
                allow_policies.push(policy_key(policy));
                if allowed_by.is_none() {
                    allowed_by = matched;
                }
            }
        }
    }
    let (allowed, reason) = match (denied_by, allowed_by) {
        (Some(deny), _) => (false, Reason::Denied(deny)),
        (None, Some(allow)) => (true, Reason::Allowed(allow)),
        (None, None) if allow_policies.is_empty() => (true, Reason::NoPolicy),
        (None, None) => (false, Reason::NoAllowMatched { allow_policies }),
    };
    Decision {
        allowed,
        reason,
        audited,
    }
}

fn l4_rule_matches(rule: &L4Rule, conn: &ConnectionAttrs) -> bool {
    any_or_empty(&rule.from, |s| source_matches(s, conn))
        && any_or_empty(&rule.to, |op| ports_match(&op.ports, &op.not_ports, conn))
        && rule.when.iter().all(|c| condition_holds(c, conn, None))
}

fn rule_matches(rule: &Rule, conn: &ConnectionAttrs, request: &RequestAttrs) -> bool {
    any_or_empty(&rule.from, |s| source_matches(s, conn))
        && any_or_empty(&rule.to, |op| operation_matches(op, conn, request))
        && rule
            .when
            .iter()
            .all(|c| condition_holds(c, conn, Some(request)))
}

fn any_or_empty<T>(items: &[T], f: impl Fn(&T) -> bool) -> bool {
    items.is_empty() || items.iter().any(f)
}

/// A field constraint: if `positive` is non-empty, one must match; no
/// `negative` may match.
fn field<T>(positive: &[T], negative: &[T], matches: impl Fn(&T) -> bool) -> bool {
    (positive.is_empty() || positive.iter().any(&matches)) && !negative.iter().any(matches)
}

fn source_matches(source: &Source, conn: &ConnectionAttrs) -> bool {
    let principal = conn
        .source_principal
        .as_deref()
        .map(principal_without_scheme)
        .unwrap_or("");
    let namespace = conn.source_namespace.as_deref().unwrap_or("");
    field(&source.principals, &source.not_principals, |m| {
        principal_matches(m, principal)
    }) && field(&source.namespaces, &source.not_namespaces, |m| {
        string_matches(m, namespace)
    }) && field(&source.ip_blocks, &source.not_ip_blocks, |block| {
        ip_in_block(conn.source_ip, block)
    })
}

fn ports_match(ports: &[u32], not_ports: &[u32], conn: &ConnectionAttrs) -> bool {
    let port = u32::from(conn.destination_port);
    field(ports, not_ports, |p| *p == port)
}

fn operation_matches(op: &Operation, conn: &ConnectionAttrs, request: &RequestAttrs) -> bool {
    ports_match(&op.ports, &op.not_ports, conn)
        && field(&op.methods, &op.not_methods, |m| {
            m == "*" || m.eq_ignore_ascii_case(&request.method)
        })
        && field(&op.paths, &op.not_paths, |m| {
            string_matches(m, &request.path)
        })
        && field(&op.hosts, &op.not_hosts, |m| host_matches(m, &request.host))
}

/// Principals are written `td/ns/x/sa/y` (Istio style) or as full SPIFFE IDs;
/// both match the peer's identity.
fn principal_without_scheme(principal: &str) -> &str {
    principal.strip_prefix("spiffe://").unwrap_or(principal)
}

fn principal_matches(m: &StringMatch, principal: &str) -> bool {
    match &m.kind {
        Some(string_match::Kind::Exact(e)) => principal_without_scheme(e) == principal,
        Some(string_match::Kind::Prefix(p)) => principal.starts_with(principal_without_scheme(p)),
        _ => string_matches(m, principal),
    }
}

/// Hosts compare case-insensitively, and a request's `host:port` also
/// matches a bare `host` pattern.
fn host_matches(m: &StringMatch, host: &str) -> bool {
    let bare = host.rsplit_once(':').map(|(h, _)| h);
    std::iter::once(host)
        .chain(bare)
        .any(|h| string_matches_ignore_case(m, h))
}

fn string_matches_ignore_case(m: &StringMatch, value: &str) -> bool {
    let starts = |p: &str| value.len() >= p.len() && value[..p.len()].eq_ignore_ascii_case(p);
    let ends =
        |s: &str| value.len() >= s.len() && value[value.len() - s.len()..].eq_ignore_ascii_case(s);
    match &m.kind {
        Some(string_match::Kind::Exact(e)) => value.eq_ignore_ascii_case(e),
        Some(string_match::Kind::Prefix(p)) => {
            value.is_char_boundary(p.len().min(value.len())) && starts(p)
        }
        Some(string_match::Kind::Suffix(s)) => {
            value.is_char_boundary(value.len().saturating_sub(s.len())) && ends(s)
        }
        _ => string_matches(m, value),
    }
}

/// Matches a value against an Istio-style string match.
pub fn string_matches(m: &StringMatch, value: &str) -> bool {
    match &m.kind {
        Some(string_match::Kind::Exact(e)) => value == e,
        Some(string_match::Kind::Prefix(p)) => value.starts_with(p.as_str()),
        Some(string_match::Kind::Suffix(s)) => value.ends_with(s.as_str()),
        Some(string_match::Kind::Presence(_)) => !value.is_empty(),
        None => false,
    }
}

/// Parses the user-facing form: `*` (present), `prefix*`, `*suffix`, exact.
pub fn parse_string_match(pattern: &str) -> StringMatch {
    let kind = if pattern == "*" {
        string_match::Kind::Presence(true)
    } else if let Some(prefix) = pattern.strip_suffix('*') {
        string_match::Kind::Prefix(prefix.to_owned())
    } else if let Some(suffix) = pattern.strip_prefix('*') {
        string_match::Kind::Suffix(suffix.to_owned())
    } else {
        string_match::Kind::Exact(pattern.to_owned())
    };
    StringMatch { kind: Some(kind) }
}

/// The user-facing form of a match (inverse of [`parse_string_match`]).
pub fn format_string_match(m: &StringMatch) -> String {
    match &m.kind {
        Some(string_match::Kind::Exact(e)) => e.clone(),
        Some(string_match::Kind::Prefix(p)) => format!("{p}*"),
        Some(string_match::Kind::Suffix(s)) => format!("*{s}"),
        Some(string_match::Kind::Presence(_)) => "*".into(),
        None => String::new(),
    }
}

/// Parses an IP block: a CIDR or a single address.
pub fn parse_ip_block(block: &str) -> Result<IpNet, String> {
    block
        .parse::<IpNet>()
        .or_else(|_| block.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{block:?} is not a CIDR or IP address"))
}

fn ip_in_block(ip: IpAddr, block: &str) -> bool {
    // Blocks are validated by the controller; one that still fails to parse
    // matches nothing (positive) and excludes nothing (negative) — the
    // controller reports it on the policy's status.
    parse_ip_block(block).is_ok_and(|net| net.contains(&ip))
}

/// Keys a `when` condition may use, and whether an L4 enforcer knows them.
fn condition_is_l4(key: &str) -> bool {
    matches!(
        key,
        "source.ip"
            | "source.namespace"
            | "source.principal"
            | "destination.ip"
            | "destination.port"
    )
}

fn condition_holds(c: &Condition, conn: &ConnectionAttrs, request: Option<&RequestAttrs>) -> bool {
    let value_matches = |m: &StringMatch| -> bool {
        match c.key.as_str() {
            "source.ip" => ip_condition(m, conn.source_ip),
            "destination.ip" => ip_condition(m, conn.destination_ip),
            "destination.port" => string_matches(m, &conn.destination_port.to_string()),
            "source.namespace" => string_matches(m, conn.source_namespace.as_deref().unwrap_or("")),
            "source.principal" => {
                let p = conn
                    .source_principal
                    .as_deref()
                    .map(principal_without_scheme)
                    .unwrap_or("");
                principal_matches(m, p)
            }
            key => match request {
                Some(req) => request_value(key, req).is_some_and(|v| string_matches(m, &v)),
                // An L7 key at L4: compile_l4 removes these; if one arrives
                // anyway it cannot hold.
                None => false,
            },
        }
    };
    field(&c.values, &c.not_values, value_matches)
}

fn ip_condition(m: &StringMatch, ip: IpAddr) -> bool {
    match &m.kind {
        Some(string_match::Kind::Exact(block)) => ip_in_block(ip, block),
        _ => string_matches(m, &ip.to_string()),
    }
}

fn request_value(key: &str, req: &RequestAttrs) -> Option<String> {
    match key {
        "request.method" => Some(req.method.clone()),
        "request.path" => Some(req.path.clone()),
        "request.host" => Some(req.host.clone()),
        _ => {
            let name = key
                .strip_prefix("request.headers[")?
                .strip_suffix(']')?
                .to_ascii_lowercase();
            let values: Vec<&str> = req
                .headers
                .iter()
                .filter(|(k, _)| *k == name)
                .map(|(_, v)| v.as_str())
                .collect();
            (!values.is_empty()).then(|| values.join(","))
        }
    }
}

fn operation_has_l7(op: &Operation) -> bool {
    !(op.methods.is_empty()
        && op.not_methods.is_empty()
        && op.paths.is_empty()
        && op.not_paths.is_empty()
        && op.hosts.is_empty()
        && op.not_hosts.is_empty())
}

/// Whether a rule uses anything only an L7 enforcer can see.
pub fn rule_has_l7(rule: &Rule) -> bool {
    rule.to.iter().any(operation_has_l7) || rule.when.iter().any(|c| !condition_is_l4(&c.key))
}

/// Compiles a policy's rules to the L4 form ztunnel enforces, with a warning
/// for every rule whose meaning changes.
pub fn compile_l4(action: Action, rules: &[Rule]) -> (Vec<L4Rule>, Vec<String>) {
    let mut l4 = Vec::with_capacity(rules.len());
    let mut warnings = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let has_l7 = rule_has_l7(rule);
        if has_l7 && action == Action::Allow {
            warnings.push(format!(
                "rule {i}: ALLOW with L7 fields cannot be enforced at L4 and matches nothing \
                 there; bind the workload to a waypoint to enforce it"
            ));
            continue;
        }
        if has_l7 {
            warnings.push(format!(
                "rule {i}: {} with L7 fields is enforced at L4 without them, so it applies to \
                 the whole connection; bind the workload to a waypoint to enforce it per request",
                action.as_str_name().trim_start_matches("ACTION_")
            ));
        }
        l4.push(L4Rule {
            from: rule.from.clone(),
            to: rule
                .to
                .iter()
                .map(|op| L4Operation {
                    ports: op.ports.clone(),
                    not_ports: op.not_ports.clone(),
                })
                .collect(),
            when: rule
                .when
                .iter()
                .filter(|c| condition_is_l4(&c.key))
                .cloned()
                .collect(),
        });
    }
    (l4, warnings)
}

#[cfg(test)]
mod tests;
