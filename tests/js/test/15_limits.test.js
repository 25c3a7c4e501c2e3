// 15. Admission policy (src/policy, src/binding/access.rs): the `allowed_origins` allow-list with CORS on every
// transport and the API, per-address connection rate and concurrency, per-connection message rate and subscription
// cap, per-key publish rate and API-key scopes — exercised with floods on loopback (each bounded in count and time)
// and pathological input. Every refusal must be a clear error (HTTP 4xx JSON, a `connect_error` with data.code, an
// `{ok:false,error:{code}}` ack, or a `{"type":"error","code"}` message) and well-behaved clients must not notice.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  startHerald, publish, request, history, assertApiError, chan, connected, subscribe, subscribeOk, Recorder,
  waitFor, withTimeout, pause,
} from '../lib/herald.js';
import { wsBase, openWs, directPath, openSse } from '../lib/plain.js';
import { attemptWs, pool, vmRssKb, sioAttempt, tally } from '../lib/limits.js';

const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);
const GOOD = 'http://good.example';
const EVIL = 'http://evil.example';

/** POST /api/publish with a raw body or JSON. */
const post = (h, body, headers = {}) => request(h.url, '/api/publish', {
  method: 'POST', ...(typeof body === 'string' ? { rawBody: body } : { body }),
  headers: { 'content-type': 'application/json', ...headers },
});

/** Retry `attempt` (which resolves truthy when done) with a short backoff until it succeeds or `ms` pass. */
async function retryUntil(attempt, ms, label) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    last = await attempt();
    if (last?.done) return last;
    if (Date.now() > deadline) throw new Error(`${label}: not done within ${ms} ms (last: ${JSON.stringify(last?.why ?? last)})`);
    await pause(50); // backoff between retries (a token bucket refilling / a slot being released)
  }
}

/** A WebSocket upgrade that must be answered with an HTTP error: {status, json, text, headers}. */
async function wsRefused(t, url, opts = {}) {
  const r = await attemptWs(t, url, opts);
  if (r.status === 101) r.c.ws.terminate();
  assert.notEqual(r.status, 101, `WebSocket upgrade of ${url.slice(0, 200)} was accepted; expected an HTTP error`);
  assert.notEqual(r.status, 0, `WebSocket upgrade of ${url.slice(0, 200)} failed without an HTTP answer: ${r.error}`);
  return r;
}

/**
 * Send one /ws request; resolve with its reply, or with a `rate_limited` error (those carry no id: the server
 * refuses the message without reading it). Only for one request in flight at a time.
 */
async function wsTry(c, op, fields = {}) {
  const from = c.messages.length;
  const id = `${op}-${++c.seq}`;
  c.send({ op, id, ...fields });
  return c.next((m) => (m?.type !== 'event' && m?.id === id) || (m?.type === 'error' && m.code === 'rate_limited' && m.id === undefined),
    10_000, `reply to ${op} ${id}`, from);
}

function assertCors(headers, what) {
  assert.equal(headers.get('access-control-allow-origin'), GOOD, `${what}: Access-Control-Allow-Origin (exactly one, the caller's origin)`);
  assert.equal(headers.get('access-control-allow-credentials'), 'true', `${what}: Access-Control-Allow-Credentials`);
  assert.match(headers.get('vary') ?? '', /origin/i, `${what}: Vary: Origin`);
}

// ---------------------------------------------------------------------------------------------------------------
// 1. Origins

