// 5. Loss-free resume with the stock client's connection state recovery.
// A client subscribed to 3 channels; a publisher publishes 3 × 100 events (sequential, awaited, each with an
// idempotency id) and the transport is killed mid-stream. After the automatic reconnection every event of every
// channel must have arrived exactly once, in per-channel order, and `socket.recovered === true`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  startHerald, DURABLE_ONLY, connected, subscribeOk, publish, publishRetry, Recorder, waitFor, chan, request, history,
} from '../lib/herald.js';

const FAST = { reconnectionDelay: 100, reconnectionDelayMax: 200 };
const N = 100;
const KILL_AT = 30;

async function resumeScenario(t, h, { clientOpts = {}, interrupt, label }) {
  const channels = [chan('r1'), chan('r2'), chan('r3')];
  const socket = await connected(t, h.url, { ...FAST, ...clientOpts });
  const rec = new Recorder(socket);
  const reconnects = [];
  const disconnects = [];
  socket.on('connect', () => reconnects.push({ recovered: socket.recovered, id: socket.id }));
  socket.on('disconnect', (reason) => disconnects.push(reason));
  const firstId = socket.id;
  for (const ch of channels) await subscribeOk(socket, ch);
  const reconnected = waitFor(socket, 'connect', 30_000, `reconnect after ${label}`);

  let interruption;
  let publishedWhileDisconnected = 0;
  let receivedAtReconnect;
  socket.once('connect', () => { receivedAtReconnect = rec.named('tick').length; });
  for (let n = 1; n <= N; n++) {
    for (const ch of channels) {
      // publishRetry: retries (same id) until acknowledged — matters while the server restarts.
      const r = await publishRetry(() => h.url, ch, 'tick', { ch, n }, `${ch}#${n}`);
      assert.equal(r.offset, n, `offset of ${ch}#${n} (${JSON.stringify(r)})`);
      if (interruption && !socket.connected) publishedWhileDisconnected++;
    }
    // The stock client can only resume once it holds a cursor, i.e. after it has received an event.
    if (n === 5) await rec.until((r) => r.named('tick').length >= 1, 10_000, 'a first event before the interruption');
    if (n === KILL_AT) interruption = interrupt(socket); // not awaited: publishing goes on during the outage
  }
  await interruption;
  await reconnected.catch((e) => { throw new Error(`${e.message}; disconnect reasons: ${JSON.stringify(disconnects)}`); });

  const perChannel = () => Object.fromEntries(channels.map((ch) => [ch, []]));
  await rec.until((r) => {
    const seen = perChannel();
    for (const e of r.named('tick')) seen[e.args[0].ch]?.push(e.args[0].n);
    return channels.every((ch) => seen[ch].length >= N);
  }, 20_000, `all ${3 * N} events after ${label}`);

  const seen = perChannel();
  for (const e of rec.named('tick')) {
    assert.ok(e.args[0].ch in seen, `unexpected payload ${JSON.stringify(e.args)}`);
    assert.equal(typeof e.args[1], 'string', 'cursor argument is a string');
    seen[e.args[0].ch].push(e.args[0].n);
  }
  const expected = Array.from({ length: N }, (_, i) => i + 1);
  for (const ch of channels) {
    const got = seen[ch];
    const dups = got.filter((n, i) => got.indexOf(n) !== i);
    const missing = expected.filter((n) => !got.includes(n));
    assert.deepEqual(got, expected,
      `${ch}: every event exactly once, in order (duplicates: ${JSON.stringify(dups)}, missing: ${JSON.stringify(missing)})`);
  }
  assert.equal(rec.events.filter((e) => e.name !== 'tick').length, 0,
    `no other events (e.g. herald:gap) expected: ${JSON.stringify(rec.events.filter((e) => e.name !== 'tick'))}`);
  assert.ok(reconnects.length >= 1, 'the client reconnected');
  assert.ok(reconnects.every((c) => c.recovered === true),
    `socket.recovered === true on every reconnect: ${JSON.stringify(reconnects)} (disconnect reasons ${JSON.stringify(disconnects)})`);
  assert.equal(socket.id, firstId, 'a recovered session keeps its socket id');
  // Precondition: the outage really happened mid-stream, so events had to be replayed.
  assert.ok(publishedWhileDisconnected > 0, 'some events were published while the client was disconnected');
  t.diagnostic(`${label}: ${publishedWhileDisconnected} events published while disconnected; `
    + `${receivedAtReconnect} of ${3 * N} received by the time 'connect' fired again; disconnect reasons ${JSON.stringify(disconnects)}`);
  return { socket, rec, reconnects, disconnects, channels };
}

