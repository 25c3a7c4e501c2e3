//! Finding the token a client presented: pure functions over headers, query pairs and the Socket.IO `auth` object.
//!
//! [`TokenExtractor::extract`] looks, in this order, and takes the first token found (sources are never mixed):
//! 1. the Socket.IO CONNECT `auth` object's `token` field;
//! 2. `Authorization: Bearer <token>`;
//! 3. the query parameter named by `[auth] query_param` (default `token`; browsers' `EventSource` and WebSocket
//!    cannot set headers);
//! 4. the cookie named by `[auth] cookie` (read only when configured).
//!
//! Explicit, per-connection credentials come before the ambient cookie, so a page cannot override a token its
//! script presents by having the browser attach a cookie.

use http::HeaderMap;
use http::header::{AUTHORIZATION, COOKIE};
use serde_json::Value;

use super::AuthConfig;

/// Where tokens are looked for, per `[auth]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenExtractor {
    query_param: Option<String>,
    cookie: Option<String>,
}

impl TokenExtractor {
    /// From `[auth] query_param` and `[auth] cookie`.
    pub fn from_config(config: &AuthConfig) -> Self {
        Self {
            query_param: Some(config.query_param.clone()).filter(|p| !p.is_empty()),
            cookie: config.cookie.clone().filter(|c| !c.is_empty()),
        }
    }

    /// The first token found, in the documented order. `query` is the request's decoded query pairs.
    pub fn extract<'a>(
        &self,
        headers: &'a HeaderMap,
        query: impl IntoIterator<Item = (&'a str, &'a str)>,
        socketio_auth: Option<&'a Value>,
    ) -> Option<&'a str> {
        socketio_token(socketio_auth)
            .or_else(|| bearer_token(headers))
            .or_else(|| {
                self.query_param
                    .as_deref()
                    .and_then(|p| query_token(query, p))
            })
            .or_else(|| {
                self.cookie
                    .as_deref()
                    .and_then(|c| cookie_token(headers, c))
            })
    }
}

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive); `None` for other schemes.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The value of cookie `name` (surrounding double quotes removed), from any `Cookie` header.
pub fn cookie_token<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| k.trim() == name)
        .map(|(_, v)| {
            let v = v.trim();
            v.strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v)
        })
        .filter(|v| !v.is_empty())
}

/// The value of query parameter `param` (the first occurrence), from decoded pairs.
pub fn query_token<'a>(
    query: impl IntoIterator<Item = (&'a str, &'a str)>,
    param: &str,
) -> Option<&'a str> {
    query
        .into_iter()
        .find(|(k, _)| *k == param)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

/// `auth.token` of a Socket.IO CONNECT packet, if it is a non-empty string.
pub fn socketio_token(auth: Option<&Value>) -> Option<&str> {
    auth?.get("token")?.as_str().filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use serde_json::json;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn bearer() {
        assert_eq!(
            bearer_token(&headers(&[("authorization", "Bearer abc")])),
            Some("abc")
        );
        assert_eq!(
            bearer_token(&headers(&[("authorization", "bearer  abc ")])),
            Some("abc")
        );
        assert_eq!(
            bearer_token(&headers(&[("authorization", "Basic abc")])),
            None
        );
        assert_eq!(bearer_token(&headers(&[("authorization", "Bearer")])), None);
        assert_eq!(
            bearer_token(&headers(&[("authorization", "Bearer ")])),
            None
        );
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }

    #[test]
    fn cookies() {
        let h = headers(&[
            ("cookie", "a=1; herald_token=tok; b=2"),
            ("cookie", "herald_token=second"),
        ]);
        assert_eq!(cookie_token(&h, "herald_token"), Some("tok"));
        assert_eq!(cookie_token(&h, "b"), Some("2"));
        assert_eq!(cookie_token(&h, "missing"), None);
        let h = headers(&[("cookie", "x_herald_token=no; herald_token=\"q\"")]);
        assert_eq!(cookie_token(&h, "herald_token"), Some("q"));
        assert_eq!(cookie_token(&headers(&[("cookie", "t=")]), "t"), None);
    }

    #[test]
    fn query_and_socketio() {
        let q = [("a", "1"), ("token", "t1"), ("token", "t2")];
        assert_eq!(query_token(q, "token"), Some("t1"));
        assert_eq!(query_token([("token", "")], "token"), None);
        let auth = json!({"token": "s", "pid": "p"});
        assert_eq!(socketio_token(Some(&auth)), Some("s"));
        assert_eq!(socketio_token(Some(&json!({"token": 1}))), None);
        assert_eq!(socketio_token(Some(&json!("token"))), None);
        assert_eq!(socketio_token(None), None);
    }

    #[test]
    fn priority_order() {
        let mut config = AuthConfig {
            cookie: Some("herald_token".into()),
            ..AuthConfig::default()
        };
        let x = TokenExtractor::from_config(&config);
        let all = headers(&[
            ("authorization", "Bearer hdr"),
            ("cookie", "herald_token=ck"),
        ]);
        let only_cookie = headers(&[("cookie", "herald_token=ck")]);
        let auth = json!({"token": "sio"});
        let q = || [("token", "qry")];
        assert_eq!(x.extract(&all, q(), Some(&auth)), Some("sio"));
        assert_eq!(x.extract(&all, q(), None), Some("hdr"));
        assert_eq!(x.extract(&only_cookie, q(), None), Some("qry"));
        assert_eq!(x.extract(&only_cookie, [], None), Some("ck"));
        assert_eq!(x.extract(&HeaderMap::new(), [], None), None);

        config.cookie = None;
        config.query_param = String::new();
        let x = TokenExtractor::from_config(&config);
        assert_eq!(x.extract(&only_cookie, q(), None), None);
    }
}
