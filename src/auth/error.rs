//! Authentication errors (per token, with stable wire codes) and configuration errors (at start-up).

use std::path::PathBuf;

/// Why a client was refused. Messages never contain the token, keys or secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token was presented and anonymous clients are not admitted.
    #[error("authentication required")]
    MissingToken,
    /// The token is not a well-formed JWT (or is too long).
    #[error("malformed token")]
    Malformed,
    /// The token has a `crit` header: it names extensions Herald does not implement (RFC 7515 §4.1.11).
    #[error("token header lists critical extensions (crit) that are not supported")]
    Critical,
    /// The token's `alg` is not the algorithm of any configured key (this includes `none`).
    #[error("token algorithm not accepted")]
    Algorithm,
    /// No configured key verifies the signature (or the token names an unknown `kid`).
    #[error("invalid token signature")]
    Signature,
    /// The token's `aud` is not the configured audience.
    #[error("token audience not accepted")]
    Audience,
    /// The token's `iss` is not the configured issuer.
    #[error("token issuer not accepted")]
    Issuer,
    /// A required claim (`exp`, or `aud`/`iss` when configured) is missing.
    #[error("token lacks the {0} claim")]
    MissingClaim(String),
    /// The token's `nbf` is in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// The token's `exp` is in the past.
    #[error("token expired")]
    Expired,
    /// A handshake field that names the user or the roles (`[auth] identity_from_handshake`) holds no usable value.
    #[error("handshake field {0:?} must be a string (or an integer user id) of at most 256 bytes")]
    HandshakeField(String),
    /// The keys needed to check the token could not be fetched.
    #[error("token keys unavailable")]
    KeysUnavailable,
}

impl AuthError {
    /// The stable wire code: `token_expired`, or `unauthorized` for everything else.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Expired => "token_expired",
            _ => "unauthorized",
        }
    }
}

/// Why the `[auth]` configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    /// The configuration is inconsistent (see [`super::AuthConfig::validate`]).
    #[error("{0}")]
    Invalid(String),
    /// A key file could not be read.
    #[error("auth.keys[{index}]: cannot read {path}: {source}")]
    Read {
        /// Position in `auth.keys`.
        index: usize,
        /// File path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A PEM file does not hold a public key usable with the configured algorithm.
    #[error("auth.keys[{index}]: {path} is not a {algorithm} public key: {reason}")]
    BadPem {
        /// Position in `auth.keys`.
        index: usize,
        /// File path.
        path: PathBuf,
        /// The configured algorithm.
        algorithm: String,
        /// What the PEM parser said.
        reason: String,
    },
    /// A JWKS file is not a usable key set.
    #[error("auth.keys[{index}]: {path}: {reason}")]
    BadJwks {
        /// Position in `auth.keys`.
        index: usize,
        /// File path.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The environment variable named by `secret_env` is unset or too short.
    #[error(
        "auth.keys[{index}]: environment variable {var} is unset or shorter than {} bytes",
        super::MIN_HMAC_SECRET
    )]
    Secret {
        /// Position in `auth.keys`.
        index: usize,
        /// Variable name.
        var: String,
    },
    /// The HTTP client for JWKS URLs could not be built.
    #[error("auth: cannot build the JWKS HTTP client: {0}")]
    Http(String),
}

impl From<crate::config_error::InvalidConfig> for AuthConfigError {
    fn from(e: crate::config_error::InvalidConfig) -> Self {
        AuthConfigError::Invalid(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable() {
        assert_eq!(AuthError::Expired.code(), "token_expired");
        for e in [
            AuthError::MissingToken,
            AuthError::Malformed,
            AuthError::Algorithm,
            AuthError::Signature,
            AuthError::Audience,
            AuthError::Issuer,
            AuthError::MissingClaim("exp".into()),
            AuthError::NotYetValid,
            AuthError::KeysUnavailable,
            AuthError::HandshakeField("userId".into()),
        ] {
            assert_eq!(e.code(), "unauthorized", "{e:?}");
        }
    }
}
