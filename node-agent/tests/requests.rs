//! The plugin's requests, through the real `weft-cni` binary: the agent's
//! sockets answer root and its own user only (owner-only files, and a
//! peer-credential check that holds when a mode is loosened); an ADD naming
//! the agent's own network namespace is refused; an ADD for a pod the
//! registry does not list yet waits for it (its service account is its
//! identity) and is refused if it never comes. Needs root (to run the
//! plugin as another user).

mod common;

use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::{Namespace, Pod, PodSpec as K8sPodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use weft_cni::enrollment::{AMBIENT, DATAPLANE_MODE_LABEL};
use weft_node_agent::agent::{AgentConfig, NetnsDiscovery, NodeAgent, serve_requests};
use weft_node_agent::handoff::{HandoffHub, HandoffServer};
use weft_node_agent::redirect::{Backend, Redirector};
use weft_testkit::eventually;

const NOBODY: u32 = 65534;

fn shop() -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some("shop".into()),
            labels: Some([(DATAPLANE_MODE_LABEL.to_string(), AMBIENT.to_string())].into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn web() -> Pod {
    pod("web")
}

fn pod(name: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("shop".into()),
            uid: Some(format!("u-{name}")),
            ..Default::default()
        },
        spec: Some(K8sPodSpec {
            node_name: Some("node-1".into()),
            service_account_name: Some(name.into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Runs the plugin's ADD for pod `shop/web` against `socket`, as `uid`;
/// returns its stdout.
fn add_as(uid: u32, socket: &Path, netns: &str) -> String {
    add_pod_as(uid, socket, netns, "web")
}

fn add_pod_as(uid: u32, socket: &Path, netns: &str, name: &str) -> String {
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "test",
        "type": "weft-cni",
        "agentSocket": socket,
        "enrollmentCache": "/nonexistent/cache.json",
        "agentTimeoutMs": 2000,
        "prevResult": {"cniVersion": "1.0.0", "ips": [{"address": "10.250.0.5/24"}]},
    });
    let mut child = Command::new(plugin_binary())
        .env_clear()
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", "c1")
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .env(
            "CNI_ARGS",
            format!("K8S_POD_NAMESPACE=shop;K8S_POD_NAME={name};K8S_POD_UID=u-{name}"),
        )
        .uid(uid)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("plugin");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(conf.to_string().as_bytes())
        .expect("conf");
    let out = child.wait_with_output().expect("plugin output");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn only_root_and_the_agent_user_are_answered() {
    require_root_and_tools();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("dir");
    // Traversable by anyone: only the sockets' own modes and the credential
    // check stand between another user and the agent.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let socket = dir.path().join("agent.sock");
    let handoff = dir.path().join("ztunnel.sock");
    let hub = HandoffHub::new();
    let agent_hub = hub.clone();
    let agent = NodeAgent::new(
        AgentConfig {
            node: "node-1".into(),
            discovery: NetnsDiscovery::Annotation,
            enrollment_cache: None,
            redirector: Redirector::new(Backend::Auto, Ipv4Addr::new(10, 250, 0, 1)),
            identity_wait: Duration::from_millis(1500),
            host_probes: None,
            local_bypass: std::sync::Arc::new(weft_node_agent::bypass::Bypass::Off),
        },
        agent_hub,
    );
    rt.block_on(agent.sync(&[web()], &[shop()]));
    let path = socket.clone();
    rt.spawn(async move { serve_requests(agent, &path).await });
    let server = rt
        .block_on(async { HandoffServer::bind(&handoff, hub, Duration::from_secs(5)) })
        .expect("handoff");
    rt.spawn(server.run());
    eventually("the request socket", Duration::from_secs(5), || {
        socket.exists()
    });

    for path in [&socket, &handoff] {
        let mode = std::fs::metadata(path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", path.display());
    }

    // Root (the runtime) is answered; and a pod's ADD naming the agent's
    // own namespace (here: /proc/self of the agent's process) is refused
    // rather than getting redirect rules on the node itself.
    let as_root = add_as(0, &socket, "/proc/self/ns/net");
    assert!(!as_root.contains("refused: peer uid"), "{as_root}");
    assert!(
        as_root.contains("is the node agent's own network namespace, not a pod's"),
        "{as_root}"
    );

    // Another user is refused by the check itself once the mode is loosened.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).expect("loosen");
    let as_nobody = add_as(NOBODY, &socket, "/proc/self/ns/net");
    assert!(
        as_nobody.contains(&format!("refused: peer uid {NOBODY}")),
        "{as_nobody}"
    );
}

#[test]
fn an_add_waits_for_the_registry_to_name_the_pods_identity() {
    require_root_and_tools();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("dir");
    let socket = dir.path().join("agent.sock");
    let agent = NodeAgent::new(
        AgentConfig {
            node: "node-1".into(),
            discovery: NetnsDiscovery::Annotation,
            enrollment_cache: None,
            redirector: Redirector::new(Backend::Auto, Ipv4Addr::new(10, 250, 0, 1)),
            identity_wait: Duration::from_millis(1500),
            host_probes: None,
            local_bypass: std::sync::Arc::new(weft_node_agent::bypass::Bypass::Off),
        },
        HandoffHub::new(),
    );
    rt.block_on(agent.sync(&[], &[shop()]));
    let path = socket.clone();
    let server = agent.clone();
    rt.spawn(async move { serve_requests(server, &path).await });
    eventually("the request socket", Duration::from_secs(5), || {
        socket.exists()
    });

    // Never listed: refused, naming why, rather than handed over as
    // `default`.
    let never = add_pod_as(0, &socket, "/proc/self/ns/net", "ghost");
    assert!(
        never.contains("is not in the node agent's registry") && never.contains("service account"),
        "{never}"
    );

    // Listed while the ADD waits: the ADD goes on to the pod's namespace
    // (here the agent's own, so it ends there, past the wait).
    let late = agent.clone();
    rt.spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        late.sync(&[pod("late")], &[shop()]).await;
    });
    let listed = add_pod_as(0, &socket, "/proc/self/ns/net", "late");
    assert!(
        listed.contains("is the node agent's own network namespace"),
        "{listed}"
    );
}
