//! Compiles `proto/rap/v1/*.proto` with protox (a pure-Rust protobuf
//! compiler, so no system `protoc` is needed) and generates prost messages
//! and tonic clients/servers. The encoded `FileDescriptorSet` (with the
//! files' comments) goes to `OUT_DIR/rap_v1_descriptor_set.bin`, for the
//! servers' gRPC reflection (`rap_proto::pb::FILE_DESCRIPTOR_SET`).

use prost::Message;
use std::path::{Path, PathBuf};

const PROTO_ROOT: &str = "proto";
/// The descriptor set's file in `OUT_DIR` (`tonic::include_file_descriptor_set!`
/// adds the `.bin`).
const DESCRIPTOR_SET: &str = "rap_v1_descriptor_set";
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
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join(format!("{DESCRIPTOR_SET}.bin")),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .emit_rerun_if_changed(false)
        .compile_fds(descriptors)?;
    Ok(())
}
