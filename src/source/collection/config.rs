//! The `[[collections]]` section: one table per collection of JSON documents, and its validation (names, paths,
//! events, the schema, the access rules and the derived values all checked before the engine opens).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::config_error::InvalidConfig;
use crate::core::channel::ChannelName;
use crate::core::event::RESERVED_PREFIX;

/// Default most documents of one collection.
pub const DEFAULT_MAX_DOCUMENTS: usize = 100_000;
/// Default largest stored document, in bytes of JSON.
pub const DEFAULT_MAX_DOCUMENT_BYTES: usize = 64 << 10;

/// One `[[collections]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectionConfig {
    /// The collection's name (`/api/collections/{name}`): 1–64 of `a-z`, `0-9`, `_`, `-`.
    pub name: String,
    /// The state channel holding its documents (default: the name).
    pub channel: Option<String>,
    /// Where the frontend's own routes are served (`/books`: `GET/POST /books`, `GET/PUT/PATCH/DELETE
    /// /books/{id}`), besides `/api/collections/{name}`.
    pub path: Option<String>,
    /// How a new document's id is chosen.
    #[serde(default)]
    pub id: IdPolicy,
    /// The field holding the id (default `id`).
    #[serde(default = "default_id_field")]
    pub id_field: String,
    /// Field set to the creation time (RFC 3339) on create, if named.
    pub created_field: Option<String>,
    /// Field set to the time of each write (RFC 3339), if named.
    pub updated_field: Option<String>,
    /// The only fields a document keeps (besides the id and timestamps); one the body lacks is `null` unless
    /// `defaults` gives it. Empty: every field is kept.
    #[serde(default)]
    pub fields: Vec<String>,
    /// Values of fields a created document lacks (`favorites = []`).
    #[serde(default)]
    pub defaults: BTreeMap<String, serde_json::Value>,
    /// String fields trimmed of surrounding white space before validation.
    #[serde(default)]
    pub trim: Vec<String>,
    /// Longest value (in characters) of string fields, checked after trimming.
    #[serde(default)]
    pub max_length: BTreeMap<String, usize>,
    /// A JSON Schema (as a TOML table) every stored document must satisfy.
    pub schema: Option<serde_json::Value>,
    /// A JSON Schema file, instead of `schema`.
    pub schema_file: Option<PathBuf>,
    /// Event names and payloads of changes.
    #[serde(default)]
    pub events: EventsConfig,
    /// How a new subscriber gets the documents: `bulk` (one event carrying the array, the default) or `each`.
    #[serde(default)]
    pub snapshot: SnapshotStyle,
    /// The bulk snapshot's event name (default `{name}:snapshot`).
    pub snapshot_event: Option<String>,
    /// Who may do what (`[collections.access]`).
    #[serde(default)]
    pub access: AccessConfig,
    /// A field set to the creating user's id (`{sub}`), read by the `owner` access rule.
    pub owner_field: Option<String>,
    /// Array-membership operations (`[[collections.arrays]]`): add/remove the caller's id, idempotent.
    #[serde(default)]
    pub arrays: Vec<ArrayConfig>,
    /// Derived values (`[[collections.values]]`).
    #[serde(default)]
    pub values: Vec<ValueConfig>,
    /// What `PUT {path}/{id}` does: `replace` the document (the default), or `merge` the body's fields into it
    /// (what a hand-written backend's update often does; `PATCH` always merges).
    #[serde(default)]
    pub put: PutMode,
    /// Most documents; a create beyond is refused with 507 `collection_full`.
    #[serde(default = "default_max_documents")]
    pub max_documents: usize,
    /// Largest document, in bytes of JSON; larger is refused with 413 `payload_too_large`.
    #[serde(default = "default_max_document_bytes")]
    pub max_document_bytes: usize,
}

fn default_id_field() -> String {
    "id".into()
}

fn default_max_documents() -> usize {
    DEFAULT_MAX_DOCUMENTS
}

