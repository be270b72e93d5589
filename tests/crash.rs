//! Real processes: three `berth server` replicas, the leader killed with SIGKILL while a client
//! writes, then restarted on the same data directory. Every acknowledged write must be on all
//! three replicas afterwards, and their state hashes must be equal. And replicas that must stop
//! do, while hostile bytes on the peer port do not stop one: a failed disk write ends the
//! process (fail-stop), an in-process fail-stop stops only that replica, and a frame announcing
//! a huge string is refused.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command as Process, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod common;

use berth::network::Connect;
use berth::raft::peer::{ForwardError, Peer, ReplicaStatus};
use berth::raft::types::Proposal;
use berth::scheduler::windows::{month_of, month_start};
use berth::scheduler::{
    Answer, Applied, Command, Invoice, Item, PlaceSpec, PlacementId, PlanId, Prices, Query,
    RequestId, Resources, Response, TenantId, Tier, UnixMillis, WorkerId,
};
use berth::tls::Authority;
use common::{eventually, poll, register_worker};
use rust_decimal::Decimal;
use tokio::time::Instant;

const DEADLINE: Duration = Duration::from_secs(30);
const WRITES: u64 = 400;

struct Replica {
    addr: String,
    dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// The processes; killed on drop so a failing test leaves nothing running.
struct Processes {
    replicas: BTreeMap<u64, Replica>,
    /// Every replica's clock offset (`--test-clock-offset-file`), in ms.
    clock: PathBuf,
    members: String,
    /// The cluster's CA; each replica's certificate files are under `<dir>/tls`.
    authority: Authority,
    tls: PathBuf,
}

impl Drop for Processes {
    fn drop(&mut self) {
        for replica in self.replicas.values_mut() {
            if let Some(mut child) = replica.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

impl Processes {
    /// Replicas 1..=n on free loopback ports, with data and logs under `dir`; none running.
    fn new(dir: &std::path::Path, n: u64) -> Processes {
        let replicas: BTreeMap<u64, Replica> = (1..=n)
            .map(|id| {
                let replica = Replica {
                    addr: format!("127.0.0.1:{}", free_port()),
                    dir: dir.join(format!("replica-{id}")),
                    log: dir.join(format!("replica-{id}.log")),
                    child: None,
                };
                (id, replica)
            })
            .collect();
        let members =
            replicas.iter().map(|(id, r)| format!("{id}={}", r.addr)).collect::<Vec<_>>().join(",");
        let authority = Authority::generate().expect("a CA");
        let tls = dir.join("tls");
        std::fs::create_dir_all(&tls).expect("tls dir");
        std::fs::write(tls.join("ca.pem"), authority.cert_pem()).expect("CA file");
        for id in replicas.keys() {
            let pem = authority.replica(*id, &[]).expect("a certificate");
            std::fs::write(tls.join(format!("{id}.pem")), pem.cert).expect("certificate file");
            std::fs::write(tls.join(format!("{id}-key.pem")), pem.key).expect("key file");
        }
        let clock = dir.join("clock-offset-ms");
        std::fs::write(&clock, "0").expect("clock offset file");
        Processes { replicas, clock, members, authority, tls }
    }

    /// Three replicas, all running; with their peer addresses and a connector.
    fn started(dir: &std::path::Path) -> (Processes, Vec<String>, Connect) {
        let mut procs = Processes::new(dir, 3);
        for id in 1..=3 {
            procs.spawn(id);
        }
        let addrs = procs.replicas.values().map(|r| r.addr.clone()).collect();
        let connect = procs.connect();
        (procs, addrs, connect)
    }

    /// A peer connector acting as member 1.
    fn connect(&self) -> Connect {
        common::member_connect(&self.authority, 1)
    }

    fn spawn(&mut self, id: u64) {
        self.spawn_with(id, Process::new(env!("CARGO_BIN_EXE_berth")));
    }

    /// Starts replica `id` with files limited to `kib` KiB (`ulimit -f`, with SIGXFSZ
    /// ignored), so that writing past that fails with EFBIG: an injected disk write error.
    fn spawn_with_file_size_limit(&mut self, id: u64, kib: u64) {
        let mut shell = Process::new("sh");
        shell
            .arg("-c")
            .arg(format!("trap '' XFSZ; ulimit -f {}; exec \"$0\" \"$@\"", kib * 2))
            .arg(env!("CARGO_BIN_EXE_berth"));
        self.spawn_with(id, shell);
    }

    fn spawn_with(&mut self, id: u64, mut process: Process) {
        let replica = self.replicas.get_mut(&id).expect("replica");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&replica.log)
            .expect("log file");
        process
            .args(["server", "--id", &id.to_string(), "--peer-listen", &replica.addr])
            .arg("--data-dir")
            .arg(&replica.dir)
            .arg("--ca-file")
            .arg(self.tls.join("ca.pem"))
            .arg("--cert-file")
            .arg(self.tls.join(format!("{id}.pem")))
            .arg("--key-file")
            .arg(self.tls.join(format!("{id}-key.pem")))
            .arg("--test-clock-offset-file")
            .arg(&self.clock);
        if id == 1 {
            // Replica 1 always starts with --bootstrap; only its first start initialises.
            process.args(["--bootstrap", "--initial-members", &self.members]);
        }
        let child = process
            .args(["--heartbeat-ms", "50", "--election-timeout-min-ms", "300"])
            .args(["--election-timeout-max-ms", "600", "--snapshot-logs", "100"])
            .env("RUST_LOG", "info,openraft=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("berth server starts");
        replica.child = Some(child);
    }

    fn kill(&mut self, id: u64) {
        let mut child = self.replicas.get_mut(&id).and_then(|r| r.child.take()).expect("running");
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
    }
}

async fn status(connect: &Connect, addr: &str) -> Option<ReplicaStatus> {
    Peer::new(connect, addr).status(Duration::from_millis(500)).await.ok()
}

fn register(i: u64) -> Proposal {
    register_worker("crash", i)
}

/// Writes `register(i)` through whichever replica leads, following hints and failing over.
/// Returns true once acknowledged, false if the outcome stayed unknown until the deadline.
async fn write(connect: &Connect, addrs: &[String], i: u64) -> bool {
    let Some(applied) = propose(connect, addrs, &register(i)).await else { return false };
    assert!(applied.result.is_ok(), "refused: {:?}", applied.result);
    true
}

/// kill -9 of the leader mid-write loses no acknowledged write, and the restarted replica
/// converges to the same state as the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill_loses_no_acknowledged_write() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let (mut procs, addrs, connect) = Processes::started(tmp.path());

    let acked = Arc::new(AtomicU64::new(0));
    let writer = {
        let (connect, addrs, acked) = (connect.clone(), addrs.clone(), acked.clone());
        tokio::spawn(async move {
            let mut acknowledged = BTreeSet::new();
            for i in 0..WRITES {
                if write(&connect, &addrs, i).await {
                    acknowledged.insert(i);
                    acked.fetch_add(1, Ordering::Relaxed);
                }
            }
            acknowledged
        })
    };

    // Once writes flow, SIGKILL the leader.
    eventually("writes to flow", || acked.load(Ordering::Relaxed) >= WRITES / 4).await;
    let mut leader = None;
    for addr in &addrs {
        if let Some(s) = status(&connect, addr).await {
            leader = leader.or(s.leader);
        }
    }
    let leader = leader.expect("a leader");
    procs.kill(leader);
    let killed_at = acked.load(Ordering::Relaxed);

    // The survivors keep accepting writes; then the killed replica comes back.
    eventually("writes to continue after the kill", || {
        acked.load(Ordering::Relaxed) >= killed_at + WRITES / 4
    })
    .await;
    procs.spawn(leader);
    let acknowledged = writer.await.expect("writer");
    assert!(
        acknowledged.len() as u64 >= WRITES * 9 / 10,
        "only {} acknowledged",
        acknowledged.len()
    );

    // All three converge: same applied command index and state hash.
    let statuses = poll("all three replicas to converge", || async {
        let mut statuses = Vec::new();
        for addr in &addrs {
            statuses.extend(status(&connect, addr).await);
        }
        let agreed = statuses.len() == 3
            && statuses.iter().all(|s| {
                s.state_hash == statuses[0].state_hash
                    && s.applied_command_index == statuses[0].applied_command_index
            });
        agreed.then_some(statuses)
    })
    .await;
    assert!(
        statuses.iter().all(|s| s.voters.len() == 3),
        "no replica re-initialised: {statuses:#?}"
    );

    for addr in &addrs {
        let client = Peer::new(&connect, addr);
        for i in &acknowledged {
            let answer = client
                .query(&Query::Worker(WorkerId::new(format!("w{i}"))), Duration::from_secs(2))
                .await
                .expect("query answered");
            assert!(matches!(answer, Answer::Worker(Some(_))), "w{i} lost on {addr}");
        }
    }
    for replica in procs.replicas.values() {
        let log = std::fs::read_to_string(&replica.log).unwrap_or_default();
        assert!(!log.contains("panicked"), "a replica panicked:\n{log}");
    }
}

/// Fifteen bytes on the peer port announcing a 2^62-byte string, sent by a member (only a
/// member gets to send frames at all), are refused with a clean error: the replica process
/// survives and keeps serving writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_announcing_a_huge_string_does_not_kill_the_replica() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut procs = Processes::new(tmp.path(), 1);
    let addr = procs.replicas[&1].addr.clone();
    procs.spawn(1);
    let connect = procs.connect();
    let addrs = vec![addr.clone()];
    assert!(write(&connect, &addrs, 0).await, "serves before");

    // [len 11][Query][Query::Tenant][a string of 2^62 bytes follows...]
    let mut frame = 11u32.to_le_bytes().to_vec();
    frame.extend_from_slice(&[7, 0, 0xfd]);
    frame.extend_from_slice(&(1u64 << 62).to_le_bytes());
    assert_eq!(frame.len(), 15);
    let mut stream = connect(&addr).await.expect("connects as a member");
    stream.write_all(&frame).await.expect("sent");
    let mut header = [0u8; 5];
    tokio::time::timeout(DEADLINE, stream.read_exact(&mut header))
        .await
        .expect("the replica answers")
        .expect("reads");
    assert_eq!(header[4], 1, "an error reply");
    let mut message =
        vec![0u8; u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize - 1];
    stream.read_exact(&mut message).await.expect("reads the message");
    let message = String::from_utf8_lossy(&message);
    assert!(message.contains("LimitExceeded"), "{message}");

    assert!(write(&connect, &addrs, 1).await, "serves after");
    let child = procs.replicas.get_mut(&1).and_then(|r| r.child.as_mut()).expect("running");
    assert!(matches!(child.try_wait(), Ok(None)), "the process is still running");
}

/// A replica whose log write fails (its disk refuses the write) stops: the process exits
/// with the fail-stop status, saying what failed, instead of running on as a zombie.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_log_write_stops_the_replica_process() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut procs = Processes::new(tmp.path(), 2);
    // Replica 2 can write 1 MiB: its first write (a vote for replica 1, which grows the log
    // file by its 16 MiB preallocation) fails.
    procs.spawn_with_file_size_limit(2, 1024);
    procs.spawn(1);
    let status = poll("replica 2 to exit", || {
        let child = procs.replicas.get_mut(&2).and_then(|r| r.child.as_mut()).expect("spawned");
        let exited = child.try_wait().expect("waits");
        async move { exited }
    })
    .await;
    let log = std::fs::read_to_string(&procs.replicas[&2].log).expect("log");
    assert_eq!(status.code(), Some(berth::fatal::FAIL_STOP_EXIT_CODE), "{log}");
    assert!(log.contains("berth: fail-stop:"), "{log}");
    assert!(log.contains("writing the Raft log failed"), "{log}");
}

fn recording_options(id: u64, addr: String) -> berth::raft::replica::ReplicaOptions {
    let mut options = common::fast_options(id, addr);
    options.fail_stop = berth::fatal::FailStop::record();
    options
}

/// In-process (tests, simulation), a fail-stopped replica stops Raft and both its ports and
/// never serves again, while the others go on serving writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_fail_stop_stops_only_that_replica() {
    let cluster = common::Cluster::start(3, recording_options).await;
    let leader = cluster.leader().await;
    let victim = if leader == 1 { 2 } else { 1 };
    let survivor = (1..=3).find(|id| *id != leader && *id != victim).expect("a third replica");
    cluster.replica(survivor).propose(register(1)).await.expect("a write before");

