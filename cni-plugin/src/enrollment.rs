//! Who is in the mesh, and how the plugin and the agent talk about it.
//!
//! - [`decide`]: the one enrollment rule (docs/design.md §2), from pod and namespace
//!   labels.
//! - [`AgentRequest`] / [`AgentResponse`]: the plugin -> agent protocol, one
//!   JSON request per connection on a unix stream socket (the client writes
//!   its request and shuts down its write half; the agent answers with one
//!   JSON object and closes).
//! - [`EnrollmentCache`]: what the agent last knew, written to disk so the
//!   plugin can still fail closed for an enrolled pod when the agent is down.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cni::PodRef;
use crate::report::CoverageReport;

/// The label that enrolls a namespace or a pod.
pub const DATAPLANE_MODE_LABEL: &str = "weft.dev/dataplane-mode";
/// Its value that enrolls.
pub const AMBIENT: &str = "ambient";
/// Its value on a pod that opts out of an enrolled namespace.
pub const NONE: &str = "none";
/// Pod annotation carrying the netns path in the files registry (local mode).
pub const NETNS_ANNOTATION: &str = "weft.dev/netns";

/// The pod label that keeps a pod's local legs on TCP (`off`) on a node
/// that runs the local-leg bypass, read when the pod is enrolled: for
/// applications that read and write one blocking socket from two threads
/// (docs/design.md §7).
pub const LOCAL_BYPASS_LABEL: &str = "weft.dev/local-bypass";

/// Whether a pod belongs in the mesh: its own label wins (`none` opts out,
/// `ambient` opts in), otherwise its namespace's label decides.
pub fn decide(pod_mode: Option<&str>, namespace_mode: Option<&str>) -> bool {
    match pod_mode {
        Some(NONE) => false,
        Some(AMBIENT) => true,
        _ => namespace_mode == Some(AMBIENT),
    }
}

/// The plugin's questions to the agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AgentRequest {
    /// CNI ADD: enroll the pod if it belongs in the mesh.
    Add(PodAttachment),
    /// CNI DEL: the pod is going away.
    Del {
        /// The pod.
        pod: PodRef,
        /// The runtime's container id.
        container_id: String,
    },
    /// CNI CHECK: is the pod enrolled as it should be?
    Check {
        /// The pod.
        pod: PodRef,
    },
    /// The coverage report for this node (the CLI asks this).
    Coverage,
}

/// A pod being attached by the runtime.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodAttachment {
    /// The pod.
    pub pod: PodRef,
    /// The runtime's container (sandbox) id.
    pub container_id: String,
    /// `CNI_NETNS`: a path to the pod's network namespace.
    pub netns: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// The IPs from `prevResult`.
    pub ips: Vec<IpAddr>,
}

/// The agent's answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AgentResponse {
    /// The pod is enrolled: its redirect rules are in place.
    Enrolled,
    /// The pod is not in the mesh.
    Skipped {
        /// Why.
        reason: String,
    },
    /// Done (DEL, or CHECK of a pod that is as it should be).
    Ok,
    /// The agent could not do it; the plugin fails the command.
    Error {
        /// What went wrong.
        message: String,
    },
    /// Answer to [`AgentRequest::Coverage`].
    Coverage(CoverageReport),
}

/// Why a request to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentClientError {
    /// No agent answered on the socket.
    #[error("node agent unreachable at {path}: {source}")]
    Unreachable {
        /// The socket path.
        path: String,
        /// The connect or I/O error.
        source: std::io::Error,
    },
    /// The agent answered something that is not a response.
    #[error("node agent sent an invalid response: {0}")]
    Protocol(String),
}

/// Largest request or response accepted on the socket.
pub const MAX_FRAME: u64 = 1 << 20;

/// Sends one request to the agent at `socket` and waits at most `timeout` for
/// each step (connect, write, read).
pub fn ask_agent(
    socket: &Path,
    request: &AgentRequest,
    timeout: Duration,
) -> Result<AgentResponse, AgentClientError> {
    let unreachable = |source| AgentClientError::Unreachable {
        path: socket.display().to_string(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(unreachable)?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(unreachable)?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(unreachable)?;
    let body =
        serde_json::to_vec(request).map_err(|e| AgentClientError::Protocol(e.to_string()))?;
    stream.write_all(&body).map_err(unreachable)?;
    stream
        .shutdown(std::net::Shutdown::Write)
        .map_err(unreachable)?;
    let mut reply = Vec::new();
    (&mut stream)
        .take(MAX_FRAME)
        .read_to_end(&mut reply)
        .map_err(unreachable)?;
    serde_json::from_slice(&reply).map_err(|e| AgentClientError::Protocol(e.to_string()))
}

/// The agent's last view of enrollment, for the plugin to fall back on.
///
/// Only labels are recorded, not pods: a new pod is unknown to the agent
/// until the runtime attaches it, but its namespace (and, when the pod object
/// was seen first, its own label) is known.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnrollmentCache {
    /// Namespaces labelled `weft.dev/dataplane-mode=ambient`.
    pub ambient_namespaces: BTreeSet<String>,
    /// Pods (`namespace/name`) with their own `weft.dev/dataplane-mode` label.
    pub pod_modes: BTreeMap<String, String>,
}

impl EnrollmentCache {
    /// Whether `pod` must be enrolled according to this cache.
    pub fn must_enroll(&self, pod: &PodRef) -> bool {
        let key = format!("{}/{}", pod.namespace, pod.name);
        let ns_mode = self
            .ambient_namespaces
            .contains(&pod.namespace)
            .then_some(AMBIENT);
        decide(self.pod_modes.get(&key).map(String::as_str), ns_mode)
    }

    /// Reads the cache; `Ok(None)` if it does not exist.
    pub fn load(path: &Path) -> std::io::Result<Option<EnrollmentCache>> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes the cache atomically (temp file + rename), so the plugin never
    /// reads half a file.
    pub fn store(&self, path: &Path) -> std::io::Result<()> {
        let body = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        crate::files::write_atomically(path, &body, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision() {
        assert!(decide(None, Some(AMBIENT)));
        assert!(!decide(Some(NONE), Some(AMBIENT)));
        assert!(decide(Some(AMBIENT), None));
        assert!(!decide(None, None));
        assert!(!decide(Some("bogus"), None));
        assert!(!decide(None, Some("other")));
    }

    #[test]
    fn cache_and_wire_format() {
        let mut cache = EnrollmentCache::default();
        cache.ambient_namespaces.insert("mesh".into());
        cache.pod_modes.insert("mesh/out".into(), NONE.into());
        cache.pod_modes.insert("plain/in".into(), AMBIENT.into());
        let pod = |ns: &str, n: &str| PodRef {
            namespace: ns.into(),
            name: n.into(),
            uid: None,
        };
        assert!(cache.must_enroll(&pod("mesh", "a")));
        assert!(!cache.must_enroll(&pod("mesh", "out")));
        assert!(cache.must_enroll(&pod("plain", "in")));
        assert!(!cache.must_enroll(&pod("plain", "b")));

        let req: AgentRequest = serde_json::from_str(
            r#"{"kind":"add","pod":{"namespace":"n","name":"p"},"container_id":"c","netns":"/x","ifname":"eth0","ips":["10.0.0.1"]}"#,
        )
        .expect("request");
        assert!(matches!(req, AgentRequest::Add(ref a) if a.ips.len() == 1));
        assert_eq!(
            serde_json::to_string(&AgentResponse::Enrolled).expect("json"),
            r#"{"kind":"enrolled"}"#
        );
    }
}
