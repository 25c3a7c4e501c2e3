//! Engine.IO long-polling payloads (`decode_payload`): `\x1e`-separated records, binary as `b` + base64.
//!
//! Invariants: no panic; non-UTF-8 bodies are refused as such; a decoded payload has one packet per record;
//! `decode(encode(decode(x))) == decode(x)`; and when no record carries data the encoder drops (trailing text
//! after `0`, `1`, `5`, `6`), `encode(decode(x))` is byte-identical to `x`.
#![no_main]

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use herald::transport::engineio::{
    DecodeError, Frame, Message, Packet, decode_payload, encode_payload,
};
use libfuzzer_sys::fuzz_target;

fn frame_of(p: &Packet) -> Frame {
    let text = |prefix: &str, d: &Utf8Bytes| {
        Frame::Text(Utf8Bytes::from(format!("{prefix}{}", d.as_str())))
    };
    match p {
        Packet::Open => Frame::control("0"),
        Packet::Close => Frame::control("1"),
        Packet::Ping(d) => text("2", d),
        Packet::Pong(d) => text("3", d),
        Packet::Message(Message::Text(t)) => text("4", t),
        Packet::Message(Message::Binary(b)) => Frame::Binary(b.clone()),
        Packet::Upgrade => Frame::control("5"),
        Packet::Noop => Frame::control("6"),
    }
}

fuzz_target!(|data: &[u8]| {
    let body = Bytes::copy_from_slice(data);
    let result = decode_payload(body);
    let utf8 = std::str::from_utf8(data).is_ok();
    if !utf8 {
        assert_eq!(result, Err(DecodeError::Utf8));
        return;
    }
    let Ok(packets) = result else { return };
    let records: Vec<&[u8]> = data.split(|b| *b == 0x1e).collect();
    assert_eq!(packets.len(), records.len());
    for (p, r) in packets.iter().zip(&records) {
        match p {
            Packet::Message(Message::Binary(_)) => assert_eq!(r.first(), Some(&b'b')),
            _ => assert_ne!(r.first(), Some(&b'b')),
        }
    }

    let frames: Vec<Frame> = packets.iter().map(frame_of).collect();
    let encoded = encode_payload(&frames);
    let again = decode_payload(encoded.clone()).expect("re-encoded payload must decode");
    assert_eq!(again, packets);

    let lossless = records
        .iter()
        .all(|r| !matches!(r.first(), Some(b'0' | b'1' | b'5' | b'6')) || r.len() == 1);
    if lossless {
        assert_eq!(&encoded[..], data, "encode(decode(x)) != x");
    }
});