    cluster.replica(victim).fail_stop().stop("test: an injected fail-stop");
    let connect = common::member_connect(&cluster.authority, survivor);
    let addr = cluster.members[&victim].addr.clone();
    poll("the fail-stopped replica to stop serving and shut Raft down", || async {
        let shut = cluster.replica(victim).role() == openraft::ServerState::Shutdown;
        (shut && status(&connect, &addr).await.is_none()).then_some(())
    })
    .await;
    assert!(cluster.replica(victim).propose(register(2)).await.is_err(), "it takes no writes");
    for i in 3..6 {
        cluster.replica(survivor).propose(register(i)).await.expect("the others still write");
    }
    assert_eq!(
        cluster.replica(victim).fail_stop().reason().as_deref(),
        Some("test: an injected fail-stop")
    );
    cluster.shutdown().await;
}

/// A replica whose log is damaged before its last record refuses to start: the process exits
/// non-zero naming the file and offset, and leaves the file as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_a_damaged_log_refuses_to_start() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut procs = Processes::new(tmp.path(), 1);
    let addr = procs.replicas[&1].addr.clone();
    procs.spawn(1);
    let connect = procs.connect();
    for i in 0..20 {
        assert!(write(&connect, std::slice::from_ref(&addr), i).await, "write {i}");
    }
    procs.kill(1);

    let wal = procs.replicas[&1].dir.join("log").join("wal");
    let mut bytes = std::fs::read(&wal).expect("wal");
    let mut starts = Vec::new();
    let mut at = 0;
    while let Some(len) =
        bytes.get(at..at + 4).map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
    {
        if len == 0 {
            break;
        }
        starts.push(at);
        at += 8 + len as usize;
    }
    assert!(starts.len() > 10, "{} records", starts.len());
    bytes[starts[2] + 9] ^= 0x01;
    std::fs::write(&wal, &bytes).expect("damage");

    procs.spawn(1);
    let status = poll("the damaged replica to exit", || {
        let child = procs.replicas.get_mut(&1).and_then(|r| r.child.as_mut()).expect("spawned");
        let exited = child.try_wait().expect("waits");
        async move { exited }
    })
    .await;
    let log = std::fs::read_to_string(&procs.replicas[&1].log).expect("log");
    assert!(!status.success(), "{log}");
    assert!(
        log.contains(&format!("{}: the Raft log is damaged at byte {}", wal.display(), starts[2])),
        "{log}"
    );
    assert_eq!(std::fs::read(&wal).expect("wal"), bytes, "the file is unchanged");
}

