//! Transports adapt the core to wire protocols; the core knows nothing of them.

pub mod engineio;
pub mod socketio;
pub mod websocket;
