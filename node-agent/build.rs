//! Compiles the local-leg bypass program (bpf/local_bypass.bpf.c) with
//! clang for the BPF target. Without clang the agent is built anyway, with
//! an empty object, and reports the bypass as unavailable at run time: the
//! data path is then exactly the TCP one.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let source = "bpf/local_bypass.bpf.c";
    println!("cargo:rerun-if-changed={source}");
    println!("cargo:rerun-if-env-changed=WEFT_BPF_CLANG");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("local_bypass.bpf.o");
    let clang = std::env::var("WEFT_BPF_CLANG").unwrap_or_else(|_| "clang".into());
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let multiarch = match arch.as_str() {
        "aarch64" => "aarch64-linux-gnu",
        _ => "x86_64-linux-gnu",
    };
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        // Debug info (needed for BTF) names the source: keep the build
        // directory out of it so the object is the same on every machine.
        .arg(format!("-fdebug-prefix-map={manifest}=."))
        .arg(format!("-I/usr/include/{multiarch}"))
        .args(["-c", source, "-o"])
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{clang} failed to compile {source} ({s})"),
        Err(e) => {
            println!(
                "cargo:warning=no BPF compiler ({clang}: {e}): the node agent is built without the local-leg bypass (apt-get install clang libbpf-dev)"
            );
            std::fs::write(&out, []).expect("write an empty BPF object");
            // A path that does not exist is always out of date: the script
            // runs again on the next build, and picks up a clang installed
            // since (a first build before `make deps`).
            println!("cargo:rerun-if-changed=/nonexistent/weft-bpf-clang");
        }
    }
}
