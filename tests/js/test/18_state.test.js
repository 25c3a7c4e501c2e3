// 18. State channels: events published with a `key` keep a latest value per key; a new subscriber first gets the
// snapshot (as of its exact registration position), then only later deltas — on every transport, across restarts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startHerald, DURABLE_ONLY, request, connected, subscribeOk, Recorder, assertApiError, waitFor } from '../lib/herald.js';
import { openWs, wsBase, openSse, directPath } from '../lib/plain.js';

const CONFIG = `
[[state]]
channels = "services*"
bulk_event = "service:bulk-update"
`;

async function put(h, channel, event, data, key, extra = {}) {
  const r = await request(h.url, '/api/publish', { method: 'POST', body: { channel, event, data, key, ...extra } });
  assert.equal(r.status, 200, r.text);
  return r.json.results[0];
}

test('bulk snapshot then deltas over Socket.IO; removed keys leave the snapshot; state survives a restart', DURABLE_ONLY, async (t) => {
  const h = await startHerald(t, { config: CONFIG });
  await put(h, 'services', 'service:status', { id: 'a', status: 'up' }, 'a');
  await put(h, 'services', 'service:status', { id: 'b', status: 'up' }, 'b');
  await put(h, 'services', 'service:status', { id: 'c', status: 'up' }, 'c');
  await put(h, 'services', 'service:status', { id: 'a', status: 'down' }, 'a');
  await put(h, 'services', 'service:removed', { id: 'c' }, 'c', { remove: true });

  const socket = await connected(t, h.url, { transports: ['websocket'] });
  const rec = new Recorder(socket);
  await subscribeOk(socket, 'services');
  await rec.until((r) => r.named('service:bulk-update').length === 1, 10_000, 'bulk snapshot');
  assert.deepEqual(rec.named('service:bulk-update')[0].args[0], [{ id: 'a', status: 'down' }, { id: 'b', status: 'up' }]);
  assert.equal(rec.named('service:status').length, 0, 'no history replayed to a new subscriber');

  await put(h, 'services', 'service:status', { id: 'b', status: 'degraded' }, 'b');
  await rec.until((r) => r.named('service:status').length === 1, 10_000, 'live delta');
  assert.deepEqual(rec.named('service:status')[0].args[0], { id: 'b', status: 'degraded' });

  socket.disconnect();
  await h.stop('SIGTERM');
  await h.restart();
  const s2 = await connected(t, h.url, { transports: ['websocket'] });
  const rec2 = new Recorder(s2);
  await subscribeOk(s2, 'services');
  await rec2.until((r) => r.named('service:bulk-update').length === 1, 10_000, 'bulk snapshot after restart');
  assert.deepEqual(rec2.named('service:bulk-update')[0].args[0], [{ id: 'a', status: 'down' }, { id: 'b', status: 'degraded' }]);
});

test('a declared state channel with no values yet sends an empty snapshot', async (t) => {
  const h = await startHerald(t, { config: CONFIG });
  const socket = await connected(t, h.url, { transports: ['websocket'] });
  const rec = new Recorder(socket);
  await subscribeOk(socket, 'services:eu');
  await rec.until((r) => r.named('service:bulk-update').length === 1, 10_000, 'empty bulk snapshot');
  assert.deepEqual(rec.named('service:bulk-update')[0].args[0], []);
});

test('each-value snapshot over /ws and SSE; a resuming client gets deltas, not the snapshot again', async (t) => {
  const h = await startHerald(t, { config: `${CONFIG}\n[[state]]\nchannels = "rows"\n` });
  for (let i = 0; i < 5; i++) await put(h, 'rows', 'row', { id: i, v: 0 }, String(i));
  await put(h, 'rows', 'row', { id: 2, v: 1 }, '2');

  const ws = await openWs(t, `${wsBase(h)}/ws`);
  await ws.subscribeOk('rows');
  await ws.until((c) => c.events('rows').length === 5, 10_000, 'five snapshot values');
  const snap = ws.events('rows');
  assert.deepEqual(snap.map((e) => e.data), [0, 1, 2, 3, 4].map((i) => ({ id: i, v: i === 2 ? 1 : 0 })));
  // Only the last snapshot message carries the position; the others say "nothing yet" (0).
  assert.deepEqual(snap.map((e) => e.offset), [0, 0, 0, 0, 6]);

  const sse = await openSse(t, `${h.url}${directPath('/sse', 'rows')}`);
  await sse.until((s) => s.events.filter((e) => e.event === 'row').length === 5, 10_000, 'SSE snapshot');

  await put(h, 'rows', 'row', { id: 9, v: 0 }, '9');
  await ws.until((c) => c.events('rows').length === 6, 10_000, 'live value');
  // A client resuming from the snapshot's position gets only what followed it.
  const again = await openWs(t, `${wsBase(h)}/ws`);
  await again.subscribeOk('rows', { since: 6, epoch: snap[4].epoch });
  await again.until((c) => c.events('rows').length === 1, 10_000, 'the one delta');
  await again.barrier();
  assert.deepEqual(again.events('rows').map((e) => e.data), [{ id: 9, v: 0 }]);
});

