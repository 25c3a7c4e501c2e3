//! Who a client is: the verified claims of its token, or an anonymous identity.

use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};

/// A verified client identity.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// The user id from the configured `user_claim` (a string, or an integer rendered as text); `None` when the
    /// token has no such claim and for anonymous identities.
    pub user: Option<String>,
    /// Roles from the configured `roles_claim` (a string or an array of strings; other values are ignored).
    pub roles: Vec<String>,
    /// Every claim of the token, as verified.
    pub claims: Map<String, Value>,
    /// When the token expires (`exp`).
    pub expires_at: Option<SystemTime>,
    /// No token was presented.
    pub anonymous: bool,
}

impl Identity {
    /// The identity of a client that presented no token.
    pub fn anonymous() -> Self {
        Self {
            user: None,
            roles: Vec::new(),
            claims: Map::new(),
            expires_at: None,
            anonymous: true,
        }
    }

    /// Builds an authenticated identity from verified claims.
    pub(crate) fn from_claims(
        claims: Map<String, Value>,
        user_claim: &str,
        roles_claim: &str,
    ) -> Self {
        let user = claims.get(user_claim).and_then(scalar);
        let roles = match claims.get(roles_claim) {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        let expires_at = claims
            .get("exp")
            .and_then(|v| {
                v.as_u64().or_else(|| {
                    // jsonwebtoken accepts fractional NumericDate; keep whole seconds.
                    v.as_f64()
                        .filter(|f| f.is_finite() && *f >= 0.0 && *f < u64::MAX as f64)
                        .map(|f| f as u64)
                })
            })
            .and_then(|secs| SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs)));
        Self {
            user,
            roles,
            claims,
            expires_at,
            anonymous: false,
        }
    }

    /// Whether the identity holds `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// Time left before the token expires: `None` if it never does, zero once it has.
    pub fn expires_in(&self) -> Option<Duration> {
        self.expires_at.map(|at| {
            at.duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
        })
    }

    /// The text values of claim `name`: a string or integer gives one, an array gives its string and integer
    /// elements; anything else gives none.
    pub(crate) fn claim_values(&self, name: &str) -> Vec<String> {
        match self.claims.get(name) {
            Some(Value::Array(items)) => items.iter().filter_map(scalar).collect(),
            Some(v) => scalar(v).into_iter().collect(),
            None => Vec::new(),
        }
    }
}

/// A string as is, an integer as decimal text; nothing else.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn reads_user_roles_and_expiry() {
        let id = Identity::from_claims(
            claims(json!({"sub": "u1", "roles": ["owner", 3, "reader"], "exp": 4_000_000_000u64})),
            "sub",
            "roles",
        );
        assert_eq!(id.user.as_deref(), Some("u1"));
        assert_eq!(id.roles, ["owner", "reader"]);
        assert!(id.has_role("owner") && !id.has_role("admin"));
        assert!(id.expires_in().is_some_and(|d| d > Duration::ZERO));
        assert!(!id.anonymous);

        let id = Identity::from_claims(claims(json!({"uid": 42, "role": "owner"})), "uid", "role");
        assert_eq!(id.user.as_deref(), Some("42"));
        assert_eq!(id.roles, ["owner"]);
        assert_eq!(id.expires_in(), None);

        let id = Identity::from_claims(claims(json!({"sub": {"x": 1}, "exp": 1})), "sub", "roles");
        assert_eq!(id.user, None);
        assert_eq!(id.expires_in(), Some(Duration::ZERO));
        let id = Identity::from_claims(claims(json!({"exp": 2.5})), "sub", "roles");
        assert_eq!(
            id.expires_at,
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(2))
        );
    }

    #[test]
    fn claim_values_take_scalars() {
        let id = Identity::from_claims(
            claims(json!({"s": ["a", 1, true, null, ["x"]], "one": "b", "f": 1.5})),
            "sub",
            "roles",
        );
        assert_eq!(id.claim_values("s"), ["a", "1"]);
        assert_eq!(id.claim_values("one"), ["b"]);
        assert!(id.claim_values("f").is_empty());
        assert!(id.claim_values("missing").is_empty());
        assert!(Identity::anonymous().anonymous);
    }
}
