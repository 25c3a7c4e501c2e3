//! The error every configuration section's `validate` returns: a leaf type, so the modules owning the sections
//! and `crate::config`, which composes them, share it without importing each other.

/// A setting is out of range or malformed. The message names the setting by its TOML path (`limits.messages_burst`,
/// `auth: keys[0]`, `sources.sql[2] (id "q") field `sql``) and says what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidConfig(pub String);
