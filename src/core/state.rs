//! State channels: a channel whose events also maintain a latest value per key, so a new subscriber first gets
//! a snapshot of every key and then the deltas that follow it, in one ordered stream.
//!
//! The state lives beside history: it is written in the same transaction as the event that changes it (durable,
//! never trimmed by retention) and mirrored in the hub, which copies it atomically with a subscription's
//! registration — the snapshot is exactly the state at the subscription's position, so no delta can slip
//! between the snapshot and the stream. Sources (the service monitor, live SQL, collections) publish each change
//! once, with [`StateChange`] set, and never have to answer new subscribers themselves.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use serde::Deserialize;
use serde_json::value::RawValue;

use super::channel::Pattern;
use crate::config_error::InvalidConfig;

/// A change to a channel's keyed state, carried by an event.
#[derive(Debug, Clone)]
pub enum StateChange {
    /// Sets `key` to `value` (the full value: the event's own data may be only a delta).
    Set {
        /// The key, e.g. a monitor id or a row key.
        key: String,
        /// The key's new full value.
        value: Box<RawValue>,
    },
    /// Removes `key`.
    Remove {
        /// The key.
        key: String,
    },
}

impl StateChange {
    /// The key this change is about.
    pub fn key(&self) -> &str {
        match self {
            Self::Set { key, .. } | Self::Remove { key } => key,
        }
    }
}

/// How a state channel's snapshot is sent to a new subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Snapshot {
    /// Each key's value as its own event, named like the event that last set it.
    Each,
    /// One event named `event` whose data is the JSON array of every value, ordered by key.
    Bulk {
        /// The event name, e.g. `service:bulk-update`.
        event: String,
    },
}

/// One key's latest value.
#[derive(Debug)]
pub struct Entry {
    /// The key.
    pub key: String,
    /// Name of the event that set it (the event name an `Each` snapshot uses).
    pub name: String,
    /// The value.
    pub value: Box<RawValue>,
}

/// A channel's values at one position, ordered by key. Built once per change and shared by every subscriber
/// registered before the next change, with the JSON array of a bulk snapshot rendered at most once.
#[derive(Debug, Default)]
pub struct Frozen {
    entries: Vec<Arc<Entry>>,
    array: OnceLock<Box<RawValue>>,
}

impl std::ops::Deref for Frozen {
    type Target = [Arc<Entry>];
    fn deref(&self) -> &Self::Target {
        &self.entries
    }
}

impl Frozen {
    /// The entry of `key`, if set (entries are ordered by key).
    pub fn get(&self, key: &str) -> Option<&Arc<Entry>> {
        let i = self
            .entries
            .binary_search_by(|e| e.key.as_str().cmp(key))
            .ok()?;
        self.entries.get(i)
    }

    /// Every value as one JSON array.
    fn array(&self) -> Box<RawValue> {
        self.array
            .get_or_init(|| {
                let len = self
                    .entries
                    .iter()
                    .map(|e| e.value.get().len() + 1)
                    .sum::<usize>();
                let mut json = String::with_capacity(2 + len);
                json.push('[');
                for (i, e) in self.entries.iter().enumerate() {
                    if i > 0 {
                        json.push(',');
                    }
                    json.push_str(e.value.get());
                }
                json.push(']');
                // Joining valid JSON values with commas inside brackets is valid JSON.
                RawValue::from_string(json).unwrap_or_else(|_| empty_array())
            })
            .clone()
    }
}

/// A channel's values at one position; cloning it is a reference count.
pub type Values = Arc<Frozen>;

/// The latest value per key of one channel.
#[derive(Debug, Default)]
pub struct Table {
    entries: BTreeMap<String, Arc<Entry>>,
    /// The values as of the last change, built on the first subscription after it.
    frozen: Option<Values>,
}

impl Table {
    /// Applies a committed event's change.
    pub fn apply(&mut self, name: &str, change: &StateChange) {
        self.frozen = None;
        match change {
            StateChange::Set { key, value } => {
                let entry = Entry {
                    key: key.clone(),
                    name: name.to_owned(),
                    value: value.clone(),
                };
                self.entries.insert(key.clone(), Arc::new(entry));
            }
            StateChange::Remove { key } => {
                self.entries.remove(key);
            }
        }
    }

