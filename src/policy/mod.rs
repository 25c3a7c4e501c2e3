//! Admission policy at the edge, shared by every transport and the HTTP API: allowed origins, and rate and
//! concurrency limits. Each refusal is answered with a clear error and logged.

pub mod origin;
pub mod rate;

use std::net::IpAddr;

pub use origin::Origins;
use rate::{Buckets, Concurrent, Slot};

use crate::config::LimitsConfig;

/// The limits of a running server.
pub struct Policy {
    /// Origin allow-list.
    pub origins: Origins,
    connects: Buckets<IpAddr>,
    handshakes: Buckets<IpAddr>,
    concurrent: Concurrent,
    sessions: Concurrent,
    publishes: Buckets<String>,
    /// Per-connection limits, applied by the bindings.
    pub per_connection: LimitsConfig,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The address opens connections faster than allowed.
    #[error("too many new connections from this address; slow down")]
    ConnectRate,
    /// The address holds the maximum number of connections.
    #[error("too many open connections from this address")]
    Concurrent,
}

impl Policy {
    /// From the configuration.
    pub fn new(origins: &[String], same_origin: bool, limits: &LimitsConfig) -> Self {
        Self {
            origins: Origins::new(origins, same_origin),
            connects: Buckets::new(
                limits.connections_per_second_per_ip,
                limits.connections_per_second_per_ip.saturating_mul(2),
            ),
            // Raw Engine.IO handshakes get twice the room: each Socket.IO connection is a handshake and a
            // CONNECT, and it is the CONNECT that answers with a code the client can read.
            handshakes: Buckets::new(
                limits.connections_per_second_per_ip.saturating_mul(2),
                limits.connections_per_second_per_ip.saturating_mul(4),
            ),
            concurrent: Concurrent::new(limits.connections_per_ip),
            // Engine.IO sessions, joined or not: twice the room, since each Socket.IO connection holds one of these
            // and, once it joins, one connection slot — where its refusal can carry a code the client shows.
            sessions: Concurrent::new(limits.connections_per_ip.saturating_mul(2)),
            publishes: Buckets::new(
                limits.publishes_per_second_per_key,
                limits.publishes_per_second_per_key,
            ),
            per_connection: limits.clone(),
        }
    }

    /// Counts a new connection from `ip` against the connection rate.
    pub fn connect_rate(&self, ip: Option<IpAddr>) -> Result<(), Refused> {
        match ip {
            Some(ip) if !self.connects.take(&ip) => {
                tracing::warn!(%ip, "connection rate limit hit");
                Err(Refused::ConnectRate)
            }
            _ => Ok(()),
        }
    }

    /// Counts an Engine.IO handshake from `ip` (sessions that never join a namespace still cost memory).
    pub fn handshake(&self, ip: Option<IpAddr>) -> Result<(), Refused> {
        match ip {
            Some(ip) if !self.handshakes.take(&ip) => {
                tracing::warn!(%ip, "handshake rate limit hit");
                Err(Refused::ConnectRate)
            }
            _ => Ok(()),
        }
    }

    /// A concurrent-connection slot for `ip` (none needed when the address is unknown).
    pub fn admit(&self, ip: Option<IpAddr>) -> Result<Option<Slot>, Refused> {
        let Some(ip) = ip else { return Ok(None) };
        match self.concurrent.acquire(ip) {
            Some(slot) => Ok(Some(slot)),
            None => {
                tracing::warn!(%ip, "concurrent connection limit hit");
                Err(Refused::Concurrent)
            }
        }
    }

    /// An Engine.IO session slot for `ip` (see `sessions`).
    pub fn admit_session(&self, ip: Option<IpAddr>) -> Result<Option<Slot>, Refused> {
        let Some(ip) = ip else { return Ok(None) };
        self.handshake(Some(ip))?;
        match self.sessions.acquire(ip) {
            Some(slot) => Ok(Some(slot)),
            None => {
                tracing::warn!(%ip, "Engine.IO session limit hit");
                Err(Refused::Concurrent)
            }
        }
    }

    /// Counts one publish request of `key` (the API key, or `""` without keys).
    pub fn publish(&self, key: &str) -> bool {
        let ok = self.publishes.take(&key.to_owned());
        if !ok {
            tracing::warn!("publish rate limit hit for an API key");
        }
        ok
    }
}
