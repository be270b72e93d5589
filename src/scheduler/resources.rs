//! Integer resource vectors and label rules.
//!
//! Capacity is counted in whole millicores and whole MiB, so "64 cores" is exactly 64 000 and no
//! sequence of additions can drift past it. Every operation is checked: an overflow is a
//! rejection or an invariant failure, never a wrap.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::command::Rejection;

/// Largest number of labels on a worker or workload.
pub const LABELS_MAX: usize = 64;
/// Longest label key or value.
pub const LABEL_LEN_MAX: usize = 128;
/// Largest number of rules (label requirements, affinity terms) in one request, and of values
/// in one label requirement.
pub const RULES_MAX: usize = 32;
/// Largest cpu of one worker, and of one instance: 10,000 cores. `WORKERS_MAX` workers of this
/// size sum to 10^12, so pool capacities, allocations and usage never overflow a u64, and
/// usage × time in `windows.rs` never overflows its u128.
pub const WORKER_CPU_MILLIS_MAX: u64 = 10_000_000;
/// Largest memory of one worker, and of one instance: 1 PiB (2^30 MiB); `WORKERS_MAX` of them
/// sum to about 1.1 × 10^14.
pub const WORKER_MEMORY_MIB_MAX: u64 = 1 << 30;
/// Largest cpu a pool-wide amount may name (a guarantee, a borrowing or lending limit, a
/// reserve): every worker at its largest.
pub const POOL_CPU_MILLIS_MAX: u64 = WORKER_CPU_MILLIS_MAX * super::WORKERS_MAX as u64;
/// Largest memory a pool-wide amount may name.
pub const POOL_MEMORY_MIB_MAX: u64 = WORKER_MEMORY_MIB_MAX * super::WORKERS_MAX as u64;

/// An amount of compute: cpu in millicores, memory in MiB.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Resources {
    pub cpu_millis: u64,
    pub memory_mib: u64,
}

impl Resources {
    pub const ZERO: Resources = Resources { cpu_millis: 0, memory_mib: 0 };

    pub fn new(cpu_millis: u64, memory_mib: u64) -> Self {
        Self { cpu_millis, memory_mib }
    }

    pub fn checked_add(self, other: Resources) -> Option<Resources> {
        Some(Resources {
            cpu_millis: self.cpu_millis.checked_add(other.cpu_millis)?,
            memory_mib: self.memory_mib.checked_add(other.memory_mib)?,
        })
    }

    pub fn checked_sub(self, other: Resources) -> Option<Resources> {
        Some(Resources {
            cpu_millis: self.cpu_millis.checked_sub(other.cpu_millis)?,
            memory_mib: self.memory_mib.checked_sub(other.memory_mib)?,
        })
    }

    pub fn checked_mul(self, n: u64) -> Option<Resources> {
        Some(Resources {
            cpu_millis: self.cpu_millis.checked_mul(n)?,
            memory_mib: self.memory_mib.checked_mul(n)?,
        })
    }

    /// True when `self` fits inside `other` in every dimension.
    pub fn fits_in(self, other: Resources) -> bool {
        self.cpu_millis <= other.cpu_millis && self.memory_mib <= other.memory_mib
    }

    pub fn is_zero(self) -> bool {
        self == Resources::ZERO
    }

    /// Refuses an amount above `(cpu_max, memory_max)` in either dimension, or a zero one
    /// unless `zero_ok`.
    pub fn validate(
        self,
        field: &'static str,
        (cpu_max, memory_max): (u64, u64),
        zero_ok: bool,
    ) -> Result<(), Rejection> {
        if !zero_ok && self.is_zero() {
            return Err(Rejection::invalid(field, "needs cpu or memory"));
        }
        if self.cpu_millis > cpu_max || self.memory_mib > memory_max {
            return Err(Rejection::invalid(
                field,
                format!("at most {cpu_max} cpu_millis and {memory_max} memory_mib"),
            ));
        }
        Ok(())
    }
}

/// Bounds of one worker's capacity and of one instance's resources.
pub const WORKER_RESOURCES_MAX: (u64, u64) = (WORKER_CPU_MILLIS_MAX, WORKER_MEMORY_MIB_MAX);
/// Bounds of a pool-wide amount.
pub const POOL_RESOURCES_MAX: (u64, u64) = (POOL_CPU_MILLIS_MAX, POOL_MEMORY_MIB_MAX);

/// Labels on a worker or a workload: ordered, so iteration is deterministic.
pub type Labels = BTreeMap<String, String>;

pub fn validate_labels(field: &'static str, labels: &Labels) -> Result<(), Rejection> {
    if labels.len() > LABELS_MAX {
        return Err(Rejection::invalid(field, format!("at most {LABELS_MAX} labels")));
    }
    for (key, value) in labels {
        validate_label_text(field, key, false)?;
        validate_label_text(field, value, true)?;
    }
    Ok(())
}

fn validate_label_text(field: &'static str, text: &str, empty_ok: bool) -> Result<(), Rejection> {
    let ok = (empty_ok || !text.is_empty())
        && text.len() <= LABEL_LEN_MAX
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'));
    if ok {
        Ok(())
    } else {
        Err(Rejection::invalid(
            field,
            format!(
                "label text {} must be at most {LABEL_LEN_MAX} characters of [A-Za-z0-9._/-]",
                super::ids::quoted(text)
            ),
        ))
    }
}

/// How a worker label requirement compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum LabelOp {
    /// The label is present with one of `values`.
    In,
    /// The label is absent or has none of `values`.
    NotIn,
    /// The label is present (any value).
    Exists,
    /// The label is absent.
    DoesNotExist,
}

/// A rule on a worker's labels (Kubernetes node-selector style).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LabelRequirement {
    pub key: String,
    pub op: LabelOp,
    pub values: Vec<String>,
}

impl LabelRequirement {
    pub fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
        match self.op {
            LabelOp::In => value.is_some_and(|v| self.values.contains(v)),
            LabelOp::NotIn => !value.is_some_and(|v| self.values.contains(v)),
            LabelOp::Exists => value.is_some(),
            LabelOp::DoesNotExist => value.is_none(),
        }
    }

    pub fn validate(&self, field: &'static str) -> Result<(), Rejection> {
        validate_label_text(field, &self.key, false)?;
        for value in &self.values {
            validate_label_text(field, value, true)?;
        }
        let needs_values = matches!(self.op, LabelOp::In | LabelOp::NotIn);
        if needs_values == self.values.is_empty() || self.values.len() > RULES_MAX {
            return Err(Rejection::invalid(
                field,
                format!(
                    "{:?} on {} takes {}",
                    self.op,
                    super::ids::quoted(&self.key),
                    if needs_values { "1..=32 values" } else { "no values" }
                ),
            ));
        }
        Ok(())
    }
}

/// A workload label `key=value`, used by affinity and anti-affinity between workloads.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LabelTerm {
    pub key: String,
    pub value: String,
}

impl LabelTerm {
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self { key: key.into(), value: value.into() }
    }

    pub fn validate(&self, field: &'static str) -> Result<(), Rejection> {
        validate_label_text(field, &self.key, false)?;
        validate_label_text(field, &self.value, true)
    }
}
