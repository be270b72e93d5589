//! The `berth` binary.

use clap::Parser;

/// Berth: a Raft-replicated, multi-tenant resource scheduler.
///
/// This build contains the deterministic scheduler core only; the server, the local cluster
/// (`berth up`) and the client commands arrive with replication and the public API.
#[derive(Parser)]
#[command(name = "berth", version, about, long_about = None)]
struct Cli {}

fn main() {
    Cli::parse();
}
