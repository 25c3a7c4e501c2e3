//! A declared presence aggregate kept as a state value: re-evaluated after presence changes on its `of` channel
//! (a burst of joins is drained and evaluated once), published through the engine only when the value differs
//! from the one stored, so a new subscriber gets the current value in its snapshot.

use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;

use super::ValueDecl;
use crate::core::Engine;
use crate::core::channel::Pattern;
use crate::core::engine::EngineError;
use crate::core::engine::lease::{LEASE_TTL, while_held};
use crate::core::event::NewEvent;
use crate::core::state::StateChange;
use crate::core::stats::Origin;

/// Pause before retrying after the engine failed, so an outage is not a busy loop.
const RETRY: Duration = Duration::from_millis(500);

/// Keeps `value` published until the task is aborted (one node of a cluster at a time).
pub async fn run(engine: Arc<dyn Engine>, value: ValueDecl, max_users: usize) {
    let lease = format!("presence-value:{}:{}", value.channel, value.event);
    while_held(&*engine, &lease, LEASE_TTL, || {
        keep(&engine, &value, max_users)
    })
    .await;
}

async fn keep(engine: &Arc<dyn Engine>, value: &ValueDecl, max_users: usize) {
    loop {
        // Watch first, then read: a change between the two still wakes the loop.
        let mut changes = engine.presence_events(Pattern::new(value.of.as_str()));
        loop {
            match refresh(engine, value, max_users).await {
                Ok(()) => {}
                Err(EngineError::Closed) => return,
                Err(e) => {
                    tracing::warn!(channel = %value.channel, event = value.event, error = %e, "presence value not published; retrying");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            }
            // A watcher that fell behind is dropped by the engine: watch again and re-read.
            if changes.recv().await.is_none() {
                break;
            }
            while changes.try_recv().is_ok() {}
        }
    }
}

/// Evaluates the value and publishes it if it changed.
async fn refresh(
    engine: &Arc<dyn Engine>,
    value: &ValueDecl,
    max_users: usize,
) -> Result<(), EngineError> {
    let members = engine.presence(&value.of).await?;
    let json = serde_json::Value::Object(value.aggregate.eval(&members, max_users)).to_string();
    let stored = engine.state_of(&value.channel).await?;
    if stored
        .as_ref()
        .and_then(|s| s.get(&value.event))
        .is_some_and(|e| e.value.get() == json)
    {
        return Ok(());
    }
    let data = RawValue::from_string(json).map_err(|e| EngineError::Invalid(e.to_string()))?;
    engine
        .publish_from(
            Origin::Presence,
            vec![NewEvent {
                channel: value.channel.clone(),
                name: value.event.clone(),
                data: data.clone(),
                id: None,
                state: Some(StateChange::Set {
                    key: value.event.clone(),
                    value: data,
                }),
            }],
        )
        .await?;
    Ok(())
}
