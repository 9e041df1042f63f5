//! weft-cni runs on the host's filesystem, not in an image: built static
//! (scripts/build-cni-static.sh, what `make images` puts in the node agent's
//! image), it answers with no library present: alone in an empty root,
//! under chroot (which needs root; skipped otherwise).

use std::process::{Command, Stdio};

#[test]
fn the_static_build_answers_version_alone_in_an_empty_root() {
    let uid = Command::new("id").arg("-u").output().expect("id -u");
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        eprintln!("skipped: chroot needs root");
        return;
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scripts/build-cni-static.sh"
    );
    // The dev profile, the one `make test` builds: the same flags as
    // `make images`' dist build without fat LTO, and its host artifacts
    // (target/debug) are already built, where a release build of another
    // process could hold target/release for minutes.
    let built = Command::new(script)
        .arg("dev")
        .stderr(Stdio::inherit())
        .output()
        .expect("run build-cni-static.sh");
    assert!(built.status.success(), "the static build fails");
    let binary = String::from_utf8(built.stdout).expect("a path");
    let root = tempfile::tempdir().expect("tmp");
    std::fs::copy(binary.trim(), root.path().join("weft-cni")).expect("copy");
    // An absolute path: the cleared environment has no PATH to find it by.
    let out = Command::new("/usr/sbin/chroot")
        .arg(root.path())
        .arg("/weft-cni")
        .env_clear()
        .env("CNI_COMMAND", "VERSION")
        .stdin(Stdio::null())
        .output()
        .expect("chroot");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "weft-cni alone in {}: {:?} {stdout} {}",
        root.path().display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let reply: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert!(
        reply["supportedVersions"]
            .as_array()
            .is_some_and(|v| v.contains(&"1.0.0".into())),
        "{reply}"
    );
    // Nothing else in the root: the answer came from the binary alone.
    assert_eq!(std::fs::read_dir(root.path()).expect("ls").count(), 1);
}
