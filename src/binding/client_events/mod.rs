//! Application events clients emit, mapped by the config to what Herald does with them — shared by the
//! Socket.IO binding (events) and `/ws` (the `emit` op), so both transports map the same names the same way.
//!
//! [`ClientEvents::handle`] fills the mapping's templates from the event's first argument and the connection's
//! identity, runs what needs no transport (actions, client publishes, replies) and hands subscription changes
//! back to the binding, which owns its subscriptions; a `forward` mapping hands back a [`Call`] the binding runs
//! on a task of its own (so the connection's later events are not held behind a slow backend) and whose
//! [`crate::binding::forward::Answer`] it applies. Every failure is a [`Refusal`] with a code, which the
//! binding answers as the ack or an `error` message: nothing is dropped silently.

pub mod config;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::access::Access;
use super::forward::{Answer, Forwarder, Permit, Slots};
use super::refusal::Refusal;
use super::template::{self, Context, FillError};
use crate::auth::Identity;
use crate::core::Engine;
use crate::core::channel::ChannelName;
use crate::core::event::NewEvent;
use crate::core::stats;
use crate::policy::rate::Bucket;
pub use config::ClientEvent;

/// Runs the named actions that client events can be mapped to (the sources', e.g. `monitor.refresh`).
pub trait Actions: Send + Sync {
    /// Runs `action` with the event's arguments; `may_subscribe` tells whether the client may read a channel.
    /// `Err((code, message))` refuses.
    fn run<'a>(
        &'a self,
        action: &'a str,
        args: &'a [Value],
        may_subscribe: &'a (dyn Fn(&ChannelName) -> bool + Send + Sync),
    ) -> futures_util::future::BoxFuture<'a, Result<Value, (&'static str, String)>>;
}

/// The configured client events and what they need to run.
pub struct ClientEvents {
    map: HashMap<String, ClientEvent>,
    actions: Arc<dyn Actions>,
    engine: Arc<dyn Engine>,
    access: Arc<Access>,
    /// Runs `forward` mappings and the connect/disconnect hooks.
    forwarder: Arc<Forwarder>,
    /// Largest data of a client publish: `[limits] client_publish_max_bytes`, within `max_event_bytes`.
    max_publish_bytes: usize,
    /// For `/metrics`: events received, and refusals by code.
    counts: Mutex<(u64, BTreeMap<&'static str, u64>)>,
}

/// One connection's allowance: client publishes (`[limits] client_publishes_per_second`) and forwards in flight
/// (`[forward] per_connection`), with what the backend is told of the connection.
pub struct Allowance {
    publishes: Mutex<Bucket>,
    /// Its forwards in flight, and its description.
    pub forwards: Slots,
}

/// A forward to run: the backend's URL, the body, and the forward's place in the in-flight bounds.
pub struct Call {
    forwarder: Arc<Forwarder>,
    url: String,
    body: Value,
    _permit: Permit,
}

impl Call {
    /// POSTs the event and reads the answer (its publishes made), within `[forward] timeout`.
    pub async fn run(self) -> Result<Answer, Refusal> {
        self.forwarder.call(&self.url, &self.body).await
    }
}

/// What the binding does once an event is mapped.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Subscribe the connection to the channel (the binding's shared subscribe path checks the rules).
    Subscribe(ChannelName),
    /// Unsubscribe the connection from the channel.
    Unsubscribe(ChannelName),
    /// Done: the ack's value.
    Done(Value),
    /// Send `event` with `data` to this connection, and ack `{ok: true}`.
    Reply {
        /// The event sent back.
        event: String,
        /// Its data.
        data: Value,
    },
    /// Run the forward (on a task of the binding's), then apply its answer.
    Forward(Call),
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call").field("url", &self.url).finish()
    }
}

impl PartialEq for Call {
    fn eq(&self, other: &Self) -> bool {
        self.url == other.url && self.body == other.body
    }
}

impl ClientEvents {
    /// The mapping `map`, running actions on `actions`, publishes on `engine` and forwards on `forwarder`,
    /// checked by `access`.
    pub fn new(
        map: HashMap<String, ClientEvent>,
        actions: Arc<dyn Actions>,
        engine: Arc<dyn Engine>,
        access: Arc<Access>,
        forwarder: Arc<Forwarder>,
        max_event_bytes: usize,
    ) -> Arc<Self> {
        let max_publish_bytes = access
            .policy
            .per_connection
            .client_publish_max_bytes
            .min(max_event_bytes);
        Arc::new(Self {
            map,
            actions,
            engine,
            access,
            forwarder,
            max_publish_bytes,
            counts: Mutex::new((0, BTreeMap::new())),
        })
    }

    /// Counts a refusal of a client event that [`ClientEvents::handle`] mapped (a subscription the binding's
    /// subscribe path refused).
    pub fn refused(&self, refusal: &Refusal) {
        *self.counts.lock().1.entry(refusal.code()).or_default() += 1;
    }

    /// Appends the Prometheus counters: client events received, and their refusals by code.
    pub fn metrics(&self, out: &mut String) {
        let (received, refused) = self.counts.lock().clone();
        let _ = write!(
            out,
            "# HELP herald_client_events_total Application events clients sent (Socket.IO events and /ws emits other than the built-in subscribe/unsubscribe).\n\
             # TYPE herald_client_events_total counter\n\
             herald_client_events_total {received}\n\
             # HELP herald_client_event_refusals_total Client events refused, by code.\n\
             # TYPE herald_client_event_refusals_total counter\n"
        );
        for (code, n) in refused {
            let _ = writeln!(
                out,
                "herald_client_event_refusals_total{{code=\"{code}\"}} {n}"
            );
        }
    }

