//! Aggregated logging of refusals: a flood must not become a log flood. The first refusal of a kind from an
//! address is logged at once; the rest are counted and logged as one line per kind and address each interval.

use std::collections::HashMap;
use std::net::IpAddr;

use parking_lot::Mutex;

/// How often the counted refusals are logged (by [`RefusalLog::flush`], called on this period by the server).
pub const INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Addresses tracked per interval; beyond it, refusals are counted under "other addresses".
const MAX_KEYS: usize = 4096;

/// Refusals told to clients, by their stable code (`herald_refusals_total`): every binding's and the HTTP API's
/// 4xx answers. Codes are `&'static str`s of the binary, so the set is bounded.
#[derive(Default)]
pub struct RefusalCounts {
    counts: Mutex<Vec<(&'static str, u64)>>,
}

impl RefusalCounts {
    const fn new() -> Self {
        Self {
            counts: Mutex::new(Vec::new()),
        }
    }

    /// Counts one refusal with `code`.
    pub fn count(&self, code: &'static str) {
        let mut counts = self.counts.lock();
        match counts.iter_mut().find(|(c, _)| *c == code) {
            Some((_, n)) => *n += 1,
            None => counts.push((code, 1)),
        }
    }

    /// Every code counted so far and its count, by code.
    pub fn all(&self) -> Vec<(&'static str, u64)> {
        let mut all = self.counts.lock().clone();
        all.sort_unstable();
        all
    }
}

/// The refusals of this process, by code.
pub static REFUSALS: RefusalCounts = RefusalCounts::new();

/// Refusals seen since the last flush, per kind and address (`None`: no address, or beyond `MAX_KEYS`).
#[derive(Default)]
pub struct RefusalLog {
    counts: Mutex<HashMap<(&'static str, Option<IpAddr>), u64>>,
}

impl RefusalLog {
    /// Counts one refusal of kind `what` (a short phrase such as "connection rate limit hit") from `ip`.
    pub fn record(&self, what: &'static str, ip: Option<IpAddr>) {
        let mut counts = self.counts.lock();
        let key = if counts.len() >= MAX_KEYS && !counts.contains_key(&(what, ip)) {
            (what, None)
        } else {
            (what, ip)
        };
        let n = counts.entry(key).or_insert(0);
        *n += 1;
        if *n == 1 {
            match key.1 {
                Some(ip) => {
                    tracing::warn!(%ip, "{what} (further refusals are counted and logged every {}s)", INTERVAL.as_secs())
                }
                None => tracing::warn!(
                    "{what} (further refusals are counted and logged every {}s)",
                    INTERVAL.as_secs()
                ),
            }
        }
    }

    /// Logs what was counted since the last flush beyond the first refusal of each kind and address, and starts over.
    pub fn flush(&self) {
        let counts = std::mem::take(&mut *self.counts.lock());
        for ((what, ip), n) in counts {
            if n <= 1 {
                continue;
            }
            let more = n - 1;
            let secs = INTERVAL.as_secs();
            match ip {
                Some(ip) => {
                    tracing::warn!(%ip, refused = more, "{what}: {more} more in the last {secs}s")
                }
                None => tracing::warn!(refused = more, "{what}: {more} more in the last {secs}s"),
            }
        }
    }

    /// Refusals counted since the last flush (for tests).
    #[cfg(test)]
    fn pending(&self) -> u64 {
        self.counts.lock().values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_every_refusal_and_starts_over_after_a_flush() {
        let log = RefusalLog::default();
        let ip: IpAddr = [127, 0, 0, 1].into();
        for _ in 0..1000 {
            log.record("socket limit hit", Some(ip));
        }
        log.record("publish rate limit hit", None);
        assert_eq!(log.pending(), 1001);
        log.flush();
        assert_eq!(log.pending(), 0);
    }
}
