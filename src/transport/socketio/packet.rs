//! Socket.IO v5 packet codec: `<type>[<#attachments>-][<nsp>,][<ackId>][JSON]`, with the
//! reference decoder's validation (`socket.io-parser` `isPayloadValid`, max 10 attachments).
//! Encoders produce complete Engine.IO frames (the `4` message prefix included).

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::transport::engineio::Frame;

/// The reference decoder's default `maxAttachments`.
pub const MAX_ATTACHMENTS: usize = 10;

/// Event names the Socket.IO client reserves: a client may not emit them, and Herald does not deliver them.
pub const RESERVED_EVENTS: [&str; 6] = [
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// Socket.IO packet types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind {
    /// 0
    Connect,
    /// 1
    Disconnect,
    /// 2
    Event,
    /// 3
    Ack,
    /// 4
    ConnectError,
    /// 5
    BinaryEvent,
    /// 6
    BinaryAck,
}

impl PacketKind {
    fn from_byte(b: u8) -> Option<PacketKind> {
        Some(match b {
            b'0' => PacketKind::Connect,
            b'1' => PacketKind::Disconnect,
            b'2' => PacketKind::Event,
            b'3' => PacketKind::Ack,
            b'4' => PacketKind::ConnectError,
            b'5' => PacketKind::BinaryEvent,
            b'6' => PacketKind::BinaryAck,
            _ => return None,
        })
    }

    fn is_binary(self) -> bool {
        matches!(self, PacketKind::BinaryEvent | PacketKind::BinaryAck)
    }
}

/// A decoded packet (binary attachments, if any, follow as separate messages).
#[derive(Debug, Clone, PartialEq)]
pub struct Packet {
    /// Packet type.
    pub kind: PacketKind,
    /// Namespace, `/` when absent.
    pub namespace: String,
    /// Ack id, if any.
    pub ack_id: Option<u64>,
    /// Number of binary attachments that follow.
    pub attachments: usize,
    /// The JSON payload, if any.
    pub data: Option<Value>,
}

/// Why a packet was rejected; the connection is closed for any of them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Unknown packet type.
    #[error("unknown packet type")]
    UnknownType,
    /// Attachment count missing or malformed.
    #[error("illegal attachments")]
    IllegalAttachments,
    /// More than [`MAX_ATTACHMENTS`].
    #[error("too many attachments")]
    TooManyAttachments,
    /// Ack id out of range.
    #[error("invalid ack id")]
    InvalidAckId,
    /// Payload not JSON or not of the shape the type requires.
    #[error("invalid payload")]
    InvalidPayload,
}

/// Decodes one text packet (the Engine.IO message, without its `4`).
pub fn decode(s: &str) -> Result<Packet, ParseError> {
    let b = s.as_bytes();
    let kind = b
        .first()
        .and_then(|c| PacketKind::from_byte(*c))
        .ok_or(ParseError::UnknownType)?;
    let mut i = 1;
    let mut attachments = 0;
    if kind.is_binary() {
        let dash = s[i..].find('-').ok_or(ParseError::IllegalAttachments)?;
        let digits = &s[i..i + dash];
        if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
            return Err(ParseError::IllegalAttachments);
        }
        attachments = digits
            .parse::<usize>()
            .map_err(|_| ParseError::TooManyAttachments)?;
        if attachments > MAX_ATTACHMENTS {
            return Err(ParseError::TooManyAttachments);
        }
        i += dash + 1;
    }
    let mut namespace = "/";
    if b.get(i) == Some(&b'/') {
        let end = s[i..].find(',').map_or(s.len(), |e| i + e);
        namespace = &s[i..end];
        i = (end + 1).min(s.len());
    }
    let start = i;
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    let ack_id = if i > start {
        Some(s[start..i].parse().map_err(|_| ParseError::InvalidAckId)?)
    } else {
        None
    };
    let data = if i < s.len() {
        Some(serde_json::from_str::<Value>(&s[i..]).map_err(|_| ParseError::InvalidPayload)?)
    } else {
        None
    };
    if !payload_valid(kind, data.as_ref()) {
        return Err(ParseError::InvalidPayload);
    }
    Ok(Packet {
        kind,
        namespace: namespace.to_owned(),
        ack_id,
        attachments,
        data,
    })
}

fn payload_valid(kind: PacketKind, data: Option<&Value>) -> bool {
    match kind {
        PacketKind::Connect => matches!(data, None | Some(Value::Object(_))),
        PacketKind::Disconnect => data.is_none(),
        PacketKind::ConnectError => matches!(data, Some(Value::String(_) | Value::Object(_))),
        PacketKind::Event | PacketKind::BinaryEvent => match data {
            Some(Value::Array(items)) => match items.first() {
                Some(Value::Number(_)) => true,
                Some(Value::String(name)) => !RESERVED_EVENTS.contains(&name.as_str()),
                _ => false,
            },
            _ => false,
        },
        // An ACK without payload passes the reference decoder (it only validates present payloads).
        PacketKind::Ack | PacketKind::BinaryAck => matches!(data, None | Some(Value::Array(_))),
    }
}

