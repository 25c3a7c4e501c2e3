//! A SQL source on two nodes of one cluster (two Redis engines sharing a prefix, each running the source, with
//! subscribers on both): only the lease holder queries the database, both nodes' subscribers get its publishes,
//! and when the holder's subscribers leave, the other node takes the polling over without publishing again what
//! was already published.

use std::sync::Arc;
use std::time::Duration;

use herald::core::Engine;
use herald::core::channel::ChannelName;
use herald::core::engine::{self, EngineKind, EngineOptions, Subscriber, SubscriberId};
use herald::core::event::SharedEvent;
use herald::core::retention::Retention;
use herald::source::sql::{SqlSourceConfig, SqlSources};
use parking_lot::Mutex;

use crate::redis_server::RedisServer;
use crate::until;

/// Longest any step here may take.
const WITHIN: Duration = Duration::from_secs(15);

/// The data of every live event it gets.
#[derive(Default)]
struct Collect(Mutex<Vec<String>>);
impl Subscriber for Collect {
    fn deliver(&self, e: &Arc<SharedEvent>) {
        self.0.lock().push(e.event.data.get().to_owned());
    }
}
impl Collect {
    fn count(&self) -> usize {
        self.0.lock().len()
    }
    fn has(&self, needle: &str) -> bool {
        self.with(needle) > 0
    }
    /// How many events mention `needle`.
    fn with(&self, needle: &str) -> usize {
        self.0.lock().iter().filter(|d| d.contains(needle)).count()
    }
}

/// Queries the source ran on one node.
fn queries(s: &SqlSources) -> u64 {
    s.list()[0].queries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sql_channel_is_polled_by_one_node_and_moves_when_its_subscribers_leave() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    let db = rusqlite::Connection::open(&path).unwrap();
    db.execute_batch(
        "pragma journal_mode=wal;
         create table items (id integer primary key, unit text not null, name text not null);
         insert into items values (1, 'u1', 'first');",
    )
    .unwrap();
    let cfg: SqlSourceConfig = toml::from_str(&format!(
        "id = \"items\"\nurl = \"sqlite:{}\"\nchannel = \"{{unit}}\"\ninterval = \"100ms\"\n\
         sql = \"select id, name from items where unit = {{unit}} order by id\"",
        path.display()
    ))
    .unwrap();

    let server = RedisServer::shared();
    let prefix = format!("cluster-sql-{}", std::process::id());
    let node = || async {
        let engine = engine::open(EngineOptions {
            kind: EngineKind::Redis {
                url: server.url.clone(),
                prefix: prefix.clone(),
            },
            retention: Retention::default(),
            session_ttl: Duration::from_secs(3600),
        })
        .await
        .unwrap();
        let sources = SqlSources::start(&engine, std::slice::from_ref(&cfg))
            .await
            .unwrap();
        (engine, sources)
    };
    let (a, sources_a) = node().await;
    let (b, sources_b) = node().await;
    let channel = ChannelName::new("u1").unwrap();
    let subscribe = |engine: Arc<dyn Engine>, sub: Arc<Collect>| {
        let channel = channel.clone();
        async move {
            let sub: Arc<dyn Subscriber> = sub;
            let mut subs = engine
                .subscribe(&[channel], SubscriberId::next(), sub)
                .await
                .unwrap();
            subs.pop().unwrap().1
        }
    };
    let (got_a, got_b) = (Arc::new(Collect::default()), Arc::new(Collect::default()));
    let sub_a = subscribe(a.clone(), got_a.clone()).await;
    let sub_b = subscribe(b.clone(), got_b.clone()).await;

    // One node polls; the other stands by and queries nothing.
    until("several polls", WITHIN, || {
        queries(&sources_a) + queries(&sources_b) >= 5
    })
    .await;
    let (qa, qb) = (queries(&sources_a), queries(&sources_b));
    assert!(qa == 0 || qb == 0, "both nodes polled: {qa} and {qb}");
    let a_polls = qa > 0;
    let standby = if a_polls { &sources_b } else { &sources_a };
    assert_eq!(standby.list()[0].channels[0].status, "standby");

    // A change is published once by the holder and reaches both nodes' subscribers.
    db.execute("insert into items values (2, 'u1', 'second')", [])
        .unwrap();
    until("the change on both nodes", WITHIN, || {
        got_a.has("second") && got_b.has("second")
    })
    .await;
    assert_eq!((got_a.with("second"), got_b.with("second")), (1, 1));

    // The holder's subscribers leave: its poller stops and releases the lease; the other node takes it.
    let (holder_sub, other_sub, other, other_got) = if a_polls {
        (sub_a, sub_b, &sources_b, &got_b)
    } else {
        (sub_b, sub_a, &sources_a, &got_a)
    };
    drop(holder_sub);
    let published = other_got.count();
    until("the other node polling", WITHIN, || queries(other) > 0).await;
    let took_over_at = queries(other);
    until("a few polls on the new holder", WITHIN, || {
        queries(other) >= took_over_at + 3
    })
    .await;
    assert_eq!(
        other_got.count(),
        published,
        "the new holder diffs against what was published, so nothing is published again"
    );
    db.execute("insert into items values (3, 'u1', 'third')", [])
        .unwrap();
    until("the next change from the new holder", WITHIN, || {
        other_got.has("third")
    })
    .await;
    assert_eq!(other_got.count(), published + 1);

    drop(other_sub);
    sources_a.shutdown().await;
    sources_b.shutdown().await;
    a.shutdown().await;
    b.shutdown().await;
}
