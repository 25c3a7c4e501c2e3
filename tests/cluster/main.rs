//! Several nodes of one cluster in one test process: Redis engines sharing a key prefix on a `redis-server` the
//! tests start themselves. Leases (one holder at a time, handed over on release or expiry), sources that run on
//! one node (monitors, SQL channels), presence across nodes.

#[path = "../support/redis_server.rs"]
mod redis_server;

mod leases;
mod monitors;
mod presence;
mod sources;

use std::time::{Duration, Instant};

/// Waits (polling, bounded by `within`) until `cond` holds.
async fn until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