test('allowed_origins: a foreign Origin is refused on the API, /ws, /sse and Socket.IO (polling and websocket); the allowed one gets CORS; no Origin works', async (t) => {
  const h = await startHerald(t, { config: `allowed_origins = ["${GOOD}"]\n` });
  const ch = chan('orig');
  const refusedOrigins = [EVIL, 'null', 'http://good.example.evil.example', 'https://good.example', 'http://good.example:8080'];

  // --- HTTP API
  for (const origin of refusedOrigins) {
    assertApiError(await post(h, { channel: ch, event: 'e', data: 1 }, { origin }), 403, 'origin_not_allowed', `publish with Origin ${origin}`);
  }
  assertApiError(await history(h.url, ch), 404, 'channel_not_found', 'a publish refused for its origin wrote nothing');
  assertApiError(await request(h.url, '/api/channels', { headers: { origin: EVIL } }), 403, 'origin_not_allowed', 'GET /api/channels from a foreign origin');
  const evilPre = await request(h.url, '/api/publish', {
    method: 'OPTIONS',
    headers: { origin: EVIL, 'access-control-request-method': 'POST', 'access-control-request-headers': 'content-type,authorization' },
  });
  assert.equal(evilPre.status, 403, `preflight from a foreign origin: ${evilPre.status} ${evilPre.text}`);
  assert.equal(evilPre.headers.get('access-control-allow-origin'), null, 'no CORS grant for a foreign origin');

  // Preflight from the allowed origin.
  const pre = await request(h.url, '/api/publish', {
    method: 'OPTIONS',
    headers: { origin: GOOD, 'access-control-request-method': 'POST', 'access-control-request-headers': 'content-type,authorization' },
  });
  assert.equal(pre.status, 204, `preflight from ${GOOD}: ${pre.status} ${pre.text}`);
  assertCors(pre.headers, 'preflight');
  assert.match(pre.headers.get('access-control-allow-methods') ?? '', /\bPOST\b/, 'preflight allows POST');
  const allowHeaders = (pre.headers.get('access-control-allow-headers') ?? '').toLowerCase();
  assert.ok(allowHeaders.includes('content-type') && allowHeaders.includes('authorization'),
    `preflight allows the requested headers: ${allowHeaders}`);

  // The allowed origin publishes, with CORS headers on the actual response.
  const okPub = await post(h, { channel: ch, event: 'e', data: { from: 'good' } }, { origin: GOOD });
  assert.equal(okPub.status, 200, `publish from ${GOOD}: ${okPub.text}`);
  assertCors(okPub.headers, 'publish from the allowed origin');
  // Server-to-server: no Origin, no CORS headers, works.
  const plain = await post(h, { channel: ch, event: 'e', data: { from: 'server' } });
  assert.equal(plain.status, 200, `publish without Origin: ${plain.text}`);
  assert.equal(plain.headers.get('access-control-allow-origin'), null, 'no CORS headers without an Origin');
  const goodErr = await post(h, '{not json', { origin: GOOD });
  assertApiError(goodErr, 400, 'invalid_json', 'an error answer to the allowed origin');
  assertCors(goodErr.headers, 'an error answer to the allowed origin (readable by the page)');

  // --- plain WebSocket
  for (const origin of [EVIL, 'null']) {
    assertApiError(await wsRefused(t, `${wsBase(h)}/ws`, { origin }), 403, 'origin_not_allowed', `/ws with Origin ${origin}`);
    assertApiError(await wsRefused(t, `${wsBase(h)}${directPath('/ws', ch)}`, { headers: { Origin: origin } }),
      403, 'origin_not_allowed', `/ws/{channel} with Origin ${origin}`);
  }
  const wsGood = await openWs(t, `${wsBase(h)}/ws`, { origin: GOOD });
  await wsGood.subscribeOk(ch);
  const wsNone = await openWs(t, `${wsBase(h)}/ws`);
  await wsNone.subscribeOk(ch);
  const wsDirect = await openWs(t, `${wsBase(h)}${directPath('/ws', ch)}`, { origin: GOOD });

  // --- SSE (fetch sets Origin as a page's EventSource would)
  const sseEvil = await openSse(t, `${h.url}${directPath('/sse', ch)}`, { headers: { origin: EVIL } });
  assert.equal(sseEvil.status, 403, `SSE from a foreign origin: ${sseEvil.status} ${sseEvil.text}`);
  assert.equal(sseEvil.json?.error?.code, 'origin_not_allowed', `SSE refusal body: ${sseEvil.text}`);
  const sseGood = await openSse(t, `${h.url}/sse?channel=${encodeURIComponent(ch)}`, { headers: { origin: GOOD } });
  assert.equal(sseGood.status, 200, `SSE from ${GOOD}: ${sseGood.status} ${sseGood.text}`);
  assertCors(sseGood.headers, 'SSE stream (EventSource withCredentials needs both)');
  const sseNone = await openSse(t, `${h.url}${directPath('/sse', ch)}`);
  assert.equal(sseNone.status, 200, 'SSE without Origin');

  // --- Socket.IO: Engine.IO handshake over polling, and straight to websocket
  const sioPollEvil = await sioAttempt(t, h.url, { extraHeaders: { Origin: EVIL } });
  assert.equal(sioPollEvil.connected, false, 'Socket.IO (polling) from a foreign origin must not connect');
  assert.equal(sioPollEvil.err.description, 403, `polling handshake refused with 403: ${sioPollEvil.err.message} ${sioPollEvil.err.description}`);
  const sioWsEvil = await sioAttempt(t, h.url, { transports: ['websocket'], extraHeaders: { Origin: EVIL } });
  assert.equal(sioWsEvil.connected, false, 'Socket.IO (websocket) from a foreign origin must not connect');
  assert.match(String(sioWsEvil.err.description?.message ?? sioWsEvil.err.description), /403/,
    `websocket handshake refused with 403: ${sioWsEvil.err.message}`);
  const rawHs = await request(h.url, '/socket.io/?EIO=4&transport=polling', { headers: { origin: GOOD } });
  assert.equal(rawHs.status, 200, `Engine.IO handshake from ${GOOD}: ${rawHs.text}`);
  assertCors(rawHs.headers, 'Engine.IO polling handshake');
  const rawHsEvil = await request(h.url, '/socket.io/?EIO=4&transport=polling', { headers: { origin: EVIL } });
  assertApiError(rawHsEvil, 403, 'origin_not_allowed', 'Engine.IO polling handshake from a foreign origin');

  // The allowed origin over polling (then upgraded to websocket with the same header), and websocket-only.
  const sioGood = await connected(t, h.url, { extraHeaders: { Origin: GOOD } });
  const upgraded = sioGood.io.engine.transport.name === 'websocket' ? null : waitFor(sioGood.io.engine, 'upgrade', 10_000);
  await subscribeOk(sioGood, ch);
  const recGood = new Recorder(sioGood);
  if (upgraded) await upgraded;
  assert.equal(sioGood.io.engine.transport.name, 'websocket', 'the allowed origin upgrades to websocket');
  const sioGoodWs = await connected(t, h.url, { transports: ['websocket'], extraHeaders: { Origin: GOOD } });
  await subscribeOk(sioGoodWs, ch);
  const recGoodWs = new Recorder(sioGoodWs);
  const sioNone = await connected(t, h.url);
  await subscribeOk(sioNone, ch);
  const recNone = new Recorder(sioNone);

  // One event reaches every admitted client.
  const ev = await publish(h.url, ch, 'hello', { n: 1 });
  await wsGood.until((c) => c.events(ch).some((e) => e.offset === ev.offset), 10_000, '/ws (allowed origin) gets the event');
  await wsNone.until((c) => c.events(ch).some((e) => e.offset === ev.offset), 10_000, '/ws (no origin) gets the event');
  await wsDirect.until((c) => c.events(ch).some((e) => e.offset === ev.offset), 10_000, '/ws/{channel} (allowed origin) gets the event');
  await sseGood.until((s) => s.named('hello').length === 1, 10_000, 'SSE (allowed origin) gets the event');
  await sseNone.until((s) => s.named('hello').length === 1, 10_000, 'SSE (no origin) gets the event');
  for (const [rec, what] of [[recGood, 'polling→websocket'], [recGoodWs, 'websocket-only'], [recNone, 'no origin']]) {
    await rec.until((r) => r.named('hello').length === 1, 10_000, `Socket.IO (${what}) gets the event`);
    assert.deepEqual(rec.named('hello')[0].args[0], { n: 1 });
  }
  await h.assertHealthy();
});

// ---------------------------------------------------------------------------------------------------------------
// 2. Connection flood from one address

