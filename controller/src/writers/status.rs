//! Status the controller writes: GatewayClass and Gateway conditions, and
//! AuthorizationPolicy conditions. Pure functions from model to status; the
//! writer patches only what changed.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use weft_cluster::model::route_report::{ParentRef, ParentReport, Problem};

use weft_cluster::model::PolicyReport;

/// A condition with the given fields, observed at `generation`.
pub fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Time,
) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: if ok { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time: now,
    }
}

/// The conditions of an AuthorizationPolicy: `Accepted`, and for a policy
/// ztunnel enforces, `L4Enforcement` saying what it does with L7 rules.
pub fn policy_conditions(
    report: &PolicyReport,
    generation: Option<i64>,
    now: Time,
) -> Vec<Condition> {
    let mut out = vec![if report.accepted {
        condition(
            "Accepted",
            true,
            "Accepted",
            "the policy is in effect".into(),
            generation,
            now.clone(),
        )
    } else {
        condition(
            "Accepted",
            false,
            "Invalid",
            format!(
                "{}; enforced fail-closed (ALLOW matches nothing, DENY matches everything)",
                report.errors.join("; ")
            ),
            generation,
            now.clone(),
        )
    }];
    if report.enforced_by_ztunnel {
        if report.l4_warnings.is_empty() {
            out.push(condition(
                "L4Enforcement",
                true,
                "Exact",
                "ztunnel enforces every rule as written".into(),
                generation,
                now,
            ));
        } else {
            out.push(condition(
                "L4Enforcement",
                false,
                "L7RulesWithoutWaypoint",
                format!(
                    "no waypoint enforces this policy, so ztunnel applies its L4 form: {}",
                    report.l4_warnings.join("; ")
                ),
                generation,
                now,
            ));
        }
    }
    out
}

/// The addresses a waypoint Gateway reports: its Service's cluster IPs.
pub fn gateway_addresses(service: Option<&Service>) -> Vec<String> {
    service
        .and_then(|s| s.spec.as_ref())
        .map(weft_cluster::model::services_cluster_ips)
        .unwrap_or_default()
}

/// Settles `desired` against the object's `current` conditions: a condition
/// whose type and status did not change keeps its transition time (that is
/// what the time means), and the answer says whether anything but the times
/// differs, so an unchanged status is not rewritten.
pub fn settle(current: &[Condition], desired: &mut [Condition]) -> bool {
    for d in desired.iter_mut() {
        if let Some(c) = current
            .iter()
            .find(|c| c.type_ == d.type_ && c.status == d.status)
        {
            d.last_transition_time = c.last_transition_time.clone();
        }
    }
    current.len() == desired.len()
        && current.iter().zip(desired.iter()).all(|(x, y)| {
            x.type_ == y.type_
                && x.status == y.status
                && x.reason == y.reason
                && x.message == y.message
                && x.observed_generation == y.observed_generation
        })
}

/// A route's parent reference in its status: as the route wrote it.
pub fn parent_ref(p: &ParentRef) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    if let Some(group) = &p.group {
        out.insert("group".into(), group.clone().into());
    }
    if let Some(kind) = &p.kind {
        out.insert("kind".into(), kind.clone().into());
    }
    if let Some(namespace) = &p.namespace {
        out.insert("namespace".into(), namespace.clone().into());
    }
    out.insert("name".into(), p.name.clone().into());
    if let Some(port) = p.port {
        out.insert("port".into(), port.into());
    }
    serde_json::Value::Object(out)
}

/// `Accepted` and `ResolvedRefs` of one parent of a route, with the Gateway
/// API's reasons.
pub fn route_conditions(
    parent: &ParentReport,
    generation: Option<i64>,
    now: Time,
) -> Vec<Condition> {
    let one = |type_: &str, ok_reason: &str, verdict: &Result<(), Problem>, ok_message: &str| {
        match verdict {
            Ok(()) => condition(
                type_,
                true,
                ok_reason,
                ok_message.into(),
                generation,
                now.clone(),
            ),
            Err(p) => condition(
                type_,
                false,
                p.reason.as_str(),
                p.message.clone(),
                generation,
                now.clone(),
            ),
        }
    };
    vec![
        one(
            "Accepted",
            "Accepted",
            &parent.accepted,
            "the route is in effect",
        ),
        one(
            "ResolvedRefs",
            "ResolvedRefs",
            &parent.resolved_refs,
            "every backend resolves",
        ),
    ]
}

/// The condition type on a Service that carries a `weft.dev/use-waypoint`
/// binding (directly or through its namespace).
pub const WAYPOINT_BOUND: &str = "weft.dev/WaypointBound";

/// Why a Service's waypoint binding can or cannot be honoured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindingState {
    /// The waypoint takes the Service's traffic.
    Bound,
    /// No Gateway of class `weft-waypoint` by that name: traffic refused.
    WaypointNotFound,
    /// The Gateway exists but has no address yet: traffic refused.
    WaypointNotReady,
}

/// The `weft.dev/WaypointBound` condition for a binding in `state`;
/// `message` is the controller's sentence (the reason proxies log).
pub fn binding_condition(state: BindingState, message: String, now: Time) -> Condition {
    let (ok, reason) = match state {
        BindingState::Bound => (true, "Bound"),
        BindingState::WaypointNotFound => (false, "WaypointNotFound"),
        BindingState::WaypointNotReady => (false, "WaypointNotReady"),
    };
    condition(WAYPOINT_BOUND, ok, reason, message, None, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(seconds).expect("in range"))
    }

    #[test]
    fn an_unchanged_status_keeps_its_transition_time_and_a_changed_one_takes_the_new() {
        let current = [condition(
            "Programmed",
            false,
            "Pending",
            "wait".into(),
            Some(1),
            at(10),
        )];
        let mut same = [condition(
            "Programmed",
            false,
            "Pending",
            "wait".into(),
            Some(1),
            at(20),
        )];
        assert!(settle(&current, &mut same));
        assert_eq!(same[0].last_transition_time, at(10));

        let mut message = [condition(
            "Programmed",
            false,
            "Pending",
            "later".into(),
            Some(1),
            at(20),
        )];
        assert!(!settle(&current, &mut message), "a new message is a write");
        assert_eq!(
            message[0].last_transition_time,
            at(10),
            "but not a transition"
        );

        let mut flipped = [condition(
            "Programmed",
            true,
            "Programmed",
            "ok".into(),
            Some(1),
            at(20),
        )];
        assert!(!settle(&current, &mut flipped));
        assert_eq!(flipped[0].last_transition_time, at(20));
    }
}
