//! A collection's documents, stored by the engine: a state channel whose keys are document ids and whose values
//! are the documents, so snapshots, resume, gaps and the engines' durability come from what exists.
//!
//! Every write runs under the collection's write lock: read the current state, check (`If-Match`, access,
//! rules), and publish one atomic batch — the change event carrying the document with its state change, the
//! per-document values that changed, and the collection values that changed (as state values). A document's
//! version is its ETag, a hash of its stored JSON, so it costs no storage; within a node the lock makes
//! `If-Match` exact (across the nodes of a cluster two writes racing in the same instant can both pass it).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::Compiled;
use super::access::{Caller, Decision};
use super::config::{IdPolicy, Payload};
use super::expr::{self, CollExpr};
use super::validate::Invalid;
use crate::core::Engine;
use crate::core::channel::ChannelName;
use crate::core::engine::EngineError;
use crate::core::event::{NewEvent, format_time, now_ms};
use crate::core::state::{Entry, StateChange, Values};
use crate::core::stats::Origin;

/// Why a request on a collection failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The body or a field is wrong (400 `invalid_request` naming the field).
    #[error("{}: {}", .0.field, .0.message)]
    Invalid(Invalid),
    /// No such document (404 `document_not_found`).
    #[error("no document {0:?}")]
    NotFound(String),
    /// A document with this id exists (409 `document_exists`).
    #[error("a document {0:?} exists")]
    Exists(String),
    /// `If-Match` does not match (412 `precondition_failed`).
    #[error("document {id:?} is at version {current}, not {expected}")]
    Stale {
        /// The document.
        id: String,
        /// Its current ETag (none if absent).
        current: String,
        /// What the request expected.
        expected: String,
    },
    /// The access rules refuse (403 `forbidden`).
    #[error("{0}")]
    Forbidden(String),
    /// The caller must be identified (401 `unauthorized`).
    #[error("{0}")]
    Unidentified(String),
    /// A document too large (413 `payload_too_large`).
    #[error("the document is {got} bytes of JSON, more than max_document_bytes ({max})")]
    TooLarge {
        /// Its size.
        got: usize,
        /// The limit.
        max: usize,
    },
    /// The collection holds `max_documents` (507 `collection_full`).
    #[error("the collection holds its max_documents ({0})")]
    Full(usize),
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> StoreError {
    StoreError::Invalid(Invalid {
        field: field.into(),
        message: message.into(),
    })
}

/// A document as answered: its JSON and version.
#[derive(Debug, Clone)]
pub struct Doc {
    /// The stored JSON.
    pub json: Box<RawValue>,
    /// Its version, as an ETag (`"…"`).
    pub etag: String,
}

impl Doc {
    fn of(entry: &Entry) -> Self {
        Self {
            json: entry.value.clone(),
            etag: etag(entry.value.get()),
        }
    }
}

/// The version of a stored document: a 64-bit FNV-1a hash of its JSON, quoted as a strong ETag.
pub fn etag(json: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in json.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("\"{h:016x}\"")
}

/// Whether an `If-Match` header value admits the current ETag (`*`: any existing document).
pub fn if_match_admits(header: &str, current: Option<&str>) -> bool {
    let Some(current) = current else {
        return false;
    };
    header
        .split(',')
        .map(str::trim)
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == current)
}

/// The state key of a document id: integers zero-padded (so keys sort as numbers), strings as they are.
pub fn key_of(id: &Value) -> Result<String, StoreError> {
    match id {
        Value::Number(n) => match n.as_u64() {
            Some(n) => Ok(format!("{n:020}")),
            None => Err(invalid("id", "a numeric id must be a non-negative integer")),
        },
        Value::String(s) => {
            if s.is_empty() || s.len() > 128 || s.chars().any(char::is_control) {
                return Err(invalid(
                    "id",
                    "a string id must be 1 to 128 characters, no control characters",
                ));
            }
            if s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid(
                    "id",
                    "an id of digits only must be sent as a number",
                ));
            }
            Ok(s.clone())
        }
        _ => Err(invalid(
            "id",
            "the id must be a string or a non-negative integer",
        )),
    }
}

/// The state key of an id written in a URL path (digits only: a number).
pub fn key_of_path(id: &str) -> Result<String, StoreError> {
    if !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) {
        return id
            .parse::<u64>()
            .map(|n| format!("{n:020}"))
            .map_err(|_| invalid("id", "the id is too large"));
    }
    key_of(&Value::String(id.to_owned()))
}