test('connection flood from one address: 429 rate_limited beyond the rate, never more than connections_per_ip open, slots released, steady clients unaffected, memory bounded', async (t) => {
  const RATE = 20;
  const BURST = 2 * RATE; // config doc: "bursts of twice that"
  const CAP = 30;
  const h = await startHerald(t, { config: `[limits]\nconnections_per_second_per_ip = ${RATE}\nconnections_per_ip = ${CAP}\n` });
  const ws = wsBase(h);
  const ch = chan('steady');

  // Well-behaved clients, connected before the flood (2 of the 30 slots).
  const steady = await openWs(t, `${ws}/ws`);
  await steady.subscribeOk(ch);
  const steadySio = await connected(t, h.url, { transports: ['websocket'] });
  await subscribeOk(steadySio, ch);
  const steadyRec = new Recorder(steadySio);
  let held = 2;
  const rss0 = vmRssKb(h.proc.pid);

  let published = 0;
  const publishDuring = async (n) => {
    for (let i = 0; i < n; i++) { await publish(h.url, ch, 'tick', { i: ++published }); }
  };
  const assertSteadyGotAll = async (label) => {
    await steady.until((c) => c.events(ch).length >= published, 10_000, `${label}: /ws client gets every event`);
    assert.deepEqual(steady.events(ch).map((e) => e.data.i), range(1, published), `${label}: /ws client, every event once, in order`);
    await steadyRec.until((r) => r.named('tick').length >= published, 10_000, `${label}: Socket.IO client gets every event`);
    assert.deepEqual(steadyRec.named('tick').map((e) => e.args[0].i), range(1, published), `${label}: Socket.IO client, in order`);
    assert.equal(steady.closeInfo, null, `${label}: /ws client still open`);
    assert.ok(steadySio.connected, `${label}: Socket.IO client still connected`);
  };

  // Phase A: 100 upgrades at once, keeping every accepted one open.
  const N = 100;
  const [attempts] = await withTimeout(Promise.all([
    Promise.all(Array.from({ length: N }, () => attemptWs(t, `${ws}/ws`))),
    publishDuring(30),
  ]), 20_000, 'flood of 100 upgrades');
  const accepted = attempts.filter((a) => a.status === 101).map((a) => a.c);
  const refused = attempts.filter((a) => a.status === 429);
  assert.deepEqual(tally(attempts.filter((a) => a.status !== 101 && a.status !== 429), (a) => `${a.status} ${a.error ?? a.text}`), {},
    'every attempt is answered with 101 or 429');
  for (const r of refused) assertApiError(r, 429, 'rate_limited', 'a refused upgrade');
  assert.ok(refused.length > 0, 'some of the flood is refused');
  assert.ok(accepted.length > 0, 'the limit is not a blanket refusal');
  assert.ok(accepted.length + held <= CAP, `at most ${CAP} open at once from 127.0.0.1: ${accepted.length} accepted + ${held} held`);
  assert.ok(accepted.length <= BURST, `at most the burst (${BURST}) accepted: ${accepted.length}`);
  // The accepted connections are really served.
  await Promise.all(accepted.map((c) => c.barrier()));
  await assertSteadyGotAll('during the flood');

  // Once the rate bucket has refilled (20/s → ≥ 20 tokens after 1.1 s), further attempts can only be refused by the
  // concurrency cap: every transport from this address is refused while the 30 slots are held.
  await pause(1100); // a token-bucket refill, not a wait for an event
  for (let i = 0; i < 3; i++) {
    const r = await attemptWs(t, `${ws}/ws`);
    assert.equal(r.status, 429, `upgrade #${i + 1} with ${held + accepted.length} connections open: ${r.status} ${r.text ?? r.error}`);
    assertApiError(r, 429, 'rate_limited', 'over the concurrency cap (the rate bucket has tokens)');
  }
  const direct = await attemptWs(t, `${ws}${directPath('/ws', ch)}`);
  assertApiError(direct, 429, 'rate_limited', '/ws/{channel} over the concurrency cap');
  const sse = await openSse(t, `${h.url}${directPath('/sse', ch)}`);
  assertApiError(sse, 429, 'rate_limited', 'SSE over the concurrency cap');
  const sio = await sioAttempt(t, h.url, { transports: ['websocket'] });
  assert.equal(sio.connected, false, 'Socket.IO over the concurrency cap must not connect');
  assert.equal(sio.err.data?.code, 'rate_limited', `Socket.IO connect_error: ${sio.err.message} ${JSON.stringify(sio.err.data)}`);
  const sioPoll = await sioAttempt(t, h.url);
  assert.equal(sioPoll.err?.data?.code, 'rate_limited', `Socket.IO (polling) connect_error: ${sioPoll.err?.message} ${JSON.stringify(sioPoll.err?.data)}`);

  // Closing connections gives their slots back.
  await Promise.all(accepted.splice(0, 10).map((c) => c.close()));
  const again = await retryUntil(async () => {
    const r = await attemptWs(t, `${ws}/ws`);
    return { done: r.status === 101, why: `${r.status} ${r.text ?? r.error}`, r };
  }, 5000, 'a new /ws connection once 10 were closed');
  accepted.push(again.r.c);
  await retryUntil(async () => {
    const r = await sioAttempt(t, h.url, { transports: ['websocket'] });
    if (r.connected) { r.socket.disconnect(); return { done: true }; }
    return { done: false, why: r.err?.data };
  }, 5000, 'a Socket.IO connection once slots were freed');
  await Promise.all(accepted.splice(0).map((c) => c.close()));

  // Phase B: the rate alone. 100 attempts, 5 in flight, each accepted one closed at once: the concurrency cap never
  // binds (≤ 5 + held), so admissions are bounded by the bucket: BURST + RATE × elapsed.
  const t0 = Date.now();
  const [phaseB] = await withTimeout(Promise.all([
    pool(N, 5, async () => {
      const r = await attemptWs(t, `${ws}/ws`);
      if (r.status === 101) await r.c.close();
      return r;
    }),
    publishDuring(20),
  ]), 20_000, 'rate flood');
  const elapsed = (Date.now() - t0) / 1000;
  const okB = phaseB.filter((a) => a.status === 101).length;
  const refusedB = phaseB.filter((a) => a.status === 429);
  assert.deepEqual(tally(phaseB.filter((a) => a.status !== 101 && a.status !== 429), (a) => `${a.status} ${a.error ?? a.text}`), {},
    'phase B: every attempt answered with 101 or 429');
  for (const r of refusedB) assertApiError(r, 429, 'rate_limited', 'phase B refusal');
  assert.ok(refusedB.length > 0, `phase B: some refused (${okB} accepted in ${elapsed} s)`);
  assert.ok(okB <= BURST + RATE * elapsed + 1, `phase B: ${okB} accepted in ${elapsed.toFixed(2)} s exceeds burst ${BURST} + ${RATE}/s`);

  await assertSteadyGotAll('after both floods');
  const rss1 = vmRssKb(h.proc.pid);
  assert.ok(rss1 - rss0 < 64 * 1024, `server RSS grew from ${rss0} KiB to ${rss1} KiB during 200 connection attempts`);
  await h.assertHealthy();
});