    /// Loads one stored value (at start-up).
    pub fn load(&mut self, entry: Entry) {
        self.frozen = None;
        self.entries.insert(entry.key.clone(), Arc::new(entry));
    }

    /// The current values, ordered by key (built once per change).
    pub fn values(&mut self) -> Values {
        self.frozen
            .get_or_insert_with(|| {
                Arc::new(Frozen {
                    entries: self.entries.values().cloned().collect(),
                    array: OnceLock::new(),
                })
            })
            .clone()
    }
}

/// Which channels are declared state channels, and how their snapshots are sent.
#[derive(Debug, Default)]
pub struct Declarations {
    rules: Vec<(Pattern, Snapshot)>,
}

impl Declarations {
    /// Declares channels matching `pattern`; the first declaration matching a channel decides. Declaring an
    /// equal pattern again replaces its style in place (it keeps its precedence).
    pub fn declare(&mut self, pattern: Pattern, snapshot: Snapshot) {
        match self.rules.iter_mut().find(|(p, _)| *p == pattern) {
            Some(rule) => rule.1 = snapshot,
            None => self.rules.push((pattern, snapshot)),
        }
    }

    /// The snapshot style of `channel`, if it is declared.
    pub fn style(&self, channel: &str) -> Option<&Snapshot> {
        self.rules
            .iter()
            .find(|(p, _)| p.matches(channel))
            .map(|(_, s)| s)
    }
}

/// A state channel declaration (`[[state]]`): events published with a `key` keep a latest value per key, and a
/// new subscriber first gets the snapshot.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// Channel pattern (`*` wildcards).
    pub channels: String,
    /// Send the snapshot as one event of this name carrying the array of values; without it, each value is
    /// sent as the event that set it.
    pub bulk_event: Option<String>,
}

impl StateConfig {
    /// The snapshot style.
    pub fn snapshot(&self) -> Snapshot {
        match &self.bulk_event {
            Some(event) => Snapshot::Bulk {
                event: event.clone(),
            },
            None => Snapshot::Each,
        }
    }

    /// Checks that the pattern and the bulk event name are not empty.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        if self.channels.is_empty() || self.bulk_event.as_deref() == Some("") {
            return Err(InvalidConfig(
                "state: `channels` and `bulk_event` must not be empty".into(),
            ));
        }
        Ok(())
    }
}

/// The events that carry a snapshot to a subscriber: `(event name, data)` in order.
pub fn render(values: &Values, style: &Snapshot) -> Vec<(String, Box<RawValue>)> {
    match style {
        Snapshot::Each => values
            .iter()
            .map(|e| (e.name.clone(), e.value.clone()))
            .collect(),
        Snapshot::Bulk { event } => vec![(event.clone(), values.array())],
    }
}

fn empty_array() -> Box<RawValue> {
    RawValue::from_string("[]".to_owned()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn table_keeps_latest_per_key_and_renders_both_styles() {
        let mut t = Table::default();
        let set = |k: &str, v: &str| StateChange::Set {
            key: k.into(),
            value: raw(v),
        };
        t.apply("up", &set("b", r#"{"id":"b"}"#));
        t.apply("up", &set("a", r#"{"id":"a","v":1}"#));
        t.apply("changed", &set("a", r#"{"id":"a","v":2}"#));
        t.apply("x", &set("c", "3"));
        t.apply("gone", &StateChange::Remove { key: "c".into() });
        let values = t.values();
        let bulk = render(
            &values,
            &Snapshot::Bulk {
                event: "all".into(),
            },
        );
        assert_eq!(bulk.len(), 1);
        assert_eq!(bulk[0].0, "all");
        assert_eq!(bulk[0].1.get(), r#"[{"id":"a","v":2},{"id":"b"}]"#);
        // Built once per change: subscribers between two changes share one copy.
        assert!(Arc::ptr_eq(&values, &t.values()));
        let each = render(&values, &Snapshot::Each);
        let names: Vec<&str> = each.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["changed", "up"]);
        assert_eq!(
            render(
                &Values::default(),
                &Snapshot::Bulk {
                    event: "all".into()
                }
            )[0]
            .1
            .get(),
            "[]"
        );
    }
}
