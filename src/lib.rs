//! Herald: a real-time update server. Durable ordered channels delivered over Socket.IO, WebSocket and SSE.
//!
//! # Layout
//! Bottom to top (a module imports only those above it; `ARCHITECTURE.md` states the invariants):
//! - [`core`]: channels, events, retention, state, gaps, and [`core::engine::Engine`] with its SQLite and memory
//!   implementations (history, fan-out, sessions, presence). Knows nothing of HTTP or sockets.
//! - [`transport`]: Engine.IO, Socket.IO and WebSocket protocols: bytes only, no channels.
//! - [`auth`], [`policy`], [`registry`]: identities and channel rules; admission limits; live connections.
//! - [`api`]: the HTTP surface (JSON errors, key check, `Mounts`) and the engine's own routes.
//! - [`binding`]: channels over each transport, through one subscribe path and one refusal type.
//! - [`source`]: built-in producers (service monitor, live SQL) behind the `Source` trait.
//! - [`admin`]: the admin dashboard at `/admin` (embedded page, its `/api/admin` routes).
//! - [`proxy`]: `[[proxy]]` path prefixes forwarded to the user's backend (same origin as the socket).
//! - [`cluster`]: several nodes without sticky sessions (`[cluster]`, the Engine.IO session directory).
//! - [`config`], [`tls`], [`accept`], [`server`]: composing the sections, TLS, the accept loop, the wiring.
//! - [`config_error`], [`json`], [`number`]: leaves every layer may use.

pub mod accept;
pub mod admin;
pub mod api;
pub mod auth;
pub mod binding;
pub mod cluster;
pub mod config;
pub mod config_error;
pub mod core;
pub mod json;
pub mod metrics;
pub mod number;
pub mod policy;
pub mod proxy;
pub mod registry;
pub mod server;
pub mod source;
pub mod tls;
pub mod transport;