for (const transports of [undefined, ['polling']]) {
  const tname = transports ? transports.join('+') : 'default transports';
  test(`resume (a): client-side transport kill (engine.close()) mid-stream, ${tname}`, async (t) => {
    const h = await startHerald(t);
    const { reconnects } = await resumeScenario(t, h, {
      label: 'engine.close()',
      clientOpts: transports ? { transports } : {},
      interrupt: async (socket) => { socket.io.engine.close(); },
    });
    assert.equal(reconnects.length, 1, 'exactly one reconnection');
    h.assertNoPanic();
  });
}

test('resume (b): server-side disconnect via POST /api/connections/{id}/disconnect mid-stream', async (t) => {
  const h = await startHerald(t);
  const { reconnects, disconnects } = await resumeScenario(t, h, {
    label: 'server-side disconnect',
    interrupt: async (socket) => {
      const r = await request(h.url, `/api/connections/${encodeURIComponent(socket.id)}/disconnect`, { method: 'POST' });
      assert.equal(r.status, 200, `disconnect → ${r.status} ${r.text}`);
    },
  });
  assert.equal(reconnects.length, 1, 'exactly one reconnection');
  assert.notEqual(disconnects[0], 'io server disconnect',
    'the server must close the transport, not send a namespace DISCONNECT (the stock client does not reconnect after that)');
  const unknown = await request(h.url, '/api/connections/no-such-socket/disconnect', { method: 'POST' });
  assert.equal(unknown.status, 404, `unknown connection → ${unknown.status} ${unknown.text}`);
  h.assertNoPanic();
});

test('resume (c): Herald restart (SIGTERM, same data dir and port) mid-stream', DURABLE_ONLY, async (t) => {
  const h = await startHerald(t);
  const { disconnects } = await resumeScenario(t, h, {
    label: 'SIGTERM + restart',
    interrupt: async () => {
      const exit = await h.stop('SIGTERM');
      assert.equal(exit.code, 0, `graceful shutdown exits 0: ${JSON.stringify(exit)}`);
      await h.restart();
    },
  });
  assert.equal(h.starts, 2);
  assert.equal(disconnects.length >= 1, true);
  assert.ok(!disconnects.includes('io server disconnect'),
    `shutdown must be an Engine.IO close, not a namespace DISCONNECT: ${JSON.stringify(disconnects)}`);
  h.assertNoPanic();
});

