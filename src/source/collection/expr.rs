//! The tiny language of derived values: no scripting, only what a dashboard counts.
//!
//! Per document: `PATH` (`id`, `author.name`: the value there, `null` if absent) and `len(PATH)` (an array's or
//! object's size, a string's characters; 0 if absent). Over the collection: `count`, `count(FIELD = VALUE)`,
//! `sum(PATH)`, `sum(len(PATH))`, each with an optional filter (`sum(len(favorites), status = open)`), and
//! `presence(EXPR)` with a presence aggregate (`presence(count(role = owner))`, see `presence::aggregate`).
//! Every collection expression is a sum of per-document contributions, so a value can be updated from the
//! contributions of the documents a write changes.

use serde_json::Value;

use crate::source::presence::aggregate;

/// A parse error, naming what was expected.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("expression {text:?}: {message}")]
pub struct ExprError {
    text: String,
    message: String,
}

fn err<T>(text: &str, message: impl Into<String>) -> Result<T, ExprError> {
    Err(ExprError {
        text: text.to_owned(),
        message: message.into(),
    })
}

/// A path into a document: field names separated by `.`.
#[derive(Debug, Clone, PartialEq)]
pub struct Path(Vec<String>);

impl Path {
    fn parse(whole: &str, text: &str) -> Result<Self, ExprError> {
        let parts: Vec<String> = text.trim().split('.').map(str::to_owned).collect();
        let ok = parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_alphanumeric() || c == '_' || c == '-' || c == '$')
        });
        if !ok {
            return err(
                whole,
                format!("{text:?} is not a field path (names joined by '.')"),
            );
        }
        Ok(Self(parts))
    }

    /// The value at this path, if any.
    pub fn get<'a>(&self, doc: &'a Value) -> Option<&'a Value> {
        self.0.iter().try_fold(doc, |v, k| v.get(k))
    }
}

/// A per-document expression.
#[derive(Debug, Clone, PartialEq)]
pub enum DocExpr {
    /// The value at a path.
    Path(Path),
    /// The size at a path.
    Len(Path),
}

impl DocExpr {
    /// Parses `PATH` or `len(PATH)`.
    pub fn parse(text: &str) -> Result<Self, ExprError> {
        let t = text.trim();
        match call(t, "len") {
            Some(inner) => Ok(Self::Len(Path::parse(text, inner)?)),
            None => Ok(Self::Path(Path::parse(text, t)?)),
        }
    }

    /// Its value for `doc`.
    pub fn eval(&self, doc: &Value) -> Value {
        match self {
            Self::Path(p) => p.get(doc).cloned().unwrap_or(Value::Null),
            Self::Len(p) => Value::from(len(p.get(doc))),
        }
    }

    fn number(&self, doc: &Value) -> f64 {
        match self {
            Self::Path(p) => p.get(doc).and_then(Value::as_f64).unwrap_or(0.0),
            Self::Len(p) => len(p.get(doc)) as f64,
        }
    }
}

fn len(v: Option<&Value>) -> usize {
    match v {
        Some(Value::Array(a)) => a.len(),
        Some(Value::Object(o)) => o.len(),
        Some(Value::String(s)) => s.chars().count(),
        _ => 0,
    }
}

/// `FIELD = VALUE`: documents whose field equals the value (a bare word or quoted string is a string; numbers,
/// `true`, `false` and `null` are themselves).
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    path: Path,
    value: Value,
}

impl Filter {
    fn parse(whole: &str, text: &str) -> Result<Self, ExprError> {
        let Some((field, value)) = text.split_once('=') else {
            return err(whole, format!("{text:?} is not a filter FIELD = VALUE"));
        };
        let value = value.trim();
        let value = if let Some(s) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
            Value::String(s.to_owned())
        } else {
            serde_json::from_str::<Value>(value)
                .ok()
                .filter(|v| !v.is_array() && !v.is_object())
                .unwrap_or_else(|| Value::String(value.to_owned()))
        };
        if value.as_str() == Some("") {
            return err(whole, "the filter's value is empty");
        }
        Ok(Self {
            path: Path::parse(whole, field)?,
            value,
        })
    }

    /// Whether `doc` passes.
    pub fn matches(&self, doc: &Value) -> bool {
        match (self.path.get(doc), &self.value) {
            (Some(Value::Number(a)), Value::Number(b)) => a.as_f64() == b.as_f64(),
            (Some(a), b) => a == b,
            (None, b) => b.is_null(),
        }
    }
}

