//! Channel names (`core::channel::ChannelName::new`), patterns (`Pattern::matches`) and URL paths
//! (`binding::wire::channel_from_path`).
//!
//! Input: `[split, utf8...]`, split into a pattern and a name. Invariants: no panic; a name that validates is
//! 1..=MAX_CHANNEL_LEN bytes, contains no `/`, `*`, `?`, `%`, control or non-space whitespace characters and no
//! outer space, and `as_str` gives it back; `Pattern::matches` agrees with a reference (quadratic DP) glob over
//! characters, a pattern without `*` matches only itself, and `*` matches everything; a path's channel is its
//! non-empty segments, each percent-decoded, joined by `:`.
#![no_main]

use herald::binding::wire::channel_from_path;
use herald::core::channel::{ChannelName, MAX_CHANNEL_LEN, Pattern};
use libfuzzer_sys::fuzz_target;

/// Reference glob: `*` matches any run of characters, everything else itself.
fn reference(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // m[j] = pattern[..i] matches text[..j]
    let mut m = vec![false; t.len() + 1];
    m[0] = true;
    for &pc in &p {
        let mut next = vec![false; t.len() + 1];
        if pc == '*' {
            let mut any = false;
            for j in 0..=t.len() {
                any |= m[j];
                next[j] = any;
            }
        } else {
            for j in 1..=t.len() {
                next[j] = m[j - 1] && t[j - 1] == pc;
            }
        }
        m = next;
    }
    m[t.len()]
}

fn check_name(s: &str) {
    match ChannelName::new(s) {
        Ok(name) => {
            assert_eq!(name.as_str(), s);
            assert_eq!(name.to_string(), s);
            assert!(!s.is_empty() && s.len() <= MAX_CHANNEL_LEN, "{s:?}");
            for c in s.chars() {
                assert!(
                    !matches!(c, '/' | '*' | '?' | '%' | '\\'),
                    "{s:?} has {c:?}"
                );
                assert!(!c.is_control(), "{s:?} has a control character");
                assert!(c == ' ' || !c.is_whitespace(), "{s:?} has whitespace {c:?}");
            }
            assert!(!s.starts_with(' ') && !s.ends_with(' '), "{s:?}");
            // A validated name is a pattern matching exactly itself.
            assert!(Pattern::new(s).matches(s));
        }
        Err(_) => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let Ok(s) = std::str::from_utf8(rest) else {
        return;
    };
    let mut at = usize::from(split).min(s.len());
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    let (pattern, name) = s.split_at(at);

    check_name(s);
    check_name(name);
    check_name(pattern);

    let got = Pattern::new(pattern).matches(name);
    assert_eq!(
        got,
        reference(pattern, name),
        "pattern {pattern:?} name {name:?}"
    );
    if !pattern.contains('*') {
        assert_eq!(got, pattern == name);
    }
    assert!(Pattern::new("*").matches(name));
    assert!(Pattern::new(&format!("{pattern}*")).matches(&format!("{pattern}{name}")));

    if let Ok(channel) = channel_from_path(s) {
        // Each segment is percent-decoded (`%2F` decodes to `/`, which no channel holds).
        let joined: Vec<String> = s
            .split('/')
            .filter(|p| !p.is_empty())
            .map(|p| {
                percent_encoding::percent_decode_str(p)
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(channel.as_str(), joined.join(":"));
        assert!(!channel.as_str().contains('/'));
    }
});
