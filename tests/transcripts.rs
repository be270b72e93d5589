//! Transcript tests for the core: each `tests/transcripts/*.txt` is a scenario a reviewer can
//! read without Rust. Lines starting `> ` are commands, applied in order through the shared
//! harness (`berth::scheduler::testing::Log`, invariants checked after every entry); the lines
//! after each command are what the core answered. `#` lines and blank lines are kept as they
//! are. `BERTH_TRANSCRIPT_UPDATE=1 cargo test --workspace --test transcripts` rewrites the
//! answers; review the diff.
//!
//! Commands (times are log milliseconds after `T0`, shown as `t+MS`):
//!   advance MS · tick · leader-changed · state · again (the previous command, same request id)
//!   worker ID CPU MEM [pool=P] · drain ID · undrain ID · remove-worker ID [evict]
//!   tenant ID [parent=P] [weight=N] · delete-tenant ID
//!   quota TENANT [cpu=N] [mem=N] [instances=N] [jobs=N]
//!   place TENANT ID CPU MEM [count=N] [fence=LEASE:TOKEN] · queue TENANT ID CPU MEM [count=N]
//!   cancel-queued TENANT ID · release TENANT ID [fence=LEASE:TOKEN]
//!   reserve TENANT ID CPU MEM ttl=MS · confirm TENANT ID · cancel TENANT ID
//!   acquire TENANT LEASE HOLDER ttl=MS · keep-alive TENANT LEASE TOKEN
//!   release-lease TENANT LEASE TOKEN
//!   heartbeat WORKER… · pool-ttl POOL MS · group TENANT ID MAX (a spread group)
//!   report TENANT ID SLOT WORKER ASSIGNED_AT running|completed|failed [code=N] (ASSIGNED_AT:
//!   the index of the entry that placed or moved the instance; each `> ` line is one entry)
//!   place/queue options: [lost=reschedule|release] [group=G] [max-runtime=MS]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use berth::scheduler::testing::{Log, T0};
use berth::scheduler::*;

// Every transcript's answers are exactly what the core says today.
#[test]
fn transcripts_match_the_core() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/transcripts");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/transcripts exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "expected at least ten transcripts in {}", dir.display());
    let update = std::env::var_os("BERTH_TRANSCRIPT_UPDATE").is_some_and(|v| v == "1");
    let mut differ = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("readable transcript");
        let replayed = replay(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        if replayed != text {
            if update {
                std::fs::write(file, &replayed).expect("writable transcript");
            } else {
                differ.push(format!("{}:\n{}", file.display(), first_difference(&text, &replayed)));
            }
        }
    }
    assert!(
        differ.is_empty(),
        "transcripts differ from the core (BERTH_TRANSCRIPT_UPDATE=1 rewrites them):\n{}",
        differ.join("\n")
    );
}

fn first_difference(expected: &str, actual: &str) -> String {
    let (mut e, mut a) = (expected.lines(), actual.lines());
    for n in 1.. {
        match (e.next(), a.next()) {
            (None, None) => break,
            (x, y) if x == y => continue,
            (x, y) => return format!("  line {n}: expected {x:?}\n  line {n}:   actual {y:?}"),
        }
    }
    String::new()
}

/// Runs the commands of `text` and returns it with every answer rewritten.
fn replay(text: &str) -> Result<String, String> {
    let mut log = Log::default();
    let mut previous: Option<Entry> = None;
    let mut out = String::new();
    for (n, line) in text.lines().enumerate() {
        let Some(command) = line.strip_prefix("> ") else {
            if line.is_empty() || line.starts_with('#') {
                out.push_str(line);
                out.push('\n');
            }
            continue;
        };
        out.push_str(line);
        out.push('\n');
        let words: Vec<&str> = command.split_whitespace().collect();
        let answer = run(&mut log, &mut previous, &words)
            .map_err(|e| format!("line {}: {e}: {line}", n + 1))?;
        for answer_line in answer {
            out.push_str(&answer_line);
            out.push('\n');
        }
    }
    Ok(out)
}

