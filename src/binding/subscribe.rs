//! The subscribe path every binding shares: the client's wants checked (permission for each channel, then room on
//! the connection), registered in its feed under the feed's op guard, and — once the binding has replied — completed
//! (gaps, replays, the live events held meanwhile). A refusal at any step is a [`Refusal`] the binding renders on
//! its wire; a registration refused after `begin` leaves nothing registered.

use std::sync::Arc;

use tokio::sync::OwnedMutexGuard;

use super::access::Access;
use super::feed::{Feed, Outlet, Registered, Want};
use super::refusal::Refusal;
use crate::auth::Identity;
use crate::core::channel::ChannelName;

/// Registrations waiting for the binding's reply, holding the feed's op guard (so the connection's next
/// subscription change waits for them). Dropped without [`Subscribing::complete`] (the binding gave up, or its
/// task was cancelled), they are undone as by [`Subscribing::abort`].
pub struct Subscribing<O: Outlet> {
    feed: Arc<Feed<O>>,
    regs: Vec<Registered>,
    completed: bool,
    _op: OwnedMutexGuard<()>,
}

/// Checks `wants` for `identity` — each channel permitted, and room for them on the connection — then registers
/// them.
pub async fn subscribe<O: Outlet>(
    feed: &Arc<Feed<O>>,
    access: &Access,
    identity: &Identity,
    wants: Vec<Want>,
) -> Result<Subscribing<O>, Refusal> {
    let channels: Vec<ChannelName> = wants.iter().map(|w| w.channel.clone()).collect();
    access.permit(identity, &feed.channels(), &channels)?;
    register(feed, wants).await
}

/// Registers `wants` the connection is granted without asking (server-side channels, a resumed session's).
pub async fn register<O: Outlet>(
    feed: &Arc<Feed<O>>,
    wants: Vec<Want>,
) -> Result<Subscribing<O>, Refusal> {
    let op = feed.serialize().await;
    let regs = feed.begin(wants).await?;
    Ok(Subscribing {
        feed: feed.clone(),
        regs,
        completed: false,
        _op: op,
    })
}

impl<O: Outlet> Subscribing<O> {
    /// The registrations, in the order asked.
    pub fn registrations(&self) -> &[Registered] {
        &self.regs
    }

    /// Undoes the registrations (the binding could not reply).
    pub fn abort(self) {
        drop(self);
    }

    /// Queues gap notices, replays and the live events held meanwhile, then releases the op guard. On a
    /// storage failure the connection is closed (the client resumes on reconnecting) and `Unavailable` returned.
    pub async fn complete(mut self) -> Result<(), Refusal> {
        let regs = std::mem::take(&mut self.regs);
        let result = self.feed.complete(&regs).await;
        self.completed = true;
        Ok(result?)
    }
}

impl<O: Outlet> Drop for Subscribing<O> {
    fn drop(&mut self) {
        if !self.completed {
            self.feed.abort(&self.regs);
        }
        // The op guard goes after: nothing else changes this feed's subscriptions meanwhile.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AuthConfig;
    use crate::policy::LimitsConfig;

    fn names(ns: &[&str]) -> Vec<ChannelName> {
        ns.iter().map(|n| ChannelName::new(n).unwrap()).collect()
    }

    #[tokio::test]
    async fn permits_count_only_channels_a_connection_does_not_hold() {
        let access = |max| {
            let limits = LimitsConfig {
                subscriptions_per_connection: max,
                ..Default::default()
            };
            Access::new(&AuthConfig::default(), &[], &limits, Vec::new()).unwrap()
        };
        let unlimited = access(0);
        let access = access(2);
        let id = access
            .identify(&Default::default(), &[], None)
            .await
            .unwrap();
        let full = Err(Refusal::TooManySubscriptions { max: 2 });
        assert_eq!(access.permit(&id, &names(&["a"]), &names(&["b"])), Ok(()));
        assert_eq!(
            access.permit(&id, &names(&["a", "b"]), &names(&["c"])),
            full
        );
        // Subscribing again to a held channel needs no room.
        assert_eq!(
            access.permit(&id, &names(&["a", "b"]), &names(&["a"])),
            Ok(())
        );
        // A stream naming a channel twice holds it once.
        assert_eq!(access.permit(&id, &[], &names(&["a", "b", "a"])), Ok(()));
        assert_eq!(access.permit(&id, &[], &names(&["a", "b", "c"])), full);
        assert_eq!(
            unlimited.permit(&id, &names(&["a", "b"]), &names(&["c"])),
            Ok(())
        );
    }
}
