//! Herald: a real-time update server. Durable ordered channels delivered over Socket.IO, WebSocket and SSE.

pub mod transport;