fn default_max_document_bytes() -> usize {
    DEFAULT_MAX_DOCUMENT_BYTES
}

/// How new documents get their ids.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdPolicy {
    /// A random UUID (v4) string.
    #[default]
    Uuid,
    /// A ULID string (sortable by creation time).
    Ulid,
    /// The client's: the body's id field (a string or a non-negative integer), required.
    Client,
    /// Milliseconds since the UNIX epoch as an integer, like `Date.now()` (unique: one later if taken).
    Timestamp,
}

/// Event names of changes, and what they carry.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// A document created (default `{name}:created`).
    pub created: Option<String>,
    /// A document replaced, patched or changed by an array operation (default `{name}:updated`).
    pub updated: Option<String>,
    /// A document deleted (default `{name}:deleted`).
    pub deleted: Option<String>,
    /// What they carry: the whole `document` (the default) or only `{ "<id_field>": id }` (`id`).
    pub payload: Payload,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            created: None,
            updated: None,
            deleted: None,
            payload: Payload::Document,
        }
    }
}

/// What a change event carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Payload {
    /// The whole document (for a deletion: as it was).
    #[default]
    Document,
    /// Only the id field.
    Id,
}

/// What `PUT` does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PutMode {
    /// The body is the new document.
    #[default]
    Replace,
    /// The body's fields are merged into the document (a JSON Merge Patch).
    Merge,
}

/// How a new subscriber gets the current documents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotStyle {
    /// One event (`snapshot_event`) carrying the array of documents, ordered by id.
    #[default]
    Bulk,
    /// Each document as the event that last set it.
    Each,
}

/// `[collections.access]`: one rule per operation (see `access`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessConfig {
    /// Listing the documents.
    pub list: String,
    /// Reading one document.
    pub read: String,
    /// Creating (and importing).
    pub create: String,
    /// Replacing and patching.
    pub update: String,
    /// Deleting.
    pub delete: String,
}

impl Default for AccessConfig {
    fn default() -> Self {
        let key = || "api_key".to_owned();
        Self {
            list: key(),
            read: key(),
            create: key(),
            update: key(),
            delete: key(),
        }
    }
}

/// `[[collections.arrays]]`: an array field the caller adds itself to or removes itself from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArrayConfig {
    /// The array field (`favorites`).
    pub field: String,
    /// The route segment: `POST {path}/{id}/{route}` adds, `DELETE` removes (default: the field).
    pub route: Option<String>,
    /// What is added: `{sub}` (the caller's user id, the default), `{body.FIELD}` or `{query.FIELD}`.
    #[serde(default = "default_member")]
    pub member: String,
    /// Who may (default: anyone who may read the document).
    pub access: Option<String>,
}

fn default_member() -> String {
    "{sub}".into()
}

/// `[[collections.values]]`: a derived value, published when it changes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueConfig {
    /// The event name (for a collection value also its state key).
    pub event: String,
    /// Where it is published: a collection value is a state value on this channel (default: the collection's);
    /// a per-document value is an event on it (default: the collection's).
    pub channel: Option<String>,
    /// Evaluated per document, published when one document's value changes (`favoriteUpdated`), instead of
    /// over the whole collection.
    #[serde(default)]
    pub per_document: bool,
    /// Whose presence `presence(…)` fields count (default: the online channel).
    pub of: Option<String>,
    /// Field name → expression (see `expr`).
    pub value: BTreeMap<String, String>,
}

/// Checks an event name: not empty, not Herald's (`herald:…`), not one the Socket.IO client reserves.
pub fn event_name(what: &str, name: &str) -> Result<(), InvalidConfig> {
    if name.is_empty()
        || name.starts_with(RESERVED_PREFIX)
        || crate::transport::socketio::packet::RESERVED_EVENTS.contains(&name)
    {
        return Err(InvalidConfig(format!(
            "{what}: event {name:?} must be non-empty, not start with {RESERVED_PREFIX:?} and not be one \
             the Socket.IO client reserves (connect, disconnect, …)"
        )));
    }
    Ok(())
}

