//! `herald::auth` end to end: tokens signed with fixed test keys (`tests/fixtures/keys/`), verified through the
//! public API, including a JWKS URL served by an in-test HTTP server.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use herald::auth::AuthConfig;
use herald::auth::{AuthError, Authenticator, Permissions, TokenExtractor};
use herald::config::Config;
use herald::core::channel::ChannelName;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const SECRET: &str = "0123456789abcdef0123456789abcdef-test-only";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/keys")
        .join(name)
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(extra: Value) -> Value {
    let mut c = json!({"sub": "alice", "exp": now() + 3600, "roles": ["reader"]});
    if let (Some(c), Value::Object(extra)) = (c.as_object_mut(), extra) {
        for (k, v) in extra {
            if v.is_null() {
                c.remove(&k);
            } else {
                c.insert(k, v);
            }
        }
    }
    c
}

fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, key).unwrap()
}

fn hs(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        None,
        claims,
    )
}

fn rsa_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(&read("rsa_private.pem")).unwrap()
}

fn rsa2_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(&read("rsa2_private.pem")).unwrap()
}

fn auth_config(toml_text: &str) -> AuthConfig {
    let config: Config = toml::from_str(toml_text).unwrap();
    config.auth
}

fn hs_config(extra: &str) -> AuthConfig {
    auth_config(&format!(
        "[auth]\n{extra}\n[[auth.keys]]\nkind = \"hmac\"\nalgorithm = \"HS256\"\nsecret = \"{SECRET}\"\n"
    ))
}

fn pem_config(alg: &str, file: &str) -> AuthConfig {
    auth_config(&format!(
        "[[auth.keys]]\nkind = \"pem\"\nalgorithm = \"{alg}\"\npath = {:?}\n",
        fixture(file)
    ))
}

async fn verify(config: &AuthConfig, token: &str) -> Result<herald::auth::Identity, AuthError> {
    Authenticator::new(config).unwrap().verify(token).await
}

#[tokio::test]
async fn valid_hs256_gives_identity() {
    let config = hs_config("");
    let exp = now() + 3600;
    let id = verify(
        &config,
        &hs(&claims(json!({"exp": exp, "roles": ["owner", "reader"]}))),
    )
    .await
    .unwrap();
    assert_eq!(id.user.as_deref(), Some("alice"));
    assert_eq!(id.roles, ["owner", "reader"]);
    assert!(!id.anonymous);
    assert_eq!(id.expires_at, Some(UNIX_EPOCH + Duration::from_secs(exp)));
    assert_eq!(id.claims.get("sub"), Some(&json!("alice")));
}

#[tokio::test]
async fn valid_rs256_es256_eddsa() {
    let cases = [
        (Algorithm::RS256, "RS256", "rsa_public.pem", rsa_key()),
        (
            Algorithm::ES256,
            "ES256",
            "ec_public.pem",
            EncodingKey::from_ec_pem(&read("ec_private.pem")).unwrap(),
        ),
        (
            Algorithm::EdDSA,
            "EdDSA",
            "ed_public.pem",
            EncodingKey::from_ed_pem(&read("ed_private.pem")).unwrap(),
        ),
    ];
    for (alg, name, public, private) in cases {
        let config = pem_config(name, public);
        let token = sign(alg, &private, None, &claims(json!({})));
        let id = verify(&config, &token).await.unwrap();
        assert_eq!(id.user.as_deref(), Some("alice"), "{name}");
    }
}

