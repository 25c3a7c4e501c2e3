// 7a. Bad input over the HTTP API: the right 4xx + error code, nothing written, server unharmed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  startHerald, request, publish, history, fullHistory, assertApiError, connected, subscribeOk, Recorder, chan,
} from '../lib/herald.js';

const CONFIG = `
max_body_bytes = 4096
max_event_bytes = 1024
`;

/** The server still does its job: publish → a Socket.IO subscriber receives it. */
async function assertServes(t, h) {
  await h.assertHealthy();
  const channel = chan('health');
  const socket = await connected(t, h.url, { transports: ['websocket'] });
  const rec = new Recorder(socket);
  await subscribeOk(socket, channel);
  await publish(h.url, channel, 'ping', { ok: true });
  await rec.until((r) => r.named('ping').length === 1, 10_000, 'event after bad input');
  socket.disconnect();
  h.assertNoPanic();
}

const post = (h, rawBody, headers = { 'content-type': 'application/json' }) =>
  request(h.url, '/api/publish', { method: 'POST', rawBody, headers });

test('HTTP publish: malformed JSON and wrong fields', async (t) => {
  const h = await startHerald(t, { config: CONFIG });
  for (const body of ['{', 'not json', '{"channel":"a","event":"x",}', '', '\u0000', '{"channel":"a" "event":"x"}']) {
    assertApiError(await post(h, body), 400, 'invalid_json', `body ${JSON.stringify(body)}`);
  }
  const invalidRequests = [
    ['missing event', { channel: 'a', data: 1 }],
    ['event not a string', { channel: 'a', event: 5, data: 1 }],
    ['missing channel', { event: 'x', data: 1 }],
    ['channel not a string', { channel: 7, event: 'x' }],
    ['channels not an array', { channels: 'a', event: 'x' }],
    ['events not an array', { events: { channel: 'a', event: 'x' } }],
    ['id not a string', { channel: 'a', event: 'x', id: {} }],
    ['a JSON array', [{ channel: 'a', event: 'x' }]],
    ['a JSON string', 'hello'],
    ['null', null],
    ['batch item without event', { events: [{ channel: 'a', event: 'x' }, { channel: 'a' }] }],
  ];
  for (const [what, body] of invalidRequests) {
    assertApiError(await post(h, JSON.stringify(body)), 400, 'invalid_request', what);
  }
  assertApiError(await history(h.url, 'a'), 404, 'channel_not_found', 'nothing was written to channel a');
  await assertServes(t, h);
});

test('HTTP publish: invalid channel names', async (t) => {
  const h = await startHerald(t, { config: CONFIG });
  // 1–200 bytes of letters and digits of any script, space and _ - . : @ # + = , ~ !
  const bad = ['a/b', '', ' lead', 'trail ', 'x'.repeat(201), 'x'.repeat(300), 'é'.repeat(101), 'tab\t', '😀', 'a\nb',
    'semi;colon', 'q?', 'pct%', 'star*', 'back\\slash', '\u0007bell'];
  for (const channel of bad) {
    assertApiError(await post(h, JSON.stringify({ channel, event: 'x', data: 1 })), 400, 'invalid_channel',
      `channel ${JSON.stringify(channel)}`);
  }
  assertApiError(await post(h, JSON.stringify({ channels: ['ok', 'a/b'], event: 'x' })), 400, 'invalid_channel', 'channels list');
  assertApiError(await history(h.url, 'ok'), 404, 'channel_not_found', 'a rejected multi-channel publish writes nothing');
  // The boundaries of the valid set, and percent-encoding in the history URL.
  for (const channel of ['x'.repeat(200), 'é'.repeat(100), 'a b#c:d@e', 'A-z_0.9:@#+=,~!', '!', 'Ligne Süd 3', '東京:監視']) {
    const r = await publish(h.url, channel, 'x', { channel });
    assert.equal(r.offset, 1, `channel ${JSON.stringify(channel)}`);
    const hist = await fullHistory(h.url, channel);
    assert.equal(hist.channel, channel);
    assert.deepEqual(hist.events.map((e) => e.data), [{ channel }]);
  }
  await assertServes(t, h);
});

test('HTTP publish: size limits → 413 payload_too_large', async (t) => {
  const h = await startHerald(t, { config: CONFIG });
  // body over max_body_bytes (4096)
  assertApiError(await post(h, JSON.stringify({ channel: 'big', event: 'x', data: 'y'.repeat(5000) })), 413,
    'payload_too_large', 'body over max_body_bytes');
  assertApiError(await post(h, JSON.stringify({ channel: 'big', event: 'x', data: 'y'.repeat(200_000) })), 413,
    'payload_too_large', 'body far over max_body_bytes');
  // one event's data over max_event_bytes (1024) inside a body under max_body_bytes
  assertApiError(await post(h, JSON.stringify({ channel: 'big', event: 'x', data: 'y'.repeat(2000) })), 413,
    'payload_too_large', 'event over max_event_bytes');
  assertApiError(await history(h.url, 'big'), 404, 'channel_not_found', 'nothing written by oversize publishes');
  // just under the limits is fine
  const ok = await publish(h.url, 'big', 'x', 'y'.repeat(900));
  assert.equal(ok.offset, 1);
  await assertServes(t, h);
});

