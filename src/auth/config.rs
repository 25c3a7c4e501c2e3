//! The `[auth]` section: token sources, verification keys and channel permission rules, with the checks that
//! need neither files nor the environment (loading keys is [`super::Authenticator::new`]'s job).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config_error::InvalidConfig;

/// Client authentication and channel permissions (`[auth]`); the full reference is `docs/auth.md`.
///
/// With no `keys`, tokens cannot be verified: every client is anonymous and `anonymous` defaults to `true`.
/// With keys, `anonymous` defaults to `false` and every token must carry `exp`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Admit clients without a token; `None` → [`AuthConfig::anonymous_allowed`] decides.
    pub anonymous: Option<bool>,
    /// Claim holding the user id (a string or an integer).
    pub user_claim: String,
    /// Claim holding the roles (a string or an array of strings).
    pub roles_claim: String,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// Required `aud` value, if any.
    pub audience: Option<String>,
    /// Required `iss` value, if any.
    pub issuer: Option<String>,
    /// Cookie carrying the token, if any (not read unless named).
    pub cookie: Option<String>,
    /// Query parameter carrying the token; empty → not read.
    pub query_param: String,
    /// Claim listing channels a client is subscribed to on connect (server-side subscriptions).
    pub subscriptions_claim: Option<String>,
    /// Handshake fields naming the user and roles of clients that present no token (unverified: for trusted or
    /// development setups only).
    pub identity_from_handshake: Option<super::HandshakeIdentity>,
    /// Verification keys; each pins its algorithm.
    pub keys: Vec<KeyConfig>,
    /// Channel permission rules; the first rule that applies decides, per action.
    pub rules: Vec<AuthRule>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            anonymous: None,
            user_claim: "sub".into(),
            roles_claim: "roles".into(),
            leeway: Duration::from_secs(30),
            audience: None,
            issuer: None,
            cookie: None,
            query_param: "token".into(),
            subscriptions_claim: None,
            identity_from_handshake: None,
            keys: Vec::new(),
            rules: Vec::new(),
        }
    }
}

impl AuthConfig {
    /// Whether clients without a token are admitted: `anonymous` if set, else `true` only while no key is configured.
    pub fn anonymous_allowed(&self) -> bool {
        self.anonymous.unwrap_or(self.keys.is_empty())
    }

    /// Checks what can be checked without reading files or the environment.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let bad = |m: String| Err(InvalidConfig(format!("auth: {m}")));
        if self.user_claim.is_empty() || self.roles_claim.is_empty() {
            return bad("user_claim and roles_claim must not be empty".into());
        }
        if self.cookie.as_deref() == Some("") {
            return bad("cookie must not be empty (omit it to read no cookie)".into());
        }
        if let Some(h) = &self.identity_from_handshake {
            h.validate().or_else(bad)?;
        }
        for (i, key) in self.keys.iter().enumerate() {
            key.validate().or_else(|m| bad(format!("keys[{i}]: {m}")))?;
        }
        for (i, rule) in self.rules.iter().enumerate() {
            super::permissions::check_pattern(&rule.pattern)
                .or_else(|m| bad(format!("rules[{i}] pattern {:?}: {m}", rule.pattern)))?;
        }
        Ok(())
    }
}

/// One verification key source (`[[auth.keys]]`), tagged by `kind`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum KeyConfig {
    /// A shared HMAC secret (`HS256`, `HS384`, `HS512`), inline or from an environment variable.
    Hmac {
        /// The algorithm tokens must declare.
        algorithm: jsonwebtoken::Algorithm,
        /// The secret itself (at least 32 bytes).
        #[serde(default)]
        secret: Option<String>,
        /// Environment variable holding the secret.
        #[serde(default)]
        secret_env: Option<String>,
        /// Key id; if set, a token naming another `kid` is not tried against this key.
        #[serde(default)]
        kid: Option<String>,
    },
    /// A public key in a PEM file (`RS*`, `PS*`, `ES256`, `ES384`, `EdDSA`).
    Pem {
        /// The algorithm tokens must declare.
        algorithm: jsonwebtoken::Algorithm,
        /// PEM file (SPKI `PUBLIC KEY`, or `RSA PUBLIC KEY`).
        path: PathBuf,
        /// Key id; if set, a token naming another `kid` is not tried against this key.
        #[serde(default)]
        kid: Option<String>,
    },
    /// A JSON Web Key Set, from a file (read at start) or a URL (fetched, cached, refreshed).
    Jwks {
        /// JWKS file.
        #[serde(default)]
        path: Option<PathBuf>,
        /// JWKS URL (`http://` or `https://`).
        #[serde(default)]
        url: Option<String>,
        /// How often a URL is fetched again.
        #[serde(default = "default_jwks_refresh", with = "humantime_serde")]
        refresh: Duration,
        /// Least time between two fetches triggered by an unknown `kid`.
        #[serde(default = "default_jwks_cooldown", with = "humantime_serde")]
        refetch_cooldown: Duration,
    },
}

fn default_jwks_refresh() -> Duration {
    Duration::from_secs(300)
}

fn default_jwks_cooldown() -> Duration {
    Duration::from_secs(30)
}

impl KeyConfig {
    fn validate(&self) -> Result<(), String> {
        use jsonwebtoken::{Algorithm as A, AlgorithmFamily as F};
        match self {
            KeyConfig::Hmac {
                algorithm,
                secret,
                secret_env,
                ..
            } => {
                if algorithm.family() != F::Hmac {
                    return Err(format!(
                        "kind \"hmac\" needs HS256, HS384 or HS512, not {algorithm:?}"
                    ));
                }
                match (secret, secret_env) {
                    (Some(s), None) if s.len() < super::MIN_HMAC_SECRET => Err(format!(
                        "secret must be at least {} bytes",
                        super::MIN_HMAC_SECRET
                    )),
                    (Some(_), None) | (None, Some(_)) => Ok(()),
                    _ => Err("set exactly one of secret and secret_env".into()),
                }
            }
            KeyConfig::Pem { algorithm, .. } => match algorithm {
                A::HS256 | A::HS384 | A::HS512 => {
                    Err("kind \"pem\" holds a public key; HMAC secrets use kind \"hmac\"".into())
                }
                _ => Ok(()),
            },
            KeyConfig::Jwks {
                path, url, refresh, ..
            } => {
                if path.is_some() == url.is_some() {
                    return Err("set exactly one of path and url".into());
                }
                if let Some(url) = url
                    && !(url.starts_with("http://") || url.starts_with("https://"))
                {
                    return Err("url must start with http:// or https://".into());
                }
                if refresh.is_zero() {
                    return Err("refresh must be positive".into());
                }
                Ok(())
            }
        }
    }
}

/// A channel permission rule (`[[auth.rules]]`).
///
/// A rule applies to a request when its pattern matches the channel, the identity qualifies (`anonymous`, `roles`)
/// and the rule sets the requested action; the first rule that applies decides.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthRule {
    /// Channel pattern: `*` matches any run of characters; `{claim}` is replaced by the claim's value(s).
    pub pattern: String,
    /// Allow (`true`) or refuse (`false`) subscribing; absent → this rule does not decide subscribing.
    #[serde(default)]
    pub subscribe: Option<bool>,
    /// Allow (`true`) or refuse (`false`) publishing; absent → this rule does not decide publishing.
    #[serde(default)]
    pub publish: Option<bool>,
    /// The rule applies only to identities holding one of these roles; empty → any authenticated identity.
    #[serde(default)]
    pub roles: Vec<String>,
    /// The rule also applies to anonymous identities.
    #[serde(default)]
    pub anonymous: bool,
}