#[tokio::test]
async fn tampered_signature_and_payload_are_refused() {
    let config = pem_config("RS256", "rsa_public.pem");
    let token = sign(Algorithm::RS256, &rsa_key(), None, &claims(json!({})));
    let (rest, sig) = token.rsplit_once('.').unwrap();
    let mut sig_bytes = URL_SAFE_NO_PAD.decode(sig).unwrap();
    sig_bytes[10] ^= 1;
    let tampered = format!("{rest}.{}", URL_SAFE_NO_PAD.encode(&sig_bytes));
    let e = verify(&config, &tampered).await.unwrap_err();
    assert_eq!(
        (e.clone(), e.code()),
        (AuthError::Signature, "unauthorized")
    );

    // A payload swapped under the original signature.
    let (header, _) = rest.split_once('.').unwrap();
    let payload = URL_SAFE_NO_PAD.encode(claims(json!({"sub": "mallory"})).to_string());
    let forged = format!("{header}.{payload}.{sig}");
    assert_eq!(
        verify(&config, &forged).await.unwrap_err(),
        AuthError::Signature
    );

    // Signed by another RSA key.
    let other = sign(Algorithm::RS256, &rsa2_key(), None, &claims(json!({})));
    assert_eq!(
        verify(&config, &other).await.unwrap_err(),
        AuthError::Signature
    );
}

#[tokio::test]
async fn alg_none_is_refused() {
    let payload = URL_SAFE_NO_PAD.encode(claims(json!({})).to_string());
    for header in [
        r#"{"alg":"none"}"#,
        r#"{"alg":"none","typ":"JWT"}"#,
        r#"{"alg":"None"}"#,
    ] {
        let h = URL_SAFE_NO_PAD.encode(header);
        for token in [format!("{h}.{payload}."), format!("{h}.{payload}.c2ln")] {
            for config in [hs_config(""), pem_config("RS256", "rsa_public.pem")] {
                let e = verify(&config, &token).await.unwrap_err();
                assert_eq!(e.code(), "unauthorized", "{header}");
            }
        }
    }
}

/// An HS256 token with a hand-written header (so `crit` can take any shape).
fn hs_raw_header(header: &str) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims(json!({})).to_string())
    );
    let sig = jsonwebtoken::crypto::sign(
        input.as_bytes(),
        &EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::HS256,
    )
    .unwrap();
    format!("{input}.{sig}")
}

#[tokio::test]
async fn critical_header_extensions_are_refused() {
    let config = hs_config("");
    // Control: the same construction without `crit` verifies.
    let plain = hs_raw_header(r#"{"alg":"HS256","typ":"JWT"}"#);
    assert_eq!(
        verify(&config, &plain).await.unwrap().user.as_deref(),
        Some("alice")
    );
    // RFC 7515 §4.1.11: extensions Herald does not understand (it understands none), and malformed `crit`.
    for header in [
        r#"{"alg":"HS256","crit":["x-herald-unknown"],"x-herald-unknown":true}"#,
        r#"{"alg":"HS256","crit":["exp"]}"#,
        r#"{"alg":"HS256","crit":["b64"],"b64":false}"#,
        r#"{"alg":"HS256","crit":[]}"#,
        r#"{"alg":"HS256","crit":null}"#,
        r#"{"alg":"HS256","crit":"x"}"#,
        r#"{"alg":"HS256","crit":[1]}"#,
        r#"{"alg":"HS256","crit":{}}"#,
    ] {
        let e = verify(&config, &hs_raw_header(header)).await.unwrap_err();
        assert_eq!(e.code(), "unauthorized", "{header}: {e:?}");
    }
    let e = verify(
        &config,
        &hs_raw_header(r#"{"alg":"HS256","crit":["x"],"x":1}"#),
    )
    .await
    .unwrap_err();
    assert_eq!(e, AuthError::Critical);
}

#[tokio::test]
async fn hmac_with_public_key_bytes_is_refused() {
    // The classic confusion: an HS256 token keyed with the RSA public key's PEM bytes.
    let public_pem = read("rsa_public.pem");
    let token = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(&public_pem),
        None,
        &claims(json!({})),
    );
    let config = pem_config("RS256", "rsa_public.pem");
    let e = verify(&config, &token).await.unwrap_err();
    assert_eq!(
        (e.clone(), e.code()),
        (AuthError::Algorithm, "unauthorized")
    );

    // Also when an HMAC key is configured beside it (a different secret).
    let mut both = hs_config("");
    both.keys.extend(pem_config("RS256", "rsa_public.pem").keys);
    assert_eq!(
        verify(&both, &token).await.unwrap_err(),
        AuthError::Signature
    );

    // And the reverse: an RS256 token where only HS256 is configured.
    let rs = sign(Algorithm::RS256, &rsa_key(), None, &claims(json!({})));
    assert_eq!(
        verify(&hs_config(""), &rs).await.unwrap_err(),
        AuthError::Algorithm
    );
    // RS384 is not RS256 even with the same key.
    let rs384 = sign(Algorithm::RS384, &rsa_key(), None, &claims(json!({})));
    let config = pem_config("RS256", "rsa_public.pem");
    assert_eq!(
        verify(&config, &rs384).await.unwrap_err(),
        AuthError::Algorithm
    );
}

#[tokio::test]
async fn expiry_nbf_and_leeway() {
    let config = hs_config("leeway = \"30s\"");
    let expired = hs(&claims(json!({"exp": now() - 120})));
    let e = verify(&config, &expired).await.unwrap_err();
    assert_eq!((e.clone(), e.code()), (AuthError::Expired, "token_expired"));
    // Within the leeway.
    assert!(
        verify(&config, &hs(&claims(json!({"exp": now() - 5}))))
            .await
            .is_ok()
    );
    // exp is required.
    let e = verify(&config, &hs(&claims(json!({"exp": null}))))
        .await
        .unwrap_err();
    assert_eq!(e, AuthError::MissingClaim("exp".into()));
    // nbf in the future.
    let e = verify(&config, &hs(&claims(json!({"nbf": now() + 600}))))
        .await
        .unwrap_err();
    assert_eq!(
        (e.clone(), e.code()),
        (AuthError::NotYetValid, "unauthorized")
    );
    assert!(
        verify(&config, &hs(&claims(json!({"nbf": now() + 5}))))
            .await
            .is_ok()
    );
    // An expired token with a bad signature is a bad signature, not an expiry.
    let bad = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"another-secret-another-secret-another"),
        None,
        &claims(json!({"exp": now() - 120})),
    );
    assert_eq!(
        verify(&config, &bad).await.unwrap_err(),
        AuthError::Signature
    );
}

