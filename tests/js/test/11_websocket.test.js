// 11. Plain WebSocket transport (docs/interface.md, "Plain WebSocket"): the multiplexed `/ws` protocol
// (subscribe/unsubscribe/ping with correlated ids, `since` resume, `gap` messages, heartbeats, ping frames,
// close codes, errors) and direct `/ws/{channel}` URLs (path mapping, non-ASCII names, `payload = "data"`).
// The client is the `ws` package, i.e. a bare RFC 6455 client with no Herald library.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  startHerald, publish, chan, connected, subscribeOk, Recorder, request, assertApiError,
} from '../lib/herald.js';
import { wsBase, openWs, refusedUpgrade, directPath, openSse } from '../lib/plain.js';

const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);
const ISO_RE = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/;

test('multiplexed /ws: pipelined subscribe/unsubscribe/ping answered by id, envelopes, no delivery after unsubscribe', async (t) => {
  const h = await startHerald(t);
  const a = chan('wa');
  const b = chan('wb');
  const pre1 = await publish(h.url, a, 'tick', { n: 1 });
  await publish(h.url, a, 'tick', { n: 2 });
  const c = await openWs(t, `${wsBase(h)}/ws`);

  // Three requests in flight at once; replies are matched by id (a number and a string id both echoed as sent).
  c.send({ op: 'subscribe', id: 1, channel: a });
  c.send({ op: 'subscribe', id: 'two', channel: b });
  c.send({ op: 'ping', id: 3 });
  const subA = await c.next((m) => m.id === 1, 10_000, 'reply id 1');
  const subB = await c.next((m) => m.id === 'two', 10_000, 'reply id "two"');
  const pong = await c.next((m) => m.id === 3, 10_000, 'reply id 3');
  assert.deepEqual(subA, { type: 'subscribed', id: 1, channel: a, offset: 2, epoch: pre1.epoch }, 'subscribed to a (2 events so far)');
  assert.equal(subB.type, 'subscribed');
  assert.equal(subB.channel, b);
  assert.equal(subB.offset, 0, `an empty channel's last offset is 0: ${JSON.stringify(subB)}`);
  assert.equal(typeof subB.epoch, 'string');
  assert.deepEqual(pong, { type: 'pong', id: 3 });

  // Live events arrive as envelopes; nothing from before the subscribe is replayed without `since`.
  const pa3 = await publish(h.url, a, 'tick', { n: 3 });
  const pb1 = await publish(h.url, b, 'other', { s: 'x', nested: [1, { ü: true }] });
  await c.until((x) => x.events(a).length >= 1 && x.events(b).length >= 1, 10_000, 'one live event per channel');
  const evA = c.events(a)[0];
  assert.match(evA.time, ISO_RE, `envelope time: ${JSON.stringify(evA)}`);
  assert.deepEqual({ ...evA, time: undefined },
    { type: 'event', channel: a, offset: 3, epoch: pre1.epoch, id: pa3.id, event: 'tick', data: { n: 3 }, time: undefined },
    'envelope fields');
  const evB = c.events(b)[0];
  assert.deepEqual({ ...evB, time: undefined },
    { type: 'event', channel: b, offset: 1, epoch: pb1.epoch, id: pb1.id, event: 'other', data: { s: 'x', nested: [1, { ü: true }] }, time: undefined });
  // b had no events when subscribed: its epoch may not exist yet (Herald reports ""), but whatever it reported must
  // work as a resume point once events exist (no spurious epoch_changed gap).
  assert.ok(subB.epoch === pb1.epoch || subB.epoch === '', `subscribed.epoch of an empty channel: ${JSON.stringify(subB)}`);

  // unsubscribe: acknowledged by id; later events of a are not delivered, b still is.
  const unsub = await c.request('unsubscribe', { channel: a }, { id: 4 });
  assert.deepEqual(unsub, { type: 'unsubscribed', id: 4, channel: a });
  await publish(h.url, a, 'tick', { n: 4 });
  await publish(h.url, b, 'other', { s: 'y' });
  await c.until((x) => x.events(b).length >= 2, 10_000, 'b event after unsubscribing a');
  await c.barrier(); // anything queued for a before the pong would be here by now
  assert.deepEqual(c.events(a).map((e) => e.offset), [3], 'no events of a after unsubscribe');

  // Subscribing again works and reports the current offset.
  const again = await c.subscribeOk(a);
  assert.equal(again.offset, 4);
  await publish(h.url, a, 'tick', { n: 5 });
  await c.until((x) => x.events(a).length >= 2, 10_000, 'a event after re-subscribe');
  assert.deepEqual(c.events(a).map((e) => e.offset), [3, 5]);
  assert.deepEqual(c.ofType('error'), [], 'no error messages');
  assert.ok(c.isOpen);

  const resumed = await openWs(t, `${wsBase(h)}/ws`);
  await resumed.subscribeOk(b, { since: subB.offset, epoch: subB.epoch });
  await resumed.until((x) => x.events(b).length >= 2, 10_000, 'resume b from its subscribed position');
  await resumed.barrier();
  assert.deepEqual(resumed.events(b).map((e) => e.offset), [1, 2]);
  assert.deepEqual(resumed.ofType('gap'), [], `no gap resuming from the subscribed (offset, epoch) of an empty channel`);
  await h.assertHealthy();
});

