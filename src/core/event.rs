//! Events: what publishers send, what the store assigns, and the shared form fanned out to subscribers.

use std::any::Any;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::value::RawValue;

use super::channel::ChannelName;
use super::state::StateChange;

/// Event name of the status notices a source publishes on its channels when it fails and recovers
/// (`{"status":"error"|"ok",…}`); bindings that translate them for their wire know it by this name.
pub const SOURCE_STATUS_EVENT: &str = "source:status";

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

/// Most per-transport encodings an event can cache (slots registered by all bindings together: 9 today, and this
/// module's unit tests register 2 more in the same test process, which also starts servers).
pub const ENCODING_SLOTS: usize = 12;

/// Every binding's slots take their index from here.
static SLOTS: SlotRegistry = SlotRegistry::new(ENCODING_SLOTS);

/// More encoding slots were registered than an event has room for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{wanted} event encoding slots registered, but an event caches at most {capacity}: raise ENCODING_SLOTS"
)]
pub struct SlotError {
    /// Slots asked for so far, the refused one included.
    pub wanted: usize,
    /// Slots available.
    pub capacity: usize,
}

/// Hands out slot indices once each, up to a capacity.
pub struct SlotRegistry {
    next: AtomicUsize,
    capacity: usize,
}

impl SlotRegistry {
    /// A registry of `capacity` slots, none taken.
    pub const fn new(capacity: usize) -> Self {
        Self {
            next: AtomicUsize::new(0),
            capacity,
        }
    }

    /// Takes the next free index.
    pub fn allocate(&self) -> Result<usize, SlotError> {
        self.next
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.capacity).then_some(n + 1)
            })
            .map_err(|n| SlotError {
                wanted: n + 1,
                capacity: self.capacity,
            })
    }
}

/// One wire encoding of every event (a Socket.IO packet, a WebSocket envelope, an SSE record…), holding values
/// of type `T`. A binding declares each of its encodings as a `static` and registers it at start-up
/// ([`EncodingSlot::register`]); each static gets an index of its own, so two encodings never share a cache
/// entry, and the type parameter fixes what the entry holds.
pub struct EncodingSlot<T> {
    /// The index, once allocated (or why there is none: encodings are then computed per use).
    index: OnceLock<Result<usize, SlotError>>,
    _holds: PhantomData<fn() -> T>,
}

impl<T> EncodingSlot<T> {
    /// A slot, its index allocated on registration (or first use).
    pub const fn new() -> Self {
        Self {
            index: OnceLock::new(),
            _holds: PhantomData,
        }
    }

    /// Allocates this slot's index if it has none yet; an error says the event cache is too small.
    pub fn register(&self) -> Result<(), SlotError> {
        self.index
            .get_or_init(|| SLOTS.allocate())
            .clone()
            .map(drop)
    }

    /// The slot's index; allocated now if the binding did not register it (only on the first use: a plain
    /// atomic load afterwards).
    fn index(&self) -> Option<usize> {
        let index = self.index.get_or_init(|| {
            SLOTS.allocate().inspect_err(
                |e| tracing::error!(error = %e, "an event encoding will not be shared"),
            )
        });
        index.as_ref().ok().copied()
    }
}

impl<T> Default for EncodingSlot<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// A committed event as fanned out: shared by every subscriber, each wire encoding computed at most once.
pub struct SharedEvent {
    /// The event itself.
    pub event: Event,
    /// One cached encoding per slot; the type is the slot's own (e.g. a shared WebSocket frame).
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
        slot: &EncodingSlot<T>,
        encode: impl FnOnce(&Event) -> T,
    ) -> T {
        let Some(cell) = slot.index().and_then(|i| self.encodings.get(i)) else {
            return encode(&self.event);
        };
        // Only this slot's `T` is ever stored in its cell.
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

    #[test]
    fn registries_hand_out_distinct_slots_up_to_their_capacity() {
        let registry = SlotRegistry::new(3);
        let taken: Vec<usize> = (0..3).map(|_| registry.allocate().unwrap()).collect();
        assert_eq!(taken, vec![0, 1, 2]);
        let refused = registry.allocate().unwrap_err();
        assert_eq!(
            refused,
            SlotError {
                wanted: 4,
                capacity: 3
            }
        );
        assert!(refused.to_string().contains("at most 3"), "{refused}");
        // Still full: a refusal takes nothing.
        assert!(registry.allocate().is_err());
    }

    #[test]
    fn a_slot_caches_its_own_encoding_once() {
        static TEXT: EncodingSlot<String> = EncodingSlot::new();
        TEXT.register().unwrap();
        // Registering again keeps the slot's index.
        let index = TEXT.index();
        TEXT.register().unwrap();
        assert_eq!(TEXT.index(), index);
        static OTHER: EncodingSlot<u64> = EncodingSlot::new();
        OTHER.register().unwrap();
        assert_ne!(OTHER.index(), index, "each static has a slot of its own");
        let event = SharedEvent::new(Event {
            channel: ChannelName::new("c").unwrap(),
            offset: 1,
            epoch: Arc::from("e"),
            id: "i".into(),
            name: "n".into(),
            data: RawValue::from_string("1".into()).unwrap(),
            time: 0,
            seq: 1,
            channel_id: 1,
            state: None,
        });
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let encode = |e: &Event| {
            calls.fetch_add(1, Ordering::Relaxed);
            format!("{}:{}", e.name, e.offset)
        };
        assert_eq!(event.encoded(&TEXT, encode), "n:1");
        assert_eq!(event.encoded(&TEXT, encode), "n:1");
        assert_eq!(
            calls.load(Ordering::Relaxed),
            1,
            "encoded once, then shared"
        );
    }
}
