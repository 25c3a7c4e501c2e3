//! Leases: a named piece of work (a monitor, a SQL source channel) that must run on one node of a cluster at a
//! time. [`super::Engine::lease`] grants one to at most one holder; the holder keeps the [`Lease`] while it works
//! and stops when [`Lease::lost`] resolves (the engine could not renew it in time, so another node may hold it
//! now). Dropping the guard releases it. Single-node engines grant every lease at once and never lose it.
//!
//! [`while_held`] is the loop sources use: wait for the lease (retrying every `ttl / 2`), run the work until the
//! lease is lost, and start over. A holder that dies without releasing stops renewing, so its lease expires within
//! `ttl` and a waiting node takes it within `ttl / 2` after that: the work moves within `ttl + ttl / 2`.

use std::future::Future;
use std::time::Duration;

use tokio::sync::{oneshot, watch};

use super::{Engine, EngineError};

/// How long a source's lease lasts without renewal (renewed every third of it): a dead node's monitors and SQL
/// channels move to another node within `LEASE_TTL + LEASE_TTL / 2` (15 s).
pub const LEASE_TTL: Duration = Duration::from_secs(10);

/// A held lease: renewed in the background while kept, released (in the background, at once) when dropped.
pub struct Lease {
    /// Turns `true` once the lease is lost.
    lost: watch::Receiver<bool>,
    /// Keeps a never-lost lease's channel open.
    _never: Option<watch::Sender<bool>>,
    /// Dropped with the lease: tells the renewal task to release it.
    _release: Option<oneshot::Sender<()>>,
}

impl Lease {
    /// A lease that is never lost (single-node engines).
    pub fn granted() -> Self {
        let (tx, rx) = watch::channel(false);
        Self {
            lost: rx,
            _never: Some(tx),
            _release: None,
        }
    }

    /// A lease whose renewal task reports loss on `lost` and releases it when `release` is dropped.
    pub fn renewed(lost: watch::Receiver<bool>, release: oneshot::Sender<()>) -> Self {
        Self {
            lost,
            _never: None,
            _release: Some(release),
        }
    }

    /// Whether the lease has been lost.
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Resolves once the lease is lost (never, for a lease that cannot be).
    pub async fn lost(&mut self) {
        // A renewal task that ended without saying so (the engine shut down) no longer renews: lost too.
        let _ = self.lost.wait_for(|lost| *lost).await;
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("lost", &self.is_lost())
            .finish()
    }
}

/// Acquires lease `name`, waiting (retrying every `ttl / 2`) until this node gets it; `None` once the engine is
/// shut down.
pub async fn acquire(engine: &dyn Engine, name: &str, ttl: Duration) -> Option<Lease> {
    loop {
        match engine.lease(name, ttl).await {
            Ok(Some(lease)) => return Some(lease),
            Ok(None) => {}
            Err(EngineError::Closed) => return None,
            Err(e) => {
                tracing::warn!(lease = name, error = %e, "cannot acquire the lease; retrying")
            }
        }
        tokio::time::sleep(ttl / 2).await;
    }
}

/// Runs `work` only while this node holds lease `name`: waits for the lease, runs `work()` until the lease is
/// lost (the work is then cancelled) or ends, and starts over; returns once the engine is shut down.
pub async fn while_held<F, Fut>(engine: &dyn Engine, name: &str, ttl: Duration, mut work: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    while let Some(mut lease) = acquire(engine, name, ttl).await {
        tracing::debug!(lease = name, "lease acquired");
        tokio::select! {
            () = work() => {}
            () = lease.lost() => tracing::warn!(lease = name, "lease lost; stopping its work"),
        }
    }
}