#[tokio::test]
async fn audience_and_issuer() {
    let config = hs_config("audience = \"herald\"\nissuer = \"https://issuer\"");
    let ok = claims(json!({"aud": "herald", "iss": "https://issuer"}));
    assert!(verify(&config, &hs(&ok)).await.is_ok());
    let ok_list = claims(json!({"aud": ["other", "herald"], "iss": "https://issuer"}));
    assert!(verify(&config, &hs(&ok_list)).await.is_ok());
    let cases = [
        (
            json!({"aud": "other", "iss": "https://issuer"}),
            AuthError::Audience,
        ),
        (
            json!({"aud": "herald", "iss": "https://evil"}),
            AuthError::Issuer,
        ),
        (
            json!({"iss": "https://issuer"}),
            AuthError::MissingClaim("aud".into()),
        ),
        (
            json!({"aud": "herald"}),
            AuthError::MissingClaim("iss".into()),
        ),
    ];
    for (extra, want) in cases {
        let e = verify(&config, &hs(&claims(extra))).await.unwrap_err();
        assert_eq!((e.clone(), e.code()), (want, "unauthorized"));
    }
    // Without an audience configured, a token's aud is not checked.
    assert!(
        verify(&hs_config(""), &hs(&claims(json!({"aud": "x"}))))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn malformed_tokens() {
    let config = hs_config("");
    for token in ["", "abc", "a.b", "a.b.c", "....", &"x".repeat(20_000)] {
        let e = verify(&config, token).await.unwrap_err();
        assert_eq!(e.code(), "unauthorized", "{token:.20}");
    }
    // Claims that are not an object.
    let h = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256"}"#);
    let p = URL_SAFE_NO_PAD.encode("[1,2]");
    let unsigned = format!("{h}.{p}");
    let sig = {
        use jsonwebtoken::crypto::sign as raw_sign;
        raw_sign(
            unsigned.as_bytes(),
            &EncodingKey::from_secret(SECRET.as_bytes()),
            Algorithm::HS256,
        )
        .unwrap()
    };
    let e = verify(&config, &format!("{unsigned}.{sig}"))
        .await
        .unwrap_err();
    assert_eq!(e, AuthError::Malformed);
}

#[tokio::test]
async fn jwks_file_selects_by_kid() {
    let config = auth_config(&format!(
        "[[auth.keys]]\nkind = \"jwks\"\npath = {:?}\n",
        fixture("jwks.json")
    ));
    let c = claims(json!({}));
    let ok = sign(Algorithm::RS256, &rsa2_key(), Some("rsa-2"), &c);
    assert!(verify(&config, &ok).await.is_ok());
    // Without kid every RS256 key is tried.
    let no_kid = sign(Algorithm::RS256, &rsa2_key(), None, &c);
    assert!(verify(&config, &no_kid).await.is_ok());
    // The kid selects a key the signature does not match.
    let wrong = sign(Algorithm::RS256, &rsa2_key(), Some("rsa-1"), &c);
    assert_eq!(
        verify(&config, &wrong).await.unwrap_err(),
        AuthError::Signature
    );
    let unknown = sign(Algorithm::RS256, &rsa2_key(), Some("nope"), &c);
    assert_eq!(
        verify(&config, &unknown).await.unwrap_err(),
        AuthError::Signature
    );
    // EC and Ed keys from the same set.
    let ec = EncodingKey::from_ec_pem(&read("ec_private.pem")).unwrap();
    assert!(
        verify(&config, &sign(Algorithm::ES256, &ec, Some("ec-1"), &c))
            .await
            .is_ok()
    );
    let ed = EncodingKey::from_ed_pem(&read("ed_private.pem")).unwrap();
    assert!(
        verify(&config, &sign(Algorithm::EdDSA, &ed, Some("ed-1"), &c))
            .await
            .is_ok()
    );
    // The JWK's alg pins too: an RS512 token under rsa-1 (declared RS256).
    let rs512 = sign(Algorithm::RS512, &rsa_key(), Some("rsa-1"), &c);
    assert_eq!(
        verify(&config, &rs512).await.unwrap_err(),
        AuthError::Algorithm
    );
}

/// A tiny HTTP/1.1 server answering every request with the current JWKS body.
struct JwksServer {
    url: String,
    body: Arc<parking_lot::Mutex<String>>,
    hits: Arc<AtomicUsize>,
}

impl JwksServer {
    async fn start(body: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let body = Arc::new(parking_lot::Mutex::new(body));
        let hits = Arc::new(AtomicUsize::new(0));
        let (b, h) = (body.clone(), hits.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (b, h) = (b.clone(), h.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    h.fetch_add(1, Ordering::SeqCst);
                    let body = b.lock().clone();
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Self { url, body, hits }
    }

    fn config(&self, cooldown: &str) -> AuthConfig {
        auth_config(&format!(
            "[[auth.keys]]\nkind = \"jwks\"\nurl = {:?}\nrefresh = \"1h\"\nrefetch_cooldown = {cooldown:?}\n",
            self.url
        ))
    }
}

/// The fixture JWKS restricted to the given kids.
fn jwks_with(kids: &[&str]) -> String {
    let doc: Value = serde_json::from_slice(&read("jwks.json")).unwrap();
    let keys: Vec<Value> = doc["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| kids.contains(&k["kid"].as_str().unwrap()))
        .cloned()
        .collect();
    json!({ "keys": keys }).to_string()
}

#[tokio::test]
async fn jwks_url_fetches_and_refetches_unknown_kid() {
    let server = JwksServer::start(jwks_with(&["rsa-1"])).await;
    let auth = Authenticator::new(&server.config("0s")).unwrap();
    let c = claims(json!({}));
    let t1 = sign(Algorithm::RS256, &rsa_key(), Some("rsa-1"), &c);
    assert!(auth.verify(&t1).await.is_ok());
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);
    // Cached: no new fetch.
    assert!(auth.verify(&t1).await.is_ok());
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);

    // Key rotation: rsa-2 appears; a token naming it triggers one refetch.
    *server.body.lock() = jwks_with(&["rsa-1", "rsa-2"]);
    let t2 = sign(Algorithm::RS256, &rsa2_key(), Some("rsa-2"), &c);
    assert!(auth.verify(&t2).await.is_ok());
    assert_eq!(server.hits.load(Ordering::SeqCst), 2);
    assert!(auth.verify(&t2).await.is_ok());
    assert_eq!(server.hits.load(Ordering::SeqCst), 2);

    // A kid that never appears: refused after a refetch.
    let t3 = sign(Algorithm::RS256, &rsa2_key(), Some("ghost"), &c);
    assert_eq!(auth.verify(&t3).await.unwrap_err(), AuthError::Signature);
    assert_eq!(server.hits.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn jwks_url_refetch_is_rate_limited() {
    let server = JwksServer::start(jwks_with(&["rsa-1"])).await;
    let auth = Authenticator::new(&server.config("1h")).unwrap();
    let c = claims(json!({}));
    let t1 = sign(Algorithm::RS256, &rsa_key(), Some("rsa-1"), &c);
    assert!(auth.verify(&t1).await.is_ok());
    *server.body.lock() = jwks_with(&["rsa-1", "rsa-2"]);
    for kid in ["rsa-2", "x", "y", "z"] {
        let t = sign(Algorithm::RS256, &rsa2_key(), Some(kid), &c);
        assert_eq!(auth.verify(&t).await.unwrap_err(), AuthError::Signature);
    }
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn jwks_url_refreshes_in_background_and_fetches_once() {
    let server = JwksServer::start(jwks_with(&["rsa-1"])).await;
    let config = auth_config(&format!(
        "[[auth.keys]]\nkind = \"jwks\"\nurl = {:?}\nrefresh = \"300ms\"\nrefetch_cooldown = \"1h\"\n",
        server.url
    ));
    let auth = Authenticator::new(&config).unwrap();
    let c = claims(json!({}));
    let t1 = sign(Algorithm::RS256, &rsa_key(), Some("rsa-1"), &c);
    // Concurrent first uses share one fetch.
    let results = futures_util::future::join_all((0..8).map(|_| auth.verify(&t1))).await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);

    // Rotation picked up by the periodic refresh, not by an unknown-kid refetch (cooldown 1h).
    *server.body.lock() = jwks_with(&["rsa-2"]);
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(server.hits.load(Ordering::SeqCst) >= 2);
    let t2 = sign(Algorithm::RS256, &rsa2_key(), Some("rsa-2"), &c);
    assert!(auth.verify(&t2).await.is_ok());
    assert_eq!(auth.verify(&t1).await.unwrap_err(), AuthError::Signature);

    // The refresher stops with the authenticator.
    drop(auth);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let hits = server.hits.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(server.hits.load(Ordering::SeqCst), hits);
}

#[tokio::test]
async fn jwks_url_unreachable() {
    // A port nothing listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let config = auth_config(&format!(
        "[[auth.keys]]\nkind = \"jwks\"\nurl = \"http://127.0.0.1:{port}/jwks.json\"\n"
    ));
    let auth = Authenticator::new(&config).unwrap();
    let t = sign(
        Algorithm::RS256,
        &rsa_key(),
        Some("rsa-1"),
        &claims(json!({})),
    );
    let e = auth.verify(&t).await.unwrap_err();
    assert_eq!(
        (e.clone(), e.code()),
        (AuthError::KeysUnavailable, "unauthorized")
    );
}

#[tokio::test]
async fn anonymous_admission() {
    // No keys: anonymous by default.
    let open = Authenticator::new(&AuthConfig::default()).unwrap();
    assert!(open.anonymous_allowed());
    assert!(open.authenticate(None).await.unwrap().anonymous);
    // A token is still checked (and fails: no key can verify it).
    assert!(
        open.authenticate(Some(&hs(&claims(json!({})))))
            .await
            .is_err()
    );

    // Keys: closed by default.
    let closed = Authenticator::new(&hs_config("")).unwrap();
    assert!(!closed.anonymous_allowed());
    let e = closed.authenticate(None).await.unwrap_err();
    assert_eq!(
        (e.clone(), e.code()),
        (AuthError::MissingToken, "unauthorized")
    );
    assert!(
        closed
            .authenticate(Some(&hs(&claims(json!({})))))
            .await
            .is_ok()
    );

    // Keys and explicitly open: a bad token is refused, not downgraded to anonymous.
    let mixed = Authenticator::new(&hs_config("anonymous = true")).unwrap();
    assert!(mixed.authenticate(None).await.unwrap().anonymous);
    assert!(mixed.authenticate(Some("garbage")).await.is_err());
}

#[tokio::test]
async fn secret_from_environment() {
    let config = |var: &str| {
        auth_config(&format!(
            "[[auth.keys]]\nkind = \"hmac\"\nalgorithm = \"HS256\"\nsecret_env = \"{var}\"\n"
        ))
    };
    assert!(Authenticator::new(&config("HERALD_TEST_UNSET_VARIABLE_7f3a")).is_err());
    // Cargo sets CARGO_PKG_DESCRIPTION for test processes too; reading it avoids mutating the environment.
    let secret = env!("CARGO_PKG_DESCRIPTION");
    assert!(secret.len() >= herald::auth::MIN_HMAC_SECRET);
    let auth = Authenticator::new(&config("CARGO_PKG_DESCRIPTION")).unwrap();
    let token = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(secret.as_bytes()),
        None,
        &claims(json!({})),
    );
    assert!(auth.verify(&token).await.is_ok());
    // CARGO_PKG_NAME ("herald") is too short to be a secret.
    assert!(Authenticator::new(&config("CARGO_PKG_NAME")).is_err());
}

#[test]
fn config_schema() {
    let text = format!(
        r#"
        [auth]
        anonymous = false
        user_claim = "sub"
        roles_claim = "roles"
        leeway = "30s"
        audience = "herald"
        issuer = "https://issuer"
        cookie = "herald_token"
        subscriptions_claim = "channels"
        [[auth.keys]]
        kind = "hmac"
        algorithm = "HS512"
        secret = "{SECRET}"
        kid = "h1"
        [[auth.keys]]
        kind = "pem"
        algorithm = "RS256"
        path = "keys/rs.pub"
        [[auth.keys]]
        kind = "jwks"
        path = "keys/jwks.json"
        [[auth.keys]]
        kind = "jwks"
        url = "http://127.0.0.1:9999/jwks.json"
        refresh = "5m"
        [[auth.rules]]
        pattern = "user_{{sub}}"
        subscribe = true
        [[auth.rules]]
        pattern = "owners"
        subscribe = true
        roles = ["owner"]
        [[auth.rules]]
        pattern = "public:*"
        subscribe = true
        publish = false
        anonymous = true
        "#
    );
    let config: Config = toml::from_str(&text).unwrap();
    config.auth.validate().unwrap();
    assert_eq!(config.auth.keys.len(), 4);
    assert_eq!(config.auth.rules.len(), 3);
    assert!(!config.auth.anonymous_allowed());
    assert_eq!(config.auth.leeway, Duration::from_secs(30));

    let invalid = [
        // Unknown fields, in the section, a key, a rule.
        "[auth]\nanonymus = true",
        "[[auth.keys]]\nkind = \"pem\"\nalgorithm = \"RS256\"\npath = \"x\"\nsecret = \"s\"",
        "[[auth.rules]]\npattern = \"x\"\nsubscrbe = true",
        "[[auth.keys]]\nkind = \"x509\"\npath = \"x\"",
        "[[auth.keys]]\nkind = \"pem\"\nalgorithm = \"none\"\npath = \"x\"",
    ];
    for text in invalid {
        assert!(toml::from_str::<Config>(text).is_err(), "{text}");
    }
    let refused = [
        "[[auth.keys]]\nkind = \"hmac\"\nalgorithm = \"RS256\"\nsecret = \"0123456789abcdef0123456789abcdef\"",
        "[[auth.keys]]\nkind = \"hmac\"\nalgorithm = \"HS256\"\nsecret = \"short\"",
        "[[auth.keys]]\nkind = \"hmac\"\nalgorithm = \"HS256\"",
        "[[auth.keys]]\nkind = \"pem\"\nalgorithm = \"HS256\"\npath = \"x\"",
        "[[auth.keys]]\nkind = \"jwks\"\npath = \"x\"\nurl = \"http://a\"",
        "[[auth.keys]]\nkind = \"jwks\"",
        "[[auth.keys]]\nkind = \"jwks\"\nurl = \"ftp://a\"",
        "[[auth.rules]]\npattern = \"user_{sub\"\nsubscribe = true",
        "[[auth.rules]]\npattern = \"a/b\"\nsubscribe = true",
        "[auth]\nuser_claim = \"\"",
    ];
    for text in refused {
        let config: Config = toml::from_str(text).unwrap();
        assert!(config.auth.validate().is_err(), "{text}");
        assert!(Authenticator::new(&config.auth).is_err(), "{text}");
    }
    let default = Config::default();
    assert!(default.auth.anonymous_allowed());
    assert!(default.auth.validate().is_ok());
}

#[test]
fn missing_key_files_are_config_errors() {
    let config = auth_config(
        "[[auth.keys]]\nkind = \"pem\"\nalgorithm = \"RS256\"\npath = \"/nonexistent/k.pem\"",
    );
    assert!(Authenticator::new(&config).is_err());
    // An EC key where RSA is declared.
    let config = pem_config("RS256", "ec_public.pem");
    let e = Authenticator::new(&config).unwrap_err();
    assert!(e.to_string().contains("not a RS256 public key"), "{e}");
    let config = pem_config("EdDSA", "ec_public.pem");
    assert!(Authenticator::new(&config).is_err());
}

/// The stories end to end: a token from the Socket.IO `auth` object, verified, then checked against rules.
#[tokio::test]
async fn seeds_end_to_end() {
    let config = auth_config(&format!(
        r#"
        [auth]
        subscriptions_claim = "channels"
        [[auth.keys]]
        kind = "hmac"
        algorithm = "HS256"
        secret = "{SECRET}"
        [[auth.rules]]
        pattern = "user_{{sub}}"
        subscribe = true
        [[auth.rules]]
        pattern = "owners"
        subscribe = true
        roles = ["owner"]
        [[auth.rules]]
        pattern = "service:{{services}}"
        subscribe = true
        "#
    ));
    let auth = Authenticator::new(&config).unwrap();
    let perms = Permissions::from_config(&config).unwrap();
    let extractor = TokenExtractor::from_config(&config);
    let ch = |n: &str| ChannelName::new(n).unwrap();

    let token = hs(&claims(json!({
        "sub": "42",
        "roles": "owner",
        "services": ["api", "db"],
        "channels": ["owners", "service:api", "service:web", "user_42"],
    })));
    let sio_auth = json!({ "token": token });
    let headers = http::HeaderMap::new();
    let found = extractor.extract(&headers, [], Some(&sio_auth)).unwrap();
    let id = auth.authenticate(Some(found)).await.unwrap();
    assert!(perms.can_subscribe(&id, &ch("user_42")));
    assert!(!perms.can_subscribe(&id, &ch("user_43")));
    assert!(perms.can_subscribe(&id, &ch("owners")));
    assert!(perms.can_subscribe(&id, &ch("service:db")));
    assert!(!perms.can_subscribe(&id, &ch("service:web")));
    assert!(!perms.can_publish(&id, &ch("owners")));
    assert_eq!(
        perms.server_side_channels(&id),
        [ch("owners"), ch("service:api"), ch("user_42")]
    );

    let reader = hs(&claims(
        json!({"sub": "7", "roles": ["reader"], "services": "*"}),
    ));
    let id = auth.verify(&reader).await.unwrap();
    assert!(!perms.can_subscribe(&id, &ch("owners")));
    assert!(!perms.can_subscribe(&id, &ch("service:api")));
    assert!(perms.can_subscribe(&id, &ch("user_7")));
}
