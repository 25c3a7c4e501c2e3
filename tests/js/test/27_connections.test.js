// 27. The connection registry (docs/interface.md, "HTTP API"): `GET /api/connections` lists Socket.IO, plain
// WebSocket and SSE clients alike — id, transport, identity from the JWT, address, connect time, live subscriptions —
// by pages of `limit` with `after`; `GET /api/connections/{id}` reads one; `POST /api/connections/{id}/disconnect`
// closes any of them the way its client resumes from: Socket.IO's transport (the stock client reconnects and
// recovers), `/ws` with close code 4000, SSE by ending the stream (the EventSource reconnects with Last-Event-ID).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EventSource } from 'eventsource';
import {
  startHerald, request, publish, connected, subscribeOk, waitFor, withTimeout, pause, assertApiError, Recorder,
} from '../lib/herald.js';
import { KEY_BLOCKS, rule, bearer, withToken, wsOpen } from '../lib/auth.js';
import { sign } from '../lib/jwt.js';

const CONFIG = `[auth]\n${KEY_BLOCKS.RS256}${rule({ pattern: 'news', subscribe: true })}`
  + `${rule({ pattern: 'sports', subscribe: true })}\n[sse]\nretry = "100ms"\n`;

const token = (sub, roles) => sign({ sub, roles });

async function list(h, query = '') {
  const r = await request(h.url, `/api/connections${query}`);
  assert.equal(r.status, 200, `GET /api/connections${query} → ${r.status} ${r.text}`);
  assert.ok(Array.isArray(r.json.connections), `connections array: ${r.text}`);
  assert.ok('next' in r.json, `next field: ${r.text}`);
  return r.json;
}

/** Retry the listing (short backoff) until `pred` holds: a connection leaves once the server has finished it. */
async function listedUntil(h, pred, label, ms = 10_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const { connections } = await list(h);
    if (pred(connections)) return connections;
    if (Date.now() > deadline) throw new Error(`${label}; listed: ${JSON.stringify(connections)}`);
    await pause(25); // backoff between retries of the listing
  }
}

/** An EventSource recording its events, opens, errors and the headers of each (re)connection request. */
function recordingEventSource(t, url, names) {
  const log = { items: [], opens: 0, errors: 0, requests: [], waiters: [] };
  const check = () => { log.waiters = log.waiters.filter((w) => { const ok = w.pred(log); if (ok) w.resolve(); return !ok; }); };
  const es = new EventSource(url, {
    fetch: (input, init) => {
      log.requests.push({ ...init.headers });
      return fetch(input, init);
    },
  });
  for (const name of names) {
    es.addEventListener(name, (e) => { log.items.push({ name, data: JSON.parse(e.data), lastEventId: e.lastEventId }); check(); });
  }
  es.addEventListener('open', () => { log.opens++; check(); });
  es.addEventListener('error', () => { log.errors++; check(); });
  log.until = (pred, label) => {
    if (pred(log)) return Promise.resolve();
    let w;
    const p = new Promise((resolve) => { w = { pred, resolve }; log.waiters.push(w); });
    return withTimeout(p, 10_000, `${label}; log ${JSON.stringify({ ...log, waiters: undefined })}`)
      .finally(() => { log.waiters = log.waiters.filter((x) => x !== w); });
  };
  log.es = es;
  t.after(() => es.close());
  return log;
}

/** One client of each transport, each with its own user and subscriptions. */
async function threeClients(t, h) {
  const sio = await connected(t, h.url, { auth: { token: token('alice', ['owner']) } });
  await subscribeOk(sio, 'news');
  const ws = await wsOpen(t, h, '/ws', { headers: bearer(token('bob', [])) });
  await ws.subscribeOk('news');
  await ws.subscribeOk('sports');
  const sse = recordingEventSource(t, `${h.url}${withToken('/sse?channel=news&channel=sports', token('carol', ['reader', 'staff']))}`, ['tick']);
  await sse.until((l) => l.opens === 1, 'SSE open');
  return { sio, ws, sse };
}

const byTransport = (connections, transport) => connections.filter((c) => c.transport === transport);

