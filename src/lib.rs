//! Herald: a real-time update server. Durable ordered channels delivered over Socket.IO, WebSocket and SSE.

pub mod accept;
pub mod api;
pub mod auth;
pub mod binding;
pub mod config;
pub mod config_error;
pub mod core;
pub mod json;
pub mod number;
pub mod policy;
pub mod registry;
pub mod server;
pub mod source;
pub mod tls;
pub mod transport;
