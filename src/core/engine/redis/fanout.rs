//! This node's pub/sub connection: it subscribes in Redis to exactly the channels this process has subscribers
//! on, feeds what arrives to the in-process hub in arrival order (which is the commit order, see the parent
//! module), and offers a barrier that says "everything Redis published before now has been dispatched here".

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::{FutureExt, StreamExt};
use parking_lot::Mutex;
use redis::aio::{PubSubSink, PubSubStream};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};

use super::map_err;
use crate::core::channel::{ChannelName, Pattern};
use crate::core::engine::EngineError;
use crate::core::event::{Event, SharedEvent};
use crate::core::hub::Hub;
use crate::core::state::StateChange;

/// The Redis subscriptions of this process.
pub struct Fanout {
    /// Orders SUBSCRIBE and UNSUBSCRIBE: each decision is taken and sent under this lock.
    sink: tokio::sync::Mutex<PubSubSink>,
    /// For barriers' PINGs (replies come in order with messages on the one connection).
    ping: PubSubSink,
    /// Subscriptions under way per channel: subscribed in Redis, not yet registered in the hub.
    pending: Mutex<HashMap<ChannelName, usize>>,
    /// Asks the reader to confirm it dispatched everything received so far.
    barrier: mpsc::UnboundedSender<oneshot::Sender<()>>,
    /// Pub/sub channel prefix (`{herald}:c:`).
    prefix: String,
    hub: Arc<Hub>,
}

impl Fanout {
    /// Starts the reader and the task that unsubscribes channels this process no longer needs.
    pub fn start(
        sink: PubSubSink,
        stream: PubSubStream,
        keys: &str,
        hub: Arc<Hub>,
    ) -> (Arc<Self>, Vec<tokio::task::JoinHandle<()>>) {
        let (barrier, barriers) = mpsc::unbounded_channel();
        let prefix = format!("{keys}:c:");
        let fanout = Arc::new(Self {
            ping: sink.clone(),
            sink: tokio::sync::Mutex::new(sink),
            pending: Mutex::default(),
            barrier,
            prefix: prefix.clone(),
            hub: hub.clone(),
        });
        let reader = tokio::spawn(read(stream, barriers, prefix, hub.clone()));
        let mut demand = hub.demand(Pattern::new("*"));
        let weak = Arc::downgrade(&fanout);
        let releaser = tokio::spawn(async move {
            while let Some(d) = demand.recv().await {
                let Some(fanout) = weak.upgrade() else { break };
                if !d.active {
                    fanout.release(&d.channel).await;
                }
            }
        });
        (fanout, vec![reader, releaser])
    }

    fn topic(&self, channel: &ChannelName) -> String {
        format!("{}{}", self.prefix, channel.as_str())
    }

    /// Subscribes in Redis to `channels` and waits for the confirmation: from then on every publish to them
    /// reaches this node. Each call must be followed by [`Fanout::settled`].
    pub async fn listen(&self, channels: &[ChannelName]) -> Result<(), EngineError> {
        let mut sink = self.sink.lock().await;
        {
            let mut pending = self.pending.lock();
            for c in channels {
                *pending.entry(c.clone()).or_default() += 1;
            }
        }
        let topics: Vec<String> = channels.iter().map(|c| self.topic(c)).collect();
        sink.subscribe(&topics).await.map_err(map_err)
    }

    /// The subscriptions begun by [`Fanout::listen`] are registered in the hub (or failed).
    pub async fn settled(&self, channels: &[ChannelName]) {
        {
            let mut pending = self.pending.lock();
            for c in channels {
                if let Some(n) = pending.get_mut(c) {
                    *n -= 1;
                    if *n == 0 {
                        pending.remove(c);
                    }
                }
            }
        }
        for c in channels {
            self.release(c).await;
        }
    }

    /// Unsubscribes `channel` in Redis unless a subscriber is on it or on its way.
    async fn release(&self, channel: &ChannelName) {
        let mut sink = self.sink.lock().await;
        if self.pending.lock().contains_key(channel) || self.hub.has_subscribers(channel) {
            return;
        }
        if let Err(e) = sink.unsubscribe(self.topic(channel)).await {
            tracing::warn!(error = %e, channel = %channel, "redis unsubscribe failed");
        }
    }

