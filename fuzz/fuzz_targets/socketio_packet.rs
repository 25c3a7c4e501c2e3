//! Socket.IO v5 packets (`socketio::packet::decode`), as they arrive after the Engine.IO `4`.
//!
//! Invariants: no panic; accepted packets satisfy the reference decoder's rules (namespace starts with `/` and
//! has no `,`, at most `MAX_ATTACHMENTS` attachments and only on binary types, payload shape per type, no
//! reserved event names); and the server's encoders round-trip them: EVENT/BINARY_EVENT with a string name
//! through `event_text`, ACK/BINARY_ACK with an id through `ack_text`, DISCONNECT through `disconnect_text`.
#![no_main]

use herald::transport::socketio::packet::{
    MAX_ATTACHMENTS, PacketKind, RESERVED_EVENTS, ack_text, decode, disconnect_text, event_text,
};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// JSON equality, with floats compared to a relative 1e-15: serde_json's default float parser is best-effort,
/// so a float may come back one ULP away after a print/parse cycle (not a Herald bug).
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if x.is_f64() || y.is_f64() {
                let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
                x == y || ((x - y).abs() <= 1e-15 * x.abs().max(y.abs()))
            } else {
                x == y
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(p) = decode(s) else { return };

    assert!(p.namespace.starts_with('/'), "namespace {:?}", p.namespace);
    assert!(!p.namespace.contains(','), "namespace {:?}", p.namespace);
    assert!(p.attachments <= MAX_ATTACHMENTS);
    let binary = matches!(p.kind, PacketKind::BinaryEvent | PacketKind::BinaryAck);
    assert!(binary || p.attachments == 0);
    match (p.kind, &p.data) {
        (PacketKind::Connect, d) => assert!(matches!(d, None | Some(Value::Object(_)))),
        (PacketKind::Disconnect, d) => assert!(d.is_none()),
        (PacketKind::ConnectError, d) => {
            assert!(matches!(d, Some(Value::String(_) | Value::Object(_))))
        }
        (PacketKind::Event | PacketKind::BinaryEvent, Some(Value::Array(items))) => {
            match items.first() {
                Some(Value::String(name)) => assert!(!RESERVED_EVENTS.contains(&name.as_str())),
                Some(Value::Number(_)) => {}
                other => panic!("event name {other:?}"),
            }
        }
        (PacketKind::Event | PacketKind::BinaryEvent, d) => panic!("event payload {d:?}"),
        (PacketKind::Ack | PacketKind::BinaryAck, d) => {
            assert!(matches!(d, None | Some(Value::Array(_))))
        }
    }

    // Re-encode with the server's encoders (they emit the Engine.IO `4` first) and decode again.
    let encoded = match (p.kind, &p.data, p.ack_id) {
        (PacketKind::Event | PacketKind::BinaryEvent, Some(Value::Array(items)), ack) => {
            let Some(Value::String(name)) = items.first() else {
                return;
            };
            event_text(&p.namespace, name, &items[1..], p.attachments, ack)
        }
        (PacketKind::Ack | PacketKind::BinaryAck, Some(Value::Array(items)), Some(id)) => {
            ack_text(&p.namespace, id, items, p.attachments)
        }
        (PacketKind::Disconnect, None, None) => disconnect_text(&p.namespace),
        _ => return,
    };
    let text = encoded.as_str();
    assert!(text.starts_with('4'), "{text:?}");
    let q =
        decode(&text[1..]).unwrap_or_else(|e| panic!("re-encoded {text:?} of {s:?} fails: {e}"));
    // `50-[...]` (BINARY_EVENT with zero attachments) is re-encoded as a plain EVENT.
    let kind = |k: PacketKind, n: usize| match (k, n) {
        (PacketKind::BinaryEvent, 0) => PacketKind::Event,
        (PacketKind::BinaryAck, 0) => PacketKind::Ack,
        (k, _) => k,
    };
    assert_eq!(
        kind(q.kind, q.attachments),
        kind(p.kind, p.attachments),
        "{s:?} -> {text:?}"
    );
    assert_eq!(q.namespace, p.namespace, "{s:?} -> {text:?}");
    assert_eq!(q.ack_id, p.ack_id, "{s:?} -> {text:?}");
    assert_eq!(q.attachments, p.attachments, "{s:?} -> {text:?}");
    match (&q.data, &p.data) {
        (Some(a), Some(b)) => assert!(json_eq(a, b), "{s:?} -> {text:?}"),
        (a, b) => assert_eq!(a, b, "{s:?} -> {text:?}"),
    }
});
