//! The process's own figures from Linux `/proc/self` (CPU time, resident and virtual memory, open and allowed file
//! descriptors, start time), under the standard `process_*` names every Prometheus dashboard knows. Elsewhere the
//! files are absent and the figures are left out.

use super::text::{Kind, Text};

/// Clock ticks per second of `/proc/self/stat` times: `USER_HZ`, 100 on every Linux architecture Herald builds for.
const TICKS_PER_SECOND: f64 = 100.0;

/// Appends the process families that `/proc` has.
pub fn render(t: &mut Text<'_>) {
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name (which is in parentheses and may hold spaces): field 3 is at index 0.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
        if let (Some(utime), Some(stime)) = (field(14), field(15)) {
            t.single(
                "process_cpu_seconds_total",
                Kind::Counter,
                "User and system CPU time spent, in seconds.",
                (utime + stime) / TICKS_PER_SECOND,
            );
        }
        if let (Some(start), Some(boot)) = (field(22), boot_time()) {
            t.single(
                "process_start_time_seconds",
                Kind::Gauge,
                "Start time of the process since the UNIX epoch, in seconds.",
                boot + start / TICKS_PER_SECOND,
            );
        }
    }
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        };
        if let Some(rss) = kib("VmRSS:") {
            t.single(
                "process_resident_memory_bytes",
                Kind::Gauge,
                "Resident memory size, in bytes.",
                rss * 1024,
            );
        }
        if let Some(vm) = kib("VmSize:") {
            t.single(
                "process_virtual_memory_bytes",
                Kind::Gauge,
                "Virtual memory size, in bytes.",
                vm * 1024,
            );
        }
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        t.single(
            "process_open_fds",
            Kind::Gauge,
            "Open file descriptors (sockets included).",
            dir.count(),
        );
    }
    if let Some(max) = max_fds() {
        t.single(
            "process_max_fds",
            Kind::Gauge,
            "Most file descriptors the process may open (its soft limit).",
            max,
        );
    }
}

/// The boot time from `/proc/stat` (`btime`), in seconds since the UNIX epoch.
fn boot_time() -> Option<f64> {
    std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// The soft limit of open files from `/proc/self/limits`.
fn max_fds() -> Option<u64> {
    std::fs::read_to_string("/proc/self/limits")
        .ok()?
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_on_linux() {
        let mut out = String::new();
        render(&mut Text::new(&mut out));
        if std::path::Path::new("/proc/self/stat").exists() {
            for name in [
                "process_cpu_seconds_total ",
                "process_resident_memory_bytes ",
                "process_open_fds ",
                "process_max_fds ",
                "process_start_time_seconds ",
            ] {
                assert!(out.contains(name), "{name} missing from {out}");
            }
        }
    }
}
