// 14a. Authentication and channel permissions, seen by real clients: the stock socket.io-client, `ws`, fetch and
// the `eventsource` package. Every refusal must reach the client with its documented code (docs/auth.md):
// Socket.IO `connect_error` with err.data.code, or a `{ok:false,error:{code}}` subscribe ack; WebSocket/SSE HTTP
// 401/403 with a JSON body before the upgrade/stream, or a `{"type":"error","code":"forbidden"}` message on /ws.
//
// Not covered: a wrong `Origin` — Herald has no Origin check yet (nothing to test against).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { startHerald, publish, subscribe, subscribeOk, Recorder } from '../lib/herald.js';
import { directPath } from '../lib/plain.js';
import {
  sign, tamper, withClaims, algNone, hs256WithRsaPublicPem, rsa2Key, nowSecs, keyPath,
} from '../lib/jwt.js';
import {
  KEY_BLOCKS, rule, bearer, withToken, sioRefused, assertConnectError, sioConnected, wsRefused, wsOpen,
  sseRefused, eventSource, eventSourceRefused, assertRefusal,
} from '../lib/auth.js';

const AUD = 'herald';
/** Claims a valid token on the main server carries besides its own. */
const base = (claims) => ({ aud: AUD, ...claims });

const RULES = [
  rule({ pattern: 'user_{sub}', subscribe: true }),
  rule({ pattern: 'owners', subscribe: true, roles: ['owner'] }),
  rule({ pattern: 'service:{services}', subscribe: true }),
  rule({ pattern: 'news', subscribe: true }),
].join('');

/** RS256, ES256, EdDSA and HS256 keys, an audience, and the rules above. */
const MAIN = `[auth]\naudience = "${AUD}"\n${KEY_BLOCKS.RS256}${KEY_BLOCKS.ES256}${KEY_BLOCKS.EdDSA}${KEY_BLOCKS.HS256}${RULES}`;

/**
 * The same token (or none) refused on every transport with `status`/`code`, each through another token source:
 * Socket.IO auth.token, /ws with `Authorization: Bearer`, /ws/news?token=, /sse?channel=news with Bearer (fetch,
 * to read the JSON body) and /sse/news?token= through the `eventsource` package (which sees the status).
 */
async function refusedEverywhere(t, h, token, status, code, label) {
  const err = await sioRefused(t, h.url, token === undefined ? {} : { auth: { token } }, `${label} (Socket.IO)`);
  assertConnectError(err, code, `${label} (Socket.IO)`);
  const headers = token === undefined ? {} : bearer(token);
  assertRefusal(await wsRefused(t, h, '/ws', { headers }), status, code, `${label} (/ws, Bearer)`);
  assertRefusal(await wsRefused(t, h, withToken('/ws/news', token)), status, code, `${label} (/ws/news?token=)`);
  assertRefusal(await sseRefused(t, h, '/sse?channel=news', { headers }), status, code, `${label} (/sse, Bearer)`);
  const es = await eventSourceRefused(t, `${h.url}${withToken('/sse/news', token)}`);
  assert.equal(es.code, status, `${label} (EventSource /sse/news?token=): error ${JSON.stringify(es)}`);
}

