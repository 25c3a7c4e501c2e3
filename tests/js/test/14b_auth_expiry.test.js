// 14b. Tokens expiring while connected (docs/auth.md, src/binding/*): Socket.IO gets `herald:disconnect`
// {reason:'token_expired'} and its transport closed, the stock client reconnects by itself through its `auth`
// callback (a fresh token) and connection state recovery resumes loss-free; a client that can only offer the
// expired token gets `connect_error` token_expired; /ws closes with 4401 "token_expired"; SSE ends after an
// `event: herald:disconnect` record. Sessions resume only for the same user.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  startHerald, publish, subscribeOk, Recorder, client, waitFor, withTimeout, pause, request,
} from '../lib/herald.js';
import { openSse } from '../lib/plain.js';
import { sign, nowSecs } from '../lib/jwt.js';
import { KEY_BLOCKS, rule, bearer, withToken, wsOpen, wsRefused, assertRefusal } from '../lib/auth.js';

const FAST = { reconnectionDelay: 100, reconnectionDelayMax: 200 };
/** Tokens of ~3 s: exp is whole seconds, so the first expires 2–3 s after it is minted. */
const SHORT = 3;

/** leeway 0 (expiry is exact), `channels` claim = server-side subscriptions, `uptime` configured server-side. */
const config = (extra = '') => `[auth]\nleeway = "0s"\nsubscriptions_claim = "channels"\n${KEY_BLOCKS.RS256}${extra}`
  + '\n[socketio]\nserver_side_channels = ["uptime"]\n';

/**
 * A stock client whose `auth` callback mints a token each time it is called (`mint(callIndex)`), subscribed to
 * `feed`; a publisher publishes rounds to `channels` (every round to each channel, awaited) before, during and after
 * the expiry. Returns everything observed.
 */
async function expiryScenario(t, h, { mint, channels, after = 20, subscribeTo = ['feed'] }) {
  const tokens = [];
  const socket = client(t, h.url, {
    ...FAST,
    auth: (cb) => { const tok = mint(tokens.length); tokens.push(tok); cb({ token: tok }); },
  });
  const rec = new Recorder(socket);
  const log = [];
  socket.on('connect', () => log.push({ at: Date.now(), what: 'connect', recovered: socket.recovered, id: socket.id }));
  socket.on('disconnect', (reason) => log.push({ at: Date.now(), what: 'disconnect', reason }));
  socket.on('connect_error', (e) => log.push({ at: Date.now(), what: 'connect_error', code: e.data?.code, message: e.message }));
  socket.on('herald:disconnect', (d) => log.push({ at: Date.now(), what: 'herald:disconnect', data: d }));
  await waitFor(socket, 'connect', 10_000, 'first connect');
  const firstId = socket.id;
  for (const ch of subscribeTo) await subscribeOk(socket, ch);

  const reconnected = waitFor(socket, 'connect', 15_000, 'reconnect after the token expired');
  let n = 0;
  let reconnectedAtRound;
  let whileDown = 0;
  reconnected.then(() => { reconnectedAtRound = n; }, () => {});
  const deadline = Date.now() + 15_000;
  while (reconnectedAtRound === undefined || n < reconnectedAtRound + after) {
    n++;
    for (const ch of channels) {
      const r = await publish(h.url, ch, 'tick', { ch, n });
      assert.equal(r.offset, n, `offset of ${ch}#${n}`);
      if (!socket.connected) whileDown++;
    }
    // The stock client can only resume once it holds a cursor: make sure one event arrived before the expiry.
    if (n === 1) await rec.until((r) => r.named('tick').length >= 1, 10_000, 'a first event');
    if (Date.now() > deadline) break; // guard; the assertions below report what is missing
    await pause(15); // publishing rate (~60 rounds/s), not a synchronisation
  }
  await reconnected.catch((e) => { throw new Error(`${e.message}; log ${JSON.stringify(log)}`); });
  // Guard only: on a shortfall the caller's per-channel assertion says what is missing.
  await rec.until((r) => r.named('tick').length >= n * channels.length, 5_000, `all ${n * channels.length} events`)
    .catch((e) => t.diagnostic(e.message));
  return { socket, rec, log, tokens, rounds: n, whileDown, firstId };
}

