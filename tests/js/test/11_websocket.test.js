// 11. Plain WebSocket transport (docs/interface.md, "Plain WebSocket"): the multiplexed `/ws` protocol
// (subscribe/unsubscribe/ping with correlated ids, `since` resume, `gap` messages, heartbeats, ping frames,
// close codes, errors) and direct `/ws/{channel}` URLs (path mapping, non-ASCII names, `payload = "data"`).
// The client is the `ws` package, i.e. a bare RFC 6455 client with no Herald library.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  startHerald, publish, chan, connected, subscribeOk, Recorder, request, assertApiError, withTimeout,
} from '../lib/herald.js';
import {
  wsBase, openWs, refusedUpgrade, directPath, openSse, openRawWs, RawWs,
} from '../lib/plain.js';
import { randomBytes } from 'node:crypto';
import net from 'node:net';

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

test('one URL → channel mapping: an encoded slash (%2F) is refused by /ws/, /sse/ and the HTTP API alike; %3A and / both mean :', async (t) => {
  const h = await startHerald(t);
  const r = await publish(h.url, 'a:b', 'x', { n: 1 });
  // `/` is not a channel character, encoded or not: each transport says invalid_channel, before any upgrade.
  for (const raw of ['a%2Fb', 'a%2fb', 'x/a%2Fb']) {
    assertApiError(await refusedUpgrade(t, `${wsBase(h)}/ws/${raw}`), 400, 'invalid_channel', `/ws/${raw}`);
    const sse = await openSse(t, `${h.url}/sse/${raw}`);
    assert.equal(sse.status, 400, `/sse/${raw} → ${sse.status}`);
    assert.equal(sse.json?.error?.code, 'invalid_channel', `/sse/${raw}: ${sse.text}`);
    assertApiError(await request(h.url, `/api/channels/${raw}/history`), raw.startsWith('x/') ? 404 : 400,
      raw.startsWith('x/') ? 'not_found' : 'invalid_channel', `/api/channels/${raw}/history`);
  }
  // The same channel through every spelling the mapping allows, with the event from history.
  for (const raw of ['a/b', 'a%3Ab', 'a%3ab', 'a/b/', '%61/%62']) {
    const c = await openWs(t, `${wsBase(h)}/ws/${raw}?since=0`);
    await c.until((x) => x.events().length === 1, 10_000, `/ws/${raw}`);
    assert.deepEqual([c.events()[0].channel, c.events()[0].offset], ['a:b', r.offset], `/ws/${raw}`);
    c.ws.close();
    const sse = await openSse(t, `${h.url}/sse/${raw}?since=${r.epoch}:0`);
    assert.equal(sse.status, 200, `/sse/${raw} → ${sse.status} ${sse.text}`);
    await sse.until((x) => x.named('x').length === 1, 10_000, `/sse/${raw}`);
  }
  for (const raw of ['a%3Ab', 'a:b']) {
    const hist = await request(h.url, `/api/channels/${raw}/history`);
    assert.equal(hist.status, 200, `/api/channels/${raw}/history → ${hist.text}`);
    assert.deepEqual(hist.json.events.map((e) => [e.channel, e.offset]), [['a:b', r.offset]]);
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

test('direct /ws/{channel}: an event published the moment the 101 arrives is delivered (subscribed before the upgrade completes)', async (t) => {
  // The seed-003 client opens /ws/{unit} without `since` and expects every update after `open`. Here the publish
  // goes out on an already-open HTTP connection as soon as the 101 response reaches the client, and a second
  // event is published after it is acknowledged: a connection that gets the second but not the first lost it.
  const h = await startHerald(t, { config: 'durability = "normal"\n' });
  const pub = net.connect(h.port, '127.0.0.1');
  t.after(() => pub.destroy());
  await new Promise((resolve, reject) => { pub.once('connect', resolve); pub.once('error', reject); });
  let acked = 0;
  let ackWaiter = null;
  pub.on('data', (d) => { acked += (d.toString('latin1').match(/HTTP\/1\.1 200/g) ?? []).length; ackWaiter?.(); });
  const rawPublish = (channel, data) => {
    const body = JSON.stringify({ channel, event: 'tick', data });
    pub.write(`POST /api/publish HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n`
      + `Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
  };
  const ROUNDS = 150;
  const lost = [];
  for (let i = 0; i < ROUNDS; i++) {
    const ch = chan('open');
    const r = new RawWs(t, h, directPath('/ws', ch));
    r.socket.once('data', () => rawPublish(ch, { n: 1 })); // the first bytes from the server are the 101
    const res = await withTimeout(r.response, 10_000, 'upgrade');
    assert.equal(res.status, 101);
    await withTimeout(new Promise((resolve) => {
      ackWaiter = () => { if (acked >= i + 1) resolve(); };
      ackWaiter();
    }), 10_000, `publish ack ${i + 1}`);
    await publish(h.url, ch, 'tick', { n: 2 });
    try {
      await r.until((x) => x.texts().some((m) => JSON.parse(m).data?.n === 2), 5_000, `round ${i}: second event`);
    } catch (e) {
      lost.push(`round ${i}: neither event within 5 s — registered after both publishes? (${r.summary()})`);
      r.socket.destroy();
      if (lost.length >= 3) break;
      continue;
    }
    const ns = r.texts().map((m) => JSON.parse(m)).filter((m) => m.type === 'event').map((m) => m.data.n);
    if (ns[0] !== 1) lost.push(`round ${i}: received ${JSON.stringify(ns)}`);
    r.socket.destroy();
  }
  assert.deepEqual(lost, [], `rounds (of ${ROUNDS}) where the event published right after the 101 was lost`);
});

test('RFC 6455 framing (raw socket): accept key, fragments with an interleaved ping, UTF-8 split across fragments, close handshake', async (t) => {
  const h = await startHerald(t);
  const r = await openRawWs(t, h, '/ws');
  assert.equal(r.headers['sec-websocket-accept'], r.expectedAccept(), 'Sec-WebSocket-Accept');
  assert.equal(r.headers['sec-websocket-extensions'], undefined, 'no extension when none was offered');

  // A text message in three fragments with a ping between them.
  const msg = Buffer.from('{"op":"ping","id":"frag"}');
  r.frame(0x1, msg.subarray(0, 5), { fin: false });
  r.frame(0x9, 'hello');
  r.frame(0x0, msg.subarray(5, 12), { fin: false });
  r.frame(0x0, msg.subarray(12), { fin: true });
  await r.until((x) => x.frames.some((f) => f.opcode === 0xA) && x.texts().length >= 1, 10_000, 'pong frame and pong message');
  assert.equal(r.frames.find((f) => f.opcode === 0xA).payload.toString(), 'hello', 'the pong frame echoes the ping payload');
  assert.deepEqual(JSON.parse(r.texts()[0]), { type: 'pong', id: 'frag' });

  // UTF-8 split inside a character across fragments.
  const sub = Buffer.from('{"op":"subscribe","id":2,"channel":"Ligne Süd"}');
  const cut = sub.indexOf(Buffer.from('ü')) + 1; // between the two bytes of ü
  r.frame(0x1, sub.subarray(0, cut), { fin: false });
  r.frame(0x0, sub.subarray(cut), { fin: true });
  await r.until((x) => x.texts().length >= 2, 10_000, 'subscribed');
  assert.equal(JSON.parse(r.texts()[1]).channel, 'Ligne Süd');
  assert.ok(r.frames.every((f) => !f.masked && !f.rsv23), 'server frames are unmasked, no reserved bits');

  // Close handshake: the server answers a close frame with one and ends the connection.
  r.frame(0x8, Buffer.from([0x03, 0xe8]));
  await r.until((x) => x.closeFrame() && x.ended, 5_000, 'close frame and end of connection');
  assert.equal(r.closeCode(), 1000);
  await h.assertHealthy();
});

test('RFC 6455 violations close the connection (1002 / 1007 / 1009), handshake errors are HTTP errors; no panic', async (t) => {
  const h = await startHerald(t, { config: '[websocket]\nmax_message_bytes = 1024\n' });
  const violations = [
    ['unmasked frame', (r) => r.frame(0x1, '{"op":"ping"}', { mask: false }), [1002]],
    ['RSV1 without a negotiated extension', (r) => r.frame(0x1, '{"op":"ping"}', { rsv: 4 }), [1002]],
    ['RSV2', (r) => r.frame(0x1, '{"op":"ping"}', { rsv: 2 }), [1002]],
    ['unknown opcode 0x3', (r) => r.frame(0x3, 'x'), [1002]],
    ['continuation without a start', (r) => r.frame(0x0, 'x'), [1002]],
    ['control frame over 125 bytes', (r) => r.frame(0x9, Buffer.alloc(126, 1)), [1002]],
    ['fragmented control frame', (r) => r.frame(0x9, 'x', { fin: false }), [1002]],
    ['new message inside a fragmented one', (r) => { r.frame(0x1, '{"op":', { fin: false }); r.frame(0x1, '{}'); }, [1002]],
    ['invalid UTF-8 in a text message', (r) => r.frame(0x1, Buffer.from([0x7b, 0xff, 0xfe, 0x7d])), [1007]],
    ['fragments adding up to more than max_message_bytes',
      (r) => { for (let i = 0; i < 3; i++) r.frame(i === 0 ? 0x1 : 0x0, Buffer.alloc(500, 0x20), { fin: i === 2 }); }, [1009]],
    ['one frame over max_message_bytes (64-bit length)', (r) => r.frame(0x1, Buffer.alloc(70_000, 0x20)), [1009]],
  ];
  const problems = [];
  for (const [label, send, codes] of violations) {
    const r = await openRawWs(t, h, '/ws');
    send(r);
    try {
      await r.until((x) => x.ended, 5_000, `${label}: the server ends the connection`);
    } catch (e) {
      problems.push(`${label}: connection not closed (${r.summary()})`);
      r.socket.destroy();
      continue;
    }
    if (!codes.includes(r.closeCode())) problems.push(`${label}: close code ${r.closeCode()}, expected ${codes.join('/')} (${r.summary()})`);
  }

  // Handshake errors: an HTTP error instead of 101.
  const badVersion = new RawWs(t, h, '/ws', { extraHeaders: { 'Sec-WebSocket-Version': '8' } });
  const v = await withTimeout(badVersion.response, 10_000, 'response to version 8');
  if (!(v.status >= 400 && v.status < 500)) problems.push(`Sec-WebSocket-Version: 8 → ${v.status}, expected 4xx (426)`);
  if (!/\b13\b/.test(v.headers['sec-websocket-version'] ?? '')) {
    problems.push(`Sec-WebSocket-Version: 8 → no Sec-WebSocket-Version: 13 header in the error (RFC 6455 4.2.2): ${JSON.stringify(v.headers)}`);
  }
  const noKey = new RawWs(t, h, '/ws', { extraHeaders: { 'Sec-WebSocket-Key': undefined } });
  const k = await withTimeout(noKey.response, 10_000, 'response without a key');
  if (k.status !== 400) problems.push(`no Sec-WebSocket-Key → ${k.status}, expected 400`);

  // The server is fine and a normal client works.
  const c = await openWs(t, `${wsBase(h)}/ws`);
  await c.barrier();
  await h.assertHealthy();
  assert.deepEqual(problems, [], 'protocol violations handled as RFC 6455 says');
});

test('permessage-deflate: negotiated with ws, compressed both ways, large and incompressible events intact, inflated size limited', async (t) => {
  const h = await startHerald(t);
  const ch = chan('pmd');
  const big = 'Model Dağılımı — Final 1A; '.repeat(1200); // compressible, ~38 KB
  const noise = randomBytes(15_000).toString('base64'); // incompressible, 20 KB
  const deflated = await openWs(t, `${wsBase(h)}${directPath('/ws', ch)}`, { perMessageDeflate: true });
  const plain = await openWs(t, `${wsBase(h)}${directPath('/ws', ch)}`, { perMessageDeflate: false });
  // A client that asks for a small server window: Herald must decline the offer or honour it.
  const small = await openWs(t, `${wsBase(h)}${directPath('/ws', ch)}`, { perMessageDeflate: { serverMaxWindowBits: 9 } });
  assert.match(deflated.ws.extensions, /permessage-deflate/, `negotiated: ${JSON.stringify(deflated.ws.extensions)}`);
  assert.equal(plain.ws.extensions, '', 'not negotiated when not offered');
  t.diagnostic(`extensions with server_max_window_bits=9 offered: ${JSON.stringify(small.ws.extensions)}`);

  // The last one makes an envelope over 65535 bytes: an uncompressed frame needs the 64-bit length form.
  const payloads = [{ big }, { noise }, { n: 1 }, { big: big + noise }, { pad: 'é'.repeat(32_000) }, { pad: 'x'.repeat(65_400) }];
  for (const p of payloads) await publish(h.url, ch, 'tick', p);
  for (const [name, c] of [['deflate', deflated], ['plain', plain], ['small window', small]]) {
    await c.until((x) => x.events(ch).length === payloads.length, 15_000, `${name}: all events`);
    assert.deepEqual(c.events(ch).map((e) => e.data), payloads, `${name}: payloads intact`);
    assert.equal(c.closeInfo, null, `${name}: still connected`);
  }
  assert.ok(plain.raw.some((text) => Buffer.byteLength(text) > 65_535), 'an uncompressed frame needed the 64-bit length form');

  // Client → server compression (ws deflates messages over 1 KB): a long id comes back intact.
  const multi = await openWs(t, `${wsBase(h)}/ws`, { perMessageDeflate: true });
  const longId = 'i'.repeat(20_000);
  const pong = await multi.request('ping', {}, { id: longId });
  assert.equal(pong.id, longId);
  // A message that is small on the wire but inflates beyond max_message_bytes (64 KiB) → 1009.
  multi.send(JSON.stringify({ op: 'ping', id: 'z'.repeat(300_000) }));
  const closed = await withTimeout(multi.closed, 10_000, 'close after a deflate bomb');
  assert.equal(closed.code, 1009, `inflated size over the limit: ${JSON.stringify(closed)}`);
  await h.assertHealthy();
});

test('slow consumer: a client that stops reading is closed with 1008 and resumes with since, losing nothing; others unaffected', async (t) => {
  const h = await startHerald(t, {
    // The queue bound must hold one publish batch (40 × 16 KB): a single burst larger than it closes any client.
    config: 'durability = "normal"\n[history]\nmax_events = 5000\n[websocket]\nmax_queue_bytes = 2097152\n',
  });
  const ch = chan('slow');
  const url = `${wsBase(h)}${directPath('/ws', ch)}`;
  const slow = await openWs(t, url, { perMessageDeflate: false });
  const fast = await openWs(t, url, { perMessageDeflate: false });
  slow.ws.pause(); // stop reading: the kernel buffers fill, then Herald's queue
  const BATCH = 40;
  const BATCHES = 30; // 1200 events × ~16 KB ≈ 19 MB, far beyond socket buffers + 2 MiB
  let epoch;
  for (let b = 0; b < BATCHES; b++) {
    const events = Array.from({ length: BATCH }, (_, i) => ({
      channel: ch, event: 'tick', data: { n: b * BATCH + i + 1, pad: randomBytes(12_000).toString('base64') },
    }));
    const r = await request(h.url, '/api/publish', { method: 'POST', body: { events }, timeout: 30_000 });
    assert.equal(r.status, 200, `batch ${b}: ${r.status} ${r.text.slice(0, 200)}`);
    epoch = r.json.results[0].epoch;
    // Pace the publisher on the reading client (never more than a batch behind, well under the bound), so only
    // the paused client can overflow however loaded the machine is.
    await fast.until((x) => x.events(ch).length >= (b + 1) * BATCH, 30_000, `the reading client gets batch ${b}`);
  }
  const TOTAL = BATCH * BATCHES;
  await fast.until((x) => x.events(ch).length === TOTAL, 30_000, 'the reading client gets everything');
  assert.deepEqual(fast.events(ch).map((e) => e.data.n), range(1, TOTAL));
  assert.equal(fast.closeInfo, null, 'the reading client stays connected');

  slow.ws.resume();
  const closed = await withTimeout(slow.closed, 20_000, 'the slow consumer is closed');
  assert.equal(closed.code, 1008, `close code: ${JSON.stringify(closed)}`);
  assert.equal(closed.reason, 'slow consumer');
  const got = slow.events(ch).map((e) => e.data.n);
  assert.deepEqual(got, range(1, got.length), 'what arrived before the close is a gap-free prefix');
  assert.ok(got.length < TOTAL, 'the slow client did not get everything before being closed');

  const last = slow.events(ch).at(-1)?.offset ?? 0;
  const again = await openWs(t, `${url}?since=${last}&epoch=${encodeURIComponent(epoch)}`, { perMessageDeflate: false });
  await again.until((x) => x.events(ch).length === TOTAL - last, 30_000, 'resume after the slow-consumer close');
  assert.deepEqual(again.events(ch).map((e) => e.data.n), range(last + 1, TOTAL), 'the rest, exactly once, in order');
  assert.deepEqual(again.ofType('gap'), []);
  t.diagnostic(`slow client got ${got.length} of ${TOTAL} before 1008`);
  await h.assertHealthy();
});

for (const kind of ['WebSocket', 'SSE']) {
  test(`SIGTERM does not wait for a ${kind} client that stopped reading`, async (t) => {
    const h = await startHerald(t, {
      config: 'durability = "normal"\n', // default queue bounds
    });
    const ch = chan('stuck');
    if (kind === 'WebSocket') {
      const ws = await openWs(t, `${wsBase(h)}${directPath('/ws', ch)}`, { perMessageDeflate: false });
      ws.ws.pause(); // never read again
    } else {
      const sse = await openSse(t, `${h.url}${directPath('/sse', ch)}`, { pump: false }); // body never read
      assert.equal(sse.status, 200);
    }
    // ~10 MB: more than the socket buffers hold (the server's writes block).
    for (let b = 0; b < 15; b++) {
      const events = Array.from({ length: 40 }, (_, i) => ({
        channel: ch, event: 'tick', data: { n: b * 40 + i, pad: randomBytes(12_000).toString('base64') },
      }));
      const r = await request(h.url, '/api/publish', { method: 'POST', body: { events }, timeout: 30_000 });
      assert.equal(r.status, 200);
    }
    const started = Date.now();
    const exit = await h.stop('SIGTERM'); // throws after 10 s
    const took = Date.now() - started;
    assert.equal(exit.code, 0, `graceful exit: ${JSON.stringify(exit)}`);
    assert.ok(took < 5_000, `shutdown took ${took} ms with a non-reading ${kind} client`);
    t.diagnostic(`shutdown with a non-reading ${kind} client took ${took} ms`);
  });
}