/// A write to perform.
enum Change {
    Create(Map<String, Value>),
    Replace(Map<String, Value>),
    Patch(Value),
    Delete,
    Member {
        field: String,
        member: Value,
        add: bool,
    },
}

/// How a body becomes a stored document.
struct Shape<'a> {
    /// The stored document it replaces.
    old: Option<&'a Value>,
    /// The creating user, for `owner_field`.
    owner: Option<&'a str>,
    /// The time of the write.
    now: &'a str,
    /// Whether fields of `defaults` missing from the body get their default.
    fill_defaults: bool,
    /// An import: the file's owner and timestamps are kept.
    trusted: bool,
}

/// Most events the committer merges into one publish (the first commit is always taken whole).
const MAX_COMMIT_EVENTS: usize = 4096;

/// A document not committed yet: its write's number, and its entry (`None`: deleted).
type Pending = HashMap<String, (u64, Option<Arc<Entry>>)>;

/// What the write lock guards: the writes handed to the committer and not committed yet (what the next write must
/// see), and the per-document contributions to the collection values, cached by entry so a write re-reads only
/// what changed.
#[derive(Default)]
struct Totals {
    cache: HashMap<String, (usize, Vec<f64>)>,
    pending: Pending,
    /// Collection values not committed yet, by `channel\0event`: the write's number and the JSON.
    pending_values: HashMap<String, (u64, String)>,
    /// The last write's number.
    generation: u64,
}

/// One write handed to the committer.
struct Commit {
    events: Vec<NewEvent>,
    keys: Vec<String>,
    values: Vec<String>,
    generation: u64,
    reply: tokio::sync::oneshot::Sender<Result<(), EngineError>>,
}

/// The documents as the next write sees them: the engine's, with the pending writes over them.
struct View {
    all: Values,
    pending: Pending,
}

impl View {
    fn get(&self, key: &str) -> Option<Arc<Entry>> {
        match self.pending.get(key) {
            Some((_, entry)) => entry.clone(),
            None => self.all.get(key).cloned(),
        }
    }

    fn len(&self) -> usize {
        let mut n = self.all.len();
        for (key, (_, entry)) in &self.pending {
            match (self.all.get(key).is_some(), entry.is_some()) {
                (false, true) => n += 1,
                (true, false) => n = n.saturating_sub(1),
                _ => {}
            }
        }
        n
    }
}

fn value_key(channel: &ChannelName, event: &str) -> String {
    format!("{}\0{event}", channel.as_str())
}

/// Publishes the commits in order, merging those waiting into one publish (one transaction, one fsync): writes to
/// a collection are checked one at a time but committed in groups. A failed publish fails every write merged into
/// it and every write queued behind it (they were checked against it), and forgets the pending state.
async fn committer(
    engine: Arc<dyn Engine>,
    lock: Arc<tokio::sync::Mutex<Totals>>,
    mut queue: tokio::sync::mpsc::UnboundedReceiver<Commit>,
) {
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        let mut n = batch[0].events.len();
        while n < MAX_COMMIT_EVENTS {
            match queue.try_recv() {
                Ok(c) => {
                    n += c.events.len();
                    batch.push(c);
                }
                Err(_) => break,
            }
        }
        let events: Vec<NewEvent> = batch
            .iter_mut()
            .flat_map(|c| std::mem::take(&mut c.events))
            .collect();
        let result = engine.publish_from(Origin::Collection, events).await;
        let mut totals = lock.lock().await;
        match result {
            Ok(_) => {
                for c in batch {
                    for k in &c.keys {
                        if totals
                            .pending
                            .get(k)
                            .is_some_and(|(g, _)| *g == c.generation)
                        {
                            totals.pending.remove(k);
                        }
                    }
                    for k in &c.values {
                        if totals
                            .pending_values
                            .get(k)
                            .is_some_and(|(g, _)| *g == c.generation)
                        {
                            totals.pending_values.remove(k);
                        }
                    }
                    let _ = c.reply.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, writes = batch.len(), "collection writes not committed");
                totals.pending.clear();
                totals.pending_values.clear();
                let again = |e: &EngineError| match e {
                    EngineError::Closed => EngineError::Closed,
                    EngineError::Unavailable(c) => EngineError::unavailable(c.to_string()),
                    EngineError::Invalid(m) => EngineError::Invalid(m.clone()),
                };
                for c in batch {
                    let _ = c.reply.send(Err(again(&e)));
                }
                while let Ok(c) = queue.try_recv() {
                    let _ = c.reply.send(Err(again(&e)));
                }
            }
        }
    }
}

