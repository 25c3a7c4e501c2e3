//! Engine.IO v4 packets: the one-character packet types, WebSocket framing and the
//! long-polling payload framing (`\x1e`-separated records, binary as `b` + base64).

use axum::extract::ws::Utf8Bytes;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::{BufMut, Bytes, BytesMut};

/// Record separator between packets of one long-polling payload.
pub const SEPARATOR: u8 = 0x1e;

/// An application message carried by an Engine.IO `message` packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Text message, without the leading `4`.
    Text(Utf8Bytes),
    /// Binary message (a WebSocket binary frame, or a `b…` polling record).
    Binary(Bytes),
}

/// A decoded inbound Engine.IO packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// `0`: only servers send it; a client sending it is ignored.
    Open,
    /// `1`: the peer closes the session.
    Close,
    /// `2` with optional data (`2probe` during an upgrade).
    Ping(Utf8Bytes),
    /// `3` with optional data (`3probe` during an upgrade).
    Pong(Utf8Bytes),
    /// `4…` or a binary frame.
    Message(Message),
    /// `5`: completes a transport upgrade.
    Upgrade,
    /// `6`: no-op.
    Noop,
}

/// An outbound frame: either a complete Engine.IO text packet (type character included)
/// or a binary message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A full text packet, e.g. `4hello`, `2`, `40{"sid":"…"}`.
    Text(Utf8Bytes),
    /// A binary message: a WS binary frame, or `b` + base64 over polling.
    Binary(Bytes),
}

impl Frame {
    /// Bytes this frame counts against the session's outbound queue bound.
    pub fn weight(&self) -> usize {
        match self {
            Frame::Text(t) => t.len(),
            Frame::Binary(b) => b.len(),
        }
    }

    /// A frame for a control packet without data (`1`, `2`, `6`, …).
    pub const fn control(text: &'static str) -> Frame {
        Frame::Text(Utf8Bytes::from_static(text))
    }
}

/// Why an inbound packet could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Empty text packet.
    #[error("empty packet")]
    Empty,
    /// Type character is not 0–6.
    #[error("unknown packet type {0:?}")]
    UnknownType(char),
    /// A `b…` polling record is not valid base64.
    #[error("invalid base64 in binary record")]
    Base64,
    /// A polling payload is not UTF-8.
    #[error("payload is not UTF-8")]
    Utf8,
}

/// Decodes one text packet (a WS text frame or one polling record that is not `b…`).
pub fn decode_text(text: Utf8Bytes) -> Result<Packet, DecodeError> {
    let first = *text.as_bytes().first().ok_or(DecodeError::Empty)?;
    let rest = || {
        let bytes = Bytes::from(text.clone()).slice(1..);
        // Slicing after an ASCII type byte keeps the UTF-8 valid; the fallback never runs.
        Utf8Bytes::try_from(bytes).unwrap_or_default()
    };
    Ok(match first {
        b'0' => Packet::Open,
        b'1' => Packet::Close,
        b'2' => Packet::Ping(rest()),
        b'3' => Packet::Pong(rest()),
        b'4' => Packet::Message(Message::Text(rest())),
        b'5' => Packet::Upgrade,
        b'6' => Packet::Noop,
        _ => {
            let c = text.chars().next().unwrap_or('?');
            return Err(DecodeError::UnknownType(c));
        }
    })
}

/// Decodes a long-polling POST body into packets; any bad record fails the whole payload.
pub fn decode_payload(body: Bytes) -> Result<Vec<Packet>, DecodeError> {
    if std::str::from_utf8(&body).is_err() {
        return Err(DecodeError::Utf8);
    }
    let mut packets = Vec::new();
    let mut start = 0;
    for end in memchr_iter(&body).chain(std::iter::once(body.len())) {
        let record = body.slice(start..end);
        start = end + 1;
        if record.first() == Some(&b'b') {
            let data = BASE64
                .decode(&record[1..])
                .map_err(|_| DecodeError::Base64)?;
            packets.push(Packet::Message(Message::Binary(Bytes::from(data))));
        } else {
            // Splitting at an ASCII separator keeps every record valid UTF-8.
            let text = Utf8Bytes::try_from(record).map_err(|_| DecodeError::Utf8)?;
            packets.push(decode_text(text)?);
        }
    }
    Ok(packets)
}