test('Engine.IO sessions count against the per-address limits too (a flood of polling handshakes)', async (t) => {
  const h = await startHerald(t, { config: '[limits]\nconnections_per_second_per_ip = 20\nconnections_per_ip = 30\n' });
  const ch = chan('eio');
  const steady = await openWs(t, `${wsBase(h)}/ws`);
  await steady.subscribeOk(ch);
  // 100 Engine.IO handshakes at once, none of which ever sends a Socket.IO CONNECT (the CONNECT is where the limits
  // are applied to Socket.IO, see the test above): each handshake is still a session the server holds until
  // connect_timeout (default 45 s) — the same resource a refused WebSocket upgrade would have taken.
  const hs = await withTimeout(pool(100, 100, () => request(h.url, '/socket.io/?EIO=4&transport=polling')), 15_000, '100 handshakes');
  const statuses = tally(hs, (r) => r.status);
  assert.deepEqual(Object.keys(statuses).filter((s) => s !== '200' && s !== '429'), [], `answers: ${JSON.stringify(statuses)}`);
  for (const r of hs.filter((x) => x.status === 429)) assertApiError(r, 429, 'rate_limited', 'a refused Engine.IO handshake');
  // Engine.IO sessions get twice the connection room (each Socket.IO connection holds a session slot from its
  // handshake, then a connection slot from its CONNECT — where a refusal carries a code the stock client shows),
  // and they are also bounded by the handshake rate.
  assert.ok((statuses['200'] ?? 0) <= 2 * 30,
    `at most 2 × connections_per_ip (60) Engine.IO sessions from one address; handshakes answered: ${JSON.stringify(statuses)}`);
  assert.ok((statuses['429'] ?? 0) > 0, `some handshakes refused: ${JSON.stringify(statuses)}`);
  const ev = await publish(h.url, ch, 'tick', { n: 1 });
  await steady.until((c) => c.events(ch).some((e) => e.offset === ev.offset), 10_000, 'steady client unaffected');
  await h.assertHealthy();
});

// ---------------------------------------------------------------------------------------------------------------
// 3. Message flood on one connection

test('message flood: /ws pings beyond messages_per_second get rate_limited errors, Socket.IO acks rate_limited; others unaffected; the flooder recovers', async (t) => {
  const RATE = 20;
  const BURST = 2 * RATE;
  const h = await startHerald(t, { config: `[limits]\nmessages_per_second = ${RATE}\n` });
  const ws = wsBase(h);
  const ch = chan('calm');
  const observer = await openWs(t, `${ws}/ws`);
  await observer.subscribeOk(ch);
  const sioObserver = await connected(t, h.url, { transports: ['websocket'] });
  await subscribeOk(sioObserver, ch);
  const sioObsRec = new Recorder(sioObserver);

  // /ws: 500 pings in one go.
  const flooder = await openWs(t, `${ws}/ws`);
  const N = 500;
  const t0 = Date.now();
  for (let i = 0; i < N; i++) flooder.send({ op: 'ping', id: i });
  let pubs = 0;
  for (; pubs < 20; pubs++) await publish(h.url, ch, 'tick', { i: pubs + 1 });
  const replies = (c) => c.messages.filter((m) => m?.type !== 'heartbeat');
  await flooder.until((c) => replies(c).length >= N, 20_000, `one reply to each of the ${N} pings`);
  const elapsed = (Date.now() - t0) / 1000;
  const got = replies(flooder);
  const pongs = got.filter((m) => m.type === 'pong');
  const limited = got.filter((m) => m.type === 'error' && m.code === 'rate_limited');
  assert.equal(pongs.length + limited.length, N, `every reply is a pong or a rate_limited error: ${JSON.stringify(tally(got, (m) => `${m.type}:${m.code ?? ''}`))}`);
  assert.ok(limited.length > 0, 'the flood is rate limited');
  assert.ok(limited.every((m) => typeof m.message === 'string'), 'rate_limited errors carry a message');
  assert.ok(pongs.length >= 1, 'some pings are answered');
  assert.ok(pongs.length <= BURST + RATE * elapsed + 1,
    `${pongs.length} pongs in ${elapsed.toFixed(2)} s exceeds burst ${BURST} + ${RATE}/s`);
  const ids = pongs.map((p) => p.id);
  assert.deepEqual(ids, [...ids].sort((a, b) => a - b), 'answered pings keep their order');
  assert.equal(new Set(ids).size, ids.length, 'no ping answered twice');
  assert.equal(flooder.closeInfo, null, 'the flooding connection stays open');
  // Everyone else still gets every event.
  await observer.until((c) => c.events(ch).length >= pubs, 10_000, 'observer gets every event during the flood');
  assert.deepEqual(observer.events(ch).map((e) => e.data.i), range(1, pubs));
  await sioObsRec.until((r) => r.named('tick').length >= pubs, 10_000, 'Socket.IO observer gets every event during the flood');
  // The flooder recovers once its bucket refills.
  await retryUntil(async () => {
    const r = await wsTry(flooder, 'ping');
    return { done: r.type === 'pong', why: r };
  }, 5000, 'a pong after the flood');
  await retryUntil(async () => {
    const r = await wsTry(flooder, 'subscribe', { channel: ch });
    return { done: r.type === 'subscribed', why: r };
  }, 5000, 'a subscribe after the flood');
  await publish(h.url, ch, 'tick', { i: ++pubs });
  await flooder.until((c) => c.events(ch).some((e) => e.data.i === pubs), 10_000, 'the flooder receives events again');

  // Socket.IO: 200 acked subscribes (distinct channels) in one go.
  const sio = await connected(t, h.url, { transports: ['websocket'] });
  const sioRec = new Recorder(sio);
  const M = 200;
  const base = chan('many');
  const t1 = Date.now();
  const acks = await withTimeout(Promise.all(range(1, M).map((i) => sio.emitWithAck('subscribe', { channel: `${base}-${i}` }))),
    20_000, `${M} subscribe acks`);
  const elapsed1 = (Date.now() - t1) / 1000;
  const okAcks = acks.filter((a) => a?.ok === true);
  const limitedAcks = acks.filter((a) => a?.ok === false && a.error?.code === 'rate_limited');
  assert.equal(okAcks.length + limitedAcks.length, M, `every ack is ok or rate_limited: ${JSON.stringify(tally(acks, (a) => a?.error?.code ?? String(a?.ok)))}`);
  assert.ok(limitedAcks.length > 0, 'the subscribe flood is rate limited');
  assert.ok(limitedAcks.every((a) => typeof a.error.message === 'string'), 'rate_limited acks carry a message');
  assert.ok(okAcks.length >= 1 && okAcks.length <= BURST + RATE * elapsed1 + 1,
    `${okAcks.length} subscribes accepted in ${elapsed1.toFixed(2)} s (burst ${BURST} + ${RATE}/s)`);
  assert.ok(sio.connected, 'the flooding Socket.IO client stays connected');
  // Accepted subscriptions are live; refused ones are not.
  const okChan = okAcks[0].channel;
  const refusedChan = `${base}-${acks.findIndex((a) => a?.ok === false) + 1}`;
  await publish(h.url, refusedChan, 'nope', { x: 1 });
  await publish(h.url, okChan, 'yes', { x: 2 });
  await sioRec.until((r) => r.named('yes').length === 1, 10_000, 'an event on an accepted subscription');
  assert.equal(sioRec.named('nope').length, 0, 'no event on a subscribe that was refused');
  await retryUntil(async () => {
    const a = await subscribe(sio, refusedChan);
    return { done: a?.ok === true, why: a };
  }, 5000, 'a subscribe after the flood');
  await sioObsRec.until((r) => r.named('tick').length >= pubs, 10_000, 'Socket.IO observer unaffected');
  await h.assertHealthy();
});

