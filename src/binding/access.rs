//! Who a connection is and what it may do: the auth library applied the same way by every binding — the
//! token found where the client could put it, verified into an identity, channel permissions, the channels a
//! client gets without asking; refusals are [`Refusal`]s.

use std::sync::Arc;

use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::Value;

use super::refusal::Refusal;
use crate::auth::{
    AuthConfig, AuthConfigError, AuthError, Authenticator, HandshakeIdentity, Identity,
    Permissions, TokenExtractor,
};
use crate::core::channel::ChannelName;
use crate::policy::LimitsConfig;
use crate::policy::Policy;
use crate::policy::rate::{Bucket, MessageLimit, Slot};

/// Authentication and permissions for the bindings.
pub struct Access {
    /// Origins and rate limits.
    pub policy: Arc<Policy>,
    authenticator: Authenticator,
    permissions: Permissions,
    tokens: TokenExtractor,
    /// `[auth] identity_from_handshake`, with the claims its values are stored as.
    handshake: Option<(HandshakeIdentity, String, String)>,
    server_side: Vec<ChannelName>,
    leeway: std::time::Duration,
}

impl Access {
    /// Builds the checks from `[auth]` (loading key files), the origin allow-list, `[limits]` and the channels
    /// every client gets on connect.
    pub fn new(
        auth: &AuthConfig,
        allowed_origins: &[String],
        limits: &LimitsConfig,
        server_side: Vec<ChannelName>,
    ) -> Result<Arc<Self>, AuthConfigError> {
        if auth.keys.is_empty() && auth.anonymous_allowed() {
            tracing::warn!(
                "no JWT keys configured: every client connects anonymously; set [auth] keys to require tokens"
            );
        } else if auth.anonymous_allowed() {
            tracing::warn!("[auth] anonymous = true: clients without a token connect anonymously");
        }
        if let Some(h) = &auth.identity_from_handshake {
            tracing::warn!(
                user = %h.user,
                roles = ?h.roles,
                "[auth] identity_from_handshake: clients without a token are whoever their handshake says (UNTRUSTED: \
                 nothing verifies it; for trusted or development setups only)"
            );
        }
        Ok(Arc::new(Self {
            // With cookie authentication and no allow-list, only same-origin pages may connect: a cross-site page
            // could otherwise open a WebSocket carrying the visitor's cookie.
            policy: Arc::new(Policy::new(allowed_origins, auth.cookie.is_some(), limits)),
            authenticator: Authenticator::new(auth)?,
            permissions: Permissions::from_config(auth)?,
            tokens: TokenExtractor::from_config(auth),
            handshake: auth
                .identity_from_handshake
                .clone()
                .map(|h| (h, auth.user_claim.clone(), auth.roles_claim.clone())),
            server_side,
            leeway: auth.leeway,
        }))
    }

    /// The identity behind a connection: its token from the Socket.IO `auth` object, `Authorization: Bearer`,
    /// the query string or the cookie; without one, the handshake's (`[auth] identity_from_handshake`) — or
    /// anonymous, where admitted. A token that fails is refused whatever the handshake says.
    pub async fn identify(
        &self,
        headers: &HeaderMap,
        query: &[(String, String)],
        socketio_auth: Option<&Value>,
    ) -> Result<Identity, AuthError> {
        let pairs = || query.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        let token = self.tokens.extract(headers, pairs(), socketio_auth);
        if token.is_none()
            && let Some((fields, user_claim, roles_claim)) = &self.handshake
            && let Some(id) = fields.identity(pairs(), socketio_auth, user_claim, roles_claim)?
        {
            tracing::debug!(user = ?id.user, roles = ?id.roles, "identity from the handshake (unverified)");
            return Ok(id);
        }
        self.authenticator.authenticate(token).await
    }

    /// `Ok` if `id` may subscribe to `channel`.
    pub fn subscribe(&self, id: &Identity, channel: &ChannelName) -> Result<(), Refusal> {
        if self.permissions.can_subscribe(id, channel) {
            Ok(())
        } else {
            Err(Refusal::Forbidden(channel.clone()))
        }
    }

    /// `Ok` if `id` may publish to `channel` (a mapped client event's `publish`).
    pub fn publish(&self, id: &Identity, channel: &ChannelName) -> Result<(), Refusal> {
        if self.permissions.can_publish(id, channel) {
            Ok(())
        } else {
            Err(Refusal::PublishForbidden(channel.clone()))
        }
    }

    /// `Ok` if `id` may add `channels` to a connection holding `held`: each one permitted, then room for those
    /// it does not hold yet within the per-connection subscription limit.
    pub fn permit(
        &self,
        id: &Identity,
        held: &[ChannelName],
        channels: &[ChannelName],
    ) -> Result<(), Refusal> {
        for c in channels {
            self.subscribe(id, c)?;
        }
        let max = self.policy.per_connection.subscriptions_per_connection;
        let mut added: Vec<&ChannelName> = channels.iter().filter(|c| !held.contains(c)).collect();
        added.sort();
        added.dedup();
        if max == 0 || held.len() + added.len() <= max {
            Ok(())
        } else {
            Err(Refusal::TooManySubscriptions { max })
        }
    }