/// One collection.
pub struct Collection {
    /// Its compiled configuration.
    pub cfg: Compiled,
    engine: Arc<dyn Engine>,
    write: Arc<tokio::sync::Mutex<Totals>>,
    commits: tokio::sync::mpsc::UnboundedSender<Commit>,
    last_timestamp: AtomicI64,
    max_users: usize,
    /// Counters for `/metrics`: writes stored, requests refused, documents after the last write.
    pub counts: Counts,
}

/// A collection's counters.
#[derive(Debug, Default)]
pub struct Counts {
    /// Writes stored (an import counts once).
    pub writes: std::sync::atomic::AtomicU64,
    /// Writes refused (validation, versions, access, limits).
    pub refused: std::sync::atomic::AtomicU64,
    /// Documents after the last write this node made.
    pub documents: std::sync::atomic::AtomicU64,
}

/// What a write did.
pub struct Written {
    /// The document after the write (before it, for a deletion).
    pub doc: Doc,
    /// Whether it was created.
    pub created: bool,
}

impl Collection {
    /// A collection over `engine`.
    pub fn new(cfg: Compiled, engine: Arc<dyn Engine>, max_users: usize) -> Self {
        let write = Arc::new(tokio::sync::Mutex::new(Totals::default()));
        // Unbounded, but each commit is a request waiting for its answer: bounded by the requests in flight.
        let (commits, queue) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(committer(engine.clone(), write.clone(), queue));
        Self {
            cfg,
            engine,
            write,
            commits,
            last_timestamp: AtomicI64::new(0),
            max_users,
            counts: Counts::default(),
        }
    }

    /// Its channel.
    pub fn channel(&self) -> &ChannelName {
        &self.cfg.channel
    }

    /// Every document, ordered by id (a reference count, not a copy).
    pub async fn all(&self) -> Result<Values, StoreError> {
        Ok(self
            .engine
            .state_of(&self.cfg.channel)
            .await?
            .unwrap_or_default())
    }

    /// One document by the id in a URL.
    pub async fn get(&self, id: &str) -> Result<Doc, StoreError> {
        let key = key_of_path(id)?;
        let all = self.all().await?;
        all.get(&key)
            .map(|e| Doc::of(e))
            .ok_or_else(|| StoreError::NotFound(id.to_owned()))
    }

    /// Creates a document from `body`.
    pub async fn create(&self, caller: &Caller, body: Value) -> Result<Written, StoreError> {
        let Value::Object(map) = body else {
            return Err(invalid("", "the body must be a JSON object"));
        };
        self.write(caller, None, Change::Create(map), None).await
    }

    /// Replaces (or, with `put = "merge"`, updates the given fields of) the document `id`.
    pub async fn replace(
        &self,
        caller: &Caller,
        id: &str,
        body: Value,
        if_match: Option<&str>,
    ) -> Result<Written, StoreError> {
        let change = match body {
            Value::Object(map) if self.cfg.put_merges => Change::Patch(Value::Object(map)),
            Value::Object(map) => Change::Replace(map),
            _ => return Err(invalid("", "the body must be a JSON object")),
        };
        self.write(caller, Some(id), change, if_match).await
    }

    /// Applies a JSON Merge Patch (RFC 7386) to the document `id`.
    pub async fn patch(
        &self,
        caller: &Caller,
        id: &str,
        patch: Value,
        if_match: Option<&str>,
    ) -> Result<Written, StoreError> {
        if !patch.is_object() {
            return Err(invalid("", "a merge patch must be a JSON object"));
        }
        self.write(caller, Some(id), Change::Patch(patch), if_match)
            .await
    }

    /// Deletes the document `id`, answering it as it was.
    pub async fn delete(
        &self,
        caller: &Caller,
        id: &str,
        if_match: Option<&str>,
    ) -> Result<Written, StoreError> {
        self.write(caller, Some(id), Change::Delete, if_match).await
    }

    /// Adds `member` to (or removes it from) the array `field` of document `id`; doing it twice changes nothing.
    pub async fn member(
        &self,
        caller: &Caller,
        id: &str,
        field: &str,
        member: Value,
        add: bool,
        if_match: Option<&str>,
    ) -> Result<Written, StoreError> {
        let change = Change::Member {
            field: field.to_owned(),
            member,
            add,
        };
        self.write(caller, Some(id), change, if_match).await
    }

    /// Stores `docs` (each with its id, or one generated) in one atomic batch: new ids are created, existing
    /// ones replaced. Returns how many were created and replaced.
    pub async fn import(&self, docs: Vec<Value>) -> Result<(usize, usize), StoreError> {
        let result = self.import_once(docs).await;
        self.count(result.is_ok());
        result
    }

