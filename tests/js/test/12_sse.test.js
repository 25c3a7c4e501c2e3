// 12. Server-Sent Events (docs/interface.md, "Server-Sent Events" and "One resume model"): the `eventsource` npm
// client (a WHATWG EventSource: named events, lastEventId, automatic reconnect with Last-Event-ID), the raw stream
// read with fetch (headers, retry:, heartbeat comments, the compound cursor), herald:gap, HTTP/2 via curl, bad input,
// and one cursor model shared by SSE, the plain WebSocket and Socket.IO.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EventSource } from 'eventsource';
import {
  startHerald, DURABLE_ONLY, publish, publishRetry, chan, connected, subscribeOk, Recorder, withTimeout,
} from '../lib/herald.js';
import {
  wsBase, openWs, openSse, parseCursor, directPath, curlHasHttp2, spawnCurl, gateProxy,
} from '../lib/plain.js';

const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

/**
 * An `eventsource` client that records, in arrival order, every event of the given names ({name, data (parsed),
 * lastEventId}), opens, errors, and the request headers of each (re)connection.
 */
function recordingEventSource(t, url, names, { headers = {} } = {}) {
  const log = { items: [], opens: 0, errors: [], requests: [], waiters: [] };
  const check = () => {
    log.waiters = log.waiters.filter((w) => { const ok = w.pred(log); if (ok) w.resolve(); return !ok; });
  };
  const es = new EventSource(url, {
    fetch: (input, init) => {
      const h = { ...init.headers, ...headers };
      log.requests.push({ url: String(input), headers: h });
      return fetch(input, { ...init, headers: h });
    },
  });
  for (const name of names) {
    es.addEventListener(name, (e) => {
      let data;
      try { data = JSON.parse(e.data); } catch { data = { unparsable: e.data }; }
      log.items.push({ name, data, lastEventId: e.lastEventId, rawData: e.data });
      check();
    });
  }
  es.addEventListener('open', () => { log.opens++; check(); });
  es.addEventListener('error', (e) => { log.errors.push({ code: e.code, message: e.message, readyState: es.readyState }); check(); });
  log.named = (name) => log.items.filter((i) => i.name === name);
  log.until = (pred, ms, label) => {
    if (pred(log)) return Promise.resolve();
    let w;
    const p = new Promise((resolve) => { w = { pred, resolve }; log.waiters.push(w); });
    return withTimeout(p, ms, `${label}; so far ${log.items.length} events (last ${JSON.stringify(log.items.slice(-2))}), `
      + `opens ${log.opens}, errors ${JSON.stringify(log.errors.slice(-3))}, readyState ${es.readyState}`)
      .finally(() => { log.waiters = log.waiters.filter((x) => x !== w); });
  };
  log.es = es;
  t.after(() => es.close());
  return log;
}

test('eventsource client: event names usable with addEventListener, data = payload, lastEventId = <epoch>:<offset>', async (t) => {
  const h = await startHerald(t);
  const ch = chan('es');
  const log = recordingEventSource(t, `${h.url}${directPath('/sse', ch)}`, ['tick', 'unit:update', 'message']);
  await log.until((l) => l.opens >= 1, 10_000, 'open');
  const r1 = await publish(h.url, ch, 'tick', { n: 1 });
  const r2 = await publish(h.url, ch, 'unit:update', { n: 2, text: 'Güncelleniyor…' });
  const r3 = await publish(h.url, ch, 'tick', { n: 3 });
  await log.until((l) => l.items.length >= 3, 10_000, '3 events');
  assert.deepEqual(log.items.map((i) => [i.name, i.data, i.lastEventId]), [
    ['tick', { n: 1 }, `${r1.epoch}:1`],
    ['unit:update', { n: 2, text: 'Güncelleniyor…' }, `${r2.epoch}:2`],
    ['tick', { n: 3 }, `${r3.epoch}:3`],
  ]);
  assert.equal(log.named('message').length, 0, 'named events do not reach the "message" listener');
  assert.deepEqual(log.errors, []);
  assert.equal(log.es.readyState, EventSource.OPEN);
});

