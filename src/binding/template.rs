//! Templates of mapped client events (`[socketio.client_events]`): the channel a client event names, and the data
//! it publishes or replies with. Placeholders:
//! - `{arg}`: the event's first argument; `{arg.FIELD}` (or `{arg.a.b}`): a field of it when it is an object;
//! - `{sub}`: the identity's `sub` claim; `{claims.NAME}`: its claim `NAME` (a token's, or a handshake identity's);
//! - `{A|B}`: the first of the alternatives `A`, `B`, … that has a value (`{arg.room|arg}` takes `{room: "x"}` and
//!   `"x"` alike).
//!
//! In a channel or inside longer text, values must be strings or numbers. In data, a string that is exactly one
//! placeholder is replaced by the JSON value itself (`data = "{arg}"` publishes the argument as sent). Templates
//! are checked at start-up, so an unknown placeholder refuses to start instead of failing per event.

use serde_json::{Map, Value};

use crate::auth::Identity;
use crate::core::channel::ChannelName;

/// Why a client event's arguments or identity do not fill its template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FillError {
    /// `{arg}` with a first argument that is not a string or number.
    #[error("the first argument must be a string or a number (it fills {{arg}}); got {found}")]
    Arg {
        /// What the first argument was.
        found: &'static str,
    },
    /// `{arg.FIELD}` with no string or number at `FIELD`.
    #[error(
        "the first argument must be an object with a string or number field `{field}` (it fills {{arg.{field}}}); {problem}"
    )]
    Field {
        /// The field's path.
        field: String,
        /// What is wrong with it.
        problem: String,
    },
    /// `{sub}` / `{claims.NAME}` with no such string or integer claim in the connection's identity.
    #[error(
        "the connection's identity has no usable claim `{claim}` (it fills {{{placeholder}}}); {problem}"
    )]
    Claim {
        /// The claim's name.
        claim: String,
        /// The placeholder as written.
        placeholder: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A template that was not checked at start-up.
    #[error("invalid template: {0}")]
    Template(String),
}

/// What fills a template: the event's first argument and the connection's identity.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    /// The event's first argument, if it had one.
    pub first: Option<&'a Value>,
    /// Who sent the event.
    pub identity: &'a Identity,
}

/// One source of a value.
#[derive(Debug, Clone, PartialEq)]
enum Source<'a> {
    /// `{arg}`.
    Arg,
    /// `{arg.FIELD}`: the path below the first argument.
    Field(&'a str),
    /// `{sub}` / `{claims.NAME}`: a claim of the identity.
    Claim(&'a str),
}

/// One piece of a parsed template.
#[derive(Debug, PartialEq)]
enum Piece<'a> {
    Text(&'a str),
    /// A placeholder: its alternatives in order, and its text as written (for messages).
    Value(Vec<Source<'a>>, &'a str),
}

fn name_ok(f: &str) -> bool {
    f.split('.').all(|part| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
    })
}

fn source(name: &str) -> Result<Source<'_>, String> {
    if name == "arg" {
        return Ok(Source::Arg);
    }
    if name == "sub" {
        return Ok(Source::Claim("sub"));
    }
    if let Some(field) = name.strip_prefix("arg.").filter(|f| name_ok(f)) {
        return Ok(Source::Field(field));
    }
    if let Some(claim) = name
        .strip_prefix("claims.")
        .filter(|c| !c.is_empty() && !c.contains(['{', '}', '|']))
    {
        return Ok(Source::Claim(claim));
    }
    Err(format!(
        "unknown placeholder {{{name}}}; use {{arg}} (the first argument), {{arg.FIELD}} (a field of it), {{sub}} or {{claims.NAME}} (the identity's claims), or alternatives {{A|B}}"
    ))
}

fn parse(template: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut pieces = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            pieces.push(Piece::Text(&rest[..open]));
        }
        let inner = &rest[open + 1..];
        let close = inner.find('}').ok_or("a `{` without its `}`")?;
        let name = &inner[..close];
        let sources = name.split('|').map(source).collect::<Result<_, _>>()?;
        pieces.push(Piece::Value(sources, name));
        rest = &inner[close + 1..];
    }
    if !rest.is_empty() || pieces.is_empty() {
        pieces.push(Piece::Text(rest));
    }
    Ok(pieces)
}

