//! Collections: the CRUD backend as configuration. Each `[[collections]]` table is a collection of JSON
//! documents stored by the engine as a state channel keyed by document id (`store`), served as REST at
//! `/api/collections/{name}` and at the frontend's own path (`routes`), checked by a JSON Schema and simple rules
//! (`validate`) and by access rules (`access`), announcing each change with configured event names, and keeping
//! declared derived values (`expr`) published when they change.

pub mod access;
pub mod config;
pub mod expr;
mod routes;
pub mod store;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::{Map, Value};

use super::{Setup, Source, SourceError};
use crate::api::Mounts;
use crate::core::channel::{ChannelName, Pattern};
use crate::core::state::Snapshot;
pub use config::CollectionConfig;
use config::{IdPolicy, Payload, PutMode, SnapshotStyle};
use expr::{CollExpr, DocExpr};
pub use routes::Identify;
use store::Collection;

/// Pause before re-evaluating presence-based values after a failure.
const RETRY: Duration = Duration::from_millis(500);

/// A collection's configuration, compiled and checked.
#[derive(Debug)]
pub struct Compiled {
    /// The name.
    pub name: String,
    /// The state channel of the documents.
    pub channel: ChannelName,
    /// The frontend's path, if mounted.
    pub path: Option<String>,
    id: IdPolicy,
    id_field: String,
    created_field: Option<String>,
    updated_field: Option<String>,
    fields: Vec<String>,
    defaults: Map<String, Value>,
    rules: validate::Rules,
    /// Created, updated, deleted.
    events: [String; 3],
    payload: Payload,
    snapshot: Snapshot,
    access: Rules,
    owner_field: Option<String>,
    arrays: Vec<CompiledArray>,
    values: Vec<CompiledValue>,
    max_documents: usize,
    max_document_bytes: usize,
    put_merges: bool,
}

/// The access rule of each operation.
#[derive(Debug)]
struct Rules {
    list: access::Rule,
    read: access::Rule,
    create: access::Rule,
    update: access::Rule,
    delete: access::Rule,
}

/// An array-membership operation.
#[derive(Debug)]
struct CompiledArray {
    field: String,
    route: String,
    member: Member,
    access: access::Rule,
}

/// Where an array operation's member comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Member {
    /// The caller's user id.
    Sub,
    /// A field of the JSON body.
    Body(String),
    /// A query parameter.
    Query(String),
}

/// A derived value.
#[derive(Debug)]
struct CompiledValue {
    event: String,
    channel: ChannelName,
    per_document: bool,
    of: ChannelName,
    coll: Vec<(String, CollExpr)>,
    doc: Vec<(String, DocExpr)>,
}

impl CompiledValue {
    fn eval_doc(&self, doc: &Value) -> Value {
        Value::Object(
            self.doc
                .iter()
                .map(|(k, e)| (k.clone(), e.eval(doc)))
                .collect(),
        )
    }

    fn uses_presence(&self) -> bool {
        self.coll
            .iter()
            .any(|(_, e)| matches!(e, CollExpr::Presence(_)))
    }
}