test('raw stream: headers, retry:, ": heartbeat" comments every heartbeat_interval', async (t) => {
  const h = await startHerald(t, { config: '[sse]\nheartbeat_interval = "300ms"\nretry = "1500ms"\n' });
  for (const path of [directPath('/sse', chan('hb')), `/sse?channel=${chan('m1')}&channel=${chan('m2')}`]) {
    const s = await openSse(t, `${h.url}${path}`);
    assert.equal(s.status, 200, `${path} → ${s.status} ${s.text}`);
    assert.match(s.headers.get('content-type') ?? '', /^text\/event-stream\b/, `${path} content-type`);
    assert.match(s.headers.get('cache-control') ?? '', /\bno-cache\b/, `${path} cache-control`);
    assert.equal(s.headers.get('x-accel-buffering'), 'no', `${path} x-accel-buffering`);
    await s.until((x) => x.retries.length >= 1, 5_000, `${path}: a retry: field`);
    assert.equal(s.retries[0], '1500', `retry: advertises the configured 1500 ms: ${JSON.stringify(s.lines.slice(0, 5))}`);
    await s.until((x) => x.comments.filter((c) => /^: ?heartbeat\b/.test(c.text)).length >= 3, 10_000, `${path}: 3 heartbeat comments`);
    const hb = s.comments.filter((c) => /^: ?heartbeat\b/.test(c.text)).map((c) => c.at);
    const spacings = hb.slice(1).map((x, i) => x - hb[i]);
    assert.ok(spacings.every((d) => d >= 100 && d <= 3000), `${path}: heartbeat spacing ms ${JSON.stringify(spacings)}`);
    assert.deepEqual(s.events, [], 'heartbeats are comments, not events');
    s.close();
  }
});

test('compound cursor: one <epoch>:<offset> per channel in URL order; ?since= and Last-Event-ID resume exactly; &envelope=1', async (t) => {
  const h = await startHerald(t);
  const a = chan('ca');
  const b = chan('cb');
  const ea = (await publish(h.url, a, 'tick', { ch: 'a', n: 1 })).epoch;
  const eb = (await publish(h.url, b, 'tick', { ch: 'b', n: 1 })).epoch;
  const ab = await openSse(t, `${h.url}/sse?channel=${encodeURIComponent(a)}&channel=${encodeURIComponent(b)}`);
  const ba = await openSse(t, `${h.url}/sse?channel=${encodeURIComponent(b)}&channel=${encodeURIComponent(a)}`);
  assert.equal(ab.status, 200, ab.text);
  await publish(h.url, a, 'tick', { ch: 'a', n: 2 });
  await publish(h.url, b, 'tick', { ch: 'b', n: 2 });
  await publish(h.url, a, 'tick', { ch: 'a', n: 3 });
  for (const s of [ab, ba]) await s.until((x) => x.events.length >= 3, 10_000, '3 live events');
  // Without since the stream starts at the current offsets (1, 1); each id reflects everything delivered so far.
  assert.deepEqual(ab.events.map((e) => [e.event, JSON.parse(e.data), e.id]), [
    ['tick', { ch: 'a', n: 2 }, `${ea}:2,${eb}:1`],
    ['tick', { ch: 'b', n: 2 }, `${ea}:2,${eb}:2`],
    ['tick', { ch: 'a', n: 3 }, `${ea}:3,${eb}:2`],
  ]);
  assert.deepEqual(ba.events.map((e) => e.id), [`${eb}:1,${ea}:2`, `${eb}:2,${ea}:2`, `${eb}:2,${ea}:3`], 'URL order');
  for (const e of ab.events) assert.equal(parseCursor(e.id).length, 2);

  // Resume from the first event's cursor, both ways; events published meanwhile come first, then live ones.
  const cursor = ab.events[0].id;
  ab.close();
  await publish(h.url, b, 'tick', { ch: 'b', n: 3 });
  const url = `${h.url}/sse?channel=${encodeURIComponent(a)}&channel=${encodeURIComponent(b)}`;
  const viaQuery = await openSse(t, `${url}&since=${encodeURIComponent(cursor)}`);
  const viaHeader = await openSse(t, url, { headers: { 'last-event-id': cursor } });
  await publish(h.url, a, 'tick', { ch: 'a', n: 4 });
  const expected = [['b', 2], ['a', 3], ['b', 3], ['a', 4]];
  for (const [how, s] of [['?since=', viaQuery], ['Last-Event-ID', viaHeader]]) {
    assert.equal(s.status, 200, `${how}: ${s.status} ${s.text}`);
    await s.until((x) => x.events.length >= 4, 10_000, `${how}: resumed events`);
    const got = s.events.map((e) => JSON.parse(e.data)).map((d) => [d.ch, d.n]);
    // Order across channels may interleave differently for the replay; per channel it must be exact.
    for (const c of ['a', 'b']) {
      assert.deepEqual(got.filter(([x]) => x === c), expected.filter(([x]) => x === c), `${how}: channel ${c} exactly once, in order`);
    }
    assert.equal(s.events.at(-1).id, `${ea}:4,${eb}:3`, `${how}: final cursor`);
    assert.deepEqual(s.named('herald:gap'), []);
  }

  // &envelope=1: data is the full envelope, as on the WebSocket.
  const env = await openSse(t, `${h.url}${directPath('/sse', a)}?envelope=1&since=${encodeURIComponent(`${ea}:2`)}`);
  await env.until((x) => x.events.length >= 2, 10_000, 'envelope events');
  const e3 = JSON.parse(env.events[0].data);
  assert.deepEqual({ ...e3, id: undefined, time: undefined },
    { type: 'event', channel: a, offset: 3, epoch: ea, event: 'tick', data: { ch: 'a', n: 3 }, id: undefined, time: undefined },
    `envelope: ${env.events[0].data}`);
  assert.equal(typeof e3.id, 'string');
  assert.equal(typeof e3.time, 'string');
  assert.equal(env.events[0].event, 'tick');
  assert.equal(env.events[0].id, `${ea}:3`);
});

