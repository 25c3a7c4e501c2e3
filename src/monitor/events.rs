//! What the monitor tells subscribers: event names and payload shapes, chosen by a preset (Herald's own, seed
//! 000's `target:updated`/`log:new`, seed 002's `service:status` deltas + `service:bulk-update`) and overridable
//! field by field in `[monitor]`.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::runtime::Runtime;
use super::spec::MonitorSpec;
use crate::core::event::format_time;
use crate::core::state::Snapshot;

/// A named set of event names and shapes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// `monitor:status` (full object), `monitor:log`, `monitor:stats`; snapshot: each monitor.
    #[default]
    Herald,
    /// Seed 000: `target:updated` (full object), `log:new`, `dashboardStats`; snapshot: each monitor.
    Targets,
    /// Seed 002: `service:status` with only the changed fields, `service:bulk-update` snapshot.
    Services,
}

/// The resolved event settings.
#[derive(Debug, Clone)]
pub struct Events {
    /// Status event name.
    pub status: String,
    /// Send only the fields that changed (plus the id and timestamp) in status events.
    pub changed_only: bool,
    /// How a new subscriber gets every monitor.
    pub snapshot: Snapshot,
    /// Event for a deleted monitor.
    pub removed: String,
    /// Log event name; `None` sends no log events.
    pub log: Option<String>,
    /// Stats event name; `None` sends no stats.
    pub stats: Option<String>,
    /// Channel of the stats event.
    pub stats_channel: String,
    /// At most one status event per monitor per this period; the latest state is sent when it ends.
    pub throttle: Duration,
}

/// Optional overrides of a preset, as written in `[monitor]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventOverrides {
    /// Status event name.
    pub status_event: Option<String>,
    /// Changed fields only.
    pub changed_fields_only: Option<bool>,
    /// Snapshot as one bulk event of this name (empty string: each monitor as a status event).
    pub bulk_event: Option<String>,
    /// Deleted-monitor event name.
    pub removed_event: Option<String>,
    /// Log event name (empty string: none).
    pub log_event: Option<String>,
    /// Stats event name (empty string: none).
    pub stats_event: Option<String>,
    /// Stats channel.
    pub stats_channel: Option<String>,
}

impl Events {
    /// A preset with overrides applied.
    pub fn resolve(preset: Preset, o: &EventOverrides, channel: &str, throttle: Duration) -> Self {
        let (status, changed_only, bulk, removed, log, stats) = match preset {
            Preset::Herald => (
                "monitor:status",
                false,
                None,
                "monitor:removed",
                Some("monitor:log"),
                Some("monitor:stats"),
            ),
            Preset::Targets => (
                "target:updated",
                false,
                None,
                "target:deleted",
                Some("log:new"),
                Some("dashboardStats"),
            ),
            Preset::Services => (
                "service:status",
                true,
                Some("service:bulk-update"),
                "service:removed",
                None,
                None,
            ),
        };
        let opt = |over: &Option<String>, default: Option<&str>| match over {
            Some(s) if s.is_empty() => None,
            Some(s) => Some(s.clone()),
            None => default.map(str::to_owned),
        };
        let snapshot = match opt(&o.bulk_event, bulk) {
            Some(event) => Snapshot::Bulk { event },
            None => Snapshot::Each,
        };
        Self {
            status: o.status_event.clone().unwrap_or_else(|| status.into()),
            changed_only: o.changed_fields_only.unwrap_or(changed_only),
            snapshot,
            removed: o.removed_event.clone().unwrap_or_else(|| removed.into()),
            log: opt(&o.log_event, log),
            stats: opt(&o.stats_event, stats),
            stats_channel: o
                .stats_channel
                .clone()
                .unwrap_or_else(|| format!("{channel}:stats")),
            throttle,
        }
    }
}