    async fn import_once(&self, docs: Vec<Value>) -> Result<(usize, usize), StoreError> {
        let mut totals = self.write.lock().await;
        let all = self.view(&totals).await?;
        let mut events = Vec::with_capacity(docs.len() + 1);
        let mut seen = std::collections::HashSet::new();
        let (mut created, mut replaced) = (0, 0);
        let mut delta: Vec<(Option<Value>, Option<Value>)> = Vec::new();
        for (i, doc) in docs.into_iter().enumerate() {
            let Value::Object(mut map) = doc else {
                return Err(invalid(
                    format!("[{i}]"),
                    "each document must be a JSON object",
                ));
            };
            let id = match map.remove(&self.cfg.id_field) {
                Some(id) => id,
                None => self.new_id(&all, None)?,
            };
            let key = key_of(&id).map_err(|e| at(i, e))?;
            if !seen.insert(key.clone()) {
                return Err(invalid(
                    format!("[{i}].{}", self.cfg.id_field),
                    "this id appears twice",
                ));
            }
            let old = all.get(&key).map(|e| parse(&e.value));
            let now = format_time(now_ms());
            let doc = self
                .shape(
                    map,
                    id,
                    Shape {
                        old: old.as_ref(),
                        owner: None,
                        now: &now,
                        fill_defaults: true,
                        trusted: true,
                    },
                )
                .map_err(|e| at(i, e))?;
            let json = self.render(&doc)?;
            let name = if old.is_some() {
                replaced += 1;
                self.cfg.events[1].clone()
            } else {
                created += 1;
                self.cfg.events[0].clone()
            };
            events.push(self.doc_event(&name, &key, &doc, Some(json)));
            delta.push((old, Some(doc)));
        }
        if all.len() + created > self.cfg.max_documents {
            return Err(StoreError::Full(self.cfg.max_documents));
        }
        events.extend(self.value_events(&mut totals, &all, &delta).await?);
        self.submit(totals, events).await?;
        self.counts
            .documents
            .store((all.len() + created) as u64, Ordering::Relaxed);
        Ok((created, replaced))
    }

    async fn write(
        &self,
        caller: &Caller,
        id: Option<&str>,
        change: Change,
        if_match: Option<&str>,
    ) -> Result<Written, StoreError> {
        let result = self.write_once(caller, id, change, if_match).await;
        self.count(result.is_ok());
        result
    }

