//! Gaps: events a subscriber missed and will never get, and why.

use std::sync::Arc;

use serde::Serialize;

use super::channel::ChannelName;

/// Why part of a channel's history could not be delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GapReason {
    /// Retention removed events the subscriber had not received.
    HistoryTrimmed,
    /// The channel's history was reset; offsets from the old epoch mean nothing now.
    EpochChanged,
    /// The session was unknown or expired, so what was missed cannot be known.
    SessionUnknown,
}

/// Events a subscriber missed and will never get.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Gap {
    /// Channel concerned.
    pub channel: ChannelName,
    /// Why.
    pub reason: GapReason,
    /// The channel's current epoch.
    pub epoch: Arc<str>,
    /// First missing offset, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<u64>,
    /// Last missing offset, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<u64>,
}
