//! Channel permissions: `[[auth.rules]]` compiled once, evaluated per identity and channel.
//!
//! A rule applies to a request when
//! - it sets the requested action (`subscribe` / `publish`; a rule without it is skipped for that action),
//! - the identity qualifies: authenticated identities qualify when `roles` is empty or they hold one of the roles;
//!   anonymous identities qualify only for rules with `anonymous = true` and no `roles`,
//! - and its pattern matches the channel.
//!
//! The first rule that applies decides (`true` allows, `false` refuses); when none applies the request is refused.
//! With no rules at all, authenticated identities may do everything and anonymous ones too when admitted.
//!
//! Patterns: `*` matches any run of characters; `{claim}` is replaced by the identity's value of that claim (a
//! string or an integer; an array gives one pattern per element). Substituted values only ever match literally:
//! a value that is not a valid channel name (it contains `*`, `/`, control characters, …) matches nothing, and a
//! pattern whose claim is missing matches nothing.

use super::AuthConfig;
use super::{AuthConfigError, Identity};
use crate::core::channel::{ChannelName, Pattern};

/// Most channel names one rule may expand to for one identity (arrays in several placeholders multiply);
/// beyond it the rule matches nothing.
const MAX_EXPANSIONS: usize = 1024;

/// Compiled permission rules.
#[derive(Debug, Clone)]
pub struct Permissions {
    rules: Vec<Rule>,
    anonymous: bool,
    subscriptions_claim: Option<String>,
}

#[derive(Debug, Clone)]
struct Rule {
    parts: Vec<Part>,
    subscribe: Option<bool>,
    publish: Option<bool>,
    roles: Vec<String>,
    anonymous: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    /// Literal text in which `*` is a wildcard.
    Glob(String),
    /// A claim whose values are substituted literally.
    Claim(String),
}

#[derive(Clone, Copy)]
enum Action {
    Subscribe,
    Publish,
}

impl Permissions {
    /// Compiles `[auth] rules`.
    pub fn from_config(config: &AuthConfig) -> Result<Self, AuthConfigError> {
        let rules = config
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let parts = parse(&r.pattern).map_err(|m| {
                    AuthConfigError::Invalid(format!(
                        "auth.rules[{i}] pattern {:?}: {m}",
                        r.pattern
                    ))
                })?;
                Ok(Rule {
                    parts,
                    subscribe: r.subscribe,
                    publish: r.publish,
                    roles: r.roles.clone(),
                    anonymous: r.anonymous,
                })
            })
            .collect::<Result<_, AuthConfigError>>()?;
        Ok(Self {
            rules,
            anonymous: config.anonymous_allowed(),
            subscriptions_claim: config.subscriptions_claim.clone(),
        })
    }

    /// Whether `id` may subscribe to `channel`.
    pub fn can_subscribe(&self, id: &Identity, channel: &ChannelName) -> bool {
        self.decide(id, channel, Action::Subscribe)
    }

    /// Whether `id` may publish to `channel`.
    pub fn can_publish(&self, id: &Identity, channel: &ChannelName) -> bool {
        self.decide(id, channel, Action::Publish)
    }

    /// The channels `id` is subscribed to on connect: the valid channel names in its `subscriptions_claim`
    /// (a string or an array of strings) that it may subscribe to, without duplicates, in claim order.
    pub fn server_side_channels(&self, id: &Identity) -> Vec<ChannelName> {
        let Some(claim) = &self.subscriptions_claim else {
            return Vec::new();
        };
        let mut out: Vec<ChannelName> = Vec::new();
        for value in id.claim_values(claim) {
            if let Ok(name) = ChannelName::new(&value)
                && !out.contains(&name)
                && self.can_subscribe(id, &name)
            {
                out.push(name);
            }
        }
        out
    }

    fn decide(&self, id: &Identity, channel: &ChannelName, action: Action) -> bool {
        if id.anonymous && !self.anonymous {
            return false;
        }
        if self.rules.is_empty() {
            return true;
        }
        for rule in &self.rules {
            let verdict = match action {
                Action::Subscribe => rule.subscribe,
                Action::Publish => rule.publish,
            };
            let Some(verdict) = verdict else { continue };
            if rule.qualifies(id) && rule.matches(id, channel.as_str()) {
                return verdict;
            }
        }
        false
    }
}

impl Rule {
    fn qualifies(&self, id: &Identity) -> bool {
        if id.anonymous {
            self.anonymous && self.roles.is_empty()
        } else {
            self.roles.is_empty() || self.roles.iter().any(|r| id.has_role(r))
        }
    }