test('GET /api/connections lists Socket.IO, WebSocket and SSE clients with identity, address and subscriptions; pages; reads one; 404 and 400', async (t) => {
  const h = await startHerald(t, { config: CONFIG });
  const before = Date.now();
  const { sio, ws } = await threeClients(t, h);
  const after = Date.now();

  const { connections, next } = await list(h);
  assert.equal(connections.length, 3, JSON.stringify(connections));
  assert.equal(next, null, 'one page holds everything');
  const [s] = byTransport(connections, 'socketio');
  const [w] = byTransport(connections, 'websocket');
  const [e] = byTransport(connections, 'sse');
  assert.ok(s && w && e, `one connection per transport: ${JSON.stringify(connections)}`);
  assert.equal(s.id, sio.id, 'a Socket.IO connection is listed under its socket id');
  assert.deepEqual([s.user, s.roles, s.subscriptions], ['alice', ['owner'], ['news']]);
  assert.ok(['polling', 'websocket'].includes(s.carrier), `Socket.IO carrier: ${JSON.stringify(s)}`);
  assert.deepEqual([w.user, w.roles, w.subscriptions], ['bob', [], ['news', 'sports']]);
  assert.deepEqual([e.user, e.roles, e.subscriptions], ['carol', ['reader', 'staff'], ['news', 'sports']]);
  for (const c of connections) {
    assert.match(c.address, /^127\.0\.0\.1:\d+$/, `address: ${JSON.stringify(c)}`);
    assert.ok(c.connected_at >= before - 1000 && c.connected_at <= after + 1000, `connected_at: ${JSON.stringify(c)}`);
  }
  assert.notEqual(w.id, e.id);
  // Ids are ordered, and the list follows them.
  assert.deepEqual(connections.map((c) => c.id), connections.map((c) => c.id).sort());

  // Pages of one, chained by `next`, walk every connection once, in the same order.
  const walked = [];
  let cursor = null;
  for (let i = 0; i < 5; i++) {
    const page = await list(h, `?limit=1${cursor ? `&after=${encodeURIComponent(cursor)}` : ''}`);
    walked.push(...page.connections.map((c) => c.id));
    assert.ok(page.connections.length <= 1);
    cursor = page.next;
    if (cursor === null) break;
    assert.equal(cursor, page.connections[0].id, 'next names the last id of the page');
  }
  assert.deepEqual(walked, connections.map((c) => c.id));
  assert.deepEqual((await list(h, '?transport=websocket')).connections.map((c) => c.id), [w.id]);
  assert.deepEqual((await list(h, `?transport=sse&after=${encodeURIComponent(e.id)}`)).connections, []);

  for (const c of connections) {
    const one = await request(h.url, `/api/connections/${encodeURIComponent(c.id)}`);
    assert.equal(one.status, 200, `GET one ${c.id} → ${one.status} ${one.text}`);
    assert.deepEqual(one.json, c);
  }
  assertApiError(await request(h.url, '/api/connections/no-such-connection'), 404, 'connection_not_found', 'GET unknown');
  assertApiError(await request(h.url, '/api/connections/no-such-connection/disconnect', { method: 'POST' }),
    404, 'connection_not_found', 'disconnect unknown');
  for (const q of ['limit=0', 'limit=abc', 'limit=-1', 'limit=1.5', 'transport=polling']) {
    assertApiError(await request(h.url, `/api/connections?${q}`), 400, 'invalid_request', `?${q}`);
  }
  // Beyond the largest page, a full page.
  assert.equal((await list(h, '?limit=5000')).connections.length, 3);
  // Subscriptions are read from the connection: an unsubscription shows at once.
  assert.equal((await ws.request('unsubscribe', { channel: 'sports' })).type, 'unsubscribed');
  const wNow = await request(h.url, `/api/connections/${encodeURIComponent(w.id)}`);
  assert.deepEqual(wNow.json.subscriptions, ['news']);
  h.assertNoPanic();
});

