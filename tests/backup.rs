//! Snapshots on demand, backups and restores through the public API and `server::restore`: a
//! cluster restored from a backup holds every write acknowledged before the backup began and
//! none made after it was taken, remembers its request ids, keeps its tenants' tokens and goes
//! on from the backup's log index; a damaged backup, a used directory or a tenant's token is
//! refused.

mod common;

use std::collections::BTreeMap;

use berth::api::pb;
use common::*;
use sha2::{Digest, Sha256};
use tonic::Code;

/// The backup file a replica streams, checked against its header (size and SHA-256).
async fn backup(c: &mut Clients) -> (pb::BackupHeader, Vec<u8>) {
    let mut stream = c
        .cluster
        .backup(authed(ADMIN_TOKEN, pb::BackupRequest {}))
        .await
        .expect("the backup stream opens")
        .into_inner();
    let mut header = None;
    let mut file = Vec::new();
    while let Some(chunk) = stream.message().await.expect("a chunk") {
        match chunk.part.expect("a part") {
            pb::backup_chunk::Part::Header(h) => {
                assert!(header.is_none(), "one header");
                header = Some(h);
            }
            pb::backup_chunk::Part::Data(bytes) => {
                assert!(header.is_some(), "the header comes first");
                assert!(bytes.len() <= berth::api::BACKUP_CHUNK_BYTES);
                file.extend(bytes);
            }
        }
    }
    let header = header.expect("a header");
    assert_eq!(header.file_bytes, file.len() as u64);
    assert_eq!(header.sha256, berth::raft::replica::hex(&Sha256::digest(&file)));
    (header, file)
}

fn get(tenant: &str, id: &str) -> pb::GetPlacementRequest {
    pb::GetPlacementRequest { tenant_id: tenant.into(), placement_id: id.into(), read: None }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_cluster_holds_what_was_acknowledged_before_the_backup_and_goes_on() {
    let (mut cluster, mut c) = setup().await;
    // A second term: a restored replica must not elect a leader in a term before the backup's.
    let old = cluster.leader().await;
    cluster.stop(old).await;
    eventually("a new leader", || {
        let ids = cluster.running();
        ids.iter().any(|id| cluster.replica(*id).status().leader.is_some_and(|l| l != old))
    })
    .await;
    cluster.restart(old).await;
    create_tenant(&mut c, "acme").await;
    let token = issue_token(&mut c, "acme").await;
    register(&mut c, "w1", 4_000).await;
    let first = place("acme", spec("before", 1_000));
    let placed = c.scheduler.place(authed(&token, first.clone())).await.expect("placed");
    let placed_at = placed.into_inner().write.expect("a write").log_index;

    // A tenant's token takes neither a snapshot nor a backup.
    let denied = c
        .cluster
        .create_snapshot(authed(&token, pb::CreateSnapshotRequest {}))
        .await
        .expect_err("admin only");
    assert_eq!(denied.code(), Code::PermissionDenied);
    let denied = match c.cluster.backup(authed(&token, pb::BackupRequest {})).await {
        Ok(stream) => stream.into_inner().message().await.expect_err("admin only"),
        Err(status) => status,
    };
    assert_eq!(denied.code(), Code::PermissionDenied);

    // A snapshot on demand holds every acknowledged write.
    let made = c
        .cluster
        .create_snapshot(authed(ADMIN_TOKEN, pb::CreateSnapshotRequest {}))
        .await
        .expect("a snapshot")
        .into_inner()
        .snapshot
        .expect("its summary");
    assert!(made.log_index >= placed_at && made.raft_index > 0 && made.bytes > 0, "{made:?}");

    let (header, file) = backup(&mut c).await;
    let info = header.snapshot.expect("what the backup holds");
    assert!(info.log_index >= placed_at, "{info:?} holds the placement at {placed_at}");
    let after = place("acme", spec("after", 1_000));
    c.scheduler.place(authed(&token, after)).await.expect("placed after the backup");
    cluster.shutdown().await;

    // What is refused, and writes nothing.
    let tmp = tempfile::tempdir().expect("a temp dir");
    let members = BTreeMap::from([(1, "127.0.0.1:1".to_owned())]);
    let dir = |name: &str| tmp.path().join(name);
    let refused = |outcome: anyhow::Result<_>| format!("{:#}", outcome.expect_err("refused"));
    let mut damaged = file.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 1;
    let why = refused(berth::server::restore(&dir("a"), 1, &damaged, &members).await);
    assert!(why.contains("checksum mismatch"), "{why}");
    let why = refused(berth::server::restore(&dir("a"), 1, &file[..middle], &members).await);
    assert!(why.contains("truncated"), "{why}");
    let why = refused(berth::server::restore(&dir("a"), 1, b"BSNP not a backup", &members).await);
    assert!(why.contains("not a Berth backup"), "{why}");
    let why = refused(berth::server::restore(&dir("a"), 2, &file, &members).await);
    assert!(why.contains("not one of the members"), "{why}");
    // Framed and checksummed, but not a state: refused before anything is written.
    use berth::storage::snapshot_store::{decode_backup, encode_backup, StoredSnapshot};
    let meta = decode_backup(&file).expect("the backup decodes").meta;
    let hollow = encode_backup(&StoredSnapshot { meta, data: vec![0; 64] }).expect("encodes");
    let why = refused(berth::server::restore(&dir("a"), 1, &hollow, &members).await);
    assert!(why.contains("does not restore"), "{why}");
    assert!(!dir("a").exists() && !dir("a.restoring").exists(), "nothing was written");
    berth::server::restore(&dir("b"), 1, &file, &members).await.expect("restores");
    std::fs::create_dir(dir("c")).expect("an empty directory");
    berth::server::restore(&dir("c"), 1, &file, &members).await.expect("restores into it");
    let why = refused(berth::server::restore(&dir("b"), 1, &file, &members).await);
    assert!(why.contains("not empty"), "{why}");

    // A new cluster from the backup, on new addresses.
    let restored = Cluster::restored(3, fast_options, &file).await;
    let leader = restored.leader().await;
    let mut r = clients(&restored, leader).await;
    let before = r.scheduler.get_placement(authed(&token, get("acme", "before"))).await;
    let before = before.expect("the tenant's token still works").into_inner();
    assert_eq!(before.placement.expect("the placement").log_index, placed_at);
    let gone = r.scheduler.get_placement(authed(&token, get("acme", "after"))).await;
    assert_eq!(gone.expect_err("written after the backup").code(), Code::NotFound);

    // The same request id gets its first answer again; new writes come after the backup's.
    let again = r.scheduler.place(authed(&token, first)).await.expect("a replayed answer");
    let again = again.into_inner().write.expect("a write");
    assert!(again.replayed && again.log_index == placed_at, "{again:?}");
    let next = r.scheduler.place(authed(&token, place("acme", spec("next", 1_000)))).await;
    let next = next.expect("placed in the restored cluster").into_inner();
    assert!(next.write.expect("a write").log_index > info.log_index);
    let statuses = converged(&restored).await;
    assert!(statuses.iter().all(|s| s.voters.len() == 3), "{statuses:?}");
    assert!(info.raft_term >= 2, "{info:?}");
    assert!(statuses.iter().all(|s| s.term > info.raft_term), "{statuses:?} after {info:?}");
    restored.shutdown().await;
}
