//! The `weft-node-agent` binary in local mode (files registry) with the real
//! CNI chain: it installs the plugin, enrolls pods at ADD and when their
//! namespace gets labelled in the manifests, reports coverage, leaves the
//! plugin failing closed when it is stopped, and uninstalls byte-for-byte.
//! Needs root and the CNI plugins.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use common::*;
use weft_node_agent::redirect::{Backend, DEFAULT_PROBE_SOURCE, Redirector};
use weft_testkit::eventually;

const WAIT: Duration = Duration::from_secs(15);

/// The agent process, killed on drop.
struct AgentProcess(Child);

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn namespace_yaml(name: &str, ambient: bool) -> String {
    let labels = if ambient {
        "\n  labels:\n    weft.dev/dataplane-mode: ambient"
    } else {
        ""
    };
    format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}{labels}\n")
}

fn pod_yaml(p: &PodSpec<'_>, ip: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {ns}
  uid: {uid}
  annotations:
    weft.dev/netns: {netns}
spec:
  nodeName: node-1
  containers:
  - name: app
    image: example
{status}",
        status = if ip.is_empty() {
            "status:\n  phase: Pending\n".to_string()
        } else {
            format!("status:\n  phase: Running\n  podIP: {ip}\n")
        },
        name = p.name,
        ns = p.namespace,
        uid = p.uid,
        netns = p.netns.path().display()
    )
}

fn agent_cli() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weft-node-agent"))
}

