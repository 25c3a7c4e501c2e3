//! Verification keys: each one pins the single algorithm tokens checked against it must declare.

use std::str::FromStr;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde_json::Value;

/// Largest JWKS document accepted, in bytes.
pub(crate) const MAX_JWKS_BYTES: usize = 1 << 20;

/// One key with its pinned algorithm and optional id.
#[derive(Clone)]
pub(crate) struct VerifyKey {
    pub alg: Algorithm,
    pub kid: Option<String>,
    pub key: DecodingKey,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material (HMAC secrets).
        f.debug_struct("VerifyKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// A public key from PEM bytes, for a non-HMAC algorithm.
pub(crate) fn from_pem(alg: Algorithm, pem: &[u8]) -> Result<DecodingKey, String> {
    let key = match alg.family() {
        AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(pem),
        AlgorithmFamily::Ec => DecodingKey::from_ec_pem(pem),
        AlgorithmFamily::Ed => DecodingKey::from_ed_pem(pem),
        AlgorithmFamily::Hmac => return Err("HMAC keys are not PEM files".into()),
    };
    key.map_err(|e| e.to_string())
}

/// Parses a JWKS document. Keys that are unusable (encryption keys, unknown types or curves, an `alg` that does
/// not fit the key type) are skipped; symmetric (`oct`) keys only count when `allow_symmetric`.
/// A document without any usable key is an error.
pub(crate) fn parse_jwks(bytes: &[u8], allow_symmetric: bool) -> Result<Vec<VerifyKey>, String> {
    if bytes.len() > MAX_JWKS_BYTES {
        return Err(format!("JWKS larger than {MAX_JWKS_BYTES} bytes"));
    }
    let doc: Value = serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON: {e}"))?;
    let Some(items) = doc.get("keys").and_then(Value::as_array) else {
        return Err("no \"keys\" array".into());
    };
    let keys: Vec<VerifyKey> = items
        .iter()
        .filter_map(|item| serde_json::from_value::<Jwk>(item.clone()).ok())
        .filter_map(|jwk| from_jwk(&jwk, allow_symmetric))
        .collect();
    if keys.is_empty() {
        return Err("no usable signature verification key".into());
    }
    Ok(keys)
}

/// One JWK as a verification key, or `None` if it cannot verify signatures here.
fn from_jwk(jwk: &Jwk, allow_symmetric: bool) -> Option<VerifyKey> {
    if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
        return None;
    }
    let declared = match jwk.common.key_algorithm {
        Some(alg) => Some(Algorithm::from_str(&alg.to_string()).ok()?),
        None => None,
    };
    let alg = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => match declared {
            Some(a) if a.family() == AlgorithmFamily::Rsa => a,
            Some(_) => return None,
            // The common default of issuers that omit `alg`.
            None => Algorithm::RS256,
        },
        AlgorithmParameters::EllipticCurve(p) => {
            let by_curve = match p.curve {
                EllipticCurve::P256 => Algorithm::ES256,
                EllipticCurve::P384 => Algorithm::ES384,
                _ => return None,
            };
            match declared {
                Some(a) if a != by_curve => return None,
                _ => by_curve,
            }
        }
        AlgorithmParameters::OctetKeyPair(p) => {
            if p.curve != EllipticCurve::Ed25519 || declared.is_some_and(|a| a != Algorithm::EdDSA)
            {
                return None;
            }
            Algorithm::EdDSA
        }
        AlgorithmParameters::OctetKey(_) => match declared {
            Some(a) if allow_symmetric && a.family() == AlgorithmFamily::Hmac => a,
            _ => return None,
        },
        _ => return None,
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(VerifyKey {
        alg,
        kid: jwk.common.key_id.clone(),
        key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwks_skips_unusable_keys() {
        let doc = br#"{"keys":[
            {"kty":"oct","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA","alg":"HS256","kid":"s"},
            {"kty":"RSA","use":"enc","kid":"e","n":"AQAB","e":"AQAB"},
            {"kty":"EC","crv":"P-256","kid":"c","alg":"ES384",
             "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty":"EC","crv":"P-256","kid":"ok",
             "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty":"weird"}
        ]}"#;
        let keys = parse_jwks(doc, false).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("ok"));
        assert_eq!(keys[0].alg, Algorithm::ES256);
        let keys = parse_jwks(doc, true).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].alg, Algorithm::HS256);
        assert!(!format!("{:?}", keys[0]).contains("c2Vj"));
    }

    #[test]
    fn jwks_errors() {
        assert!(parse_jwks(b"[]", true).is_err());
        assert!(parse_jwks(b"{\"keys\":[]}", true).is_err());
        assert!(parse_jwks(b"not json", true).is_err());
        assert!(parse_jwks(&vec![b' '; MAX_JWKS_BYTES + 1], true).is_err());
    }

    #[test]
    fn pem_needs_matching_family() {
        assert!(from_pem(Algorithm::HS256, b"x").is_err());
        assert!(from_pem(Algorithm::RS256, b"not a pem").is_err());
    }
}