test('refused tokens: none, tampered signature, alg none, forged claims, expired, wrong/missing aud, crit — every transport', async (t) => {
  const h = await startHerald(t, { config: MAIN });
  const good = sign(base({ sub: 'alice' }));
  const cases = [
    ['no token', undefined, 401, 'unauthorized'],
    ['tampered signature (RS256)', tamper(good), 401, 'unauthorized'],
    ['tampered signature (ES256)', tamper(sign(base({ sub: 'alice' }), { alg: 'ES256' })), 401, 'unauthorized'],
    ['tampered signature (EdDSA)', tamper(sign(base({ sub: 'alice' }), { alg: 'EdDSA' })), 401, 'unauthorized'],
    ['tampered signature (HS256)', tamper(sign(base({ sub: 'alice' }), { alg: 'HS256' })), 401, 'unauthorized'],
    ['claims rewritten after signing (sub alice → root)', withClaims(good, base({ sub: 'root', exp: nowSecs() + 3600 })), 401, 'unauthorized'],
    ['alg: none', algNone(base({ sub: 'alice' })), 401, 'unauthorized'],
    ['alg: NONE', algNone(base({ sub: 'alice' }), 'NONE'), 401, 'unauthorized'],
    ['alg: none with the valid signature kept', `${algNone(base({ sub: 'alice' }))}${good.split('.')[2]}`, 401, 'unauthorized'],
    ['expired (exp 5 min ago, leeway 30 s)', sign(base({ sub: 'alice', exp: nowSecs() - 300 })), 401, 'token_expired'],
    ['no exp', sign(base({ sub: 'alice', exp: undefined })), 401, 'unauthorized'],
    ['wrong aud', sign({ sub: 'alice', aud: 'someone-else' }), 401, 'unauthorized'],
    ['no aud while audience is configured', sign({ sub: 'alice' }), 401, 'unauthorized'],
    ['not a JWT', 'not-a-jwt', 401, 'unauthorized'],
    // RFC 7515 §4.1.11: a `crit` extension Herald does not understand (it understands none) refuses the token,
    // as does a malformed `crit`; the signatures are valid.
    ['crit: an unknown extension', sign(base({ sub: 'alice' }), { header: { crit: ['x-ext'], 'x-ext': true } }), 401, 'unauthorized'],
    ['crit: a registered claim name', sign(base({ sub: 'alice' }), { header: { crit: ['exp'] } }), 401, 'unauthorized'],
    ['crit: empty list', sign(base({ sub: 'alice' }), { alg: 'ES256', header: { crit: [] } }), 401, 'unauthorized'],
    ['crit: null', sign(base({ sub: 'alice' }), { alg: 'HS256', header: { crit: null } }), 401, 'unauthorized'],
    ['crit: not an array', sign(base({ sub: 'alice' }), { alg: 'EdDSA', header: { crit: 'x-ext' } }), 401, 'unauthorized'],
  ];
  for (const [label, token, status, code] of cases) {
    await t.test(label, () => refusedEverywhere(t, h, token, status, code, label));
  }
  // Control: the untampered token is accepted on the same server.
  const socket = await sioConnected(t, h.url, good);
  await subscribeOk(socket, 'user_alice');
  h.assertNoPanic();
});

test('algorithm confusion: HS256 signed with the RS256 public key PEM is refused by an RS256-keyed server', async (t) => {
  const h = await startHerald(t, { config: `[auth]\n${KEY_BLOCKS.RS256}` });
  const forged = hs256WithRsaPublicPem({ sub: 'mallory' });
  await refusedEverywhere(t, h, forged, 401, 'unauthorized', 'HS256 with rsa_public.pem as the HMAC secret');
  // Nor with the PEM text trimmed of its trailing newline.
  const trimmed = sign({ sub: 'mallory' }, { alg: 'HS256', secret: readFileSync(keyPath('rsa_public.pem'), 'utf8').trim() });
  await refusedEverywhere(t, h, trimmed, 401, 'unauthorized', 'HS256 with the trimmed PEM as secret');
  await refusedEverywhere(t, h, algNone({ sub: 'mallory' }), 401, 'unauthorized', 'alg none on an RS256 server');
  // ES256 token on a server without an ES256 key: no key of that algorithm.
  await refusedEverywhere(t, h, sign({ sub: 'x' }, { alg: 'ES256' }), 401, 'unauthorized', 'ES256 on an RS256-only server');
  // Control: a genuine RS256 token works.
  const socket = await sioConnected(t, h.url, sign({ sub: 'alice' }));
  await subscribeOk(socket, 'anything');
  h.assertNoPanic();
});

/**
 * A valid token accepted on all transports, and events flow: Socket.IO subscribe, /ws (Bearer) subscribe,
 * /ws/{channel}?token=, EventSource /sse/{channel}?token=.
 */
async function acceptedEverywhere(t, h, token, channel, label) {
  const socket = await sioConnected(t, h.url, token);
  const rec = new Recorder(socket);
  await subscribeOk(socket, channel);
  const mux = await wsOpen(t, h, '/ws', { headers: bearer(token) });
  await mux.subscribeOk(channel);
  const direct = await wsOpen(t, h, withToken(directPath('/ws', channel), token));
  const es = eventSource(t, `${h.url}${withToken(directPath('/sse', channel), token)}`, ['hello']);
  await es.until((l) => l.opens >= 1, 10_000, `${label}: EventSource open`);
  const r = await publish(h.url, channel, 'hello', { label });
  await rec.until((x) => x.named('hello').length >= 1, 10_000, `${label}: Socket.IO event`);
  assert.deepEqual(rec.named('hello')[0].args[0], { label });
  const m = await mux.next((x) => x.type === 'event', 10_000, `${label}: /ws event`);
  assert.equal(m.offset, r.offset);
  const d = await direct.next((x) => x.type === 'event', 10_000, `${label}: /ws/{channel} event`);
  assert.deepEqual(d.data, { label });
  await es.until((l) => l.items.length >= 1, 10_000, `${label}: SSE event`);
  assert.deepEqual(es.items[0].data, { label });
  socket.disconnect();
  mux.ws.close();
  direct.ws.close();
  es.es.close();
}

