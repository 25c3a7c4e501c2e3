//! Integration tests of the Engine.IO / Socket.IO server layer over real HTTP and WebSocket
//! connections, against the protocol echo example and a purpose-built namespace.

#[path = "../examples/protocol_echo.rs"]
#[allow(dead_code)]
mod echo;

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herald::transport::socketio::{
    Accept, AckResponder, BoxFuture, ConnectError, DisconnectReason, NamespaceHandler, Payload,
    Socket, SocketIo, SocketIoConfig, encode_event,
};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Serves `router` on an ephemeral port; returns `127.0.0.1:port`.
async fn serve(router: axum::Router) -> String {
    // reqwest is built with `rustls-no-provider`: the tests install ring as the binary does.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    addr.to_string()
}

async fn echo_server(max_queue_bytes: usize) -> String {
    let (router, _engine, _io) = echo::app(max_queue_bytes);
    serve(router).await
}

async fn ws(addr: &str, path: &str) -> Ws {
    let url = format!("ws://{addr}{path}?EIO=4&transport=websocket");
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

/// Next text frame, answering pings; `None` once the connection closes.
async fn next_text(ws: &mut Ws) -> Option<String> {
    loop {
        match ws.next().await? {
            Ok(WsMessage::Text(t)) if t.as_str() == "2" => {
                ws.send(WsMessage::text("3")).await.ok()?
            }
            Ok(WsMessage::Text(t)) => return Some(t.to_string()),
            Ok(WsMessage::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Waits for the close; returns the close frame's code, if any.
async fn close_code(ws: &mut Ws) -> Option<CloseCode> {
    loop {
        match ws.next().await {
            Some(Ok(WsMessage::Close(frame))) => return frame.map(|f| f.code),
            Some(Ok(_)) => {}
            None | Some(Err(_)) => return None,
        }
    }
}

/// Opens a polling session; returns the URL carrying its sid.
async fn polling_session(addr: &str, path: &str) -> String {
    let base = format!("http://{addr}{path}?EIO=4&transport=polling");
    let body = reqwest::get(&base).await.unwrap().text().await.unwrap();
    let open: Value = serde_json::from_str(&body[1..]).unwrap();
    format!("{base}&sid={}", open["sid"].as_str().unwrap())
}

/// Polls until `count` non-ping packets arrived (answering pings); returns them.
async fn poll_packets(url: &str, count: usize) -> Vec<String> {
    let client = reqwest::Client::new();
    let mut packets = Vec::new();
    while packets.len() < count {
        let body = reqwest::get(url).await.unwrap().text().await.unwrap();
        for packet in body.split('\x1e') {
            if packet == "2" {
                client.post(url).body("3").send().await.unwrap();
            } else {
                packets.push(packet.to_owned());
            }
        }
    }
    packets
}

async fn json_error(url: String) -> (u16, String, Value) {
    let response = reqwest::get(url).await.unwrap();
    let status = response.status().as_u16();
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    (status, content_type, response.json().await.unwrap())
}

#[tokio::test]
async fn handshake_errors_use_reference_codes() {
    let addr = echo_server(4 << 20).await;
    let base = format!("http://{addr}/engine.io/");
    let cases = [
        ("?transport=polling", 5, "Unsupported protocol version"),
        (
            "?EIO=3&transport=polling",
            5,
            "Unsupported protocol version",
        ),
        ("?EIO=4", 0, "Transport unknown"),
        ("?EIO=4&transport=abc", 0, "Transport unknown"),
        ("?EIO=4&transport=polling&sid=nope", 1, "Session ID unknown"),
        ("?EIO=4&transport=websocket", 3, "Bad request"),
    ];
    for (query, code, message) in cases {
        let (status, content_type, body) = json_error(format!("{base}{query}")).await;
        assert_eq!(status, 400, "{query}");
        assert_eq!(content_type, "application/json");
        assert_eq!(body, json!({"code": code, "message": message}), "{query}");
    }
    let response = reqwest::Client::new()
        .post(format!("{base}?EIO=4&transport=polling"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({"code": 2, "message": "Bad handshake method"}));
}

#[tokio::test]
async fn polling_headers_and_oversized_post() {
    let addr = echo_server(4 << 20).await;
    let base = format!("http://{addr}/engine.io/?EIO=4&transport=polling");
    let response = reqwest::get(&base).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; charset=UTF-8"
    );
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body = response.text().await.unwrap();
    let open: Value = serde_json::from_str(body.strip_prefix('0').unwrap()).unwrap();
    assert_eq!(open["upgrades"], json!(["websocket"]));
    assert_eq!(open["maxPayload"], json!(1_000_000));
    let url = format!("{base}&sid={}", open["sid"].as_str().unwrap());

    let client = reqwest::Client::new();
    let big = format!("4{}", "x".repeat(1_000_000));
    let response = client.post(&url).body(big).send().await.unwrap();
    assert_eq!(response.status(), 413);

    let response = client.post(&url).body("4hi").send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/html");
    assert_eq!(response.text().await.unwrap(), "ok");
    assert_eq!(poll_packets(&url, 1).await, ["4hi"]);
}

#[tokio::test]
async fn slow_consumer_is_closed() {
    let addr = echo_server(1000).await;
    // WebSocket: an echo that does not fit the queue bound closes with 1008.
    let mut socket = ws(&addr, "/engine.io/").await;
    assert!(next_text(&mut socket).await.unwrap().starts_with('0'));
    let big = format!("4{}", "y".repeat(2000));
    socket.send(WsMessage::text(big)).await.unwrap();
    assert_eq!(close_code(&mut socket).await, Some(CloseCode::Policy));

    // Polling: echoes pile up while nobody polls; the session is dropped.
    let url = polling_session(&addr, "/engine.io/").await;
    let client = reqwest::Client::new();
    for _ in 0..3 {
        let body = format!("4{}", "z".repeat(400));
        client.post(&url).body(body).send().await.unwrap();
    }
    let (status, _, body) = json_error(url).await;
    assert_eq!((status, &body["code"]), (400, &json!(1)));
}

async fn join_root(socket: &mut Ws) {
    assert!(next_text(socket).await.unwrap().starts_with('0'));
    socket.send(WsMessage::text("40")).await.unwrap();
    assert!(next_text(socket).await.unwrap().starts_with("40{\"sid\":"));
    assert_eq!(next_text(socket).await.unwrap(), r#"42["auth",{}]"#);
}

#[tokio::test]
async fn malformed_socketio_packets_close_only_that_connection() {
    let addr = echo_server(4 << 20).await;
    let mut good = ws(&addr, "/socket.io/").await;
    join_root(&mut good).await;
    let malformed = [
        "42{}",
        r#"42abc["x"]"#,
        "4abc",
        r#"42["disconnect"]"#,
        r#"4511-["x"]"#,
        "40[]",
    ];
    for packet in malformed {
        let mut victim = ws(&addr, "/socket.io/").await;
        join_root(&mut victim).await;
        victim.send(WsMessage::text(packet)).await.unwrap();
        assert_eq!(next_text(&mut victim).await, None, "{packet}");
    }
    good.send(WsMessage::text(r#"42["message",1]"#))
        .await
        .unwrap();
    assert_eq!(
        next_text(&mut good).await.unwrap(),
        r#"42["message-back",1]"#
    );
}

#[tokio::test]
async fn binary_events_round_trip_over_polling() {
    let addr = echo_server(4 << 20).await;
    let url = polling_session(&addr, "/socket.io/").await;
    let client = reqwest::Client::new();
    client.post(&url).body("40").send().await.unwrap();
    let packets = poll_packets(&url, 2).await;
    assert!(packets[0].starts_with("40{\"sid\":"), "{packets:?}");
    assert_eq!(packets[1], r#"42["auth",{}]"#);
    let packet = r#"451-["message",{"_placeholder":true,"num":0}]"#;
    let body = format!("{packet}\x1ebAQID");
    client.post(&url).body(body).send().await.unwrap();
    assert_eq!(
        poll_packets(&url, 2).await,
        [
            r#"451-["message-back",{"_placeholder":true,"num":0}]"#,
            "bAQID"
        ]
    );
}

/// Reports what the namespace sees; exercises auth refusal, pre-reply emits and acks.
struct Probe {
    events: mpsc::UnboundedSender<String>,
}

fn refuse(e: impl std::fmt::Display) -> ConnectError {
    ConnectError::new(e.to_string())
}

impl NamespaceHandler for Probe {
    fn on_connect(
        &self,
        socket: Arc<Socket>,
        auth: Option<Value>,
    ) -> BoxFuture<Result<Accept, ConnectError>> {
        Box::pin(async move {
            if auth.as_ref().and_then(|a| a.get("token")) != Some(&json!("ok")) {
                return Err(ConnectError {
                    message: "unauthorized".into(),
                    data: Some(json!({"reason": "token"})),
                });
            }
            // Awaiting here must not let later packets overtake the connect.
            tokio::task::yield_now().await;
            // Sent before the CONNECT reply, as connection state recovery replays missed events.
            socket
                .emit("missed", Payload::new(vec![json!(1)]))
                .map_err(refuse)?;
            let shared = encode_event::<Value>("/probe", "shared", &[json!({"n": 2})]);
            socket.send_encoded(&shared).map_err(refuse)?;
            let mut extra = serde_json::Map::new();
            extra.insert("pid".into(), json!("p-1"));
            Ok(Accept {
                sid: Some("fixed-id".into()),
                extra,
            })
        })
    }

    fn on_event(
        &self,
        socket: Arc<Socket>,
        event: String,
        payload: Payload,
        ack: Option<AckResponder>,
    ) -> BoxFuture<()> {
        let events = self.events.clone();
        Box::pin(async move {
            if event == "ask" {
                let answer = socket
                    .emit_with_ack("question", payload, Duration::from_secs(5))
                    .await;
                let args = answer.map(|p| p.args).unwrap_or_default();
                let _ = socket.emit("answer", Payload::new(args));
            }
            if let Some(ack) = ack {
                let _ = ack.send(Payload::new(vec![json!("acked")]));
            }
            let _ = events.send(event);
        })
    }

    fn on_disconnect(&self, socket: Arc<Socket>, reason: DisconnectReason) {
        let _ = self
            .events
            .send(format!("disconnect {} {}", socket.id(), reason.as_str()));
    }
}

async fn probe_server() -> (String, Arc<SocketIo>, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let io = SocketIo::builder(SocketIoConfig {
        connect_timeout: Duration::from_millis(300),
        ..SocketIoConfig::default()
    })
    .namespace("/probe", Arc::new(Probe { events: tx }))
    .build();
    let addr = serve(io.router()).await;
    (addr, io, rx)
}

#[tokio::test]
async fn connect_error_carries_data() {
    let (addr, _io, _rx) = probe_server().await;
    let mut socket = ws(&addr, "/socket.io/").await;
    next_text(&mut socket).await.unwrap();
    let connect = r#"40/probe,{"token":"no"}"#;
    socket.send(WsMessage::text(connect)).await.unwrap();
    assert_eq!(
        next_text(&mut socket).await.unwrap(),
        r#"44/probe,{"data":{"reason":"token"},"message":"unauthorized"}"#
    );
    socket.send(WsMessage::text("40/nowhere,")).await.unwrap();
    assert_eq!(
        next_text(&mut socket).await.unwrap(),
        r#"44/nowhere,{"message":"Invalid namespace"}"#
    );
}

#[tokio::test]
async fn connect_order_acks_and_disconnect() {
    let (addr, io, mut events) = probe_server().await;
    let mut socket = ws(&addr, "/socket.io/").await;
    next_text(&mut socket).await.unwrap();
    // An event right behind CONNECT must be handled after on_connect, never lost.
    let connect = r#"40/probe,{"token":"ok"}"#;
    socket.send(WsMessage::text(connect)).await.unwrap();
    socket
        .send(WsMessage::text(r#"42/probe,7["hello"]"#))
        .await
        .unwrap();
    let expected = [
        r#"42/probe,["missed",1]"#,
        r#"42/probe,["shared",{"n":2}]"#,
        r#"40/probe,{"pid":"p-1","sid":"fixed-id"}"#,
        r#"43/probe,7["acked"]"#,
    ];
    for packet in expected {
        assert_eq!(next_text(&mut socket).await.unwrap(), packet);
    }
    assert_eq!(events.recv().await.unwrap(), "hello");
    assert!(io.socket("fixed-id").is_some());

    // Server → client ack round trip, awaited inside a handler.
    let ask = r#"42/probe,["ask","q?"]"#;
    socket.send(WsMessage::text(ask)).await.unwrap();
    let question = r#"42/probe,0["question","q?"]"#;
    assert_eq!(next_text(&mut socket).await.unwrap(), question);
    socket
        .send(WsMessage::text(r#"43/probe,0["yes"]"#))
        .await
        .unwrap();
    let answer = r#"42/probe,["answer","yes"]"#;
    assert_eq!(next_text(&mut socket).await.unwrap(), answer);
    assert_eq!(events.recv().await.unwrap(), "ask");

    // Server-side namespace disconnect.
    io.socket("fixed-id").unwrap().disconnect();
    assert_eq!(next_text(&mut socket).await.unwrap(), "41/probe,");
    let reason = "disconnect fixed-id server namespace disconnect";
    assert_eq!(events.recv().await.unwrap(), reason);
    assert!(io.socket("fixed-id").is_none());
}

#[tokio::test]
async fn connect_timeout_and_shutdown() {
    let (addr, io, mut events) = probe_server().await;
    let mut idle = ws(&addr, "/socket.io/").await;
    next_text(&mut idle).await.unwrap();
    assert_eq!(next_text(&mut idle).await, None, "closed by connectTimeout");

    let mut socket = ws(&addr, "/socket.io/").await;
    next_text(&mut socket).await.unwrap();
    let connect = r#"40/probe,{"token":"ok"}"#;
    socket.send(WsMessage::text(connect)).await.unwrap();
    for _ in 0..3 {
        next_text(&mut socket).await.unwrap();
    }
    io.shutdown();
    assert_eq!(next_text(&mut socket).await.unwrap(), "1");
    let reason = "disconnect fixed-id server shutting down";
    assert_eq!(events.recv().await.unwrap(), reason);
    let url = format!("http://{addr}/socket.io/?EIO=4&transport=polling");
    assert_eq!(reqwest::get(url).await.unwrap().status(), 400);
}
