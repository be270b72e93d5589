//! Compiles the protos with `protox` (pure Rust: no system `protoc` needed).

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The public API; the replicas' peer protocol is compiled alongside but not advertised
    // by reflection on the API port (it is served only on the peer port).
    let api = [
        "proto/berth/v1/common.proto",
        "proto/berth/v1/tenants.proto",
        "proto/berth/v1/workers.proto",
        "proto/berth/v1/scheduler.proto",
        "proto/berth/v1/leases.proto",
        "proto/berth/v1/billing.proto",
        "proto/berth/v1/cluster.proto",
    ];
    let peer = "proto/berth/raft/v1/raft.proto";
    println!("cargo:rerun-if-changed=proto");
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let api_descriptors = protox::compile(api, ["proto"])?;
    std::fs::write(out_dir.join("berth_api_descriptor.bin"), api_descriptors.encode_to_vec())?;
    let descriptors = protox::compile(api.iter().copied().chain([peer]), ["proto"])?;
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