/** Every channel's `n` values exactly 1..rounds, in order. */
function assertExactlyOnceInOrder(rec, channels, rounds) {
  const seen = Object.fromEntries(channels.map((c) => [c, []]));
  for (const e of rec.named('tick')) {
    assert.ok(e.args[0].ch in seen, `unexpected event ${JSON.stringify(e.args)}`);
    seen[e.args[0].ch].push(e.args[0].n);
  }
  const expected = Array.from({ length: rounds }, (_, i) => i + 1);
  for (const ch of channels) {
    const got = seen[ch];
    const dups = got.filter((x, i) => got.indexOf(x) !== i);
    const missing = expected.filter((x) => !got.includes(x));
    assert.deepEqual(got, expected, `${ch}: every event exactly once, in order (missing ${JSON.stringify(missing)}, duplicates ${JSON.stringify(dups)})`);
  }
}

test('Socket.IO: token expires mid-stream → herald:disconnect token_expired, auth callback gives a fresh token, loss-free recovery', async (t) => {
  const h = await startHerald(t, { config: config() });
  let firstExp;
  const mint = (i) => {
    const exp = nowSecs() + (i === 0 ? SHORT : 3600);
    if (i === 0) firstExp = exp;
    return sign({ sub: 'alice', channels: ['user_alice'], exp, n: i });
  };
  const channels = ['feed', 'uptime', 'user_alice']; // subscribed, configured server-side, from the token's claim
  const { socket, rec, log, tokens, rounds, whileDown, firstId } = await expiryScenario(t, h, { mint, channels });
  t.diagnostic(`${rounds} rounds; ${whileDown} events published while disconnected; log ${JSON.stringify(log)}`);

  const notices = rec.named('herald:disconnect');
  assert.equal(notices.length, 1, `one herald:disconnect: ${JSON.stringify(log)}`);
  assert.equal(notices[0].args[0]?.reason, 'token_expired', JSON.stringify(notices[0].args));
  const noticeAt = log.find((l) => l.what === 'herald:disconnect').at;
  assert.ok(noticeAt >= firstExp * 1000 - 50, `not before exp: notice at ${noticeAt}, exp ${firstExp * 1000}`);
  assert.ok(noticeAt <= firstExp * 1000 + 1500, `soon after exp: notice at ${noticeAt}, exp ${firstExp * 1000}`);
  const disconnects = log.filter((l) => l.what === 'disconnect');
  assert.equal(disconnects.length, 1, JSON.stringify(log));
  assert.notEqual(disconnects[0].reason, 'io server disconnect', 'the transport is closed so the stock client reconnects');
  assert.ok(log.findIndex((l) => l.what === 'herald:disconnect') < log.findIndex((l) => l.what === 'disconnect'),
    `herald:disconnect arrives before the disconnect: ${JSON.stringify(log)}`);
  assert.deepEqual(log.filter((l) => l.what === 'connect_error'), [], 'the fresh token is accepted at once');

  const connects = log.filter((l) => l.what === 'connect');
  assert.equal(connects.length, 2, `one reconnection: ${JSON.stringify(log)}`);
  assert.equal(connects[1].recovered, true, `socket.recovered after the refresh: ${JSON.stringify(log)}`);
  assert.equal(socket.id, firstId, 'a recovered session keeps its socket id');
  assert.equal(tokens.length, 2, 'the auth callback was called once per connection');
  assert.notEqual(tokens[1], tokens[0], 'the reconnection presented the fresh token');
  assert.ok(whileDown > 0, 'precondition: events were published while the client was disconnected');
  assertExactlyOnceInOrder(rec, channels, rounds);
  assert.deepEqual(rec.named('herald:gap'), [], 'no gap');
  assert.ok(socket.connected);
  // /metrics: the first connection ended as expired; its resume recovered every channel.
  await metricReaches(h, 'herald_disconnects_total{transport="socketio",reason="expired"}', 1);
  await metricReaches(h, 'herald_resumes_total{outcome="recovered"}', channels.length);
  h.assertNoPanic();
});

test('Socket.IO: an auth callback that keeps returning the expired token gets connect_error token_expired', async (t) => {
  const h = await startHerald(t, { config: config() });
  const exp = nowSecs() + 2;
  const stale = sign({ sub: 'bob', exp });
  // JWT exp has whole seconds and jsonwebtoken compares whole seconds: a token with exp E verifies until E+1.
  // Retry after 1.5 s so the first reconnection is past that (the churn inside that second is the next test's).
  const socket = client(t, h.url, { reconnectionDelay: 1500, reconnectionDelayMax: 1500, randomizationFactor: 0,
    auth: (cb) => cb({ token: stale }) });
  const rec = new Recorder(socket);
  await waitFor(socket, 'connect', 10_000, 'connect with the still-valid token');
  await subscribeOk(socket, 'feed');
  const notice = waitFor(socket, 'herald:disconnect', 10_000);
  const refused = waitFor(socket, 'connect_error', 10_000, 'connect_error after the expiry');
  const [data] = await notice;
  assert.equal(data?.reason, 'token_expired');
  const [err] = await refused;
  assert.equal(err.data?.code, 'token_expired', `connect_error: ${err.message} ${JSON.stringify(err.data)}`);
  assert.equal(typeof err.message, 'string');
  assert.equal(socket.connected, false);
  assert.equal(rec.named('herald:disconnect').length, 1);
  socket.disconnect();
  h.assertNoPanic();
});

