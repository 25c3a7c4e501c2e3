//! Presence aggregates: a tiny expression language over a channel's members (`users`, `count(role = owner)`), and
//! the summary `GET /api/channels/{channel}/presence` shows. Kept apart from the presence source so another value
//! source (collections, which adds document counts to seed 001's `dashboardStats`) can evaluate the same fields.
//!
//! A **unit** is one user with all their connections (several tabs count once) or one anonymous connection.
//!
//! | expression | value |
//! |---|---|
//! | `users` | the distinct user ids, sorted (anonymous connections have none), at most `max_users` |
//! | `count` | the number of units |
//! | `connections` | the number of connections |
//!
//! Each takes an optional filter: `count(role = owner)` keeps the units holding role `owner` (a user holds the
//! roles of any of their connections).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use crate::core::presence::Member;

/// Most distinct role names counted in a summary's `roles` (a handshake identity may claim many).
pub const MAX_ROLES_COUNTED: usize = 100;

/// What an expression computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Measure {
    Users,
    Count,
    Connections,
}

/// One parsed expression: a measure over the units passing an optional role filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expr {
    measure: Measure,
    role: Option<String>,
}

/// A malformed expression, with what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("presence expression {text:?}: {reason}")]
pub struct ExprError {
    text: String,
    reason: String,
}

impl Expr {
    /// Parses `users`, `count`, `connections`, each optionally followed by `(role = NAME)`.
    pub fn parse(text: &str) -> Result<Self, ExprError> {
        let err = |reason: &str| ExprError {
            text: text.to_owned(),
            reason: reason.to_owned(),
        };
        let t = text.trim();
        let (head, filter) = match t.split_once('(') {
            None => (t, None),
            Some((head, rest)) => {
                let inner = rest
                    .strip_suffix(')')
                    .ok_or_else(|| err("a filter ends with ')'"))?;
                (head.trim_end(), Some(inner))
            }
        };
        let measure = match head {
            "users" => Measure::Users,
            "count" => Measure::Count,
            "connections" => Measure::Connections,
            _ => return Err(err("expected users, count or connections")),
        };
        let role = match filter {
            None => None,
            Some(inner) => {
                let (key, value) = inner
                    .split_once('=')
                    .ok_or_else(|| err("a filter reads (role = NAME)"))?;
                if key.trim() != "role" {
                    return Err(err("the only filter is (role = NAME)"));
                }
                let value = value.trim();
                let value = value
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(value);
                if value.is_empty() || value.contains(['(', ')', '=', '"']) {
                    return Err(err("a role name is a non-empty word"));
                }
                Some(value.to_owned())
            }
        };
        Ok(Self { measure, role })
    }

    /// The value over `members` (`users` lists at most `max_users`).
    pub fn eval(&self, members: &[Member], max_users: usize) -> Value {
        let units = units(members);
        let kept = units.iter().filter(|u| {
            self.role
                .as_ref()
                .is_none_or(|r| u.roles.contains(r.as_str()))
        });
        match self.measure {
            Measure::Count => Value::from(kept.count()),
            Measure::Connections => Value::from(kept.map(|u| u.connections).sum::<usize>()),
            Measure::Users => Value::Array(
                kept.filter_map(|u| u.user.map(|s| Value::String(s.to_owned())))
                    .take(max_users)
                    .collect(),
            ),
        }
    }
}

/// A declared value: named fields, each an expression (`{ onlineUsers = "users", … }`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aggregate {
    fields: Vec<(String, Expr)>,
}

impl Aggregate {
    /// Parses every field's expression.
    pub fn parse<'a>(
        fields: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, ExprError> {
        let fields = fields
            .into_iter()
            .map(|(name, text)| Ok((name.to_owned(), Expr::parse(text)?)))
            .collect::<Result<_, ExprError>>()?;
        Ok(Self { fields })
    }

    /// The JSON object of every field over `members`.
    pub fn eval(&self, members: &[Member], max_users: usize) -> Map<String, Value> {
        self.fields
            .iter()
            .map(|(name, expr)| (name.clone(), expr.eval(members, max_users)))
            .collect()
    }
}

/// One user (all their connections) or one anonymous connection.
struct Unit<'a> {
    user: Option<&'a str>,
    roles: BTreeSet<&'a str>,
    connections: usize,
}

