//! JSON of values whose serialisation cannot fail: Herald's own records and notices, whose `Serialize` impls are
//! derived over strings, numbers, booleans, options, sequences and string-keyed maps (`serde_json` fails only on
//! a non-string map key or an error raised by a hand-written impl). Writing them never needs an error path; should
//! one fail anyway after a change, it is logged and `null` — still valid JSON — is written, never an empty string.

use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

/// The JSON text of `value` (see the module docs for why this cannot fail).
pub fn text<T: Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|e| {
        tracing::error!(error = %e, type_name = std::any::type_name::<T>(), "value could not be serialised");
        "null".to_owned()
    })
}

/// `value` as a JSON tree (see the module docs for why this cannot fail).
pub fn value<T: Serialize + ?Sized>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or_else(|e| {
        tracing::error!(error = %e, type_name = std::any::type_name::<T>(), "value could not be serialised");
        Value::Null
    })
}

/// `value` as raw JSON text, e.g. an event's payload (see the module docs for why this cannot fail).
pub fn raw<T: Serialize + ?Sized>(value: &T) -> Box<RawValue> {
    serde_json::value::to_raw_value(value).unwrap_or_else(|e| {
        tracing::error!(error = %e, type_name = std::any::type_name::<T>(), "value could not be serialised");
        RawValue::NULL.to_owned()
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    #[test]
    fn writes_records_and_never_an_empty_string() {
        #[derive(serde::Serialize)]
        struct Record {
            a: u64,
            b: Option<&'static str>,
        }
        let r = Record { a: 1, b: None };
        assert_eq!(super::text(&r), r#"{"a":1,"b":null}"#);
        assert_eq!(super::value(&r), serde_json::json!({"a": 1, "b": null}));
        // A map with non-string keys is what serde_json refuses: the fallback is `null`.
        let bad: BTreeMap<(u8, u8), u8> = BTreeMap::from([((1, 2), 3)]);
        assert_eq!(super::text(&bad), "null");
        assert_eq!(super::value(&bad), serde_json::Value::Null);
        assert_eq!(super::raw(&r).get(), r#"{"a":1,"b":null}"#);
        assert_eq!(super::raw(&bad).get(), "null");
    }
}
