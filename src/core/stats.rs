//! What the engine counts, as plain atomics: the counter, gauge and histogram types every module counts with, and
//! the engine's own figures (publishes by origin and outcome, publish latency, group-commit size, fsync time,
//! storage errors). `crate::metrics` renders them for `/metrics`; nothing here knows of HTTP or of a format.
//!
//! Every update is one relaxed atomic add on a value of its own cache line (no lock, no allocation), so counting on
//! the delivery path costs a few nanoseconds; callers count per batch where they have one.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// A monotonically increasing count, alone on its cache line (two hot counters never share one).
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct Counter(AtomicU64);

impl Counter {
    /// A counter at zero.
    pub const fn new() -> Self {
        Self(AtomicU64::new(0))
    }

    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (open connections, queued bytes).
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// A gauge at zero.
    pub const fn new() -> Self {
        Self(AtomicI64::new(0))
    }

    /// Adds `n` (negative to lower it).
    #[inline]
    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The value (never below zero: a racing read may see a decrement before its increment).
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed).max(0)
    }
}

/// Bucket bounds of a histogram, in the integer unit it records (nanoseconds for durations), and how that unit
/// converts to the base unit it is shown in (seconds: `1e-9`).
#[derive(Debug)]
pub struct Buckets {
    /// Upper bounds, increasing; an implicit `+Inf` bucket follows.
    pub bounds: &'static [u64],
    /// Base units per recorded unit.
    pub scale: f64,
}

/// Durations from 100 µs to 10 s, in nanoseconds.
pub const SECONDS: Buckets = Buckets {
    bounds: &[
        100_000,
        250_000,
        500_000,
        1_000_000,
        2_500_000,
        5_000_000,
        10_000_000,
        25_000_000,
        50_000_000,
        100_000_000,
        250_000_000,
        500_000_000,
        1_000_000_000,
        2_500_000_000,
        10_000_000_000,
    ],
    scale: 1e-9,
};

/// Counts from 1 to 1024, by powers of two.
pub const COUNTS: Buckets = Buckets {
    bounds: &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024],
    scale: 1.0,
};

/// Most buckets a histogram has (its bounds and `+Inf`).
const MAX_BUCKETS: usize = 16;

/// A distribution: per-bucket counts (not cumulative), their sum and how many were observed.
#[derive(Debug)]
pub struct Histogram {
    buckets: &'static Buckets,
    counts: [AtomicU64; MAX_BUCKETS],
    sum: AtomicU64,
}

/// A histogram as read: cumulative counts per bound (then `+Inf`), and the sum in base units.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound in base units, observations at or below it)`, increasing; `+Inf` is `count`.
    pub buckets: Vec<(f64, u64)>,
    /// Sum of the observations, in base units.
    pub sum: f64,
    /// Observations.
    pub count: u64,
}

impl Histogram {
    /// An empty histogram over `buckets` (at most 15 bounds).
    pub const fn new(buckets: &'static Buckets) -> Self {
        assert!(buckets.bounds.len() < MAX_BUCKETS);
        Self {
            buckets,
            counts: [const { AtomicU64::new(0) }; MAX_BUCKETS],
            sum: AtomicU64::new(0),
        }
    }

    /// Records one observation of `value` recorded units.
    #[inline]
    pub fn observe(&self, value: u64) {
        let bounds = self.buckets.bounds;
        let i = bounds
            .iter()
            .position(|b| value <= *b)
            .unwrap_or(bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// Records a duration (for histograms in nanoseconds).
    #[inline]
    pub fn observe_duration(&self, d: Duration) {
        self.observe(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// The histogram now.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(self.buckets.bounds.len());
        for (i, bound) in self.buckets.bounds.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            buckets.push((*bound as f64 * self.buckets.scale, cumulative));
        }
        cumulative += self.counts[self.buckets.bounds.len()].load(Ordering::Relaxed);
        HistogramSnapshot {
            buckets,
            sum: self.sum.load(Ordering::Relaxed) as f64 * self.buckets.scale,
            count: cumulative,
        }
    }
}

/// Who published: the `source` label of `herald_publishes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `POST /api/publish`.
    Api,
    /// A client event mapped to a publish (`[socketio.client_events]`).
    Client,
    /// A SQL source.
    Sql,
    /// The monitor.
    Monitor,
    /// The presence source (join/leave events, aggregates).
    Presence,
    /// The collections source (documents written through its API).
    Collection,
    /// A forward backend's answer (`[forward]`), and the forward disconnect outbox.
    Forward,
}

impl Origin {
    /// Every origin, in label order.
    pub const ALL: [Origin; 7] = [
        Origin::Api,
        Origin::Client,
        Origin::Sql,
        Origin::Monitor,
        Origin::Presence,
        Origin::Collection,
        Origin::Forward,
    ];

    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            Origin::Api => "api",
            Origin::Client => "client",
            Origin::Sql => "sql",
            Origin::Monitor => "monitor",
            Origin::Presence => "presence",
            Origin::Collection => "collection",
            Origin::Forward => "forward",
        }
    }
}

