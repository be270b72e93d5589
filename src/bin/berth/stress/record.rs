//! What the stress client sent and saw: every timed call (tenant, RPC, when, how long,
//! whether it succeeded), every call counted by tenant and RPC (to compare with the replicas'
//! metrics), per-second series for the report, and the progress line.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Series drawn per tenant, at most; a profile with more tenants is drawn as a whole.
const TENANT_LINES_MAX: usize = 10;

#[derive(Clone)]
struct Sample {
    profile: &'static str,
    tenant: Arc<str>,
    at_ms: u64,
    us: u64,
    ok: bool,
}

#[derive(Default)]
struct Inner {
    profile: &'static str,
    samples: Vec<Sample>,
    calls: BTreeMap<(String, String), u64>,
    done: u64,
    errors: u64,
}

#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Mutex<Inner>>,
    origin: Instant,
}

impl Recorder {
    pub fn new(origin: Instant) -> Recorder {
        Recorder { inner: Arc::default(), origin }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The profile whose calls follow.
    pub fn begin(&self, profile: &'static str) {
        let mut inner = self.lock();
        inner.profile = profile;
        inner.done = 0;
        inner.errors = 0;
    }

    /// Counts a call for `tenant` (to compare with the metrics) without timing it.
    pub fn call(&self, tenant: &str, rpc: &str) {
        *self.lock().calls.entry((tenant.to_owned(), rpc.to_owned())).or_default() += 1;
    }

    /// Runs `call` (one RPC for `tenant`), counting and timing it.
    pub async fn timed<T, E>(
        &self,
        tenant: &str,
        rpc: &str,
        call: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let started = Instant::now();
        let (outcome, us) = self.measured(tenant, rpc, call).await;
        let at_ms = millis(started.duration_since(self.origin));
        let mut inner = self.lock();
        let profile = inner.profile;
        inner.samples.push(Sample {
            profile,
            tenant: tenant.into(),
            at_ms,
            us,
            ok: outcome.is_ok(),
        });
        outcome
    }

    /// Runs `call` (one RPC for `tenant`), counting it, and returns its latency (µs) without
    /// keeping a sample: for a load too long to keep every call (`soak`), which aggregates
    /// its own.
    pub async fn measured<T, E>(
        &self,
        tenant: &str,
        rpc: &str,
        call: impl Future<Output = Result<T, E>>,
    ) -> (Result<T, E>, u64) {
        self.call(tenant, rpc);
        let started = Instant::now();
        let outcome = call.await;
        let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let mut inner = self.lock();
        inner.done += 1;
        inner.errors += u64::from(outcome.is_err());
        (outcome, us)
    }

    /// Every call counted, by (tenant, RPC).
    pub fn calls(&self) -> BTreeMap<(String, String), u64> {
        self.lock().calls.clone()
    }

    /// The latencies (µs) of `profile`'s successful calls since `since_ms`, sorted.
    pub fn latencies(&self, profile: &str, since_ms: u64) -> Vec<u64> {
        let inner = self.lock();
        let mut us: Vec<u64> = inner
            .samples
            .iter()
            .filter(|s| s.profile == profile && s.ok && s.at_ms >= since_ms)
            .map(|s| s.us)
            .collect();
        us.sort_unstable();
        us
    }

    /// Milliseconds since the run began.
    pub fn now_ms(&self) -> u64 {
        millis(self.origin.elapsed())
    }

    /// `profile`'s series: calls per second in all and per tenant (for at most
    /// `TENANT_LINES_MAX` tenants), and the p95 latency in all, in buckets of 100 ms for a
    /// profile shorter than 10 s, 1 s for one shorter than 10 minutes, 10 s beyond, each keyed
    /// by its start (ms since the run began).
    pub fn series(&self, profile: &str) -> BTreeMap<String, Vec<(u64, u64)>> {
        let inner = self.lock();
        let samples: Vec<&Sample> = inner.samples.iter().filter(|s| s.profile == profile).collect();
        let mut out = BTreeMap::new();
        let Some(first) = samples.iter().map(|s| s.at_ms).min() else { return out };
        let last = samples.iter().map(|s| s.at_ms).max().unwrap_or(first);
        let bucket_ms = match last - first {
            0..10_000 => 100,
            10_000..600_000 => 1_000,
            _ => 10_000,
        };
        let second = |s: &Sample| (s.at_ms - first) / bucket_ms;
        let per_second = |count: u64| count * 1_000 / bucket_ms;
        let mut all: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        let mut per_tenant: BTreeMap<&str, BTreeMap<u64, u64>> = BTreeMap::new();
        for s in &samples {
            all.entry(second(s)).or_default().push(s.us);
            *per_tenant.entry(&s.tenant).or_default().entry(second(s)).or_default() += 1;
        }
        let at = |bucket: u64| first + bucket * bucket_ms;
        out.insert(
            "calls/s: all".to_owned(),
            all.iter().map(|(sec, us)| (at(*sec), per_second(us.len() as u64))).collect(),
        );
        out.insert(
            "p95 latency µs: all".to_owned(),
            all.iter_mut()
                .map(|(sec, us)| {
                    us.sort_unstable();
                    (at(*sec), percentile(us, 950))
                })
                .collect(),
        );
        if per_tenant.len() <= TENANT_LINES_MAX {
            let seconds: Vec<u64> = all.keys().copied().collect();
            for (tenant, counts) in per_tenant {
                let line = seconds
                    .iter()
                    .map(|sec| (at(*sec), per_second(counts.get(sec).copied().unwrap_or(0))));
                out.insert(format!("calls/s: {tenant}"), line.collect());
            }
        }
        out
    }
}

/// The value at `per_mille` of sorted `values` (0 if none).
pub fn percentile(values: &[u64], per_mille: usize) -> u64 {
    if values.is_empty() {
        return 0;
    }
    values[(values.len() * per_mille / 1000).min(values.len() - 1)]
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Prints a progress line a second to stderr (unless `quiet`) until aborted.
pub fn progress(recorder: Recorder, quiet: bool) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if quiet {
            return;
        }
        let (mut last, mut last_profile) = (0, "");
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let (profile, done, errors) = {
                let inner = recorder.lock();
                (inner.profile, inner.done, inner.errors)
            };
            if profile != last_profile {
                (last, last_profile) = (0, profile);
            }
            eprintln!(
                "  {profile:<10} {:>5} s  {:>6} calls/s  {done:>8} calls  {errors} errors",
                recorder.now_ms() / 1000,
                done.saturating_sub(last)
            );
            last = done;
        }
    })
}