/// Checks a collection name: 1–64 of `a-z`, `0-9`, `_`, `-`.
pub fn check_name(name: &str) -> Result<(), InvalidConfig> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(InvalidConfig(format!(
            "collections: name {name:?} must be 1 to 64 of a-z, 0-9, '_' and '-'"
        )))
    }
}

impl CollectionConfig {
    /// The channel name.
    pub fn channel_name(&self) -> Result<ChannelName, InvalidConfig> {
        ChannelName::new(self.channel.as_deref().unwrap_or(&self.name))
            .map_err(|e| InvalidConfig(format!("collections {:?} channel: {e}", self.name)))
    }

    /// The created / updated / deleted event names.
    pub fn event_names(&self) -> [String; 3] {
        let e = &self.events;
        let or =
            |n: &Option<String>, d: &str| n.clone().unwrap_or_else(|| format!("{}:{d}", self.name));
        [
            or(&e.created, "created"),
            or(&e.updated, "updated"),
            or(&e.deleted, "deleted"),
        ]
    }

    /// The bulk snapshot's event name.
    pub fn snapshot_event_name(&self) -> String {
        self.snapshot_event
            .clone()
            .unwrap_or_else(|| format!("{}:snapshot", self.name))
    }
}

/// Checks every collection: names and channels unique, paths free, events named, limits positive; the schema,
/// rules and expressions are compiled by the caller (`Compiled::new`), which reports them the same way.
pub fn validate(all: &[CollectionConfig], socketio_path: &str) -> Result<(), InvalidConfig> {
    let mut names = std::collections::HashSet::new();
    let mut paths: Vec<&str> = Vec::new();
    for c in all {
        check_name(&c.name)?;
        let what = format!("collections {:?}", c.name);
        let bad = |m: String| Err(InvalidConfig(format!("{what}: {m}")));
        if !names.insert(c.name.as_str()) {
            return bad("declared twice".into());
        }
        c.channel_name()?;
        if let Some(path) = &c.path {
            if let Err(e) = crate::api::paths::check_literal(path, socketio_path) {
                return bad(format!("path {path:?} {e}"));
            }
            if path.ends_with('/') {
                return bad(format!("path {path:?} must not end with '/'"));
            }
            if let Some(p) = paths.iter().find(|p| {
                crate::api::paths::is_under(path, p) || crate::api::paths::is_under(p, path)
            }) {
                return bad(format!("path {path:?} overlaps {p:?}"));
            }
            paths.push(path);
        }
        for n in c.event_names() {
            event_name(&what, &n)?;
        }
        if c.snapshot == SnapshotStyle::Bulk {
            event_name(&what, &c.snapshot_event_name())?;
        }
        if c.schema.is_some() && c.schema_file.is_some() {
            return bad("give `schema` or `schema_file`, not both".into());
        }
        if c.max_documents == 0 || c.max_document_bytes < 16 {
            return bad("max_documents must be positive and max_document_bytes at least 16".into());
        }
        if c.id_field.is_empty() {
            return bad("id_field must not be empty".into());
        }
        for v in &c.values {
            event_name(&what, &v.event)?;
            if v.value.is_empty() {
                return bad(format!(
                    "values {:?}: `value` needs at least one field",
                    v.event
                ));
            }
        }
        let mut routes = std::collections::HashSet::new();
        for a in &c.arrays {
            let route = a.route.as_deref().unwrap_or(&a.field);
            if a.field.is_empty()
                || route.is_empty()
                || !route
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "-_".contains(ch))
            {
                return bad(format!(
                    "arrays {:?}: field and route must be non-empty (route: letters, digits, '-', '_')",
                    a.field
                ));
            }
            if !routes.insert(route.to_owned()) {
                return bad(format!("arrays: route {route:?} twice"));
            }
        }
        super::Compiled::new(c, None).map_err(|e| InvalidConfig(format!("{what}: {e}")))?;
    }
    Ok(())
}
