//! Which node holds each Engine.IO session: `{prefix}:sid:<sid>` → the owner's address, with an expiry the owner
//! keeps refreshing while the session lives, deleted when it closes. Nodes read it to forward a polling request
//! that reached them for a session held elsewhere (no sticky sessions needed in the load balancer).

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;

use super::map_err;
use crate::core::engine::EngineError;

/// The key of `sid`'s owner.
fn key(keys: &str, sid: &str) -> String {
    format!("{keys}:sid:{sid}")
}

/// Records (or refreshes) `owner` as the holder of `sids` for `ttl`, in one pipelined round trip.
pub(super) async fn claim(
    mut con: ConnectionManager,
    keys: &str,
    sids: &[Arc<str>],
    owner: &str,
    ttl: Duration,
) -> Result<(), EngineError> {
    if sids.is_empty() {
        return Ok(());
    }
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
    let mut pipe = redis::pipe();
    for sid in sids {
        pipe.cmd("SET")
            .arg(key(keys, sid))
            .arg(owner)
            .arg("PX")
            .arg(ttl_ms)
            .ignore();
    }
    pipe.query_async::<()>(&mut con).await.map_err(map_err)
}

/// Forgets `sid`'s owner, in the background.
pub(super) fn release(mut con: ConnectionManager, keys: &str, sid: &str) {
    let key = key(keys, sid);
    tokio::spawn(async move {
        if let Err(e) = redis::cmd("DEL")
            .arg(&key)
            .query_async::<()>(&mut con)
            .await
        {
            tracing::debug!(error = %e, "could not delete a session's owner record; it expires");
        }
    });
}

/// The owner recorded for `sid`.
pub(super) async fn owner(
    mut con: ConnectionManager,
    keys: &str,
    sid: &str,
) -> Result<Option<String>, EngineError> {
    redis::cmd("GET")
        .arg(key(keys, sid))
        .query_async(&mut con)
        .await
        .map_err(map_err)
}
