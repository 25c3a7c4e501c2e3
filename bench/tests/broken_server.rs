//! The load generator's correctness checks, tested against a deliberately broken Socket.IO server: a tiny
//! in-process server with Herald's surface (`subscribe` with ack, `POST /api/publish`) that, for its first
//! subscriber, drops one event, duplicates one, or loses the first event after the subscription. herald-bench must
//! report each fault as exactly that fault, and a clean run must report none.

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::cell::RefCell;
use std::process::Command;
use std::rc::Rc;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{Message, handshake::derive_accept_key, protocol::Role};

/// What the server gets wrong, for its first subscriber only.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fault {
    None,
    /// The 3rd event is not delivered.
    Drop,
    /// The 3rd event is delivered twice.
    Dup,
    /// The 1st event after the subscription is not delivered.
    First,
}

/// Subscribers in the order they subscribed: (channel, frame sender).
type Subscribers = Rc<RefCell<Vec<(String, mpsc::UnboundedSender<String>)>>>;

/// Starts the broken server on an ephemeral loopback port in its own thread; returns its base URL.
fn start(fault: Fault) -> String {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    std_listener.set_nonblocking(true).expect("nonblocking");
    let url = format!("http://{}", std_listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async move {
            let listener = TcpListener::from_std(std_listener).expect("listener");
            let subs: Subscribers = Rc::default();
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::task::spawn_local(serve(tcp, subs.clone(), fault));
            }
        });
    });
    url
}

/// Reads one request head; `None` at EOF.
async fn read_head(rd: &mut BufReader<TcpStream>) -> Option<Vec<String>> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if rd.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let line = line.trim_end().to_string();
        if line.is_empty() {
            return Some(lines);
        }
        lines.push(line);
    }
}

fn header<'a>(head: &'a [String], name: &str) -> Option<&'a str> {
    head.iter().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

async fn serve(tcp: TcpStream, subs: Subscribers, fault: Fault) {
    let mut rd = BufReader::new(tcp);
    while let Some(head) = read_head(&mut rd).await {
        if let Some(key) = header(&head, "sec-websocket-key") {
            let accept = derive_accept_key(key.as_bytes());
            let reply = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            );
            if rd.get_mut().write_all(reply.as_bytes()).await.is_err() {
                return;
            }
            // The client sends nothing before the 101, so the read buffer is empty here.
            let ws = WebSocketStream::from_raw_socket(rd.into_inner(), Role::Server, None).await;
            return socketio(ws, subs).await;
        }
        let len: usize = header(&head, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if rd.read_exact(&mut body).await.is_err() {
            return;
        }
        let (status, reply) = match serde_json::from_slice::<Value>(&body) {
            Ok(v) if head[0].starts_with("POST /api/publish ") => {
                publish(&v, &subs, fault);
                ("200 OK", r#"{"results":[]}"#)
            }
            Ok(_) => ("404 Not Found", "{}"),
            Err(_) => ("400 Bad Request", "{}"),
        };
        let resp = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{reply}",
            reply.len()
        );
        if rd.get_mut().write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Broadcasts one publish body (`{"channel","event","data"}` or `{"events":[…]}`), applying the fault.
fn publish(body: &Value, subs: &Subscribers, fault: Fault) {
    let events = match body.get("events").and_then(Value::as_array) {
        Some(list) => list.clone(),
        None => vec![body.clone()],
    };
    for e in events {
        let channel = e["channel"].as_str().unwrap_or_default();
        let frame = format!("42[{},{}]", e["event"], e["data"]);
        let seq = e["data"]["seq"].as_u64().unwrap_or(0);
        for (i, (ch, tx)) in subs.borrow().iter().enumerate() {
            if ch != channel {
                continue;
            }
            let times = match (i, fault, seq) {
                (0, Fault::Drop, 3) | (0, Fault::First, 1) => 0,
                (0, Fault::Dup, 3) => 2,
                _ => 1,
            };
            for _ in 0..times {
                let _ = tx.send(frame.clone());
            }
        }
    }
}

/// One Engine.IO/Socket.IO session over WebSocket: open, CONNECT, `subscribe` with ack, then forward frames.
async fn socketio(ws: WebSocketStream<TcpStream>, subs: Subscribers) {
    let (mut tx, mut rx) = ws.split();
    let (out, mut frames) = mpsc::unbounded_channel::<String>();
    let open = r#"0{"sid":"s","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#;
    if tx.send(Message::text(open)).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            frame = frames.recv() => {
                let Some(frame) = frame else { return };
                if tx.send(Message::text(frame)).await.is_err() {
                    return;
                }
            }
            msg = rx.next() => {
                let Some(Ok(Message::Text(t))) = msg else { return };
                let reply = if t.as_str() == "40" {
                    r#"40{"sid":"x"}"#.to_string()
                } else if let Some(rest) = t.as_str().strip_prefix("42") {
                    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
                    let (id, json) = rest.split_at(digits);
                    let Ok(v) = serde_json::from_str::<Value>(json) else { return };
                    let channel = v[1]["channel"].as_str().unwrap_or_default().to_string();
                    subs.borrow_mut().push((channel, out.clone()));
                    format!(r#"43{id}[{{"ok":true}}]"#)
                } else {
                    continue;
                };
                if tx.send(Message::text(reply)).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Runs `herald-bench fanout` (5 subscribers, 10 events) against the broken server; returns its exit code and
/// its JSON summary.
fn bench(fault: Fault) -> (i32, Value) {
    let url = start(fault);
    let out = Command::new(env!("CARGO_BIN_EXE_herald-bench"))
        .args([
            "fanout",
            "--url",
            &url,
            "--connections",
            "5",
            "--rate",
            "100",
        ])
        .args(["--duration", "0.1", "--idle", "0", "--drain", "1", "--json"])
        .output()
        .expect("running herald-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "no JSON summary ({e}); stdout {stdout}; stderr {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), summary)
}

fn counts(s: &Value) -> [u64; 5] {
    let c = &s["correctness"];
    [
        "gaps",
        "skipped",
        "duplicates",
        "missing",
        "first_event_lost",
    ]
    .map(|k| c[k].as_u64().unwrap_or(u64::MAX))
}

#[test]
fn a_clean_server_passes() {
    let (code, s) = bench(Fault::None);
    assert_eq!(counts(&s), [0, 0, 0, 0, 0], "{s}");
    assert_eq!(s["correctness"]["delivered"], 50, "{s}");
    assert_eq!(s["passed"], true);
    assert_eq!(code, 0);
}

#[test]
fn a_dropped_event_is_a_gap_and_missing() {
    let (code, s) = bench(Fault::Drop);
    // gaps, skipped, duplicates, missing, first lost
    assert_eq!(counts(&s), [1, 1, 0, 1, 0], "{s}");
    assert_eq!(s["correctness"]["connections_with_errors"], 1, "{s}");
    assert_eq!(s["passed"], false);
    assert_eq!(code, 2);
}

#[test]
fn a_duplicated_event_is_a_duplicate() {
    let (code, s) = bench(Fault::Dup);
    assert_eq!(counts(&s), [0, 0, 1, 0, 0], "{s}");
    assert_eq!(s["passed"], false);
    assert_eq!(code, 2);
}

#[test]
fn a_lost_first_event_is_reported_as_such() {
    let (code, s) = bench(Fault::First);
    assert_eq!(counts(&s), [1, 1, 0, 1, 1], "{s}");
    assert_eq!(s["passed"], false);
    assert_eq!(code, 2);
}