test('valid RS256, ES256, EdDSA and HS256 tokens are accepted on every transport', async (t) => {
  const h = await startHerald(t, { config: MAIN });
  for (const alg of ['RS256', 'ES256', 'EdDSA', 'HS256']) {
    await t.test(alg, () => acceptedEverywhere(t, h, sign(base({ sub: `u-${alg}` }), { alg }), `user_u-${alg}`, alg));
  }
  h.assertNoPanic();
});

test('a JWKS file key verifies tokens by kid (RSA, EC, Ed25519); a kid naming another key is refused', async (t) => {
  const h = await startHerald(t, { config: `[auth]\n${KEY_BLOCKS.JWKS}` });
  await acceptedEverywhere(t, h, sign({ sub: 'j1' }, { alg: 'RS256', kid: 'rsa-2', key: rsa2Key() }), 'j-rsa2', 'JWKS rsa-2');
  await acceptedEverywhere(t, h, sign({ sub: 'j2' }, { alg: 'RS256', kid: 'rsa-1' }), 'j-rsa1', 'JWKS rsa-1');
  await acceptedEverywhere(t, h, sign({ sub: 'j3' }, { alg: 'ES256', kid: 'ec-1' }), 'j-ec', 'JWKS ec-1');
  await acceptedEverywhere(t, h, sign({ sub: 'j4' }, { alg: 'EdDSA', kid: 'ed-1' }), 'j-ed', 'JWKS ed-1');
  // Without kid every key of the algorithm is tried: rsa-2's signature is found.
  await acceptedEverywhere(t, h, sign({ sub: 'j5' }, { alg: 'RS256', key: rsa2Key() }), 'j-nokid', 'JWKS no kid');
  // Signed by rsa-2 but claiming kid rsa-1: only rsa-1 is tried.
  await refusedEverywhere(t, h, sign({ sub: 'j6' }, { alg: 'RS256', kid: 'rsa-1', key: rsa2Key() }), 401, 'unauthorized', 'kid mismatch');
  await refusedEverywhere(t, h, sign({ sub: 'j7' }, { alg: 'RS256', kid: 'nope' }), 401, 'unauthorized', 'unknown kid');
  h.assertNoPanic();
});

/**
 * `token` may not subscribe to `channel`: Socket.IO ack forbidden (connection usable afterwards), /ws error message
 * with the request id, /ws/{channel} 403, /sse/{channel} 403 (fetch + EventSource), /sse?channel=ok&channel=… 403.
 */