/// Writes the packet header after the Engine.IO `4`.
fn header(out: &mut Vec<u8>, kind: u8, attachments: usize, namespace: &str, ack: Option<u64>) {
    out.push(b'4');
    let binary = attachments > 0;
    out.push(match (kind, binary) {
        (b'2', true) => b'5',
        (b'3', true) => b'6',
        (k, _) => k,
    });
    if binary {
        out.extend_from_slice(attachments.to_string().as_bytes());
        out.push(b'-');
    }
    if namespace != "/" {
        out.extend_from_slice(namespace.as_bytes());
        out.push(b',');
    }
    if let Some(id) = ack {
        out.extend_from_slice(id.to_string().as_bytes());
    }
}

fn finish(out: Vec<u8>) -> Utf8Bytes {
    // Everything written is UTF-8 (str pieces and serde_json output); the fallback never runs.
    Utf8Bytes::try_from(out).unwrap_or_default()
}

/// A JSON value that can be written into an array: owned values or pre-serialised raw JSON.
pub trait JsonArg {
    /// Appends the JSON text.
    fn write_json(&self, out: &mut Vec<u8>);
}

impl JsonArg for Value {
    fn write_json(&self, out: &mut Vec<u8>) {
        // Serialising a Value into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, self);
    }
}

impl JsonArg for &RawValue {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.get().as_bytes());
    }
}

impl JsonArg for Box<RawValue> {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.get().as_bytes());
    }
}

fn json_array<A: JsonArg>(out: &mut Vec<u8>, first: Option<&str>, args: &[A]) {
    out.push(b'[');
    let mut comma = false;
    if let Some(name) = first {
        let _ = serde_json::to_writer(&mut *out, name);
        comma = true;
    }
    for arg in args {
        if comma {
            out.push(b',');
        }
        arg.write_json(out);
        comma = true;
    }
    out.push(b']');
}

/// `4` + EVENT (or BINARY_EVENT when `attachments > 0`) text.
pub fn event_text<A: JsonArg>(
    namespace: &str,
    event: &str,
    args: &[A],
    attachments: usize,
    ack: Option<u64>,
) -> Utf8Bytes {
    let mut out = Vec::with_capacity(32 + event.len() + namespace.len());
    header(&mut out, b'2', attachments, namespace, ack);
    json_array(&mut out, Some(event), args);
    finish(out)
}

/// `4` + ACK (or BINARY_ACK) text.
pub fn ack_text(namespace: &str, id: u64, args: &[Value], attachments: usize) -> Utf8Bytes {
    let mut out = Vec::with_capacity(32 + namespace.len());
    header(&mut out, b'3', attachments, namespace, Some(id));
    json_array(&mut out, None, args);
    finish(out)
}

/// `4` + CONNECT reply text: `40{ns,}{"sid":…, …extra}`.
pub fn connect_text(
    namespace: &str,
    sid: &str,
    extra: &serde_json::Map<String, Value>,
) -> Utf8Bytes {
    let mut data = serde_json::Map::with_capacity(extra.len() + 1);
    data.insert("sid".into(), Value::String(sid.into()));
    for (k, v) in extra {
        data.insert(k.clone(), v.clone());
    }
    let mut out = Vec::with_capacity(48 + namespace.len());
    header(&mut out, b'0', 0, namespace, None);
    Value::Object(data).write_json(&mut out);
    finish(out)
}

/// `4` + CONNECT_ERROR text: `44{ns,}{"message":…[,"data":…]}`.
pub fn connect_error_text(namespace: &str, message: &str, data: Option<&Value>) -> Utf8Bytes {
    let mut obj = serde_json::Map::new();
    obj.insert("message".into(), Value::String(message.into()));
    if let Some(data) = data {
        obj.insert("data".into(), data.clone());
    }
    let mut out = Vec::with_capacity(48 + namespace.len());
    header(&mut out, b'4', 0, namespace, None);
    Value::Object(obj).write_json(&mut out);
    finish(out)
}

/// `4` + DISCONNECT text: `41` or `41/ns,`.
pub fn disconnect_text(namespace: &str) -> Utf8Bytes {
    let mut out = Vec::with_capacity(4 + namespace.len());
    header(&mut out, b'1', 0, namespace, None);
    finish(out)
}