fn memchr_iter(body: &[u8]) -> impl Iterator<Item = usize> + '_ {
    body.iter()
        .enumerate()
        .filter(|(_, b)| **b == SEPARATOR)
        .map(|(i, _)| i)
}

/// Encodes frames as one long-polling response body. A single text frame is returned
/// without copying (its bytes are shared).
pub fn encode_payload(frames: &[Frame]) -> Bytes {
    if let [Frame::Text(t)] = frames {
        return Bytes::from(t.clone());
    }
    let len: usize = frames
        .iter()
        .map(|f| match f {
            Frame::Text(t) => t.len() + 1,
            Frame::Binary(b) => b.len().div_ceil(3) * 4 + 2,
        })
        .sum();
    let mut out = BytesMut::with_capacity(len);
    for (i, frame) in frames.iter().enumerate() {
        if i > 0 {
            out.put_u8(SEPARATOR);
        }
        match frame {
            Frame::Text(t) => out.put_slice(t.as_bytes()),
            Frame::Binary(b) => {
                out.put_u8(b'b');
                out.put_slice(BASE64.encode(b).as_bytes());
            }
        }
    }
    out.freeze()
}

/// Builds the `message` text frame `4<text>` (copies `text` once).
pub fn message_frame(text: &str) -> Frame {
    let mut s = String::with_capacity(text.len() + 1);
    s.push('4');
    s.push_str(text);
    Frame::Text(Utf8Bytes::from(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Utf8Bytes {
        Utf8Bytes::from(s)
    }

    #[test]
    fn decodes_text_packets() {
        assert_eq!(decode_text(text("1")), Ok(Packet::Close));
        assert_eq!(decode_text(text("2probe")), Ok(Packet::Ping(text("probe"))));
        assert_eq!(decode_text(text("3")), Ok(Packet::Pong(text(""))));
        assert_eq!(
            decode_text(text("4héllo")),
            Ok(Packet::Message(Message::Text(text("héllo"))))
        );
        assert_eq!(decode_text(text("5")), Ok(Packet::Upgrade));
        assert_eq!(decode_text(text("6")), Ok(Packet::Noop));
        assert_eq!(decode_text(text("")), Err(DecodeError::Empty));
        assert_eq!(decode_text(text("abc")), Err(DecodeError::UnknownType('a')));
        assert_eq!(decode_text(text("7")), Err(DecodeError::UnknownType('7')));
    }

    #[test]
    fn decodes_polling_payloads() {
        let p = decode_payload(Bytes::from_static(b"4hello\x1ebAQIDBA==\x1e3")).unwrap();
        assert_eq!(
            p,
            vec![
                Packet::Message(Message::Text(text("hello"))),
                Packet::Message(Message::Binary(Bytes::from_static(&[1, 2, 3, 4]))),
                Packet::Pong(text("")),
            ]
        );
        assert!(decode_payload(Bytes::from_static(b"abc")).is_err());
        assert!(decode_payload(Bytes::from_static(b"4a\x1e")).is_err());
        assert!(decode_payload(Bytes::from_static(b"b!!")).is_err());
        assert!(decode_payload(Bytes::from_static(b"4\xff")).is_err());
    }

    #[test]
    fn encodes_polling_payloads() {
        let frames = [
            message_frame("hello"),
            Frame::Binary(Bytes::from_static(&[1, 2, 3, 4])),
            Frame::control("2"),
        ];
        assert_eq!(&encode_payload(&frames)[..], b"4hello\x1ebAQIDBA==\x1e2");
        assert_eq!(&encode_payload(&[Frame::control("6")])[..], b"6");
    }
}
