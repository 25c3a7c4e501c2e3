//! The socketioxide 0.18 peer for herald-bench: the same minimal surface as Herald and the Node peer —
//! `emit('subscribe', {channel}, ack)` joins the room named by the channel and acks `{ok:true,…}`, and
//! `POST /api/publish` (`{"channel","event","data"}` or `{"events":[…]}`) broadcasts to that room. No persistence.
//! Prints `herald listening on http://127.0.0.1:PORT` so the bench scripts treat it like Herald; `PORT` (default 0)
//! picks the port.

use axum::{Json, Router, extract::State, http::StatusCode, routing::post};
use serde::Deserialize;
use serde_json::{Value, json};
use socketioxide::{
    SocketIo,
    extract::{AckSender, Data, SocketRef},
};

/// The `subscribe` payload.
#[derive(Deserialize)]
struct Subscribe {
    channel: String,
}

/// One event of a publish request.
#[derive(Deserialize)]
struct Event {
    channel: String,
    event: String,
    #[serde(default)]
    data: Value,
}

/// A publish body: one event or a batch.
#[derive(Deserialize)]
#[serde(untagged)]
enum Publish {
    Batch { events: Vec<Event> },
    One(Event),
}

async fn publish(
    State(io): State<SocketIo>,
    Json(body): Json<Publish>,
) -> (StatusCode, Json<Value>) {
    let events = match body {
        Publish::Batch { events } => events,
        Publish::One(e) => vec![e],
    };
    let mut results = Vec::with_capacity(events.len());
    for e in &events {
        // A failed broadcast to some sockets (closed, queue full) is what the bench's correctness checks are for.
        let _ = io
            .to(e.channel.clone())
            .emit(e.event.clone(), &e.data)
            .await;
        results.push(json!({"channel": e.channel, "offset": 0, "epoch": "x"}));
    }
    (StatusCode::OK, Json(json!({ "results": results })))
}

fn main() -> anyhow::Result<()> {
    // One worker thread: the comparison pins each server to one core.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let (layer, io) = SocketIo::new_layer();
        io.ns("/", async |socket: SocketRef| {
            socket.on(
                "subscribe",
                async |socket: SocketRef, Data(s): Data<Subscribe>, ack: AckSender| {
                    socket.join(s.channel.clone());
                    let _ = ack.send(
                        &json!({"ok": true, "channel": s.channel, "offset": 0, "epoch": "x"}),
                    );
                },
            );
        });
        let app = Router::new()
            .route("/api/publish", post(publish))
            .with_state(io)
            .layer(layer);
        let port: u16 = std::env::var("PORT")
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        println!("herald listening on http://{}", listener.local_addr()?);
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        Ok(())
    })
}