/**
 * Once the server has dropped a connection because its token expired, the same token is not admitted again.
 * The server ends a connection when its token stops verifying — `exp` plus the leeway, rounded up to the
 * whole second the verifier compares — so a client retrying with the stale token gets `connect_error`
 * `token_expired` instead of a connect/expire loop. (A 2 s leeway stands in for the default 30 s to keep the
 * test short; the arithmetic is the same.)
 */
for (const [label, leeway] of [['leeway = "2s"', 'leeway = "2s"\n'], ['leeway = "0s"', 'leeway = "0s"\n']]) {
  test(`Socket.IO: after token_expired the same token is not admitted again (no connect/expire churn), ${label}`, async (t) => {
    const h = await startHerald(t, { config: `[auth]\n${leeway}${KEY_BLOCKS.RS256}` });
    const stale = sign({ sub: 'carol', exp: nowSecs() + 2 });
    const socket = client(t, h.url, { ...FAST, randomizationFactor: 0, auth: (cb) => cb({ token: stale }) });
    const log = [];
    socket.on('connect', () => log.push('connect'));
    socket.on('connect_error', (e) => log.push(`connect_error:${e.data?.code}`));
    socket.on('herald:disconnect', (d) => log.push(`herald:disconnect:${d?.reason}`));
    await waitFor(socket, 'connect', 10_000, 'first connect');
    await waitFor(socket, 'herald:disconnect', 10_000, 'expiry notice');
    // The next connection attempt decides: connect_error token_expired, or (wrongly) another connect.
    const next = await withTimeout(new Promise((resolve) => {
      socket.once('connect', () => resolve('connect'));
      socket.once('connect_error', (e) => resolve(`connect_error:${e.data?.code}`));
    }), 10_000, 'the next connection attempt');
    socket.disconnect();
    t.diagnostic(`log: ${JSON.stringify(log)}`);
    assert.equal(next, 'connect_error:token_expired',
      `the expired token was admitted again after herald:disconnect token_expired; log ${JSON.stringify(log)}`);
    h.assertNoPanic();
  });
}

/** Resolves once `/metrics` has `key` at `want` (a connection is counted as it is torn down, just after its close). */
async function metricReaches(h, key, want) {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const text = (await request(h.url, '/metrics')).text;
    const line = text.split('\n').find((l) => l.startsWith(`${key} `));
    const got = line ? Number(line.slice(key.length + 1)) : 0;
    if (got === want) return;
    if (got > want || Date.now() > deadline) assert.fail(`${key} is ${got}, expected ${want}`);
    await pause(25); // backoff between scrapes while the server finishes the close
  }
}

test('/ws and /ws/{channel}: token expiry closes with 4401 token_expired', async (t) => {
  const h = await startHerald(t, { config: config() });
  const exp = nowSecs() + 2;
  const token = sign({ sub: 'dave', exp });
  const mux = await wsOpen(t, h, '/ws', { headers: bearer(token) });
  await mux.subscribeOk('feed');
  const direct = await wsOpen(t, h, withToken('/ws/feed', token));
  await publish(h.url, 'feed', 'tick', { n: 1 });
  await mux.next((m) => m.type === 'event', 10_000, 'an event before the expiry');
  await direct.next((m) => m.type === 'event', 10_000, 'a direct event before the expiry');
  for (const [name, c] of [['/ws', mux], ['/ws/feed', direct]]) {
    await withTimeout(c.closed, 10_000, `${name} closed by the expiry`);
    const info = c.closeInfo;
    assert.equal(info?.code, 4401, `${name}: close ${JSON.stringify(info)}`);
    assert.equal(String(info.reason), 'token_expired', `${name}: close ${JSON.stringify(info)}`);
    assert.ok(Date.now() >= exp * 1000 - 50, `${name}: closed before exp`);
  }
  // Past exp + 1 s (whole-second check, leeway 0) the token is refused before the upgrade.
  await pause(Math.max(0, (exp + 1) * 1000 + 100 - Date.now())); // wait for the clock, not for an event
  assertRefusal(await wsRefused(t, h, '/ws', { headers: bearer(token) }), 401, 'token_expired', 'expired token on /ws');
  // /metrics (docs/operations.md): both ends counted as expired, the refused upgrade by its code.
  await metricReaches(h, 'herald_disconnects_total{transport="websocket",reason="expired"}', 2);
  await metricReaches(h, 'herald_refusals_total{code="token_expired"}', 1);
  h.assertNoPanic();
});