async function forbiddenEverywhere(t, h, token, channel, okChannel, label) {
  const socket = await sioConnected(t, h.url, token);
  const ack = await subscribe(socket, channel);
  assert.equal(ack?.ok, false, `${label} (Socket.IO): ack ${JSON.stringify(ack)}`);
  assert.equal(ack.error?.code, 'forbidden', `${label} (Socket.IO): ack ${JSON.stringify(ack)}`);
  assert.equal(typeof ack.error.message, 'string');
  await subscribeOk(socket, okChannel); // still connected and usable
  assert.ok(socket.connected);

  const mux = await wsOpen(t, h, '/ws', { headers: bearer(token) });
  const reply = await mux.request('subscribe', { channel }, { id: `deny-${label}` });
  assert.deepEqual({ type: reply.type, id: reply.id, code: reply.code },
    { type: 'error', id: `deny-${label}`, code: 'forbidden' }, `${label} (/ws): ${JSON.stringify(reply)}`);
  assert.equal(typeof reply.message, 'string');
  await mux.subscribeOk(okChannel); // the connection stays open

  assertRefusal(await wsRefused(t, h, withToken(directPath('/ws', channel), token)), 403, 'forbidden', `${label} (/ws/{channel})`);
  assertRefusal(await wsRefused(t, h, directPath('/ws', channel), { headers: bearer(token) }), 403, 'forbidden', `${label} (/ws/{channel}, Bearer)`);
  assertRefusal(await sseRefused(t, h, directPath('/sse', channel), { headers: bearer(token) }), 403, 'forbidden', `${label} (/sse/{channel})`);
  assertRefusal(await sseRefused(t, h,
    withToken(`/sse?channel=${encodeURIComponent(okChannel)}&channel=${encodeURIComponent(channel)}`, token)),
  403, 'forbidden', `${label} (/sse?channel=ok&channel=denied)`);
  const es = await eventSourceRefused(t, `${h.url}${withToken(directPath('/sse', channel), token)}`);
  assert.equal(es.code, 403, `${label} (EventSource): ${JSON.stringify(es)}`);

  // Publishing to the denied channel reaches none of these clients.
  const rec = new Recorder(socket);
  await publish(h.url, channel, 'leak', { secret: true });
  await publish(h.url, okChannel, 'fine', {});
  await rec.until((r) => r.named('fine').length === 1, 10_000, `${label}: event on ${okChannel}`);
  await mux.next((m) => m.type === 'event' && m.event === 'fine', 10_000, `${label}: /ws event on ${okChannel}`);
  assert.equal(rec.named('leak').length, 0, `${label}: Socket.IO got an event of ${channel}`);
  assert.ok(!mux.messages.some((m) => m.event === 'leak'), `${label}: /ws got an event of ${channel}`);
  socket.disconnect();
  mux.ws.close();
}

test('forbidden channel: Socket.IO ack, /ws error message, /ws/{channel} 403, SSE 403', async (t) => {
  const h = await startHerald(t, { config: MAIN });
  await forbiddenEverywhere(t, h, sign(base({ sub: 'alice' })), 'secret', 'news', 'unlisted channel');
  h.assertNoPanic();
});

test('roles: a reader is refused the owners channel, an owner gets it', async (t) => {
  const h = await startHerald(t, { config: MAIN });
  await forbiddenEverywhere(t, h, sign(base({ sub: 'rita', roles: ['reader'] })), 'owners', 'user_rita', 'reader → owners');
  await forbiddenEverywhere(t, h, sign(base({ sub: 'nora' })), 'owners', 'user_nora', 'no roles → owners');
  // A roles claim as a single string and as an array both qualify.
  await acceptedEverywhere(t, h, sign(base({ sub: 'olga', roles: 'owner' })), 'owners', 'owner (string claim)');
  await acceptedEverywhere(t, h, sign(base({ sub: 'otto', roles: ['reader', 'owner'] })), 'owners', 'owner (array claim)');
  h.assertNoPanic();
});

test('user_{sub}: user A may not subscribe user_B, only user_A; a wildcard in sub grants nothing', async (t) => {
  const h = await startHerald(t, { config: MAIN });
  const alice = sign(base({ sub: 'alice' }));
  await forbiddenEverywhere(t, h, alice, 'user_bob', 'user_alice', 'alice → user_bob');
  await acceptedEverywhere(t, h, alice, 'user_alice', 'alice → user_alice');
  await acceptedEverywhere(t, h, sign(base({ sub: 'bob' })), 'user_bob', 'bob → user_bob');
  // Integer sub (as decimal text).
  await acceptedEverywhere(t, h, sign(base({ sub: 42 })), 'user_42', 'sub 42 → user_42');
  // sub "*" is matched literally: it does not open every user's room.
  const star = sign(base({ sub: '*' }));
  const socket = await sioConnected(t, h.url, star);
  for (const ch of ['user_alice', 'user_', 'user_bob']) {
    const ack = await subscribe(socket, ch);
    assert.equal(ack?.error?.code, 'forbidden', `sub "*" subscribing ${ch}: ${JSON.stringify(ack)}`);
  }
  h.assertNoPanic();
});

