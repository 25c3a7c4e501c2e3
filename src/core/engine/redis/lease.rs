//! Leases in Redis: key `{prefix}:lease:<name>` holds the holder's token (this node's id and a counter, so two
//! holders on one node are told apart too) with a `ttl` expiry. Acquire is `SET NX PX`; a task renews it every
//! `ttl / 3` with a compare-and-extend script and releases it with compare-and-delete when the guard is dropped.
//! The lease is lost (and the holder told) when a renewal finds another token, fails, or does not complete
//! before the last confirmed expiry: the holder then stops before another node can have taken the key.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::map_err;
use crate::core::engine::{EngineError, Lease};

/// Extends the key's expiry if it still holds this token: 1 if extended, 0 if not ours any more.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0",
    )
});

/// Deletes the key if it still holds this token.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0",
    )
});

/// One node's leases.
pub(super) struct Leases {
    /// `{prefix}:lease:`.
    keys: String,
    /// This node's id (random per engine).
    node: String,
    next: AtomicU64,
    /// Turns `true` at shutdown: renewals stop (without releasing, like a node that died).
    closed: watch::Sender<bool>,
}

impl Leases {
    /// Leases under prefix `keys` (`{prefix}`).
    pub(super) fn new(keys: &str, node: &str) -> Self {
        Self {
            keys: format!("{keys}:lease:"),
            node: node.to_owned(),
            next: AtomicU64::new(1),
            closed: watch::channel(false).0,
        }
    }

    /// Stops every renewal task (the leases then expire).
    pub(super) fn shutdown(&self) {
        self.closed.send_replace(true);
    }

    /// Takes lease `name` for `ttl` if nobody holds it.
    pub(super) async fn acquire(
        &self,
        mut con: ConnectionManager,
        name: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, EngineError> {
        let ttl = ttl.max(Duration::from_millis(30));
        let key = format!("{}{name}", self.keys);
        let token = format!(
            "{}:{}",
            self.node,
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        let started = Instant::now();
        let set: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .query_async(&mut con)
            .await
            .map_err(map_err)?;
        if set.is_none() {
            return Ok(None);
        }
        let (lost_tx, lost) = watch::channel(false);
        let (release, released) = oneshot::channel();
        tokio::spawn(renew(
            con,
            key,
            token,
            ttl,
            started + ttl,
            lost_tx,
            released,
            self.closed.subscribe(),
        ));
        Ok(Some(Lease::renewed(lost, release)))
    }
}

/// Renews the lease every `ttl / 3` until it is dropped (then released), lost, or the engine shuts down.
#[allow(clippy::too_many_arguments)]
async fn renew(
    mut con: ConnectionManager,
    key: String,
    token: String,
    ttl: Duration,
    mut expires: Instant,
    lost: watch::Sender<bool>,
    mut released: oneshot::Receiver<()>,
    mut closed: watch::Receiver<bool>,
) {
    let ttl_ms = ttl.as_millis() as u64;
    loop {
        let dropped = tokio::select! {
            _ = &mut released => true,
            _ = closed.changed() => return,
            () = tokio::time::sleep(ttl / 3) => false,
        };
        if dropped {
            let done = RELEASE
                .key(&key)
                .arg(&token)
                .invoke_async::<i64>(&mut con)
                .await;
            if let Err(e) = done {
                tracing::debug!(lease = %key, error = %e, "lease not released; it expires instead");
            }
            return;
        }
        let started = Instant::now();
        // Only until the last confirmed expiry: after it another node may hold the key.
        let renewed = tokio::time::timeout_at(
            expires,
            RENEW
                .key(&key)
                .arg(&token)
                .arg(ttl_ms)
                .invoke_async::<i64>(&mut con),
        )
        .await;
        match renewed {
            Ok(Ok(1)) => expires = started + ttl,
            outcome => {
                match outcome {
                    Ok(Ok(_)) => tracing::warn!(lease = %key, "lease taken over by another holder"),
                    Ok(Err(e)) => tracing::warn!(lease = %key, error = %e, "lease renewal failed"),
                    Err(_) => tracing::warn!(lease = %key, "lease renewal too slow; it expired"),
                }
                lost.send_replace(true);
                // Best effort: a key still ours (the failure was only the reply) is freed for the next holder.
                let _ = tokio::time::timeout(
                    ttl,
                    RELEASE.key(&key).arg(&token).invoke_async::<i64>(&mut con),
                )
                .await;
                return;
            }
        }
    }
}