test('SSE: token expiry ends the stream after an `event: herald:disconnect` record', async (t) => {
  const h = await startHerald(t, { config: config() });
  const exp = nowSecs() + 2;
  const token = sign({ sub: 'erin', exp });
  const s = await openSse(t, `${h.url}/sse/feed`, { headers: bearer(token) });
  assert.equal(s.status, 200, s.text);
  await publish(h.url, 'feed', 'tick', { n: 1 });
  await s.until((x) => x.named('tick').length === 1, 10_000, 'an event before the expiry');
  await s.until((x) => x.ended, 10_000, 'the stream to end at the expiry');
  const last = s.events.at(-1);
  assert.equal(last?.event, 'herald:disconnect', `last record: ${JSON.stringify(s.events)}`);
  assert.equal(JSON.parse(last.data).reason, 'token_expired');
  assert.ok(last.at >= exp * 1000 - 50, 'not before exp');
  assert.equal(s.error, undefined, `the stream ended cleanly: ${s.error}`);
  await metricReaches(h, 'herald_disconnects_total{transport="sse",reason="expired"}', 1);
  h.assertNoPanic();
});

test('Socket.IO: a configured server-side channel not covered by the rules survives a token-refresh resume', async (t) => {
  // Rules grant only the user's room; `uptime` is configured server-side, and every client gets it on connect.
  const h = await startHerald(t, { config: config(rule({ pattern: 'user_{sub}', subscribe: true })) });
  const mint = (i) => sign({ sub: 'frank', exp: nowSecs() + (i === 0 ? SHORT : 3600) });
  const channels = ['uptime', 'user_frank'];
  const { rec, log, rounds } = await expiryScenario(t, h, { mint, channels, subscribeTo: ['user_frank'] });
  const connects = log.filter((l) => l.what === 'connect');
  assert.equal(connects.at(-1).recovered, true, JSON.stringify(log));
  assertExactlyOnceInOrder(rec, channels, rounds);
  h.assertNoPanic();
});

test('Socket.IO: a session resumes only for the same user — another user after the refresh starts afresh', async (t) => {
  const h = await startHerald(t, { config: config() });
  // First token alice (expiring), then a token for mallory.
  const mint = (i) => sign({ sub: i === 0 ? 'alice' : 'mallory', exp: nowSecs() + (i === 0 ? SHORT : 3600),
    channels: i === 0 ? ['user_alice'] : [] });
  let calls = 0;
  const socket = client(t, h.url, { ...FAST, auth: (cb) => cb({ token: mint(calls++) }) });
  const rec = new Recorder(socket);
  await waitFor(socket, 'connect', 10_000, 'first connect');
  await subscribeOk(socket, 'feed');
  await publish(h.url, 'user_alice', 'tick', { n: 1 });
  await rec.until((r) => r.named('tick').length === 1, 10_000, 'alice event');
  const reconnected = waitFor(socket, 'connect', 15_000, 'reconnect as mallory');
  await waitFor(socket, 'herald:disconnect', 10_000, 'expiry');
  await publish(h.url, 'user_alice', 'tick', { n: 2 }); // while down: must not reach mallory
  await reconnected;
  assert.equal(socket.recovered, false, 'another user does not recover alice\'s session');
  // The notice follows the CONNECT reply (the reply is always a connection's first packet).
  await rec.until((r) => r.named('herald:gap').some((g) => g.args[0]?.reason === 'session_unknown'), 10_000,
    'herald:gap session_unknown');
  await publish(h.url, 'user_alice', 'tick', { n: 3 });
  await publish(h.url, 'feed', 'tick', { n: 4 });
  await publish(h.url, 'uptime', 'tick', { n: 5 });
  await rec.until((r) => r.named('tick').some((e) => e.args[0].n === 5), 10_000, 'uptime event as mallory');
  const ns = rec.named('tick').map((e) => e.args[0].n);
  assert.deepEqual(ns, [1, 5], `mallory gets neither alice's room nor alice's subscriptions: ${JSON.stringify(ns)}`);
  h.assertNoPanic();
});