impl Compiled {
    /// Compiles `c`; `online` is the presence online channel (default `herald:online`). The message names the
    /// setting at fault.
    pub fn new(c: &CollectionConfig, online: Option<&ChannelName>) -> Result<Self, String> {
        let channel = c.channel_name().map_err(|e| e.0)?;
        let schema = match (&c.schema, &c.schema_file) {
            (Some(s), _) => Some(s.clone()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("schema_file {}: {e}", path.display()))?;
                Some(
                    serde_json::from_str(&text)
                        .map_err(|e| format!("schema_file {}: {e}", path.display()))?,
                )
            }
            (None, None) => None,
        };
        let rules = validate::Rules::new(&c.trim, &c.max_length, schema)?;
        let rule = |what: &str, text: &str| {
            access::Rule::parse(text).map_err(|e| format!("access.{what}: {e}"))
        };
        let access = Rules {
            list: rule("list", &c.access.list)?,
            read: rule("read", &c.access.read)?,
            create: rule("create", &c.access.create)?,
            update: rule("update", &c.access.update)?,
            delete: rule("delete", &c.access.delete)?,
        };
        let owned = [
            &access.list,
            &access.read,
            &access.create,
            &access.update,
            &access.delete,
        ]
        .iter()
        .any(|r| r.uses_owner());
        if owned && c.owner_field.is_none() {
            return Err("an `owner` access rule needs owner_field".into());
        }
        let arrays = c
            .arrays
            .iter()
            .map(|a| {
                let member = if a.member == "{sub}" {
                    Member::Sub
                } else if let Some(f) = a.member.strip_prefix("{body.").and_then(|m| m.strip_suffix('}')) {
                    Member::Body(f.to_owned())
                } else if let Some(f) = a.member.strip_prefix("{query.").and_then(|m| m.strip_suffix('}')) {
                    Member::Query(f.to_owned())
                } else {
                    return Err(format!(
                        "arrays {:?}: member {:?} is not {{sub}}, {{body.FIELD}} or {{query.FIELD}}",
                        a.field, a.member
                    ));
                };
                Ok(CompiledArray {
                    field: a.field.clone(),
                    route: a.route.clone().unwrap_or_else(|| a.field.clone()),
                    member,
                    access: match &a.access {
                        Some(text) => rule("arrays", text)?,
                        None => access.read.clone(),
                    },
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let default_online =
            ChannelName::any(crate::source::presence::ONLINE_CHANNEL).map_err(|e| e.to_string())?;
        let values = c
            .values
            .iter()
            .map(|v| {
                let what = format!("values {:?}", v.event);
                let channel = match &v.channel {
                    Some(ch) => ChannelName::new(ch).map_err(|e| format!("{what} channel: {e}"))?,
                    None => channel.clone(),
                };
                let of = match &v.of {
                    Some(of) => ChannelName::any(of).map_err(|e| format!("{what} of: {e}"))?,
                    None => online.cloned().unwrap_or_else(|| default_online.clone()),
                };
                let mut coll = Vec::new();
                let mut doc = Vec::new();
                for (field, text) in &v.value {
                    if v.per_document {
                        doc.push((
                            field.clone(),
                            DocExpr::parse(text).map_err(|e| format!("{what}: {e}"))?,
                        ));
                    } else {
                        coll.push((
                            field.clone(),
                            CollExpr::parse(text).map_err(|e| format!("{what}: {e}"))?,
                        ));
                    }
                }
                if !v.per_document && channel == c.channel_name().map_err(|e| e.0)? {
                    return Err(format!(
                        "{what}: a collection value needs a channel of its own (its state key would be a document id)"
                    ));
                }
                Ok(CompiledValue {
                    event: v.event.clone(),
                    channel,
                    per_document: v.per_document,
                    of,
                    coll,
                    doc,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let [created, updated, deleted] = c.event_names();
        Ok(Self {
            name: c.name.clone(),
            channel,
            path: c.path.clone(),
            id: c.id,
            id_field: c.id_field.clone(),
            created_field: c.created_field.clone(),
            updated_field: c.updated_field.clone(),
            fields: c.fields.clone(),
            defaults: c.defaults.clone().into_iter().collect(),
            rules,
            events: [created, updated, deleted],
            payload: c.events.payload,
            snapshot: match c.snapshot {
                SnapshotStyle::Bulk => Snapshot::Bulk {
                    event: c.snapshot_event_name(),
                },
                SnapshotStyle::Each => Snapshot::Each,
            },
            access,
            owner_field: c.owner_field.clone(),
            arrays,
            values,
            max_documents: c.max_documents,
            max_document_bytes: c.max_document_bytes,
            put_merges: c.put == PutMode::Merge,
        })
    }
}

/// Starts every `[[collections]]` table as one source.
pub fn start<'a>(setup: &'a Setup<'a>) -> BoxFuture<'a, Result<Arc<dyn Source>, SourceError>> {
    Box::pin(async move {
        let online = setup.sections.presence.online()?;
        let max_users = setup.sections.presence.max_listed_users;
        let mut all = Vec::new();
        let mut tasks = Vec::new();
        for c in setup.sections.collections {
            let compiled = Compiled::new(c, Some(&online))
                .map_err(|e| SourceError::Collection(format!("collections {:?}: {e}", c.name)))?;
            let engine = setup.engine.clone();
            engine.declare_state(
                Pattern::new(compiled.channel.as_str()),
                compiled.snapshot.clone(),
            );
            for v in compiled.values.iter().filter(|v| !v.per_document) {
                // A new subscriber gets the current value at once, then each change.
                engine.declare_state(Pattern::new(v.channel.as_str()), Snapshot::Each);
            }
            let presence: Vec<ChannelName> = compiled
                .values
                .iter()
                .filter(|v| v.uses_presence())
                .map(|v| v.of.clone())
                .collect();
            let collection = Arc::new(Collection::new(compiled, engine.clone(), max_users));
            // The values exist from the start (a dashboard reads 0 before the first document).
            collection
                .refresh_values()
                .await
                .map_err(|e| SourceError::Collection(format!("collections {:?}: {e}", c.name)))?;
            for of in presence {
                tasks.push(tokio::spawn(watch_presence(
                    engine.clone(),
                    collection.clone(),
                    of,
                )));
            }
            all.push(collection);
        }
        let source: Arc<dyn Source> = Arc::new(Collections {
            all: Arc::new(all),
            setup: routes::Shared {
                api_keys: setup.api_keys.to_vec(),
                identify: setup.identify.clone(),
                max_body_bytes: setup.max_body_bytes,
            },
            tasks: parking_lot::Mutex::new(tasks),
        });
        Ok(source)
    })
}

/// Re-evaluates a collection's presence-based values after each presence change of `of` (a burst once).
async fn watch_presence(engine: Arc<dyn crate::core::Engine>, c: Arc<Collection>, of: ChannelName) {
    loop {
        let mut changes = engine.presence_events(Pattern::new(of.as_str()));
        loop {
            if let Err(e) = c.refresh_values().await {
                if matches!(
                    e,
                    store::StoreError::Engine(crate::core::engine::EngineError::Closed)
                ) {
                    return;
                }
                tracing::warn!(collection = %c.cfg.name, error = %e, "collection values not published; retrying");
                tokio::time::sleep(RETRY).await;
                continue;
            }
            if changes.recv().await.is_none() {
                break;
            }
            while changes.try_recv().is_ok() {}
        }
    }
}

/// A metric: name, type, help, and how to read it from a collection's counters.
type Series = (
    &'static str,
    &'static str,
    &'static str,
    fn(&store::Counts) -> u64,
);

/// The running collections.
struct Collections {
    all: Arc<Vec<Arc<Collection>>>,
    setup: routes::Shared,
    tasks: parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Source for Collections {
    fn routes(self: Arc<Self>) -> Mounts {
        routes::mounts(self.all.clone(), self.setup.clone())
    }

    fn metrics(&self, out: &mut String) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.all.is_empty() {
            return;
        }
        let series: [Series; 3] = [
            (
                "herald_collection_documents",
                "gauge",
                "Documents of each collection, as of this node's last write.",
                |c| c.documents.load(Relaxed),
            ),
            (
                "herald_collection_writes_total",
                "counter",
                "Writes to each collection stored by this node.",
                |c| c.writes.load(Relaxed),
            ),
            (
                "herald_collection_refused_total",
                "counter",
                "Writes to each collection refused by this node.",
                |c| c.refused.load(Relaxed),
            ),
        ];
        for (name, kind, help, read) in series {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for c in self.all.iter() {
                out.push_str(&format!(
                    "{name}{{collection=\"{}\"}} {}\n",
                    c.cfg.name,
                    read(&c.counts)
                ));
            }
        }
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
        Box::pin(async {})
    }
}

#[cfg(test)]
mod tests {
    use super::access::Caller;
    use super::store::{Collection, StoreError};
    use super::*;
    use crate::core::engine::memory::MemoryEngine;
    use serde_json::json;

    async fn books(extra: &str) -> (Arc<dyn crate::core::Engine>, Collection) {
        let engine = MemoryEngine::open(Default::default(), Duration::from_secs(60)).unwrap();
        let text = format!(
            r#"
            name = "books"
            {extra}
            id = "timestamp"
            fields = ["title", "author", "favorites"]
            defaults = {{ favorites = [] }}
            trim = ["title"]
            put = "merge"
            schema = {{ type = "object", required = ["title"], properties = {{ title = {{ type = "string", minLength = 1 }} }} }}
            events = {{ created = "bookAdded", updated = "bookUpdated", deleted = "bookDeleted" }}
            [[arrays]]
            field = "favorites"
            [[values]]
            channel = "dashboard"
            event = "stats"
            value = {{ total = "count", favs = "sum(len(favorites))", herbert = "count(author = Herbert)" }}
            [[values]]
            event = "favoriteUpdated"
            per_document = true
            value = {{ bookId = "id", favoritesCount = "len(favorites)" }}
            "#
        );
        let c: CollectionConfig = toml::from_str(&text).unwrap();
        let compiled = Compiled::new(&c, None).unwrap();
        engine.declare_state(Pattern::new("books"), compiled.snapshot.clone());
        engine.declare_state(Pattern::new("dashboard"), Snapshot::Each);
        let col = Collection::new(compiled, engine.clone(), 100);
        col.refresh_values().await.unwrap();
        (engine, col)
    }

    fn user(name: &str) -> Caller {
        Caller {
            key: true,
            identity: Some(crate::auth::Identity {
                user: Some(name.into()),
                ..crate::auth::Identity::anonymous()
            }),
        }
    }

    async fn names(engine: &Arc<dyn crate::core::Engine>, channel: &str) -> Vec<String> {
        let ch = ChannelName::new(channel).unwrap();
        let page = engine.history(&ch, 0, 1000).await.unwrap().unwrap();
        page.events.iter().map(|e| e.name.to_string()).collect()
    }

    async fn stats(engine: &Arc<dyn crate::core::Engine>) -> Value {
        let v = engine
            .state_of(&ChannelName::new("dashboard").unwrap())
            .await
            .unwrap()
            .unwrap();
        serde_json::from_str(v.get("stats").unwrap().value.get()).unwrap()
    }

    #[tokio::test]
    async fn writes_publish_the_document_and_only_the_values_that_changed() {
        let (engine, c) = books("").await;
        let me = user("ann");
        let a = c
            .create(
                &me,
                json!({"title": " Dune ", "author": "Herbert", "extra": 1}),
            )
            .await
            .unwrap();
        assert!(a.created);
        let doc: Value = serde_json::from_str(a.doc.json.get()).unwrap();
        let id = doc["id"].as_i64().unwrap();
        assert_eq!(
            doc,
            json!({"id": id, "title": "Dune", "author": "Herbert", "favorites": []})
        );
        let b = c.create(&me, json!({"title": "Emma"})).await.unwrap();
        let emma: Value = serde_json::from_str(b.doc.json.get()).unwrap();
        assert!(
            emma["id"].as_i64().unwrap() > id,
            "timestamp ids are unique"
        );
        assert_eq!(
            emma["author"],
            Value::Null,
            "a missing listed field is null"
        );
        assert_eq!(
            stats(&engine).await,
            json!({"total": 2, "favs": 0, "herbert": 1})
        );
        let path = id.to_string();
        // An update that changes no derived number publishes no value.
        c.replace(&me, &path, json!({"title": "Dune!"}), None)
            .await
            .unwrap();
        // The array operation is idempotent; the per-document value follows it.
        for _ in 0..2 {
            c.member(&me, &path, "favorites", json!("ann"), true, None)
                .await
                .unwrap();
        }
        assert_eq!(
            stats(&engine).await,
            json!({"total": 2, "favs": 1, "herbert": 1})
        );
        c.member(&me, &path, "favorites", json!("ann"), false, None)
            .await
            .unwrap();
        c.delete(&me, &path, None).await.unwrap();
        assert_eq!(
            names(&engine, "books").await,
            [
                "bookAdded",
                "bookAdded",
                "bookUpdated",
                "bookUpdated",
                "favoriteUpdated",
                "bookUpdated",
                "favoriteUpdated",
                "bookDeleted"
            ]
        );
        let totals: Vec<Value> = {
            let ch = ChannelName::new("dashboard").unwrap();
            let page = engine.history(&ch, 0, 100).await.unwrap().unwrap();
            page.events
                .iter()
                .map(|e| serde_json::from_str(e.data.get()).unwrap())
                .collect()
        };
        assert_eq!(
            totals,
            [
                json!({"total": 0, "favs": 0, "herbert": 0}),
                json!({"total": 1, "favs": 0, "herbert": 1}),
                json!({"total": 2, "favs": 0, "herbert": 1}),
                json!({"total": 2, "favs": 1, "herbert": 1}),
                json!({"total": 2, "favs": 0, "herbert": 1}),
                json!({"total": 1, "favs": 0, "herbert": 0}),
            ],
            "one value per change of a number, none for the title edit or the repeated favourite"
        );
    }

    #[tokio::test]
    async fn stale_versions_bad_bodies_and_limits_change_nothing() {
        let (engine, c) = books("max_documents = 2").await;
        let me = user("ann");
        let w = c.create(&me, json!({"title": "Dune"})).await.unwrap();
        let id = serde_json::from_str::<Value>(w.doc.json.get()).unwrap()["id"].to_string();
        let stale = w.doc.etag.clone();
        let w2 = c
            .patch(&me, &id, json!({"author": "Herbert"}), Some(&stale))
            .await
            .unwrap();
        assert_ne!(w2.doc.etag, stale);
        let before = names(&engine, "books").await.len();
        match c
            .patch(&me, &id, json!({"author": "X"}), Some(&stale))
            .await
        {
            Err(StoreError::Stale { .. }) => {}
            other => panic!("expected a stale version, got {:?}", other.map(|w| w.doc)),
        }
        match c.create(&me, json!({"title": "   "})).await {
            Err(StoreError::Invalid(inv)) => assert_eq!(inv.field, "title"),
            other => panic!("expected invalid, got {:?}", other.map(|w| w.doc)),
        }
        match c.create(&me, json!({"title": "T", "id": 5})).await {
            Err(StoreError::Invalid(inv)) => assert_eq!(inv.field, "id"),
            other => panic!("expected invalid, got {:?}", other.map(|w| w.doc)),
        }
        assert!(matches!(c.get("404").await, Err(StoreError::NotFound(_))));
        c.create(&me, json!({"title": "Emma"})).await.unwrap();
        assert!(matches!(
            c.create(&me, json!({"title": "Third"})).await,
            Err(StoreError::Full(2))
        ));
        assert_eq!(
            names(&engine, "books").await.len(),
            before + 1,
            "only the one good create"
        );
        assert_eq!(c.get(&id).await.unwrap().etag, w2.doc.etag);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_are_checked_in_turn_and_committed_in_groups() {
        let (engine, c) = books("").await;
        let c = Arc::new(c);
        let me = user("ann");
        let w = c.create(&me, json!({"title": "Dune"})).await.unwrap();
        let id = serde_json::from_str::<Value>(w.doc.json.get()).unwrap()["id"].to_string();
        let etag = w.doc.etag.clone();
        // Twenty writers with the same version: exactly one wins.
        let tries = (0..20).map(|i| {
            let (c, id, etag, me) = (c.clone(), id.clone(), etag.clone(), me.clone());
            tokio::spawn(async move {
                c.patch(&me, &id, json!({"author": format!("a{i}")}), Some(&etag))
                    .await
                    .is_ok()
            })
        });
        let won = futures_util::future::join_all(tries)
            .await
            .into_iter()
            .filter(|r| *r.as_ref().unwrap())
            .count();
        assert_eq!(won, 1);
        // Fifty users favourite at once, some twice, while twenty books are added.
        let mut jobs = Vec::new();
        for u in 0..50 {
            let (c, id) = (c.clone(), id.clone());
            jobs.push(tokio::spawn(async move {
                for _ in 0..1 + u % 2 {
                    c.member(
                        &user(&format!("u{u}")),
                        &id,
                        "favorites",
                        json!(format!("u{u}")),
                        true,
                        None,
                    )
                    .await
                    .unwrap();
                }
            }));
        }
        for i in 0..20 {
            let c = c.clone();
            jobs.push(tokio::spawn(async move {
                c.create(&user("x"), json!({"title": format!("B{i}")}))
                    .await
                    .unwrap();
            }));
        }
        for j in futures_util::future::join_all(jobs).await {
            j.unwrap();
        }
        let doc: Value = serde_json::from_str(c.get(&id).await.unwrap().json.get()).unwrap();
        assert_eq!(doc["favorites"].as_array().unwrap().len(), 50);
        assert_eq!(c.all().await.unwrap().len(), 21);
        assert_eq!(
            stats(&engine).await,
            json!({"total": 21, "favs": 50, "herbert": 0})
        );
    }

    #[tokio::test]
    async fn an_import_is_one_batch_creating_and_replacing() {
        let (engine, c) = books("").await;
        let docs = json!([
            {"id": 1, "title": "A", "author": "Herbert", "favorites": ["x", "y"]},
            {"id": 2, "title": "B"}
        ]);
        let Value::Array(docs) = docs else {
            unreachable!()
        };
        assert_eq!(c.import(docs).await.unwrap(), (2, 0));
        assert_eq!(
            stats(&engine).await,
            json!({"total": 2, "favs": 2, "herbert": 1})
        );
        let again = vec![
            json!({"id": 2, "title": "B2"}),
            json!({"id": 3, "title": ""}),
        ];
        match c.import(again).await {
            Err(StoreError::Invalid(inv)) => assert_eq!(inv.field, "[1].title"),
            other => panic!("expected invalid, got {other:?}"),
        }
        let again = vec![
            json!({"id": 2, "title": "B2"}),
            json!({"id": 3, "title": "C"}),
        ];
        assert_eq!(c.import(again).await.unwrap(), (1, 1));
        let all = c.all().await.unwrap();
        let titles: Vec<String> = all
            .iter()
            .map(|e| serde_json::from_str::<Value>(e.value.get()).unwrap()["title"].to_string())
            .collect();
        assert_eq!(titles, ["\"A\"", "\"B2\"", "\"C\""]);
    }
}
