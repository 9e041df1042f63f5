//! The `weft-cni` binary as a runtime runs it: malformed input gets a CNI
//! error object, never a panic. No root needed.

use std::io::Write;
use std::process::{Command, Stdio};

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