    /// A new connection's allowance; `connection` describes it to the backend
    /// ([`crate::binding::forward::connection`]).
    pub fn allowance(&self, connection: Value) -> Allowance {
        Allowance {
            publishes: Mutex::new(self.access.client_publish_bucket()),
            forwards: Slots::new(connection),
        }
    }

    /// The forwarder: the connect and disconnect hooks.
    pub fn forwarder(&self) -> &Arc<Forwarder> {
        &self.forwarder
    }

    /// Maps client event `event` with arguments `args` from `identity`; counted, and so is a refusal.
    pub async fn handle(
        &self,
        event: &str,
        args: &[Value],
        identity: &Identity,
        allowance: &Allowance,
    ) -> Result<Outcome, Refusal> {
        self.counts.lock().0 += 1;
        let outcome = self.map_event(event, args, identity, allowance).await;
        if let Err(r) = &outcome {
            self.refused(r);
        }
        outcome
    }

    async fn map_event(
        &self,
        event: &str,
        args: &[Value],
        identity: &Identity,
        allowance: &Allowance,
    ) -> Result<Outcome, Refusal> {
        let Some(mapping) = self.map.get(event) else {
            return Err(Refusal::UnknownEvent(format!(
                "Herald does not handle {event:?}"
            )));
        };
        let ctx = Context {
            first: args.first(),
            identity,
        };
        match mapping {
            ClientEvent::Forward(url) => {
                let permit = self.forwarder.permit(&allowance.forwards)?;
                let body = json!({
                    "event": event,
                    "args": args,
                    "identity": super::forward::identity(identity),
                    "connection": allowance.forwards.connection,
                });
                Ok(Outcome::Forward(Call {
                    forwarder: self.forwarder.clone(),
                    url: url.clone(),
                    body,
                    _permit: permit,
                }))
            }
            ClientEvent::Subscribe(t) => Ok(Outcome::Subscribe(channel(event, t, ctx)?)),
            ClientEvent::Unsubscribe(t) => Ok(Outcome::Unsubscribe(channel(event, t, ctx)?)),
            ClientEvent::Action(action) => {
                let may = |c: &ChannelName| self.access.subscribe(identity, c).is_ok();
                let result = self
                    .actions
                    .run(action, args, &may)
                    .await
                    .map_err(|(code, message)| Refusal::Action { code, message })?;
                Ok(Outcome::Done(json!({"ok": true, "result": result})))
            }
            ClientEvent::Reply { event: sent, data } => Ok(Outcome::Reply {
                event: sent.clone(),
                data: filled_data(event, data.as_ref(), ctx)?,
            }),
            ClientEvent::Publish {
                channel: t,
                event: name,
                data,
            } => {
                let started = std::time::Instant::now();
                let mut reached = false;
                let result = async {
                let channel = channel(event, t, ctx)?;
                self.access.publish(identity, &channel)?;
                let data = filled_data(event, data.as_ref(), ctx)?;
                // A JSON value always serialises.
                let text = data.to_string();
                if text.len() > self.max_publish_bytes {
                    return Err(Refusal::TooLarge(format!(
                        "{event}: the published data is {} bytes; at most {} are allowed",
                        text.len(),
                        self.max_publish_bytes
                    )));
                }
                let data = RawValue::from_string(text)
                    .map_err(|e| Refusal::InvalidRequest(e.to_string()))?;
                // Counted last: only publishes that would be made take from the allowance (every message, refused
                // or not, counts against `messages_per_second` already).
                if !allowance.publishes.lock().take() {
                    let limits = &self.access.policy.per_connection;
                    return Err(Refusal::RateLimited(format!(
                        "{event}: too many client publishes; at most {} per second (burst {})",
                        limits.client_publishes_per_second,
                        limits.client_publishes_burst()
                    )));
                }
                reached = true;
                let published = self
                    .engine
                    .publish(vec![NewEvent {
                        channel,
                        name: name.clone().unwrap_or_else(|| event.to_owned()),
                        data,
                        id: None,
                        state: None,
                    }])
                    .await;
                stats::record_publish(stats::Origin::Client, 1, started, &published);
                let published = published?;
                let Some(r) = published.first() else {
                    return Err(Refusal::Unavailable);
                };
                Ok(Outcome::Done(
                    json!({"ok": true, "channel": r.channel, "offset": r.offset, "epoch": r.epoch, "id": r.id}),
                ))
                }
                .await;
                if result.is_err() && !reached {
                    stats::PUBLISHES.record(stats::Origin::Client, stats::Outcome::Rejected, 1);
                }
                result
            }
        }
    }
}

/// The channel a template gives for `event`, as a valid name.
fn channel(event: &str, template: &str, ctx: Context<'_>) -> Result<ChannelName, Refusal> {
    let name = template::fill(template, ctx).map_err(|e| refusal(event, e))?;
    ChannelName::new(&name).map_err(|e| Refusal::InvalidChannel {
        message: format!("{event}: {name:?}: {e}"),
        reason: e,
    })
}

/// The data a template gives for `event`; no template: the first argument (or `null`).
fn filled_data(event: &str, data: Option<&Value>, ctx: Context<'_>) -> Result<Value, Refusal> {
    match data {
        Some(d) => template::fill_value(d, ctx).map_err(|e| refusal(event, e)),
        None => Ok(ctx.first.cloned().unwrap_or(Value::Null)),
    }
}

/// A template that cannot be filled: a missing claim is the identity's fault, the rest the request's.
fn refusal(event: &str, e: FillError) -> Refusal {
    match e {
        FillError::Claim { .. } => Refusal::MissingClaim(format!("{event}: {e}")),
        other => Refusal::InvalidRequest(format!("{event}: {other}")),
    }
}