fn run(log: &mut Log, previous: &mut Option<Entry>, words: &[&str]) -> Result<Vec<String>, String> {
    let (verb, args) = words.split_first().ok_or("empty command")?;
    let command = match *verb {
        "advance" => {
            log.advance(number(args, 0)?);
            return Ok(vec![format!("now t+{}", log.now - T0)]);
        }
        "state" => return Ok(state(log.s.state())),
        "again" => {
            let entry = previous.clone().ok_or("nothing to repeat")?;
            let fresh = log.entry(Command::Tick);
            let entry = Entry { index: fresh.index, proposed_at: fresh.proposed_at, ..entry };
            return Ok(answer(&log.apply_entry(entry)));
        }
        _ => command(verb, args)?,
    };
    let entry = log.entry(command);
    *previous = Some(entry.clone());
    Ok(answer(&log.apply_entry(entry)))
}

fn command(verb: &str, args: &[&str]) -> Result<Command, String> {
    let options = options(args);
    let opt = |key: &str| options.get(key).map(|v| parse::<u64>(v)).transpose();
    let fence = match options.get("fence") {
        None => None,
        Some(f) => {
            let (lease, token) = f.split_once(':').ok_or("fence=LEASE:TOKEN")?;
            Some(Fence { lease: lease.into(), token: LogIndex(parse(token)?) })
        }
    };
    let tenant = || arg(args, 0).map(TenantId::from);
    let spec = |count: Option<u64>| -> Result<PlaceSpec, String> {
        Ok(PlaceSpec {
            placement: arg(args, 1)?.into(),
            count: u32::try_from(count.unwrap_or(1)).map_err(|e| e.to_string())?,
            resources: Resources::new(number(args, 2)?, number(args, 3)?),
            on_worker_lost: match options.get("lost") {
                None | Some(&"reschedule") => OnWorkerLost::Reschedule,
                Some(&"release") => OnWorkerLost::Release,
                Some(other) => return Err(format!("lost=reschedule|release, not {other:?}")),
            },
            group: options.get("group").map(|g| GroupId::from(*g)),
            max_runtime_ms: opt("max-runtime")?,
            ..PlaceSpec::default()
        })
    };
    Ok(match verb {
        "tick" => Command::Tick,
        "heartbeat" => Command::Heartbeat { workers: args.iter().map(|w| (*w).into()).collect() },
        "report" => Command::ReportStatus {
            tenant: tenant()?,
            placement: arg(args, 1)?.into(),
            slot: u32::try_from(number(args, 2)?).map_err(|e| e.to_string())?,
            worker: arg(args, 3)?.into(),
            assigned_at: LogIndex(number(args, 4)?),
            status: match arg(args, 5)? {
                "running" => ReportedStatus::Running,
                "completed" => ReportedStatus::Completed,
                "failed" => ReportedStatus::Failed {
                    exit_code: i32::try_from(opt("code")?.unwrap_or(1))
                        .map_err(|e| e.to_string())?,
                    message: String::new(),
                },
                other => return Err(format!("running|completed|failed, not {other:?}")),
            },
        },
        "pool-ttl" => {
            Command::SetPoolWorkerTtl { pool: arg(args, 0)?.into(), ttl_ms: Some(number(args, 1)?) }
        }
        "group" => Command::CreatePlacementGroup {
            tenant: tenant()?,
            group: arg(args, 1)?.into(),
            max_instances: u32::try_from(number(args, 2)?).map_err(|e| e.to_string())?,
            strategy: GroupStrategy::Spread,
        },
        "leader-changed" => Command::LeaderChanged,
        "worker" => Command::RegisterWorker {
            worker: arg(args, 0)?.into(),
            pool: options.get("pool").map(|p| PoolId::from(*p)),
            capacity: Resources::new(number(args, 1)?, number(args, 2)?),
            labels: Labels::new(),
        },
        "drain" | "undrain" => Command::SetWorkerSchedulable {
            worker: arg(args, 0)?.into(),
            schedulable: verb == "undrain",
        },
        "remove-worker" => {
            Command::RemoveWorker { worker: arg(args, 0)?.into(), evict: args.contains(&"evict") }
        }
        "tenant" => Command::CreateTenant {
            tenant: tenant()?,
            parent: options.get("parent").map(|p| TenantId::from(*p)),
            weight: u32::try_from(opt("weight")?.unwrap_or(1)).map_err(|e| e.to_string())?,
        },
        "delete-tenant" => Command::DeleteTenant { tenant: tenant()? },
        "quota" => Command::SetQuota {
            tenant: tenant()?,
            quota: Quota {
                total: Limits {
                    cpu_millis: opt("cpu")?,
                    memory_mib: opt("mem")?,
                    instances: opt("instances")?,
                    jobs: opt("jobs")?,
                },
                ..Quota::default()
            },
        },
        "place" => Command::Place { tenant: tenant()?, spec: spec(opt("count")?)?, fence },
        "queue" => Command::PlaceOrQueue { tenant: tenant()?, spec: spec(opt("count")?)?, fence },
        "cancel-queued" => {
            Command::CancelQueued { tenant: tenant()?, placement: arg(args, 1)?.into() }
        }
        "release" => Command::Release { tenant: tenant()?, placement: arg(args, 1)?.into(), fence },
        "reserve" => Command::Reserve {
            tenant: tenant()?,
            spec: spec(opt("count")?)?,
            ttl_ms: opt("ttl")?.ok_or("reserve needs ttl=MS")?,
            fence,
        },
        "confirm" => Command::ConfirmReservation {
            tenant: tenant()?,
            reservation: arg(args, 1)?.into(),
            fence,
        },
        "cancel" => Command::CancelReservation {
            tenant: tenant()?,
            reservation: arg(args, 1)?.into(),
            fence,
        },
        "acquire" => Command::AcquireLease {
            tenant: tenant()?,
            lease: arg(args, 1)?.into(),
            holder: arg(args, 2)?.to_owned(),
            ttl_ms: opt("ttl")?.ok_or("acquire needs ttl=MS")?,
        },
        "keep-alive" => Command::KeepAliveLease {
            tenant: tenant()?,
            lease: arg(args, 1)?.into(),
            token: LogIndex(number(args, 2)?),
        },
        "release-lease" => Command::ReleaseLease {
            tenant: tenant()?,
            lease: arg(args, 1)?.into(),
            token: LogIndex(number(args, 2)?),
        },
        other => return Err(format!("unknown command {other:?}")),
    })
}

