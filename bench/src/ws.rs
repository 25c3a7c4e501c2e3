//! A minimal client for Herald's plain WebSocket protocol (`GET /ws`, JSON text messages), just enough for load
//! generation: upgrade, `{"op":"subscribe",…}`, wait for `{"type":"subscribed",…}`, and allocation-free
//! classification of the server's messages.

use crate::sio::{Target, Ws, find};
use anyhow::{Context, Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{Message, protocol::WebSocketConfig};

/// What a text message from the server means to a load generator.
#[derive(Debug, PartialEq, Eq)]
pub enum Msg<'a> {
    /// `{"type":"event",…,"event":NAME,"data":DATA,…}`: `name` is the raw JSON string body of `event` (between the
    /// quotes, still escaped), `data` runs from the start of the `data` value to the end of the message.
    Event { name: &'a [u8], data: &'a [u8] },
    /// `{"type":"subscribed",…}`.
    Subscribed,
    /// `{"type":"error",…}`: the whole message.
    Error(&'a [u8]),
    /// Any other well-formed type (`heartbeat`, `gap`, `pong`, `unsubscribed`, …): the type name.
    Other(&'a [u8]),
    /// Not a JSON object with a string `type`, or an event without `event`/`data`.
    Malformed,
}

/// The body of the JSON string value right after `key` (e.g. `"type":`), up to its closing quote.
fn string_after<'a>(b: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let start = find(b, key)? + key.len();
    let rest = b[start..].strip_prefix(b"\"")?;
    // A `"` preceded by an odd run of backslashes is escaped; names here never contain one, so stop at the
    // first unescaped quote.
    let mut i = 0;
    while i < rest.len() {
        match rest[i] {
            b'\\' => i += 2,
            b'"' => return Some(&rest[..i]),
            _ => i += 1,
        }
    }
    None
}

/// Classifies one server message without allocating. Relies only on JSON's rule that a quote inside a string is
/// escaped, so `"type":"` cannot match inside a string value; Herald puts `data` after every other top-level field
/// that could hold an object, so the first `"data":` is the top-level one.
pub fn classify(b: &[u8]) -> Msg<'_> {
    let b = b.trim_ascii();
    if !b.starts_with(b"{") || !b.ends_with(b"}") {
        return Msg::Malformed;
    }
    let Some(ty) = string_after(b, br#""type":"#) else {
        return Msg::Malformed;
    };
    match ty {
        b"event" => {
            let (Some(name), Some(at)) = (string_after(b, br#""event":"#), find(b, br#""data":"#))
            else {
                return Msg::Malformed;
            };
            Msg::Event {
                name,
                data: &b[at + 7..],
            }
        }
        b"subscribed" => Msg::Subscribed,
        b"error" => Msg::Error(b),
        _ => Msg::Other(ty),
    }
}

/// Opens `ws_url`, subscribes to `channel` (resuming after offset `since` when given) and waits for `subscribed`.
/// Before it only `heartbeat`s may arrive; an event or an error first is a failure (the server must confirm before
/// it delivers; replayed events follow the confirmation).
pub async fn connect_and_subscribe(t: &Target, channel: &str, since: Option<u64>) -> Result<Ws> {
    let tcp = TcpStream::connect(t.addr).await.context("tcp connect")?;
    tcp.set_nodelay(true)?;
    let cfg = WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0);
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(t.ws_url.as_str(), tcp, Some(cfg))
            .await
            .context("websocket handshake")?;
    let since = since.map_or(String::new(), |n| format!(r#","since":{n}"#));
    let req = format!(
        r#"{{"op":"subscribe","id":1,"channel":{}{since}}}"#,
        serde_json::Value::from(channel)
    );
    ws.send(Message::text(req))
        .await
        .context("websocket send")?;
    loop {
        let text = match ws.next().await {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(f))) => bail!("closed by server: {f:?}"),
            None => bail!("closed by server"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e).context("websocket read"),
        };
        match classify(text.as_bytes()) {
            Msg::Subscribed => return Ok(ws),
            Msg::Other(b"heartbeat") => {}
            Msg::Error(m) => {
                return Err(anyhow!(
                    "subscribe refused: {:.200}",
                    String::from_utf8_lossy(m)
                ));
            }
            _ => bail!("unexpected before `subscribed`: {:.80}", text.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sio::number_after;

    #[test]
    fn classifies_herald_messages() {
        let ev = br#"{"type":"event","channel":"bench","offset":7,"epoch":"a1b2","id":"x\"y","event":"tick","data":{"seq":7,"t":1780000000123456,"pad":"xx"},"time":"2026-11-23T04:00:00.000Z"}"#;
        let Msg::Event { name, data } = classify(ev) else {
            panic!("not an event")
        };
        assert_eq!(name, b"tick");
        assert_eq!(number_after(data, br#""seq":"#), Some(7));
        assert_eq!(number_after(data, br#""t":"#), Some(1_780_000_000_123_456));
        assert_eq!(
            classify(br#"{"type":"subscribed","id":1,"channel":"bench","offset":0,"epoch":"e"}"#),
            Msg::Subscribed
        );
        assert_eq!(
            classify(br#"{"type":"heartbeat","time":"2026-11-23T04:00:00.000Z"}"#),
            Msg::Other(b"heartbeat")
        );
        assert!(matches!(
            classify(br#"{"type":"error","code":"invalid_json","message":"m"}"#),
            Msg::Error(_)
        ));
    }

    #[test]
    fn malformed_messages_are_reported_not_panics() {
        for m in [
            &b""[..],
            b"{",
            b"}",
            b"not json",
            b"[1,2]",
            br#"{"type":1}"#,
            br#"{"type":"event"}"#,
            br#"{"type":"event","event":"tick"}"#,
            br#"{"type":"event","event":"tick","data":"#,
            br#"{"type":"eve"#,
            br#"{"type":"event","event":"ti\"}"#,
            br#"{"x":"\"type\":\"event\""}"#,
        ] {
            let got = classify(m);
            assert_eq!(got, Msg::Malformed, "{}", String::from_utf8_lossy(m));
        }
        // An event whose data lacks `seq`/`t` classifies, and the number scan then finds nothing.
        let Msg::Event { data, .. } =
            classify(br#"{"type":"event","event":"tick","data":{"seq":"x"}}"#)
        else {
            panic!()
        };
        assert_eq!(number_after(data, br#""seq":"#), None);
        // A trailing-data-only event: the data slice may be just `}`.
        assert!(matches!(
            classify(br#"{"type":"event","event":"tick","data":}"#),
            Msg::Event { .. }
        ));
    }
}
