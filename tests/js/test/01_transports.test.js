// 1. Transports: default (polling → websocket upgrade), websocket-only and polling-only clients
// subscribe, and receive HTTP-published events with the right payload, in order, with a string cursor.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  startHerald, connected, client, subscribeOk, publish, Recorder, waitFor, chan,
} from '../lib/herald.js';

const N = 20;

/** Publish n events {ch, n} to `channel` sequentially (awaited), returning the results. */
async function publishRange(url, channel, from, to) {
  const results = [];
  for (let n = from; n <= to; n++) results.push(await publish(url, channel, 'tick', { ch: channel, n, text: `event ${n} é ✓ 🚀 \u2028 \u001e \\ "` }));
  return results;
}

function assertTicks(rec, channel, count) {
  const ticks = rec.named('tick');
  assert.equal(ticks.length, count, `expected ${count} tick events, got ${ticks.length}`);
  ticks.forEach((e, i) => {
    const [data, cursor, ...rest] = e.args;
    assert.deepEqual(data, { ch: channel, n: i + 1, text: `event ${i + 1} é ✓ 🚀 \u2028 \u001e \\ "` }, `payload of event #${i + 1}`);
    assert.equal(typeof cursor, 'string', `trailing cursor argument of event #${i + 1} should be a string, got ${JSON.stringify(cursor)}`);
    assert.ok(cursor.length > 0, 'cursor should not be empty');
    assert.equal(rest.length, 0, `no arguments after the cursor, got ${JSON.stringify(rest)}`);
  });
}

test('default transports: polling, then upgrade to websocket; events arrive in order across the upgrade', async (t) => {
  const h = await startHerald(t);
  const channel = chan('default');
  const socket = client(t, h.url);
  // The engine exists synchronously after io(); the upgrade probe starts only after the handshake.
  const upgraded = waitFor(socket.io.engine, 'upgrade', 10_000, 'engine upgrade to websocket');
  const rec = new Recorder(socket);
  await waitFor(socket, 'connect', 10_000);
  const ack = await subscribeOk(socket, channel);
  assert.equal(ack.offset, 0, 'a channel with no events yet has last offset 0');

  // Half of the events are published around the upgrade, half after it.
  await publishRange(h.url, channel, 1, N / 2);
  await upgraded;
  assert.equal(socket.io.engine.transport.name, 'websocket');
  await publishRange(h.url, channel, N / 2 + 1, N);
  await rec.until((r) => r.named('tick').length >= N, 10_000, `${N} tick events`);
  assertTicks(rec, channel, N);
  assert.equal(socket.io.engine.transport.name, 'websocket');
  h.assertNoPanic();
});

for (const transport of ['websocket', 'polling']) {
  test(`transports: ['${transport}'] only`, async (t) => {
    const h = await startHerald(t);
    const channel = chan(transport);
    const socket = await connected(t, h.url, { transports: [transport] });
    assert.equal(socket.io.engine.transport.name, transport);
    const rec = new Recorder(socket);
    await subscribeOk(socket, channel);
    await publishRange(h.url, channel, 1, N);
    await rec.until((r) => r.named('tick').length >= N, 10_000, `${N} tick events`);
    assertTicks(rec, channel, N);
    assert.equal(socket.io.engine.transport.name, transport, 'transport must not change');
    h.assertNoPanic();
  });
}

test('several clients on mixed transports all receive a fan-out, in order', async (t) => {
  const h = await startHerald(t);
  const channel = chan('fanout');
  const sockets = await Promise.all([
    connected(t, h.url),
    connected(t, h.url, { transports: ['websocket'] }),
    connected(t, h.url, { transports: ['polling'] }),
  ]);
  const recs = sockets.map((s) => new Recorder(s));
  for (const s of sockets) await subscribeOk(s, channel);
  await publishRange(h.url, channel, 1, N);
  await Promise.all(recs.map((r) => r.until((x) => x.named('tick').length >= N, 10_000, `${N} tick events`)));
  for (const r of recs) assertTicks(r, channel, N);
});
