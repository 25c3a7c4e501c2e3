//! Rate limits: token buckets, per key (an IP address, an API key) and per connection, plus a count of
//! concurrent connections per IP address.

use std::collections::HashMap;
use std::fmt::Display;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Keys kept before idle ones are swept out of a [`Buckets`] table.
const SWEEP_AT: usize = 4096;

/// A token bucket: `rate` tokens per second, holding at most `burst`.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket of `burst` tokens (at least one; it may be smaller than the rate, for a smooth limit).
    /// A rate of zero means unlimited.
    pub fn new(rate: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate: f64::from(rate),
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn is_full(&self) -> bool {
        self.tokens + Instant::now().duration_since(self.last).as_secs_f64() * self.rate
            >= self.burst
    }
}

/// Client messages refused by a per-connection rate limit since start-up, over every transport (served on
/// `/metrics` as `herald_client_messages_refused_total`).
pub static MESSAGES_REFUSED: AtomicU64 = AtomicU64::new(0);

/// Least time between two reports about one connection's refused messages: a log line, and the `error` notice
/// sent to a client that asked for no reply.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// One connection's message allowance: a token bucket whose refusals are counted and reported at most once per
/// [`REPORT_INTERVAL`], plus once when the connection ends, so a flooding client cannot flood the log.
pub struct MessageLimit {
    bucket: Bucket,
    /// Names the connection in log lines; set at its first refusal.
    who: String,
    /// Refusals on this connection.
    refused: u64,
    /// Refusals not in a log line yet.
    unreported: u64,
    reported_at: Option<Instant>,
    /// When a client that asked for no reply was last told about a refusal.
    noticed_at: Option<Instant>,
}

impl MessageLimit {
    /// Refusals of `bucket` counted and reported.
    pub fn new(bucket: Bucket) -> Self {
        Self {
            bucket,
            who: String::new(),
            refused: 0,
            unreported: 0,
            reported_at: None,
            noticed_at: None,
        }
    }

    /// Takes one message (true: it may be handled); `who` names the connection in the log.
    pub fn take(&mut self, who: &dyn Display) -> bool {
        if self.bucket.take() {
            return true;
        }
        MESSAGES_REFUSED.fetch_add(1, Ordering::Relaxed);
        self.refused += 1;
        self.unreported += 1;
        let now = Instant::now();
        if self
            .reported_at
            .is_some_and(|t| now.duration_since(t) < REPORT_INTERVAL)
        {
            return false;
        }
        if self.reported_at.is_none() {
            self.who = who.to_string();
            tracing::warn!(
                connection = %self.who,
                "client message rate limit hit; further refusals on this connection are counted and logged every {}s",
                REPORT_INTERVAL.as_secs()
            );
        } else {
            tracing::warn!(
                connection = %self.who,
                refused = self.unreported,
                total = self.refused,
                "client messages refused by the rate limit since the last report"
            );
        }
        self.unreported = 0;
        self.reported_at = Some(now);
        false
    }

    /// Whether a refused message whose sender asked for no reply (no ack, no id) gets an error notice: the first of
    /// each [`REPORT_INTERVAL`] does, since one per refused message would itself be a flood.
    pub fn notice(&mut self) -> bool {
        let now = Instant::now();
        let due = self
            .noticed_at
            .is_none_or(|t| now.duration_since(t) >= REPORT_INTERVAL);
        if due {
            self.noticed_at = Some(now);
        }
        due
    }
}

impl Drop for MessageLimit {
    fn drop(&mut self) {
        if self.unreported > 0 {
            tracing::warn!(
                connection = %self.who,
                refused = self.unreported,
                total = self.refused,
                "client messages refused by the rate limit since the last report (connection closed)"
            );
        }
    }
}

/// One bucket per key, created on first use; full (idle) buckets are swept when the table grows.
pub struct Buckets<K> {
    rate: u32,
    burst: u32,
    table: Mutex<HashMap<K, Bucket>>,
}

impl<K: Eq + Hash + Clone> Buckets<K> {
    /// Buckets of `rate` per second with `burst`; a rate of zero means unlimited.
    pub fn new(rate: u32, burst: u32) -> Self {
        Self {
            rate,
            burst,
            table: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token from `key`'s bucket.
    pub fn take(&self, key: &K) -> bool {
        if self.rate == 0 {
            return true;
        }
        let mut table = self.table.lock();
        if table.len() >= SWEEP_AT {
            table.retain(|_, b| !b.is_full());
        }
        table
            .entry(key.clone())
            .or_insert_with(|| Bucket::new(self.rate, self.burst))
            .take()
    }
}

/// Concurrent connections per IP address.
pub struct Concurrent {
    max: usize,
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// Holds one connection slot of an IP address until dropped.
pub struct Slot {
    ip: IpAddr,
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Concurrent {
    /// At most `max` connections per address; zero means unlimited.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            counts: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// A slot for `ip`, or `None` when it already holds the maximum.
    pub fn acquire(&self, ip: IpAddr) -> Option<Slot> {
        let mut counts = self.counts.lock();
        let n = counts.entry(ip).or_insert(0);
        if self.max != 0 && *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Slot {
            ip,
            counts: self.counts.clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock();
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_allow_a_burst_then_refuse() {
        let b = Buckets::new(2, 3);
        let k = "k".to_owned();
        assert!((0..3).all(|_| b.take(&k)));
        assert!(!b.take(&k));
        assert!(Buckets::new(0, 0).take(&k), "zero means unlimited");
        // A burst smaller than the rate is kept as configured.
        let mut smooth = Bucket::new(100, 2);
        assert!(smooth.take() && smooth.take());
        assert!(
            !smooth.take(),
            "a burst of 2 admits 2 at once, whatever the rate"
        );
    }

    #[test]
    fn slots_are_released_on_drop() {
        let c = Concurrent::new(2);
        let ip: IpAddr = [127, 0, 0, 1].into();
        let a = c.acquire(ip).unwrap();
        let _b = c.acquire(ip).unwrap();
        assert!(c.acquire(ip).is_none());
        drop(a);
        assert!(c.acquire(ip).is_some());
    }

    #[test]
    fn message_refusals_are_counted_and_reported_once_per_interval() {
        let mut limit = MessageLimit::new(Bucket::new(1, 1));
        let before = MESSAGES_REFUSED.load(Ordering::Relaxed);
        assert!(limit.take(&"c"));
        assert!(!limit.take(&"c"));
        assert_eq!(
            (limit.refused, limit.unreported),
            (1, 0),
            "the first refusal is logged at once"
        );
        for _ in 0..100 {
            assert!(!limit.take(&"c"));
        }
        assert_eq!((limit.refused, limit.unreported), (101, 100));
        assert!(MESSAGES_REFUSED.load(Ordering::Relaxed) - before >= 101);
        // A new interval reports again, with the count since the last report.
        limit.reported_at = limit.reported_at.map(|t| t - REPORT_INTERVAL);
        assert!(!limit.take(&"c"));
        assert_eq!(limit.unreported, 0);
        // Senders that asked for no reply hear of one refusal per interval.
        assert!(limit.notice());
        assert!(!limit.notice());
        limit.noticed_at = limit.noticed_at.map(|t| t - REPORT_INTERVAL);
        assert!(limit.notice());
    }
}
