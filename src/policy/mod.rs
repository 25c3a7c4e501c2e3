//! Admission policy at the edge, shared by every transport and the HTTP API: allowed origins, and rate and
//! concurrency limits. Each refusal is answered with a clear error and logged (aggregated, see `refusals`).

pub mod config;
pub mod origin;
pub mod rate;
pub mod refusals;

use std::net::IpAddr;

pub use config::LimitsConfig;
pub use origin::Origins;
use rate::{Buckets, Concurrent, Slot};

use refusals::RefusalLog;

/// The limits of a running server.
pub struct Policy {
    /// Origin allow-list.
    pub origins: Origins,
    connects: Buckets<IpAddr>,
    handshakes: Buckets<IpAddr>,
    concurrent: Concurrent,
    sessions: Concurrent,
    publishes: Buckets<String>,
    sockets: Concurrent,
    refusing: Concurrent,
    /// Per-connection limits, applied by the bindings.
    pub per_connection: LimitsConfig,
    /// Refusals, logged aggregated; the server flushes it every [`refusals::INTERVAL`].
    pub refusals: RefusalLog,
}

/// What becomes of a newly accepted TCP socket.
pub enum Accept {
    /// Served; the slot is held as long as the socket is open.
    Serve(Slot),
    /// Over the address's socket budget: answered 429 and closed, within the request-head deadline.
    Refuse(Slot),
    /// Over that twice: closed at once.
    Close,
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

/// The address a limit counts: IPv4 as is (an IPv4-mapped IPv6 address as its IPv4 address), IPv6 by its /64
/// prefix — one host or site is usually given a whole /64, so counting single IPv6 addresses would let it
/// multiply every per-address limit by choosing new source addresses.
pub fn client(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from_bits(
                v6.to_bits() & !((1u128 << 64) - 1),
            )),
        },
    }
}

impl Policy {
    /// From the configuration.
    pub fn new(origins: &[String], same_origin: bool, limits: &LimitsConfig) -> Self {
        Self {
            origins: Origins::new(origins, same_origin),
            connects: Buckets::new(
                limits.connections_per_second_per_ip,
                limits.connections_burst(),
            ),
            // Raw Engine.IO handshakes get twice the room: each Socket.IO connection is a handshake and a
            // CONNECT, and it is the CONNECT that answers with a code the client can read.
            handshakes: Buckets::new(
                limits.connections_per_second_per_ip.saturating_mul(2),
                limits.connections_burst().saturating_mul(2),
            ),
            concurrent: Concurrent::new(limits.connections_per_ip),
            // Engine.IO sessions, joined or not: twice the room, since each Socket.IO connection holds one of these
            // and, once it joins, one connection slot — where its refusal can carry a code the client shows.
            sessions: Concurrent::new(limits.connections_per_ip.saturating_mul(2)),
            publishes: Buckets::new(
                limits.publishes_per_second_per_key,
                limits.publishes_burst(),
            ),
            // A budget of its own rather than the connection slots: those are refused with a code the client can
            // read (HTTP 429 JSON, a Socket.IO connect_error), which needs a request; this one bounds the sockets
            // that never become a connection (silent, slow heads, idle keep-alive) and is larger, so that a client
            // meets the readable refusal first.
            sockets: Concurrent::new(limits.sockets_per_ip()),
            // Refused sockets are answered while they last (at most the request-head deadline); as many again.
            refusing: Concurrent::new(limits.sockets_per_ip()),
            per_connection: limits.clone(),
            refusals: RefusalLog::default(),
        }
    }

    /// Admits a newly accepted socket from `ip` against the address's socket budget (`sockets_per_ip`).
    pub fn accept_socket(&self, ip: IpAddr) -> Accept {
        let ip = client(ip);
        if let Some(slot) = self.sockets.acquire(ip) {
            return Accept::Serve(slot);
        }
        self.refusals
            .record("open socket limit (sockets_per_ip) hit", Some(ip));
        match self.refusing.acquire(ip) {
            Some(slot) => Accept::Refuse(slot),
            None => Accept::Close,
        }
    }

