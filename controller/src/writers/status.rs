//! Status the controller writes: GatewayClass and Gateway conditions, and
//! AuthorizationPolicy conditions. Pure functions from model to status; the
//! writer patches only what changed.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

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

/// Compares conditions ignoring transition times, so an unchanged status is
/// not rewritten.
pub fn same_conditions(a: &[Condition], b: &[Condition]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.type_ == y.type_
                && x.status == y.status
                && x.reason == y.reason
                && x.message == y.message
                && x.observed_generation == y.observed_generation
        })
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
