//! JSON numbers from `f64`: a whole value is written as an integer (`5`, not serde_json's `5.0`), so a number
//! a user wrote as an integer (an interval, a timeout) comes back as one, on the wire and in REST.

use serde::Serializer;
use serde_json::Value;

/// Largest magnitude below which every whole `f64` is exactly an integer JavaScript can hold (2^53).
const SAFE: f64 = 9_007_199_254_740_992.0;

/// `f` as a JSON value: an integer when it is whole and within ±2^53, else a float (`null` if not finite).
pub fn value(f: f64) -> Value {
    match whole(f) {
        Some(i) => Value::from(i),
        None => Value::from(f),
    }
}

/// `f` as JSON text, like [`value`].
pub fn text(f: f64) -> String {
    match whole(f) {
        Some(i) => i.to_string(),
        None => value(f).to_string(),
    }
}

/// The integer `f` is, if it is one JSON can carry exactly.
fn whole(f: f64) -> Option<i64> {
    // `-0.0` is whole too, and written `0`.
    (f.is_finite() && f.fract() == 0.0 && f.abs() <= SAFE).then_some(f as i64)
}

/// `#[serde(serialize_with = "crate::number::serialize")]` for an `f64` field.
pub fn serialize<S: Serializer>(f: &f64, s: S) -> Result<S::Ok, S::Error> {
    match whole(*f) {
        Some(i) => s.serialize_i64(i),
        None => s.serialize_f64(*f),
    }
}

/// `#[serde(serialize_with = "crate::number::serialize_opt")]` for an `Option<f64>` field.
pub fn serialize_opt<S: Serializer>(f: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
    match f {
        Some(f) => serialize(f, s),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_values_are_integers_and_fractions_stay() {
        assert_eq!(value(5.0).to_string(), "5");
        assert_eq!(value(-0.0).to_string(), "0");
        assert_eq!(value(1.5).to_string(), "1.5");
        assert_eq!(value(0.1).to_string(), "0.1");
        assert_eq!(value(1e300).to_string(), "1e+300");
        assert_eq!(value(f64::NAN), Value::Null);
        assert_eq!(text(5.0), "5");
        assert_eq!(text(2.25), "2.25");

        #[derive(serde::Serialize)]
        struct S {
            #[serde(serialize_with = "serialize")]
            a: f64,
            #[serde(serialize_with = "serialize_opt")]
            b: Option<f64>,
            #[serde(serialize_with = "serialize_opt")]
            c: Option<f64>,
        }
        let s = S {
            a: 60.0,
            b: Some(0.8),
            c: None,
        };
        assert_eq!(
            serde_json::to_string(&s).ok().as_deref(),
            Some(r#"{"a":60,"b":0.8,"c":null}"#)
        );
    }
}
