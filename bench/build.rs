//! Compiles the benchmark's protos with protox (no system `protoc`): the
//! subset of etcd's v3 API the load generator calls (`proto/etcd.proto`)
//! and an empty round trip for the machine's gRPC floor
//! (`proto/ping.proto`).

const PROTO_ROOT: &str = "proto";
const PROTO_FILES: &[&str] = &["etcd.proto", "ping.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for file in PROTO_FILES {
        println!("cargo:rerun-if-changed={PROTO_ROOT}/{file}");
    }
    let descriptors = protox::compile(PROTO_FILES, [PROTO_ROOT])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .emit_rerun_if_changed(false)
        .compile_fds(descriptors)?;
    Ok(())
}
