//! Engine.IO text packets (`decode_text`): a WebSocket text frame or one polling record.
//!
//! Invariants: no panic; a packet decodes iff it is non-empty and starts with `0`–`6`; an unknown type reports
//! the first character; `2`/`3`/`4` keep everything after the type byte, so re-encoding them gives the input back.
#![no_main]

use axum::extract::ws::Utf8Bytes;
use herald::transport::engineio::{
    DecodeError, Frame, Message, Packet, decode_text, message_frame,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let result = decode_text(Utf8Bytes::from(s));
    let first = s.as_bytes().first().copied();
    match &result {
        Err(DecodeError::Empty) => assert!(s.is_empty()),
        Err(DecodeError::UnknownType(c)) => {
            assert_eq!(Some(*c), s.chars().next());
            assert!(!matches!(first, Some(b'0'..=b'6')));
        }
        Err(e) => panic!("decode_text cannot fail with {e:?}"),
        Ok(_) => assert!(matches!(first, Some(b'0'..=b'6'))),
    }
    let Ok(packet) = result else { return };
    let rest = &s[1..];
    match packet {
        Packet::Ping(d) => assert_eq!(format!("2{}", d.as_str()), s),
        Packet::Pong(d) => assert_eq!(format!("3{}", d.as_str()), s),
        Packet::Message(Message::Text(t)) => {
            assert_eq!(t.as_str(), rest);
            // The encoder the server uses for messages gives the exact input back.
            assert_eq!(message_frame(t.as_str()), Frame::Text(Utf8Bytes::from(s)));
        }
        Packet::Message(Message::Binary(_)) => panic!("a text packet decoded as binary"),
        Packet::Open => assert_eq!(first, Some(b'0')),
        Packet::Close => assert_eq!(first, Some(b'1')),
        Packet::Upgrade => assert_eq!(first, Some(b'5')),
        Packet::Noop => assert_eq!(first, Some(b'6')),
    }
});