/// A collection expression.
#[derive(Debug, Clone)]
pub enum CollExpr {
    /// Documents passing the filter.
    Count(Option<Filter>),
    /// The sum of a per-document number over those passing the filter.
    Sum(DocExpr, Option<Filter>),
    /// A presence aggregate.
    Presence(aggregate::Expr),
}

impl CollExpr {
    /// Parses one collection expression.
    pub fn parse(text: &str) -> Result<Self, ExprError> {
        let t = text.trim();
        if t == "count" {
            return Ok(Self::Count(None));
        }
        if let Some(inner) = call(t, "count") {
            return Ok(Self::Count(Some(Filter::parse(text, inner)?)));
        }
        if let Some(inner) = call(t, "sum") {
            // `sum(len(x), f = v)`: the filter follows the last top-level comma.
            let (what, filter) = match split_top_comma(inner) {
                Some((w, f)) => (w, Some(Filter::parse(text, f)?)),
                None => (inner, None),
            };
            let what = DocExpr::parse(what).map_err(|e| ExprError {
                text: text.to_owned(),
                message: e.message,
            })?;
            return Ok(Self::Sum(what, filter));
        }
        if let Some(inner) = call(t, "presence") {
            return aggregate::Expr::parse(inner.trim())
                .map(Self::Presence)
                .or_else(|e| err(text, e.to_string()));
        }
        err(
            text,
            "expected count, count(FIELD = VALUE), sum(PATH), sum(len(PATH)) (each with an optional `, FIELD = VALUE`) or presence(…)",
        )
    }

    /// This document's contribution (0 for presence, evaluated apart).
    pub fn contribution(&self, doc: &Value) -> f64 {
        match self {
            Self::Count(f) => f64::from(u8::from(f.as_ref().is_none_or(|f| f.matches(doc)))),
            Self::Sum(e, f) => {
                if f.as_ref().is_none_or(|f| f.matches(doc)) {
                    e.number(doc)
                } else {
                    0.0
                }
            }
            Self::Presence(_) => 0.0,
        }
    }
}

/// A number as JSON: an integer when it is one.
pub fn number(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() < 9.0e15 {
        Value::from(n as i64)
    } else {
        serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)
    }
}

/// `name(inner)` → `inner`.
fn call<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.strip_prefix(name)?
        .trim_start()
        .strip_prefix('(')?
        .strip_suffix(')')
}

fn split_top_comma(text: &str) -> Option<(&str, &str)> {
    let mut depth = 0i32;
    let mut at = None;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => at = Some(i),
            _ => {}
        }
    }
    at.map(|i| (&text[..i], &text[i + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn total(e: &str, docs: &[Value]) -> Value {
        let e = CollExpr::parse(e).unwrap();
        number(docs.iter().map(|d| e.contribution(d)).sum())
    }

    #[test]
    fn the_seed_dashboard_and_per_document_values() {
        let docs = [
            json!({"id": 1, "title": "Dune", "favorites": ["a", "b"], "status": "open", "price": 2.5}),
            json!({"id": 2, "title": "Emma", "favorites": [], "status": "done", "price": 1}),
            json!({"id": 3, "title": "Ulysses", "status": "open"}),
        ];
        assert_eq!(total("count", &docs), json!(3));
        assert_eq!(total("sum(len(favorites))", &docs), json!(2));
        assert_eq!(total("count(status = open)", &docs), json!(2));
        assert_eq!(total("count(status = \"done\")", &docs), json!(1));
        assert_eq!(total("sum(price)", &docs), json!(3.5));
        assert_eq!(total("sum(len(favorites), status = open)", &docs), json!(2));
        assert_eq!(total("count(id = 2)", &docs), json!(1));
        assert_eq!(total("count(missing = null)", &docs), json!(3));
        let per = DocExpr::parse("len(favorites)").unwrap();
        assert_eq!(per.eval(&docs[0]), json!(2));
        assert_eq!(per.eval(&docs[2]), json!(0));
        assert_eq!(DocExpr::parse("id").unwrap().eval(&docs[1]), json!(2));
        assert_eq!(
            DocExpr::parse("a.b")
                .unwrap()
                .eval(&json!({"a": {"b": "x"}})),
            json!("x")
        );
        assert!(matches!(
            CollExpr::parse("presence(count(role = owner))").unwrap(),
            CollExpr::Presence(_)
        ));
    }

    #[test]
    fn mistakes_are_named() {
        for bad in [
            "total",
            "count(status)",
            "sum()",
            "sum(len(a b))",
            "presence(owners)",
            "count(x = )",
        ] {
            let e = CollExpr::parse(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{bad}: {e}");
        }
        assert!(DocExpr::parse("len()").is_err());
        assert!(DocExpr::parse("a..b").is_err());
    }
}