test('since resume on /ws and /ws/{channel}: events after since, then live, exactly once and in order, while publishing', async (t) => {
  const h = await startHerald(t);
  const ch = chan('since');
  let epoch;
  for (let n = 1; n <= 10; n++) epoch = (await publish(h.url, ch, 'tick', { n })).epoch;

  // A publisher keeps going while the clients subscribe, so the replay → live hand-over happens under load.
  const N = 80;
  let published = 10;
  let reached20;
  const at20 = new Promise((r) => { reached20 = r; });
  const publisher = (async () => {
    for (let n = 11; n <= N; n++) {
      const r = await publish(h.url, ch, 'tick', { n });
      assert.equal(r.offset, n);
      published = n;
      if (n === 20) reached20();
    }
  })();
  await at20;
  const multi = await openWs(t, `${wsBase(h)}/ws`);
  const sub = await multi.subscribeOk(ch, { since: 10, epoch });
  assert.ok(sub.offset >= 20, `subscribed.offset is the last offset now (${sub.offset})`);
  assert.equal(sub.epoch, epoch);
  const direct = await openWs(t, `${wsBase(h)}${directPath('/ws', ch)}?since=5&epoch=${encodeURIComponent(epoch)}`);
  await publisher;
  await publish(h.url, ch, 'tick', { n: N + 1 });

  await multi.until((x) => x.events(ch).some((e) => e.offset === N + 1), 15_000, '/ws: every event through the last');
  await direct.until((x) => x.events(ch).some((e) => e.offset === N + 1), 15_000, '/ws/{channel}: every event through the last');
  const subIdx = multi.messages.findIndex((m) => m.type === 'subscribed');
  const firstEv = multi.messages.findIndex((m) => m.type === 'event');
  assert.ok(subIdx >= 0 && subIdx < firstEv, 'subscribed comes before the replayed events');
  assert.deepEqual(multi.events(ch).map((e) => e.offset), range(11, N + 1), '/ws: offsets after since, exactly once, in order');
  assert.deepEqual(multi.events(ch).map((e) => e.data.n), range(11, N + 1));
  assert.deepEqual(direct.events(ch).map((e) => e.offset), range(6, N + 1), '/ws/{channel}?since=5: offsets 6.., exactly once, in order');
  assert.ok(direct.events(ch).every((e) => e.channel === ch && e.epoch === epoch));
  assert.deepEqual([...multi.ofType('gap'), ...direct.ofType('gap')], [], 'no gap when history covers since');
  t.diagnostic(`subscribed at offset ${sub.offset} while ${published} were published`);
});

