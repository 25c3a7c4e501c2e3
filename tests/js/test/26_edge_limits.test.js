// 26. The edge (src/accept.rs, src/policy): TCP sockets that never send a request are closed after
// `request_head_timeout`, an idle keep-alive socket after `keep_alive_timeout`; every accepted socket counts against its address's
// `sockets_per_ip` budget (beyond it: 429 while the deadline lasts, then closed at once), the refusals logged
// aggregated; and the token buckets' sizes are the named `*_burst` settings: N rapid attempts at rate R with burst
// B let exactly B through, plus at most what refills while the test runs (R × elapsed).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { startHerald, publish, request, assertApiError, chan, withTimeout, pause } from '../lib/herald.js';
import { wsBase, openWs, openSse, directPath } from '../lib/plain.js';
import { attemptWs, pool } from '../lib/limits.js';

/** A raw TCP connection that records what arrives and when it closes (resolves once connected). */
async function rawSocket(t, h, send) {
  const s = net.connect(h.port, '127.0.0.1');
  const r = { s, data: '', openedAt: 0, closedAt: null };
  r.closed = new Promise((resolve) => s.on('close', () => { r.closedAt = Date.now(); resolve(r); }));
  s.on('data', (d) => { r.data += d.toString('latin1'); });
  s.on('error', () => {}); // a reset is a close like any other here
  t.after(() => s.destroy());
  await withTimeout(new Promise((resolve, reject) => { s.once('connect', resolve); s.once('error', reject); }), 5000, 'TCP connect');
  r.openedAt = Date.now();
  if (send !== undefined) s.write(send);
  return r;
}

const HEALTHZ = 'GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n';

/** The status line and JSON body of a raw HTTP/1.1 response. */
function parseResponse(text) {
  const [head, body = ''] = text.split('\r\n\r\n');
  let json;
  try { json = JSON.parse(body); } catch { json = undefined; }
  return { status: Number(/^HTTP\/1\.1 (\d{3})/.exec(head)?.[1] ?? 0), head, text: body, json };
}

/** Retry `attempt` (resolving {done, why}) with a short backoff until done or `ms` pass. */
async function retryUntil(attempt, ms, label) {
  const deadline = Date.now() + ms;
  for (;;) {
    const last = await attempt();
    if (last?.done) return last;
    if (Date.now() > deadline) throw new Error(`${label}: not done within ${ms} ms (last: ${JSON.stringify(last?.why)})`);
    await pause(50); // backoff while the server notices closed sockets and releases their slots
  }
}