/// The text frame followed by one binary frame per attachment.
pub fn frames(text: Utf8Bytes, attachments: &[Bytes]) -> impl Iterator<Item = Frame> + '_ {
    std::iter::once(Frame::Text(text)).chain(attachments.iter().cloned().map(Frame::Binary))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decodes_valid_packets() {
        let p = decode("0").unwrap();
        assert_eq!(
            (p.kind, p.namespace.as_str(), p.data),
            (PacketKind::Connect, "/", None)
        );
        let p = decode(r#"0/admin,{"token":"123"}"#).unwrap();
        assert_eq!(p.namespace, "/admin");
        assert_eq!(p.data, Some(json!({"token":"123"})));
        let p = decode("0/random").unwrap();
        assert_eq!(p.namespace, "/random");
        let p = decode("1/custom,").unwrap();
        assert_eq!(
            (p.kind, p.namespace.as_str()),
            (PacketKind::Disconnect, "/custom")
        );
        let p = decode(r#"2456["message-with-ack",1]"#).unwrap();
        assert_eq!((p.kind, p.ack_id), (PacketKind::Event, Some(456)));
        let p = decode(r#"3/admin,13["bar"]"#).unwrap();
        assert_eq!(
            (p.kind, p.ack_id, p.namespace.as_str()),
            (PacketKind::Ack, Some(13), "/admin")
        );
        let p =
            decode(r#"52-789["m",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#)
                .unwrap();
        assert_eq!(
            (p.kind, p.attachments, p.ack_id),
            (PacketKind::BinaryEvent, 2, Some(789))
        );
        let p = decode(r#"61-/admin,1[{"_placeholder":true,"num":0}]"#).unwrap();
        assert_eq!(
            (p.kind, p.attachments, p.namespace.as_str()),
            (PacketKind::BinaryAck, 1, "/admin")
        );
        assert!(decode("2[1]").is_ok(), "numeric event names are allowed");
        assert!(decode("3").is_ok());
    }

    #[test]
    fn rejects_invalid_packets() {
        assert_eq!(decode("abc"), Err(ParseError::UnknownType));
        assert_eq!(decode("7"), Err(ParseError::UnknownType));
        assert_eq!(decode(""), Err(ParseError::UnknownType));
        assert_eq!(decode("2{}"), Err(ParseError::InvalidPayload));
        assert_eq!(
            decode(r#"2abc["message-with-ack",1]"#),
            Err(ParseError::InvalidPayload)
        );
        assert_eq!(decode("2"), Err(ParseError::InvalidPayload));
        assert_eq!(decode("2[]"), Err(ParseError::InvalidPayload));
        assert_eq!(
            decode(r#"2["disconnect"]"#),
            Err(ParseError::InvalidPayload)
        );
        assert_eq!(decode("2[{}]"), Err(ParseError::InvalidPayload));
        assert_eq!(decode("0[]"), Err(ParseError::InvalidPayload));
        assert_eq!(decode(r#"0"x""#), Err(ParseError::InvalidPayload));
        assert_eq!(decode("1{}"), Err(ParseError::InvalidPayload));
        assert_eq!(decode("3{}"), Err(ParseError::InvalidPayload));
        assert_eq!(decode(r#"5["a"]"#), Err(ParseError::IllegalAttachments));
        assert_eq!(decode(r#"5x-["a"]"#), Err(ParseError::IllegalAttachments));
        assert_eq!(decode(r#"511-["a"]"#), Err(ParseError::TooManyAttachments));
        assert_eq!(
            decode(r#"299999999999999999999999["a"]"#),
            Err(ParseError::InvalidAckId)
        );
    }

    #[test]
    fn encodes_packets() {
        let args = [json!("bar")];
        assert_eq!(
            event_text("/", "foo", &args, 0, None).as_str(),
            r#"42["foo","bar"]"#
        );
        assert_eq!(
            event_text("/admin", "foo", &args, 0, Some(12)).as_str(),
            r#"42/admin,12["foo","bar"]"#
        );
        let ph = [json!({"_placeholder":true,"num":0})];
        assert_eq!(
            event_text("/", "baz", &ph, 1, None).as_str(),
            r#"451-["baz",{"_placeholder":true,"num":0}]"#
        );
        assert_eq!(
            ack_text("/admin", 13, &args, 0).as_str(),
            r#"43/admin,13["bar"]"#
        );
        assert_eq!(
            ack_text("/", 789, &ph, 2).as_str(),
            r#"462-789[{"_placeholder":true,"num":0}]"#
        );
        assert_eq!(ack_text("/", 1, &[], 0).as_str(), "431[]");
        assert_eq!(disconnect_text("/").as_str(), "41");
        assert_eq!(disconnect_text("/admin").as_str(), "41/admin,");
        assert_eq!(
            connect_error_text("/random", "Invalid namespace", None).as_str(),
            r#"44/random,{"message":"Invalid namespace"}"#
        );
        assert_eq!(
            connect_error_text("/", "nope", Some(&json!({"a":1}))).as_str(),
            r#"44{"data":{"a":1},"message":"nope"}"#
        );
        let mut extra = serde_json::Map::new();
        extra.insert("pid".into(), json!("p1"));
        assert_eq!(
            connect_text("/", "s1", &extra).as_str(),
            r#"40{"pid":"p1","sid":"s1"}"#
        );
        let raw = RawValue::from_string(r#"{"x": 1}"#.into()).unwrap();
        assert_eq!(
            event_text("/", "ev", &[raw.as_ref(), raw.as_ref()], 0, None).as_str(),
            r#"42["ev",{"x": 1},{"x": 1}]"#
        );
    }
}