/// Checks a channel template at start-up: known placeholders only, and a valid channel name once they are filled.
pub fn check(template: &str) -> Result<(), String> {
    let pieces = parse(template)?;
    let sample: String = pieces
        .iter()
        .map(|p| match p {
            Piece::Text(t) => t,
            Piece::Value(..) => "x",
        })
        .collect();
    ChannelName::new(&sample).map_err(|e| e.to_string())?;
    Ok(())
}

/// Checks a data template at start-up: every string in it (not the keys) parses.
pub fn check_value(value: &Value) -> Result<(), String> {
    match value {
        Value::String(s) => parse(s).map(|_| ()),
        Value::Array(items) => items.iter().try_for_each(check_value),
        Value::Object(fields) => fields.values().try_for_each(check_value),
        _ => Ok(()),
    }
}

/// The channel name `template` gives in `ctx` (not yet validated as a name).
pub fn fill(template: &str, ctx: Context<'_>) -> Result<String, FillError> {
    let pieces = parse(template).map_err(FillError::Template)?;
    text(&pieces, template, ctx)
}

/// The data `value` gives in `ctx`: every string filled in, a string that is exactly one placeholder replaced by
/// the JSON value it names (`{arg}` with no argument is `null`).
pub fn fill_value(value: &Value, ctx: Context<'_>) -> Result<Value, FillError> {
    Ok(match value {
        Value::String(s) => {
            let pieces = parse(s).map_err(FillError::Template)?;
            match pieces.as_slice() {
                [Piece::Value(sources, written)] => {
                    match lookup_any(sources, written, ctx, true)? {
                        Some(v) => v.clone(),
                        None => Value::Null,
                    }
                }
                _ => Value::String(text(&pieces, s, ctx)?),
            }
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| fill_value(v, ctx))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| Ok((k.clone(), fill_value(v, ctx)?)))
                .collect::<Result<Map<_, _>, FillError>>()?,
        ),
        other => other.clone(),
    })
}

/// Pieces joined as text: each placeholder's value must be a string or a number.
fn text(pieces: &[Piece<'_>], template: &str, ctx: Context<'_>) -> Result<String, FillError> {
    let mut out = String::with_capacity(template.len());
    for piece in pieces {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Value(sources, written) => {
                match lookup_any(sources, written, ctx, false)? {
                    Some(Value::String(s)) => out.push_str(s),
                    Some(Value::Number(n)) => out.push_str(&n.to_string()),
                    // `lookup` only gives strings and numbers when a scalar is wanted.
                    _ => return Err(FillError::Template(format!("{{{written}}}"))),
                }
            }
        }
    }
    Ok(out)
}

/// The first alternative with a value; when none has one, the first alternative's reason.
fn lookup_any<'v>(
    sources: &[Source<'_>],
    written: &str,
    ctx: Context<'v>,
    any_value: bool,
) -> Result<Option<&'v Value>, FillError> {
    let mut first_error = None;
    for s in sources {
        match lookup(s, written, ctx, any_value) {
            Ok(v) => return Ok(v),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.unwrap_or_else(|| FillError::Template(format!("{{{written}}}"))))
}