    /// Expands the placeholders and matches every expansion against `channel`. Claim values are substituted
    /// only when they are valid channel names, which cannot contain `*`: a value always matches literally.
    fn matches(&self, id: &Identity, channel: &str) -> bool {
        let mut expansions = vec![String::new()];
        for part in &self.parts {
            match part {
                Part::Glob(s) => expansions.iter_mut().for_each(|e| e.push_str(s)),
                Part::Claim(name) => {
                    let values: Vec<String> = id
                        .claim_values(name)
                        .into_iter()
                        .filter(|v| ChannelName::new(v).is_ok())
                        .collect();
                    if values.is_empty() || expansions.len() * values.len() > MAX_EXPANSIONS {
                        return false;
                    }
                    expansions = expansions
                        .iter()
                        .flat_map(|e| values.iter().map(move |v| format!("{e}{v}")))
                        .collect();
                }
            }
        }
        expansions.iter().any(|p| Pattern::new(p).matches(channel))
    }
}

/// Validates a rule pattern (used by config validation).
pub(super) fn check_pattern(pattern: &str) -> Result<(), String> {
    parse(pattern).map(|_| ())
}

/// Splits a pattern into glob text and `{claim}` placeholders.
fn parse(pattern: &str) -> Result<Vec<Part>, String> {
    if pattern.is_empty() {
        return Err("empty pattern".into());
    }
    let mut parts = Vec::new();
    let mut rest = pattern;
    while !rest.is_empty() {
        match rest.find(['{', '}']) {
            Some(i) if rest[i..].starts_with('}') => return Err("unmatched '}'".into()),
            Some(i) => {
                push_glob(&mut parts, &rest[..i])?;
                let after = &rest[i + 1..];
                let end = after.find('}').ok_or("unmatched '{'")?;
                let name = &after[..end];
                if name.is_empty()
                    || !name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-.:".contains(c))
                {
                    return Err(format!("bad placeholder {{{name}}}"));
                }
                parts.push(Part::Claim(name.to_owned()));
                rest = &after[end + 1..];
            }
            None => {
                push_glob(&mut parts, rest)?;
                rest = "";
            }
        }
    }
    Ok(parts)
}