test('gap: since older than the retained history → {type:"gap", reason:"history_trimmed"} then the retained events', async (t) => {
  const h = await startHerald(t, { config: '[[history.rules]]\npattern = "short:*"\nmax_events = 5\n' });
  const ch = 'short:ws';
  let epoch;
  for (let n = 1; n <= 10; n++) epoch = (await publish(h.url, ch, 'tick', { n })).epoch;
  const expectedGap = { type: 'gap', channel: ch, reason: 'history_trimmed', epoch, from: 3, to: 5 };

  const multi = await openWs(t, `${wsBase(h)}/ws`);
  const sub = await multi.subscribeOk(ch, { since: 2, epoch });
  assert.equal(sub.offset, 10);
  await multi.until((x) => x.events(ch).length >= 5, 10_000, 'the 5 retained events');
  const after = multi.messages.slice(multi.messages.indexOf(sub) + 1);
  assert.deepEqual(after[0], expectedGap, `gap first after subscribed: ${JSON.stringify(after.slice(0, 2))}`);
  assert.deepEqual(multi.events(ch).map((e) => e.offset), [6, 7, 8, 9, 10]);
  assert.equal(multi.ofType('gap').length, 1, 'exactly one gap');

  const direct = await openWs(t, `${wsBase(h)}/ws/short/ws?since=2&epoch=${encodeURIComponent(epoch)}`);
  await direct.until((x) => x.events(ch).length >= 5, 10_000, 'direct: the 5 retained events');
  assert.deepEqual(direct.messages[0], expectedGap, `direct: gap first: ${JSON.stringify(direct.messages.slice(0, 2))}`);
  assert.deepEqual(direct.events(ch).map((e) => e.offset), [6, 7, 8, 9, 10]);

  // since inside the retained window → no gap.
  const inside = await openWs(t, `${wsBase(h)}/ws`);
  await inside.subscribeOk(ch, { since: 7, epoch });
  await inside.until((x) => x.events(ch).length >= 3, 10_000, 'events 8..10');
  await inside.barrier();
  assert.deepEqual(inside.events(ch).map((e) => e.offset), [8, 9, 10]);
  assert.deepEqual(inside.ofType('gap'), []);
  // Exactly at the boundary: since = first_offset - 1 = 5 → events 6.. and no gap.
  const edge = await openWs(t, `${wsBase(h)}/ws`);
  await edge.subscribeOk(ch, { since: 5, epoch });
  await edge.until((x) => x.events(ch).length >= 5, 10_000, 'events 6..10');
  await edge.barrier();
  assert.deepEqual(edge.ofType('gap'), [], 'since = first_offset - 1 loses nothing');
});

test('gap: a stale epoch → {type:"gap", reason:"epoch_changed"} with the current epoch, before any event', async (t) => {
  const h = await startHerald(t);
  const ch = chan('epoch');
  let epoch;
  for (let n = 1; n <= 3; n++) epoch = (await publish(h.url, ch, 'tick', { n })).epoch;

  for (const how of ['multiplexed', 'direct']) {
    let c;
    if (how === 'multiplexed') {
      c = await openWs(t, `${wsBase(h)}/ws`);
      const sub = await c.subscribeOk(ch, { since: 2, epoch: 'not-the-epoch' });
      assert.equal(sub.epoch, epoch);
    } else {
      c = await openWs(t, `${wsBase(h)}${directPath('/ws', ch)}?since=2&epoch=not-the-epoch`);
    }
    const live = await publish(h.url, ch, 'tick', { n: `live-${how}` });
    await c.until((x) => x.events(ch).some((e) => e.offset === live.offset), 10_000, `${how}: live event after the epoch_changed gap`);
    const gaps = c.ofType('gap');
    assert.equal(gaps.length, 1, `${how}: one gap: ${JSON.stringify(c.messages)}`);
    assert.equal(gaps[0].channel, ch);
    assert.equal(gaps[0].reason, 'epoch_changed');
    assert.equal(gaps[0].epoch, epoch, 'the gap carries the current epoch');
    const gapIdx = c.messages.indexOf(gaps[0]);
    assert.ok(c.messages.findIndex((m) => m.type === 'event') > gapIdx, `${how}: the gap precedes every event`);
    const offs = c.events(ch).map((e) => e.offset);
    assert.deepEqual(offs, [...new Set(offs)].sort((x, y) => x - y), `${how}: events strictly increasing: ${offs}`);
    t.diagnostic(`${how}: after epoch_changed: gap ${JSON.stringify(gaps[0])}, offsets ${JSON.stringify(offs)}`);
  }
});

test('ping → pong with the id; heartbeat messages every heartbeat_interval on /ws and /ws/{channel}', async (t) => {
  const h = await startHerald(t, { config: '[websocket]\nheartbeat_interval = "300ms"\n' });
  const multi = await openWs(t, `${wsBase(h)}/ws`);
  const direct = await openWs(t, `${wsBase(h)}/ws/hb`);
  const arrivals = { multi: [], direct: [] };
  multi.ws.on('message', (d) => { if (JSON.parse(d).type === 'heartbeat') arrivals.multi.push(Date.now()); });
  direct.ws.on('message', (d) => { if (JSON.parse(d).type === 'heartbeat') arrivals.direct.push(Date.now()); });

  assert.deepEqual(await multi.request('ping', {}, { id: 'p-1' }), { type: 'pong', id: 'p-1' });
  assert.deepEqual(await multi.request('ping', {}, { id: 99 }), { type: 'pong', id: 99 });

  for (const [name, c] of [['multi', multi], ['direct', direct]]) {
    await c.until((x) => x.ofType('heartbeat').length >= 4, 10_000, `${name}: 4 heartbeats at 300 ms`);
    for (const hb of c.ofType('heartbeat')) {
      assert.deepEqual(Object.keys(hb).sort(), ['time', 'type'], `heartbeat shape: ${JSON.stringify(hb)}`);
      assert.match(hb.time, ISO_RE);
    }
    const at = arrivals[name];
    const spacings = at.slice(1).map((x, i) => x - at[i]);
    // Plausible, not tight: neither a burst nor far slower than configured.
    assert.ok(spacings.every((s) => s >= 100 && s <= 3000), `${name}: heartbeat spacing ms ${JSON.stringify(spacings)}`);
    t.diagnostic(`${name} heartbeat spacing ms: ${JSON.stringify(spacings)}`);
  }
  assert.ok(multi.isOpen && direct.isOpen);
});

