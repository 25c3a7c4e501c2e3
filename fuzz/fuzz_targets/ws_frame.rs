//! RFC 6455 client frames (`websocket::frame::parse`) and server frames (`frame::write`).
//!
//! Input: `[flags, max_lo, max_hi, chunk, stream...]`. Invariants: no panic (for any `max_payload` up to
//! 2^32); each parsed frame accounts for exactly the bytes it consumed (header, mask key, masked payload —
//! re-masking the payload gives the wire bytes back); payloads never exceed `max_payload`; control frames are
//! final, uncompressed and at most 125 bytes; RSV1 only when allowed; `Ok(None)` leaves the buffer's contents
//! alone; feeding the same stream in chunks yields the same frames and the same error as feeding it whole; and
//! `write` output, once masked, parses back to the same frame.
#![no_main]

use bytes::{BufMut, BytesMut};
use herald::transport::websocket::frame::{Frame, FrameError, OpCode, parse, write};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq)]
struct Seen {
    fin: bool,
    rsv1: bool,
    opcode: OpCode,
    payload: Vec<u8>,
}

impl From<&Frame> for Seen {
    fn from(f: &Frame) -> Self {
        Seen {
            fin: f.fin,
            rsv1: f.rsv1,
            opcode: f.opcode,
            payload: f.payload.to_vec(),
        }
    }
}

fn opcode_bits(op: OpCode) -> u8 {
    match op {
        OpCode::Continuation => 0x0,
        OpCode::Text => 0x1,
        OpCode::Binary => 0x2,
        OpCode::Close => 0x8,
        OpCode::Ping => 0x9,
        OpCode::Pong => 0xA,
    }
}

/// Parses everything `buf` holds, checking every frame against the wire bytes it came from.
fn drain(
    buf: &mut BytesMut,
    max: usize,
    rsv1_allowed: bool,
    out: &mut Vec<Seen>,
) -> Result<(), FrameError> {
    loop {
        let before = buf.to_vec();
        match parse(buf, max, rsv1_allowed)? {
            None => {
                assert_eq!(&buf[..], &before[..], "Ok(None) changed the buffer");
                return Ok(());
            }
            Some(f) => {
                let consumed = before.len() - buf.len();
                assert_eq!(
                    &before[consumed..],
                    &buf[..],
                    "parse consumed from the wrong end"
                );
                assert!(f.payload.len() <= max, "payload over max_payload");
                if f.opcode.is_control() {
                    assert!(
                        f.fin && !f.rsv1 && f.payload.len() <= 125,
                        "bad control frame accepted"
                    );
                }
                assert!(rsv1_allowed || !f.rsv1);
                let b0 = before[0];
                assert_eq!(b0 & 0x80 != 0, f.fin);
                assert_eq!(b0 & 0x40 != 0, f.rsv1);
                assert_eq!(b0 & 0x30, 0);
                assert_eq!(b0 & 0x0F, opcode_bits(f.opcode));
                assert!(before[1] & 0x80 != 0, "unmasked frame accepted");
                let header = match before[1] & 0x7F {
                    126 => 4,
                    127 => 10,
                    n => {
                        assert_eq!(usize::from(n), f.payload.len());
                        2
                    }
                };
                assert_eq!(consumed, header + 4 + f.payload.len());
                let mask = &before[header..header + 4];
                for (i, b) in f.payload.iter().enumerate() {
                    assert_eq!(b ^ mask[i & 3], before[header + 4 + i]);
                }
                out.push(Seen::from(&f));
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let flags = data[0];
    let rsv1_allowed = flags & 1 != 0;
    let small = usize::from(u16::from_le_bytes([data[1], data[2]]));
    let max = match flags >> 6 {
        0 => small % 256,
        1 => small,
        2 => 64 << 10,
        _ => small << 16, // up to 2^32
    };
    let chunk = usize::from(data[3]) + 1;
    let stream = &data[4..];

    let mut whole = BytesMut::from(stream);
    let mut frames = Vec::new();
    let result = drain(&mut whole, max, rsv1_allowed, &mut frames);

    let mut buf = BytesMut::new();
    let mut pieces = Vec::new();
    let mut chunked = Ok(());
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        chunked = drain(&mut buf, max, rsv1_allowed, &mut pieces);
        if chunked.is_err() {
            break;
        }
    }
    assert_eq!(pieces, frames, "chunked parsing saw other frames");
    assert_eq!(chunked, result, "chunked parsing ended differently");

    // Server frames: write, add a mask bit and a zero key, parse back.
    for f in &frames {
        let mut out = BytesMut::new();
        write(&mut out, f.opcode, f.rsv1, &f.payload);
        let n = f.payload.len();
        let header = match n {
            0..=125 => 2,
            126..=65535 => 4,
            _ => 10,
        };
        assert_eq!(out.len(), header + n, "non-minimal length form");
        assert_eq!(&out[header..], &f.payload[..]);
        let mut masked = BytesMut::new();
        masked.put_u8(out[0]);
        masked.put_u8(out[1] | 0x80);
        masked.put_slice(&out[2..header]);
        masked.put_slice(&[0, 0, 0, 0]);
        masked.put_slice(&out[header..]);
        let back = parse(&mut masked, n, f.rsv1)
            .expect("written frame must parse")
            .expect("written frame is complete");
        assert_eq!(
            Seen::from(&back),
            Seen {
                fin: true,
                ..Seen::from_ref(f)
            }
        );
        assert!(masked.is_empty());
    }
});

impl Seen {
    fn from_ref(s: &Seen) -> Seen {
        Seen {
            fin: s.fin,
            rsv1: s.rsv1,
            opcode: s.opcode,
            payload: s.payload.clone(),
        }
    }
}
