//! Herald's own route prefixes, and the check every configured literal path (a SQL source's `history_path`, a
//! `[[proxy]]` path) passes so it takes none of them.

/// Path prefixes Herald serves itself (besides the Socket.IO path): a configured path may be none of them nor lie
/// below one.
const OWN_PATHS: [&str; 9] = [
    "/api", "/ws", "/sse", "/healthz", "/readyz", "/metrics", "/status", "/badge", "/admin",
];

/// Whether `path` is `prefix` or lies below it, on a segment boundary (`/books/1` is under `/books`,
/// `/bookshelf` is not).
pub fn is_under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|r| r.is_empty() || r.starts_with('/'))
}

/// Checks a configured literal path (no route patterns): it starts with `/`, has only unreserved characters in
/// non-empty segments (a trailing slash is allowed), and takes none of Herald's own routes, `socketio_path`
/// included. The message says what is wrong, for the caller to prefix with the setting's name.
pub fn check_literal(path: &str, socketio_path: &str) -> Result<(), String> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err("must start with '/'".into());
    };
    if path.len() > 200 {
        return Err("must be at most 200 characters".into());
    }
    let segments: Vec<&str> = rest.split('/').collect();
    let last = segments.len() - 1;
    for (i, seg) in segments.iter().enumerate() {
        // A trailing slash (`/historical-data/`) is kept: the route is exactly the configured path.
        if seg.is_empty() && i == last {
            continue;
        }
        if seg.is_empty() || *seg == "." || *seg == ".." {
            return Err("has an empty, '.' or '..' segment".into());
        }
        if !seg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c))
        {
            return Err("may contain only letters, digits, '-', '.', '_', '~' and '/'".into());
        }
    }
    let socketio = socketio_path.trim_end_matches('/');
    let own = OWN_PATHS
        .iter()
        .copied()
        .chain((!socketio.is_empty()).then_some(socketio));
    for prefix in own {
        if is_under(path, prefix) {
            return Err(format!("collides with Herald's own route {prefix}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn under_is_on_segment_boundaries() {
        assert!(is_under("/books", "/books"));
        assert!(is_under("/books/1", "/books"));
        assert!(!is_under("/bookshelf", "/books"));
        assert!(!is_under("/book", "/books"));
    }

    #[test]
    fn own_routes_and_the_socketio_path_are_refused() {
        for path in [
            "/api",
            "/api/x",
            "/ws",
            "/sse/a",
            "/metrics",
            "/admin",
            "/admin/app.js",
            "/socket.io",
            "/socket.io/x",
        ] {
            let e = check_literal(path, "/socket.io/").unwrap_err();
            assert!(
                e.contains("collides with Herald's own route"),
                "{path}: {e}"
            );
        }
        assert!(check_literal("/apis", "/socket.io/").is_ok());
        assert!(check_literal("/administration", "/socket.io/").is_ok());
        assert!(check_literal("/books", "/socket.io/").is_ok());
    }
}
