//! The HTTP API's section: `api_keys`, each a bare secret (every scope) or a table restricting it.

use serde::Deserialize;

use crate::core::channel::Pattern;

/// An API key: a bare string has every scope; a table can restrict it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum ApiKey {
    /// Full access.
    Plain(String),
    /// A key with scopes.
    Scoped {
        /// The key.
        key: String,
        /// Channel patterns it may publish to.
        #[serde(default = "any_channel")]
        publish: Vec<String>,
        /// Whether it may use the admin endpoints (e.g. closing connections).
        #[serde(default)]
        admin: bool,
    },
}

fn any_channel() -> Vec<String> {
    vec!["*".into()]
}

impl ApiKey {
    /// The secret itself.
    pub fn key(&self) -> &str {
        match self {
            ApiKey::Plain(k) | ApiKey::Scoped { key: k, .. } => k,
        }
    }

    /// Whether this key may publish to `channel`.
    pub fn may_publish(&self, channel: &str) -> bool {
        match self {
            ApiKey::Plain(_) => true,
            ApiKey::Scoped { publish, .. } => {
                publish.iter().any(|p| Pattern::new(p).matches(channel))
            }
        }
    }

    /// Whether this key may use the admin endpoints.
    pub fn is_admin(&self) -> bool {
        matches!(self, ApiKey::Plain(_) | ApiKey::Scoped { admin: true, .. })
    }
}
