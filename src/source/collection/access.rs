//! Who may list, read, create, update and delete a collection's documents, in the style of `[auth.rules]`.
//!
//! A rule is one or more alternatives joined by `|`, any of which admits: `anyone`, `nobody`, `api_key` (a
//! request carrying an accepted API key, or any request while no key is configured), `user` (an identified
//! user: a verified token, or the handshake fields of `[auth] identity_from_handshake` in the query string),
//! `role:NAME` (an identity holding that role) and `owner` (the user whose id the document's `owner_field`
//! holds). The `/api/collections` routes sit behind the API's key check and are the backend's: a caller there
//! passes every rule.

use serde_json::Value;

use crate::auth::Identity;

/// One alternative of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Who {
    Anyone,
    Nobody,
    ApiKey,
    User,
    Role(String),
    Owner,
}

/// A compiled rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule(Vec<Who>);

/// Who is asking.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// The request carries an accepted API key (or no keys are configured), or comes through `/api`.
    pub key: bool,
    /// The identity from a token or the handshake fields, if any.
    pub identity: Option<Identity>,
}

impl Caller {
    /// The caller's user id, if identified.
    pub fn user(&self) -> Option<&str> {
        self.identity.as_ref().and_then(|i| i.user.as_deref())
    }
}

/// What a rule says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Allowed whatever the document.
    Allow,
    /// Allowed only for documents this caller owns.
    OwnOnly,
    /// Refused.
    Deny,
}

impl Rule {
    /// Parses `anyone`, `role:owner | api_key`, ….
    pub fn parse(text: &str) -> Result<Self, String> {
        let alts = text
            .split('|')
            .map(|a| {
                let a = a.trim();
                Ok(match a {
                    "anyone" => Who::Anyone,
                    "nobody" => Who::Nobody,
                    "api_key" => Who::ApiKey,
                    "user" => Who::User,
                    "owner" => Who::Owner,
                    _ => match a.strip_prefix("role:").map(str::trim) {
                        Some(role) if !role.is_empty() => Who::Role(role.to_owned()),
                        _ => {
                            return Err(format!(
                                "access rule {text:?}: {a:?} is not anyone, nobody, api_key, user, owner or role:NAME"
                            ));
                        }
                    },
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self(alts))
    }

    /// Whether the rule names `owner`.
    pub fn uses_owner(&self) -> bool {
        self.0.contains(&Who::Owner)
    }

    /// What the rule says about `caller`, before looking at a document.
    pub fn decide(&self, caller: &Caller) -> Decision {
        let mut own = false;
        for who in &self.0 {
            let admits = match who {
                Who::Anyone => true,
                Who::Nobody => false,
                Who::ApiKey => caller.key,
                Who::User => caller.user().is_some(),
                Who::Role(r) => caller.identity.as_ref().is_some_and(|i| i.has_role(r)),
                Who::Owner => {
                    own |= caller.user().is_some();
                    false
                }
            };
            if admits {
                return Decision::Allow;
            }
        }
        if own {
            Decision::OwnOnly
        } else {
            Decision::Deny
        }
    }

    /// Whether `caller` may act on `doc`, whose owner is in `owner_field`.
    pub fn permits(&self, caller: &Caller, doc: &Value, owner_field: Option<&str>) -> bool {
        match self.decide(caller) {
            Decision::Allow => true,
            Decision::Deny => false,
            Decision::OwnOnly => owns(caller, doc, owner_field),
        }
    }
}

/// Whether `doc`'s owner field names the caller.
pub fn owns(caller: &Caller, doc: &Value, owner_field: Option<&str>) -> bool {
    match (owner_field.and_then(|f| doc.get(f)), caller.user()) {
        (Some(Value::String(owner)), Some(user)) => owner == user,
        (Some(Value::Number(owner)), Some(user)) => owner.to_string() == user,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn who(user: Option<&str>, roles: &[&str], key: bool) -> Caller {
        Caller {
            key,
            identity: user.map(|u| Identity {
                user: Some(u.to_owned()),
                roles: roles.iter().map(|r| (*r).to_owned()).collect(),
                ..Identity::anonymous()
            }),
        }
    }

    #[test]
    fn rules_admit_as_documented() {
        let anon = who(None, &[], false);
        let keyed = who(None, &[], true);
        let reader = who(Some("ann"), &["reader"], false);
        let owner = who(Some("boss"), &["owner"], false);
        let r = Rule::parse("anyone").unwrap();
        assert_eq!(r.decide(&anon), Decision::Allow);
        let r = Rule::parse("nobody").unwrap();
        assert_eq!(r.decide(&keyed), Decision::Deny);
        let r = Rule::parse("api_key").unwrap();
        assert_eq!(
            (r.decide(&keyed), r.decide(&reader)),
            (Decision::Allow, Decision::Deny)
        );
        let r = Rule::parse("role:owner | api_key").unwrap();
        assert_eq!(r.decide(&owner), Decision::Allow);
        assert_eq!(r.decide(&reader), Decision::Deny);
        assert_eq!(r.decide(&keyed), Decision::Allow);
        let r = Rule::parse("user").unwrap();
        assert_eq!(
            (r.decide(&reader), r.decide(&anon)),
            (Decision::Allow, Decision::Deny)
        );
        let r = Rule::parse("owner | role:owner").unwrap();
        assert!(r.uses_owner());
        assert_eq!(r.decide(&reader), Decision::OwnOnly);
        assert_eq!(r.decide(&anon), Decision::Deny);
        let mine = json!({"id": 1, "ownerId": "ann"});
        let theirs = json!({"id": 2, "ownerId": "zed"});
        assert!(r.permits(&reader, &mine, Some("ownerId")));
        assert!(!r.permits(&reader, &theirs, Some("ownerId")));
        assert!(
            r.permits(&owner, &theirs, Some("ownerId")),
            "role:owner admits any document"
        );
        assert!(
            !r.permits(&reader, &mine, None),
            "no owner field: nobody owns anything"
        );
    }

    #[test]
    fn unknown_alternatives_are_named() {
        let e = Rule::parse("anyone | admins").unwrap_err();
        assert!(e.contains("\"admins\""), "{e}");
        assert!(Rule::parse("role:").is_err());
        assert!(Rule::parse("").is_err());
    }
}