// ---------------------------------------------------------------------------------------------------------------
// 4. Publish flood on one key, API-key scopes

test('publish flood on one key: 429 rate_limited beyond publishes_per_second_per_key, other keys unaffected, every acknowledged event delivered exactly once; scoped keys', async (t) => {
  const RATE = 50;
  const h = await startHerald(t, {
    config: `api_keys = ["k1", { key = "k2", publish = ["metrics:*"] }]\n[limits]\npublishes_per_second_per_key = ${RATE}\n`,
  });
  const k1 = { authorization: 'Bearer k1' };
  const k2 = { authorization: 'Bearer k2' };
  const FLOOD = 'flood';
  const METRICS = 'metrics:cpu';
  const sub = await openWs(t, `${wsBase(h)}/ws`);
  await sub.subscribeOk(FLOOD);
  await sub.subscribeOk(METRICS);

  const N = 300;
  const t0 = Date.now();
  const [results, k2Results] = await withTimeout(Promise.all([
    pool(N, 10, (i) => post(h, { channel: FLOOD, event: 'f', data: { i }, id: `f-${i}` }, k1)),
    // k2 publishes meanwhile, well within its own bucket.
    pool(20, 1, (i) => post(h, { channel: METRICS, event: 'm', data: { i }, id: `m-${i}` }, k2)),
  ]), 30_000, 'publish flood');
  const elapsed = (Date.now() - t0) / 1000;
  const acked = results.map((r, i) => ({ r, i })).filter(({ r }) => r.status === 200);
  const limited = results.filter((r) => r.status === 429);
  assert.deepEqual(tally(results.filter((r) => r.status !== 200 && r.status !== 429), (r) => `${r.status} ${r.text}`), {},
    'every k1 publish answered 200 or 429');
  for (const r of limited) assertApiError(r, 429, 'rate_limited', 'a k1 publish over the rate');
  assert.ok(limited.length > 0, 'k1 is rate limited');
  assert.ok(acked.length >= 1 && acked.length <= RATE + RATE * elapsed + 1,
    `${acked.length} k1 publishes accepted in ${elapsed.toFixed(2)} s (burst ${RATE} + ${RATE}/s)`);
  assert.deepEqual(k2Results.map((r) => r.status), k2Results.map(() => 200),
    `k2 has its own bucket: ${JSON.stringify(k2Results.filter((r) => r.status !== 200).map((r) => r.text))}`);

  // The subscriber gets exactly the acknowledged events, once each; history holds exactly those.
  const ackedIds = acked.map(({ i }) => `f-${i}`).sort();
  await sub.until((c) => c.events(FLOOD).length >= acked.length && c.events(METRICS).length >= 20, 15_000, 'every acknowledged event');
  await sub.barrier();
  assert.deepEqual(sub.events(FLOOD).map((e) => e.id).sort(), ackedIds, 'subscriber: every acknowledged k1 event exactly once, nothing else');
  assert.deepEqual(sub.events(FLOOD).map((e) => e.offset), range(1, acked.length), 'offsets dense and in order');
  assert.deepEqual(sub.events(METRICS).map((e) => e.data.i), range(0, 19), 'subscriber: every k2 event, in order');
  const hist = await request(h.url, `/api/channels/${FLOOD}/history?limit=1000`, { headers: k1 });
  assert.equal(hist.status, 200);
  assert.deepEqual(hist.json.events.map((e) => e.id).sort(), ackedIds, 'refused publishes wrote nothing');

  // Scopes: k2 may publish only to metrics:*, and has no admin scope.
  assertApiError(await post(h, { channel: 'other', event: 'x', data: 1 }, k2), 403, 'forbidden', 'k2 → other');
  assertApiError(await post(h, { channels: ['metrics:a', 'other'], event: 'x', data: 1 }, k2), 403, 'forbidden', 'k2 → [metrics:a, other]');
  assertApiError(await post(h, { events: [{ channel: 'metrics:b', event: 'x' }, { channel: 'metricsx', event: 'x' }] }, k2),
    403, 'forbidden', 'k2 batch with one channel outside its scope');
  assertApiError(await history(h.url, 'metrics:a'), 401, 'unauthorized', 'history without a key');
  for (const c of ['metrics:a', 'metrics:b', 'other', 'metricsx']) {
    assertApiError(await request(h.url, `/api/channels/${encodeURIComponent(c)}/history`, { headers: k1 }), 404, 'channel_not_found',
      `a forbidden request wrote nothing (${c})`);
  }
  const k2ok = await post(h, { channel: 'metrics:cpu', event: 'm', data: { last: true } }, k2);
  assert.equal(k2ok.status, 200, `k2 → metrics:cpu: ${k2ok.text}`);
  assertApiError(await request(h.url, '/api/connections/x/disconnect', { method: 'POST', headers: k2 }), 403, 'forbidden', 'k2 (no admin scope) → disconnect');
  assertApiError(await request(h.url, '/api/connections/x/disconnect', { method: 'POST', headers: k1 }), 404, 'connection_not_found', 'k1 (plain key) → disconnect');
  assertApiError(await request(h.url, '/api/connections/x/disconnect', { method: 'POST', headers: { 'x-api-key': 'k1' } }), 404, 'connection_not_found', 'k1 via X-API-Key');
  assertApiError(await request(h.url, '/api/connections/x/disconnect', { method: 'POST', headers: { authorization: 'Bearer k3' } }), 401, 'unauthorized', 'unknown key');
  // k1 recovers once its bucket refills.
  await retryUntil(async () => {
    const r = await post(h, { channel: FLOOD, event: 'f', data: { after: true } }, k1);
    return { done: r.status === 200, why: `${r.status} ${r.text}` };
  }, 5000, 'a k1 publish after the flood');
  await sub.until((c) => c.events(FLOOD).some((e) => e.data?.after === true), 10_000, 'the post-flood event');
  await h.assertHealthy();
});

