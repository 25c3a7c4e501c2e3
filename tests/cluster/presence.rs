//! Presence across two nodes of one cluster (two Redis engines sharing a prefix): a member joining on one node is
//! in the other's presence reads (under its own connection id) and its watchers hear the join and the leave; a node that dies (its engine
//! dropped: no more heartbeats, nothing removed) has its members leave the other's reads within
//! `PRESENCE_NODE_TTL` and announced within `PRESENCE_NODE_TTL + PRESENCE_HEARTBEAT`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use herald::core::Engine;
use herald::core::channel::{ChannelName, Pattern};
use herald::core::engine::redis::{PRESENCE_HEARTBEAT, PRESENCE_NODE_TTL};
use herald::core::engine::{self, EngineKind, EngineOptions};
use herald::core::presence::{Member, PresenceEvent};
use herald::core::retention::Retention;
use tokio::sync::mpsc;

use crate::redis_server::RedisServer;

fn member(conn: &str, user: &str) -> Arc<Member> {
    Arc::new(Member {
        conn: conn.into(),
        user: Some(user.into()),
        roles: vec!["reader".into()],
        transport: "websocket",
        connected_at: 42,
    })
}

async fn node(server: &RedisServer, prefix: &str) -> Arc<dyn Engine> {
    engine::open(EngineOptions {
        kind: EngineKind::Redis {
            url: server.url.clone(),
            prefix: prefix.to_owned(),
        },
        retention: Retention::default(),
        session_ttl: Duration::from_secs(3600),
    })
    .await
    .unwrap()
}

/// `(join?, conn, user)` of the next notification, within `within`.
async fn next(
    events: &mut mpsc::Receiver<PresenceEvent>,
    within: Duration,
) -> (bool, String, String) {
    let e = tokio::time::timeout(within, events.recv())
        .await
        .expect("a presence notification in time")
        .expect("the watcher is not dropped");
    let (joined, m) = match e {
        PresenceEvent::Join(_, m) => (true, m),
        PresenceEvent::Leave(_, m) => (false, m),
    };
    (joined, m.conn.to_string(), m.user.unwrap_or_default())
}

async fn conns(engine: &dyn Engine, channel: &ChannelName) -> Vec<String> {
    let mut c: Vec<String> = engine
        .presence(channel)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.conn.to_string())
        .collect();
    c.sort();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_cluster_wide_and_a_dead_nodes_members_leave_within_the_heartbeat_expiry() {
    static NEXT: AtomicUsize = AtomicUsize::new(1);
    let server = RedisServer::shared();
    let prefix = format!(
        "presence{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let a = node(&server, &prefix).await;
    let b = node(&server, &prefix).await;
    let room = ChannelName::new("room:1").unwrap();
    let mut on_b = b.presence_events(Pattern::new("room:*"));
    let quick = Duration::from_secs(5);

    // A join on A: in B's reads and heard by B's watcher.
    let first = a.join(&room, member("c1", "alice")).await.unwrap();
    let (joined, conn, user) = next(&mut on_b, quick).await;
    assert!(
        joined && conn == "c1" && user == "alice",
        "{joined} {conn} {user}"
    );
    assert_eq!(conns(&*b, &room).await, ["c1"]);
    let _bob = b.join(&room, member("c2", "bob")).await.unwrap();
    assert_eq!(next(&mut on_b, quick).await.1, "c2");
    assert_eq!(conns(&*a, &room).await, ["c1", "c2"]);
    assert_eq!(conns(&*b, &room).await, ["c1", "c2"]);

    // A leave on A: heard on B, gone from B's reads.
    drop(first);
    let (joined, conn, _) = next(&mut on_b, quick).await;
    assert!(!joined && conn == "c1", "{joined} {conn}");
    assert_eq!(conns(&*b, &room).await, ["c2"]);

    // A dies with a member on the room: B stops listing it within the node ttl and announces its leave.
    let carol = a.join(&room, member("c3", "carol")).await.unwrap();
    assert!(next(&mut on_b, quick).await.0);
    assert_eq!(conns(&*b, &room).await, ["c2", "c3"]);
    let died = Instant::now();
    drop(a);
    std::mem::forget(carol);
    let slack = Duration::from_secs(2);
    while conns(&*b, &room).await != ["c2"] {
        assert!(
            died.elapsed() < PRESENCE_NODE_TTL + slack,
            "still listed after {:?}",
            died.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let bound = PRESENCE_NODE_TTL + PRESENCE_HEARTBEAT + slack;
    let (joined, conn, user) = next(&mut on_b, bound).await;
    assert!(
        !joined && conn == "c3" && user == "carol",
        "{joined} {conn} {user}"
    );
    assert!(
        died.elapsed() >= PRESENCE_NODE_TTL - PRESENCE_HEARTBEAT,
        "not before the heartbeat could expire"
    );
    b.shutdown().await;
}
