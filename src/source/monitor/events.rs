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
use crate::number;

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
    /// Seed 002's contract: every status event carries `serviceId`, `status`, `responseTime` and `timestamp`,
    /// and a check that changed nothing that counts (see [`significant`]) publishes nothing.
    pub service_fields: bool,
    /// With `service_fields`, a new response time alone counts as a change.
    pub response_time_is_change: bool,
    /// Target objects also carry seed 000's flat definition fields (`type`, `url` or `host` + `port`, `keyword`).
    pub flat_targets: bool,
    /// The stats' key in the state of their channel.
    pub stats_key: &'static str,
}

/// The stats' key when they share the monitor channel: no monitor id can take it (ids are letters, digits, `-` and
/// `_`), and it sorts after every id, so a snapshot ends with the stats.
pub const SHARED_STATS_KEY: &str = "~stats";

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
    /// Stats channel (for the `targets` preset the monitor channel itself, else `{channel}:stats`).
    pub stats_channel: Option<String>,
    /// With the `services` preset, a check whose only change is its response time publishes an update.
    pub response_time_is_change: Option<bool>,
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
        // Seed 000 listens to one stream: its stats come with the monitors, as one more key of their state (a
        // bulk snapshot would put them in the array, so they keep their own channel then).
        let default_stats_channel = match (preset, &snapshot) {
            (Preset::Targets, Snapshot::Each) => channel.to_owned(),
            _ => format!("{channel}:stats"),
        };
        let stats_channel = o.stats_channel.clone().unwrap_or(default_stats_channel);
        Self {
            status: o.status_event.clone().unwrap_or_else(|| status.into()),
            changed_only: o.changed_fields_only.unwrap_or(changed_only),
            snapshot,
            removed: o.removed_event.clone().unwrap_or_else(|| removed.into()),
            log: opt(&o.log_event, log),
            stats: opt(&o.stats_event, stats),
            stats_key: if stats_channel == channel {
                SHARED_STATS_KEY
            } else {
                "stats"
            },
            stats_channel,
            throttle,
            service_fields: preset == Preset::Services,
            response_time_is_change: o.response_time_is_change.unwrap_or(false),
            flat_targets: preset == Preset::Targets,
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
        "interval": number::value(spec.interval),
        "tags": spec.tags,
        "uptime24h": rt.uptime_24h(now).map(number::value),
        "uptime30d": rt.uptime_30d(now).map(number::value),
        "avgResponseTime": rt.avg_response_24h(now).map(round1),
        "certDaysLeft": rt.cert_days,
        "recent": rt.recent.iter().map(|(t, ms, s)| json!([t, round1(*ms), s.as_str()])).collect::<Vec<_>>(),
        "details": {"message": rt.message, "certDaysLeft": rt.cert_days},
    })
}

/// Seed 002's `ServiceStatusUpdate`: `serviceId`, `status`, `responseTime` and `timestamp` always (its frontend
/// copies the first three into its cache on every update, so an absent one would become `undefined` there), and
/// `details` when they changed since `previous` (the frontend merges them, keeping its own when absent).
pub fn changed_fields(previous: Option<&Value>, full: &Value, now: i64) -> Value {
    let mut out = Map::new();
    out.insert("serviceId".into(), full["id"].clone());
    out.insert("status".into(), full["status"].clone());
    out.insert("responseTime".into(), full["responseTime"].clone());
    if previous.is_none_or(|p| p["details"] != full["details"]) {
        out.insert("details".into(), full["details"].clone());
    }
    out.insert("timestamp".into(), Value::String(timestamp(full, now)));
    Value::Object(out)
}

/// The full object with seed 002's `serviceId` and `timestamp` added (`changed_fields_only = false`).
pub fn with_service_fields(full: &Value, now: i64) -> Value {
    let mut out = full.clone();
    if let Value::Object(m) = &mut out {
        m.insert("serviceId".into(), full["id"].clone());
        m.insert("timestamp".into(), Value::String(timestamp(full, now)));
    }
    out
}

/// When the state was observed: the last check, else now (a monitor not checked yet).
fn timestamp(full: &Value, now: i64) -> String {
    match &full["lastCheckAt"] {
        Value::String(s) => s.clone(),
        _ => format_time(now),
    }
}

/// What counts as a change of a monitor for seed 002's updates: the full object without what every check
/// renews — the check time, uptime and average, the sparkline, and (unless `response_time` counts) the response
/// time. So a status, message, certificate or definition change publishes; a check that found the same does not.
pub fn significant(full: &Value, response_time: bool) -> Value {
    let mut out = full.clone();
    if let Value::Object(m) = &mut out {
        for k in [
            "lastCheckAt",
            "uptime24h",
            "uptime30d",
            "avgResponseTime",
            "recent",
        ] {
            m.remove(k);
        }
        if !response_time {
            m.remove("responseTime");
        }
    }
    out
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

/// Milliseconds to one decimal, whole values as integers.
fn round1(ms: f64) -> Value {
    number::value((ms * 10.0).round() / 10.0)
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
    fn changed_fields_carry_the_seed_002_fields_and_changed_details() {
        let a = json!({"id": "x", "status": "up", "responseTime": 5, "details": {"message": "200 OK"}, "lastCheckAt": "t1", "uptime24h": 1});
        let mut b = a.clone();
        b["responseTime"] = json!(7.5);
        b["lastCheckAt"] = json!("t2");
        b["uptime24h"] = json!(0.5);
        let d = changed_fields(Some(&a), &b, 0);
        assert_eq!(
            d,
            json!({"serviceId": "x", "status": "up", "responseTime": 7.5, "timestamp": "t2"})
        );
        let all = changed_fields(None, &b, 0);
        assert_eq!(all["details"]["message"], "200 OK");
        // Only the response time and what every check renews changed: not significant, unless asked.
        assert_eq!(significant(&a, false), significant(&b, false));
        assert_ne!(significant(&a, true), significant(&b, true));
        b["details"]["message"] = json!("503 Service Unavailable");
        assert_ne!(significant(&a, false), significant(&b, false));
        let full = with_service_fields(&b, 0);
        assert_eq!(
            (&full["serviceId"], &full["timestamp"], &full["id"]),
            (&json!("x"), &json!("t2"), &json!("x"))
        );
    }

    #[test]
    fn whole_numbers_stay_integers() {
        let spec: MonitorSpec = serde_json::from_value(
            json!({"name": "a", "interval": 5, "check": {"kind": "tcp", "host": "127.0.0.1", "port": 1}}),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let text = full("a", &spec, &Runtime::default(), 0).to_string();
        assert!(text.contains(r#""interval":5,"#), "{text}");
        let text = serde_json::to_string(&spec).unwrap_or_default();
        assert!(text.contains(r#""interval":5,"#), "{text}");
    }

    #[test]
    fn stats_share_the_channel_of_the_targets_preset() {
        let o = EventOverrides::default();
        let e = Events::resolve(Preset::Targets, &o, "monitors", Duration::ZERO);
        assert_eq!(
            (e.stats_channel.as_str(), e.stats_key),
            ("monitors", SHARED_STATS_KEY)
        );
        let e = Events::resolve(Preset::Herald, &o, "monitors", Duration::ZERO);
        assert_eq!(
            (e.stats_channel.as_str(), e.stats_key),
            ("monitors:stats", "stats")
        );
        let bulk = EventOverrides {
            bulk_event: Some("all".into()),
            ..Default::default()
        };
        let e = Events::resolve(Preset::Targets, &bulk, "monitors", Duration::ZERO);
        assert_eq!(e.stats_channel, "monitors:stats");
    }
}
