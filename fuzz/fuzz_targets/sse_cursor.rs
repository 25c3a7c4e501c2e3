//! SSE compound cursors (`binding::sse::{parse_cursor, render_cursor}`): `<epoch>:<offset>` per channel,
//! joined by `,`, as sent in `Last-Event-ID` / `?cursor=`.
//!
//! Input: `[n, text...]`. Invariants: no panic; an accepted cursor has exactly `n` positions, alphanumeric
//! ASCII epochs (so never `,` or `:`); `parse(render(parse(x))) == parse(x)`; and canonical input (no sign, no
//! leading zeros) renders back byte-identical.
#![no_main]

use std::sync::Arc;

use herald::binding::sse::{parse_cursor, render_cursor};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 16);
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let Ok(parsed) = parse_cursor(text, n) else {
        return;
    };
    assert_eq!(parsed.len(), n);
    assert_eq!(text.split(',').count(), n);
    for (epoch, _) in &parsed {
        assert!(
            epoch.bytes().all(|b| b.is_ascii_alphanumeric()),
            "epoch {epoch:?}"
        );
    }
    let cursor: Vec<(Arc<str>, u64)> = parsed
        .iter()
        .map(|(e, o)| (Arc::from(e.as_str()), *o))
        .collect();
    let rendered = render_cursor(&cursor);
    let again =
        parse_cursor(&rendered, n).unwrap_or_else(|e| panic!("{rendered:?} (from {text:?}): {e}"));
    assert_eq!(again, parsed);
    let canonical = text.split(',').all(|p| {
        let offset = p.rsplit_once(':').map_or("", |(_, o)| o);
        offset == "0" || (!offset.starts_with('0') && offset.bytes().all(|b| b.is_ascii_digit()))
    });
    if canonical {
        assert_eq!(rendered, text);
    }
});
