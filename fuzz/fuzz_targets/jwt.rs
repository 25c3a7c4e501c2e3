//! JWT verification (`auth::Authenticator::verify`) with HMAC keys, and the token extractors.
//!
//! Input: `[mode, rest...]`. Mode 0: `rest` is the token. Mode 1: `rest` is `header\nclaims` (any bytes),
//! encoded and signed with the right HS256 secret. Mode 2: `rest` is a claims object, re-serialised and signed
//! with a fixed HS256 header. Mode 3: like 1, signed with a secret Herald does not know. Each token is checked
//! by a plain authenticator and by one requiring an audience and an issuer.
//!
//! Invariants: no panic; `verify` completes without awaiting (no remote keys are configured); a token is only
//! accepted when its signature is the HMAC of its signing input under a configured key, its header names that
//! key's algorithm, it carries a numeric `exp` not past (beyond the leeway) and no future `nbf`, and (for the
//! second authenticator) the configured `aud` and `iss`; the identity is built from exactly the signed claims
//! (`user` from `sub`, `roles` from `roles`); a well-formed, unexpired HS256 token with no `nbf` (and no
//! array or object `sub`) is accepted; and `Authorization: Bearer` / cookie extraction returns trimmed,
//! non-empty substrings of the header.
#![no_main]

use std::future::Future;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderValue, header};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use herald::auth::{
    AuthConfig, AuthError, Authenticator, Identity, KeyConfig, bearer_token, cookie_token,
};
use hmac::{Hmac, Mac};
use jsonwebtoken::Algorithm;
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use sha2::{Sha256, Sha512};

const SECRET: &str = "fuzz-secret-0123456789abcdefghijklmnop";
const SECRET_512: &str = "fuzz-secret-512-0123456789abcdefghijklmnopqrstuvwxyz0123456789ab";
const WRONG: &str = "not-the-secret-0123456789abcdefghijklmnop";
const LEEWAY: u64 = 30;
const AUDIENCE: &str = "herald";
const ISSUER: &str = "https://issuer.example";

struct Auths {
    plain: Authenticator,
    scoped: Authenticator,
    runtime: tokio::runtime::Runtime,
}

fn auths() -> &'static Auths {
    static A: OnceLock<Auths> = OnceLock::new();
    A.get_or_init(|| {
        let keys = vec![
            KeyConfig::Hmac {
                algorithm: Algorithm::HS256,
                secret: Some(SECRET.into()),
                secret_env: None,
                kid: None,
            },
            KeyConfig::Hmac {
                algorithm: Algorithm::HS512,
                secret: Some(SECRET_512.into()),
                secret_env: None,
                kid: Some("k512".into()),
            },
        ];
        let plain = AuthConfig {
            keys: keys.clone(),
            leeway: Duration::from_secs(LEEWAY),
            ..AuthConfig::default()
        };
        let scoped = AuthConfig {
            audience: Some(AUDIENCE.into()),
            issuer: Some(ISSUER.into()),
            ..plain.clone()
        };
        Auths {
            plain: Authenticator::new(&plain).expect("plain config"),
            scoped: Authenticator::new(&scoped).expect("scoped config"),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
        }
    })
}

/// Polls `verify` once (it must not wait: no JWKS URL is configured); panics if it does.
fn run<F: Future<Output = Result<Identity, AuthError>>>(f: F) -> Result<Identity, AuthError> {
    let mut f = Box::pin(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(r) => r,
        Poll::Pending => panic!("verify awaited although only HMAC keys are configured"),
    }
}

