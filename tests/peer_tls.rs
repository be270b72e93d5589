//! The peer port answers members only: mutual TLS with a certificate from the cluster's CA
//! that names a current member. Strangers (no TLS, another CA's certificate, this CA's
//! certificate for a non-member or for an operator) get no frame answered, while the members
//! keep replicating; admission follows membership changes; a replica restarted with a new
//! certificate rejoins.

use std::time::Duration;

mod common;

use berth::network::{tcp_connect, Connect};
use berth::raft::peer::Peer;
use berth::tls::{roots, Admission, Authority, Identity, PeerTls};
use common::{converged, member_connect, poll, register_worker, Cluster};

const CALL: Duration = Duration::from_secs(2);

/// A peer connector presenting `pem` (from any CA), trusting `authority`'s replicas.
fn presenting(authority: &Authority, pem: &berth::tls::Pem) -> Connect {
    let tls = PeerTls::new(
        roots(authority.cert_pem()).expect("CA roots"),
        Identity::from_pem(pem).expect("an identity"),
        Admission::default(),
    )
    .expect("peer TLS");
    tls.secure(tcp_connect(Duration::from_millis(500), None))
}

/// Whether `connect` gets a status answer from the peer at `addr`.
async fn answered(connect: &Connect, addr: &str) -> bool {
    Peer::new(connect, addr).status(CALL).await.is_ok()
}

/// Plain TCP, another CA's certificate, this CA's certificate for a non-member id and an
/// operator's client certificate each get nothing from any replica's peer port; a member's
/// certificate gets answers, and writes keep replicating to every member throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_get_nothing_from_the_peer_port() {
    let cluster = Cluster::start(3, common::fast_options).await;
    let leader = cluster.leader().await;
    let other_ca = Authority::generate().expect("another CA");
    let strangers = [
        ("plain TCP", tcp_connect(Duration::from_millis(500), None)),
        (
            "another CA's certificate for replica 1",
            presenting(&cluster.authority, &other_ca.replica(1, &[]).expect("certificate")),
        ),
        ("this CA's certificate for non-member 9", member_connect(&cluster.authority, 9)),
        (
            "this CA's operator certificate",
            presenting(&cluster.authority, &cluster.authority.client("ops").expect("client")),
        ),
    ];
    let member = member_connect(&cluster.authority, 2);
    for (what, stranger) in strangers {
        for id in cluster.running() {
            let addr = &cluster.members[&id].addr;
            assert!(!answered(&stranger, addr).await, "{what} got an answer from replica {id}");
            // A stranger's attempt must not hurt anyone: writes still commit everywhere.
            let write = register_worker(what, id);
            cluster.replica(leader).propose(write).await.expect("members keep replicating");
        }
    }
    for id in cluster.running() {
        assert!(answered(&member, &cluster.members[&id].addr).await, "a member is answered");
    }
    let statuses = converged(&cluster).await;
    assert!(statuses.iter().all(|s| s.applied_command_index >= 12), "{statuses:#?}");
    cluster.shutdown().await;
}

/// Bytes that are not a TLS handshake are never read as frames: a valid Status frame sent in
/// the clear gets no reply frame, and the connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_in_the_clear_is_not_answered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cluster = Cluster::start(1, common::fast_options).await;
    cluster.leader().await;
    let addr = &cluster.members[&1].addr;
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connects");
    // [len 1][Status]: a whole, valid request frame of the peer protocol.
    stream.write_all(&[1, 0, 0, 0, 6]).await.expect("sent");
    let mut reply = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut reply))
        .await
        .expect("the replica closes the connection");
    // Whatever came back (at most a TLS alert) is not a reply frame: those start with a
    // little-endian length and a status byte of 0 or 1.
    if read.is_ok() && reply.len() >= 5 {
        assert_eq!(reply[0], 0x15, "only a TLS alert record, got {reply:?}");
    }
    cluster.shutdown().await;
}

/// Admission follows membership without a restart: a replica of the CA that is not a member
/// is refused; once added, it is admitted (and replicates); once removed, refused again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_follows_membership() {
    let mut cluster = Cluster::start(3, common::fast_options).await;
    let leader = cluster.leader().await;
    let as_four = member_connect(&cluster.authority, 4);
    let leader_addr = cluster.members[&leader].addr.clone();
    assert!(!answered(&as_four, &leader_addr).await, "not a member yet");

    cluster.spawn_extra(4).await;
    let addr4 = cluster.members[&4].addr.clone();
    cluster.replica(leader).add_replica(4, addr4).await.expect("adds 4");
    cluster.replica(leader).propose(register_worker("joined", 1)).await.expect("a write");
    converged(&cluster).await;
    assert!(answered(&as_four, &leader_addr).await, "a member now");

    // A connection opened while 4 was a member, kept open across its removal.
    let open = Peer::new(&as_four, &leader_addr);
    assert!(open.status(CALL).await.is_ok(), "answered on the open connection");

    cluster.replica(leader).remove_replica(4).await.expect("removes 4");
    poll("replica 4 to be refused again", || async {
        (!answered(&as_four, &leader_addr).await).then_some(())
    })
    .await;
    assert!(open.status(CALL).await.is_err(), "its open connection is closed too");
    cluster.shutdown().await;
}

/// Certificate rotation: a replica restarted with a new certificate (new key, same CA) rejoins
/// and catches up with the writes it missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_a_new_certificate_rejoins() {
    let mut cluster = Cluster::start(3, common::fast_options).await;
    let leader = cluster.leader().await;
    let rotated = cluster.running().into_iter().find(|id| *id != leader).expect("a follower");
    cluster.stop(rotated).await;
    for i in 0..5 {
        cluster.replica(leader).propose(register_worker("missed", i)).await.expect("a write");
    }
    // `restart` starts it with `Cluster::security`, which issues a fresh certificate and key.
    cluster.restart(rotated).await;
    let statuses = converged(&cluster).await;
    assert!(statuses.iter().all(|s| s.applied_command_index >= 5), "{statuses:#?}");
    cluster.shutdown().await;
}