test('multi-channel /sse resumes across a Herald restart via Last-Event-ID: every event of both channels exactly once, in order', DURABLE_ONLY, async (t) => {
  const h = await startHerald(t, { config: '[sse]\nretry = "200ms"\n' });
  // The client goes through a gate that stays closed from the restart until events were published to the restarted
  // server and the client was refused once, so its resume certainly needs a replay.
  const gate = await gateProxy(t, h.port);
  const a = chan('ra');
  const b = chan('rb');
  const log = recordingEventSource(t, `${gate.url}/sse?channel=${encodeURIComponent(a)}&channel=${encodeURIComponent(b)}`,
    ['tick', 'herald:gap']);
  await log.until((l) => l.opens >= 1, 10_000, 'first open');
  const N = 60;
  const KILL_AT = 20;
  let interruption;
  let restarted = false;
  let publishedWhileDown = 0;
  const epochs = {};
  for (let n = 1; n <= N; n++) {
    for (const ch of [a, b]) {
      const r = await publishRetry(() => h.url, ch, 'tick', { ch, n }, `${ch}#${n}`);
      assert.equal(r.offset, n);
      epochs[ch] ??= r.epoch;
      assert.equal(r.epoch, epochs[ch], 'the epoch survives a graceful restart');
      // acknowledged by the restarted server while the client is held off: only a Last-Event-ID replay delivers it
      if (restarted && !gate.isOpen) publishedWhileDown++;
    }
    if (restarted && !gate.isOpen && publishedWhileDown >= 10 && gate.rejected >= 1) gate.open();
    if (n === 3) await log.until((l) => l.items.length >= 1, 10_000, 'a first event');
    if (n === KILL_AT) {
      gate.close();
      interruption = (async () => {
        const exit = await h.stop('SIGTERM');
        assert.equal(exit.code, 0, `graceful exit with an SSE stream open: ${JSON.stringify(exit)}`);
        await h.restart();
        restarted = true;
      })();
    }
  }
  await interruption;
  if (!gate.isOpen) {
    await gate.refused(1, 15_000); // the client keeps retrying by itself
    gate.open();
  }
  await log.until((l) => [a, b].every((ch) => l.items.some((i) => i.data.ch === ch && i.data.n === N)), 20_000,
    'the last event of both channels after the restart');
  for (const ch of [a, b]) {
    const got = log.items.filter((i) => i.name === 'tick' && i.data.ch === ch).map((i) => i.data.n);
    const dups = got.filter((x, i) => got.indexOf(x) !== i);
    assert.deepEqual(got, range(1, N), `${ch}: exactly once, in order (duplicates ${JSON.stringify(dups)})`);
  }
  assert.deepEqual(log.named('herald:gap'), [], 'no gap');
  const last = parseCursor(log.items.at(-1).lastEventId);
  assert.deepEqual(last, [{ epoch: epochs[a], offset: N }, { epoch: epochs[b], offset: N }], 'final compound cursor');
  const resumes = log.requests.slice(1);
  assert.ok(resumes.length >= 1, 'the client reconnected');
  assert.ok(resumes.every((r) => /^[^:,]*:\d+,[^:,]*:\d+$/.test(r.headers['Last-Event-ID'] ?? '')),
    `every reconnect carried a compound Last-Event-ID: ${JSON.stringify(resumes.map((r) => r.headers))}`);
  assert.ok(publishedWhileDown >= 10, `${publishedWhileDown} events published while the client was held off (precondition)`);
  t.diagnostic(`${publishedWhileDown} publishes while held off; ${log.requests.length} requests (${gate.rejected} refused); `
    + `errors ${JSON.stringify(log.errors)}`);
  h.assertNoPanic();
});

