//! Events: what publishers send, what the store assigns, and the shared form fanned out to subscribers.

use std::any::Any;
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::value::RawValue;

use super::channel::ChannelName;
use super::state::StateChange;

/// An event a producer asks to publish.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Target channel.
    pub channel: ChannelName,
    /// Event name, e.g. `target:updated`.
    pub name: String,
    /// JSON payload, kept as text so it is never re-parsed.
    pub data: Box<RawValue>,
    /// Publisher's idempotency key, if any.
    pub id: Option<String>,
    /// The change this event makes to its channel's keyed state, if any.
    pub state: Option<StateChange>,
}

/// A committed event: its position in the channel and in the node-wide commit order.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Channel the event belongs to.
    pub channel: ChannelName,
    /// Gapless per-channel offset, starting at 1.
    pub offset: u64,
    /// The channel's history epoch; changes only when history is lost or reset.
    pub epoch: Arc<str>,
    /// Idempotency key given by the publisher, or a generated one.
    pub id: String,
    /// Event name.
    #[serde(rename = "event")]
    pub name: String,
    /// JSON payload.
    pub data: Box<RawValue>,
    /// Commit time, RFC 3339 with milliseconds.
    #[serde(serialize_with = "serialize_time")]
    pub time: i64,
    /// Node-wide commit sequence (monotonic across channels); internal.
    #[serde(skip)]
    pub seq: u64,
    /// Numeric id of the channel in the store; internal.
    #[serde(skip)]
    pub channel_id: u64,
    /// The state change it made (set on live events only; history does not keep it).
    #[serde(skip)]
    pub state: Option<StateChange>,
}

/// Milliseconds since the UNIX epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn serialize_time<S: serde::Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_time(*ms))
}

/// Formats milliseconds since the UNIX epoch as RFC 3339 UTC (`2026-11-23T04:00:00.000Z`).
pub fn format_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Event names starting with this are Herald's own notices (`herald:gap`, `herald:disconnect`), sent by the
/// transports and never stored: a publisher may not use the prefix, so clients can trust such events.
pub const RESERVED_PREFIX: &str = "herald:";

/// Number of per-transport encodings an event can cache.
const ENCODING_SLOTS: usize = 10;

/// Identifies one wire encoding of an event (Socket.IO packet, WebSocket envelope, SSE record…).
#[derive(Debug, Clone, Copy)]
pub struct EncodingSlot(pub usize);

/// A committed event as fanned out: shared by every subscriber, each wire encoding computed at most once.
pub struct SharedEvent {
    /// The event itself.
    pub event: Event,
    /// One cached encoding per slot; the type is the transport's own (e.g. a shared WebSocket frame).
    encodings: [OnceLock<Box<dyn Any + Send + Sync>>; ENCODING_SLOTS],
}

impl std::fmt::Debug for SharedEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedEvent")
            .field("event", &self.event)
            .finish_non_exhaustive()
    }
}

impl SharedEvent {
    /// Wraps a committed event for fan-out.
    pub fn new(event: Event) -> Arc<Self> {
        Arc::new(Self {
            event,
            encodings: Default::default(),
        })
    }

    /// Encoding `slot`, computed by `encode` on first use and cloned (cheaply, for refcounted types) afterwards.
    pub fn encoded<T: Clone + Send + Sync + 'static>(
        &self,
        slot: EncodingSlot,
        encode: impl FnOnce(&Event) -> T,
    ) -> T {
        let cell = &self.encodings[slot.0];
        if let Some(t) = cell.get().and_then(|b| b.downcast_ref::<T>()) {
            return t.clone();
        }
        let value = encode(&self.event);
        // Losing a race to another thread only costs one extra encoding.
        let _ = cell.set(Box::new(value.clone()));
        value
    }
}

/// What a publish returns for one event.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PublishResult {
    /// Channel published to.
    pub channel: ChannelName,
    /// Offset assigned (or the original one for a duplicate).
    pub offset: u64,
    /// Channel epoch.
    pub epoch: Arc<str>,
    /// Event id.
    pub id: String,
    /// True when the id was seen before and nothing new was written.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_time() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_time(1_795_000_000_123), "2026-11-18T11:06:40.123Z");
        assert_eq!(format_time(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