test('resume (d): outage longer than history → recovered false, herald:gap history_trimmed, then what is left', async (t) => {
  const h = await startHerald(t, {
    config: `
[[history.rules]]
pattern = "short:*"
max_events = 5
`,
  });
  const channel = 'short:x';
  const socket = await connected(t, h.url, FAST);
  const rec = new Recorder(socket);
  const ack = await subscribeOk(socket, channel);
  let epoch = ack.epoch;
  for (let n = 1; n <= 3; n++) epoch = (await publish(h.url, channel, 'tick', { n })).epoch;
  await rec.until((r) => r.named('tick').length === 3, 10_000, 'first 3 events');

  // Kill the transport while keeping the client from reconnecting. (socket.disconnect() would be wrong:
  // it sends a namespace DISCONNECT, which ends the session for good.) With reconnection disabled the
  // Manager just stays closed after the engine closes; socket.connect() later opens a new engine and the
  // socket sends CONNECT with its pid and last offset, as it does on an automatic reconnect.
  socket.io.reconnection(false);
  const down = waitFor(socket, 'disconnect', 10_000);
  socket.io.engine.close();
  await down;
  assert.equal(socket.connected, false);

  for (let n = 4; n <= 23; n++) await publish(h.url, channel, 'tick', { n });
  const hist = await history(h.url, channel);
  assert.equal(hist.status, 200);
  assert.equal(hist.json.first_offset, 19, `max_events = 5 keeps offsets 19..23: ${hist.text}`);
  assert.equal(hist.json.last_offset, 23);

  socket.io.reconnection(true);
  const reconnected = waitFor(socket, 'connect', 10_000, 'reconnect after socket.connect()');
  socket.connect();
  await reconnected;
  assert.equal(socket.recovered, false, 'history no longer covers the outage, so recovered is false');

  await rec.until((r) => r.named('tick').length >= 8, 10_000, 'the 5 events still in history');
  const after = rec.events.slice(3);
  const gapIdx = after.findIndex((e) => e.name === 'herald:gap');
  assert.ok(gapIdx >= 0, `a herald:gap event: ${JSON.stringify(after.map((e) => e.name))}`);
  const gap = after[gapIdx].args[0];
  assert.deepEqual(
    { channel: gap.channel, reason: gap.reason, from: gap.from, to: gap.to },
    { channel, reason: 'history_trimmed', from: 4, to: 18 },
    `gap payload ${JSON.stringify(gap)}`,
  );
  assert.equal(gap.epoch, epoch, 'gap carries the channel epoch');
  assert.equal(after.filter((e) => e.name === 'herald:gap').length, 1, 'exactly one gap event');
  const ticksAfter = after.filter((e) => e.name === 'tick');
  assert.deepEqual(ticksAfter.map((e) => e.args[0].n), [19, 20, 21, 22, 23], 'what is still in history, in order');
  assert.ok(after.findIndex((e) => e.name === 'tick') > gapIdx, 'the gap event comes before the remaining events');

  // The subscription survives the non-recovered reconnect.
  await publish(h.url, channel, 'tick', { n: 24 });
  await rec.until((r) => r.named('tick').length >= 9, 10_000, 'a live event after the gap');
  assert.deepEqual(rec.named('tick').map((e) => e.args[0].n), [1, 2, 3, 19, 20, 21, 22, 23, 24]);
  h.assertNoPanic();
});

test('resume (e): a subscription with no event received yet survives a reconnect (the stock client sends no offset)', async (t) => {
  const h = await startHerald(t);
  const quiet = chan('quiet');
  const socket = await connected(t, h.url, FAST);
  const rec = new Recorder(socket);
  await subscribeOk(socket, quiet);
  const reconnected = waitFor(socket, 'connect', 10_000, 'reconnect');
  socket.io.engine.close();
  // published during the outage: the server knows where this subscription stood (the subscribe ack's offset)
  await publish(h.url, quiet, 'tick', { n: 1 });
  await reconnected;
  await publish(h.url, quiet, 'tick', { n: 2 });
  await rec.until((r) => r.named('tick').length >= 2, 10_000,
    `events on a quiet channel after a reconnect (recovered=${socket.recovered})`);
  assert.deepEqual(rec.named('tick').map((e) => e.args[0].n), [1, 2]);
  t.diagnostic(`recovered after a reconnect with no offset: ${socket.recovered}`);
});