test('herald:gap on SSE: history_trimmed (via ?since= and Last-Event-ID) and epoch_changed', async (t) => {
  const h = await startHerald(t, { config: '[[history.rules]]\npattern = "short:*"\nmax_events = 5\n' });
  const ch = 'short:sse';
  let epoch;
  for (let n = 1; n <= 10; n++) epoch = (await publish(h.url, ch, 'tick', { n })).epoch;
  const gap = { channel: ch, reason: 'history_trimmed', epoch, from: 3, to: 5 };

  const es = recordingEventSource(t, `${h.url}/sse/short/sse?since=${encodeURIComponent(`${epoch}:2`)}`, ['tick', 'herald:gap']);
  await es.until((l) => l.named('tick').length >= 5, 10_000, 'retained events after the gap');
  assert.deepEqual(es.items[0].name, 'herald:gap', `gap first: ${JSON.stringify(es.items.slice(0, 2))}`);
  assert.deepEqual(es.items[0].data, gap);
  assert.deepEqual(es.named('tick').map((i) => i.data.n), [6, 7, 8, 9, 10]);
  assert.equal(es.named('herald:gap').length, 1);
  assert.equal(es.named('tick').at(-1).lastEventId, `${epoch}:10`);

  const raw = await openSse(t, `${h.url}/sse/short%3Asse`, { headers: { 'last-event-id': `${epoch}:2` } });
  await raw.until((x) => x.named('tick').length >= 5, 10_000, 'Last-Event-ID: retained events');
  assert.equal(raw.events[0].event, 'herald:gap');
  assert.deepEqual(JSON.parse(raw.events[0].data), gap);

  const stale = await openSse(t, `${h.url}/sse/short:sse?since=${encodeURIComponent('deadbeef:2')}`);
  assert.equal(stale.status, 200, `a well-formed cursor with an unknown epoch is not an error: ${stale.text}`);
  const live = await publish(h.url, ch, 'tick', { n: 11 });
  await stale.until((x) => x.named('tick').some((e) => JSON.parse(e.data).n === 11), 10_000, 'live event after epoch_changed');
  const gaps = stale.named('herald:gap').map((e) => JSON.parse(e.data));
  assert.equal(gaps.length, 1, `one gap: ${JSON.stringify(stale.events)}`);
  assert.equal(gaps[0].reason, 'epoch_changed');
  assert.equal(gaps[0].channel, ch);
  assert.equal(gaps[0].epoch, live.epoch);
  assert.equal(stale.events[0].event, 'herald:gap', 'the gap comes before any event');
});