    /// How long until `id`'s token stops verifying: its `exp` plus the leeway, rounded up to whole seconds as the
    /// verifier compares them. Ending a connection earlier would let the same token straight back in.
    pub fn expires_in(&self, id: &Identity) -> Option<std::time::Duration> {
        id.expires_in()
            .map(|left| left + self.leeway + std::time::Duration::from_secs(1))
    }

    /// Whether a resumed session keeps `channel`: still permitted, or one the server subscribes it to anyway.
    pub fn keeps(&self, id: &Identity, channel: &ChannelName) -> bool {
        self.permissions.can_subscribe(id, channel) || self.initial_channels(id).contains(channel)
    }

    /// Channels `id` is subscribed to on connect: the configured ones, then those its token names.
    pub fn initial_channels(&self, id: &Identity) -> Vec<ChannelName> {
        let mut channels = self.server_side.clone();
        for c in self.permissions.server_side_channels(id) {
            if !channels.contains(&c) {
                channels.push(c);
            }
        }
        channels
    }
}

/// Parses a URI's query string into pairs (malformed input yields none).
pub fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .and_then(|q| serde_urlencoded::from_str(q).ok())
        .unwrap_or_default()
}

impl Access {
    /// The allowance of one connection's messages, its refusals counted and logged at most once per interval.
    pub fn message_limit(&self) -> MessageLimit {
        MessageLimit::new(self.message_bucket())
    }

    /// Admits a new connection from `ip`: the per-address connection rate, then a concurrency slot to hold
    /// for the connection's lifetime.
    pub fn admit(&self, ip: Option<std::net::IpAddr>) -> Result<Option<Slot>, Refusal> {
        self.policy.connect_rate(ip)?;
        Ok(self.policy.admit(ip)?)
    }

    /// A bucket for the events one connection may publish through mapped client events.
    pub fn client_publish_bucket(&self) -> Bucket {
        let limits = &self.policy.per_connection;
        Bucket::new(
            limits.client_publishes_per_second,
            limits.client_publishes_burst(),
        )
    }

    /// A bucket for the messages one connection may send.
    pub fn message_bucket(&self) -> Bucket {
        let limits = &self.policy.per_connection;
        Bucket::new(limits.messages_per_second, limits.messages_burst())
    }
}

impl Access {
    /// Lets an HTTP-level client in (plain WebSocket, SSE): its identity, then a connection slot; or the HTTP
    /// refusal to answer instead (401/429).
    pub async fn enter(
        &self,
        headers: &HeaderMap,
        query: &[(String, String)],
        ip: Option<std::net::IpAddr>,
    ) -> Result<(Identity, Option<Slot>), Refusal> {
        let identity = self.identify(headers, query, None).await?;
        let slot = self.admit(ip)?;
        Ok((identity, slot))
    }
}

impl Access {
    /// Admits a new Engine.IO session: the handshake rate, then a session slot it holds until it closes.
    pub fn admit_session(
        &self,
        ip: Option<std::net::IpAddr>,
    ) -> Result<Option<crate::transport::engineio::Admission>, Box<Response>> {
        let slot = self
            .policy
            .admit_session(ip)
            .map_err(|e| Box::new(Refusal::from(e).response()))?;
        Ok(slot.map(|s| Box::new(s) as crate::transport::engineio::Admission))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &str = "herald-test-hmac-secret-0123456789abcdef";

    fn access() -> Arc<Access> {
        let auth: AuthConfig = toml::from_str(&format!(
            "identity_from_handshake = {{ user = \"userId\", roles = \"role\" }}\n\
             [[keys]]\nkind = \"hmac\"\nalgorithm = \"HS256\"\nsecret = \"{SECRET}\"\n"
        ))
        .unwrap();
        Access::new(&auth, &[], &LimitsConfig::default(), Vec::new()).unwrap()
    }

    fn token(sub: &str) -> String {
        let claims = json!({"sub": sub, "exp": 4_000_000_000u64});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    fn query(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[tokio::test]
    async fn the_handshake_names_the_user_only_without_a_token() {
        let access = access();
        let headers = HeaderMap::new();
        let q = query(&[("userId", "u1"), ("role", "owner")]);
        let id = access.identify(&headers, &q, None).await.unwrap();
        assert_eq!(
            (id.user.as_deref(), id.roles.clone()),
            (Some("u1"), vec!["owner".to_owned()])
        );
        // The Socket.IO auth object first.
        let auth = json!({"userId": "u9"});
        let id = access.identify(&headers, &q, Some(&auth)).await.unwrap();
        assert_eq!(id.user.as_deref(), Some("u9"));
        // A valid token wins; its identity has none of the handshake's roles.
        let auth = json!({"token": token("j1"), "userId": "u1"});
        let id = access.identify(&headers, &q, Some(&auth)).await.unwrap();
        assert_eq!((id.user.as_deref(), id.roles.len()), (Some("j1"), 0));
        // A bad token is refused, never replaced by the handshake.
        let auth = json!({"token": "not.a.token"});
        assert!(access.identify(&headers, &q, Some(&auth)).await.is_err());
        let mut q_token = q.clone();
        q_token.push(("token".into(), format!("{}x", token("j1"))));
        assert!(access.identify(&headers, &q_token, None).await.is_err());
        // No user named, no token, keys configured: refused as before.
        let e = access
            .identify(&headers, &query(&[("role", "owner")]), None)
            .await
            .unwrap_err();
        assert_eq!(e, AuthError::MissingToken);
    }
}
