//! Channel names and channel-name patterns.
//!
//! A channel name is validated once, at the edge, and then carried as a cheap shared string. Names starting with
//! [`INTERNAL_PREFIX`] are Herald's own channels (a source's durable data kept through the engine): clients,
//! publishers and configuration cannot name them, so their events are never seen outside the process.

use std::fmt;
use std::sync::Arc;

/// Longest accepted channel name, in bytes.
pub const MAX_CHANNEL_LEN: usize = 200;

/// Channel names starting with this belong to Herald itself (e.g. `herald:monitors`).
pub const INTERNAL_PREFIX: &str = "herald:";

/// Why a channel name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelNameError {
    /// The name is empty.
    #[error("channel name is empty")]
    Empty,
    /// The name is longer than [`MAX_CHANNEL_LEN`] bytes.
    #[error("channel name is longer than {MAX_CHANNEL_LEN} bytes")]
    TooLong,
    /// The name contains a character outside the allowed set.
    #[error(
        "channel name contains {0:?}; allowed are letters, digits, space and _ - . : @ # + = , ~ !"
    )]
    BadChar(char),
    /// The name starts or ends with a space.
    #[error("channel name starts or ends with a space")]
    OuterSpace,
    /// The name is one of Herald's own channels.
    #[error("channel names starting with {INTERNAL_PREFIX:?} are reserved for Herald's own data")]
    Reserved,
}

impl ChannelNameError {
    /// The stable refusal code clients get: `reserved_channel` for Herald's own channels, else `invalid_channel`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Reserved => "reserved_channel",
            _ => "invalid_channel",
        }
    }
}

/// A validated channel name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

impl ChannelName {
    /// Validates `name` as a client, publisher or configuration names a channel, and wraps it: Herald's own
    /// channels are refused.
    pub fn new(name: &str) -> Result<Self, ChannelNameError> {
        if name.starts_with(INTERNAL_PREFIX) {
            return Err(ChannelNameError::Reserved);
        }
        Self::any(name)
    }

    /// One of Herald's own channels: [`INTERNAL_PREFIX`] followed by `suffix`.
    pub fn internal(suffix: &str) -> Result<Self, ChannelNameError> {
        Self::any(&format!("{INTERNAL_PREFIX}{suffix}"))
    }

    /// Validates `name`, Herald's own channels included (names read back from the engine's storage).
    pub fn any(name: &str) -> Result<Self, ChannelNameError> {
        if name.is_empty() {
            return Err(ChannelNameError::Empty);
        }
        if name.len() > MAX_CHANNEL_LEN {
            return Err(ChannelNameError::TooLong);
        }
        if let Some(c) = name.chars().find(|c| !allowed(*c)) {
            return Err(ChannelNameError::BadChar(c));
        }
        if name.starts_with(' ') || name.ends_with(' ') {
            return Err(ChannelNameError::OuterSpace);
        }
        Ok(Self(name.into()))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is one of Herald's own channels (never listed to or reachable by clients).
    pub fn is_internal(&self) -> bool {
        self.0.starts_with(INTERNAL_PREFIX)
    }
}

/// Letters and digits of any script (unit names are not always English), and separators that need no quoting
/// in URLs' path segments once percent-encoded; never `/`, `*`, `?` or control characters.
fn allowed(c: char) -> bool {
    c.is_alphanumeric() || " _-.:@#+=,~!".contains(c)
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl serde::Serialize for ChannelName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// A channel-name pattern: `*` matches any run of characters, everything else matches itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern(String);

impl Pattern {
    /// Wraps a pattern string.
    pub fn new(pattern: &str) -> Self {
        Self(pattern.to_owned())
    }

    /// Whether `name` matches this pattern.
    pub fn matches(&self, name: &str) -> bool {
        glob(self.0.as_bytes(), name.as_bytes())
    }
}

/// Iterative glob with backtracking to the last `*`: linear in practice, no recursion.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_names() {
        assert!(ChannelName::new("Final 1A").is_ok());
        assert!(ChannelName::new("service:api-gw.eu@2").is_ok());
        assert_eq!(ChannelName::new(""), Err(ChannelNameError::Empty));
        assert_eq!(ChannelName::new("a/b"), Err(ChannelNameError::BadChar('/')));
        assert_eq!(ChannelName::new(" a"), Err(ChannelNameError::OuterSpace));
        assert_eq!(
            ChannelName::new(&"x".repeat(201)),
            Err(ChannelNameError::TooLong)
        );
        assert!(ChannelName::new("Ligne Süd 3").is_ok());
        assert!(ChannelName::new("a\u{7}").is_err());
        assert!(ChannelName::new("a*").is_err());
    }

    #[test]
    fn herald_channels_are_reserved() {
        assert_eq!(
            ChannelName::new("herald:monitors"),
            Err(ChannelNameError::Reserved)
        );
        assert_eq!(ChannelNameError::Reserved.code(), "reserved_channel");
        assert_eq!(ChannelNameError::Empty.code(), "invalid_channel");
        let own = ChannelName::internal("monitors").unwrap();
        assert!(own.is_internal());
        assert_eq!(ChannelName::any("herald:monitors").unwrap(), own);
        assert!(!ChannelName::new("heraldic").unwrap().is_internal());
        assert!(ChannelName::internal("a/b").is_err());
    }

    #[test]
    fn patterns_match() {
        let p = Pattern::new("short:*");
        assert!(p.matches("short:x"));
        assert!(p.matches("short:"));
        assert!(!p.matches("long:x"));
        assert!(Pattern::new("*").matches("anything"));
        assert!(Pattern::new("a*b*c").matches("aXXbYYc"));
        assert!(!Pattern::new("a*b*c").matches("aXXbYY"));
        assert!(Pattern::new("exact").matches("exact"));
        assert!(!Pattern::new("exact").matches("exact2"));
    }
}
