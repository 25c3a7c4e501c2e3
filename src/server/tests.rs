//! The OpenAPI description (`api/openapi.json`) against the router the server really builds: every route is
//! described with exactly its methods, nothing described is missing, and every documented error code is in the
//! spec's `ErrorCode` enum.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::*;

/// Methods a route can be described with (HEAD is GET's, OPTIONS the origin policy's).
const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

/// `(path, method)` of every route of `router`, paths in OpenAPI form (`{*rest}` → `{rest}`). axum has no route
/// listing, so this reads its `Debug` form: the path router's endpoints (which methods are set) and its node (the
/// path of each route id). An endpoint taking every method (a service such as Engine.IO's) is `any`. Fails loudly
/// if the form changes (an axum upgrade): it must find routes.
fn routes(router: &Router) -> BTreeSet<(String, String)> {
    let text = format!("{router:#?}");
    let text = text
        .split("fallback_router:")
        .next()
        .expect("a path router");
    let (endpoints, node) = text
        .split_once("node: Node {")
        .expect("the Debug form of axum's Router has changed: a node with paths");
    let mut methods: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    let mut id = None;
    let mut next_is_id = false;
    for line in endpoints.lines().map(str::trim) {
        if line == "RouteId(" {
            next_is_id = true;
            continue;
        }
        if next_is_id {
            next_is_id = false;
            id = line.trim_end_matches(',').parse::<u64>().ok();
            methods.entry(id.expect("a route id")).or_default();
            continue;
        }
        let Some(id) = id else { continue };
        let set = methods.entry(id).or_default();
        if line == "): Route(" || line == "fallback: BoxedHandler," {
            set.insert("any".into());
        }
        for m in METHODS {
            if let Some(v) = line.strip_prefix(&format!("{m}: "))
                && v != "None,"
            {
                set.insert(m.into());
            }
        }
    }
    let mut out = BTreeSet::new();
    let mut id = None;
    let mut next_is_id = false;
    for line in node.lines().map(str::trim) {
        if line == "RouteId(" {
            next_is_id = true;
        } else if next_is_id {
            next_is_id = false;
            id = line.trim_end_matches(',').parse::<u64>().ok();
        } else if let Some(path) = line
            .strip_prefix("): \"")
            .and_then(|l| l.strip_suffix("\","))
        {
            if path.contains("__private__axum") {
                continue;
            }
            let path = path.replace("{*", "{");
            let set = &methods[&id.expect("a route id before its path")];
            assert!(!set.is_empty(), "route {path} has no method");
            for m in set {
                out.insert((path.clone(), m.clone()));
            }
        }
    }
    assert!(
        out.len() > 20,
        "the Debug form of axum's Router has changed: found only {out:?}"
    );
    out
}

fn spec() -> serde_json::Value {
    serde_json::from_str(crate::api::openapi::SPEC).expect("api/openapi.json is JSON")
}

/// `(path, method)` of every operation of the spec; a path item marked `x-herald-any-method` is `any`.
fn described(spec: &serde_json::Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        if item["x-herald-any-method"] == true {
            out.insert((path.clone(), "any".to_owned()));
            continue;
        }
        for m in METHODS.iter().chain(&["head", "options", "trace"]) {
            if item.get(*m).is_some() {
                out.insert((path.clone(), (*m).to_owned()));
            }
        }
    }
    out
}

/// The routes the server builds from `toml` (on the memory engine).
async fn served(toml: &str) -> BTreeSet<(String, String)> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("herald.toml");
    std::fs::write(&path, toml).expect("write the config");
    let mut config = Config::load(Some(&path), Default::default()).expect("a valid config");
    config.engine.kind = EngineChoice::Memory;
    config.data_dir = dir.path().to_owned();
    let server = Server::start(config).await.expect("the server starts");
    let out = routes(&server.router);
    server.core.shutdown().await;
    out
}

#[tokio::test]
async fn the_openapi_spec_describes_every_route_and_nothing_else() {
    // Every route Herald serves itself, whichever of its own options adds one (seed 000's `/api/targets` come
    // with the `targets` preset); `[[proxy]]` prefixes and SQL `history_path`s are the deployment's.
    let mut router = served("").await;
    router.extend(served("[monitor]\npreset = \"targets\"\n").await);
    let spec = described(&spec());
    let missing: Vec<_> = router.difference(&spec).collect();
    let extra: Vec<_> = spec.difference(&router).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "src/api/openapi.json is out of date.\n  routes not described: {missing:?}\n  described but not \
         routes: {extra:?}"
    );
}