/// `key=value` words.
fn options<'a>(args: &[&'a str]) -> BTreeMap<&'a str, &'a str> {
    args.iter().filter_map(|a| a.split_once('=')).collect()
}

/// The `n`th positional (not `key=value`) word.
fn arg<'a>(args: &[&'a str], n: usize) -> Result<&'a str, String> {
    let mut positional = args.iter().filter(|a| !a.contains('='));
    positional.nth(n).copied().ok_or_else(|| format!("missing argument {}", n + 1))
}

fn number(args: &[&str], n: usize) -> Result<u64, String> {
    parse(arg(args, n)?)
}

fn parse<T: std::str::FromStr>(word: &str) -> Result<T, String> {
    word.parse().map_err(|_| format!("not a number: {word:?}"))
}

fn at(t: UnixMillis) -> String {
    format!("t+{}", t.0.saturating_sub(T0))
}

fn amount(r: &Resources) -> String {
    format!("cpu={} mem={}", r.cpu_millis, r.memory_mib)
}

fn workers(p: &Placement) -> String {
    p.instances.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

/// The answer to one entry: its result, then what expired and what the quota manager said.
fn answer(applied: &Applied) -> Vec<String> {
    let replayed = if applied.replayed { " (replayed)" } else { "" };
    let result = match &applied.result {
        Err(rejection) => format!("refused {}: {rejection}", rejection.reason()),
        Ok(response) => response_line(response),
    };
    let mut lines = vec![format!("{result}{replayed}")];
    for expired in &applied.expired {
        lines.push(match expired {
            Expired::Reservation { tenant, reservation } => {
                format!("expired reservation {tenant}/{reservation}")
            }
            Expired::Lease { tenant, lease, token } => {
                format!("expired lease {tenant}/{lease} token {}", token.0)
            }
            Expired::Worker { worker } => format!("worker {worker} down"),
            Expired::TimeLimit { tenant, placement } => {
                format!("time limit: released {tenant}/{placement} TIME_LIMIT")
            }
        });
    }
    for lost in &applied.lost {
        let slots: Vec<String> = lost.slots.iter().map(ToString::to_string).collect();
        let outcome = match &lost.outcome {
            LostOutcome::Rescheduled { moves } => {
                let moves: Vec<String> =
                    moves.iter().map(|(slot, from, to)| format!("{slot}:{from}->{to}")).collect();
                format!("rescheduled {}", moves.join(" "))
            }
            LostOutcome::Queued => "released WORKER_LOST, queued again".to_owned(),
            LostOutcome::Released => "released WORKER_LOST".to_owned(),
        };
        let (tenant, placement) = (&lost.tenant, &lost.placement);
        lines.push(format!("lost {tenant}/{placement} slots [{}]: {outcome}", slots.join(",")));
    }
    lines.extend(applied.events.iter().map(|e| format!("event {e:?}")));
    lines
}

fn response_line(response: &Response) -> String {
    match response {
        Response::Placed(p) => format!("placed {} on {}", p.id(), workers(p)),
        Response::Reserved(p) => {
            let until = p.expires_at.map(at).unwrap_or_default();
            format!("reserved {} on {} until {until}", p.id(), workers(p))
        }
        Response::Confirmed(p) => format!("confirmed {} on {}", p.id(), workers(p)),
        Response::Queued(q) => {
            let reason = match &q.reason {
                WaitReason::BehindOwnTenant { placement } => format!("behind {placement}"),
                WaitReason::Refused(rejection) => rejection.reason().to_owned(),
                WaitReason::FairShareOrder => "fair-share order".to_owned(),
            };
            let (id, position, of) = (&q.queued.spec.placement, q.position, q.pool_queued);
            format!("queued {id} position {position} of {of}: {reason}")
        }
        Response::Released { resources, instances } => {
            format!("released {instances} instance(s), {}", amount(resources))
        }
        Response::Cancelled { resources, instances } => {
            format!("cancelled {instances} instance(s), {}", amount(resources))
        }
        Response::WorkerRemoved { evicted } => {
            let evicted: Vec<String> = evicted.iter().map(|(t, p)| format!("{t}/{p}")).collect();
            format!("removed, evicted [{}]", evicted.join(", "))
        }
        Response::LeaseGranted(l) => format!(
            "granted {} to {} token {} until {}",
            l.name,
            l.holder,
            l.token.0,
            at(l.expires_at)
        ),
        Response::LeaseKeptAlive(l) => format!("kept {} until {}", l.name, at(l.expires_at)),
        Response::WorkerRegistered(w) => format!("registered {} in {}", w.id, w.pool),
        Response::TenantCreated(t) => format!("created {}", t.id),
        Response::StatusReported { finished } => match finished {
            None => "reported".to_owned(),
            Some(state) => format!("reported; released {}", state.reason()),
        },
        Response::Heartbeats(acks) => {
            let acks: Vec<String> = acks
                .iter()
                .map(|ack| match ack {
                    None => "unknown".to_owned(),
                    Some(a) => format!(
                        "until {} gen {}{}",
                        at(a.alive_until),
                        a.generation.0,
                        if a.revived { " revived" } else { "" }
                    ),
                })
                .collect();
            format!("heartbeat {}", acks.join("; "))
        }
        other => format!("{other:?}"),
    }
}

/// The state, one line per object: time, workers, tenants' usage, placements, leases, queue.
fn state(s: &State) -> Vec<String> {
    let mut lines = vec![format!("state at {}", at(s.now))];
    for w in s.workers.values() {
        let drained = if w.schedulable { "" } else { " draining" };
        let live = match (w.down_since, w.liveness) {
            (Some(since), _) => format!(" down since {}", at(since)),
            (None, Some(l)) => format!(" managed until {}", at(l.alive_until)),
            (None, None) => String::new(),
        };
        lines.push(format!(
            "  worker {} pool={} cpu {}/{} mem {}/{}{drained}{live}",
            w.id,
            w.pool,
            w.allocated.cpu_millis,
            w.capacity.cpu_millis,
            w.allocated.memory_mib,
            w.capacity.memory_mib
        ));
    }
    for t in s.tenants.values() {
        let u = &t.usage.total;
        lines.push(format!(
            "  tenant {} usage cpu={} mem={} instances={} jobs={}",
            t.id, u.cpu_millis, u.memory_mib, u.instances, u.jobs
        ));
    }
    for p in s.placements.values() {
        let reservation = p.expires_at.map(|t| format!(" reserved until {}", at(t)));
        lines.push(format!(
            "  placement {}/{} on {}{}",
            p.tenant,
            p.id(),
            workers(p),
            reservation.unwrap_or_default()
        ));
    }
    for l in s.leases.values() {
        lines.push(format!(
            "  lease {}/{} holder {} token {} until {}",
            l.tenant,
            l.name,
            l.holder,
            l.token.0,
            at(l.expires_at)
        ));
    }
    lines.extend(s.queue.keys().map(|(tenant, id)| format!("  queued {tenant}/{id}")));
    lines
}
