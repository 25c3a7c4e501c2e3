// JWTs for the auth tests, signed with node's own crypto (no dependency) using the test-only key pairs in
// tests/fixtures/keys/. Also hand-made bad tokens: `alg: none`, a tampered signature, the HS256-with-the-RSA-
// public-key confusion.
import { createHmac, createPrivateKey, sign as cryptoSign } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { REPO_ROOT } from './herald.js';

export const KEYS_DIR = join(REPO_ROOT, 'tests/fixtures/keys');
/** Absolute path of a fixture key file (for `path = "…"` in a config). */
export const keyPath = (name) => join(KEYS_DIR, name);
const pem = (name) => readFileSync(keyPath(name), 'utf8');

/** A 32+ byte HMAC secret, for `secret = "…"` in a config. */
export const HMAC_SECRET = 'herald-test-hmac-secret-0123456789abcdef';

export const b64url = (buf) => Buffer.from(buf).toString('base64url');
const enc = (obj) => b64url(JSON.stringify(obj));

/** Seconds since the epoch, as JWT NumericDates count. */
export const nowSecs = () => Math.floor(Date.now() / 1000);

const PRIVATE = {
  RS256: () => createPrivateKey(pem('rsa_private.pem')),
  RS256_2: () => createPrivateKey(pem('rsa2_private.pem')),
  ES256: () => createPrivateKey(pem('ec_private.pem')),
  EdDSA: () => createPrivateKey(pem('ed_private.pem')),
};

function signature(alg, input, { key, secret } = {}) {
  switch (alg) {
    case 'HS256': return createHmac('sha256', secret ?? HMAC_SECRET).update(input).digest();
    case 'RS256': return cryptoSign('sha256', Buffer.from(input), key ?? PRIVATE.RS256());
    case 'ES256': return cryptoSign('sha256', Buffer.from(input), { key: key ?? PRIVATE.ES256(), dsaEncoding: 'ieee-p1363' });
    case 'EdDSA': return cryptoSign(null, Buffer.from(input), key ?? PRIVATE.EdDSA());
    default: throw new Error(`jwt.js cannot sign ${alg}`);
  }
}

/**
 * Sign `claims` (an `exp` one hour ahead is added unless given; pass `exp: undefined` explicitly to omit it).
 * opts: {alg (default RS256), kid, key (a KeyObject, e.g. rsa2Key()), secret (HS256), header (extra header fields)}.
 */
export function sign(claims, { alg = 'RS256', kid, key, secret, header = {} } = {}) {
  const body = { exp: nowSecs() + 3600, ...claims };
  if ('exp' in claims && claims.exp === undefined) delete body.exp;
  const head = { alg, typ: 'JWT', ...(kid ? { kid } : {}), ...header };
  const input = `${enc(head)}.${enc(body)}`;
  return `${input}.${b64url(signature(alg, input, { key, secret }))}`;
}

/** The second RSA key (only in jwks.json, kid "rsa-2"). */
export const rsa2Key = () => PRIVATE.RS256_2();

/** A valid token with one signature byte flipped (header and claims untouched). */
export function tamper(token) {
  const [h, p, s] = token.split('.');
  const sig = Buffer.from(s, 'base64url');
  sig[Math.floor(sig.length / 2)] ^= 0x01;
  return `${h}.${p}.${b64url(sig)}`;
}

/** A token whose claims were rewritten after signing (the signature is the original's). */
export function withClaims(token, claims) {
  const [h, , s] = token.split('.');
  return `${h}.${enc(claims)}.${s}`;
}

/** `alg: none` (in the given spelling), no signature: `header.claims.` */
export function algNone(claims, spelling = 'none') {
  return `${enc({ alg: spelling, typ: 'JWT' })}.${enc({ exp: nowSecs() + 3600, ...claims })}.`;
}

/** The classic confusion: HS256 with the RSA *public* key's PEM text as the HMAC secret. */
export function hs256WithRsaPublicPem(claims, pemName = 'rsa_public.pem') {
  return sign(claims, { alg: 'HS256', secret: pem(pemName) });
}
