//! Engine leases (`herald::core::engine::lease`): every engine grants a lease and takes it back when the guard is
//! dropped; on Redis, engines sharing a prefix (the nodes of one cluster) never hold one lease at once, a dropped
//! lease is free at once, a holder that dies without releasing hands over within the ttl, and the work
//! [`lease::while_held`] runs moves to the other node within `ttl + ttl / 2`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use herald::core::Engine;
use herald::core::engine::{self, EngineKind, EngineOptions, lease};
use herald::core::retention::Retention;

use crate::redis_server::RedisServer;

/// A key prefix no other test uses, so tests can share one Redis server.
fn fresh_prefix() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(1);
    format!(
        "lease{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

async fn open(kind: EngineKind) -> Arc<dyn Engine> {
    engine::open(EngineOptions {
        kind,
        retention: Retention::default(),
        session_ttl: Duration::from_secs(3600),
    })
    .await
    .unwrap()
}

/// Two Redis engines with one prefix: two nodes of one cluster.
async fn two_nodes(server: &RedisServer) -> (Arc<dyn Engine>, Arc<dyn Engine>) {
    let prefix = fresh_prefix();
    let kind = || EngineKind::Redis {
        url: server.url.clone(),
        prefix: prefix.clone(),
    };
    (open(kind()).await, open(kind()).await)
}

/// Polls `engine` for lease `name` until it is granted; how long that took.
async fn wait_for_lease(
    engine: &dyn Engine,
    name: &str,
    ttl: Duration,
) -> (lease::Lease, Duration) {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(10);
    loop {
        if let Some(l) = engine.lease(name, ttl).await.unwrap() {
            return (l, start.elapsed());
        }
        assert!(Instant::now() < deadline, "lease {name} never handed over");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_engine_grants_a_lease_and_takes_it_back_on_drop() {
    let server = RedisServer::shared();
    let dir = tempfile::tempdir().unwrap();
    let kinds = [
        EngineKind::Memory,
        EngineKind::Sqlite {
            data_dir: dir.path().into(),
            durability: engine::sqlite::Durability::Full,
        },
        EngineKind::Redis {
            url: server.url.clone(),
            prefix: fresh_prefix(),
        },
    ];
    let ttl = Duration::from_secs(5);
    for kind in kinds {
        let name = format!("{kind:?}");
        let engine = open(kind).await;
        let held = engine.lease("monitor:m1", ttl).await.unwrap();
        let held = held.unwrap_or_else(|| panic!("{name}: a free lease is granted"));
        assert!(!held.is_lost(), "{name}");
        drop(held);
        // Released in the background, at once (well before the ttl).
        let (_again, took) = wait_for_lease(&*engine, "monitor:m1", ttl).await;
        assert!(
            took < ttl / 2,
            "{name}: a dropped lease is free again, after {took:?}"
        );
        engine.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_refuses_a_second_holder_until_the_first_drops() {
    let server = RedisServer::shared();
    let (a, b) = two_nodes(&server).await;
    let ttl = Duration::from_millis(600);
    let held = a.lease("sql:s:c", ttl).await.unwrap().expect("free");
    assert!(
        a.lease("sql:s:c", ttl).await.unwrap().is_none(),
        "same node, second holder"
    );
    // Renewed in the background: still refused after several ttls.
    for _ in 0..4 {
        tokio::time::sleep(ttl / 2).await;
        assert!(b.lease("sql:s:c", ttl).await.unwrap().is_none());
    }
    assert!(!held.is_lost());
    assert!(
        b.lease("sql:other", ttl).await.unwrap().is_some(),
        "other names are independent"
    );
    drop(held);
    let (_b_holds, took) = wait_for_lease(&*b, "sql:s:c", ttl).await;
    assert!(took < ttl, "released on drop, not left to expire: {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_dead_holders_lease_expires_within_its_ttl() {
    let server = RedisServer::shared();
    let (a, b) = two_nodes(&server).await;
    let ttl = Duration::from_millis(800);
    let mut held = a.lease("monitor:x", ttl).await.unwrap().expect("free");
    // The holder stops renewing without releasing (as a killed node would); it is told the lease is gone.
    a.shutdown().await;
    tokio::time::timeout(ttl, held.lost())
        .await
        .expect("the holder learns it lost the lease");
    let (_b_holds, took) = wait_for_lease(&*b, "monitor:x", ttl).await;
    assert!(
        took <= ttl + Duration::from_millis(200),
        "handed over in {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_holder_whose_key_was_taken_loses_the_lease() {
    let server = RedisServer::shared();
    let (a, b) = two_nodes(&server).await;
    let ttl = Duration::from_millis(600);
    let mut held = a.lease("monitor:y", ttl).await.unwrap().expect("free");
    // Redis lost the key (a restart without data) and another node took it: the renewal notices.
    let client = redis::Client::open(server.url.as_str()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*:lease:monitor:y")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let _: () = redis::cmd("DEL")
        .arg(&keys[0])
        .query_async(&mut con)
        .await
        .unwrap();
    let _b_holds = b.lease("monitor:y", ttl).await.unwrap().expect("freed");
    tokio::time::timeout(ttl, held.lost())
        .await
        .expect("the old holder is told");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_work_runs_on_one_node_at_a_time_and_moves_when_its_node_dies() {
    let server = RedisServer::shared();
    let (a, b) = two_nodes(&server).await;
    let ttl = Duration::from_millis(600);
    let running = Arc::new(AtomicUsize::new(0));
    let overlaps = Arc::new(AtomicUsize::new(0));
    let (ran_on, mut who) = tokio::sync::mpsc::unbounded_channel::<&'static str>();
    let node = |engine: Arc<dyn Engine>, label: &'static str| {
        let (running, overlaps, ran_on) = (running.clone(), overlaps.clone(), ran_on.clone());
        tokio::spawn(async move {
            lease::while_held(&*engine, "monitor:job", ttl, || {
                let (running, overlaps, ran_on) =
                    (running.clone(), overlaps.clone(), ran_on.clone());
                async move {
                    if running.fetch_add(1, Ordering::SeqCst) > 0 {
                        overlaps.fetch_add(1, Ordering::SeqCst);
                    }
                    // Decremented however the work ends (cancelled when the lease is lost).
                    struct Done(Arc<AtomicUsize>);
                    impl Drop for Done {
                        fn drop(&mut self) {
                            self.0.fetch_sub(1, Ordering::SeqCst);
                        }
                    }
                    let _done = Done(running);
                    let _ = ran_on.send(label);
                    std::future::pending::<()>().await
                }
            })
            .await
        })
    };
    let task_a = node(a.clone(), "a");
    let first = tokio::time::timeout(Duration::from_secs(5), who.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first, "a");
    let task_b = node(b.clone(), "b");
    tokio::time::sleep(ttl * 2).await;
    assert!(who.try_recv().is_err(), "b waits while a holds the lease");
    // Node a dies: its renewals stop without a release.
    let died = Instant::now();
    a.shutdown().await;
    let next = tokio::time::timeout(Duration::from_secs(5), who.recv())
        .await
        .unwrap()
        .unwrap();
    let took = died.elapsed();
    assert_eq!(next, "b");
    assert!(
        took <= ttl + ttl / 2 + Duration::from_millis(300),
        "moved in {took:?}"
    );
    task_a.abort();
    task_b.abort();
    assert_eq!(
        overlaps.load(Ordering::SeqCst),
        0,
        "never two runners at once"
    );
}
