//! The path a connection takes, hop by hop, and each enforcer's decision.
//!
//! The decisions come from `weft_api::authz`, the code ztunnel and the
//! waypoint run; this module only decides which enforcers are on the path and
//! what each of them knows about the connection:
//!
//! - a client outside the mesh reaches a meshed destination in plaintext: its
//!   ztunnel's inbound (15006) refuses it under STRICT, or when the
//!   destination is bound to a waypoint (only the waypoint may reach it),
//!   else applies L4 policy with no identity;
//! - a meshed client tunnels (HBONE) to the destination's ztunnel, which
//!   applies L4 policy to the client's identity;
//! - with a waypoint on the path (the Service's, else the destination
//!   workload's), the waypoint applies the policies that target it (its
//!   Gateway, or the Service) to the client's identity, then the destination
//!   workload's own policies, also to the client's identity (both at L7 for
//!   HTTP, in their L4 form for other traffic); then it tunnels to the
//!   destination's ztunnel, which applies L4 policy to the *waypoint's*
//!   identity;
//! - a destination outside the mesh is reached in plain TCP: nothing applies
//!   policy to it.

use std::net::{IpAddr, Ipv4Addr};

use serde::Serialize;
use weft_api::authz::{self, ConnectionAttrs, Decision, Reason, RequestAttrs, RuleRef};
use weft_api::config::{
    Action, Authorization, HealthStatus, PolicyScope, TunnelProtocol, WaypointRef, Workload,
};
use weft_cluster::model::Model;
use weft_mesh::{Denial, NextHop};

use super::target::{Client, Destination, Endpoint, first_ip};
use crate::args::AppProtocol;
use crate::commands::identity_namespace;

/// The overall answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Every endpoint's path allows it.
    Allowed,
    /// Every endpoint's path refuses it.
    Denied,
    /// It depends on which endpoint is picked.
    Mixed,
    /// The Service has no endpoint: the connection fails.
    Unreachable,
}

/// Who decided, in the written policy's terms.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleView {
    /// `namespace/name`.
    pub policy: String,
    /// ALLOW, DENY or AUDIT.
    pub action: String,
    /// Index into the policy's written `rules`.
    pub rule: usize,
}

/// What the proxies are told the request is (waypoint hops only).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    /// HTTP (the waypoint applies policy per request) or TCP (the policies'
    /// L4 form).
    pub protocol: AppProtocol,
    /// The port declares no `appProtocol` and `--protocol` was not given:
    /// HTTP is assumed (the waypoint tells by the first bytes).
    pub protocol_guessed: bool,
    /// HTTP method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Host.
    pub host: String,
    /// Headers (names lower-case).
    pub headers: Vec<(String, String)>,
    /// Method and path were not given: `GET /` was assumed.
    pub assumed: bool,
}

/// One enforcer on the path.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Hop {
    /// `ztunnel on node-2`, `waypoint ns/name`, or `none`.
    pub enforcer: String,
    /// `L4`, `L7`, or `none`.
    pub layer: &'static str,
    /// Who the enforcer sees as the client.
    pub sees: String,
    /// The policies that apply here (`namespace/name`).
    pub policies: Vec<String>,
    /// This hop lets the connection (request) through.
    pub allowed: bool,
    /// Why, in words.
    pub reason: String,
    /// The rule that decided, if one did.
    pub decided_by: Option<RuleView>,
    /// AUDIT rules that matched (recorded only).
    pub audited: Vec<RuleView>,
}

/// The path to one endpoint.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PathResult {
    /// `namespace/name` of the endpoint's workload.
    pub endpoint: String,
    /// `ip:port` it is reached at.
    pub address: String,
    /// Its node.
    pub node: String,
    /// Every hop lets it through.
    pub allowed: bool,
    /// The enforcers in order.
    pub hops: Vec<Hop>,
}

