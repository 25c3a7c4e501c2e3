//! Measurement helpers: a fixed-size log-linear latency histogram and readers for a process's CPU time and RSS
//! from `/proc`.

/// Sub-buckets per power of two: 64 gives at most ~1.6% relative error.
const SUB_BITS: u32 = 6;
const SUB: usize = 1 << SUB_BITS;
const BUCKETS: usize = (64 - SUB_BITS as usize + 1) * SUB;

/// Log-linear histogram of `u64` values (microseconds here). Recording never allocates.
#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64; BUCKETS]>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: Box::new([0; BUCKETS]),
            total: 0,
            max: 0,
        }
    }
}

fn index(v: u64) -> usize {
    if v < SUB as u64 {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros();
    let shift = exp - SUB_BITS;
    (shift as usize + 1) * SUB + ((v >> shift) as usize & (SUB - 1))
}

/// Midpoint of the values that map to bucket `i`.
fn value(i: usize) -> u64 {
    if i < SUB {
        return i as u64;
    }
    let shift = (i / SUB - 1) as u32;
    let low = ((SUB + i % SUB) as u64) << shift;
    low + ((1u64 << shift) >> 1)
}

impl Histogram {
    pub fn record(&mut self, v: u64) {
        self.counts[index(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// Value at quantile `q` (0..=1); 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let target = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= target {
                return value(i).min(self.max);
            }
        }
        self.max
    }

    pub fn reset(&mut self) {
        self.counts.fill(0);
        self.total = 0;
        self.max = 0;
    }
}

/// Linux reports `/proc/PID/stat` times in USER_HZ, which is 100 on every mainstream architecture.
const USER_HZ_US: u64 = 10_000;

/// User + system CPU time of process `pid` (all threads, including exited ones) in microseconds.
pub fn cpu_us(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name start at field 3 (state); utime/stime are fields 14/15.
    let mut rest = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .skip(11);
    let utime: u64 = rest.next()?.parse().ok()?;
    let stime: u64 = rest.next()?.parse().ok()?;
    Some((utime + stime) * USER_HZ_US)
}

/// Resident set size (`VmRSS`) of process `pid` in KiB.
pub fn rss_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Busy CPU time of the whole machine (all CPUs, everything but idle and iowait) in microseconds.
pub fn machine_busy_us() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already included in user).
    let busy: u64 = v.iter().take(8).sum::<u64>() - v.get(3)? - v.get(4)?;
    Some(busy * USER_HZ_US)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_accurate() {
        let mut last = 0;
        for v in [0u64, 1, 63, 64, 65, 127, 128, 1000, 123_456, 10_000_000_000] {
            let i = index(v);
            assert!(i >= last && i < BUCKETS);
            last = i;
            let err = value(i).abs_diff(v) as f64 / v.max(1) as f64;
            assert!(err <= 0.016, "{v} -> {}", value(i));
        }
    }

    #[test]
    fn quantiles() {
        let mut h = Histogram::default();
        (1..=1000).for_each(|v| h.record(v));
        assert_eq!(h.total, 1000);
        assert!(h.quantile(0.5).abs_diff(500) <= 8);
        assert!(h.quantile(0.99).abs_diff(990) <= 16);
        assert_eq!(h.quantile(1.0), 1000);
        h.reset();
        assert_eq!(h.quantile(0.5), 0);
    }

    #[test]
    fn reads_own_proc_entries() {
        assert!(cpu_us("self").is_some());
        assert!(rss_kib("self").unwrap() > 0);
        assert!(machine_busy_us().is_some());
    }
}