test('HTTP publish: a batch with one bad event writes nothing', async (t) => {
  const h = await startHerald(t, { config: CONFIG });
  await publish(h.url, 'batch', 'x', { n: 1 });
  const before = await fullHistory(h.url, 'batch');
  const batches = [
    ['bad channel', [{ channel: 'batch', event: 'x', data: 2 }, { channel: 'a/b', event: 'x', data: 3 }], 400, 'invalid_channel'],
    ['missing event', [{ channel: 'batch', event: 'x', data: 2 }, { channel: 'batch', data: 3 }], 400, 'invalid_request'],
    ['oversize event', [{ channel: 'batch', event: 'x', data: 2 }, { channel: 'batch', event: 'x', data: 'y'.repeat(2000) }], 413, 'payload_too_large'],
  ];
  for (const [what, events, status, code] of batches) {
    assertApiError(await post(h, JSON.stringify({ events })), status, code, `batch with ${what}`);
  }
  const after = await fullHistory(h.url, 'batch');
  assert.deepEqual(after.events, before.events, 'history unchanged');
  assert.equal(after.last_offset, 1);
  assert.equal((await publish(h.url, 'batch', 'x', { n: 2 })).offset, 2, 'no offsets were consumed by rejected batches');
  await assertServes(t, h);
});

test('HTTP: history parameters, unknown channel, unknown connection, unknown route', async (t) => {
  const h = await startHerald(t, { config: CONFIG });
  assertApiError(await history(h.url, 'nope'), 404, 'channel_not_found', 'unknown channel');
  for (let n = 1; n <= 5; n++) await publish(h.url, 'hp', 'x', { n });
  const r = await history(h.url, 'hp', { since: 2, limit: 2 });
  assert.equal(r.status, 200, r.text);
  assert.deepEqual(r.json.events.map((e) => e.offset), [3, 4]);
  assert.equal(r.json.first_offset, 1);
  assert.equal(r.json.last_offset, 5);
  assert.equal(r.json.gap, undefined, 'no gap when history covers since');
  const all = await history(h.url, 'hp', { since: 5 });
  assert.deepEqual(all.json.events, []);
  // wait: the request is held until an event exists
  const waiting = history(h.url, 'hp', { since: 5, wait: 10 });
  await publish(h.url, 'hp', 'x', { n: 6 });
  const waited = await waiting;
  assert.equal(waited.status, 200);
  assert.deepEqual(waited.json.events.map((e) => e.data), [{ n: 6 }]);
  const c = await request(h.url, '/api/connections/unknown/disconnect', { method: 'POST' });
  assert.equal(c.status, 404);
  await assertServes(t, h);
});

test('HTTP history: limit=0 and wait beyond 60 s are refused naming the parameter; limit above 1000 is a full page', async (t) => {
  const h = await startHerald(t, { config: CONFIG });
  for (let n = 1; n <= 3; n++) await publish(h.url, 'lim', 'x', { n });
  const get = (qs) => request(h.url, `/api/channels/lim/history?${qs}`, { timeout: 5_000 });
  // limit=0 used to be served as one event.
  const zero = await get('limit=0');
  assertApiError(zero, 400, 'invalid_request', 'limit=0');
  assert.equal(zero.json.error.field, 'limit', zero.text);
  const huge = await get('limit=5000');
  assert.equal(huge.status, 200, huge.text);
  assert.deepEqual(huge.json.events.map((e) => e.offset), [1, 2, 3], 'limit above the page size: served as 1000');
  // wait above the 60 s cap: refused at once (it used to be held for 60 s).
  for (const wait of ['61', '3600', '18446744073709551615']) {
    const r = await get(`since=3&wait=${wait}`);
    assertApiError(r, 400, 'invalid_request', `wait=${wait}`);
    assert.equal(r.json.error.field, 'wait', r.text);
  }
  const notNumber = await get('wait=soon');
  assertApiError(notNumber, 400, 'invalid_request', 'wait=soon');
  assert.equal(notNumber.json.error.field, 'wait', notNumber.text);
  // The cap itself is accepted: with events already there it answers at once.
  const atCap = await get('since=1&wait=60');
  assert.equal(atCap.status, 200, atCap.text);
  assert.deepEqual(atCap.json.events.map((e) => e.offset), [2, 3]);
  await assertServes(t, h);
});