/// The whole explanation.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    /// The client.
    pub from: Client,
    /// The destination.
    pub to: Destination,
    /// The request, when a waypoint is on some path.
    pub request: Option<Request>,
    /// The answer.
    pub verdict: Verdict,
    /// One per endpoint.
    pub paths: Vec<PathResult>,
    /// What the user should know.
    pub warnings: Vec<String>,
}

fn key(p: &Authorization) -> String {
    authz::policy_key(p)
}

fn action_name(action: Action) -> String {
    action
        .as_str_name()
        .trim_start_matches("ACTION_")
        .to_string()
}

fn spiffe(w: &Workload) -> String {
    format!(
        "spiffe://{}/ns/{}/sa/{}",
        w.trust_domain, w.namespace, w.service_account
    )
}

fn in_mesh(w: &Workload) -> bool {
    w.protocol == TunnelProtocol::Hbone as i32
}

/// The written rule an L4 rule was compiled from: ALLOW rules with L7 fields
/// are dropped by `compile_l4`, so later indices shift.
fn written_rule(policy: &Authorization, l4_index: usize) -> usize {
    if policy.action == Action::Allow as i32 && policy.rules.len() != policy.l4_rules.len() {
        policy
            .rules
            .iter()
            .enumerate()
            .filter(|(_, r)| !authz::rule_has_l7(r))
            .map(|(i, _)| i)
            .nth(l4_index)
            .unwrap_or(l4_index)
    } else {
        l4_index
    }
}

fn view(r: &RuleRef, model: &Model, l4: bool) -> RuleView {
    let policy = format!("{}/{}", r.namespace, r.name);
    let rule = match (l4, model.authorizations.get(&policy)) {
        (true, Some(p)) => written_rule(p, r.rule),
        _ => r.rule,
    };
    RuleView {
        policy,
        action: action_name(r.action),
        rule,
    }
}

fn describe(reason: &Reason, model: &Model, l4: bool) -> (String, Option<RuleView>) {
    match reason {
        Reason::NoPolicy => ("allowed: no ALLOW or DENY policy applies".into(), None),
        Reason::Allowed(r) => {
            let v = view(r, model, l4);
            (
                format!("allowed by ALLOW {} rule {}", v.policy, v.rule),
                Some(v),
            )
        }
        Reason::Denied(r) => {
            let v = view(r, model, l4);
            (
                format!("denied by DENY {} rule {}", v.policy, v.rule),
                Some(v),
            )
        }
        Reason::NoAllowMatched { allow_policies } => (
            format!(
                "denied: ALLOW policies apply ({}) and none of their rules matches",
                allow_policies.join(", ")
            ),
            None,
        ),
    }
}

fn hop_from(
    enforcer: String,
    layer: &'static str,
    sees: String,
    policies: &[&Authorization],
    decision: &Decision,
    model: &Model,
) -> Hop {
    let l4 = layer == "L4";
    let (reason, decided_by) = describe(&decision.reason, model, l4);
    Hop {
        enforcer,
        layer,
        sees,
        policies: policies.iter().map(|p| key(p)).collect(),
        allowed: decision.allowed,
        reason,
        decided_by,
        audited: decision
            .audited
            .iter()
            .map(|r| view(r, model, l4))
            .collect(),
    }
}

fn refused(enforcer: String, layer: &'static str, sees: String, reason: String) -> Hop {
    Hop {
        enforcer,
        layer,
        sees,
        policies: Vec::new(),
        allowed: false,
        reason,
        decided_by: None,
        audited: Vec::new(),
    }
}

/// Whether a waypoint-scoped policy applies at `waypoint` for `dest`.
fn applies_at_waypoint(p: &Authorization, waypoint: &WaypointRef, dest: &Destination) -> bool {
    let service = (dest.kind == "service").then_some((dest.namespace.as_str(), dest.name.as_str()));
    weft_api::authz::applies_at_waypoint(p, &waypoint.namespace, &waypoint.name, service)
}

