//! permessage-deflate (RFC 7692) without context takeover in either direction: every message is compressed
//! on its own, so one compressed event can be shared by every connection that negotiated it.

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The tail that a sync flush ends with and that the wire format omits.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// The response to an acceptable offer in `Sec-WebSocket-Extensions`, if there is one.
///
/// Offers that require a smaller server window than 15 bits are declined: the pure-Rust deflate backend
/// always uses a full window.
pub fn negotiate(header: &str) -> Option<&'static str> {
    let acceptable = header.split(',').any(|offer| {
        let mut params = offer.split(';').map(str::trim);
        params.next() == Some("permessage-deflate")
            && params.all(|p| {
                let (name, value) = p.split_once('=').map_or((p, None), |(n, v)| {
                    (n.trim(), Some(v.trim().trim_matches('"')))
                });
                match name {
                    "server_no_context_takeover" | "client_no_context_takeover" => value.is_none(),
                    "client_max_window_bits" => {
                        value.is_none_or(|v| v.parse::<u8>().is_ok_and(|b| (8..=15).contains(&b)))
                    }
                    "server_max_window_bits" => value == Some("15"),
                    _ => false,
                }
            })
    });
    acceptable
        .then_some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
}

/// Compresses one message payload.
pub fn compress(input: &[u8]) -> Bytes {
    let mut c = Compress::new(Compression::fast(), false);
    let mut out = Vec::with_capacity(input.len() / 2 + 64);
    loop {
        let before = c.total_in() as usize;
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity().max(256));
        }
        // Compressing into a Vec cannot fail; an error only signals misuse of the stream.
        if c.compress_vec(&input[before..], &mut out, FlushCompress::Sync)
            .is_err()
        {
            return Bytes::new();
        }
        if c.total_in() as usize == input.len() && out.ends_with(&TAIL) {
            break;
        }
    }
    out.truncate(out.len() - TAIL.len());
    Bytes::from(out)
}

/// Inflates one compressed message, refusing to produce more than `max` bytes.
pub fn decompress(input: &[u8], max: usize) -> Result<Vec<u8>, &'static str> {
    let mut d = Decompress::new(false);
    let mut data = Vec::with_capacity(input.len() + TAIL.len());
    data.extend_from_slice(input);
    data.extend_from_slice(&TAIL);
    let mut out = Vec::with_capacity((input.len() * 3).min(max) + 64);
    loop {
        let consumed = d.total_in() as usize;
        if out.len() > max {
            return Err("decompressed message exceeds the limit");
        }
        if out.capacity() == out.len() {
            out.reserve(out.capacity().max(256).min(max.saturating_add(1)));
        }
        let status = d
            .decompress_vec(&data[consumed..], &mut out, FlushDecompress::Sync)
            .map_err(|_| "invalid compressed data")?;
        if out.len() > max {
            return Err("decompressed message exceeds the limit");
        }
        let done = d.total_in() as usize == data.len();
        match status {
            Status::StreamEnd => return Ok(out),
            _ if done && out.capacity() > out.len() => return Ok(out),
            Status::BufError if !done && out.capacity() > out.len() => {
                return Err("invalid compressed data");
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiates_acceptable_offers_only() {
        assert!(negotiate("permessage-deflate; client_max_window_bits").is_some());
        assert!(negotiate("permessage-deflate").is_some());
        assert!(
            negotiate("x-webkit-deflate-frame, permessage-deflate; server_max_window_bits=15")
                .is_some()
        );
        assert!(negotiate("permessage-deflate; server_max_window_bits=10").is_none());
        assert!(negotiate("permessage-deflate; unknown").is_none());
        assert!(negotiate("").is_none());
    }

    #[test]
    fn round_trips() {
        let text = br#"{"type":"event","channel":"a","data":{"n":1,"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}"#;
        let packed = compress(text);
        assert!(packed.len() < text.len());
        assert_eq!(decompress(&packed, 1000).unwrap(), text.to_vec());
        assert!(decompress(&packed, 10).is_err());
        assert!(decompress(b"\xff\xff\xff", 1000).is_err());
        // A small limit with output past the first buffer (found by fuzzing: it used to panic).
        assert!(decompress(&[0x4a, 0x1c, 0x05], 100).is_err());
        assert_eq!(
            decompress(&compress(b"short"), 10).unwrap(),
            b"short".to_vec()
        );
        let big = vec![b'a'; 200_000];
        assert_eq!(decompress(&compress(&big), 300_000).unwrap(), big);
    }
}