test('request_head_timeout: silent sockets, a partial head, an HTTP/2 preface without a request and an idle keep-alive socket are closed after it; WebSocket and SSE streams stay', async (t) => {
  const TIMEOUT_MS = 1000;
  const KEEP_ALIVE_MS = 2000;
  const h = await startHerald(t, { config: '[limits]\nrequest_head_timeout = "1s"\nkeep_alive_timeout = "2s"\n' });
  const ch = chan('edge');
  const ws = await openWs(t, `${wsBase(h)}/ws`);
  await ws.subscribeOk(ch);
  const sse = await openSse(t, `${h.url}${directPath('/sse', ch)}`);
  assert.equal(sse.status, 200);

  const silent = await Promise.all(Array.from({ length: 4 }, () => rawSocket(t, h)));
  const partial = await rawSocket(t, h, 'GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n'); // never ends its head
  const h2Partial = await rawSocket(t, h, 'PRI * HTTP/2.0\r\n'); // where the server tells HTTP/1.1 from HTTP/2
  const h2Preface = await rawSocket(t, h, 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'); // then no stream at all
  const keepAlive = await rawSocket(t, h, HEALTHZ);
  const all = [...silent, partial, h2Partial, h2Preface, keepAlive];
  await withTimeout(Promise.all(all.map((r) => r.closed)), 10_000, 'the server closes every socket that sends no (further) request');
  for (const [i, r] of all.entries()) {
    const held = r.closedAt - r.openedAt;
    assert.ok(held >= TIMEOUT_MS - 100, `socket #${i} was closed after ${held} ms, before the 1 s deadline`);
  }
  const idle = keepAlive.closedAt - keepAlive.openedAt;
  assert.ok(idle >= KEEP_ALIVE_MS - 100, `the idle keep-alive socket was closed after ${idle} ms, before keep_alive_timeout`);
  for (const r of silent) assert.equal(r.data, '', 'a silent socket gets no answer');
  assert.equal(parseResponse(keepAlive.data).status, 200, `the keep-alive socket's request was answered: ${keepAlive.data}`);

  // The streams opened before the raw sockets have now outlived the deadline by far: they are requests in
  // progress, not heads, and keep working.
  const ev = await publish(h.url, ch, 'tick', { n: 1 });
  await ws.until((c) => c.events(ch).some((e) => e.offset === ev.offset), 10_000, '/ws still receives');
  await sse.until((s) => s.named('tick').length === 1, 10_000, 'SSE still receives');
  assert.equal(ws.closeInfo, null, '/ws stays open');
  await h.assertHealthy();
});

test('sockets_per_ip: sockets beyond the budget are answered 429 rate_limited, beyond twice that closed at once, logged aggregated; clients get in again once sockets close', async (t) => {
  const BUDGET = 4;
  const h = await startHerald(t, { config: `[limits]\nsockets_per_ip = ${BUDGET}\nrequest_head_timeout = "30s"\n` });

  // The budget, held by sockets that send nothing (each connect awaited: the server accepts in this order).
  const held = [];
  for (let i = 0; i < BUDGET; i++) held.push(await rawSocket(t, h));
  // As many again are held while they are answered (up to the 30 s deadline) …
  const refusing = [];
  for (let i = 0; i < BUDGET; i++) refusing.push(await rawSocket(t, h));
  // … and one more is closed at once, well before any deadline.
  const extra = await rawSocket(t, h);
  await withTimeout(extra.closed, 5000, 'a socket beyond twice the budget is closed at once');
  assert.equal(extra.data, '', 'closed without an answer');
  assert.ok(refusing.every((r) => r.closedAt === null) && held.every((r) => r.closedAt === null), 'the others are still open');

  // Once those go, a socket over the budget that sends a request reads why it is refused.
  for (const r of refusing) r.s.destroy();
  const over = await retryUntil(async () => {
    const r = await rawSocket(t, h, HEALTHZ);
    await withTimeout(r.closed, 10_000, 'a refused socket is closed after its answer');
    const res = parseResponse(r.data);
    return { done: res.status !== 0, why: r.data, res };
  }, 5000, 'an answer over the budget');
  assertApiError(over.res, 429, 'rate_limited', 'a request on a socket over the budget');
  assertApiError(await request(h.url, '/healthz'), 429, 'rate_limited', 'fetch over the socket budget');
  const upgrade = await attemptWs(t, `${wsBase(h)}/ws`);
  assertApiError(upgrade, 429, 'rate_limited', 'a WebSocket upgrade over the socket budget');

  // The held sockets close: their slots come back and a normal client gets in.
  for (const r of held) r.s.destroy();
  await retryUntil(async () => {
    const r = await request(h.url, '/healthz');
    return { done: r.status === 200, why: `${r.status} ${r.text}` };
  }, 5000, '/healthz once the held sockets closed');
  const ch = chan('budget');
  const ws = await openWs(t, `${wsBase(h)}/ws`);
  await ws.subscribeOk(ch);
  const ev = await publish(h.url, ch, 'tick', { n: 1 });
  await ws.until((c) => c.events(ch).some((e) => e.offset === ev.offset), 10_000, 'the new client receives');

  // At least 1 + BUDGET + 3 refusals, one log line (plus at most one summary if an interval ended meanwhile).
  const lines = h.stderr().split('\n').filter((l) => l.includes('sockets_per_ip'));
  assert.ok(lines.length >= 1 && lines.length <= 2, `socket refusals logged aggregated, not per socket: ${lines.length} lines\n${lines.join('\n')}`);
  await h.assertHealthy();
});

/** Counts how many of `n` concurrent attempts pass; returns {passed, refused, elapsed (s)}. */
async function burst(n, attempt) {
  const t0 = Date.now();
  const outcomes = await withTimeout(pool(n, n, attempt), 20_000, `${n} attempts`);
  const elapsed = (Date.now() - t0) / 1000;
  return { passed: outcomes.filter((o) => o === true).length, refused: outcomes.filter((o) => o === false).length, outcomes, elapsed };
}

/** B passed, plus at most R × elapsed refilled meanwhile; every other attempt refused with the documented code. */
function assertBurst({ passed, refused, outcomes, elapsed }, rate, size, what) {
  assert.equal(passed + refused, outcomes.length, `${what}: every attempt passed or was refused: ${JSON.stringify(outcomes.filter((o) => o !== true && o !== false))}`);
  const refill = Math.floor(rate * elapsed);
  assert.ok(passed >= size && passed <= size + refill,
    `${what}: ${passed} passed in ${elapsed.toFixed(2)} s; expected the burst ${size} plus at most ${refill} refilled (${rate}/s)`);
}

test('connections_burst: 20 simultaneous upgrades at 1/s with a burst of 5 let 5 through (+ the refill)', async (t) => {
  const h = await startHerald(t, { config: '[limits]\nconnections_per_second_per_ip = 1\nconnections_burst = 5\n' });
  const r = await burst(20, async () => {
    const a = await attemptWs(t, `${wsBase(h)}/ws`);
    if (a.status === 101) return true;
    if (a.status === 429 && a.json?.error?.code === 'rate_limited') return false;
    return `${a.status} ${a.text ?? a.error}`;
  });
  assertBurst(r, 1, 5, 'connections');
  await h.assertHealthy();
});

test('publishes_burst: 20 simultaneous publishes at 1/s with a burst of 4 let 4 through (+ the refill), each acknowledged one stored', async (t) => {
  const h = await startHerald(t, { config: '[limits]\npublishes_per_second_per_key = 1\npublishes_burst = 4\n' });
  const ch = chan('pubburst');
  const r = await burst(20, async (i) => {
    const p = await request(h.url, '/api/publish', { method: 'POST', body: { channel: ch, event: 'e', data: { i } } });
    if (p.status === 200) return true;
    if (p.status === 429 && p.json?.error?.code === 'rate_limited') return false;
    return `${p.status} ${p.text}`;
  });
  assertBurst(r, 1, 4, 'publishes');
  const hist = await retryUntil(async () => {
    const x = await request(h.url, `/api/channels/${encodeURIComponent(ch)}/history`);
    return { done: x.status === 200, why: x.text, x };
  }, 5000, 'history');
  assert.equal(hist.x.json.events.length, r.passed, 'exactly the acknowledged publishes were stored');
  await h.assertHealthy();
});

test('messages_burst below the rate: 40 pings at once at 20/s with a burst of 2 get 2 pongs (+ the refill), the rest rate_limited', async (t) => {
  const h = await startHerald(t, { config: '[limits]\nmessages_per_second = 20\nmessages_burst = 2\n' });
  const c = await openWs(t, `${wsBase(h)}/ws`);
  const N = 40;
  const t0 = Date.now();
  for (let i = 0; i < N; i++) c.send({ op: 'ping', id: i });
  const replies = (x) => x.messages.filter((m) => m?.type === 'pong' || m?.type === 'error');
  await c.until((x) => replies(x).length >= N, 10_000, `a reply to each of the ${N} pings`);
  const elapsed = (Date.now() - t0) / 1000;
  const got = replies(c);
  const pongs = got.filter((m) => m.type === 'pong').length;
  const limited = got.filter((m) => m.type === 'error' && m.code === 'rate_limited').length;
  assertBurst({ passed: pongs, refused: limited, outcomes: got.map((m) => m.type === 'pong' || (m.code === 'rate_limited' ? false : m)), elapsed },
    20, 2, 'messages');
  await h.assertHealthy();
});
