//! Token verification: the [`Authenticator`] holds the configured keys and turns a token into an [`Identity`].

use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use serde_json::{Map, Value};

use super::keys::{VerifyKey, from_pem, parse_jwks};
use super::remote::{RemoteJwks, http_client};
use super::{AuthConfig, KeyConfig};
use super::{AuthConfigError, AuthError, Identity, MAX_TOKEN_LEN, MIN_HMAC_SECRET};

/// Verifies tokens against the configured keys. Cheap to clone; clones share the JWKS caches.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

struct Inner {
    /// HMAC and PEM keys, and keys from JWKS files.
    fixed: Vec<VerifyKey>,
    /// JWKS URLs.
    remote: Vec<Arc<RemoteJwks>>,
    validation: Validation,
    user_claim: String,
    roles_claim: String,
    anonymous: bool,
}

/// What trying the candidate keys gave.
enum Outcome {
    Verified(Map<String, Value>),
    Failed(AuthError),
    /// No key with the token's `kid` exists (and none without a kid verified it).
    UnknownKid,
}

impl Authenticator {
    /// Loads the keys: reads PEM and JWKS files and `secret_env` variables now; JWKS URLs are fetched in the
    /// background (when called inside a tokio runtime) and on first use, and refreshed every `refresh`.
    pub fn new(config: &AuthConfig) -> Result<Self, AuthConfigError> {
        config.validate()?;
        let mut fixed = Vec::new();
        let mut remote = Vec::new();
        let mut client = None;
        for (index, key) in config.keys.iter().enumerate() {
            match key {
                KeyConfig::Hmac {
                    algorithm,
                    secret,
                    secret_env,
                    kid,
                } => {
                    let secret = match (secret, secret_env) {
                        (Some(s), _) => s.clone(),
                        (None, Some(var)) => std::env::var(var)
                            .ok()
                            .filter(|s| s.len() >= MIN_HMAC_SECRET)
                            .ok_or_else(|| AuthConfigError::Secret {
                                index,
                                var: var.clone(),
                            })?,
                        (None, None) => {
                            return Err(AuthConfigError::Invalid(format!(
                                "auth.keys[{index}]: no secret"
                            )));
                        }
                    };
                    fixed.push(VerifyKey {
                        alg: *algorithm,
                        kid: kid.clone(),
                        key: DecodingKey::from_secret(secret.as_bytes()),
                    });
                }
                KeyConfig::Pem {
                    algorithm,
                    path,
                    kid,
                } => {
                    let pem = read(index, path)?;
                    let key =
                        from_pem(*algorithm, &pem).map_err(|reason| AuthConfigError::BadPem {
                            index,
                            path: path.clone(),
                            algorithm: format!("{algorithm:?}"),
                            reason,
                        })?;
                    fixed.push(VerifyKey {
                        alg: *algorithm,
                        kid: kid.clone(),
                        key,
                    });
                }
                KeyConfig::Jwks {
                    path: Some(path), ..
                } => {
                    let bytes = read(index, path)?;
                    let keys =
                        parse_jwks(&bytes, true).map_err(|reason| AuthConfigError::BadJwks {
                            index,
                            path: path.clone(),
                            reason,
                        })?;
                    fixed.extend(keys);
                }
                KeyConfig::Jwks {
                    url: Some(url),
                    refresh,
                    refetch_cooldown,
                    ..
                } => {
                    let uri: http::Uri = url.parse().map_err(|e| {
                        AuthConfigError::Invalid(format!("auth.keys[{index}]: url: {e}"))
                    })?;
                    let client = match &client {
                        Some(c) => Clone::clone(c),
                        None => client
                            .insert(http_client().map_err(AuthConfigError::Http)?)
                            .clone(),
                    };
                    let source =
                        Arc::new(RemoteJwks::new(uri, *refresh, *refetch_cooldown, client));
                    RemoteJwks::spawn_refresher(&source);
                    remote.push(source);
                }
                KeyConfig::Jwks { .. } => {
                    return Err(AuthConfigError::Invalid(format!(
                        "auth.keys[{index}]: jwks needs path or url"
                    )));
                }
            }
        }

        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = config.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        match &config.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &config.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);

