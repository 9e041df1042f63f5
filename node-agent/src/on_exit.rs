//! What a stop means: a restart of the agent, or weft leaving the node.
//!
//! The agent is stopped (SIGTERM) both when its DaemonSet rolls (an upgrade,
//! `kubectl rollout restart`, a changed spec, an evicted pod) and when weft
//! is uninstalled. Taking weft-cni out of the node's chain during a roll
//! would let pods start uncaptured while no agent runs (fail open), and
//! leaving it in after an uninstall makes every pod of an enrolled
//! namespace fail to start (no agent will ever answer). So the agent asks
//! the cluster which it is, at the moment it is told to stop:
//!
//! - its own namespace is being deleted → uninstall;
//! - the DaemonSet that owns its pod is gone, or being deleted → uninstall;
//! - that DaemonSet is there and not being deleted → keep everything.
//!
//! The namespace is read from the agent's registry (its watch outlives the
//! deletion of the agent's RBAC and ServiceAccount, which an uninstall
//! removes in the same breath); the DaemonSet is read from the API server,
//! again until [`DECISION_BOUND`]. When neither answers, the agent keeps
//! the plugin: a node that fails closed is repaired by `weft-node-agent
//! uninstall`, one that failed open has already started pods outside the
//! mesh.

use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use tokio::sync::watch;
use weft_cluster::registry::{ClusterState, ObjectKey};

/// How long the agent keeps asking before it settles for keeping the
/// plugin: well inside the default 30 s termination grace period, which
/// also has to cover the uninstall itself.
pub const DECISION_BOUND: Duration = Duration::from_secs(10);

/// The agent's own pod (from the downward API).
#[derive(Clone, Debug)]
pub struct OwnPod {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
}

/// What stopping does to the node's CNI config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OnExit {
    /// Leave weft-cni, its binary and every pod's rules in place: another
    /// agent takes over.
    Keep(String),
    /// weft is leaving: restore the conflist, remove the binary and the
    /// rules.
    Uninstall(String),
}

/// What the API server says of the DaemonSet that owns the agent's pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    /// There, not being deleted.
    Present,
    /// There, with a deletion timestamp.
    Deleting,
    /// Not found.
    Gone,
}

/// The decision from what is known, or `None` if nothing known decides it
/// yet (ask again).
pub fn decide(
    own: &OwnPod,
    namespace_terminating: bool,
    daemonset: Option<&str>,
    owner: &Result<Owner, String>,
) -> Option<OnExit> {
    if namespace_terminating {
        return Some(OnExit::Uninstall(format!(
            "namespace {} is being deleted",
            own.namespace
        )));
    }
    let name = daemonset?;
    match owner {
        Ok(Owner::Present) => Some(OnExit::Keep(format!(
            "DaemonSet {}/{name} is still there: a restart",
            own.namespace
        ))),
        Ok(Owner::Deleting) => Some(OnExit::Uninstall(format!(
            "DaemonSet {}/{name} is being deleted",
            own.namespace
        ))),
        Ok(Owner::Gone) => Some(OnExit::Uninstall(format!(
            "DaemonSet {}/{name} is gone",
            own.namespace
        ))),
        Err(_) => None,
    }
}

/// The DaemonSet controlling the agent's pod, as the registry lists it.
pub fn owning_daemonset(state: &ClusterState, own: &OwnPod) -> Option<String> {
    let pod: &Pod = state.pods.get(&ObjectKey::new(&own.namespace, &own.name))?;
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.kind == "DaemonSet" && r.controller == Some(true))
        .map(|r| r.name.clone())
}

/// Whether the registry shows the agent's namespace being deleted.
pub fn namespace_terminating(state: &ClusterState, own: &OwnPod) -> bool {
    state
        .namespaces
        .get(&ObjectKey::new("", &own.namespace))
        .is_some_and(|ns| ns.metadata.deletion_timestamp.is_some())
}

/// Asks the API server for DaemonSet `namespace/name`.
pub async fn lookup(client: &kube::Client, namespace: &str, name: &str) -> Result<Owner, String> {
    let api: Api<DaemonSet> = Api::namespaced(client.clone(), namespace);
    match api.get_opt(name).await {
        Ok(Some(ds)) if ds.metadata.deletion_timestamp.is_some() => Ok(Owner::Deleting),
        Ok(Some(_)) => Ok(Owner::Present),
        Ok(None) => Ok(Owner::Gone),
        Err(e) => Err(e.to_string()),
    }
}

