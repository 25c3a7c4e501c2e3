//! Socket.IO sessions: the durable record of a session's subscriptions and the cursor its packets carry.
//!
//! A session remembers, per channel, where its subscription started in the node-wide commit order. With that,
//! the single cursor a client hands back (the last event it saw, on any channel) is enough to work out, for every
//! channel of the session, the last offset the client has: live events reach a session in commit order, and
//! replays happen at recorded positions. The record changes only on subscribe, unsubscribe and reconnect —
//! never per event — and is stored before any cursor that refers to it is sent.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::core::channel::ChannelName;
use crate::core::engine::{ChannelInfo, Engine, EngineError};
use crate::core::event::Event;
use crate::core::gap::{Gap, GapReason};

/// One channel of a session.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    /// Channel name.
    pub channel: String,
    /// Epoch when subscribed (empty if the channel did not exist yet).
    pub epoch: String,
    /// Last offset the subscriber had when this entry was (re)registered.
    pub since: u64,
    /// Commit sequence at which the subscription was registered.
    pub seq: u64,
    /// Order of registration within the session (breaks ties between entries registered at one `seq`).
    pub k: u64,
}

/// Everything needed to resume a session after a disconnect or a restart.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SessionRecord {
    /// Socket id shown to the client; kept across recovery.
    pub sid: String,
    /// Next registration number.
    pub next_k: u64,
    /// Subscribed channels, in registration order.
    pub channels: Vec<Entry>,
    /// The authenticated user the session belongs to; only that user can resume it.
    #[serde(default)]
    pub user: Option<String>,
}

/// The position of one delivered event, as carried back by a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    /// A live event: commit sequence, channel id and offset.
    Live {
        seq: u64,
        channel_id: u64,
        offset: u64,
    },
    /// A replayed event: the entry's registration (`seq`, `k`) and the event's offset.
    Replay { seq: u64, k: u64, offset: u64 },
}

impl Cursor {
    /// The cursor of a live event.
    pub fn live(event: &Event) -> Self {
        Cursor::Live {
            seq: event.seq,
            channel_id: event.channel_id,
            offset: event.offset,
        }
    }

    /// Parses the text form; `None` for anything malformed.
    pub fn parse(text: &str) -> Option<Self> {
        let (kind, rest) = text.split_at_checked(1)?;
        let mut parts = rest.split('.').map(|p| p.parse::<u64>().ok());
        let (a, b, c) = (parts.next()??, parts.next()??, parts.next()??);
        if parts.next().is_some() {
            return None;
        }
        match kind {
            "L" => Some(Cursor::Live {
                seq: a,
                channel_id: b,
                offset: c,
            }),
            "R" => Some(Cursor::Replay {
                seq: a,
                k: b,
                offset: c,
            }),
            _ => None,
        }
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cursor::Live {
                seq,
                channel_id,
                offset,
            } => write!(f, "L{seq}.{channel_id}.{offset}"),
            Cursor::Replay { seq, k, offset } => write!(f, "R{seq}.{k}.{offset}"),
        }
    }
}

/// Where to resume one channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Resume {
    /// Channel.
    pub channel: ChannelName,
    /// Last offset the subscriber has; replay starts after it.
    pub after: u64,
    /// Set when events were lost.
    pub gap: Option<Gap>,
}

/// What the client is known to have, for one entry.
enum Has {
    /// Everything up to `since` (the entry's start) plus offsets through this one.
    Through(u64),
    /// Every event committed at or before this sequence (and, if known, exactly this offset on the channel).
    UpToSeq(u64, Option<u64>),
}

/// Computes, for every channel of `record`, the last offset the client has, given its cursor.
pub async fn resume_points(
    engine: &dyn Engine,
    record: &SessionRecord,
    cursor: Option<Cursor>,
) -> Result<Vec<Resume>, EngineError> {
    let mut out = Vec::with_capacity(record.channels.len());
    for entry in &record.channels {
        let Ok(channel) = ChannelName::new(&entry.channel) else {
            continue;
        };
        let Some(info) = engine.channel(&channel).await? else {
            out.push(Resume {
                channel,
                after: entry.since,
                gap: None,
            });
            continue;
        };
        if !entry.epoch.is_empty() && *entry.epoch != *info.epoch {
            let gap = gap_before(&info, GapReason::EpochChanged, None);
            out.push(Resume {
                channel,
                after: info.first_offset - 1,
                gap,
            });
            continue;
        }
        let has = match cursor {
            Some(Cursor::Live {
                seq,
                channel_id,
                offset,
            }) if seq > entry.seq => Has::UpToSeq(seq, (channel_id == info.id).then_some(offset)),
            Some(Cursor::Replay { seq, k, offset }) if (entry.seq, entry.k) == (seq, k) => {
                Has::Through(offset)
            }
            Some(Cursor::Replay { seq, k, .. }) if (entry.seq, entry.k) < (seq, k) => {
                Has::UpToSeq(seq, None)
            }
            _ => Has::Through(entry.since),
        };
        let resume = match has {
            Has::Through(after) if after.saturating_add(1) < info.first_offset => Resume {
                gap: gap_before(
                    &info,
                    GapReason::HistoryTrimmed,
                    Some(after.saturating_add(1)),
                ),
                after: info.first_offset - 1,
                channel,
            },
            Has::Through(after) => Resume {
                channel,
                after,
                gap: None,
            },
            Has::UpToSeq(seq, own) if info.trimmed_seq > seq => Resume {
                gap: gap_before(
                    &info,
                    GapReason::HistoryTrimmed,
                    own.map(|o| o.saturating_add(1)),
                ),
                after: info.first_offset - 1,
                channel,
            },
            Has::UpToSeq(seq, own) => {
                let after = match own {
                    Some(o) => o,
                    None => engine
                        .last_offset_at(info.id, seq)
                        .await?
                        .unwrap_or(0)
                        .max(info.first_offset - 1),
                };
                Resume {
                    channel,
                    after: after.max(entry.since),
                    gap: None,
                }
            }
        };
        out.push(resume);
    }
    Ok(out)
}

fn gap_before(info: &ChannelInfo, reason: GapReason, from: Option<u64>) -> Option<Gap> {
    let to = info.first_offset - 1;
    if from.is_some_and(|f| f > to) {
        return None;
    }
    Some(Gap {
        channel: info.channel.clone(),
        reason,
        epoch: info.epoch.clone(),
        from: from.or((reason == GapReason::EpochChanged).then_some(1)),
        to: Some(to),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips() {
        for c in [
            Cursor::Live {
                seq: 12,
                channel_id: 3,
                offset: 7,
            },
            Cursor::Replay {
                seq: 9,
                k: 2,
                offset: 1,
            },
        ] {
            assert_eq!(Cursor::parse(&c.to_string()), Some(c));
        }
        for bad in ["", "L", "L1.2", "X1.2.3", "L1.2.3.4", "Lx.2.3", "L-1.2.3"] {
            assert_eq!(Cursor::parse(bad), None, "{bad}");
        }
    }
}
