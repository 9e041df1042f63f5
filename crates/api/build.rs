//! Generates the Rust for weft's .proto files with cargo alone: `protox` is a
//! pure-Rust protobuf compiler, so no system `protoc` is needed.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &[
    "proto/weft/config/v1/config.proto",
    "proto/weft/ca/v1/ca.proto",
    "proto/weft/nodeagent/v1/handoff.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds.clone())?;

    // Proto3 JSON mapping (camelCase fields, enums by name) for the local
    // config file, the admin API and `weftctl -o json|yaml`.
    pbjson_build::Builder::new()
        .register_descriptors(&fds.encode_to_vec())?
        .out_dir(&out_dir)
        .build(&[".weft"])?;
    Ok(())
}
