//! A monitor on two nodes of one cluster (two Redis engines sharing a prefix, each running the monitors): only
//! the holder of the monitor's lease checks it, and when that node dies the other takes the checks over within
//! the documented `LEASE_TTL + LEASE_TTL / 2` (15 s).

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::core::Engine;
use herald::core::engine::lease::LEASE_TTL;
use herald::core::engine::{self, EngineKind, EngineOptions};
use herald::core::retention::Retention;
use herald::source::monitor::{MonitorConfig, Monitors};

use crate::redis_server::RedisServer;
use crate::until;

/// Scheduled checks a node has run.
fn checks(m: &Monitors) -> u64 {
    m.lateness().1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monitor_is_checked_by_one_node_and_moves_when_it_dies() {
    // The monitored service: a listener that accepts whatever connects.
    let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = target.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = target.accept().await {
            drop(s);
        }
    });
    let cfg: MonitorConfig = toml::from_str(&format!(
        "[[monitors]]\nid = \"m1\"\nname = \"M\"\ninterval = 1\n\
         check = {{ kind = \"tcp\", host = \"127.0.0.1\", port = {port} }}"
    ))
    .unwrap();

    let server = RedisServer::shared();
    let prefix = format!("cluster-monitor-{}", std::process::id());
    let node = || async {
        let engine: Arc<dyn Engine> = engine::open(EngineOptions {
            kind: EngineKind::Redis {
                url: server.url.clone(),
                prefix: prefix.clone(),
            },
            retention: Retention::default(),
            session_ttl: Duration::from_secs(3600),
        })
        .await
        .unwrap();
        let monitors = Monitors::start(engine.clone(), None, &cfg).await.unwrap();
        (engine, monitors)
    };
    let (a, monitors_a) = node().await;
    let (b, monitors_b) = node().await;

    until("checks", Duration::from_secs(10), || {
        checks(&monitors_a) + checks(&monitors_b) >= 3
    })
    .await;
    let (ca, cb) = (checks(&monitors_a), checks(&monitors_b));
    assert!(ca == 0 || cb == 0, "both nodes checked: {ca} and {cb}");
    let (holder, other, other_monitors) = if ca > 0 {
        (a, b, monitors_b)
    } else {
        (b, a, monitors_a)
    };

    // The holder dies: its lease is no longer renewed, expires, and the other node takes the monitor.
    let died = Instant::now();
    holder.shutdown().await;
    let bound = LEASE_TTL + LEASE_TTL / 2 + Duration::from_secs(2);
    until("the other node checking", bound, || {
        checks(&other_monitors) > 0
    })
    .await;
    assert!(
        died.elapsed() >= LEASE_TTL / 2,
        "not before the lease could expire"
    );
    other.shutdown().await;
}