test('resume (f): kill -9 and restart mid-stream: nothing is lost silently', DURABLE_ONLY, async (t) => {
  // kill -9 skips the graceful shutdown. Every acknowledged event is durable; the session may or may not
  // be recoverable. Either the client recovers (recovered === true, every event exactly once, in order),
  // or it is told: recovered === false and a herald:gap per channel (e.g. session_unknown).
  const h = await startHerald(t);
  const channels = [chan('k1'), chan('k2')];
  const socket = await connected(t, h.url, FAST);
  const rec = new Recorder(socket);
  for (const ch of channels) await subscribeOk(socket, ch);
  let recovered;
  const reconnected = waitFor(socket, 'connect', 30_000, 'reconnect after kill -9').then(() => { recovered = socket.recovered; });
  let interruption;
  const M = 60;
  for (let n = 1; n <= M; n++) {
    for (const ch of channels) await publishRetry(() => h.url, ch, 'tick', { ch, n }, `${ch}#${n}`);
    if (n === 3) await rec.until((r) => r.named('tick').length >= 1, 10_000, 'a first event');
    if (n === 20) interruption = (async () => { await h.kill9(); await h.restart(); })();
  }
  await interruption;
  await reconnected;
  await rec.until((r) => channels.every((ch) => r.named('tick').some((e) => e.args[0].ch === ch && e.args[0].n === M)),
    20_000, 'the last event of every channel');
  const gaps = rec.named('herald:gap').map((e) => e.args[0]);
  if (recovered === true) {
    for (const ch of channels) {
      assert.deepEqual(rec.named('tick').filter((e) => e.args[0].ch === ch).map((e) => e.args[0].n),
        Array.from({ length: M }, (_, i) => i + 1), `${ch}: exactly once, in order`);
    }
    assert.deepEqual(gaps, [], 'no gap when recovered');
  } else {
    assert.equal(recovered, false, `socket.recovered is true or false, got ${recovered}`);
    for (const ch of channels) {
      assert.ok(gaps.some((g) => g.channel === ch && typeof g.reason === 'string'),
        `not recovered → a herald:gap for ${ch}: ${JSON.stringify(gaps)}`);
    }
  }
  t.diagnostic(`after kill -9: recovered=${recovered}, gaps=${JSON.stringify(gaps)}`);
  h.assertNoPanic();
});

test('subscribe with since older than the retained history → herald:gap history_trimmed, then the rest', async (t) => {
  const h = await startHerald(t, { config: '[[history.rules]]\npattern = "short:*"\nmax_events = 5\n' });
  const channel = 'short:since';
  let epoch;
  for (let n = 1; n <= 10; n++) epoch = (await publish(h.url, channel, 'tick', { n })).epoch;
  const hist = await history(h.url, channel, { since: 2 });
  assert.deepEqual(hist.json.gap, { from: 3, to: 5 }, `history API gap: ${hist.text}`);
  const socket = await connected(t, h.url);
  const rec = new Recorder(socket);
  const ack = await subscribeOk(socket, channel, { since: 2, epoch });
  assert.equal(ack.offset, 10);
  await rec.until((r) => r.named('tick').length >= 5, 10_000, 'the 5 retained events');
  const names = rec.events.map((e) => e.name);
  assert.equal(names[0], 'herald:gap', `gap first: ${JSON.stringify(names)}`);
  const gap = rec.events[0].args[0];
  assert.deepEqual({ ...gap }, { channel, reason: 'history_trimmed', epoch, from: 3, to: 5 });
  assert.deepEqual(rec.named('tick').map((e) => e.args[0].n), [6, 7, 8, 9, 10]);
});

test('subscribe with since and a stale epoch → herald:gap epoch_changed', async (t) => {
  const h = await startHerald(t);
  const channel = chan('epoch');
  let epoch;
  for (let n = 1; n <= 3; n++) epoch = (await publish(h.url, channel, 'tick', { n })).epoch;
  const socket = await connected(t, h.url);
  const rec = new Recorder(socket);
  const ack = await subscribeOk(socket, channel, { since: 2, epoch: 'not-the-epoch' });
  assert.equal(ack.epoch, epoch);
  await publish(h.url, channel, 'tick', { n: 4 });
  await rec.until((r) => r.named('tick').some((e) => e.args[0].n === 4), 10_000, 'live event after subscribe');
  const gaps = rec.named('herald:gap').map((e) => e.args[0]);
  assert.equal(gaps.length, 1, `one gap event: ${JSON.stringify(rec.events.map((e) => [e.name, e.args[0]]))}`);
  assert.equal(gaps[0].channel, channel);
  assert.equal(gaps[0].reason, 'epoch_changed');
  assert.equal(gaps[0].epoch, epoch, 'the gap carries the current epoch');
  t.diagnostic(`events after an epoch_changed subscribe: ${JSON.stringify(rec.events.map((e) => [e.name, e.args[0]]))}`);
});
