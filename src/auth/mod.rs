//! Client authentication (JWT) and channel authorisation.
//!
//! The pieces, in the order a connection meets them:
//! 1. [`TokenExtractor`] finds the token a client presented (Socket.IO `auth.token`, `Authorization: Bearer`,
//!    a query parameter, a cookie — in that order).
//! 2. [`Authenticator`] verifies it against the configured keys and yields an [`Identity`]; no token yields the
//!    handshake's identity when `[auth] identity_from_handshake` names its fields ([`HandshakeIdentity`],
//!    unverified), else an anonymous identity when `[auth] anonymous` allows it.
//! 3. [`Permissions`] decides per channel whether that identity may subscribe or publish, and which channels it is
//!    subscribed to server-side.
//!
//! Errors carry stable codes for the wire ([`AuthError::code`]): `unauthorized`, `token_expired`; a channel
//! refused by the permissions is the bindings' `forbidden` refusal.
//!
//! # Configuration (`[auth]`)
//! ```toml
//! [auth]
//! anonymous = false            # default: true only while no key is configured
//! user_claim = "sub"           # claim holding the user id
//! roles_claim = "roles"        # a string or an array of strings
//! leeway = "30s"               # clock skew tolerated on exp / nbf
//! audience = "herald"          # optional; required in tokens when set
//! issuer = "https://issuer"    # optional; required in tokens when set
//! cookie = "herald_token"      # optional; no cookie is read unless named
//! query_param = "token"        # default "token"; "" reads no query parameter
//! subscriptions_claim = "channels"  # optional server-side subscriptions
//! identity_from_handshake = { user = "userId", roles = "role" }  # unverified; trusted/dev setups only
//!
//! [[auth.keys]]
//! kind = "hmac"                # HS256 / HS384 / HS512, secret or secret_env (>= 32 bytes)
//! algorithm = "HS256"
//! secret_env = "HERALD_JWT_SECRET"
//!
//! [[auth.keys]]
//! kind = "pem"                 # RS*, PS*, ES256, ES384, EdDSA public key
//! algorithm = "RS256"
//! path = "keys/rs.pub"
//!
//! [[auth.keys]]
//! kind = "jwks"                # a JWKS file, read at start ...
//! path = "keys/jwks.json"
//!
//! [[auth.keys]]
//! kind = "jwks"                # ... or a URL, fetched, cached and refreshed
//! url = "https://issuer/.well-known/jwks.json"
//! refresh = "5m"
//! refetch_cooldown = "30s"     # least time between fetches caused by an unknown kid
//!
//! [[auth.rules]]
//! pattern = "user_{sub}"
//! subscribe = true
//! [[auth.rules]]
//! pattern = "owners"
//! subscribe = true
//! roles = ["owner"]
//! [[auth.rules]]
//! pattern = "service:{services}"   # an array claim expands to one pattern per element
//! subscribe = true
//! [[auth.rules]]
//! pattern = "public:*"
//! subscribe = true
//! publish = false
//! anonymous = true
//! ```
//!
//! Every key pins its algorithm: a token whose header names another algorithm is refused, `alg: none` is never
//! accepted, and an HMAC token is never checked against a public key. With keys configured every token must carry
//! `exp`; `nbf` is checked when present. `docs/auth.md` is the full reference.

mod config;
mod error;
mod extract;
mod handshake;
mod identity;
mod keys;
mod permissions;
mod remote;
mod verify;

pub use config::{AuthConfig, AuthRule, KeyConfig};
pub use error::{AuthConfigError, AuthError};
pub use extract::{TokenExtractor, bearer_token, cookie_token, query_token, socketio_token};
pub use handshake::HandshakeIdentity;
pub use identity::Identity;
pub use permissions::Permissions;
pub use verify::Authenticator;

/// Shortest accepted HMAC secret, in bytes (RFC 7518 §3.2: at least the hash size; 32 bytes for HS256).
pub const MIN_HMAC_SECRET: usize = 32;

/// Longest accepted token, in bytes; longer ones are refused before any parsing.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;
