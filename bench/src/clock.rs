//! One clock shared by the publisher and the receivers: monotonic microseconds since the run began, mapped once
//! to wall-clock time so payload timestamps are "µs since the UNIX epoch".

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy)]
pub struct Clock {
    base: Instant,
    base_wall_us: u64,
}

impl Clock {
    pub fn new() -> Self {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            base: Instant::now(),
            base_wall_us: wall.as_micros() as u64,
        }
    }

    /// Monotonic µs since the clock was created.
    pub fn now_us(&self) -> u64 {
        self.base.elapsed().as_micros() as u64
    }

    /// Wall-clock µs since the UNIX epoch for a time on this clock.
    pub fn wall_us(&self, at_us: u64) -> u64 {
        self.base_wall_us + at_us
    }

    /// Converts a wall-clock timestamp back to this clock (saturating at 0).
    pub fn clock_us_of_wall(&self, wall_us: u64) -> u64 {
        wall_us.saturating_sub(self.base_wall_us)
    }

    pub fn instant_at(&self, at_us: u64) -> Instant {
        self.base + Duration::from_micros(at_us)
    }
}