#[test]
fn agent_in_files_mode_end_to_end() {
    require_root_and_tools();
    let node = NamedNetns::new("wn");
    let cni = CniEnvFixture::new();
    let manifests = cni.dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).expect("mkdir");
    std::fs::create_dir_all(cni.conf_dir()).expect("mkdir");
    let primary = cni.primary_conflist("10.252.0.0/24");
    let conf_file = cni.conf_dir().join("10-weft-test.conflist");
    std::fs::write(&conf_file, &primary).expect("write conflist");
    std::fs::write(
        manifests.join("ns.yaml"),
        namespace_yaml("mesh", true) + "---\n" + &namespace_yaml("late", false),
    )
    .expect("write manifests");
    let handoff: PathBuf = cni.dir.path().join("ztunnel.sock");

    let dirs = |cmd: &mut Command| {
        cmd.arg("--cni-bin-dir")
            .arg(cni.bin_dir())
            .arg("--cni-conf-dir")
            .arg(cni.conf_dir())
            .arg("--state-dir")
            .arg(cni.state_dir());
    };
    let mut cmd = agent_cli();
    cmd.args([
        "run",
        "--node",
        "node-1",
        "--registry",
        "files",
        "--resync-seconds",
        "1",
    ])
    .arg("--manifests")
    .arg(&manifests)
    .arg("--plugin-binary")
    .arg(plugin_binary())
    .arg("--agent-socket")
    .arg(cni.agent_socket())
    .arg("--handoff-socket")
    .arg(&handoff)
    .arg("--enrollment-cache")
    .arg(cni.cache());
    dirs(&mut cmd);
    let agent = AgentProcess(cmd.spawn().expect("start agent"));

    // Installed: the binary, and the entry at the end of the conflist.
    eventually("the agent to install the plugin", WAIT, || {
        cni.bin_dir().join("weft-cni").exists()
            && cni.conflist()["plugins"]
                .as_array()
                .and_then(|p| p.last())
                .is_some_and(|p| p["type"] == "weft-cni")
    });
    let bins = [Path::new(DEBIAN_CNI_DIR), &cni.bin_dir()];
    let (a_ns, c_ns, x_ns, y_ns) = (
        NamedNetns::new("wpa"),
        NamedNetns::new("wpc"),
        NamedNetns::new("wpx"),
        NamedNetns::new("wpy"),
    );
    let a = PodSpec {
        namespace: "mesh",
        name: "a",
        uid: unique("uid-a-"),
        netns: &a_ns,
    };
    let c = PodSpec {
        namespace: "late",
        name: "c",
        uid: unique("uid-c-"),
        netns: &c_ns,
    };
    let redirector = Redirector::new(Backend::Auto, DEFAULT_PROBE_SOURCE);

    // The pods exist (scheduled, no sandbox yet) before their ADD, as in
    // Kubernetes: the agent learns their service accounts from the registry.
    std::fs::write(
        manifests.join("pods.yaml"),
        pod_yaml(&a, "") + "---\n" + &pod_yaml(&c, ""),
    )
    .expect("pending pods");

    // A pod of an enrolled namespace is enrolled at ADD.
    let ra = run_chain(&node, &cni.conflist(), &bins, "ADD", &a, None);
    assert!(ra.ok, "ADD a failed in {}: {}", ra.plugin, ra.stdout);
    assert!(
        redirector
            .inspect(&a_ns.open())
            .expect("inspect")
            .complete()
    );
    // A pod of a plain namespace is not.
    let rc = run_chain(&node, &cni.conflist(), &bins, "ADD", &c, None);
    assert!(rc.ok, "ADD c failed in {}: {}", rc.plugin, rc.stdout);
    assert!(redirector.inspect(&c_ns.open()).expect("inspect").empty());

    // The kubelet reports both pods; then the namespace gets its label while
    // C runs: C is enrolled.
    let ip = |r: &ChainResult| result_ip(&r.stdout).to_string();
    std::fs::write(
        manifests.join("pods.yaml"),
        pod_yaml(&a, &ip(&ra)) + "---\n" + &pod_yaml(&c, &ip(&rc)),
    )
    .expect("pods");
    std::fs::write(
        manifests.join("ns.yaml"),
        namespace_yaml("mesh", true) + "---\n" + &namespace_yaml("late", true),
    )
    .expect("label");
    eventually(
        "C to be enrolled when its namespace is labelled",
        WAIT,
        || redirector.inspect(&c_ns.open()).is_ok_and(|s| s.complete()),
    );

    // A ztunnel connects and gets both, with the listeners the agent made
    // in them: once it has acked, the node is covered.
    let z = FakeZtunnel::connect(&handoff, vec![]);
    let got = z.wait_for(3);
    assert!(
        got.iter().any(|e| e.starts_with(&format!("add {}", a.uid))),
        "{got:?}"
    );
    assert!(
        got.iter().any(|e| e.starts_with(&format!("add {}", c.uid))),
        "{got:?}"
    );
    let coverage = || {
        let out = agent_cli()
            .arg("coverage")
            .arg("--agent-socket")
            .arg(cni.agent_socket())
            .output()
            .expect("coverage");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("coverage JSON");
        (out.status.code(), report)
    };
    let report = eventually("the node to be covered", WAIT, || match coverage() {
        (Some(0), report) => Ok(report),
        (code, report) => Err(format!("exit {code:?}: {report:#}")),
    });
    let pods = report["pods"].as_array().expect("pods");
    assert_eq!(
        pods.iter().filter(|p| p["enrolled"] == true).count(),
        2,
        "{report:#}"
    );

    // Label removed: C leaves the mesh, ztunnel is told.
    std::fs::write(
        manifests.join("ns.yaml"),
        namespace_yaml("mesh", true) + "---\n" + &namespace_yaml("late", false),
    )
    .expect("unlabel");
    eventually("C to lose its rules", WAIT, || {
        redirector.inspect(&c_ns.open()).is_ok_and(|s| s.empty())
    });
    eventually("the fake ztunnel to be told C was deleted", WAIT, || {
        z.entries().contains(&format!("delete {}", c.uid))
    });
    drop(z);

    // The agent stops: enrolled namespaces fail closed, others still start.
    drop(agent);
    let x = PodSpec {
        namespace: "mesh",
        name: "x",
        uid: unique("uid-x-"),
        netns: &x_ns,
    };
    let y = PodSpec {
        namespace: "late",
        name: "y",
        uid: unique("uid-y-"),
        netns: &y_ns,
    };
    let rx = run_chain(&node, &cni.conflist(), &bins, "ADD", &x, None);
    assert!(
        !rx.ok && rx.plugin == "weft-cni",
        "enrolled pod started with the agent down: {rx:?}"
    );
    let ry = run_chain(&node, &cni.conflist(), &bins, "ADD", &y, None);
    assert!(ry.ok, "plain pod failed with the agent down: {}", ry.stdout);

    // Uninstall: the original conflist, byte for byte, and no binary.
    let mut cmd = agent_cli();
    cmd.arg("uninstall");
    dirs(&mut cmd);
    assert!(cmd.status().expect("uninstall").success());
    assert_eq!(std::fs::read_to_string(&conf_file).expect("read"), primary);
    assert!(!cni.bin_dir().join("weft-cni").exists());
}