test('bad state fields get a 400 naming them', async (t) => {
  const h = await startHerald(t);
  const r = await request(h.url, '/api/publish', { method: 'POST', body: { channel: 'x', event: 'e', data: 1, remove: true } });
  assertApiError(r, 400, 'invalid_request', 'remove without key');
  assert.match(r.json.error.message, /remove/);
  const r2 = await request(h.url, '/api/publish', { method: 'POST', body: { channel: 'x', event: 'e', data: 1, key: '' } });
  assertApiError(r2, 400, 'invalid_request', 'empty key');
  assert.match(r2.json.error.message, /key/);
});

test('a key on a channel no [[state]] rule declares is refused (400 naming key); the channel keeps serving history', async (t) => {
  const h = await startHerald(t, { config: CONFIG });
  const plain = (body) => request(h.url, '/api/publish', { method: 'POST', body });
  const first = await plain({ channel: 'plain', event: 'e', data: { n: 1 } });
  assert.equal(first.status, 200, first.text);
  const cases = [
    ['set', { channel: 'plain', event: 'e', data: { n: 2 }, key: 'a' }, 'key'],
    ['remove', { channel: 'plain', event: 'e', key: 'a', remove: true }, 'key'],
    ['one of many channels', { channels: ['services', 'plain'], event: 'e', data: 1, key: 'a' }, 'key'],
    ['in a batch', { events: [{ channel: 'services', event: 'e', data: 1, key: 'a' }, { channel: 'plain', event: 'e', data: 1, key: 'a' }] }, 'events[1].key'],
  ];
  for (const [what, body, field] of cases) {
    const r = await plain(body);
    assertApiError(r, 400, 'invalid_request', what);
    assert.equal(r.json.error.field, field, `${what}: ${r.text}`);
    assert.match(r.json.error.message, /"plain" is not a state channel; declare it in \[\[state\]\]/, what);
  }
  // Nothing was written (the batch and the multi-channel publish are all or nothing)…
  const hist = await request(h.url, '/api/channels/plain/history');
  assert.deepEqual(hist.json.events.map((e) => e.data), [{ n: 1 }]);
  assert.equal((await request(h.url, '/api/channels/services/history')).status, 404, 'services untouched');
  // …and the channel is still a plain one: a subscriber from the start gets its history, no snapshot.
  const ws = await openWs(t, `${wsBase(h)}/ws`);
  await ws.subscribeOk('plain', { since: 0 });
  await ws.until((c) => c.events('plain').length === 1, 10_000, 'the one event from history');
  await ws.barrier();
  assert.deepEqual(ws.events('plain').map((e) => [e.offset, e.data]), [[1, { n: 1 }]]);
  // A declared channel still takes keys.
  await put(h, 'services', 'service:status', { id: 'a' }, 'a');
});

test('Socket.IO recovery on a state channel: the missed deltas, not the snapshot again', async (t) => {
  const h = await startHerald(t, { config: CONFIG });
  await put(h, 'services', 'service:status', { id: 'a', status: 'up' }, 'a');
  const socket = await connected(t, h.url, { transports: ['websocket'], reconnectionDelay: 50, reconnectionDelayMax: 100 });
  const rec = new Recorder(socket);
  const connects = [];
  socket.on('connect', () => connects.push(socket.recovered));
  await subscribeOk(socket, 'services');
  await rec.until((r) => r.named('service:bulk-update').length === 1, 10_000, 'snapshot');
  await put(h, 'services', 'service:status', { id: 'a', status: 'down' }, 'a');
  await rec.until((r) => r.named('service:status').length === 1, 10_000, 'first delta');

  const reconnected = waitFor(socket, 'connect', 10_000, 'reconnect');
  socket.io.engine.close();
  await put(h, 'services', 'service:status', { id: 'b', status: 'up' }, 'b');
  await reconnected;
  await rec.until((r) => r.named('service:status').length === 2, 10_000, 'missed delta after recovery');
  assert.deepEqual(connects, [true]);
  assert.equal(rec.named('service:bulk-update').length, 1, 'no second snapshot');
  assert.deepEqual(rec.named('service:status')[1].args[0], { id: 'b', status: 'up' });
});