test('service:{services} with an array claim: one pattern per element', async (t) => {
  const h = await startHerald(t, { config: MAIN });
  const svc = sign(base({ sub: 'svc', services: ['billing', 'mail'] }));
  await acceptedEverywhere(t, h, svc, 'service:billing', 'services → service:billing');
  await acceptedEverywhere(t, h, svc, 'service:mail', 'services → service:mail');
  await forbiddenEverywhere(t, h, svc, 'service:audit', 'service:billing', 'services → service:audit');
  // A string claim is a single value; "*" as a value grants nothing.
  await acceptedEverywhere(t, h, sign(base({ sub: 's2', services: 'audit' })), 'service:audit', 'services "audit"');
  await forbiddenEverywhere(t, h, sign(base({ sub: 's3', services: '*' })), 'service:billing', 'user_s3', 'services "*"');
  await forbiddenEverywhere(t, h, sign(base({ sub: 's4', services: ['*', 'mail'] })), 'service:billing', 'service:mail', 'services ["*","mail"]');
  // No claim at all: nothing.
  await forbiddenEverywhere(t, h, sign(base({ sub: 's5' })), 'service:billing', 'user_s5', 'no services claim');
  h.assertNoPanic();
});

test('token sources: first found wins (auth.token → Bearer → ?token=), never mixed', async (t) => {
  const h = await startHerald(t, { config: MAIN });
  const good = sign(base({ sub: 'alice' }));
  const bad = tamper(good);
  // Socket.IO: auth.token beats the Authorization header.
  assertConnectError(await sioRefused(t, h.url, { auth: { token: bad }, extraHeaders: bearer(good) }),
    'unauthorized', 'bad auth.token + good Bearer');
  const s = await sioConnected(t, h.url, good, { extraHeaders: bearer(bad) });
  await subscribeOk(s, 'user_alice');
  // Socket.IO without auth.token: the Bearer header, then the query.
  const s2 = await sioConnected(t, h.url, undefined, { extraHeaders: bearer(good) });
  await subscribeOk(s2, 'user_alice');
  const s3 = await sioConnected(t, h.url, undefined, { query: { token: good } });
  await subscribeOk(s3, 'user_alice');
  // WebSocket / SSE: Bearer beats ?token=.
  assertRefusal(await wsRefused(t, h, withToken('/ws', good), { headers: bearer(bad) }), 401, 'unauthorized', 'bad Bearer + good ?token=');
  const ok = await wsOpen(t, h, withToken('/ws', bad), { headers: bearer(good) });
  await ok.subscribeOk('user_alice');
  assertRefusal(await sseRefused(t, h, withToken('/sse/user_alice', good), { headers: bearer(bad) }), 401, 'unauthorized', 'SSE bad Bearer + good ?token=');
  // No cookie configured: a cookie is not read.
  assertRefusal(await wsRefused(t, h, '/ws', { headers: { cookie: `herald_token=${good}; token=${good}` } }), 401, 'unauthorized', 'cookie without [auth] cookie');
  h.assertNoPanic();
});

test('cookie token source when [auth] cookie is set', async (t) => {
  const h = await startHerald(t, { config: `[auth]\ncookie = "herald_token"\n${KEY_BLOCKS.RS256}` });
  const good = sign({ sub: 'alice' });
  const cookie = { cookie: `other=1; herald_token=${good}` };
  const ws = await wsOpen(t, h, '/ws', { headers: cookie });
  await ws.subscribeOk('c1');
  const s = await sioConnected(t, h.url, undefined, { extraHeaders: cookie });
  await subscribeOk(s, 'c1');
  const es = eventSource(t, `${h.url}/sse/c1`, ['x'], { headers: cookie });
  await es.until((l) => l.opens >= 1, 10_000, 'SSE with cookie open');
  assertRefusal(await wsRefused(t, h, '/ws', { headers: { cookie: `herald_token=${tamper(good)}` } }), 401, 'unauthorized', 'tampered cookie');
  h.assertNoPanic();
});

test('subscriptions_claim: channels from the token are subscribed on connect, only those the rules allow', async (t) => {
  const h = await startHerald(t, {
    config: `[auth]\nsubscriptions_claim = "channels"\n${KEY_BLOCKS.RS256}${RULES}`,
  });
  const claims = { channels: ['user_alice', 'owners', 'user_bob', 'news', 'bad*name'] };
  const alice = await sioConnected(t, h.url, sign({ sub: 'alice', ...claims }));
  const owner = await sioConnected(t, h.url, sign({ sub: 'olga', roles: ['owner'], ...claims }));
  const ra = new Recorder(alice);
  const ro = new Recorder(owner);
  for (const ch of ['user_bob', 'owners', 'user_alice', 'news']) await publish(h.url, ch, 'tick', { ch });
  await ra.until((r) => r.named('tick').length >= 2, 10_000, 'alice: user_alice and news');
  await ro.until((r) => r.named('tick').length >= 2, 10_000, 'owner: owners and news');
  // Publishes are acknowledged after fan-out: anything else would have arrived before these.
  assert.deepEqual(ra.named('tick').map((e) => e.args[0].ch), ['user_alice', 'news'], 'alice: only what the rules allow');
  assert.deepEqual(ro.named('tick').map((e) => e.args[0].ch), ['owners', 'news'], 'owner: owners, not user_alice/user_bob');
  h.assertNoPanic();
});