test('HTTP/2 with prior knowledge (curl --http2-prior-knowledge): 200 and events', async (t) => {
  if (!(await curlHasHttp2())) {
    t.skip('curl is missing or built without HTTP2 (curl -V | grep HTTP2)');
    return;
  }
  const h = await startHerald(t);
  const ch = chan('h2');
  let epoch;
  for (let n = 1; n <= 3; n++) epoch = (await publish(h.url, ch, 'tick', { n })).epoch;
  const curl = spawnCurl(t, ['--http2-prior-knowledge', '-sN', '-i', '--max-time', '8',
    `${h.url}${directPath('/sse', ch)}?since=${encodeURIComponent(`${epoch}:0`)}`]);
  await curl.until((c) => (c.output.match(/^event: ?tick$/gm) ?? []).length >= 3, 8_000, 'curl: 3 replayed events over HTTP/2');
  assert.match(curl.output, /^HTTP\/2 200\b/m, `HTTP/2 status line: ${curl.output.slice(0, 200)}`);
  assert.match(curl.output, /^content-type: text\/event-stream/mi);
  await publish(h.url, ch, 'tick', { n: 4 });
  await curl.until((c) => c.output.includes(`id: ${epoch}:4`), 8_000, 'curl: a live event over HTTP/2');
  assert.match(curl.output, /^data: ?\{"n":4\}$/m);
  await curl.stop();
  await h.assertHealthy();
});

test('one resume model: an offset read over SSE resumes a WebSocket (/ws, /ws/{channel}) or Socket.IO subscription, and back', async (t) => {
  const h = await startHerald(t);
  const ch = chan('one');
  let epoch;
  for (let n = 1; n <= 30; n++) epoch = (await publish(h.url, ch, 'tick', { n })).epoch;

  // Read over SSE up to offset 12 and keep its cursor.
  const es = recordingEventSource(t, `${h.url}${directPath('/sse', ch)}?since=${encodeURIComponent(`${epoch}:0`)}`, ['tick']);
  await es.until((l) => l.items.length >= 12, 10_000, '12 events over SSE');
  const cursor = es.items[11].lastEventId;
  es.es.close();
  const [{ epoch: cEpoch, offset }] = parseCursor(cursor);
  assert.equal(cEpoch, epoch);
  assert.equal(offset, 12);

  const multi = await openWs(t, `${wsBase(h)}/ws`);
  await multi.subscribeOk(ch, { since: offset, epoch: cEpoch });
  const direct = await openWs(t, `${wsBase(h)}${directPath('/ws', ch)}?since=${offset}&epoch=${encodeURIComponent(cEpoch)}`);
  const socket = await connected(t, h.url);
  const rec = new Recorder(socket);
  await subscribeOk(socket, ch, { since: offset, epoch: cEpoch });
  await publish(h.url, ch, 'tick', { n: 31 });
  await multi.until((x) => x.events(ch).some((e) => e.offset === 31), 10_000, '/ws: through 31');
  await direct.until((x) => x.events(ch).some((e) => e.offset === 31), 10_000, '/ws/{channel}: through 31');
  await rec.until((r) => r.named('tick').some((e) => e.args[0].n === 31), 10_000, 'Socket.IO: through 31');
  assert.deepEqual(multi.events(ch).map((e) => e.offset), range(13, 31), '/ws: exactly the rest');
  assert.deepEqual(direct.events(ch).map((e) => e.offset), range(13, 31), '/ws/{channel}: exactly the rest');
  assert.deepEqual(rec.named('tick').map((e) => e.args[0].n), range(13, 31), 'Socket.IO: exactly the rest');
  assert.deepEqual(rec.named('herald:gap'), []);
  assert.deepEqual([...multi.ofType('gap'), ...direct.ofType('gap')], []);

  // And back: an offset read over the WebSocket as an SSE cursor (query and Last-Event-ID).
  const e20 = multi.events(ch).find((e) => e.offset === 20);
  const back = await openSse(t, `${h.url}${directPath('/sse', ch)}?since=${encodeURIComponent(`${e20.epoch}:${e20.offset}`)}`);
  const backHdr = recordingEventSource(t, `${h.url}${directPath('/sse', ch)}`, ['tick'],
    { headers: { 'Last-Event-ID': `${e20.epoch}:${e20.offset}` } });
  await back.until((x) => x.events.length >= 11, 10_000, 'SSE from a WebSocket offset');
  await backHdr.until((l) => l.items.length >= 11, 10_000, 'SSE (Last-Event-ID) from a WebSocket offset');
  assert.deepEqual(back.events.map((e) => JSON.parse(e.data).n), range(21, 31));
  assert.deepEqual(backHdr.items.map((i) => i.data.n), range(21, 31));
});