    /// Counts a new connection from `ip` against the connection rate.
    pub fn connect_rate(&self, ip: Option<IpAddr>) -> Result<(), Refused> {
        match ip.map(client) {
            Some(ip) if !self.connects.take(&ip) => {
                self.refusals.record("connection rate limit hit", Some(ip));
                Err(Refused::ConnectRate)
            }
            _ => Ok(()),
        }
    }

    /// Counts an Engine.IO handshake from `ip` (sessions that never join a namespace still cost memory).
    pub fn handshake(&self, ip: Option<IpAddr>) -> Result<(), Refused> {
        match ip.map(client) {
            Some(ip) if !self.handshakes.take(&ip) => {
                self.refusals.record("handshake rate limit hit", Some(ip));
                Err(Refused::ConnectRate)
            }
            _ => Ok(()),
        }
    }

    /// A concurrent-connection slot for `ip` (none needed when the address is unknown).
    pub fn admit(&self, ip: Option<IpAddr>) -> Result<Option<Slot>, Refused> {
        let Some(ip) = ip.map(client) else {
            return Ok(None);
        };
        match self.concurrent.acquire(ip) {
            Some(slot) => Ok(Some(slot)),
            None => {
                self.refusals
                    .record("concurrent connection limit hit", Some(ip));
                Err(Refused::Concurrent)
            }
        }
    }

    /// An Engine.IO session slot for `ip` (see `sessions`).
    pub fn admit_session(&self, ip: Option<IpAddr>) -> Result<Option<Slot>, Refused> {
        let Some(ip) = ip.map(client) else {
            return Ok(None);
        };
        self.handshake(Some(ip))?;
        match self.sessions.acquire(ip) {
            Some(slot) => Ok(Some(slot)),
            None => {
                self.refusals
                    .record("Engine.IO session limit hit", Some(ip));
                Err(Refused::Concurrent)
            }
        }
    }

    /// Counts one publish request of `key` (the API key, or `""` without keys).
    pub fn publish(&self, key: &str) -> bool {
        let ok = self.publishes.take(&key.to_owned());
        if !ok {
            self.refusals
                .record("publish rate limit hit for an API key", None);
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_addresses_count_by_their_64_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client(a), "2001:db8:1:2::".parse::<IpAddr>().unwrap());
        assert_eq!(client(a), client(b));
        assert_ne!(client(a), client(other));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(client(mapped), IpAddr::from([192, 0, 2, 7]));
        let limits = LimitsConfig {
            sockets_per_ip: Some(1),
            ..LimitsConfig::default()
        };
        let p = Policy::new(&[], false, &limits);
        let _held = p.accept_socket(a);
        assert!(
            !matches!(p.accept_socket(b), Accept::Serve(_)),
            "another address of the same /64 shares the budget"
        );
        assert!(matches!(p.accept_socket(other), Accept::Serve(_)));
    }

    #[test]
    fn sockets_beyond_the_budget_are_refused_then_closed_and_slots_come_back() {
        let limits = LimitsConfig {
            sockets_per_ip: Some(2),
            ..LimitsConfig::default()
        };
        let p = Policy::new(&[], false, &limits);
        let ip: IpAddr = [127, 0, 0, 1].into();
        let served: Vec<_> = (0..2).map(|_| p.accept_socket(ip)).collect();
        assert!(served.iter().all(|a| matches!(a, Accept::Serve(_))));
        let refused: Vec<_> = (0..2).map(|_| p.accept_socket(ip)).collect();
        assert!(refused.iter().all(|a| matches!(a, Accept::Refuse(_))));
        assert!(matches!(p.accept_socket(ip), Accept::Close));
        let other: IpAddr = [127, 0, 0, 2].into();
        assert!(
            matches!(p.accept_socket(other), Accept::Serve(_)),
            "budgets are per address"
        );
        drop(served);
        assert!(matches!(p.accept_socket(ip), Accept::Serve(_)));
    }
}
