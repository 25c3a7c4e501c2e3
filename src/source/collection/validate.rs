//! Checking a document before it is stored: the simple rules a backend writes by hand (trim these strings, at
//! most N characters) and then the collection's JSON Schema (the `boon` crate), each failure naming the field —
//! `400 {"error":{"code":"invalid_request","field":"title","message":…}}`.

use std::collections::BTreeMap;

use boon::{Compiler, ErrorKind, InstanceToken, SchemaIndex, Schemas, ValidationError};
use serde_json::{Map, Value};

/// A document refused: the field at fault (dotted path; empty for the whole document) and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    /// The field, e.g. `title` or `author.name`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl Invalid {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// A collection's document rules, compiled.
pub struct Rules {
    trim: Vec<String>,
    max_length: BTreeMap<String, usize>,
    schema: Option<(Schemas, SchemaIndex)>,
}

impl std::fmt::Debug for Rules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rules")
            .field("trim", &self.trim)
            .field("max_length", &self.max_length)
            .field("schema", &self.schema.is_some())
            .finish()
    }
}

impl Rules {
    /// Compiles the rules; a schema that does not compile is a start-up error.
    pub fn new(
        trim: &[String],
        max_length: &BTreeMap<String, usize>,
        schema: Option<Value>,
    ) -> Result<Self, String> {
        let schema = match schema {
            None => None,
            Some(json) => {
                let mut schemas = Schemas::new();
                let mut compiler = Compiler::new();
                // Loading nothing from the network or the disk: a schema is self-contained.
                compiler.use_loader(Box::new(NoLoader));
                compiler
                    .add_resource("urn:herald:collection", json)
                    .map_err(|e| format!("schema: {e}"))?;
                let index = compiler
                    .compile("urn:herald:collection", &mut schemas)
                    .map_err(|e| format!("schema: {e}"))?;
                Some((schemas, index))
            }
        };
        Ok(Self {
            trim: trim.to_vec(),
            max_length: max_length.clone(),
            schema,
        })
    }

    /// Trims the named string fields in place, then checks lengths and the schema.
    pub fn apply(&self, doc: &mut Map<String, Value>) -> Result<(), Invalid> {
        for field in &self.trim {
            if let Some(Value::String(s)) = doc.get_mut(field) {
                let t = s.trim();
                if t.len() != s.len() {
                    *s = t.to_owned();
                }
            }
        }
        for (field, max) in &self.max_length {
            if let Some(Value::String(s)) = doc.get(field)
                && s.chars().count() > *max
            {
                return Err(Invalid::new(
                    field.clone(),
                    format!("must be at most {max} characters"),
                ));
            }
        }
        if let Some((schemas, index)) = &self.schema {
            let value = Value::Object(std::mem::take(doc));
            let outcome = schemas.validate(&value, *index).map_err(|e| first_leaf(&e));
            if let Value::Object(map) = value {
                *doc = map;
            }
            outcome?;
        }
        Ok(())
    }
}

/// The deepest, first error: the one a person fixes (boon nests the causes under `allOf`/`properties`).
fn first_leaf(e: &ValidationError<'_, '_>) -> Invalid {
    if let Some(cause) = e.causes.first() {
        return first_leaf(cause);
    }
    let mut path: Vec<String> = e
        .instance_location
        .tokens
        .iter()
        .map(|t| match t {
            InstanceToken::Prop(p) => p.to_string(),
            InstanceToken::Item(i) => i.to_string(),
        })
        .collect();
    let message = match &e.kind {
        ErrorKind::Required { want } => {
            // The missing property is the field at fault, not the object holding it.
            if let Some(first) = want.first() {
                path.push((*first).to_owned());
            }
            "is required".to_owned()
        }
        kind => kind.to_string(),
    };
    Invalid::new(path.join("."), message)
}

struct NoLoader;

impl boon::UrlLoader for NoLoader {
    fn load(&self, url: &str) -> Result<Value, Box<dyn std::error::Error>> {
        Err(format!("{url}: a collection schema may not refer to other documents").into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn seed_rules() -> Rules {
        Rules::new(
            &["title".into(), "author".into()],
            &[("title".to_owned(), 255), ("author".to_owned(), 255)]
                .into_iter()
                .collect(),
            Some(json!({
                "type": "object",
                "required": ["title", "author"],
                "properties": {
                    "title": {"type": "string", "minLength": 1},
                    "author": {"type": "string", "minLength": 1},
                    "returnDateTime": {"type": ["string", "null"]},
                    "favorites": {"type": "array", "items": {"type": "string"}}
                }
            })),
        )
        .unwrap()
    }

    fn check(rules: &Rules, v: Value) -> Result<Value, Invalid> {
        let Value::Object(mut map) = v else { panic!() };
        rules.apply(&mut map).map(|()| Value::Object(map))
    }

    #[test]
    fn seed_001_rules_name_the_field() {
        let r = seed_rules();
        assert_eq!(
            check(&r, json!({"title": "  Dune ", "author": "Herbert"})).unwrap(),
            json!({"title": "Dune", "author": "Herbert"})
        );
        let e = check(&r, json!({"author": "Herbert"})).unwrap_err();
        assert_eq!(e.field, "title");
        assert_eq!(e.message, "is required");
        // Trimmed first: white space alone is empty.
        let e = check(&r, json!({"title": "   ", "author": "x"})).unwrap_err();
        assert_eq!(e.field, "title", "{e:?}");
        let e = check(&r, json!({"title": 5, "author": "x"})).unwrap_err();
        assert_eq!(e.field, "title");
        let e = check(&r, json!({"title": "t".repeat(256), "author": "x"})).unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.message.as_str()),
            ("title", "must be at most 255 characters")
        );
        let e = check(
            &r,
            json!({"title": "t", "author": "x", "favorites": ["a", 3]}),
        )
        .unwrap_err();
        assert_eq!(e.field, "favorites.1");
    }

    #[test]
    fn a_bad_schema_or_a_remote_reference_fails_to_compile() {
        assert!(Rules::new(&[], &BTreeMap::new(), Some(json!({"type": "nonsense"}))).is_err());
        assert!(
            Rules::new(
                &[],
                &BTreeMap::new(),
                Some(json!({"$ref": "https://example.com/s.json"}))
            )
            .is_err()
        );
        assert!(Rules::new(&[], &BTreeMap::new(), None).is_ok());
    }
}