/// The full object of one monitor, as status events, snapshots and the REST API show it.
pub fn full(id: &str, spec: &MonitorSpec, rt: &Runtime, now: i64) -> Value {
    let time = |t: Option<i64>| t.map_or(Value::Null, |t| Value::String(format_time(t)));
    json!({
        "id": id,
        "name": spec.name,
        "kind": spec.kind(),
        "target": spec.check.public_target(),
        "status": rt.status.as_str(),
        "responseTime": rt.response_ms.map(round1),
        "lastCheckAt": time(rt.last_check),
        "lastChange": time(rt.last_change),
        "message": rt.message,
        "paused": spec.paused,
        "interval": spec.interval,
        "tags": spec.tags,
        "uptime24h": rt.uptime_24h(now),
        "uptime30d": rt.uptime_30d(now),
        "avgResponseTime": rt.avg_response_24h(now).map(round1),
        "certDaysLeft": rt.cert_days,
        "recent": rt.recent.iter().map(|(t, ms, s)| json!([t, round1(*ms), s.as_str()])).collect::<Vec<_>>(),
        "details": {"message": rt.message, "certDaysLeft": rt.cert_days},
    })
}

/// Seed 002's `ServiceStatusUpdate`: the id and timestamp, plus whichever of status, response time and details
/// changed since `previous` (everything when there is none).
pub fn changed_fields(previous: Option<&Value>, full: &Value, now: i64) -> Value {
    let mut out = Map::new();
    out.insert("serviceId".into(), full["id"].clone());
    for (field, from) in [
        ("status", "status"),
        ("responseTime", "responseTime"),
        ("details", "details"),
    ] {
        if previous.is_none_or(|p| p[from] != full[from]) {
            out.insert(field.into(), full[from].clone());
        }
    }
    let timestamp = match &full["lastCheckAt"] {
        Value::String(s) => s.clone(),
        _ => format_time(now),
    };
    out.insert("timestamp".into(), Value::String(timestamp));
    Value::Object(out)
}

/// A log event's payload.
pub fn log_entry(log_id: i64, id: &str, name: &str, rt: &Runtime, now: i64) -> Value {
    json!({
        "id": log_id,
        "monitorId": id,
        "name": name,
        "status": rt.status.as_str(),
        "responseTime": rt.response_ms.map(round1),
        "message": rt.message,
        "createdAt": format_time(now),
    })
}

fn round1(ms: f64) -> f64 {
    (ms * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_and_overrides() {
        let e = Events::resolve(
            Preset::Services,
            &EventOverrides::default(),
            "status",
            Duration::from_secs(1),
        );
        assert_eq!(e.status, "service:status");
        assert!(e.changed_only);
        assert_eq!(
            e.snapshot,
            Snapshot::Bulk {
                event: "service:bulk-update".into()
            }
        );
        assert_eq!(e.log, None);
        let o = EventOverrides {
            log_event: Some(String::new()),
            bulk_event: Some("all".into()),
            ..Default::default()
        };
        let e = Events::resolve(Preset::Targets, &o, "uptime", Duration::ZERO);
        assert_eq!(
            (e.status.as_str(), e.log, e.stats_channel.as_str()),
            ("target:updated", None, "uptime:stats")
        );
        assert_eq!(
            e.snapshot,
            Snapshot::Bulk {
                event: "all".into()
            }
        );
    }

    #[test]
    fn changed_fields_carry_only_what_changed() {
        let a = json!({"id": "x", "status": "up", "responseTime": 5.0, "details": {"message": "200 OK"}, "lastCheckAt": "t1"});
        let mut b = a.clone();
        b["responseTime"] = json!(7.0);
        b["lastCheckAt"] = json!("t2");
        let d = changed_fields(Some(&a), &b, 0);
        assert_eq!(
            d,
            json!({"serviceId": "x", "responseTime": 7.0, "timestamp": "t2"})
        );
        let all = changed_fields(None, &b, 0);
        assert_eq!(all["status"], "up");
    }
}