        Ok(Self {
            inner: Arc::new(Inner {
                fixed,
                remote,
                validation,
                user_claim: config.user_claim.clone(),
                roles_claim: config.roles_claim.clone(),
                anonymous: config.anonymous_allowed(),
            }),
        })
    }

    /// Whether clients without a token are admitted.
    pub fn anonymous_allowed(&self) -> bool {
        self.inner.anonymous
    }

    /// The identity of a client: no token → anonymous (if allowed, else [`AuthError::MissingToken`]); a token →
    /// [`Authenticator::verify`]. A token that fails is refused even when anonymous clients are admitted.
    pub async fn authenticate(&self, token: Option<&str>) -> Result<Identity, AuthError> {
        match token {
            Some(token) => self.verify(token).await,
            None if self.inner.anonymous => Ok(Identity::anonymous()),
            None => Err(AuthError::MissingToken),
        }
    }

    /// Verifies a token: its `alg` must be the algorithm of a configured key, its signature must verify with that
    /// key, `exp` must be present and not past, `nbf` (if present) not future, and `aud`/`iss` must match when
    /// configured. A `kid` selects keys with that id (keys without an id are tried too); an unknown `kid` makes
    /// JWKS URLs be fetched again (at most once per `refetch_cooldown`).
    pub async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Malformed);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        refuse_critical(token)?;
        for source in &self.inner.remote {
            source.ensure_fresh().await;
        }
        let generations: Vec<u64> = self.inner.remote.iter().map(|r| r.generation()).collect();
        let mut outcome = self.try_keys(token, &header);
        if matches!(outcome, Outcome::UnknownKid) {
            let mut changed = false;
            for (source, seen) in self.inner.remote.iter().zip(generations) {
                changed |= source.refetch_unknown_kid(seen).await;
            }
            if changed {
                outcome = self.try_keys(token, &header);
            }
        }
        match outcome {
            Outcome::Verified(claims) => Ok(Identity::from_claims(
                claims,
                &self.inner.user_claim,
                &self.inner.roles_claim,
            )),
            Outcome::Failed(e) => Err(e),
            Outcome::UnknownKid if self.inner.remote.iter().any(|r| !r.loaded()) => {
                Err(AuthError::KeysUnavailable)
            }
            Outcome::UnknownKid => Err(AuthError::Signature),
        }
    }

    /// Tries every key whose algorithm is the token's and whose id (if any) is the token's.
    fn try_keys(&self, token: &str, header: &Header) -> Outcome {
        let remote: Vec<Arc<Vec<VerifyKey>>> = self.inner.remote.iter().map(|r| r.keys()).collect();
        let all = self
            .inner
            .fixed
            .iter()
            .chain(remote.iter().flat_map(|keys| keys.iter()));
        let mut alg_known = false;
        let mut kid_known = header.kid.is_none();
        for key in all {
            if key.alg != header.alg {
                continue;
            }
            alg_known = true;
            match (&header.kid, &key.kid) {
                (Some(want), Some(have)) if want != have => continue,
                (Some(_), Some(_)) => kid_known = true,
                _ => {}
            }
            let mut validation = self.inner.validation.clone();
            validation.algorithms = vec![key.alg];
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation) {
                Ok(data) => return Outcome::Verified(data.claims),
                Err(e) => match e.into_kind() {
                    // Another key may verify it.
                    ErrorKind::InvalidSignature
                    | ErrorKind::InvalidAlgorithm
                    | ErrorKind::InvalidKeyFormat
                    | ErrorKind::InvalidRsaKey(_)
                    | ErrorKind::InvalidEcdsaKey
                    | ErrorKind::InvalidEddsaKey => {}
                    ErrorKind::ExpiredSignature => return Outcome::Failed(AuthError::Expired),
                    ErrorKind::ImmatureSignature => return Outcome::Failed(AuthError::NotYetValid),
                    ErrorKind::InvalidAudience => return Outcome::Failed(AuthError::Audience),
                    ErrorKind::InvalidIssuer => return Outcome::Failed(AuthError::Issuer),
                    ErrorKind::MissingRequiredClaim(c) => {
                        return Outcome::Failed(AuthError::MissingClaim(c));
                    }
                    _ => return Outcome::Failed(AuthError::Malformed),
                },
            }
        }
        if !kid_known && !self.inner.remote.is_empty() {
            return Outcome::UnknownKid;
        }
        if !alg_known {
            // Remote sources may not have loaded yet: only then is the algorithm's absence not final.
            if self.inner.remote.iter().any(|r| !r.loaded()) {
                return Outcome::UnknownKid;
            }
            return Outcome::Failed(AuthError::Algorithm);
        }
        Outcome::Failed(AuthError::Signature)
    }
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("keys", &self.inner.fixed)
            .field("jwks_urls", &self.inner.remote.len())
            .field("anonymous", &self.inner.anonymous)
            .finish()
    }
}

/// RFC 7515 §4.1.11: a recipient must refuse a token whose `crit` header lists an extension it does not
/// understand. Herald implements none, so any `crit` — a list of names, an empty list, `null` or another value
/// (all invalid or unsupported) — refuses the token. The raw header is read because the JWT library's typed
/// header treats `"crit": null` as absent and does not act on `crit` at all.
fn refuse_critical(token: &str) -> Result<(), AuthError> {
    use base64::Engine as _;
    let segment = token.split('.').next().unwrap_or_default();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| AuthError::Malformed)?;
    let header: Map<String, Value> =
        serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)?;
    if header.contains_key("crit") {
        return Err(AuthError::Critical);
    }
    Ok(())
}

fn read(index: usize, path: &std::path::Path) -> Result<Vec<u8>, AuthConfigError> {
    std::fs::read(path).map_err(|source| AuthConfigError::Read {
        index,
        path: path.to_owned(),
        source,
    })
}