// ---------------------------------------------------------------------------------------------------------------
// 5. Subscription cap

test('subscriptions_per_connection = 3: the 4th distinct channel is refused on Socket.IO, /ws and SSE; re-subscribing is fine; unsubscribing frees room', async (t) => {
  const h = await startHerald(t, { config: '[limits]\nsubscriptions_per_connection = 3\n' });
  const [a, b, c, d, e] = ['a', 'b', 'c', 'd', 'e'].map((x) => chan(`cap${x}`));

  // Socket.IO
  const s = await connected(t, h.url, { transports: ['websocket'] });
  const rec = new Recorder(s);
  for (const x of [a, b, c]) await subscribeOk(s, x);
  const fourth = await subscribe(s, d);
  assert.equal(fourth?.ok, false, `Socket.IO 4th subscribe: ${JSON.stringify(fourth)}`);
  assert.equal(fourth.error?.code, 'too_many_subscriptions', `Socket.IO 4th subscribe: ${JSON.stringify(fourth)}`);
  assert.equal(typeof fourth.error.message, 'string');
  await subscribeOk(s, a); // already subscribed: fine
  await subscribeOk(s, c, { since: 0 });
  assert.equal((await subscribe(s, e))?.error?.code, 'too_many_subscriptions', 'still at the cap after re-subscribing');
  assert.deepEqual(await s.emitWithAck('unsubscribe', { channel: b }), { ok: true, channel: b });
  await subscribeOk(s, d); // room again
  assert.equal((await subscribe(s, e))?.error?.code, 'too_many_subscriptions', 'at the cap again');

  // /ws
  const w = await openWs(t, `${wsBase(h)}/ws`);
  for (const x of [a, b, c]) await w.subscribeOk(x);
  const wFourth = await w.request('subscribe', { channel: d }, { id: 44 });
  assert.equal(wFourth.type, 'error', `/ws 4th subscribe: ${JSON.stringify(wFourth)}`);
  assert.equal(wFourth.code, 'too_many_subscriptions', `/ws 4th subscribe: ${JSON.stringify(wFourth)}`);
  assert.equal(wFourth.id, 44, 'the error echoes the request id');
  await w.subscribeOk(b); // already subscribed
  await w.subscribeOk(b, { since: 0 });
  assert.equal((await w.request('subscribe', { channel: e })).code, 'too_many_subscriptions');
  assert.deepEqual(await w.request('unsubscribe', { channel: a }, { id: 'u' }), { type: 'unsubscribed', id: 'u', channel: a });
  await w.subscribeOk(d);
  assert.equal((await w.request('subscribe', { channel: e })).code, 'too_many_subscriptions');
  assert.equal(w.closeInfo, null, 'refusals keep the connection open');

  // Deliveries follow what was accepted: s holds a, c, d; w holds b, c, d; nobody holds e.
  for (const x of [e, a, b, c, d]) await publish(h.url, x, 'ev', { ch: x });
  await rec.until((r) => r.named('ev').length >= 3, 10_000, 'Socket.IO events of a, c, d');
  await w.until((x) => x.events().length >= 3, 10_000, '/ws events of b, c, d');
  await s.emitWithAck('subscribe', { channel: a }); // a round trip: anything queued before has arrived
  await w.barrier();
  assert.deepEqual(rec.named('ev').map((x) => x.args[0].ch).sort(), [a, c, d].sort(), 'Socket.IO receives exactly its accepted channels');
  assert.deepEqual(w.events().map((x) => x.channel).sort(), [b, c, d].sort(), '/ws receives exactly its accepted channels');

  // SSE: the channels of one stream.
  const q = (...xs) => `${h.url}/sse?${xs.map((x) => `channel=${encodeURIComponent(x)}`).join('&')}`;
  const four = await openSse(t, q(a, b, c, d));
  assertApiError(four, 400, 'too_many_subscriptions', 'SSE with 4 channels');
  const three = await openSse(t, q(a, b, c));
  assert.equal(three.status, 200, `SSE with 3 channels: ${three.text}`);
  const dup = await openSse(t, q(a, b, c, a));
  assert.equal(dup.status, 200, `SSE naming a channel twice (3 distinct): ${dup.text}`);
  three.close();
  dup.close();
  // 4 distinct channels, the first one repeated at the end, is still 4 channels.
  const fourPlusRepeat = await openSse(t, q(a, b, c, d, a));
  const fourPlusRepeatBody = fourPlusRepeat.text;
  fourPlusRepeat.close();
  assert.equal(fourPlusRepeat.status, 400, `SSE with 4 distinct channels (a,b,c,d,a) must be refused: got ${fourPlusRepeat.status} ${fourPlusRepeatBody ?? '(stream)'}`);
  assert.equal(fourPlusRepeat.json?.error?.code, 'too_many_subscriptions');
  await h.assertHealthy();
});