/// The value of one source: a string or number, or with `any_value` any JSON value (`None`: no argument).
fn lookup<'v>(
    source: &Source<'_>,
    written: &str,
    ctx: Context<'v>,
    any_value: bool,
) -> Result<Option<&'v Value>, FillError> {
    let scalar = |v: &Value| any_value || matches!(v, Value::String(_) | Value::Number(_));
    match source {
        Source::Arg => match ctx.first {
            None if any_value => Ok(None),
            Some(v) if scalar(v) => Ok(Some(v)),
            other => Err(FillError::Arg { found: kind(other) }),
        },
        Source::Field(path) => {
            let problem = |problem: String| FillError::Field {
                field: (*path).to_owned(),
                problem,
            };
            let mut value = ctx.first;
            let mut walked = "";
            for part in path.split('.') {
                value = match value {
                    Some(Value::Object(fields)) => match fields.get(part) {
                        Some(v) => Some(v),
                        None => return Err(problem(format!("the field `{part}` is missing"))),
                    },
                    other if walked.is_empty() => {
                        return Err(problem(format!("got {}", kind(other))));
                    }
                    other => {
                        return Err(problem(format!("`{walked}` is {}", kind(other))));
                    }
                };
                walked = &path[..walked.len() + usize::from(!walked.is_empty()) + part.len()];
            }
            match value {
                Some(v) if scalar(v) => Ok(Some(v)),
                other => Err(problem(format!("`{path}` is {}", kind(other)))),
            }
        }
        Source::Claim(name) => {
            let claim = |problem| FillError::Claim {
                claim: (*name).to_owned(),
                placeholder: written.to_owned(),
                problem,
            };
            match ctx.identity.claims.get(*name) {
                None if ctx.identity.anonymous => Err(claim("the connection is anonymous")),
                None => Err(claim("it is missing")),
                Some(v @ Value::String(_)) => Ok(Some(v)),
                Some(v @ Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(Some(v)),
                Some(v) if any_value => Ok(Some(v)),
                Some(_) => Err(claim("it is not a string or an integer")),
            }
        }
    }
}