/// The waypoint's running instances (its pods in the model).
fn waypoint_instances<'m>(model: &'m Model, wref: &WaypointRef) -> Vec<&'m Workload> {
    // A waypoint's pods run as the service account the deployer made for its
    // Gateway (the one in its identity) and carry `is_waypoint`; match on
    // both so another Gateway's pods in the same namespace are never taken
    // for this one's.
    let sa = wref.identity.rsplit('/').next().unwrap_or_default();
    model
        .workloads
        .values()
        .filter(|w| w.is_waypoint && w.namespace == wref.namespace && w.service_account == sa)
        .collect()
}

/// Everything that decides the outcome, and what to warn about.
pub struct Analysis<'a> {
    /// The model.
    pub model: &'a Model,
    /// The client.
    pub client: &'a Client,
    /// The destination.
    pub dest: &'a Destination,
    /// The request (used at L7 hops).
    pub request: &'a Request,
    /// Whether the user gave L7 attributes.
    pub l7_given: bool,
    warnings: Vec<String>,
    waypoint_on_some_path: bool,
}

impl<'a> Analysis<'a> {
    /// Prepares an analysis.
    pub fn new(
        model: &'a Model,
        client: &'a Client,
        dest: &'a Destination,
        request: &'a Request,
        l7_given: bool,
    ) -> Analysis<'a> {
        Analysis {
            model,
            client,
            dest,
            request,
            l7_given,
            warnings: Vec::new(),
            waypoint_on_some_path: false,
        }
    }

    fn warn(&mut self, w: String) {
        if !self.warnings.contains(&w) {
            self.warnings.push(w);
        }
    }

    /// Runs it.
    pub fn run(mut self) -> Explanation {
        let endpoints = self.dest.endpoints.clone();
        let paths: Vec<PathResult> = endpoints.iter().map(|e| self.path(e)).collect();
        let allowed = paths.iter().filter(|p| p.allowed).count();
        let verdict = match (paths.len(), allowed) {
            (0, _) => {
                self.warn(format!(
                    "{} has no endpoint: connections to it fail",
                    self.dest.description
                ));
                Verdict::Unreachable
            }
            (n, a) if a == n => Verdict::Allowed,
            (_, 0) => Verdict::Denied,
            _ => Verdict::Mixed,
        };
        if self.l7_given && !self.waypoint_on_some_path {
            self.warn(
                "--method/--path/--header are not seen by any enforcer: no waypoint is on the path, and ztunnel sees only L4"
                    .into(),
            );
        }
        if self.waypoint_on_some_path {
            self.warn_waypoint_protocol();
        }
        self.warn_unenforced_waypoint_policies();
        Explanation {
            from: self.client.clone(),
            to: self.dest.clone(),
            request: self.waypoint_on_some_path.then(|| self.request.clone()),
            verdict,
            paths,
            warnings: self.warnings,
        }
    }

    /// The waypoint traffic to this endpoint passes, if any, with the
    /// refusal when it cannot take traffic: ztunnel's routing decision
    /// (`weft_mesh::routing`), not a copy of it.
    fn waypoint(&self, endpoint: &Endpoint) -> Option<(WaypointRef, Option<Denial>)> {
        let client = self.client.workload.as_ref();
        if let Some(service) = &self.dest.service {
            match weft_mesh::service_waypoint(service, client) {
                Ok(Some(w)) => return Some((w.clone(), None)),
                Err(denial) => return service.waypoint.clone().map(|w| (w, Some(denial))),
                Ok(None) => {}
            }
        }
        match weft_mesh::endpoint_hop(&endpoint.workload, client) {
            Ok(NextHop::Waypoint(w)) => Some((w.clone(), None)),
            Err(denial) => endpoint
                .workload
                .waypoint
                .clone()
                .map(|w| (w, Some(denial))),
            Ok(NextHop::Direct | NextHop::Passthrough) => None,
        }
    }

    fn path(&mut self, endpoint: &Endpoint) -> PathResult {
        let w = &endpoint.workload;
        let endpoint_ip = first_ip(w).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let mut hops = Vec::new();
        let waypoint = self.waypoint(endpoint);
        if !self.client.in_mesh {
            if waypoint.is_some() {
                self.warn(format!(
                    "{} is not in the mesh: its traffic cannot be sent to the waypoint, so the waypoint's policies do not apply to it (PeerAuthentication STRICT on the destination refuses such clients)",
                    self.client.description
                ));
            }
            if in_mesh(w) {
                hops.push(self.plaintext_inbound(w, endpoint, endpoint_ip));
            } else {
                hops.push(no_enforcer(
                    "neither end is in the mesh: no weft component sees this connection",
                ));
            }
        } else if let Some((wref, unavailable)) = waypoint {
            self.waypoint_on_some_path = true;
            let (hop, instance) = self.waypoint_hop(&wref, unavailable);
            let mut passed = hop.allowed;
            hops.push(hop);
            if passed && let Some(hop) = self.waypoint_endpoint_hop(&wref, endpoint, endpoint_ip) {
                passed = hop.allowed;
                hops.push(hop);
            }
            if passed {
                let (identity, ip) = instance.unwrap_or_default();
                if in_mesh(w) {
                    let conn = ConnectionAttrs {
                        source_principal: Some(identity.clone()),
                        source_namespace: identity_namespace(&identity).map(str::to_owned),
                        source_ip: ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
                        destination_ip: endpoint_ip,
                        destination_port: endpoint.port,
                    };
                    hops.push(self.ztunnel_hop(w, conn, identity, Some(&wref)));
                } else {
                    hops.push(no_enforcer(
                        "the destination is not in the mesh: the waypoint connects in plain TCP",
                    ));
                }
            }
        } else if in_mesh(w) {
            let identity = self.client.identity.clone().unwrap_or_default();
            let conn = ConnectionAttrs {
                source_principal: Some(identity.clone()),
                source_namespace: Some(self.client.namespace.clone()),
                source_ip: self.client_ip(),
                destination_ip: endpoint_ip,
                destination_port: endpoint.port,
            };
            hops.push(self.ztunnel_hop(w, conn, identity, None));
        } else {
            self.warn(format!(
                "{}/{} is not in the mesh: the connection leaves the client's ztunnel in plain TCP, without mTLS, and no policy applies",
                w.namespace, w.name
            ));
            hops.push(no_enforcer(
                "the destination is not in the mesh: plain TCP, no policy",
            ));
        }
        PathResult {
            endpoint: format!("{}/{}", w.namespace, w.name),
            address: format!("{endpoint_ip}:{}", endpoint.port),
            node: w.node.clone(),
            allowed: hops.iter().all(|h| h.allowed),
            hops,
        }
    }

    fn client_ip(&mut self) -> IpAddr {
        self.client
            .address
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }

    fn ztunnel_policies(&self, w: &Workload) -> Vec<&'a Authorization> {
        self.model
            .authorizations
            .values()
            .filter(|p| authz::applies_to(p, w))
            .collect()
    }

    /// What the L4 form of these policies loses (rules with L7 fields).
    fn note_l4_form(&mut self, enforcer: &str, policies: &[&Authorization]) {
        for p in policies {
            for w in &p.l4_warnings {
                self.warn(format!("policy {} (enforced by {enforcer}): {w}", key(p)));
            }
        }
    }

    fn note_policies(&mut self, enforcer: &str, policies: &[&Authorization]) {
        self.note_l4_form(enforcer, policies);
        for p in policies {
            if let Some(report) = self.model.policy_reports.get(&key(p))
                && !report.accepted
            {
                self.warn(format!(
                    "policy {} was not accepted ({}): it fails closed (ALLOW matches nothing, DENY matches everything)",
                    key(p),
                    report.errors.join("; ")
                ));
            }
            if self.client.address.is_none() && uses_ip_blocks(p) {
                self.warn(format!(
                    "policy {} matches on source addresses, and {} has none: give a pod as --from to evaluate them",
                    key(p),
                    self.client.description
                ));
            }
        }
    }

    /// The destination's ztunnel, inbound over HBONE.
    fn ztunnel_hop(
        &mut self,
        w: &Workload,
        conn: ConnectionAttrs,
        identity: String,
        via: Option<&WaypointRef>,
    ) -> Hop {
        let enforcer = format!("ztunnel on {}", w.node);
        // The rule ztunnel's inbound runs. Through a waypoint, ztunnel sees
        // that waypoint's identity (even when no instance of it runs yet).
        let peer = via.map_or(identity.as_str(), |v| v.identity.as_str());
        if let Err(denial) = weft_mesh::admit_hbone(w, peer) {
            return refused(enforcer, "L4", identity, format!("denied: {denial}"));
        }
        let policies = self.ztunnel_policies(w);
        self.note_policies(&enforcer, &policies);
        if let Some(wref) = via {
            for p in &policies {
                if uses_source_identity(p) {
                    self.warn(format!(
                        "policy {} is enforced by {enforcer} after waypoint {}/{}: it sees the waypoint's identity ({}), not {}'s ({}); the waypoint applies it to the client as well, so it must admit both: to authorize clients, attach it to the waypoint (targetRefs) instead",
                        key(p),
                        wref.namespace,
                        wref.name,
                        wref.identity,
                        self.client.description,
                        self.client.identity.as_deref().unwrap_or("none"),
                    ));
                }
            }
        }
        let decision = authz::evaluate_l4(policies.iter().copied(), &conn);
        hop_from(enforcer, "L4", identity, &policies, &decision, self.model)
    }

    /// The destination's ztunnel, inbound plaintext (15006).
    fn plaintext_inbound(&mut self, w: &Workload, endpoint: &Endpoint, endpoint_ip: IpAddr) -> Hop {
        let enforcer = format!("ztunnel on {}", w.node);
        let sees = format!(
            "plaintext from {}",
            self.client
                .address
                .map(|a| a.to_string())
                .unwrap_or_else(|| "an unknown address".into())
        );
        // The rule ztunnel's plaintext inbound runs.
        if let Err(denial) = weft_mesh::admit_plaintext(w) {
            return refused(enforcer, "L4", sees, format!("denied: {denial}"));
        }
        let policies = self.ztunnel_policies(w);
        self.note_policies(&enforcer, &policies);
        let conn = ConnectionAttrs {
            source_principal: None,
            source_namespace: Some(self.client.namespace.clone()),
            source_ip: self.client_ip(),
            destination_ip: endpoint_ip,
            destination_port: endpoint.port,
        };
        let decision = authz::evaluate_l4(policies.iter().copied(), &conn);
        hop_from(enforcer, "L4", sees, &policies, &decision, self.model)
    }

    /// Routes that would decide this request at `wref` (attached to the
    /// destination Service or to the waypoint) but cannot as written: what
    /// their status says (issue 16).
    fn note_routes(&mut self, wref: &WaypointRef) {
        let mut notes = Vec::new();
        for (key, report) in &self.model.route_reports {
            let route_ns = key.split_once('/').map_or("", |(ns, _)| ns);
            for parent in &report.parents {
                let p = &parent.parent_ref;
                let ns = p.namespace.as_deref().unwrap_or(route_ns);
                let here = if p.kind.as_deref() == Some("Service") {
                    self.dest.kind == "service"
                        && ns == self.dest.namespace
                        && p.name == self.dest.name
                } else {
                    ns == wref.namespace && p.name == wref.name
                };
                if !here {
                    continue;
                }
                if let Err(problem) = &parent.accepted {
                    notes.push(format!(
                        "route {key} is not in effect here ({}): {}",
                        problem.reason, problem.message
                    ));
                }
                if let Err(problem) = &parent.resolved_refs {
                    notes.push(format!(
                        "route {key} has a backend it cannot use ({}): {}; requests routed to it get 500",
                        problem.reason, problem.message
                    ));
                }
            }
        }
        for note in notes {
            self.warn(note);
        }
    }

    /// The waypoint, and the identity and address it connects onward from.
    fn waypoint_hop(
        &mut self,
        wref: &WaypointRef,
        unavailable: Option<Denial>,
    ) -> (Hop, Option<(String, Option<IpAddr>)>) {
        let enforcer = format!("waypoint {}/{}", wref.namespace, wref.name);
        let identity = self.client.identity.clone().unwrap_or_default();
        // A binding the controller could not honour is refused, not sent
        // around the waypoint.
        if let Some(denial) = unavailable {
            self.warn(format!(
                "{denial}: every connection to it is refused until this is fixed"
            ));
            return (
                refused(enforcer, "L4", identity, format!("denied: {denial}")),
                None,
            );
        }
        let instances = waypoint_instances(self.model, wref);
        let healthy: Vec<&&Workload> = instances
            .iter()
            .filter(|w| w.status == HealthStatus::Healthy as i32)
            .collect();
        if wref.addresses.is_empty() || healthy.is_empty() {
            let why = if wref.addresses.is_empty() {
                "it has no address yet"
            } else {
                "none of its pods is ready"
            };
            self.warn(format!(
                "waypoint {}/{} is not ready ({why}): connections that must pass it fail",
                wref.namespace, wref.name
            ));
            return (
                refused(
                    enforcer,
                    "L7",
                    identity,
                    format!("fails: the waypoint is not ready ({why})"),
                ),
                None,
            );
        }
        self.note_routes(wref);
        let policies: Vec<&Authorization> = self
            .model
            .authorizations
            .values()
            .filter(|p| applies_at_waypoint(p, wref, self.dest))
            .collect();
        for p in &policies {
            if let Some(report) = self.model.policy_reports.get(&key(p))
                && !report.accepted
            {
                self.warn(format!(
                    "policy {} was not accepted ({}): it fails closed",
                    key(p),
                    report.errors.join("; ")
                ));
            }
        }
        let conn = ConnectionAttrs {
            source_principal: self.client.identity.clone(),
            source_namespace: Some(self.client.namespace.clone()),
            source_ip: self.client_ip(),
            destination_ip: self
                .dest
                .vip
                .or_else(|| {
                    self.dest
                        .endpoints
                        .first()
                        .and_then(|e| first_ip(&e.workload))
                })
                .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            destination_port: self.dest.port,
        };
        if self.request.protocol == AppProtocol::Tcp {
            self.note_l4_form(&enforcer, &policies);
        }
        let (layer, decision) = self.at_waypoint(&policies, &conn);
        let hop = hop_from(enforcer, layer, identity, &policies, &decision, self.model);
        let instance = healthy.first().map(|w| (spiffe(w), first_ip(w)));
        (hop, instance)
    }

    /// The waypoint again, once it has picked the endpoint: the destination
    /// workload's own policies (mesh, namespace, selector) with the real
    /// client, where the destination's ztunnel will see only the waypoint.
    /// No hop when none applies (the waypoint skips the check then too).
    fn waypoint_endpoint_hop(
        &mut self,
        wref: &WaypointRef,
        endpoint: &Endpoint,
        endpoint_ip: IpAddr,
    ) -> Option<Hop> {
        let policies = self.ztunnel_policies(&endpoint.workload);
        if policies.is_empty() {
            return None;
        }
        let conn = ConnectionAttrs {
            source_principal: self.client.identity.clone(),
            source_namespace: Some(self.client.namespace.clone()),
            source_ip: self.client_ip(),
            destination_ip: endpoint_ip,
            destination_port: endpoint.port,
        };
        let enforcer = format!("waypoint {}/{}", wref.namespace, wref.name);
        if self.request.protocol == AppProtocol::Tcp {
            self.note_policies(&enforcer, &policies);
        }
        let (layer, decision) = self.at_waypoint(&policies, &conn);
        let mut hop = hop_from(
            enforcer,
            layer,
            self.client.identity.clone().unwrap_or_default(),
            &policies,
            &decision,
            self.model,
        );
        hop.reason = format!("the destination's own policies: {}", hop.reason);
        Some(hop)
    }

    /// A waypoint's decision: per request for HTTP, the policies' L4 form
    /// for anything else (an ALLOW rule with L7 fields matches nothing, a
    /// DENY rule with L7 fields refuses the connection).
    fn at_waypoint(
        &self,
        policies: &[&Authorization],
        conn: &ConnectionAttrs,
    ) -> (&'static str, Decision) {
        match self.request.protocol {
            AppProtocol::Http => {
                let request = RequestAttrs {
                    method: self.request.method.clone(),
                    path: self.request.path.clone(),
                    host: self.request.host.clone(),
                    headers: self.request.headers.clone(),
                };
                let decision = authz::evaluate_l7(policies.iter().copied(), conn, &request);
                ("L7", decision)
            }
            AppProtocol::Tcp => ("L4", authz::evaluate_l4(policies.iter().copied(), conn)),
        }
    }

    /// What the waypoint takes the connection for, when it matters.
    fn warn_waypoint_protocol(&mut self) {
        match self.request.protocol {
            AppProtocol::Tcp if self.l7_given => self.warn(
                "--method/--path/--header are not seen: the waypoint treats this connection as TCP (the port's appProtocol, or --protocol tcp) and applies the policies' L4 form".into(),
            ),
            AppProtocol::Http if self.request.protocol_guessed => self.warn(format!(
                "{} declares no appProtocol: the waypoint tells HTTP from the first bytes; this explains an HTTP request (--protocol tcp explains a client that does not speak HTTP)",
                self.dest.description
            )),
            _ => {}
        }
    }

    /// Policies that target this Service for a waypoint, when no waypoint
    /// serves the Service: nothing enforces them.
    fn warn_unenforced_waypoint_policies(&mut self) {
        let Some(svc) = &self.dest.service else {
            return;
        };
        if svc.waypoint.is_some() {
            return;
        }
        let orphans: Vec<String> = self
            .model
            .authorizations
            .values()
            .filter(|p| p.scope == PolicyScope::Waypoint as i32)
            .filter(|p| {
                p.target.as_ref().is_some_and(|t| {
                    t.kind == "Service" && t.namespace == svc.namespace && t.name == svc.name
                })
            })
            .map(key)
            .collect();
        for p in orphans {
            self.warn(format!(
                "policy {p} targets Service {}/{}, but no waypoint serves that Service: nothing enforces it",
                svc.namespace, svc.name
            ));
        }
    }
}

fn no_enforcer(reason: &str) -> Hop {
    Hop {
        enforcer: "none".into(),
        layer: "none",
        sees: "-".into(),
        policies: Vec::new(),
        allowed: true,
        reason: reason.into(),
        decided_by: None,
        audited: Vec::new(),
    }
}

/// The policy's rules name the client by identity or namespace.
fn uses_source_identity(p: &Authorization) -> bool {
    let sources = p.l4_rules.iter().flat_map(|r| r.from.iter());
    let conditions = p.l4_rules.iter().flat_map(|r| r.when.iter());
    sources.clone().any(|s| {
        !(s.principals.is_empty()
            && s.not_principals.is_empty()
            && s.namespaces.is_empty()
            && s.not_namespaces.is_empty())
    }) || conditions
        .clone()
        .any(|c| c.key == "source.principal" || c.key == "source.namespace")
}

/// The policy's rules name the client by address.
fn uses_ip_blocks(p: &Authorization) -> bool {
    p.l4_rules.iter().any(|r| {
        r.from
            .iter()
            .any(|s| !(s.ip_blocks.is_empty() && s.not_ip_blocks.is_empty()))
            || r.when.iter().any(|c| c.key == "source.ip")
    })
}
