//! Compiles `proto/rap/v1/*.proto` with protox (a pure-Rust protobuf
//! compiler, so no system `protoc` is needed) and generates prost messages
//! and tonic clients/servers.

use std::path::Path;

const PROTO_ROOT: &str = "proto";
const PROTO_FILES: &[&str] = &[
    "rap/v1/common.proto",
    "rap/v1/shards.proto",
    "rap/v1/authority.proto",
    "rap/v1/raft.proto",
    "rap/v1/shard.proto",
    "rap/v1/enrollment.proto",
    "rap/v1/agent.proto",
    "rap/v1/admin.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for file in PROTO_FILES {
        println!(
            "cargo:rerun-if-changed={}",
            Path::new(PROTO_ROOT).join(file).display()
        );
    }
    let descriptors = protox::compile(PROTO_FILES, [PROTO_ROOT])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .emit_rerun_if_changed(false)
        .compile_fds(descriptors)?;
    Ok(())
}
