//! What the controller found of each HTTPRoute and GRPCRoute, per parent it
//! serves (a Service, or a Gateway of class `weft-waypoint`): the Gateway
//! API's `Accepted` and `ResolvedRefs`, which the leader writes to the
//! route's status and `weftctl explain` shows.

use std::fmt;

/// A parent reference as the route wrote it: the status must echo it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParentRef {
    pub group: Option<String>,
    pub kind: Option<String>,
    pub namespace: Option<String>,
    pub name: String,
    pub port: Option<i32>,
}

/// Why a condition is false, in the Gateway API's reasons.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// `Accepted`: the parent does not exist.
    NoMatchingParent,
    /// `Accepted`: the parent Gateway's listeners do not admit routes from
    /// this namespace.
    NotAllowedByListeners,
    /// `Accepted`: a field weft does not support, or an invalid value
    /// (e.g. a regex that does not compile).
    UnsupportedValue,
    /// `ResolvedRefs`: a backend Service that does not exist.
    BackendNotFound,
    /// `ResolvedRefs`: a backend in another namespace without a
    /// ReferenceGrant there allowing it.
    RefNotPermitted,
    /// `ResolvedRefs`: a backend of a kind other than Service.
    InvalidKind,
}

impl Reason {
    /// The reason as the status says it.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NoMatchingParent => "NoMatchingParent",
            Reason::NotAllowedByListeners => "NotAllowedByListeners",
            Reason::UnsupportedValue => "UnsupportedValue",
            Reason::BackendNotFound => "BackendNotFound",
            Reason::RefNotPermitted => "RefNotPermitted",
            Reason::InvalidKind => "InvalidKind",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A false condition: its reason and a message naming the field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub reason: Reason,
    pub message: String,
}

impl Problem {
    pub(crate) fn new(reason: Reason, message: impl Into<String>) -> Problem {
        Problem {
            reason,
            message: message.into(),
        }
    }
}

/// What one parent of a route gets in the route's status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentReport {
    pub parent_ref: ParentRef,
    /// `Err`: the route is not attached to this parent, and why.
    pub accepted: Result<(), Problem>,
    /// `Err`: a reference could not be resolved (requests to that backend
    /// get 500).
    pub resolved_refs: Result<(), Problem>,
}

/// What the controller found of one route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteReport {
    /// True for a GRPCRoute.
    pub grpc: bool,
    pub generation: Option<i64>,
    /// The parents weft serves, in the route's order; a parent of another
    /// controller (another class of Gateway) is not listed.
    pub parents: Vec<ParentReport>,
}

/// Joins several problems of one condition into one, with the first one's
/// reason (the status holds one reason per condition).
pub(crate) fn first_of(problems: Vec<Problem>) -> Result<(), Problem> {
    let mut problems = problems.into_iter();
    let Some(first) = problems.next() else {
        return Ok(());
    };
    let rest: Vec<String> = problems.map(|p| p.message).collect();
    if rest.is_empty() {
        Err(first)
    } else {
        Err(Problem::new(
            first.reason,
            format!("{}; {}", first.message, rest.join("; ")),
        ))
    }
}