// ---------------------------------------------------------------------------------------------------------------
// 6. Pathological input

test('pathological input: 10,000-character and control-character channels, invalid UTF-8 paths, a 100 KB token → clear 4xx; well-behaved clients unaffected', async (t) => {
  const h = await startHerald(t);
  const ws = wsBase(h);
  const ok = chan('ok');
  const steady = await openWs(t, `${ws}/ws`);
  await steady.subscribeOk(ok);
  const steadySio = await connected(t, h.url, { transports: ['websocket'] });
  await subscribeOk(steadySio, ok);
  const steadyRec = new Recorder(steadySio);
  const steadySse = await openSse(t, `${h.url}${directPath('/sse', ok)}`);
  assert.equal(steadySse.status, 200);
  let published = 0;
  const tick = () => publish(h.url, ok, 'tick', { i: ++published });
  await tick();

  // A client sending the bad input over its own connections.
  const bad = await openWs(t, `${ws}/ws`);
  const badSio = await connected(t, h.url, { transports: ['websocket'] });

  const longName = 'x'.repeat(10_000);
  const badNames = [
    ['10,000 characters', longName],
    ['10,000 multibyte characters', 'é'.repeat(10_000)],
    ['NUL', 'a\u0000b'],
    ['newline', 'a\nb'],
    ['carriage return', 'a\rb'],
    ['tab', 'a\tb'],
    ['BEL', '\u0007'],
    ['ESC', 'a\u001b[2Jb'],
    ['DEL', 'a\u007fb'],
    ['C1 control', 'a\u0085b'],
    ['line separator', 'a\u2028b'],
    ['bidi override', 'a\u202eb'],
    ['zero-width', 'a\u200bb'],
  ];
  for (const [what, name] of badNames) {
    const enc = encodeURIComponent(name);
    assertApiError(await post(h, { channel: name, event: 'x', data: 1 }), 400, 'invalid_channel', `publish, channel with ${what}`);
    assertApiError(await post(h, { channels: ['fine', name], event: 'x', data: 1 }), 400, 'invalid_channel', `publish channels[], ${what}`);
    assertApiError(await request(h.url, `/api/channels/${enc}/history`), 400, 'invalid_channel', `history, ${what}`);
    const wr = await bad.request('subscribe', { channel: name });
    assert.equal(wr.type, 'error', `/ws subscribe, ${what}: ${JSON.stringify(wr).slice(0, 300)}`);
    assert.equal(wr.code, 'invalid_channel', `/ws subscribe, ${what}`);
    const sr = await subscribe(badSio, name);
    assert.equal(sr?.error?.code, 'invalid_channel', `Socket.IO subscribe, ${what}: ${JSON.stringify(sr).slice(0, 300)}`);
    assertApiError(await wsRefused(t, `${ws}/ws/${enc}`), 400, 'invalid_channel', `/ws/{channel}, ${what}`);
    assertApiError(await openSse(t, `${h.url}/sse/${enc}`), 400, 'invalid_channel', `/sse/{channel}, ${what}`);
    assertApiError(await openSse(t, `${h.url}/sse?channel=${enc}`), 400, 'invalid_channel', `/sse?channel=, ${what}`);
  }
  await tick();
  assertApiError(await post(h, { channel: ok, event: 'e'.repeat(10_000), data: 1 }), 400, 'invalid_request', '10,000-character event name');
  assertApiError(await post(h, { channel: ok, event: 'e', id: 'i'.repeat(10_000), data: 1 }), 400, 'invalid_request', '10,000-character id');

  // Invalid UTF-8 in percent-encoded paths and queries (lone continuation byte, overlong, surrogate, truncated).
  for (const seq of ['%FF', '%C0%AF', '%ED%A0%80', '%E2%82', 'ok%FFok']) {
    assertApiError(await wsRefused(t, `${ws}/ws/${seq}`), 400, 'invalid_channel', `/ws/${seq}`);
    assertApiError(await openSse(t, `${h.url}/sse/${seq}`), 400, 'invalid_channel', `/sse/${seq}`);
    assertApiError(await openSse(t, `${h.url}/sse?channel=${seq}`), 400, 'invalid_channel', `/sse?channel=${seq}`);
    const hr = await request(h.url, `/api/channels/${seq}/history`);
    assert.equal(hr.status, 400, `history /api/channels/${seq}: ${hr.status} ${hr.text}`);
    assert.ok(['invalid_channel', 'invalid_request'].includes(hr.json?.error?.code), `history ${seq}: ${hr.text}`);
  }

  assert.equal(bad.closeInfo, null, '/ws stays open after bad input');

  // A 100 KB bearer token → 401 (tokens over 16 KiB are refused unparsed), on /ws, /ws/{channel}, SSE and Socket.IO.
  const hugeToken = 'A'.repeat(100 * 1024);
  assertApiError(await wsRefused(t, `${ws}/ws`, { headers: { authorization: `Bearer ${hugeToken}` } }), 401, 'unauthorized', '/ws with a 100 KB token');
  assertApiError(await wsRefused(t, `${ws}${directPath('/ws', ok)}`, { headers: { authorization: `Bearer ${hugeToken}` } }), 401, 'unauthorized', '/ws/{channel} with a 100 KB token');
  assertApiError(await openSse(t, `${h.url}${directPath('/sse', ok)}`, { headers: { authorization: `Bearer ${hugeToken}` } }), 401, 'unauthorized', 'SSE with a 100 KB token');
  const sioHuge = await sioAttempt(t, h.url, { transports: ['websocket'], auth: { token: hugeToken } });
  assert.equal(sioHuge.connected, false, 'Socket.IO with a 100 KB token must not connect');
  assert.equal(sioHuge.err.data?.code, 'unauthorized', `Socket.IO connect_error: ${sioHuge.err.message} ${JSON.stringify(sioHuge.err.data)}`);

  // The bad clients' connections still work, and the well-behaved ones got everything.
  await bad.subscribeOk(ok);
  await subscribeOk(badSio, ok);
  await tick();
  await steady.until((c) => c.events(ok).length >= published, 10_000, 'steady /ws gets every event');
  assert.deepEqual(steady.events(ok).map((e) => e.data.i), range(1, published));
  await steadyRec.until((r) => r.named('tick').length >= published, 10_000, 'steady Socket.IO gets every event');
  assert.deepEqual(steadyRec.named('tick').map((e) => e.args[0].i), range(1, published));
  await steadySse.until((s) => s.named('tick').length >= published, 10_000, 'steady SSE gets every event');
  await bad.until((c) => c.events(ok).length >= 1, 10_000, 'the bad /ws client still receives');
  assert.ok(steadySio.connected && badSio.connected, 'Socket.IO clients still connected');
  await h.assertHealthy();
});

