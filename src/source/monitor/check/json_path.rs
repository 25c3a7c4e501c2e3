//! The small JSON path language of HTTP checks: `$.status`, `data.items[0].ok`,
//! `$["key with dots"]`. Only member and index steps: enough to point at one value, which is
//! all an expectation needs.

use serde_json::Value;

/// A parsed path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath(Vec<Step>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Member(String),
    Index(usize),
}

/// Why a path does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid JSON path at character {at}: {reason}")]
pub struct JsonPathError {
    /// 0-based character offset of the problem.
    pub at: usize,
    /// What was expected there.
    pub reason: &'static str,
}

impl JsonPath {
    /// Parses `$.a.b[0]["c d"]`; the leading `$` is optional.
    pub fn parse(src: &str) -> Result<Self, JsonPathError> {
        let chars: Vec<char> = src.trim().chars().collect();
        let err = |at, reason| Err(JsonPathError { at, reason });
        if chars.is_empty() {
            return err(0, "path is empty");
        }
        let mut i = 0;
        let mut steps = Vec::new();
        let mut first = true;
        if chars[0] == '$' {
            i = 1;
            first = false;
        }
        while i < chars.len() {
            match chars[i] {
                '.' => {
                    i += 1;
                    let start = i;
                    while i < chars.len() && chars[i] != '.' && chars[i] != '[' {
                        i += 1;
                    }
                    if start == i {
                        return err(start, "expected a member name after '.'");
                    }
                    steps.push(Step::Member(chars[start..i].iter().collect()));
                }
                '[' => {
                    i += 1;
                    match chars.get(i) {
                        Some(&q @ ('"' | '\'')) => {
                            i += 1;
                            let start = i;
                            while i < chars.len() && chars[i] != q {
                                i += 1;
                            }
                            if i >= chars.len() {
                                return err(start - 1, "unclosed quoted member name");
                            }
                            steps.push(Step::Member(chars[start..i].iter().collect()));
                            i += 1;
                        }
                        Some(c) if c.is_ascii_digit() => {
                            let start = i;
                            while i < chars.len() && chars[i].is_ascii_digit() {
                                i += 1;
                            }
                            let digits: String = chars[start..i].iter().collect();
                            let Ok(n) = digits.parse::<usize>() else {
                                return err(start, "index too large");
                            };
                            steps.push(Step::Index(n));
                        }
                        _ => return err(i, "expected an index or a quoted name after '['"),
                    }
                    if chars.get(i) != Some(&']') {
                        return err(i, "expected ']'");
                    }
                    i += 1;
                }
                _ if first => {
                    // A bare leading name: "data.items[0]".
                    let start = i;
                    while i < chars.len() && chars[i] != '.' && chars[i] != '[' {
                        i += 1;
                    }
                    steps.push(Step::Member(chars[start..i].iter().collect()));
                }
                _ => return err(i, "expected '.' or '['"),
            }
            first = false;
        }
        Ok(JsonPath(steps))
    }

    /// The value the path points at, if there is one.
    pub fn get<'a>(&self, root: &'a Value) -> Option<&'a Value> {
        self.0.iter().try_fold(root, |v, step| match step {
            Step::Member(name) => v.as_object()?.get(name),
            Step::Index(n) => v.as_array()?.get(*n),
        })
    }
}

/// Does `actual` satisfy `expected`? Equal JSON, or a string expectation equal to the value's
/// text ("200" matches 200, "true" matches true), since form fields often arrive as strings.
pub(crate) fn matches(actual: &Value, expected: &Value) -> bool {
    if actual == expected {
        return true;
    }
    if let (Value::Number(a), Value::Number(e)) = (actual, expected) {
        return a.as_f64().is_some() && a.as_f64() == e.as_f64();
    }
    match expected {
        Value::String(e) => match actual {
            Value::String(_) => false,
            // Serialised text, e.g. 200 -> "200", true -> "true".
            other => serde_json::to_string(other).is_ok_and(|t| t == *e),
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths() {
        let doc = json!({"status": "up", "data": {"items": [{"ok": true}], "a.b": 3}});
        let get = |p: &str| JsonPath::parse(p).unwrap().get(&doc).cloned();
        assert_eq!(get("$.status"), Some(json!("up")));
        assert_eq!(get("status"), Some(json!("up")));
        assert_eq!(get("data.items[0].ok"), Some(json!(true)));
        assert_eq!(get("$.data[\"a.b\"]"), Some(json!(3)));
        assert_eq!(get("$['data']['items'][0]"), Some(json!({"ok": true})));
        assert_eq!(get("$"), Some(doc.clone()));
        assert_eq!(get("$.data.items[1]"), None);
        assert_eq!(get("$.status.x"), None);
    }

    #[test]
    fn bad_paths() {
        for p in [
            "", "$.", "$..a", "$[", "$[x]", "$[0", "$[\"a]", "$a", "a..b",
        ] {
            assert!(JsonPath::parse(p).is_err(), "{p:?} should not parse");
        }
    }

    #[test]
    fn expectations() {
        assert!(matches(&json!(200), &json!("200")));
        assert!(matches(&json!(true), &json!("true")));
        assert!(matches(&json!(1.0), &json!(1)));
        assert!(!matches(&json!("up"), &json!("down")));
        assert!(!matches(&json!(null), &json!(false)));
    }
}