test('ping frames: a client that answers stays connected; one that does not is closed (1011)', async (t) => {
  const h = await startHerald(t, { config: '[websocket]\nping_interval = "300ms"\nping_timeout = "300ms"\n' });
  const good = await openWs(t, `${wsBase(h)}/ws`); // ws answers pings automatically
  const silent = await openWs(t, `${wsBase(h)}/ws`, { autoPong: false });
  const ch = chan('pf');
  await good.subscribeOk(ch);

  const closed = await silent.closed;
  assert.ok(silent.pings.length >= 1, `the server pinged the silent client before closing it (${silent.pings.length} pings)`);
  assert.equal(closed.code, 1011, `close code for a ping timeout: ${JSON.stringify(closed)}`);

  await good.until((x) => x.pings.length >= 5, 10_000, '5 ping frames on the answering client');
  assert.equal(good.closeInfo, null, 'the answering client is still connected');
  await publish(h.url, ch, 'tick', { n: 1 });
  await good.until((x) => x.events(ch).length === 1, 10_000, 'an event after several ping rounds');
  await good.barrier();
  await h.assertHealthy();
});

test('graceful shutdown (SIGTERM) closes plain WebSocket clients with 1001', async (t) => {
  const h = await startHerald(t);
  const multi = await openWs(t, `${wsBase(h)}/ws`);
  await multi.subscribeOk('x');
  const direct = await openWs(t, `${wsBase(h)}/ws/x`);
  const exit = await h.stop('SIGTERM');
  assert.equal(exit.code, 0, `graceful exit: ${JSON.stringify(exit)}`);
  assert.equal((await multi.closed).code, 1001, `/ws close: ${JSON.stringify(multi.closeInfo)}`);
  assert.equal((await direct.closed).code, 1001, `/ws/x close: ${JSON.stringify(direct.closeInfo)}`);
});

test('channel names with a space and non-ASCII letters work on Socket.IO, /ws/{channel} and /sse/{channel}', async (t) => {
  const h = await startHerald(t);
  // [channel, direct paths that must map to it]
  const cases = [
    ['Final 1A', ['/Final%201A']],
    ['hourly:Final 1A', ['/hourly/Final%201A', '/hourly%3AFinal%201A']],
    ['Ligne Süd:3', ['/Ligne%20S%C3%BCd%3A3', '/Ligne%20S%C3%BCd/3']],
  ];
  for (const [ch, paths] of cases) {
    const socket = await connected(t, h.url);
    const rec = new Recorder(socket);
    await subscribeOk(socket, ch);
    const multi = await openWs(t, `${wsBase(h)}/ws`);
    await multi.subscribeOk(ch);
    const directs = [];
    const sses = [];
    for (const p of paths) {
      directs.push(await openWs(t, `${wsBase(h)}/ws${p}`));
      const s = await openSse(t, `${h.url}/sse${p}`);
      assert.equal(s.status, 200, `/sse${p} → ${s.status} ${s.text}`);
      sses.push(s);
    }
    const r = await publish(h.url, ch, 'unit:update', { unit: ch, models: [{ name: 'Çığ', count: 3 }] });
    const data = { unit: ch, models: [{ name: 'Çığ', count: 3 }] };
    await rec.until((x) => x.named('unit:update').length === 1, 10_000, `Socket.IO ${ch}`);
    assert.deepEqual(rec.named('unit:update')[0].args[0], data);
    await multi.until((x) => x.events().length === 1, 10_000, `/ws subscribe ${ch}`);
    assert.equal(multi.events()[0].channel, ch);
    for (const [i, d] of directs.entries()) {
      await d.until((x) => x.events().length === 1, 10_000, `/ws${paths[i]} → ${ch}`);
      assert.deepEqual({ channel: d.events()[0].channel, offset: d.events()[0].offset, data: d.events()[0].data },
        { channel: ch, offset: r.offset, data }, `/ws${paths[i]}`);
    }
    for (const [i, s] of sses.entries()) {
      await s.until((x) => x.named('unit:update').length === 1, 10_000, `/sse${paths[i]} → ${ch}`);
      assert.deepEqual(JSON.parse(s.named('unit:update')[0].data), data, `/sse${paths[i]} data`);
      assert.equal(s.named('unit:update')[0].id, `${r.epoch}:${r.offset}`, `/sse${paths[i]} id`);
    }
  }
  await h.assertHealthy();
});

