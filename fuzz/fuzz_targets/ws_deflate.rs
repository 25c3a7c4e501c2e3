//! permessage-deflate (`websocket::deflate::{decompress, compress}`).
//!
//! Input: `[mode, max_lo, max_hi, data...]`. Invariants: no panic for any limit; `decompress` never returns
//! more than its limit; the limit only decides between "the full output" and "too big" (the result under a
//! limit equals the unlimited result whenever that fits); and `compress` round-trips through `decompress`, with
//! a limit of exactly the message size accepted and one byte less refused.
#![no_main]

use herald::transport::websocket::deflate::{compress, decompress};
use libfuzzer_sys::fuzz_target;

/// A limit far above anything a 4 KiB input can legitimately inflate to under test.
const BIG: usize = 8 << 20;

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let raw = usize::from(u16::from_le_bytes([data[1], data[2]]));
    let max = match data[0] & 3 {
        0 => raw % 300, // small limits: a server configured with a tiny max_message_bytes
        1 => raw,
        2 => 64 << 10, // the default max_message_bytes
        _ => raw << 4,
    };
    let input = &data[3..];

    let limited = decompress(input, max);
    if let Ok(out) = &limited {
        assert!(
            out.len() <= max,
            "decompress returned {} bytes over a limit of {max}",
            out.len()
        );
    }
    let unlimited = decompress(input, BIG);
    match (&unlimited, &limited) {
        (Ok(full), Ok(out)) => assert_eq!(full, out, "output depends on the limit"),
        (Ok(full), Err(_)) => assert!(
            full.len() > max,
            "refused {} bytes under a limit of {max}",
            full.len()
        ),
        (Err(_), Ok(out)) => panic!(
            "accepted under limit {max} ({} bytes) but refused under {BIG}",
            out.len()
        ),
        (Err(_), Err(_)) => {}
    }

    if data[0] & 4 != 0 {
        let packed = compress(input);
        let back = decompress(&packed, input.len())
            .expect("compressed message must inflate at its own size");
        assert_eq!(back, input);
        if !input.is_empty() {
            assert!(
                decompress(&packed, input.len() - 1).is_err(),
                "limit one below the size accepted"
            );
        }
    }
});
