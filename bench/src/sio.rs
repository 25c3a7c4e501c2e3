//! A minimal Socket.IO v5 / Engine.IO v4 client over WebSocket, just enough for load generation: handshake,
//! CONNECT to `/`, `subscribe` with ack, ping answering, and allocation-free scanning of event payloads.

use anyhow::{Context, Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{Message, protocol::WebSocketConfig};

pub type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

/// Where to connect: the resolved address and the `ws://` URL (for the Host header and path).
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub ws_url: String,
}

/// What a text frame from the server means to a load generator.
pub enum Frame<'a> {
    /// Engine.IO ping: answer with `3`.
    Ping,
    /// Socket.IO EVENT (`42…`): the frame after the `42` prefix, e.g. `["tick",{…},"cursor"]`.
    Event(&'a [u8]),
    /// Engine.IO close or Socket.IO DISCONNECT.
    Closed,
    Other,
}

pub fn classify(b: &[u8]) -> Frame<'_> {
    match b {
        b"2" => Frame::Ping,
        [b'4', b'2', rest @ ..] => Frame::Event(rest),
        [b'1', ..] | [b'4', b'1', ..] => Frame::Closed,
        _ => Frame::Other,
    }
}

/// Position of `needle` in `hay` (naive, fine for short needles and ~200-byte frames).
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let first = *needle.first()?;
    (0..(hay.len() + 1).saturating_sub(needle.len()))
        .find(|&i| hay[i] == first && hay[i..].starts_with(needle))
}

/// The unsigned integer right after `key` (e.g. `"seq":`) in `b`.
pub fn number_after(b: &[u8], key: &[u8]) -> Option<u64> {
    let start = find(b, key)? + key.len();
    let digits = b[start..].iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    b[start..start + digits].iter().try_fold(0u64, |n, &c| {
        n.checked_mul(10)?.checked_add(u64::from(c - b'0'))
    })
}

async fn send(ws: &mut Ws, text: &str) -> Result<()> {
    ws.send(Message::text(text)).await.context("websocket send")
}

/// Next text frame, answering pings while waiting; errors on close.
async fn next_text(ws: &mut Ws) -> Result<tokio_tungstenite::tungstenite::Utf8Bytes> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.as_str() == "2" => send(ws, "3").await?,
            Some(Ok(Message::Text(t))) => return Ok(t),
            Some(Ok(Message::Close(_))) | None => bail!("closed by server"),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e).context("websocket read"),
        }
    }
}

/// Opens a WebSocket, completes the Engine.IO open and Socket.IO CONNECT, subscribes to `channel` (resuming after
/// offset `since` when given) and waits for a successful ack. Without `since`, nothing but the open packet, pings,
/// the CONNECT reply and the ack may arrive before that; with it, replayed events may precede the ack and are
/// handed to `early` (the payload after `42`).
pub async fn connect_and_subscribe(
    t: &Target,
    channel: &str,
    since: Option<u64>,
    early: &mut dyn FnMut(&[u8]),
) -> Result<Ws> {
    let tcp = TcpStream::connect(t.addr).await.context("tcp connect")?;
    tcp.set_nodelay(true)?;
    let cfg = WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0);
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(t.ws_url.as_str(), tcp, Some(cfg))
            .await
            .context("websocket handshake")?;
    let open = next_text(&mut ws).await?;
    if !open.starts_with("0{") {
        bail!("expected Engine.IO open, got {:.80}", open.as_str());
    }
    send(&mut ws, "40").await?;
    let reply = next_text(&mut ws).await?;
    if !reply.starts_with("40{") {
        bail!("expected CONNECT reply, got {:.80}", reply.as_str());
    }
    let since_field = since.map_or(String::new(), |n| format!(r#","since":{n}"#));
    send(
        &mut ws,
        &format!(
            r#"420["subscribe",{{"channel":{}{since_field}}}]"#,
            serde_json::Value::from(channel)
        ),
    )
    .await?;
    loop {
        let msg = next_text(&mut ws).await?;
        if let Some(ack) = msg.strip_prefix("430") {
            return if ack.starts_with(r#"[{"ok":true"#) || ack.contains(r#""ok":true"#) {
                Ok(ws)
            } else {
                Err(anyhow!("subscribe refused: {ack:.200}"))
            };
        }
        if let Some(p) = msg.as_bytes().strip_prefix(b"42") {
            if since.is_none() {
                bail!("event before the subscribe ack: {:.80}", msg.as_str());
            }
            early(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_numbers_and_frames() {
        let f = br#"42["tick",{"pad":"xx","seq":42,"t":1780000000123456},"c1"]"#;
        let Frame::Event(p) = classify(f) else {
            panic!("not an event")
        };
        assert_eq!(number_after(p, br#""seq":"#), Some(42));
        assert_eq!(number_after(p, br#""t":"#), Some(1_780_000_000_123_456));
        assert_eq!(number_after(p, br#""nope":"#), None);
        assert_eq!(number_after(br#""seq":"#, br#""seq":"#), None);
        assert_eq!(
            number_after(br#""seq":99999999999999999999"#, br#""seq":"#),
            None
        );
        assert!(matches!(classify(b"2"), Frame::Ping));
        assert!(matches!(classify(b"1"), Frame::Closed));
        assert!(matches!(classify(b"41"), Frame::Closed));
        assert!(matches!(classify(b"430[]"), Frame::Other));
    }
}