fn hs256(secret: &str, input: &str) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(input.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

fn hs512(secret: &str, input: &str) -> Vec<u8> {
    let mut mac = Hmac::<Sha512>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(input.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

fn sign(header: &[u8], claims: &[u8], secret: &str) -> String {
    let input = format!("{}.{}", B64.encode(header), B64.encode(claims));
    let sig = B64.encode(hs256(secret, &input));
    format!("{input}.{sig}")
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn numeric(v: Option<&Value>) -> Option<f64> {
    v.and_then(Value::as_f64)
}

/// What must hold of every accepted token.
fn check_accepted(token: &str, id: &Identity, scoped: bool) {
    let mut parts = token.split('.');
    let (h, p, s) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    assert!(
        parts.next().is_none(),
        "accepted a token with more than three parts: {token:?}"
    );
    let input = format!("{h}.{p}");
    let sig = B64.decode(s).expect("accepted signature is base64url");
    let header: Value = serde_json::from_slice(&B64.decode(h).unwrap()).unwrap();
    let alg = header.get("alg").and_then(Value::as_str);
    let kid = header.get("kid").and_then(Value::as_str);
    let by_256 = sig == hs256(SECRET, &input) && alg == Some("HS256");
    let by_512 =
        sig == hs512(SECRET_512, &input) && alg == Some("HS512") && kid.is_none_or(|k| k == "k512");
    assert!(
        by_256 || by_512,
        "accepted a token no configured key signed: {token:?}"
    );

    let claims: Map<String, Value> = serde_json::from_slice(&B64.decode(p).unwrap()).unwrap();
    assert_eq!(
        id.claims, claims,
        "identity claims differ from the signed ones"
    );
    assert!(!id.anonymous);
    let exp = numeric(claims.get("exp")).expect("accepted a token without a numeric exp");
    let t = now();
    assert!(
        exp + LEEWAY as f64 + 2.0 >= t,
        "accepted an expired token (exp {exp}, now {t})"
    );
    if let Some(nbf) = claims.get("nbf") {
        let nbf = nbf.as_f64().expect("accepted a non-numeric nbf");
        assert!(
            nbf <= t + LEEWAY as f64 + 2.0,
            "accepted a token before its nbf"
        );
    }
    let user = match claims.get("sub") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    };
    assert_eq!(id.user, user);
    let roles: Vec<String> = match claims.get("roles") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => vec![],
    };
    assert_eq!(id.roles, roles);
    if scoped {
        let aud_ok = match claims.get("aud") {
            Some(Value::String(a)) => a == AUDIENCE,
            Some(Value::Array(a)) => a.iter().any(|v| v.as_str() == Some(AUDIENCE)),
            _ => false,
        };
        assert!(aud_ok, "accepted a token for another audience: {claims:?}");
        assert_eq!(
            claims.get("iss").and_then(Value::as_str),
            Some(ISSUER),
            "accepted another issuer"
        );
    }
}

fn verify_both(token: &str, must_accept_plain: bool) -> bool {
    let a = auths();
    let _guard = a.runtime.enter();
    let mut accepted = false;
    for (auth, scoped) in [(&a.plain, false), (&a.scoped, true)] {
        match run(auth.verify(token)) {
            Ok(id) => {
                check_accepted(token, &id, scoped);
                accepted = true;
            }
            Err(e) => {
                assert!(
                    !(must_accept_plain && !scoped),
                    "refused a valid token ({e}): {token:?}"
                );
            }
        }
    }
    accepted
}

fn check_extractors(value: &str) {
    let Ok(v) = HeaderValue::from_str(value) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert(header::AUTHORIZATION, v.clone());
    headers.insert(header::COOKIE, v);
    if let Some(t) = bearer_token(&headers) {
        assert!(
            !t.is_empty() && t.trim() == t && value.contains(t),
            "bearer {t:?} of {value:?}"
        );
    }
    if let Some(t) = cookie_token(&headers, "herald_token") {
        assert!(
            !t.is_empty() && value.contains(t),
            "cookie {t:?} of {value:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => {
            let Ok(token) = std::str::from_utf8(rest) else {
                return;
            };
            check_extractors(token);
            verify_both(token, false);
        }
        1 | 3 => {
            let at = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
            let (h, c) = rest.split_at(at);
            let c = c.strip_prefix(b"\n").unwrap_or(c);
            let secret = if mode % 4 == 1 { SECRET } else { WRONG };
            let token = sign(h, c, secret);
            let accepted = verify_both(&token, false);
            assert!(
                !(accepted && secret == WRONG),
                "accepted a token signed with an unknown secret"
            );
        }
        _ => {
            let Ok(Value::Object(claims)) = serde_json::from_slice::<Value>(rest) else {
                return;
            };
            let bytes = serde_json::to_vec(&claims).unwrap();
            let token = sign(br#"{"alg":"HS256","typ":"JWT"}"#, &bytes, SECRET);
            // exp an unsigned integer comfortably in the future, and no nbf: nothing may refuse it.
            let valid = claims
                .get("exp")
                .and_then(Value::as_u64)
                .is_some_and(|e| (e as f64) > now() + 60.0 && e < 1 << 53)
                && !claims.contains_key("nbf")
                // jsonwebtoken 11 refuses (as malformed) a `sub` that is an array or an object, even when no
                // subject is configured: its `TryParse` leaves the value unconsumed. RFC 7519 makes `sub` a
                // string, so such tokens are not valid anyway; see the report.
                && !matches!(claims.get("sub"), Some(Value::Array(_) | Value::Object(_)));
            verify_both(&token, valid);
        }
    }
});