/// What a JSON value is, for error messages.
fn kind(v: Option<&Value>) -> &'static str {
    match v {
        None => "nothing",
        Some(Value::Null) => "null",
        Some(Value::Bool(_)) => "a boolean",
        Some(Value::Number(_)) => "a number",
        Some(Value::String(_)) => "a string",
        Some(Value::Array(_)) => "an array",
        Some(Value::Object(_)) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn who(claims: Value) -> Identity {
        match claims {
            Value::Object(m) => Identity::from_claims(m, "sub", "roles"),
            _ => Identity::anonymous(),
        }
    }

    fn with<'a>(first: Option<&'a Value>, identity: &'a Identity) -> Context<'a> {
        Context { first, identity }
    }

    /// `fill` for an anonymous connection.
    fn fill_arg(template: &str, first: Option<&Value>) -> Result<String, FillError> {
        fill(template, with(first, &Identity::anonymous()))
    }

    #[test]
    fn fills_the_argument_and_its_fields() {
        assert_eq!(
            fill_arg("status:{arg}", Some(&json!("eu"))).unwrap(),
            "status:eu"
        );
        assert_eq!(fill_arg("scan_{arg}", Some(&json!(42))).unwrap(), "scan_42");
        assert_eq!(
            fill_arg("{arg.room}", Some(&json!({"room": "scan_42"}))).unwrap(),
            "scan_42"
        );
        assert_eq!(
            fill_arg("user_{arg.who.id}", Some(&json!({"who": {"id": 7}}))).unwrap(),
            "user_7"
        );
        assert_eq!(fill_arg("monitors", None).unwrap(), "monitors");
    }

    #[test]
    fn refuses_missing_or_unusable_values_naming_the_field() {
        let e = fill_arg("{arg.room}", Some(&json!({"name": "x"}))).unwrap_err();
        assert!(e.to_string().contains("`room` is missing"), "{e}");
        let e = fill_arg("{arg.room}", Some(&json!("scan_42"))).unwrap_err();
        assert!(e.to_string().contains("field `room`"), "{e}");
        assert!(e.to_string().contains("got a string"), "{e}");
        let e = fill_arg("{arg.room}", Some(&json!({"room": true}))).unwrap_err();
        assert!(e.to_string().contains("`room` is a boolean"), "{e}");
        let e = fill_arg("{arg.a.b}", Some(&json!({"a": 1}))).unwrap_err();
        assert!(e.to_string().contains("`a` is a number"), "{e}");
        // An absent argument is not an empty string: `status:` would be a valid, wrong channel.
        assert_eq!(
            fill_arg("status:{arg}", None).unwrap_err(),
            FillError::Arg { found: "nothing" }
        );
        assert!(fill_arg("{arg}", Some(&json!({"room": 1}))).is_err());
    }

    #[test]
    fn alternatives_take_the_first_that_has_a_value() {
        // Seed 004's joinRoom, whether it sends `{room}` or the room name itself.
        assert_eq!(
            fill_arg("{arg.room|arg}", Some(&json!({"room": "scan_42"}))).unwrap(),
            "scan_42"
        );
        assert_eq!(
            fill_arg("{arg.room|arg}", Some(&json!("scan_42"))).unwrap(),
            "scan_42"
        );
        // None has one: the first alternative's reason.
        let e = fill_arg("{arg.room|arg}", Some(&json!({"name": "x"}))).unwrap_err();
        assert!(e.to_string().contains("`room` is missing"), "{e}");
    }

    #[test]
    fn fills_claims_of_the_identity() {
        let id = who(json!({"sub": "u1", "team": "eu", "n": 7, "tags": ["a"], "f": 1.5}));
        assert_eq!(fill("user_{sub}", with(None, &id)).unwrap(), "user_u1");
        assert_eq!(
            fill("status:{claims.team}", with(None, &id)).unwrap(),
            "status:eu"
        );
        assert_eq!(fill("n{claims.n}", with(None, &id)).unwrap(), "n7");
        for (template, problem) in [
            ("status:{claims.region}", "it is missing"),
            ("t:{claims.tags}", "not a string or an integer"),
            ("t:{claims.f}", "not a string or an integer"),
        ] {
            let e = fill(template, with(None, &id)).unwrap_err();
            assert!(matches!(e, FillError::Claim { .. }), "{e:?}");
            assert!(e.to_string().contains(problem), "{template}: {e}");
        }
        let e = fill("user_{sub}", with(None, &Identity::anonymous())).unwrap_err();
        assert!(e.to_string().contains("anonymous"), "{e}");
        assert!(e.to_string().contains("{sub}"), "{e}");
        // An argument can stand in for a claim, never the reverse order's surprise: the first with a value wins.
        assert_eq!(
            fill("user_{sub|arg}", with(Some(&json!("x")), &id)).unwrap(),
            "user_u1"
        );
    }

    #[test]
    fn fills_data_templates_keeping_json_values() {
        let id = who(json!({"sub": "u1", "team": "eu", "tags": ["a", "b"]}));
        let arg = json!({"room": "r1", "text": "hi", "n": 3});
        let ctx = with(Some(&arg), &id);
        assert_eq!(fill_value(&json!("{arg}"), ctx).unwrap(), arg);
        assert_eq!(fill_value(&json!("{arg.n}"), ctx).unwrap(), json!(3));
        assert_eq!(
            fill_value(
                &json!({"from": "{sub}", "text": "{arg.text}", "line": "{sub}: {arg.text}", "tags": "{claims.tags}", "k": [true, 1]}),
                ctx
            )
            .unwrap(),
            json!({"from": "u1", "text": "hi", "line": "u1: hi", "tags": ["a", "b"], "k": [true, 1]})
        );
        assert_eq!(
            fill_value(&json!({"connected": true}), ctx).unwrap(),
            json!({"connected": true})
        );
        assert_eq!(
            fill_value(&json!("{arg}"), with(None, &id)).unwrap(),
            Value::Null
        );
        assert!(fill_value(&json!("{arg.missing}"), ctx).is_err());
        assert!(
            fill_value(&json!("x {arg}"), ctx).is_err(),
            "an object inside text"
        );
    }

    #[test]
    fn checks_templates_at_start_up() {
        assert!(check("monitors").is_ok());
        assert!(check("status:{arg}").is_ok());
        assert!(check("{arg.room}").is_ok());
        assert!(check("{arg.room|arg}").is_ok());
        assert!(check("user_{sub}").is_ok());
        assert!(check("status:{claims.team}").is_ok());
        let e = check("{room}").unwrap_err();
        assert!(e.contains("unknown placeholder {room}"), "{e}");
        assert!(check("status:{team}").is_err());
        assert!(check("{arg.room|room}").is_err());
        assert!(check("{claims.}").is_err());
        assert!(check("{arg.}").is_err());
        assert!(check("a{arg").is_err());
        assert!(
            check("a/{arg}").is_err(),
            "not a channel name once filled in"
        );
        assert!(check_value(&json!({"a": ["{arg}", "{sub}"], "b": 1})).is_ok());
        let e = check_value(&json!({"a": {"b": "{team}"}})).unwrap_err();
        assert!(e.contains("unknown placeholder {team}"), "{e}");
    }
}
