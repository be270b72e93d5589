//! The wall clock the leader stamps into entries, injected so tests and the simulation can
//! substitute their own (with an offset to model skew). Only the shell reads it; the core
//! sees time only through entries.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::scheduler::UnixMillis;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> UnixMillis;
}

/// The system clock plus an adjustable offset (a test-only skew; zero in production).
#[derive(Clone, Debug, Default)]
pub struct SystemClock {
    offset_ms: Arc<AtomicI64>,
}

impl SystemClock {
    pub fn with_offset_ms(offset_ms: i64) -> Self {
        SystemClock { offset_ms: Arc::new(AtomicI64::new(offset_ms)) }
    }

    pub fn set_offset_ms(&self, offset_ms: i64) {
        self.offset_ms.store(offset_ms, Ordering::Relaxed);
    }
}

impl Clock for SystemClock {
    fn now(&self) -> UnixMillis {
        let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let ms = i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX);
        let skewed = ms.saturating_add(self.offset_ms.load(Ordering::Relaxed));
        UnixMillis(u64::try_from(skewed).unwrap_or(0))
    }
}