test('HTTP bodies must be declared JSON: text/plain, form types and no Content-Type → 415, even from a foreign origin without keys', async (t) => {
  const h = await startHerald(t, { config: CONFIG });
  const body = JSON.stringify({ channel: 'ctype', event: 'x', data: 1 });
  const refused = [
    // The CORS "simple" types a web page on any origin can send without a preflight.
    ['text/plain', { 'content-type': 'text/plain' }, body],
    ['text/plain;charset=UTF-8 from a foreign page', { 'content-type': 'text/plain;charset=UTF-8', origin: 'http://evil.example' }, body],
    ['application/x-www-form-urlencoded', { 'content-type': 'application/x-www-form-urlencoded' }, body],
    ['multipart/form-data', { 'content-type': 'multipart/form-data; boundary=x' }, body],
    // A Buffer body makes fetch send no Content-Type at all.
    ['no Content-Type', {}, Buffer.from(body)],
    ['application/jsonp', { 'content-type': 'application/jsonp' }, body],
  ];
  for (const [what, headers, rawBody] of refused) {
    const r = await request(h.url, '/api/publish', { method: 'POST', rawBody, headers });
    assertApiError(r, 415, 'unsupported_media_type', `publish with ${what}`);
  }
  assertApiError(await history(h.url, 'ctype'), 404, 'channel_not_found', 'a refused content type wrote nothing');
  // The monitor API's bodies too.
  const monitor = JSON.stringify({ name: 'm', check: { kind: 'tcp', host: '127.0.0.1', port: 9 } });
  assertApiError(await request(h.url, '/api/monitors', { method: 'POST', rawBody: monitor, headers: { 'content-type': 'text/plain' } }),
    415, 'unsupported_media_type', 'POST /api/monitors with text/plain');
  assertApiError(await request(h.url, '/api/monitors/m', { method: 'PUT', rawBody: Buffer.from(monitor) }),
    415, 'unsupported_media_type', 'PUT /api/monitors/m without Content-Type');
  // JSON in its accepted spellings.
  let n = 0;
  for (const type of ['application/json', 'application/json; charset=utf-8', 'Application/JSON;charset=UTF-8', 'application/vnd.herald+json']) {
    const r = await request(h.url, '/api/publish', { method: 'POST', rawBody: body, headers: { 'content-type': type } });
    assert.equal(r.status, 200, `publish with ${type}: ${r.text}`);
    assert.equal(r.json.results[0].offset, ++n);
  }
  await assertServes(t, h);
});

test('HTTP publish: event names starting with herald: are reserved (400 naming event); Herald\'s own herald:gap stays trustworthy', async (t) => {
  const h = await startHerald(t, { config: CONFIG });
  const socket = await connected(t, h.url, { transports: ['websocket'] });
  const rec = new Recorder(socket);
  await subscribeOk(socket, 'names');
  const forged = { channel: 'names', reason: 'history_trimmed', epoch: 'x', from: 1, to: 9 };
  const cases = [
    ['herald:gap', { channel: 'names', event: 'herald:gap', data: forged }, 'event'],
    ['herald:disconnect', { channel: 'names', event: 'herald:disconnect', data: { reason: 'token_expired' } }, 'event'],
    ['any herald: name', { channel: 'names', event: 'herald:', data: 1 }, 'event'],
    ['to many channels', { channels: ['names', 'other'], event: 'herald:status', data: 1 }, 'event'],
    ['in a batch', { events: [{ channel: 'names', event: 'ok', data: 1 }, { channel: 'names', event: 'herald:gap', data: forged }] }, 'events[1].event'],
  ];
  for (const [what, body, field] of cases) {
    const r = await post(h, JSON.stringify(body));
    assertApiError(r, 400, 'invalid_request', what);
    assert.equal(r.json.error.field, field, `${what}: ${r.text}`);
    assert.match(r.json.error.message, /herald:/, what);
  }
  assertApiError(await history(h.url, 'names'), 404, 'channel_not_found', 'nothing written');
  // Names that merely resemble the prefix are the publisher's.
  for (const event of ['herald', 'heraldgap', 'herald-gap', 'app:herald:gap', 'Herald:gap']) {
    await publish(h.url, 'names', event, { event });
  }
  await rec.until((r) => r.named('Herald:gap').length === 1, 10_000, 'the last allowed name arrives');
  assert.equal(rec.named('herald:gap').length, 0, 'no forged herald:gap reached the client');
  await assertServes(t, h);
});

test('HTTP auth: with api_keys, /api/* needs a key; /healthz does not', async (t) => {
  const h = await startHerald(t, { config: 'api_keys = ["k1", "k2"]\n' });
  const body = { channel: 'auth', event: 'x', data: 1 };
  assertApiError(await request(h.url, '/api/publish', { method: 'POST', body }), 401, 'unauthorized', 'no key');
  assertApiError(await request(h.url, '/api/publish', { method: 'POST', body, headers: { authorization: 'Bearer nope' } }),
    401, 'unauthorized', 'wrong key');
  assertApiError(await request(h.url, '/api/channels'), 401, 'unauthorized', 'GET without key');
  const ok1 = await request(h.url, '/api/publish', { method: 'POST', body, headers: { authorization: 'Bearer k1' } });
  assert.equal(ok1.status, 200, ok1.text);
  const ok2 = await request(h.url, '/api/channels/auth/history', { headers: { 'x-api-key': 'k2' } });
  assert.equal(ok2.status, 200, ok2.text);
  assert.equal(ok2.json.events.length, 1);
  const hz = await request(h.url, '/healthz');
  assert.deepEqual([hz.status, hz.json], [200, { ok: true }]);
});
