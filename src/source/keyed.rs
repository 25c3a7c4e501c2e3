//! Keyed state diffs: what a source publishes when the values of a state channel change — the keys that went
//! away (removals) and the keys that are new or hold another value (sets), in a stable order — so every source
//! (the monitor, a SQL source in `rows` mode, collections) turns "the new values" into the same set/remove events.

use std::collections::BTreeMap;

use serde_json::value::RawValue;

use crate::core::state::StateChange;

/// How one key changed.
#[derive(Debug, PartialEq)]
pub enum Change<'a, V> {
    /// The key is gone; `old` was its value.
    Remove {
        /// The key.
        key: &'a str,
        /// Its last value.
        old: &'a V,
    },
    /// A key that was not there.
    Insert {
        /// The key.
        key: &'a str,
        /// Its value.
        new: &'a V,
    },
    /// A key now holding another value.
    Update {
        /// The key.
        key: &'a str,
        /// Its previous value.
        old: &'a V,
        /// Its new value.
        new: &'a V,
    },
}

impl<V> Change<'_, V> {
    /// The key this change is about.
    pub fn key(&self) -> &str {
        match self {
            Self::Remove { key, .. } | Self::Insert { key, .. } | Self::Update { key, .. } => key,
        }
    }

    /// The change of the channel's state: a removal, or the key set to its new value rendered by `render`.
    pub fn state(&self, render: impl FnOnce(&V) -> Box<RawValue>) -> StateChange {
        match self {
            Self::Remove { key, .. } => StateChange::Remove {
                key: (*key).to_owned(),
            },
            Self::Insert { key, new } | Self::Update { key, new, .. } => StateChange::Set {
                key: (*key).to_owned(),
                value: render(new),
            },
        }
    }
}

/// How `key` changed from `old` to `new` (`None`: absent); `None` if it did not (`same` compares two values).
pub fn change<'a, V>(
    key: &'a str,
    old: Option<&'a V>,
    new: Option<&'a V>,
    same: impl Fn(&V, &V) -> bool,
) -> Option<Change<'a, V>> {
    match (old, new) {
        (None, None) => None,
        (Some(old), None) => Some(Change::Remove { key, old }),
        (None, Some(new)) => Some(Change::Insert { key, new }),
        (Some(old), Some(new)) if same(old, new) => None,
        (Some(old), Some(new)) => Some(Change::Update { key, old, new }),
    }
}

/// The changes from `before` to `after`: every removal first, then the inserts and updates, each in key order (a
/// client applying them in turn never holds a key twice, e.g. a row whose key moved).
pub fn diff<'a, V>(
    before: &'a BTreeMap<String, V>,
    after: &'a BTreeMap<String, V>,
    same: impl Fn(&V, &V) -> bool,
) -> Vec<Change<'a, V>> {
    let removed = before
        .iter()
        .filter(|(k, _)| !after.contains_key(*k))
        .map(|(k, old)| Change::Remove { key: k, old });
    let set = after
        .iter()
        .filter_map(|(k, new)| change(k, before.get(k), Some(new), &same));
    removed.chain(set).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, i32)]) -> BTreeMap<String, i32> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    }

    #[test]
    fn removals_first_then_sets_in_key_order() {
        let before = map(&[("a", 1), ("b", 2), ("d", 4), ("e", 5)]);
        let after = map(&[("b", 20), ("c", 3), ("d", 4), ("a2", 1)]);
        let changes = diff(&before, &after, |x, y| x == y);
        assert_eq!(
            changes,
            vec![
                Change::Remove { key: "a", old: &1 },
                Change::Remove { key: "e", old: &5 },
                Change::Insert { key: "a2", new: &1 },
                Change::Update {
                    key: "b",
                    old: &2,
                    new: &20
                },
                Change::Insert { key: "c", new: &3 },
            ]
        );
    }

    #[test]
    fn nothing_changed_gives_nothing() {
        let m = map(&[("a", 1), ("b", 2)]);
        assert!(diff(&m, &m, |x, y| x == y).is_empty());
        assert!(
            diff(&BTreeMap::<String, i32>::new(), &BTreeMap::new(), |x, y| x
                == y)
            .is_empty()
        );
        // `same` decides what counts as a change.
        let before = map(&[("a", 1)]);
        let after = map(&[("a", 3)]);
        assert!(diff(&before, &after, |x, y| x % 2 == y % 2).is_empty());
    }

    #[test]
    fn from_and_to_empty() {
        let m = map(&[("x", 1), ("y", 2)]);
        let empty = BTreeMap::new();
        let keys = |c: Vec<Change<'_, i32>>| {
            c.iter()
                .map(|c| (matches!(c, Change::Remove { .. }), c.key().to_owned()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            keys(diff(&empty, &m, |x, y| x == y)),
            vec![(false, "x".into()), (false, "y".into())]
        );
        assert_eq!(
            keys(diff(&m, &empty, |x, y| x == y)),
            vec![(true, "x".into()), (true, "y".into())]
        );
    }

    #[test]
    fn state_changes_carry_the_new_value() {
        let render = |v: &i32| RawValue::from_string(v.to_string()).unwrap();
        match change("k", Some(&1), Some(&2), |x, y| x == y)
            .unwrap()
            .state(render)
        {
            StateChange::Set { key, value } => assert_eq!((key.as_str(), value.get()), ("k", "2")),
            other => panic!("expected a set, got {other:?}"),
        }
        match change("k", Some(&1), None, |x, y| x == y)
            .unwrap()
            .state(render)
        {
            StateChange::Remove { key } => assert_eq!(key, "k"),
            other => panic!("expected a removal, got {other:?}"),
        }
        assert!(change("k", Some(&1), Some(&1), |x, y| x == y).is_none());
        assert!(change::<i32>("k", None, None, |x, y| x == y).is_none());
    }
}