/// Decides what stopping means (see the module doc), asking until `bound`.
pub async fn on_exit(
    client: &kube::Client,
    own: &OwnPod,
    states: &watch::Receiver<std::sync::Arc<ClusterState>>,
    bound: Duration,
) -> OnExit {
    let deadline = tokio::time::Instant::now() + bound;
    let mut daemonset = None;
    let mut last = String::from("no answer yet");
    loop {
        let state = states.borrow().clone();
        daemonset = owning_daemonset(&state, own).or(daemonset);
        let owner = match &daemonset {
            Some(name) => {
                match tokio::time::timeout_at(deadline, lookup(client, &own.namespace, name)).await
                {
                    Ok(answer) => answer,
                    Err(_) => Err("timed out".into()),
                }
            }
            None => Err(format!(
                "pod {}/{} has no DaemonSet owner in the registry",
                own.namespace, own.name
            )),
        };
        if let Some(decision) = decide(
            own,
            namespace_terminating(&state, own),
            daemonset.as_deref(),
            &owner,
        ) {
            return decision;
        }
        if let Err(e) = owner {
            last = e;
        }
        if tokio::time::Instant::now() + Duration::from_millis(500) >= deadline {
            return OnExit::Keep(format!(
                "cannot tell a restart from an uninstall ({last}); failing closed"
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Namespace;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
    use std::sync::Arc;

    fn own() -> OwnPod {
        OwnPod {
            namespace: "weft-system".into(),
            name: "weft-node-agent-x7".into(),
        }
    }

    #[test]
    fn a_present_daemonset_keeps_and_a_missing_or_deleting_one_uninstalls() {
        let ds = Some("weft-node-agent");
        assert!(matches!(
            decide(&own(), false, ds, &Ok(Owner::Present)),
            Some(OnExit::Keep(_))
        ));
        for owner in [Owner::Gone, Owner::Deleting] {
            assert!(matches!(
                decide(&own(), false, ds, &Ok(owner)),
                Some(OnExit::Uninstall(_))
            ));
        }
    }

    #[test]
    fn a_terminating_namespace_uninstalls_whatever_the_api_says() {
        let forbidden = Err("403 forbidden".to_string());
        assert!(matches!(
            decide(&own(), true, None, &forbidden),
            Some(OnExit::Uninstall(r)) if r.contains("weft-system")
        ));
        assert!(matches!(
            decide(&own(), true, Some("weft-node-agent"), &Ok(Owner::Present)),
            Some(OnExit::Uninstall(_))
        ));
    }

    #[test]
    fn an_unanswered_question_decides_nothing() {
        assert_eq!(
            decide(
                &own(),
                false,
                Some("weft-node-agent"),
                &Err("connection refused".into())
            ),
            None
        );
        assert_eq!(decide(&own(), false, None, &Ok(Owner::Gone)), None);
    }

    #[test]
    fn the_owner_and_the_namespace_come_from_the_registry() {
        let mut state = ClusterState::default();
        let mut pod = Pod::default();
        pod.metadata.namespace = Some("weft-system".into());
        pod.metadata.name = Some("weft-node-agent-x7".into());
        pod.metadata.owner_references = Some(vec![
            OwnerReference {
                kind: "ConfigMap".into(),
                name: "not-me".into(),
                ..Default::default()
            },
            OwnerReference {
                kind: "DaemonSet".into(),
                name: "weft-node-agent".into(),
                controller: Some(true),
                ..Default::default()
            },
        ]);
        state.pods.insert(
            ObjectKey::new("weft-system", "weft-node-agent-x7"),
            Arc::new(pod),
        );
        assert_eq!(
            owning_daemonset(&state, &own()).as_deref(),
            Some("weft-node-agent")
        );
        assert!(!namespace_terminating(&state, &own()));

        let mut ns = Namespace::default();
        ns.metadata.name = Some("weft-system".into());
        ns.metadata.deletion_timestamp = Some(Time(Default::default()));
        state
            .namespaces
            .insert(ObjectKey::new("", "weft-system"), Arc::new(ns));
        assert!(namespace_terminating(&state, &own()));
    }
}