/// Every `snake_case` word between backticks right after an HTTP error status in `text` (`404 \`not_found\``,
/// `401 (\`unauthorized\`, \`token_expired\`)`).
fn documented_codes(text: &str, out: &mut BTreeSet<String>) {
    let bytes = text.as_bytes();
    for (i, w) in text.char_indices() {
        let starts_status = (w == '4' || w == '5')
            && i + 4 < bytes.len()
            && bytes[i + 1].is_ascii_digit()
            && bytes[i + 2].is_ascii_digit()
            && bytes[i + 3] == b' '
            && (i == 0 || !bytes[i - 1].is_ascii_alphanumeric());
        if !starts_status {
            continue;
        }
        // The codes that follow: backticked words separated by ` `, `,`, `(`, `or` (not `/`: `503 / `connect_error``
        // names the Socket.IO event beside the status).
        let mut rest = &text[i + 4..];
        loop {
            rest = rest.trim_start_matches([' ', ',', '(']);
            rest = rest.strip_prefix("or ").unwrap_or(rest);
            let Some(tail) = rest.strip_prefix('`') else {
                break;
            };
            let Some(end) = tail.find('`') else { break };
            let word = &tail[..end];
            if word.is_empty()
                || !word
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit())
            {
                break;
            }
            out.insert(word.to_owned());
            rest = &tail[end + 1..];
        }
    }
}

/// Every code literal the code answers HTTP errors with: `ApiError::new(status, "code"`, `bad_request("code"`, `"code": "…"` in
/// JSON bodies, and the `code()` mappings of refusals, auth errors and channel names.
fn coded(dir: &Path, out: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).expect("src") {
        let path = entry.expect("an entry").path();
        if path.is_dir() {
            coded(&path, out);
            continue;
        }
        // This file quotes the markers it looks for.
        if path.extension().is_none_or(|e| e != "rs") || path.ends_with("server/tests.rs") {
            continue;
        }
        let whole = std::fs::read_to_string(&path).expect("a source file");
        // Tests and comments quote other codes (a backend's own, in a forward's answer).
        let text = whole.split("#[cfg(test)]").next().unwrap_or_default();
        let in_comment = |i: usize| {
            let line_start = text[..i].rfind('\n').map_or(0, |n| n + 1);
            text[line_start..i].trim_start().starts_with("//")
        };
        // The first string literal starting within `within` bytes after each `marker`.
        let mut literal_after = |marker: &str, within: usize| {
            for (i, _) in text.match_indices(marker) {
                if in_comment(i) {
                    continue;
                }
                let after = &text[i + marker.len()..];
                let Some(start) = after.find('"').filter(|s| *s <= within) else {
                    continue;
                };
                let rest = &after[start + 1..];
                let Some(end) = rest.find('"') else { continue };
                let word = &rest[..end];
                if !word.is_empty() && word.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                    out.insert(word.to_owned());
                }
            }
        };
        literal_after("ApiError::new(", 80);
        literal_after("bad_request(", 0);
        literal_after("\"code\": ", 0);
        let name = path.to_string_lossy();
        if name.ends_with("binding/refusal.rs")
            || name.ends_with("auth/error.rs")
            || name.ends_with("core/channel.rs")
        {
            let code_fn = text.find("fn code(").expect("a code() mapping");
            let body = &text[code_fn..];
            let body = &body[..body.find("\n    }\n").unwrap_or(body.len())];
            for (i, _) in body.match_indices("=> \"") {
                let rest = &body[i + 4..];
                if let Some(end) = rest.find('"') {
                    out.insert(rest[..end].to_owned());
                }
            }
        }
    }
}

#[test]
fn every_documented_error_code_is_in_the_spec() {
    let spec = spec();
    let listed: BTreeSet<String> = spec["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .expect("an ErrorCode enum")
        .iter()
        .map(|v| v.as_str().expect("a string").to_owned())
        .collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut documented = BTreeSet::new();
    for dir in ["docs", "."] {
        for entry in std::fs::read_dir(root.join(dir)).expect("docs") {
            let path = entry.expect("an entry").path();
            if path.extension().is_some_and(|e| e == "md") {
                documented_codes(
                    &std::fs::read_to_string(&path).expect("a doc"),
                    &mut documented,
                );
            }
        }
    }
    let mut in_code = BTreeSet::new();
    coded(&root.join("src"), &mut in_code);
    // A `/ws` message's code, never an HTTP answer.
    in_code.remove("internal");
    assert!(
        documented.len() > 10 && in_code.len() > 20,
        "found too few codes: {documented:?} {in_code:?}"
    );
    let missing: Vec<_> = documented
        .union(&in_code)
        .filter(|c| !listed.contains(*c))
        .collect();
    assert!(
        missing.is_empty(),
        "error codes missing from ErrorCode in src/api/openapi.json: {missing:?}"
    );
    let stale: Vec<_> = listed
        .difference(&documented.union(&in_code).cloned().collect())
        .cloned()
        .collect::<Vec<_>>();
    assert!(
        stale.is_empty(),
        "ErrorCode lists codes neither documented nor answered: {stale:?}"
    );
}

#[test]
fn documented_codes_are_read_after_a_status() {
    let mut out = BTreeSet::new();
    documented_codes(
        "x 404 `channel_not_found`; 401 (`unauthorized`, `token_expired`), 403 `forbidden` or `origin`; 503 / `event`; 4401 `no`",
        &mut out,
    );
    let want: BTreeSet<String> = [
        "channel_not_found",
        "unauthorized",
        "token_expired",
        "forbidden",
        "origin",
    ]
    .map(String::from)
    .into();
    assert_eq!(out, want);
}