    fn count(&self, ok: bool) {
        let c = if ok {
            &self.counts.writes
        } else {
            &self.counts.refused
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    async fn write_once(
        &self,
        caller: &Caller,
        id: Option<&str>,
        change: Change,
        if_match: Option<&str>,
    ) -> Result<Written, StoreError> {
        let mut totals = self.write.lock().await;
        let all = self.view(&totals).await?;
        let key = id.map(key_of_path).transpose()?;
        let entry = key.as_ref().and_then(|k| all.get(k));
        if let (Some(id), None, false) = (id, &entry, matches!(change, Change::Create(_))) {
            return Err(StoreError::NotFound(id.to_owned()));
        }
        let current = entry.as_ref().map(|e| etag(e.value.get()));
        if let Some(header) = if_match
            && !if_match_admits(header, current.as_deref())
        {
            return Err(StoreError::Stale {
                id: id.unwrap_or_default().to_owned(),
                current: current.unwrap_or_else(|| "none".into()),
                expected: header.to_owned(),
            });
        }
        let old = entry.as_ref().map(|e| parse(&e.value));
        let now = format_time(now_ms());
        let a = &self.cfg.access;
        let owner_field = self.cfg.owner_field.as_deref();
        let check = |rule: &super::access::Rule, what: &str| -> Result<(), StoreError> {
            let allowed = match &old {
                Some(doc) => rule.permits(caller, doc, owner_field),
                None => rule.decide(caller) == Decision::Allow,
            };
            if allowed {
                Ok(())
            } else {
                Err(refused(caller, what))
            }
        };
        let (key, new, created) = match change {
            Change::Create(mut map) => {
                match a.create.decide(caller) {
                    Decision::Allow => {}
                    Decision::OwnOnly if owner_field.is_some() => {}
                    _ => return Err(refused(caller, "create documents in")),
                }
                let id = match map.remove(&self.cfg.id_field) {
                    Some(id) if self.cfg.id == IdPolicy::Client => id,
                    Some(_) => {
                        return Err(invalid(
                            self.cfg.id_field.clone(),
                            "ids are chosen by the server in this collection",
                        ));
                    }
                    None if self.cfg.id == IdPolicy::Client => {
                        return Err(invalid(self.cfg.id_field.clone(), "is required"));
                    }
                    None => self.new_id(&all, None)?,
                };
                let key = key_of(&id)?;
                if all.get(&key).is_some() {
                    return Err(StoreError::Exists(key_text(&id)));
                }
                if all.len() >= self.cfg.max_documents {
                    return Err(StoreError::Full(self.cfg.max_documents));
                }
                let doc = self.shape(
                    map,
                    id,
                    Shape {
                        old: None,
                        owner: caller.user(),
                        now: &now,
                        fill_defaults: true,
                        trusted: false,
                    },
                )?;
                (key, Some(doc), true)
            }
            Change::Replace(mut map) => {
                check(&a.update, "update documents of")?;
                let old_doc = old
                    .as_ref()
                    .ok_or_else(|| StoreError::NotFound(String::new()))?;
                let id = old_doc
                    .get(&self.cfg.id_field)
                    .cloned()
                    .unwrap_or(Value::Null);
                if let Some(given) = map.remove(&self.cfg.id_field)
                    && given != id
                {
                    return Err(invalid(
                        self.cfg.id_field.clone(),
                        "differs from the document's id",
                    ));
                }
                let doc = self.shape(
                    map,
                    id,
                    Shape {
                        old: Some(old_doc),
                        owner: None,
                        now: &now,
                        fill_defaults: true,
                        trusted: false,
                    },
                )?;
                (key.unwrap_or_default(), Some(doc), false)
            }
            Change::Patch(patch) => {
                check(&a.update, "update documents of")?;
                let old_doc = old
                    .clone()
                    .ok_or_else(|| StoreError::NotFound(String::new()))?;
                let id = old_doc
                    .get(&self.cfg.id_field)
                    .cloned()
                    .unwrap_or(Value::Null);
                let mut merged = old_doc;
                merge_patch(&mut merged, &patch);
                let Value::Object(mut map) = merged else {
                    return Err(invalid("", "a merge patch must leave an object"));
                };
                if map.get(&self.cfg.id_field) != Some(&id) {
                    return Err(invalid(
                        self.cfg.id_field.clone(),
                        "the id cannot be changed",
                    ));
                }
                map.remove(&self.cfg.id_field);
                let doc = self.shape(
                    map,
                    id,
                    Shape {
                        old: old.as_ref(),
                        owner: None,
                        now: &now,
                        fill_defaults: false,
                        trusted: false,
                    },
                )?;
                (key.unwrap_or_default(), Some(doc), false)
            }
            Change::Delete => {
                check(&a.delete, "delete documents of")?;
                (key.unwrap_or_default(), None, false)
            }
            Change::Member { field, member, add } => {
                let rule = self
                    .cfg
                    .arrays
                    .iter()
                    .find(|x| x.field == field)
                    .map_or(&a.read, |x| &x.access);
                check(rule, "change documents of")?;
                let mut doc = old
                    .clone()
                    .ok_or_else(|| StoreError::NotFound(String::new()))?;
                let Some(map) = doc.as_object_mut() else {
                    return Err(invalid("", "the stored document is not an object"));
                };
                let list = map
                    .entry(field.clone())
                    .or_insert_with(|| Value::Array(Vec::new()));
                let Value::Array(items) = list else {
                    return Err(invalid(field, "is not an array"));
                };
                let present = items.contains(&member);
                if add == present {
                    // Already as asked: nothing is written, nothing is announced.
                    let entry = entry.ok_or_else(|| StoreError::NotFound(String::new()))?;
                    return Ok(Written {
                        doc: Doc::of(&entry),
                        created: false,
                    });
                }
                if add {
                    items.push(member);
                } else {
                    items.retain(|m| *m != member);
                }
                if let Some(f) = &self.cfg.updated_field {
                    map.insert(f.clone(), Value::String(now.clone()));
                }
                (key.unwrap_or_default(), Some(doc), false)
            }
        };
        let mut events = Vec::with_capacity(3);
        let doc = match &new {
            Some(doc) => {
                let json = self.render(doc)?;
                let name = &self.cfg.events[usize::from(!created)];
                events.push(self.doc_event(name, &key, doc, Some(json.clone())));
                Doc {
                    etag: etag(json.get()),
                    json,
                }
            }
            None => {
                let gone = old.clone().unwrap_or(Value::Null);
                events.push(self.doc_event(&self.cfg.events[2], &key, &gone, None));
                entry
                    .as_ref()
                    .map(|e| Doc::of(e))
                    .ok_or_else(|| StoreError::NotFound(String::new()))?
            }
        };
        // Per-document values that changed, then the collection's.
        if let (Some(before), Some(after)) = (&old, &new) {
            for v in self.cfg.values.iter().filter(|v| v.per_document) {
                let (b, a) = (v.eval_doc(before), v.eval_doc(after));
                if b != a {
                    events.push(NewEvent {
                        channel: v.channel.clone(),
                        name: v.event.clone(),
                        data: crate::json::raw(&a),
                        id: None,
                        state: None,
                    });
                }
            }
        }
        let deleted = new.is_none();
        events.extend(self.value_events(&mut totals, &all, &[(old, new)]).await?);
        let now = (all.len() + usize::from(created)).saturating_sub(usize::from(deleted));
        self.submit(totals, events).await?;
        self.counts.documents.store(now as u64, Ordering::Relaxed);
        Ok(Written { doc, created })
    }

    /// The documents the next write sees (call with the write lock held).
    async fn view(&self, totals: &Totals) -> Result<View, StoreError> {
        Ok(View {
            all: self.all().await?,
            pending: totals.pending.clone(),
        })
    }

    /// Hands `events` to the committer as pending (the next write sees them), releases the lock and waits for the
    /// commit.
    async fn submit(
        &self,
        mut totals: tokio::sync::MutexGuard<'_, Totals>,
        events: Vec<NewEvent>,
    ) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        totals.generation += 1;
        let generation = totals.generation;
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        for e in &events {
            let Some(state) = &e.state else { continue };
            if e.channel == self.cfg.channel {
                let entry = match state {
                    StateChange::Set { key, value } => Some(Arc::new(Entry {
                        key: key.clone(),
                        name: e.name.clone(),
                        value: value.clone(),
                    })),
                    StateChange::Remove { .. } => None,
                };
                totals
                    .pending
                    .insert(state.key().to_owned(), (generation, entry));
                keys.push(state.key().to_owned());
            } else if let StateChange::Set { key, value } = state {
                let k = value_key(&e.channel, key);
                totals
                    .pending_values
                    .insert(k.clone(), (generation, value.get().to_owned()));
                values.push(k);
            }
        }
        let (reply, done) = tokio::sync::oneshot::channel();
        self.commits
            .send(Commit {
                events,
                keys,
                values,
                generation,
                reply,
            })
            .map_err(|_| EngineError::Closed)?;
        drop(totals);
        done.await.map_err(|_| EngineError::Closed)??;
        Ok(())
    }

    /// Re-evaluates the collection values (after a presence change) and publishes those that changed.
    pub async fn refresh_values(&self) -> Result<(), StoreError> {
        let mut totals = self.write.lock().await;
        let all = self.view(&totals).await?;
        self.counts
            .documents
            .store(all.len() as u64, Ordering::Relaxed);
        let events = self.value_events(&mut totals, &all, &[]).await?;
        self.submit(totals, events).await
    }

    /// The collection values' events for the state `all` changed by `delta` (old, new document pairs): those whose
    /// value differs from the one stored.
    async fn value_events(
        &self,
        totals: &mut Totals,
        view: &View,
        delta: &[(Option<Value>, Option<Value>)],
    ) -> Result<Vec<NewEvent>, StoreError> {
        let values: Vec<&super::CompiledValue> =
            self.cfg.values.iter().filter(|v| !v.per_document).collect();
        if values.is_empty() {
            return Ok(Vec::new());
        }
        let exprs: Vec<&CollExpr> = values
            .iter()
            .flat_map(|v| v.coll.iter().map(|(_, e)| e))
            .collect();
        let contributions = |doc: &Value| {
            exprs
                .iter()
                .map(|e| e.contribution(doc))
                .collect::<Vec<f64>>()
        };
        // Sum over the documents before the write (re-reading only entries not seen before), then apply it.
        let mut sum = vec![0.0; exprs.len()];
        let all = &view.all;
        let mut fresh = HashMap::with_capacity(all.len());
        for e in all.iter() {
            let ptr = Arc::as_ptr(e) as usize;
            let c = match totals.cache.remove(&e.key) {
                Some((p, c)) if p == ptr => c,
                _ => contributions(&parse(&e.value)),
            };
            for (s, x) in sum.iter_mut().zip(&c) {
                *s += x;
            }
            fresh.insert(e.key.clone(), (ptr, c));
        }
        totals.cache = fresh;
        // The pending writes over the engine's documents.
        for (key, (_, entry)) in &view.pending {
            if let Some((_, c)) = totals.cache.get(key) {
                for (s, x) in sum.iter_mut().zip(c) {
                    *s -= x;
                }
            }
            if let Some(e) = entry {
                for (s, x) in sum.iter_mut().zip(contributions(&parse(&e.value))) {
                    *s += x;
                }
            }
        }
        for (old, new) in delta {
            for (doc, sign) in [(old, -1.0), (new, 1.0)] {
                if let Some(doc) = doc {
                    for (s, x) in sum.iter_mut().zip(contributions(doc)) {
                        *s += sign * x;
                    }
                }
            }
        }
        let mut events = Vec::new();
        let mut i = 0;
        for v in values {
            let mut out = Map::new();
            for (field, e) in &v.coll {
                let value = match e {
                    CollExpr::Presence(p) => {
                        let members = self.engine.presence(&v.of).await?;
                        p.eval(&members, self.max_users)
                    }
                    _ => expr::number(sum[i]),
                };
                out.insert(field.clone(), value);
                i += 1;
            }
            let json = crate::json::text(&Value::Object(out));
            let same = match totals.pending_values.get(&value_key(&v.channel, &v.event)) {
                Some((_, pending)) => *pending == json,
                None => self
                    .engine
                    .state_of(&v.channel)
                    .await?
                    .as_ref()
                    .and_then(|s| s.get(&v.event))
                    .is_some_and(|e| e.value.get() == json),
            };
            if same {
                continue;
            }
            let data =
                RawValue::from_string(json).map_err(|e| EngineError::Invalid(e.to_string()))?;
            events.push(NewEvent {
                channel: v.channel.clone(),
                name: v.event.clone(),
                data: data.clone(),
                id: None,
                state: Some(StateChange::Set {
                    key: v.event.clone(),
                    value: data,
                }),
            });
        }
        Ok(events)
    }

    /// The change event of a document: its payload, and the state change (set to `json`, or removed).
    fn doc_event(
        &self,
        name: &str,
        key: &str,
        doc: &Value,
        json: Option<Box<RawValue>>,
    ) -> NewEvent {
        let data = match (self.cfg.payload, &json) {
            (Payload::Document, Some(json)) => json.clone(),
            (Payload::Document, None) => crate::json::raw(doc),
            (Payload::Id, _) => {
                let mut m = Map::new();
                m.insert(
                    self.cfg.id_field.clone(),
                    doc.get(&self.cfg.id_field).cloned().unwrap_or(Value::Null),
                );
                crate::json::raw(&m)
            }
        };
        NewEvent {
            channel: self.cfg.channel.clone(),
            name: name.to_owned(),
            data,
            id: None,
            state: Some(match json {
                Some(value) => StateChange::Set {
                    key: key.to_owned(),
                    value,
                },
                None => StateChange::Remove {
                    key: key.to_owned(),
                },
            }),
        }
    }

    /// The stored document from a body: only the configured fields (defaults or `null` for missing ones), the
    /// id, the owner and timestamps kept from `old`, trimmed and checked.
    fn shape(
        &self,
        mut map: Map<String, Value>,
        id: Value,
        how: Shape<'_>,
    ) -> Result<Value, StoreError> {
        let Shape {
            old,
            owner,
            now,
            fill_defaults,
            trusted,
        } = how;
        let cfg = &self.cfg;
        let mut doc = Map::new();
        // Listed fields the body lacks are `null` once checked, so a schema's `required` names them.
        let mut nulls = Vec::new();
        if cfg.fields.is_empty() {
            doc = map;
        } else {
            for f in &cfg.fields {
                match map.remove(f).or_else(|| cfg.defaults.get(f).cloned()) {
                    Some(v) => {
                        doc.insert(f.clone(), v);
                    }
                    None => nulls.push(f),
                }
            }
        }
        if fill_defaults {
            for (f, v) in &cfg.defaults {
                doc.entry(f.clone()).or_insert_with(|| v.clone());
            }
        }
        let keep = |doc: &mut Map<String, Value>, field: &Option<String>| {
            if let Some(f) = field {
                match old.and_then(|o| o.get(f)) {
                    Some(v) => {
                        doc.insert(f.clone(), v.clone());
                    }
                    None => {
                        doc.remove(f);
                    }
                }
            }
        };
        // The owner and the creation time are the server's: kept from the stored document, set on create (an
        // import keeps the file's).
        if !trusted {
            keep(&mut doc, &cfg.owner_field);
            keep(&mut doc, &cfg.created_field);
        }
        if old.is_none() && !trusted {
            if let (Some(f), Some(user)) = (&cfg.owner_field, owner) {
                doc.insert(f.clone(), Value::String(user.to_owned()));
            }
            if let Some(f) = &cfg.created_field {
                doc.insert(f.clone(), Value::String(now.to_owned()));
            }
        }
        if let Some(f) = &cfg.updated_field
            && !(trusted && doc.contains_key(f))
        {
            doc.insert(f.clone(), Value::String(now.to_owned()));
        }
        doc.insert(cfg.id_field.clone(), id);
        cfg.rules.apply(&mut doc).map_err(StoreError::Invalid)?;
        for f in nulls {
            doc.insert(f.clone(), Value::Null);
        }
        Ok(Value::Object(doc))
    }

    fn render(&self, doc: &Value) -> Result<Box<RawValue>, StoreError> {
        let json = crate::json::raw(doc);
        if json.get().len() > self.cfg.max_document_bytes {
            return Err(StoreError::TooLarge {
                got: json.get().len(),
                max: self.cfg.max_document_bytes,
            });
        }
        Ok(json)
    }

    /// A new id by the collection's policy, not taken in `all`.
    fn new_id(&self, all: &View, _hint: Option<&Value>) -> Result<Value, StoreError> {
        Ok(match self.cfg.id {
            IdPolicy::Uuid => Value::String(uuid::Uuid::new_v4().to_string()),
            IdPolicy::Ulid => Value::String(ulid::Ulid::generate().to_string()),
            IdPolicy::Client => return Err(invalid(self.cfg.id_field.clone(), "is required")),
            IdPolicy::Timestamp => {
                // `Date.now()`, one later when taken (two creates in a millisecond, or a clock step back).
                let mut id = now_ms().max(self.last_timestamp.load(Ordering::Relaxed) + 1);
                while all.get(&format!("{id:020}")).is_some() {
                    id += 1;
                }
                self.last_timestamp.store(id, Ordering::Relaxed);
                Value::from(id)
            }
        })
    }
}

fn refused(caller: &Caller, what: &str) -> StoreError {
    if caller.identity.is_none() && !caller.key {
        StoreError::Unidentified(format!(
            "not allowed to {what} this collection without an API key or a token"
        ))
    } else {
        StoreError::Forbidden(format!("not allowed to {what} this collection"))
    }
}

fn at(i: usize, e: StoreError) -> StoreError {
    match e {
        StoreError::Invalid(inv) => invalid(
            if inv.field.is_empty() {
                format!("[{i}]")
            } else {
                format!("[{i}].{}", inv.field)
            },
            inv.message,
        ),
        other => other,
    }
}

fn key_text(id: &Value) -> String {
    match id {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A stored document as a tree (stored JSON is always valid; `null` otherwise).
pub fn parse(raw: &RawValue) -> Value {
    serde_json::from_str(raw.get()).unwrap_or(Value::Null)
}

/// RFC 7386 JSON Merge Patch: objects merge recursively, `null` removes, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}, "k": [1]});
        merge_patch(
            &mut doc,
            &json!({"a": "z", "c": {"f": null}, "k": [2], "n": {"x": 1}}),
        );
        assert_eq!(
            doc,
            json!({"a": "z", "c": {"d": "e"}, "k": [2], "n": {"x": 1}})
        );
    }

    #[test]
    fn keys_sort_numbers_numerically_and_refuse_ambiguity() {
        assert_eq!(key_of(&json!(5)).unwrap(), "00000000000000000005");
        assert!(key_of(&json!(1703123456789u64)).unwrap() > key_of(&json!(99)).unwrap());
        assert_eq!(key_of_path("5").unwrap(), key_of(&json!(5)).unwrap());
        assert_eq!(key_of_path("abc").unwrap(), "abc");
        assert!(
            key_of(&json!("123")).is_err(),
            "digits-only strings would collide with numbers"
        );
        assert!(key_of(&json!(-1)).is_err());
        assert!(key_of(&json!(1.5)).is_err());
        assert!(key_of(&json!("")).is_err());
        assert!(key_of(&json!({"a": 1})).is_err());
    }

    #[test]
    fn etags_change_with_the_document_and_if_match_compares_them() {
        let a = etag(r#"{"id":1,"title":"Dune"}"#);
        let b = etag(r#"{"id":1,"title":"Dune!"}"#);
        assert_ne!(a, b);
        assert!(a.starts_with('"') && a.ends_with('"') && a.len() == 18);
        assert!(if_match_admits(&a, Some(&a)));
        assert!(if_match_admits(&format!("W/{a}"), Some(&a)));
        assert!(if_match_admits(&format!("{b}, {a}"), Some(&a)));
        assert!(if_match_admits("*", Some(&a)));
        assert!(!if_match_admits(&b, Some(&a)));
        assert!(!if_match_admits("*", None));
    }
}