test('POST /api/connections/{id}/disconnect closes every transport so its client resumes; ended connections leave the list', async (t) => {
  const h = await startHerald(t, { config: CONFIG });
  const { sio, ws, sse } = await threeClients(t, h);
  const rec = new Recorder(sio);
  const ids = Object.fromEntries((await list(h)).connections.map((c) => [c.transport, c.id]));
  await publish(h.url, 'news', 'tick', { n: 1 });
  await rec.until((r) => r.named('tick').length === 1, 10_000, 'Socket.IO tick 1');
  await ws.next((m) => m.type === 'event' && m.data?.n === 1, 10_000, 'ws tick 1');
  await sse.until((l) => l.items.length === 1, 'SSE tick 1');

  // Socket.IO: the transport closes (not the namespace), the stock client reconnects and recovers its session.
  const dropped = waitFor(sio, 'disconnect');
  const back = waitFor(sio, 'connect');
  const r1 = await request(h.url, `/api/connections/${encodeURIComponent(ids.socketio)}/disconnect`, { method: 'POST' });
  assert.equal(r1.status, 200, `disconnect Socket.IO → ${r1.status} ${r1.text}`);
  assert.deepEqual(r1.json, { ok: true });
  const [reason] = await dropped;
  assert.equal(reason, 'transport close', 'the transport closed, so the stock client reconnects');
  await publish(h.url, 'news', 'tick', { n: 2 });
  await back;
  assert.equal(sio.recovered, true, 'the session was recovered');
  await rec.until((r) => r.named('tick').length === 2, 10_000, 'Socket.IO tick 2 after recovery');
  assert.deepEqual(rec.named('tick').map((e) => e.args[0].n), [1, 2], 'nothing lost, nothing twice');
  const again = (await list(h, '?transport=socketio')).connections;
  assert.deepEqual(again.map((c) => [c.id, c.subscriptions]), [[sio.id, ['news']]], 'listed again under its socket id');

  await ws.next((m) => m.type === 'event' && m.data?.n === 2, 10_000, 'ws tick 2');
  await sse.until((l) => l.items.length === 2, 'SSE tick 2');

  // WebSocket: closed with 4000 (after what was queued).
  const r2 = await request(h.url, `/api/connections/${encodeURIComponent(ids.websocket)}/disconnect`, { method: 'POST' });
  assert.equal(r2.status, 200, `disconnect WebSocket → ${r2.status} ${r2.text}`);
  const closed = await withTimeout(ws.closed, 10_000, 'ws close');
  assert.deepEqual(closed, { code: 4000, reason: 'closed by an administrator' });

  // SSE: the stream ends; the EventSource reconnects by itself with the last cursor as Last-Event-ID.
  const r3 = await request(h.url, `/api/connections/${encodeURIComponent(ids.sse)}/disconnect`, { method: 'POST' });
  assert.equal(r3.status, 200, `disconnect SSE → ${r3.status} ${r3.text}`);
  await sse.until((l) => l.opens === 2, 'SSE reopened');
  assert.ok(sse.errors >= 1, 'the EventSource saw its stream end');
  const cursor = sse.items.at(-1).lastEventId;
  assert.equal(sse.requests.length, 2);
  assert.equal(sse.requests[1]['Last-Event-ID'] ?? sse.requests[1]['last-event-id'], cursor,
    `the reconnection resumes from ${cursor}: ${JSON.stringify(sse.requests[1])}`);
  await publish(h.url, 'news', 'tick', { n: 3 });
  await sse.until((l) => l.items.length === 3, 'SSE tick 3 after reconnecting');
  assert.deepEqual(sse.items.map((i) => i.data.n), [1, 2, 3], 'nothing lost, nothing twice');

  // The closed WebSocket and the first SSE stream left the list; the reconnected ones are there.
  const now = await listedUntil(h, (cs) => !cs.some((c) => c.id === ids.websocket || c.id === ids.sse),
    'the closed connections leave the list');
  assert.deepEqual(now.map((c) => c.transport).sort(), ['socketio', 'sse']);
  const [reopened] = byTransport(now, 'sse');
  assert.notEqual(reopened.id, ids.sse, 'a new stream is a new connection');
  assert.deepEqual([reopened.user, reopened.subscriptions], ['carol', ['news', 'sports']]);
  // /metrics (docs/operations.md) counts each of the three as ended by an administrator.
  const metrics = (await request(h.url, '/metrics')).text;
  for (const tr of ['socketio', 'websocket', 'sse']) {
    const key = `herald_disconnects_total{transport="${tr}",reason="admin"}`;
    const line = metrics.split('\n').find((l) => l.startsWith(`${key} `));
    assert.equal(line, `${key} 1`, `${tr} disconnected by an administrator, once`);
  }

  // Connections ended by their clients leave too.
  sio.disconnect();
  sse.es.close();
  await listedUntil(h, (cs) => cs.length === 0, 'every connection ended');
  h.assertNoPanic();
});

test('/api/connections needs an API key with admin scope: it names users and addresses', async (t) => {
  const h = await startHerald(t, { config: 'api_keys = ["root", {key = "pub", publish = ["x:*"], admin = false}]\n' });
  const sio = await connected(t, h.url);
  const root = bearer('root');
  const pub = bearer('pub');
  for (const [path, method] of [['/api/connections', 'GET'], [`/api/connections/${sio.id}`, 'GET'],
    [`/api/connections/${sio.id}/disconnect`, 'POST']]) {
    assertApiError(await request(h.url, path, { method }), 401, 'unauthorized', `${method} ${path} without a key`);
    assertApiError(await request(h.url, path, { method, headers: pub }), 403, 'forbidden', `${method} ${path} without admin scope`);
  }
  const r = await request(h.url, '/api/connections', { headers: root });
  assert.equal(r.status, 200, r.text);
  assert.deepEqual(r.json.connections.map((c) => [c.id, c.transport, c.user]), [[sio.id, 'socketio', null]]);
  assert.ok(sio.connected, 'refused requests closed nothing');
});