/// Proposes `proposal` through whichever replica leads (following hints, failing over);
/// `None` if no answer came before the deadline (its outcome unknown).
async fn propose(connect: &Connect, addrs: &[String], proposal: &Proposal) -> Option<Applied> {
    let until = Instant::now() + DEADLINE;
    let mut target = 0usize;
    while Instant::now() < until {
        let addr = &addrs[target % addrs.len()];
        let peer = Peer::new(connect, addr);
        match peer.propose(std::slice::from_ref(proposal), Duration::from_secs(2)).await {
            Ok(Ok(mut results)) => return Some(results.remove(0)),
            Ok(Err(ForwardError::NotLeader { leader: Some((_, leader)) })) => {
                target = addrs.iter().position(|a| *a == leader).unwrap_or(target + 1);
            }
            Ok(Err(_)) | Err(_) => {
                target += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    None
}

/// `propose`, which must be answered.
async fn answered(connect: &Connect, addrs: &[String], proposal: &Proposal) -> Applied {
    let applied = propose(connect, addrs, proposal).await;
    applied.unwrap_or_else(|| panic!("no answer to {} in {DEADLINE:?}", proposal.command.name()))
}

fn admin(request_id: &str, command: Command) -> Proposal {
    Proposal { request_id: Some(RequestId::new(request_id)), command, token: None }
}

/// The invoice a close answered with.
fn closed(applied: &Applied) -> Invoice {
    match &applied.result {
        Ok(Response::InvoiceClosed(invoice)) => (**invoice).clone(),
        other => panic!("not an invoice: {other:?}"),
    }
}

/// An invoice is closed once even when replicas are killed with SIGKILL: the leader in the
/// middle of the close, then every replica right after it was acknowledged. After each
/// restart from the data directories, a retry (same request id) and a second close (a new
/// one) return the invoice first acknowledged, to the cent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invoice_closes_once_across_kills() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let (mut procs, addrs, connect) = Processes::started(tmp.path());
    let acme = TenantId::new("acme");
    let mut prices = Prices::default();
    let tiers = vec![Tier { up_to_hours: None, per_hour: Decimal::new(3, 1) }];
    prices.other_pools.items.insert(Item::Cpu, tiers);
    let spec = PlaceSpec {
        placement: PlacementId::new("a"),
        count: 1,
        resources: Resources::new(500, 0),
        ..PlaceSpec::default()
    };
    let setup = [
        Command::CreateTenant { tenant: acme.clone(), parent: None, weight: 1 },
        register(0).command,
        Command::SetPricePlan { plan: PlanId::new("default"), prices, effective_at: None },
        Command::Place { tenant: acme.clone(), spec, fence: None },
    ];
    let mut placed_at = UnixMillis(0);
    for (i, command) in setup.into_iter().enumerate() {
        let applied = answered(&connect, &addrs, &admin(&format!("setup-{i}"), command)).await;
        assert!(applied.result.is_ok(), "{:?}", applied.result);
        placed_at = applied.applied_at;
    }

    // Every clock moves to an hour into next month; the leader's ticks follow.
    let month = month_of(placed_at);
    let next = month_start(month + 1).0 + 3_600_000;
    let offset = i64::try_from(next - placed_at.0).expect("a month fits");
    std::fs::write(&procs.clock, offset.to_string()).expect("clock offset");
    let close = |id: &str| admin(id, Command::CloseInvoice { tenant: acme.clone(), month });
    // Each try its own request id: a refused close's answer is kept for its id too.
    let tries = AtomicU64::new(0);
    let (first_id, first) = poll("the month to end", || async {
        let id = format!("close-1-{}", tries.fetch_add(1, Ordering::Relaxed));
        let applied = answered(&connect, &addrs, &close(&id)).await;
        applied.result.is_ok().then_some((id, applied))
    })
    .await;
    let invoice = closed(&first);
    assert!(invoice.total > Decimal::ZERO, "{invoice:?}");

    // The leader dies while a second close is in flight; it comes back.
    let mut leader = None;
    for addr in &addrs {
        if let Some(s) = status(&connect, addr).await {
            leader = leader.or(s.leader);
        }
    }
    let leader = leader.expect("a leader");
    let in_flight = {
        let (connect, addrs, request) = (connect.clone(), addrs.clone(), close("close-2"));
        tokio::spawn(async move { answered(&connect, &addrs, &request).await })
    };
    procs.kill(leader);
    assert_eq!(closed(&in_flight.await.expect("answered")), invoice, "during a leader's kill");
    procs.spawn(leader);

    // Every replica dies at once, and all come back from their data directories.
    for id in 1..=3 {
        procs.kill(id);
    }
    for id in 1..=3 {
        procs.spawn(id);
    }
    let retry = answered(&connect, &addrs, &close(&first_id)).await;
    assert!(retry.replayed, "the same request id replays");
    assert_eq!(closed(&retry), invoice, "a retry after every replica restarted");
    let again = answered(&connect, &addrs, &close("close-3")).await;
    assert_eq!(closed(&again), invoice, "a new close after every replica restarted");
    for replica in procs.replicas.values() {
        let log = std::fs::read_to_string(&replica.log).unwrap_or_default();
        assert!(!log.contains("panicked"), "a replica panicked:\n{log}");
    }
}
