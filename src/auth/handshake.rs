//! Identities taken from the handshake (`[auth] identity_from_handshake`), for trusted or development setups
//! whose frontends say who they are in the Socket.IO `query`/`auth` object or the URL's query string (seed 001's
//! `io(url, { query: { userId, role } })`). Nothing verifies them: anyone can claim any user. They are used only
//! when the client presented no token — a token, valid or not, always decides.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::{AuthError, Identity};

/// Longest user id or role taken from a handshake, in bytes.
pub const MAX_FIELD_LEN: usize = 256;
/// Most roles taken from a handshake.
pub const MAX_ROLES: usize = 32;

/// Which handshake fields name the user and the roles (`identity_from_handshake = { user = "userId", roles =
/// "role" }`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandshakeIdentity {
    /// Field holding the user id (a string or an integer).
    pub user: String,
    /// Field holding the roles (a string; repeated query parameters or an array in an `auth` object give
    /// several); absent: no roles.
    #[serde(default)]
    pub roles: Option<String>,
}

impl HandshakeIdentity {
    /// Checks the field names.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.user.is_empty() || self.roles.as_deref() == Some("") {
            return Err("identity_from_handshake: field names must not be empty".into());
        }
        Ok(())
    }

    /// The identity the handshake names: fields of the Socket.IO `auth` object first, else of the query string.
    /// `None` when it names no user; an unusable value (too long, not text) is refused. The user id and roles are
    /// stored as the claims `user_claim` and `roles_claim`, so channel rules and templates read them as a
    /// token's.
    pub fn identity<'a>(
        &self,
        query: impl IntoIterator<Item = (&'a str, &'a str)> + Clone,
        socketio_auth: Option<&Value>,
        user_claim: &str,
        roles_claim: &str,
    ) -> Result<Option<Identity>, AuthError> {
        let object = socketio_auth.and_then(Value::as_object);
        let from_query = |field: &str| -> Vec<String> {
            query
                .clone()
                .into_iter()
                .filter(|(k, _)| *k == field)
                .map(|(_, v)| v.to_owned())
                .collect()
        };
        let user = match object.and_then(|o| o.get(&self.user)) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Some(n.to_string()),
            Some(_) => return Err(AuthError::HandshakeField(self.user.clone())),
            None => from_query(&self.user).into_iter().next(),
        };
        let Some(user) = user.filter(|u| !u.is_empty()) else {
            return Ok(None);
        };
        let roles = match &self.roles {
            None => Vec::new(),
            Some(field) => match object.and_then(|o| o.get(field)) {
                Some(Value::String(s)) => vec![s.clone()],
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|v| v.as_str().map(str::to_owned))
                    .collect::<Option<_>>()
                    .ok_or_else(|| AuthError::HandshakeField(field.clone()))?,
                Some(_) => return Err(AuthError::HandshakeField(field.clone())),
                None => from_query(field),
            },
        };
        if user.len() > MAX_FIELD_LEN
            || roles.len() > MAX_ROLES
            || roles.iter().any(|r| r.len() > MAX_FIELD_LEN)
        {
            let field = if user.len() > MAX_FIELD_LEN {
                &self.user
            } else {
                self.roles.as_ref().unwrap_or(&self.user)
            };
            return Err(AuthError::HandshakeField(field.clone()));
        }
        let mut claims = Map::new();
        claims.insert(
            roles_claim.to_owned(),
            Value::Array(roles.into_iter().map(Value::String).collect()),
        );
        claims.insert(user_claim.to_owned(), Value::String(user));
        Ok(Some(Identity::from_claims(claims, user_claim, roles_claim)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields() -> HandshakeIdentity {
        HandshakeIdentity {
            user: "userId".into(),
            roles: Some("role".into()),
        }
    }

    fn from(query: &[(&str, &str)], auth: Option<Value>) -> Result<Option<Identity>, AuthError> {
        fields().identity(query.iter().copied(), auth.as_ref(), "sub", "roles")
    }

    #[test]
    fn reads_the_query_or_the_auth_object() {
        let id = from(&[("userId", "u7"), ("role", "owner")], None)
            .unwrap()
            .unwrap();
        assert_eq!(id.user.as_deref(), Some("u7"));
        assert_eq!(id.roles, ["owner"]);
        assert_eq!(
            id.claims["sub"], "u7",
            "templates and rules read it as a claim"
        );
        assert!(!id.anonymous && id.expires_at.is_none());
        let id = from(
            &[("userId", "q")],
            Some(json!({"userId": 42, "role": ["a", "b"]})),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (id.user.as_deref(), id.roles),
            (Some("42"), vec!["a".to_owned(), "b".to_owned()])
        );
        let id = from(&[("userId", "u"), ("role", "a"), ("role", "b")], None)
            .unwrap()
            .unwrap();
        assert_eq!(id.roles, ["a", "b"]);
    }

    #[test]
    fn no_user_is_no_identity_and_bad_values_are_refused() {
        assert_eq!(from(&[("role", "owner")], None), Ok(None));
        assert_eq!(from(&[("userId", "")], None), Ok(None));
        assert_eq!(
            from(&[], Some(json!({"userId": {"x": 1}}))),
            Err(AuthError::HandshakeField("userId".into()))
        );
        assert_eq!(
            from(&[], Some(json!({"userId": "u", "role": [1]}))),
            Err(AuthError::HandshakeField("role".into()))
        );
        let long = "x".repeat(MAX_FIELD_LEN + 1);
        assert!(from(&[("userId", &long)], None).is_err());
        assert!(from(&[("userId", "u"), ("role", &long)], None).is_err());
    }
}
