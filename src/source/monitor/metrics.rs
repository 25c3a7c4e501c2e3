//! Prometheus text for the monitors, with Uptime Kuma's metric and label names so existing scrapes and
//! dashboards keep working, plus Herald's own (uptime ratios, check drift).

use std::fmt::Write as _;

use super::Monitors;
use super::check::Check;
use super::runtime::Status;
use crate::core::event::now_ms;

/// Renders every monitor metric.
pub fn render(monitors: &Monitors) -> String {
    let now = now_ms();
    let mut out = String::new();
    let rows = monitors.snapshot();
    let labels: Vec<String> = rows
        .iter()
        .map(|(id, spec, _)| {
            let (url, host, port) = match &spec.check {
                Check::Http(h) => (h.url.clone(), "null".to_owned(), "null".to_owned()),
                Check::Tcp(t) => ("null".into(), t.host.clone(), t.port.to_string()),
                Check::Udp(u) => ("null".into(), u.host.clone(), u.port.to_string()),
                Check::Dns(d) => ("null".into(), d.name.clone(), "53".into()),
            };
            format!(
                "monitor_id=\"{}\",monitor_name=\"{}\",monitor_type=\"{}\",monitor_url=\"{}\",monitor_hostname=\"{}\",monitor_port=\"{}\"",
                esc(id),
                esc(&spec.name),
                spec.kind(),
                esc(&url),
                esc(&host),
                esc(&port)
            )
        })
        .collect();
    let mut family = |name: &str, help: &str, value: &dyn Fn(usize) -> Option<f64>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (i, l) in labels.iter().enumerate() {
            if let Some(v) = value(i) {
                let _ = writeln!(out, "{name}{{{l}}} {v}");
            }
        }
    };
    family(
        "monitor_status",
        "Monitor Status (1 = UP, 0 = DOWN, 2 = PENDING, 3 = MAINTENANCE/PAUSED)",
        &|i| {
            Some(match rows[i].2.status {
                Status::Up | Status::Degraded => 1.0,
                Status::Down => 0.0,
                Status::Pending => 2.0,
                Status::Paused => 3.0,
            })
        },
    );
    family(
        "monitor_response_time",
        "Monitor Response Time (ms)",
        &|i| rows[i].2.response_ms,
    );
    family(
        "monitor_cert_days_remaining",
        "The number of days remaining until the certificate expires",
        &|i| rows[i].2.cert_days.map(|d| d as f64),
    );
    family(
        "monitor_cert_is_valid",
        "Is the certificate still valid? (1 = Yes, 0 = No)",
        &|i| rows[i].2.cert_days.map(|d| if d >= 0 { 1.0 } else { 0.0 }),
    );
    family(
        "herald_monitor_degraded",
        "1 when the monitor answers but slower than its threshold",
        &|i| Some(f64::from(u8::from(rows[i].2.status == Status::Degraded))),
    );
    family(
        "herald_monitor_uptime_ratio_24h",
        "Share of successful checks over the last 24 hours",
        &|i| rows[i].2.uptime_24h(now),
    );
    family(
        "herald_monitor_uptime_ratio_30d",
        "Share of successful checks over the last 30 days",
        &|i| rows[i].2.uptime_30d(now),
    );
    let (late, checks) = monitors.lateness();
    let avg = if late.checks > 0 {
        late.total_us as f64 / late.checks as f64 / 1e6
    } else {
        0.0
    };
    let _ = writeln!(
        out,
        "# HELP herald_monitor_checks_total Checks run\n# TYPE herald_monitor_checks_total counter\nherald_monitor_checks_total {checks}\n\
         # HELP herald_monitor_check_lateness_seconds How late scheduled checks started\n# TYPE herald_monitor_check_lateness_seconds gauge\n\
         herald_monitor_check_lateness_seconds{{stat=\"avg\"}} {avg}\nherald_monitor_check_lateness_seconds{{stat=\"max\"}} {}",
        late.max_us as f64 / 1e6
    );
    out
}

/// Escapes a Prometheus label value.
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
