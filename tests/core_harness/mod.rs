//! The core's shared test harness (`berth::scheduler::testing::Log`) as a local type, so each
//! core test file can add its own fixtures to it with an `impl Log` block.
#![allow(dead_code)]

use berth::scheduler::testing;

/// The shared harness; derefs to `testing::Log`.
pub struct Log(pub testing::Log);

impl Log {
    pub fn new() -> Self {
        Log(testing::Log::default())
    }
}

impl std::ops::Deref for Log {
    type Target = testing::Log;
    fn deref(&self) -> &testing::Log {
        &self.0
    }
}

impl std::ops::DerefMut for Log {
    fn deref_mut(&mut self) -> &mut testing::Log {
        &mut self.0
    }
}
