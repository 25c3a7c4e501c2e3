//! Bindings map core channels onto a transport's connections: subscriptions, delivery, resume.
//!
//! The protocol layers in `transport` know nothing of channels; the core knows nothing of sockets.

pub mod access;
pub mod client_events;
pub mod feed;
pub mod forward;
pub mod outbox;
pub mod refusal;
pub mod socketio;
pub mod sse;
pub mod stats;
pub mod subscribe;
pub mod template;
pub mod websocket;
pub mod wire;

/// Registers every binding's event encodings: a binding added beyond the event cache's room fails here, at
/// start-up.
pub fn register_encodings() -> Result<(), crate::core::event::SlotError> {
    socketio::register_encodings()?;
    websocket::register_encodings()?;
    sse::register_encodings()
}