fn push_glob(parts: &mut Vec<Part>, text: &str) -> Result<(), String> {
    if text.is_empty() {
        return Ok(());
    }
    for c in text.chars() {
        let ok = c == '*' || c == ' ' || ChannelName::new(c.encode_utf8(&mut [0; 4])).is_ok();
        if !ok {
            return Err(format!("{c:?} cannot occur in a channel name"));
        }
    }
    parts.push(Part::Glob(text.to_owned()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AuthRule;
    use serde_json::{Value, json};

    fn rule(pattern: &str, subscribe: Option<bool>) -> AuthRule {
        AuthRule {
            pattern: pattern.into(),
            subscribe,
            publish: None,
            roles: Vec::new(),
            anonymous: false,
        }
    }

    fn perms(rules: Vec<AuthRule>) -> Permissions {
        let config = AuthConfig {
            rules,
            anonymous: Some(true),
            subscriptions_claim: Some("channels".into()),
            ..AuthConfig::default()
        };
        Permissions::from_config(&config).unwrap()
    }

    fn user(claims: Value) -> Identity {
        let Value::Object(map) = claims else {
            panic!("claims must be an object")
        };
        Identity::from_claims(map, "sub", "roles")
    }

    fn ch(name: &str) -> ChannelName {
        ChannelName::new(name).unwrap()
    }

    #[test]
    fn parses_patterns() {
        assert_eq!(
            parse("user_{sub}").unwrap(),
            [Part::Glob("user_".into()), Part::Claim("sub".into())]
        );
        assert_eq!(
            parse("{a}{b}*").unwrap(),
            [
                Part::Claim("a".into()),
                Part::Claim("b".into()),
                Part::Glob("*".into())
            ]
        );
        for bad in ["", "a{", "a}", "{}", "{a b}", "a/b", "x{a{b}}"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert!(parse("Ligne Süd *").is_ok());
    }

    #[test]
    fn claim_values_match_literally() {
        // Substituted values are valid channel names, so the only wildcard left is the rule's own `*`.
        let p = perms(vec![rule("room:{sub}*", Some(true))]);
        assert!(p.can_subscribe(&user(json!({"sub": "a"})), &ch("room:aXX")));
        assert!(!p.can_subscribe(&user(json!({"sub": "*"})), &ch("room:x")));
        assert!(!p.can_subscribe(&user(json!({"sub": "a"})), &ch("room:b")));
    }

    #[test]
    fn user_rooms() {
        let p = perms(vec![rule("user_{sub}", Some(true))]);
        let alice = user(json!({"sub": "alice"}));
        assert!(p.can_subscribe(&alice, &ch("user_alice")));
        assert!(!p.can_subscribe(&alice, &ch("user_bob")));
        assert!(!p.can_subscribe(&alice, &ch("user_alice2")));
        assert!(!p.can_publish(&alice, &ch("user_alice")));
        let numeric = user(json!({"sub": 7}));
        assert!(p.can_subscribe(&numeric, &ch("user_7")));
        let nosub = user(json!({}));
        assert!(!p.can_subscribe(&nosub, &ch("user_")));
    }

    #[test]
    fn roles_and_first_match() {
        let mut owners = rule("owners", Some(true));
        owners.roles = vec!["owner".into()];
        let p = perms(vec![
            owners,
            rule("owners", Some(false)),
            rule("*", Some(true)),
        ]);
        let owner = user(json!({"sub": "o", "roles": ["owner"]}));
        let reader = user(json!({"sub": "r", "roles": "reader"}));
        assert!(p.can_subscribe(&owner, &ch("owners")));
        assert!(!p.can_subscribe(&reader, &ch("owners")));
        assert!(p.can_subscribe(&reader, &ch("books")));
        assert!(!p.can_subscribe(&Identity::anonymous(), &ch("books")));
    }

    #[test]
    fn array_claims_expand() {
        let p = perms(vec![rule("service:{services}", Some(true))]);
        let id = user(json!({"sub": "u", "services": ["api", "db", 3]}));
        assert!(p.can_subscribe(&id, &ch("service:api")));
        assert!(p.can_subscribe(&id, &ch("service:db")));
        assert!(p.can_subscribe(&id, &ch("service:3")));
        assert!(!p.can_subscribe(&id, &ch("service:web")));
        assert!(!p.can_subscribe(&id, &ch("service:apidb")));
    }

    #[test]
    fn claim_values_are_literal() {
        let p = perms(vec![
            rule("service:{services}", Some(true)),
            rule("user_{sub}", Some(true)),
            rule("t:{a}-{b}", Some(true)),
        ]);
        let star = user(json!({"sub": "*", "services": ["*", "a*", "x/y", "", " a"]}));
        for name in ["service:x", "service:a", "service:abc", "user_bob", "user_"] {
            assert!(!p.can_subscribe(&star, &ch(name)), "{name}");
        }
        // Multiple placeholders multiply; beyond the cap the rule matches nothing.
        let many: Vec<String> = (0..40).map(|i| i.to_string()).collect();
        let id = user(json!({"a": many, "b": many}));
        assert!(!p.can_subscribe(&id, &ch("t:1-2")));
        let id = user(json!({"a": ["1", "2"], "b": ["3"]}));
        assert!(p.can_subscribe(&id, &ch("t:2-3")));
        assert!(!p.can_subscribe(&id, &ch("t:3-2")));
    }

    #[test]
    fn anonymous_rules() {
        let mut public = rule("public:*", Some(true));
        public.publish = Some(false);
        public.anonymous = true;
        let mut everything = rule("*", Some(true));
        everything.publish = Some(true);
        let p = perms(vec![public, everything]);
        let anon = Identity::anonymous();
        let u = user(json!({"sub": "u"}));
        assert!(p.can_subscribe(&anon, &ch("public:news")));
        assert!(!p.can_publish(&anon, &ch("public:news")));
        assert!(!p.can_subscribe(&anon, &ch("private")));
        assert!(p.can_subscribe(&u, &ch("private")));
        assert!(!p.can_publish(&u, &ch("public:news")));
        assert!(p.can_publish(&u, &ch("private")));

        // An anonymous rule cannot let anonymous clients in when they are not admitted.
        let mut public = rule("public:*", Some(true));
        public.anonymous = true;
        let config = AuthConfig {
            rules: vec![public],
            anonymous: Some(false),
            ..AuthConfig::default()
        };
        let p = Permissions::from_config(&config).unwrap();
        assert!(!p.can_subscribe(&anon, &ch("public:news")));
    }

    #[test]
    fn no_rules() {
        let p = perms(Vec::new());
        let u = user(json!({"sub": "u"}));
        assert!(p.can_subscribe(&u, &ch("anything")));
        assert!(p.can_publish(&u, &ch("anything")));
        assert!(p.can_subscribe(&Identity::anonymous(), &ch("anything")));
        let closed = Permissions::from_config(&AuthConfig {
            anonymous: Some(false),
            ..AuthConfig::default()
        })
        .unwrap();
        assert!(!closed.can_subscribe(&Identity::anonymous(), &ch("anything")));
        assert!(closed.can_subscribe(&u, &ch("anything")));
    }

    #[test]
    fn server_side_channels_are_filtered() {
        let p = perms(vec![
            rule("service:{services}", Some(true)),
            rule("news", Some(true)),
        ]);
        let id = user(json!({
            "services": ["api"],
            "channels": ["service:api", "news", "service:db", "a/b", "news", "service:api"]
        }));
        assert_eq!(p.server_side_channels(&id), [ch("service:api"), ch("news")]);
        let single = user(json!({"channels": "news"}));
        assert_eq!(p.server_side_channels(&single), [ch("news")]);
        let none = perms(Vec::new());
        let mut config_less = none.clone();
        config_less.subscriptions_claim = None;
        assert!(config_less.server_side_channels(&id).is_empty());
    }
}
