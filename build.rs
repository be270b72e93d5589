//! Compiles the protos with `protox` (pure Rust: no system `protoc` needed).

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The public API. (Replicas talk to each other in frames of their own on the peer port:
    // see src/network/mod.rs.)
    let api = [
        "proto/berth/v1/common.proto",
        "proto/berth/v1/tenants.proto",
        "proto/berth/v1/workers.proto",
        "proto/berth/v1/scheduler.proto",
        "proto/berth/v1/leases.proto",
        "proto/berth/v1/billing.proto",
        "proto/berth/v1/cluster.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptors = protox::compile(api, ["proto"])?;
    std::fs::write(out_dir.join("berth_api_descriptor.bin"), descriptors.encode_to_vec())?;
    tonic_prost_build::configure()
        // Ordered maps: labels and quotas convert to the core's BTreeMaps as they are.
        .btree_map(".")
        // The CLI prints responses as JSON with --json.
        .message_attribute(".berth.v1", "#[derive(serde::Serialize)]")
        .enum_attribute(".berth.v1", "#[derive(serde::Serialize)]")
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
