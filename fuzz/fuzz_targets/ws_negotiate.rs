//! `Sec-WebSocket-Extensions` negotiation (`websocket::deflate::negotiate`).
//!
//! Invariants: no panic; an accepted header contains a `permessage-deflate` offer, and the answer is always the
//! no-context-takeover response (the only mode the server implements); an offer demanding a server window
//! other than 15 bits is never accepted on its own.
#![no_main]

use herald::transport::websocket::deflate::negotiate;
use libfuzzer_sys::fuzz_target;

const ANSWER: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

fuzz_target!(|data: &[u8]| {
    let Ok(header) = std::str::from_utf8(data) else {
        return;
    };
    let Some(answer) = negotiate(header) else {
        return;
    };
    assert_eq!(answer, ANSWER);
    assert!(header.contains("permessage-deflate"), "accepted {header:?}");
    // Some single offer must be acceptable on its own, and it must not ask for a smaller server window.
    let accepted: Vec<&str> = header
        .split(',')
        .filter(|o| negotiate(o).is_some())
        .collect();
    assert!(
        !accepted.is_empty(),
        "no single offer of {header:?} is acceptable"
    );
    for offer in accepted {
        assert_eq!(
            offer.split(';').next().map(str::trim),
            Some("permessage-deflate")
        );
        for p in offer.split(';').skip(1) {
            let p = p.trim();
            if let Some((name, value)) = p.split_once('=') {
                if name.trim() == "server_max_window_bits" {
                    assert_eq!(value.trim().trim_matches('"'), "15", "accepted {offer:?}");
                }
            }
        }
    }
});
