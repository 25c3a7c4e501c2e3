//! Rate limits: token buckets, per key (an IP address, an API key) and per connection, plus a count of
//! concurrent connections per IP address.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

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
}
