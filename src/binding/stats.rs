//! What the bindings count, as plain atomics (`crate::metrics` renders them): channel events written to
//! connections by transport, the bytes of them, the lag from commit to the connection's socket, slow consumers,
//! and resumes by outcome with the events they replayed.
//!
//! Deliveries are counted per event and connection with one relaxed atomic add (the fan-out thread is the main
//! writer, so the line rarely moves between cores); bytes and lag per write batch of a connection's writer.

use crate::core::stats::{Buckets, Counter, Histogram};
use crate::registry::Transport;

/// A counter per transport, indexed by [`Transport`].
pub type PerTransport = [Counter; 3];

/// Channel events (live and replayed) queued on connections, by transport (`herald_deliveries_total`).
pub static DELIVERIES: PerTransport = [const { Counter::new() }; 3];

/// Bytes written to connections' sockets, by transport (`herald_written_bytes_total`).
pub static WRITTEN_BYTES: PerTransport = [const { Counter::new() }; 3];

/// Connections closed for falling behind by more than their queue bound, by transport
/// (`herald_slow_consumers_total`).
pub static SLOW_CONSUMERS: PerTransport = [const { Counter::new() }; 3];

/// Events replayed from history to resuming or catching-up subscriptions (`herald_replayed_events_total`).
pub static REPLAYED: Counter = Counter::new();

/// Lag buckets: 100 µs to 10 s, in nanoseconds.
const LAG: Buckets = crate::core::stats::SECONDS;

/// From an event's commit to the write of the batch holding it on a connection's socket, for live events: the
/// oldest live event of each write batch (Socket.IO: the first one queued since the last write), to the
/// millisecond of the event's commit time (`herald_delivery_lag_seconds`).
pub static DELIVERY_LAG: Histogram = Histogram::new(&LAG);

/// How a subscription with a cursor (a resume) started: the `outcome` label of `herald_resumes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// Every missed event was replayed from history (or none was missed).
    Recovered,
    /// Some were lost (trimmed history or a new epoch): a gap notice was sent.
    Gap,
    /// A state channel sent its snapshot instead.
    Snapshot,
}

impl Resume {
    /// Every outcome, in label order.
    pub const ALL: [Resume; 3] = [Resume::Recovered, Resume::Gap, Resume::Snapshot];

    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            Resume::Recovered => "recovered",
            Resume::Gap => "gap",
            Resume::Snapshot => "snapshot",
        }
    }
}

/// Subscriptions made with a cursor, by outcome (`herald_resumes_total`).
pub static RESUMES: [Counter; 3] = [const { Counter::new() }; 3];

/// Counts one resume.
pub fn resumed(outcome: Resume) {
    RESUMES[outcome as usize].inc();
}

/// Counts one event queued on a connection of `transport`.
#[inline]
pub fn delivered(transport: Transport) {
    DELIVERIES[transport as usize].inc();
}

/// Records the lag of a write batch whose oldest live event committed at `committed` (ms since the UNIX epoch).
pub fn written_live(committed: i64) {
    let lag_ms = crate::core::event::now_ms()
        .saturating_sub(committed)
        .max(0);
    DELIVERY_LAG.observe(u64::try_from(lag_ms).unwrap_or(0).saturating_mul(1_000_000));
}
