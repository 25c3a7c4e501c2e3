//! A monitor's live state: the status machine (PENDING while retries remain, DOWN after, DEGRADED when slow),
//! last change, recent response times and uptime ratios over 24 h and 30 d kept as hourly and daily buckets.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::check::Outcome;

/// A monitor's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Not checked yet, or failing with retries left.
    Pending,
    /// Answering as expected.
    Up,
    /// Answering as expected, but slower than its threshold.
    Degraded,
    /// Failing.
    Down,
    /// Not being checked.
    Paused,
}

impl Status {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Up => "up",
            Status::Degraded => "degraded",
            Status::Down => "down",
            Status::Paused => "paused",
        }
    }
}

/// Counts of checks within one hour or one day.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Bucket {
    /// Start of the bucket (hour or day number since the UNIX epoch).
    start: i64,
    up: u32,
    total: u32,
    ms_sum: f64,
}

/// Recent response times kept for the status page's sparkline.
const RECENT: usize = 30;
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

/// One monitor's live state (persisted as JSON beside its definition).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Runtime {
    /// Current status.
    pub status: Status,
    /// Time of the last check, ms since the UNIX epoch.
    pub last_check: Option<i64>,
    /// Time of the last status change.
    pub last_change: Option<i64>,
    /// The last check's message.
    pub message: String,
    /// The last check's response time (ms).
    pub response_ms: Option<f64>,
    /// Days until the TLS certificate expires, when known.
    pub cert_days: Option<i64>,
    /// Failed checks in a row.
    pub failures: u32,
    /// Latest response times, oldest first: `(time, ms, status)`.
    pub recent: VecDeque<(i64, f64, Status)>,
    hours: VecDeque<Bucket>,
    days: VecDeque<Bucket>,
}

impl Default for Runtime {
    fn default() -> Self {
        Self {
            status: Status::Pending,
            last_check: None,
            last_change: None,
            message: "not checked yet".into(),
            response_ms: None,
            cert_days: None,
            failures: 0,
            recent: VecDeque::new(),
            hours: VecDeque::new(),
            days: VecDeque::new(),
        }
    }
}

impl Runtime {
    /// Applies a check's outcome at `now`; returns whether the status changed.
    pub fn apply(&mut self, o: &Outcome, now: i64, retries: u32, degraded_ms: Option<f64>) -> bool {
        let status = if o.ok {
            self.failures = 0;
            if degraded_ms.is_some_and(|d| o.response_ms > d) {
                Status::Degraded
            } else {
                Status::Up
            }
        } else {
            self.failures = self.failures.saturating_add(1);
            if self.failures > retries {
                Status::Down
            } else if matches!(self.status, Status::Up | Status::Degraded) && retries > 0 {
                Status::Pending
            } else if self.status == Status::Down {
                Status::Down
            } else {
                Status::Pending
            }
        };
        self.last_check = Some(now);
        self.message.clone_from(&o.message);
        self.response_ms = Some(o.response_ms);
        if o.cert_days.is_some() {
            self.cert_days = o.cert_days;
        }
        self.recent.push_back((now, o.response_ms, status));
        while self.recent.len() > RECENT {
            self.recent.pop_front();
        }
        let up = matches!(status, Status::Up | Status::Degraded);
        count(&mut self.hours, now / HOUR_MS, 24, up, o.response_ms);
        count(&mut self.days, now / DAY_MS, 30, up, o.response_ms);
        self.set_status(status, now)
    }

    /// Sets the status; returns whether it changed.
    pub fn set_status(&mut self, status: Status, now: i64) -> bool {
        let changed = status != self.status;
        if changed {
            self.status = status;
            self.last_change = Some(now);
        }
        changed
    }

    /// Share of successful checks over the last 24 hours (`None` without checks).
    pub fn uptime_24h(&self, now: i64) -> Option<f64> {
        ratio(&self.hours, now / HOUR_MS - 23)
    }

    /// Share of successful checks over the last 30 days.
    pub fn uptime_30d(&self, now: i64) -> Option<f64> {
        ratio(&self.days, now / DAY_MS - 29)
    }

    /// Average response time over the last 24 hours (ms).
    pub fn avg_response_24h(&self, now: i64) -> Option<f64> {
        let from = now / HOUR_MS - 23;
        let (sum, n) = self
            .hours
            .iter()
            .filter(|b| b.start >= from)
            .fold((0.0, 0u32), |(s, n), b| (s + b.ms_sum, n + b.total));
        (n > 0).then(|| sum / f64::from(n))
    }
}

fn count(buckets: &mut VecDeque<Bucket>, start: i64, keep: usize, up: bool, ms: f64) {
    if buckets.back().is_none_or(|b| b.start != start) {
        buckets.push_back(Bucket {
            start,
            ..Default::default()
        });
        while buckets.len() > keep {
            buckets.pop_front();
        }
    }
    if let Some(b) = buckets.back_mut() {
        b.total += 1;
        b.up += u32::from(up);
        b.ms_sum += ms;
    }
}

fn ratio(buckets: &VecDeque<Bucket>, from: i64) -> Option<f64> {
    let (up, total) = buckets
        .iter()
        .filter(|b| b.start >= from)
        .fold((0u64, 0u64), |(u, t), b| {
            (u + u64::from(b.up), t + u64::from(b.total))
        });
    (total > 0).then(|| up as f64 / total as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(ok: bool, ms: f64) -> Outcome {
        Outcome {
            ok,
            response_ms: ms,
            message: String::new(),
            cert_days: None,
        }
    }

    #[test]
    fn retries_keep_pending_before_down_and_slow_is_degraded() {
        let mut r = Runtime::default();
        let t = 1_795_000_000_000;
        assert!(r.apply(&outcome(true, 10.0), t, 2, Some(100.0)));
        assert_eq!(r.status, Status::Up);
        r.apply(&outcome(false, 10.0), t + 1, 2, Some(100.0));
        assert_eq!(r.status, Status::Pending);
        r.apply(&outcome(false, 10.0), t + 2, 2, Some(100.0));
        assert_eq!(r.status, Status::Pending);
        r.apply(&outcome(false, 10.0), t + 3, 2, Some(100.0));
        assert_eq!(r.status, Status::Down);
        r.apply(&outcome(true, 500.0), t + 4, 2, Some(100.0));
        assert_eq!(r.status, Status::Degraded);
        assert_eq!(r.uptime_24h(t + 5), Some(2.0 / 5.0));
        assert_eq!(r.uptime_30d(t + 5), Some(2.0 / 5.0));
        // Without retries a failure is DOWN at once.
        let mut r = Runtime::default();
        r.apply(&outcome(false, 1.0), t, 0, None);
        assert_eq!(r.status, Status::Down);
    }
}