test('[[websocket.direct]] payload = "data": /ws/unit/7 gets bare payloads; gap and heartbeat keep their type', async (t) => {
  const h = await startHerald(t, {
    config: `
[websocket]
heartbeat_interval = "300ms"
[[websocket.direct]]
pattern = "unit:*"
payload = "data"
[[history.rules]]
pattern = "unit:*"
max_events = 3
`,
  });
  const bare = await openWs(t, `${wsBase(h)}/ws/unit/7`);
  const bareEncoded = await openWs(t, `${wsBase(h)}/ws/unit%3A7`);
  const multi = await openWs(t, `${wsBase(h)}/ws`);
  await multi.subscribeOk('unit:7');
  const other = await openWs(t, `${wsBase(h)}/ws/plain`); // no rule → envelopes

  const payloads = [{ temp: 21.5, models: [{ name: 'A', n: 1 }] }, 42, 'text', [1, 2], null, { last: true }];
  let epoch;
  for (const p of payloads) epoch = (await publish(h.url, 'unit:7', 'update', p)).epoch;
  const pp = await publish(h.url, 'plain', 'update', { x: 1 });
  for (const [name, c] of [['/ws/unit/7', bare], ['/ws/unit%3A7', bareEncoded]]) {
    await c.until((x) => x.messages.some((m) => m?.last === true), 10_000, `${name}: all payloads`);
    const data = c.messages.filter((m) => m?.type !== 'heartbeat');
    assert.deepEqual(data, payloads, `${name}: the bare payloads, in order`);
  }
  await multi.until((x) => x.events('unit:7').length === payloads.length, 10_000, '/ws subscribe gets envelopes');
  assert.deepEqual(multi.events('unit:7').map((e) => e.data), payloads, 'the rule applies to direct URLs only');
  await other.until((x) => x.events('plain').length === 1, 10_000, 'non-matching direct channel');
  assert.equal(other.events('plain')[0].offset, pp.offset, 'a channel without a rule gets envelopes');

  await bare.until((x) => x.ofType('heartbeat').length >= 1, 5_000, 'a heartbeat on a data-payload URL');
  // gap keeps its type: offsets 4..6 are retained (max_events = 3); resume after 1.
  const resumed = await openWs(t, `${wsBase(h)}/ws/unit/7?since=1&epoch=${encodeURIComponent(epoch)}`);
  await resumed.until((x) => x.messages.some((m) => m?.last === true), 10_000, 'resume with a gap on a data-payload URL');
  const noHb = resumed.messages.filter((m) => m?.type !== 'heartbeat');
  assert.deepEqual(noHb[0], { type: 'gap', channel: 'unit:7', reason: 'history_trimmed', epoch, from: 2, to: 3 },
    `gap message first: ${JSON.stringify(noHb)}`);
  assert.deepEqual(noHb.slice(1), payloads.slice(3), 'then the retained bare payloads');
});