// ---------------------------------------------------------------------------------------------
// 3. Anonymous clients

test('anonymous unset with keys configured: no token is refused everywhere', async (t) => {
  const h = await startHerald(t, { config: `[auth]\n${KEY_BLOCKS.RS256}${rule({ pattern: 'public:*', subscribe: true, anonymous: true })}` });
  await refusedEverywhere(t, h, undefined, 401, 'unauthorized', 'no token, anonymous unset');
  h.assertNoPanic();
});

test('anonymous = true: an anonymous client may subscribe public:x but not private; a bad token is not downgraded', async (t) => {
  const h = await startHerald(t, {
    config: `[auth]\nanonymous = true\n${KEY_BLOCKS.RS256}${rule({ pattern: 'public:*', subscribe: true, anonymous: true })}`
      + `${rule({ pattern: '*', subscribe: true })}`,
  });
  // Anonymous: public:x everywhere.
  const socket = await sioConnected(t, h.url, undefined);
  const rec = new Recorder(socket);
  await subscribeOk(socket, 'public:x');
  const denied = await subscribe(socket, 'private');
  assert.equal(denied?.ok, false, `anonymous subscribe private: ${JSON.stringify(denied)}`);
  assert.equal(denied.error?.code, 'forbidden', `anonymous subscribe private: ${JSON.stringify(denied)}`);
  const mux = await wsOpen(t, h, '/ws');
  await mux.subscribeOk('public:x');
  const reply = await mux.request('subscribe', { channel: 'private' }, { id: 7 });
  assert.deepEqual([reply.type, reply.id, reply.code], ['error', 7, 'forbidden'], JSON.stringify(reply));
  const direct = await wsOpen(t, h, '/ws/public/x');
  const es = eventSource(t, `${h.url}/sse/public/x`, ['tick']);
  await es.until((l) => l.opens >= 1, 10_000, 'anonymous SSE open');
  assertRefusal(await wsRefused(t, h, '/ws/private'), 403, 'forbidden', 'anonymous /ws/private');
  assertRefusal(await sseRefused(t, h, '/sse/private'), 403, 'forbidden', 'anonymous /sse/private');
  assertRefusal(await sseRefused(t, h, '/sse?channel=public%3Ax&channel=private'), 403, 'forbidden', 'anonymous /sse?channel=public:x&channel=private');

  await publish(h.url, 'private', 'tick', { n: 0 });
  await publish(h.url, 'public:x', 'tick', { n: 1 });
  await rec.until((r) => r.named('tick').length >= 1, 10_000, 'anonymous Socket.IO event');
  await mux.next((m) => m.type === 'event', 10_000, 'anonymous /ws event');
  await direct.next((m) => m.type === 'event', 10_000, 'anonymous /ws/public/x event');
  await es.until((l) => l.items.length >= 1, 10_000, 'anonymous SSE event');
  for (const got of [rec.named('tick').map((e) => e.args[0]), mux.messages.filter((m) => m.type === 'event').map((m) => m.data),
    direct.messages.filter((m) => m.type === 'event').map((m) => m.data), es.items.map((i) => i.data)]) {
    assert.deepEqual(got, [{ n: 1 }], 'only the public event reaches anonymous clients');
  }

  // The catch-all rule `*` is for authenticated clients: a token opens `private`.
  const authed = await sioConnected(t, h.url, sign({ sub: 'alice' }));
  await subscribeOk(authed, 'private');
  // A token that fails verification is refused, not downgraded to anonymous.
  await refusedEverywhere(t, h, tamper(sign({ sub: 'alice' })), 401, 'unauthorized', 'tampered token with anonymous = true');
  await refusedEverywhere(t, h, sign({ sub: 'alice', exp: nowSecs() - 300 }), 401, 'token_expired', 'expired token with anonymous = true');
  h.assertNoPanic();
});
