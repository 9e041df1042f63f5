//! The `weft-cni` binary as a runtime runs it, and the installer keeping its
//! entry in a conflist that another CNI rewrites. No root needed.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use weft_cni::install::{ConfInstaller, PLUGIN_TYPE};

fn run_plugin(env: &[(&str, &str)], stdin: &[u8]) -> (i32, serde_json::Value) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weft-cni"));
    cmd.env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn weft-cni");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write");
    let out = child.wait_with_output().expect("output");
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    (out.status.code().unwrap_or(-1), json)
}

const ADD: &[(&str, &str)] = &[
    ("CNI_COMMAND", "ADD"),
    ("CNI_CONTAINERID", "c1"),
    ("CNI_NETNS", "/var/run/netns/absent"),
    ("CNI_IFNAME", "eth0"),
    ("CNI_PATH", "/usr/lib/cni"),
];

#[test]
fn malformed_stdin_is_a_cni_error() {
    for garbage in [
        &b""[..],
        b"{",
        b"[1,2]",
        b"\xff\xfe",
        br#"{"cniVersion":"1.0.0"}"#,
    ] {
        let (code, err) = run_plugin(ADD, garbage);
        assert_eq!(code, 1, "{garbage:?}");
        assert_eq!(err["code"], 6, "{garbage:?}: {err}");
        assert!(
            err["msg"].as_str().is_some_and(|m| m.contains("stdin")),
            "{err}"
        );
    }
    let (code, err) = run_plugin(
        ADD,
        br#"{"cniVersion":"0.1.0","name":"n","type":"weft-cni"}"#,
    );
    assert_eq!((code, err["code"].clone()), (1, 1.into()), "{err}");
}

#[test]
fn bad_environment_is_a_cni_error() {
    let (code, err) = run_plugin(&[("CNI_COMMAND", "ADD")], b"{}");
    assert_eq!(code, 1);
    assert_eq!(err["code"], 4);
    assert!(
        err["msg"]
            .as_str()
            .is_some_and(|m| m.contains("CNI_CONTAINERID")),
        "{err}"
    );
    let (_, err) = run_plugin(&[], b"{}");
    assert!(
        err["msg"]
            .as_str()
            .is_some_and(|m| m.contains("CNI_COMMAND")),
        "{err}"
    );
}

#[test]
fn version() {
    let (code, v) = run_plugin(&[("CNI_COMMAND", "VERSION")], br#"{"cniVersion":"1.0.0"}"#);
    assert_eq!(code, 0);
    assert!(
        v["supportedVersions"]
            .as_array()
            .is_some_and(|a| a.contains(&"1.0.0".into()))
    );
}

#[test]
fn installer_survives_rewrite_and_uninstalls_byte_for_byte() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tmp");
    let netd = dir.path().join("net.d");
    std::fs::create_dir_all(&netd).expect("mkdir");
    let file = netd.join("10-flannel.conflist");
    let original = "{\n  \"name\": \"cbr0\",\n  \"cniVersion\": \"1.0.0\",\n  \"plugins\": [\n    {\"type\": \"bridge\", \"ipam\": {\"type\": \"host-local\"}},\n    {\"type\": \"portmap\", \"capabilities\": {\"portMappings\": true}}\n  ]\n}\n";
    std::fs::write(&file, original).expect("write");
    let installer = ConfInstaller::new(
        &netd,
        dir.path().join("state"),
        serde_json::json!({"agentSocket": "/x"}),
    );
    let count = || {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap_or_default())
                .unwrap_or_default();
        v["plugins"]
            .as_array()
            .map(|p| p.iter().filter(|p| p["type"] == PLUGIN_TYPE).count())
            .unwrap_or(0)
    };
    let last_is_weft = || {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap_or_default())
                .unwrap_or_default();
        v["plugins"]
            .as_array()
            .and_then(|p| p.last())
            .is_some_and(|p| p["type"] == PLUGIN_TYPE)
    };
    let task = rt.spawn(installer.clone().keep_installed(Duration::from_millis(50)));
    assert!(common::eventually(Duration::from_secs(10), || count() == 1 && last_is_weft()));

    // "Another CNI" rewrites its config: the entry is put back, once.
    let rewritten = original.replace("cbr0", "cbr1");
    std::fs::write(&file, &rewritten).expect("rewrite");
    assert!(common::eventually(Duration::from_secs(10), || count() == 1
        && std::fs::read_to_string(&file)
            .unwrap_or_default()
            .contains("cbr1")));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(count(), 1, "inserted more than once");

    task.abort();
    let _ = rt.block_on(task);
    installer.uninstall().expect("uninstall");
    assert_eq!(
        std::fs::read_to_string(&file).expect("read"),
        rewritten,
        "not restored byte-for-byte"
    );
}