test('pathological input: a 5 MB body to /api/publish is answered 413 payload_too_large every time (not a reset connection); nothing written', async (t) => {
  const h = await startHerald(t);
  const ok = chan('ok');
  const steady = await openWs(t, `${wsBase(h)}/ws`);
  await steady.subscribeOk(ok);
  const big = JSON.stringify({ channel: 'big', event: 'e', data: 'x'.repeat(5 * 1024 * 1024) });
  const batch = JSON.stringify({ events: Array.from({ length: 60_000 }, () => ({ channel: 'big', event: 'e' })) });
  // Repeated: a server that closes the connection with the rest of the body unread makes the client's upload fail
  // (EPIPE/ECONNRESET) before it can read the 413 — intermittently, so one attempt would prove little.
  const outcomes = [];
  for (const [what, body] of [...Array.from({ length: 10 }, (_, i) => [`5 MB body #${i + 1}`, big]), ['2 MB batch', batch]]) {
    try {
      const r = await post(h, body);
      outcomes.push(`${what}: ${r.status} ${r.json?.error?.code}`);
    } catch (e) {
      outcomes.push(`${what}: ${e.message} (${e.cause?.code ?? e.cause?.message})`);
    }
  }
  assert.deepEqual(outcomes.filter((o) => !/: 413 payload_too_large$/.test(o)), [],
    `every oversized body is answered 413 payload_too_large; outcomes: ${JSON.stringify(outcomes)}`);
  assertApiError(await history(h.url, 'big'), 404, 'channel_not_found', 'oversized bodies wrote nothing');
  const ev = await publish(h.url, ok, 'tick', { n: 1 });
  await steady.until((c) => c.events(ok).some((e) => e.offset === ev.offset), 10_000, 'a steady client unaffected');
  await h.assertHealthy();
});

test('pathological input: deeply nested JSON — publish and history agree, /ws and Socket.IO answer, nothing overflows its stack', async (t) => {
  const h = await startHerald(t);
  const ws = wsBase(h);
  const nest = (n) => `${'['.repeat(n)}${']'.repeat(n)}`;
  // Event data 200 levels deep (400 bytes) and 32,000 levels deep (64,000 bytes, under max_event_bytes): each is
  // either refused at publish with 400, or accepted — and then readable like any other event: delivered intact
  // live and through the history API (an accepted event must not make its channel's history unreadable).
  for (const depth of [200, 32_000]) {
    const channel = `deep-${depth}`;
    const data = nest(depth);
    const sub = await openWs(t, `${ws}${directPath('/ws', channel)}`);
    const pub = await post(h, `{"channel":"${channel}","event":"e","data":${data}}`);
    assert.ok([200, 400].includes(pub.status), `publish data ${depth} levels deep: ${pub.status} ${pub.text.slice(0, 200)}`);
    if (pub.status === 400) {
      assert.ok(['invalid_json', 'invalid_request'].includes(pub.json?.error?.code), pub.text.slice(0, 300));
      assertApiError(await history(h.url, channel), 404, 'channel_not_found', `a refused deep publish wrote nothing (${depth})`);
      continue;
    }
    await sub.until((c) => c.raw.length >= 1, 10_000, `the ${depth}-level event live on /ws/${channel}`);
    assert.ok(sub.raw[0].includes(`"data":${data}`), `delivered intact (${depth})`);
    const hist = await history(h.url, channel);
    assert.equal(hist.status, 200, `history of a channel holding an accepted ${depth}-level event (publish said 200): ${hist.status} ${hist.text.slice(0, 300)}`);
    assert.equal(hist.json.events.length, 1);
    await h.assertHealthy();
  }

  // /ws: a message 30,000 levels deep (60 KB, under max_message_bytes) → invalid_json, the connection stays open.
  const bad = await openWs(t, `${ws}/ws`);
  const from = bad.messages.length;
  bad.send(nest(30_000));
  const deepWs = await bad.next((m) => m?.type === 'error', 10_000, 'error for a deeply nested /ws message', from);
  assert.equal(deepWs.code, 'invalid_json', `/ws deeply nested message: ${JSON.stringify(deepWs)}`);
  await bad.barrier();
  assert.equal(bad.closeInfo, null, '/ws stays open');

  // Socket.IO: a subscribe whose argument nests 1,000 levels deep is answered invalid_request, or (as for any packet
  // Herald's parser refuses) that one connection is closed; either way the server keeps serving.
  const deepSock = (await sioAttempt(t, h.url, { transports: ['websocket'] })).socket;
  const deepOutcome = await withTimeout(new Promise((resolve) => {
    deepSock.once('disconnect', (reason) => resolve({ disconnected: reason }));
    deepSock.emit('subscribe', JSON.parse(nest(1000)), (ack) => resolve({ ack }));
  }), 10_000, 'ack or disconnect after a deeply nested subscribe');
  if ('ack' in deepOutcome) {
    assert.equal(deepOutcome.ack?.error?.code, 'invalid_request', `Socket.IO deeply nested subscribe: ${JSON.stringify(deepOutcome.ack).slice(0, 200)}`);
  }
  await h.assertHealthy();
});