    /// Returns once every message Redis sent this node before now has been dispatched to the hub.
    pub async fn barrier(&self) -> Result<(), EngineError> {
        let mut ping = self.ping.clone();
        ping.ping::<()>().await.map_err(map_err)?;
        let (tx, rx) = oneshot::channel();
        self.barrier
            .send(tx)
            .map_err(|_| EngineError::unavailable("redis pub/sub reader stopped"))?;
        rx.await
            .map_err(|_| EngineError::unavailable("redis pub/sub reader stopped"))
    }
}

/// Dispatches messages in arrival order; answers barriers once the messages already received are dispatched.
async fn read(
    mut stream: PubSubStream,
    mut barriers: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
    prefix: String,
    hub: Arc<Hub>,
) {
    let dispatch = |msg: redis::Msg| {
        let Some(name) = msg.get_channel_name().strip_prefix(&prefix) else {
            return;
        };
        match ChannelName::any(name)
            .map_err(|e| e.to_string())
            .and_then(|c| decode(c, msg.get_payload_bytes()))
        {
            Ok(event) => hub.dispatch(&[SharedEvent::new(event)]),
            Err(e) => tracing::error!(error = %e, channel = name, "undecodable redis event"),
        }
    };
    loop {
        tokio::select! {
            biased;
            msg = stream.next() => match msg {
                Some(msg) => dispatch(msg),
                None => break,
            },
            Some(done) = barriers.recv() => {
                // The PING's reply came after these messages, so they are queued already.
                while let Some(Some(msg)) = stream.next().now_or_never() {
                    dispatch(msg);
                }
                let _ = done.send(());
            }
        }
    }
    tracing::error!("redis pub/sub connection closed: live delivery on this node stopped");
}

/// Decodes a published event: `seq,offset,channel id,time,state op,len epoch,len id,len name,len key,len value|`
/// then those strings and the data, as the publish script writes it.
pub fn decode(channel: ChannelName, payload: &[u8]) -> Result<Event, String> {
    let bad = || "malformed event payload".to_string();
    let bar = payload.iter().position(|b| *b == b'|').ok_or_else(bad)?;
    let header = std::str::from_utf8(&payload[..bar]).map_err(|_| bad())?;
    let nums: Vec<u64> = header
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    let [seq, offset, channel_id, time, op, lens @ ..] = nums.as_slice() else {
        return Err(bad());
    };
    let mut rest = &payload[bar + 1..];
    let mut strings = Vec::with_capacity(lens.len());
    for len in lens {
        let n = usize::try_from(*len).map_err(|_| bad())?;
        if n > rest.len() {
            return Err(bad());
        }
        let (head, tail) = rest.split_at(n);
        strings.push(String::from_utf8(head.to_vec()).map_err(|_| bad())?);
        rest = tail;
    }
    let data = String::from_utf8(rest.to_vec()).map_err(|_| bad())?;
    let [epoch, id, name, key, value]: [String; 5] = strings.try_into().map_err(|_| bad())?;
    let json = |s: String| RawValue::from_string(s).map_err(|e| e.to_string());
    let state = match op {
        1 => Some(StateChange::Set {
            key,
            value: json(value)?,
        }),
        2 => Some(StateChange::Remove { key }),
        _ => None,
    };
    Ok(Event {
        channel,
        offset: *offset,
        epoch: epoch.into(),
        id,
        name,
        data: json(data)?,
        time: *time as i64,
        seq: *seq,
        channel_id: *channel_id,
        state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_what_the_publish_script_writes() {
        let c = ChannelName::new("a").unwrap();
        let e = decode(c.clone(), b"7,3,2,1000,1,2,1,4,1,2|e1kset|k10{\"v\":10}").unwrap();
        assert_eq!((e.seq, e.offset, e.channel_id, e.time), (7, 3, 2, 1000));
        assert_eq!(
            (&*e.epoch, e.id.as_str(), e.name.as_str()),
            ("e1", "k", "set|")
        );
        assert_eq!(e.data.get(), "{\"v\":10}");
        assert!(
            matches!(e.state, Some(StateChange::Set { ref key, ref value }) if key == "k" && value.get() == "10")
        );
        // Lengths beyond the payload, missing fields or bad JSON are refused, not guessed at.
        assert!(decode(c.clone(), b"7,3,2,1000,0,2,1,4,0,0|e1k").is_err());
        assert!(decode(c.clone(), b"7,3,2|x").is_err());
        assert!(decode(c, b"7,3,2,1000,0,0,0,0,0,0|{").is_err());
    }
}
