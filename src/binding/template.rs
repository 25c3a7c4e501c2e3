//! Channel templates of mapped client events (`[socketio.client_events]`): `{arg}` is the event's first argument,
//! `{arg.FIELD}` (or `{arg.a.b}`) a field of that argument when it is an object. Values must be strings or numbers.
//! Templates are checked at start-up, so an unknown placeholder refuses to start instead of failing per event.

use serde_json::Value;

use crate::core::channel::ChannelName;

/// Why a client event's arguments do not fill its channel template.
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
    /// A template that was not checked at start-up.
    #[error("invalid channel template: {0}")]
    Template(String),
}

/// One piece of a parsed template.
enum Piece<'a> {
    Text(&'a str),
    /// `{arg}`.
    Arg,
    /// `{arg.FIELD}`: the path below the first argument.
    Field(&'a str),
}

fn parse(template: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut pieces = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        pieces.push(Piece::Text(&rest[..open]));
        let inner = &rest[open + 1..];
        let close = inner.find('}').ok_or("a `{` without its `}`")?;
        let name = &inner[..close];
        let field_ok = |f: &str| {
            f.split('.').all(|part| {
                !part.is_empty()
                    && part
                        .chars()
                        .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
            })
        };
        pieces.push(match name.strip_prefix("arg.") {
            None if name == "arg" => Piece::Arg,
            Some(field) if field_ok(field) => Piece::Field(field),
            _ => {
                return Err(format!(
                    "unknown placeholder {{{name}}}; use {{arg}} (the first argument) or {{arg.FIELD}} (a field of it)"
                ));
            }
        });
        rest = &inner[close + 1..];
    }
    pieces.push(Piece::Text(rest));
    Ok(pieces)
}

/// Checks a template at start-up: known placeholders only, and a valid channel name once they are filled in.
pub fn check(template: &str) -> Result<(), String> {
    let pieces = parse(template)?;
    let sample: String = pieces
        .iter()
        .map(|p| match p {
            Piece::Text(t) => t,
            Piece::Arg | Piece::Field(_) => "x",
        })
        .collect();
    ChannelName::new(&sample).map_err(|e| e.to_string())?;
    Ok(())
}

/// The channel name `template` gives for an event whose first argument is `first` (not yet validated as a name).
pub fn fill(template: &str, first: Option<&Value>) -> Result<String, FillError> {
    let pieces = parse(template).map_err(FillError::Template)?;
    let mut out = String::with_capacity(template.len());
    for piece in pieces {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Arg => match first {
                Some(Value::String(s)) => out.push_str(s),
                Some(Value::Number(n)) => out.push_str(&n.to_string()),
                other => return Err(FillError::Arg { found: kind(other) }),
            },
            Piece::Field(path) => {
                let problem = |problem: String| FillError::Field {
                    field: path.to_owned(),
                    problem,
                };
                let mut value = first;
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
                    Some(Value::String(s)) => out.push_str(s),
                    Some(Value::Number(n)) => out.push_str(&n.to_string()),
                    other => return Err(problem(format!("`{path}` is {}", kind(other)))),
                }
            }
        }
    }
    Ok(out)
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

    #[test]
    fn fills_the_argument_and_its_fields() {
        assert_eq!(
            fill("status:{arg}", Some(&json!("eu"))).unwrap(),
            "status:eu"
        );
        assert_eq!(fill("scan_{arg}", Some(&json!(42))).unwrap(), "scan_42");
        assert_eq!(
            fill("{arg.room}", Some(&json!({"room": "scan_42"}))).unwrap(),
            "scan_42"
        );
        assert_eq!(
            fill("user_{arg.who.id}", Some(&json!({"who": {"id": 7}}))).unwrap(),
            "user_7"
        );
        assert_eq!(fill("monitors", None).unwrap(), "monitors");
    }

    #[test]
    fn refuses_missing_or_unusable_values_naming_the_field() {
        let e = fill("{arg.room}", Some(&json!({"name": "x"}))).unwrap_err();
        assert!(e.to_string().contains("`room` is missing"), "{e}");
        let e = fill("{arg.room}", Some(&json!("scan_42"))).unwrap_err();
        assert!(e.to_string().contains("field `room`"), "{e}");
        assert!(e.to_string().contains("got a string"), "{e}");
        let e = fill("{arg.room}", Some(&json!({"room": true}))).unwrap_err();
        assert!(e.to_string().contains("`room` is a boolean"), "{e}");
        let e = fill("{arg.a.b}", Some(&json!({"a": 1}))).unwrap_err();
        assert!(e.to_string().contains("`a` is a number"), "{e}");
        // An absent argument is not an empty string: `status:` would be a valid, wrong channel.
        assert_eq!(
            fill("status:{arg}", None).unwrap_err(),
            FillError::Arg { found: "nothing" }
        );
        assert!(fill("{arg}", Some(&json!({"room": 1}))).is_err());
    }

    #[test]
    fn checks_templates_at_start_up() {
        assert!(check("monitors").is_ok());
        assert!(check("status:{arg}").is_ok());
        assert!(check("{arg.room}").is_ok());
        let e = check("{room}").unwrap_err();
        assert!(e.contains("unknown placeholder {room}"), "{e}");
        assert!(check("{arg.}").is_err());
        assert!(check("a{arg").is_err());
        assert!(
            check("a/{arg}").is_err(),
            "not a channel name once filled in"
        );
    }
}