test('bad input on /ws: errors keep the connection usable; oversized → 1009; bad URLs → HTTP 400 before the upgrade', async (t) => {
  const h = await startHerald(t, { config: '[websocket]\nmax_message_bytes = 1024\n' });
  const c = await openWs(t, `${wsBase(h)}/ws`);
  const ch = chan('bad');

  // Every case is checked and mismatches are reported together (one wrong code should not hide the others).
  const problems = [];
  const expectError = async (frame, codes, id, label) => {
    const from = c.messages.length;
    c.send(frame);
    const err = await c.next((m) => m?.type === 'error', 10_000, `error for ${label}`, from);
    codes = [codes].flat();
    if (!codes.includes(err.code)) problems.push(`${label}: code ${JSON.stringify(err.code)}, expected ${codes.join(' or ')} (${JSON.stringify(err)})`);
    if (typeof err.message !== 'string') problems.push(`${label}: no message (${JSON.stringify(err)})`);
    if (id !== undefined && err.id !== id) problems.push(`${label}: id ${JSON.stringify(err.id)}, expected the request's id ${JSON.stringify(id)} (${JSON.stringify(err)})`);
    await c.barrier(); // still usable
  };
  await expectError('{"op": "subscribe", "id": 1, ', 'invalid_json', undefined, 'malformed JSON');
  await expectError('not json at all', 'invalid_json', undefined, 'plain text');
  await expectError({ op: 'dance', id: 7 }, 'unknown_op', 7, 'unknown op');
  await expectError({ op: 'subscribe', id: 8 }, 'invalid_request', 8, 'subscribe without channel');
  await expectError({ op: 'subscribe', id: 9, channel: 'a*b' }, 'invalid_channel', 9, 'invalid channel');
  await expectError({ op: 'subscribe', id: 10, channel: ch, since: 'abc' }, 'invalid_request', 10, 'non-numeric since');
  await expectError({ op: 'unsubscribe', id: 11 }, 'invalid_request', 11, 'unsubscribe without channel');
  await expectError({ id: 12 }, ['invalid_request', 'unknown_op'], 12, 'no op');
  await expectError(Buffer.from([0x7b, 0x7d, 0x00, 0xff]), 'unsupported_binary', undefined, 'binary frame');
  // The connection still subscribes and receives normally after all that.
  await c.subscribeOk(ch);
  await publish(h.url, ch, 'tick', { n: 1 });
  await c.until((x) => x.events(ch).length === 1, 10_000, 'event after bad input');

  // A message just under max_message_bytes is fine; one over it closes with 1009.
  // (The padding is a long id: Herald rejects unknown fields.)
  const longId = 'u'.repeat(950);
  const under = JSON.stringify({ op: 'ping', id: longId });
  assert.ok(Buffer.byteLength(under) < 1024);
  c.send(under);
  await c.next((m) => m?.type === 'pong' && m.id === longId, 10_000, 'pong for a ~970-byte message');
  c.send(JSON.stringify({ op: 'ping', id: 'o'.repeat(4000) }));
  const closed = await c.closed;
  assert.equal(closed.code, 1009, `oversized message → close 1009: ${JSON.stringify(closed)}`);

  // Bad URLs are refused with an HTTP JSON error before the upgrade.
  const badSince = await refusedUpgrade(t, `${wsBase(h)}/ws/x?since=abc`);
  assert.equal(badSince.status, 400, `/ws/x?since=abc → ${badSince.status} ${badSince.text}`);
  assert.ok(['invalid_request', 'invalid_cursor'].includes(badSince.json?.error?.code), `/ws/x?since=abc error: ${badSince.text}`);
  assert.equal(typeof badSince.json.error.message, 'string');
  t.diagnostic(`/ws/x?since=abc → ${badSince.status} ${badSince.text}`);
  const negSince = await refusedUpgrade(t, `${wsBase(h)}/ws/x?since=-1`);
  assert.equal(negSince.status, 400, `/ws/x?since=-1 → ${negSince.status} ${negSince.text}`);
  assertApiError(await refusedUpgrade(t, `${wsBase(h)}/ws/%FF`), 400, 'invalid_channel', '/ws/%FF (not UTF-8)');
  const badChan = await refusedUpgrade(t, `${wsBase(h)}/ws/a*b`);
  assertApiError(badChan, 400, 'invalid_channel', '/ws/a*b');
  const badChan2 = await refusedUpgrade(t, `${wsBase(h)}/ws/${encodeURIComponent(' lead')}`);
  assertApiError(badChan2, 400, 'invalid_channel', '/ws/%20lead (leading space)');
  // Without upgrade headers the same URLs are still JSON 400s.
  assertApiError(await request(h.url, '/ws/a*b'), 400, 'invalid_channel', 'GET /ws/a*b (no upgrade)');

  // A fresh, normal client works; no panic.
  const fresh = await openWs(t, `${wsBase(h)}${directPath('/ws', ch)}`);
  await publish(h.url, ch, 'tick', { n: 2 });
  await fresh.until((x) => x.events(ch).length === 1, 10_000, 'a normal direct client after bad input');
  await h.assertHealthy();
  assert.deepEqual(problems, [], 'error replies as documented (code, and the request id when the frame carried one)');
});