/// What became of a published event: the `result` label of `herald_publishes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Committed (durable).
    Ok,
    /// Refused before the engine (invalid, forbidden, too large, rate limited).
    Rejected,
    /// The engine failed to commit it.
    Failed,
}

impl Outcome {
    /// Every outcome, in label order.
    pub const ALL: [Outcome; 3] = [Outcome::Ok, Outcome::Rejected, Outcome::Failed];

    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Rejected => "rejected",
            Outcome::Failed => "failed",
        }
    }
}

/// Publish counts by origin and outcome, in events.
#[derive(Debug)]
pub struct Publishes([[Counter; 3]; Origin::ALL.len()]);

impl Publishes {
    const fn new() -> Self {
        Self([const { [const { Counter::new() }; 3] }; Origin::ALL.len()])
    }

    /// Counts `events` events of `origin` that came to `outcome`.
    pub fn record(&self, origin: Origin, outcome: Outcome, events: usize) {
        self.0[origin as usize][outcome as usize].add(events as u64);
    }

    /// The count of `origin` and `outcome`.
    pub fn get(&self, origin: Origin, outcome: Outcome) -> u64 {
        self.0[origin as usize][outcome as usize].get()
    }
}

/// Events published, by origin and outcome (`herald_publishes_total`).
pub static PUBLISHES: Publishes = Publishes::new();

/// Time from a publish request to its commit, for committed publishes (`herald_publish_duration_seconds`).
pub static PUBLISH_SECONDS: Histogram = Histogram::new(&SECONDS);

/// Storage failures the engines raised, each [`super::engine::EngineError::unavailable`] (`herald_engine_errors_total`).
pub static ENGINE_ERRORS: Counter = Counter::new();

/// Publish commands per group commit of the SQLite writer (`herald_commit_batch_size`).
pub static COMMIT_BATCH: Histogram = Histogram::new(&COUNTS);

/// Time of each group commit's `COMMIT` (the fsync, with `durability = "full"`) (`herald_commit_fsync_seconds`).
pub static COMMIT_SECONDS: Histogram = Histogram::new(&SECONDS);

/// Counts one publish that reached the engine: its events under `origin`, and its latency from `started` when it
/// committed.
pub fn record_publish<T, E>(
    origin: Origin,
    events: usize,
    started: std::time::Instant,
    result: &Result<T, E>,
) {
    match result {
        Ok(_) => {
            PUBLISHES.record(origin, Outcome::Ok, events);
            PUBLISH_SECONDS.observe_duration(started.elapsed());
        }
        Err(_) => PUBLISHES.record(origin, Outcome::Failed, events),
    }
}

/// What an engine holds now, for gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Channels this node's fan-out knows (every channel, for the local engines).
    pub channels: u64,
    /// Channel registrations of this node's subscribers.
    pub subscriptions: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_counts_cumulatively_in_base_units() {
        static H: Histogram = Histogram::new(&SECONDS);
        H.observe_duration(Duration::from_micros(50));
        H.observe_duration(Duration::from_millis(3));
        H.observe_duration(Duration::from_secs(60));
        let s = H.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.buckets[0], (0.0001, 1));
        let at_5ms = s.buckets.iter().find(|(b, _)| (*b - 0.005).abs() < 1e-12);
        assert_eq!(at_5ms.map(|b| b.1), Some(2));
        assert_eq!(
            s.buckets.last().map(|b| b.1),
            Some(2),
            "60 s is only in +Inf"
        );
        assert!((s.sum - 60.00305).abs() < 1e-9, "{}", s.sum);
    }

    #[test]
    fn publishes_count_events_by_origin_and_outcome() {
        let p = Publishes::new();
        p.record(Origin::Sql, Outcome::Ok, 3);
        p.record(Origin::Sql, Outcome::Failed, 1);
        assert_eq!(p.get(Origin::Sql, Outcome::Ok), 3);
        assert_eq!(p.get(Origin::Sql, Outcome::Failed), 1);
        assert_eq!(p.get(Origin::Api, Outcome::Ok), 0);
    }

    #[test]
    fn a_gauge_never_reads_below_zero() {
        let g = Gauge::new();
        g.add(-1);
        assert_eq!(g.get(), 0);
        g.add(3);
        assert_eq!(g.get(), 2);
    }
}