test('bad input on /sse: malformed cursors → 400 invalid_cursor, bad channels → 400 invalid_channel; server unaffected', async (t) => {
  const h = await startHerald(t);
  const ch = chan('bad');
  const { epoch } = await publish(h.url, ch, 'tick', { n: 1 });
  const p = directPath('/sse', ch);
  const expectError = async (path, headers, status, code) => {
    const s = await openSse(t, `${h.url}${path}`, { headers });
    assert.equal(s.status, status, `${path} ${JSON.stringify(headers)} → ${s.status} ${s.text ?? '(stream)'}`);
    if (code) assert.equal(s.json?.error?.code, code, `${path} ${JSON.stringify(headers)}: ${s.text}`);
    assert.equal(typeof s.json?.error?.message, 'string', `${path}: JSON error body: ${s.text}`);
    return s;
  };
  await expectError(p, { 'last-event-id': 'garbage' }, 400, 'invalid_cursor');
  await expectError(p, { 'last-event-id': `${epoch}:abc` }, 400, 'invalid_cursor');
  await expectError(`${p}?since=abc`, {}, 400, 'invalid_cursor');
  await expectError(`${p}?since=${encodeURIComponent(`${epoch}:-1`)}`, {}, 400, 'invalid_cursor');
  await expectError(`${p}?since=${encodeURIComponent(`${epoch}:`)}`, {}, 400, 'invalid_cursor');
  await expectError(`${p}?since=${encodeURIComponent(`${epoch}:1,${epoch}:1`)}`, {}, 400, 'invalid_cursor'); // 2 parts, 1 channel
  await expectError(`/sse?channel=${ch}&channel=x&since=${encodeURIComponent(`${epoch}:1`)}`, {}, 400, 'invalid_cursor'); // 1 part, 2 channels
  await expectError('/sse/a*b', {}, 400, 'invalid_channel');
  await expectError('/sse?channel=a*b', {}, 400, 'invalid_channel');
  await expectError(`/sse?channel=${ch}&channel=a*b`, {}, 400, 'invalid_channel');
  await expectError(`/sse/${'x'.repeat(201)}`, {}, 400, 'invalid_channel');
  await expectError(`/sse/${encodeURIComponent('ü'.repeat(101))}`, {}, 400, 'invalid_channel'); // 202 bytes
  await expectError('/sse/%FF', {}, 400, 'invalid_channel'); // not UTF-8
  await expectError('/sse?channel=', {}, 400, 'invalid_channel');
  const longest = await openSse(t, `${h.url}/sse/${encodeURIComponent('ü'.repeat(100))}`); // exactly 200 bytes
  assert.equal(longest.status, 200, `a 200-byte channel name is valid: ${longest.text}`);
  longest.close();
  const none = await expectError('/sse', {}, 400, undefined);
  t.diagnostic(`/sse without a channel → ${none.text}`);

  // A normal client still works.
  const ok = await openSse(t, `${h.url}${p}?since=${encodeURIComponent(`${epoch}:0`)}`);
  await ok.until((x) => x.events.length >= 1, 10_000, 'a normal stream after bad input');
  assert.deepEqual(JSON.parse(ok.events[0].data), { n: 1 });
  await h.assertHealthy();
});