/// The units of `members`: users sorted by id first, then anonymous connections.
fn units(members: &[Member]) -> Vec<Unit<'_>> {
    let mut users: BTreeMap<&str, Unit<'_>> = BTreeMap::new();
    let mut anonymous = Vec::new();
    for m in members {
        let roles = m.roles.iter().map(String::as_str);
        match m.user.as_deref() {
            Some(user) => {
                let unit = users.entry(user).or_insert_with(|| Unit {
                    user: Some(user),
                    roles: BTreeSet::new(),
                    connections: 0,
                });
                unit.roles.extend(roles);
                unit.connections += 1;
            }
            None => anonymous.push(Unit {
                user: None,
                roles: roles.collect(),
                connections: 1,
            }),
        }
    }
    users.into_values().chain(anonymous).collect()
}

/// Who is on a channel, summed up: distinct users (at most `max_users`) and counts by role.
pub fn summary(members: &[Member], max_users: usize) -> Value {
    let units = units(members);
    let mut roles: BTreeMap<&str, usize> = BTreeMap::new();
    for unit in &units {
        for role in &unit.roles {
            if roles.len() < MAX_ROLES_COUNTED || roles.contains_key(role) {
                *roles.entry(role).or_default() += 1;
            }
        }
    }
    let users: Vec<&str> = units.iter().filter_map(|u| u.user).collect();
    serde_json::json!({
        "users": users.iter().take(max_users).collect::<Vec<_>>(),
        "users_truncated": users.len() > max_users,
        "counts": {
            "connections": members.len(),
            "users": users.len(),
            "anonymous": units.len() - users.len(),
            "roles": roles,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(conn: &str, user: Option<&str>, roles: &[&str]) -> Member {
        Member {
            conn: conn.into(),
            user: user.map(str::to_owned),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            transport: "socketio",
            connected_at: 0,
        }
    }

    /// Seed 001: a reader, an owner with two tabs, an anonymous visitor.
    fn seed001() -> Vec<Member> {
        vec![
            member("c1", Some("demoUser7"), &["reader"]),
            member("c2", Some("boss"), &["owner"]),
            member("c3", Some("boss"), &["owner"]),
            member("c4", None, &[]),
        ]
    }

    fn eval(text: &str, members: &[Member]) -> Value {
        Expr::parse(text).unwrap().eval(members, 1000)
    }

    #[test]
    fn measures_count_units_users_and_connections() {
        let m = seed001();
        assert_eq!(eval("users", &m), serde_json::json!(["boss", "demoUser7"]));
        assert_eq!(
            eval("count", &m),
            3,
            "two users and one anonymous connection"
        );
        assert_eq!(eval("connections", &m), 4);
        assert_eq!(eval("count(role = owner)", &m), 1, "two tabs of one owner");
        assert_eq!(eval("connections(role=owner)", &m), 2);
        assert_eq!(
            eval(" users( role = \"reader\" ) ", &m),
            serde_json::json!(["demoUser7"])
        );
        assert_eq!(eval("count(role = nobody)", &m), 0);
        assert_eq!(eval("count(role = owner)", &[]), 0);
    }

    #[test]
    fn users_are_capped() {
        let m: Vec<Member> = (0..10)
            .map(|i| member(&format!("c{i}"), Some(&format!("u{i}")), &[]))
            .collect();
        assert_eq!(
            Expr::parse("users").unwrap().eval(&m, 3),
            serde_json::json!(["u0", "u1", "u2"])
        );
        assert_eq!(
            Expr::parse("count").unwrap().eval(&m, 3),
            10,
            "counts stay exact"
        );
    }

    #[test]
    fn malformed_expressions_say_what_is_expected() {
        for (text, reason) in [
            ("online", "expected users, count or connections"),
            ("count(role = owner", "ends with ')'"),
            ("count(user = bob)", "the only filter is (role = NAME)"),
            ("count(owner)", "(role = NAME)"),
            ("count(role = )", "non-empty word"),
            ("", "expected users"),
        ] {
            let e = Expr::parse(text).unwrap_err().to_string();
            assert!(e.contains(reason), "{text:?}: {e}");
        }
    }

    #[test]
    fn an_aggregate_evaluates_every_field_and_the_summary_counts_by_role() {
        let a = Aggregate::parse([
            ("onlineUsers", "users"),
            ("connectedOwners", "count(role = owner)"),
        ])
        .unwrap();
        let v = Value::Object(a.eval(&seed001(), 1000));
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"{"connectedOwners":1,"onlineUsers":["boss","demoUser7"]}"#
        );
        let s = summary(&seed001(), 1);
        assert_eq!(
            s,
            serde_json::json!({
                "users": ["boss"],
                "users_truncated": true,
                "counts": {"connections": 4, "users": 2, "anonymous": 1, "roles": {"owner": 1, "reader": 1}},
            })
        );
    }
}
