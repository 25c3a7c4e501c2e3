// 2. Acks (client → server): subscribe / unsubscribe acks, error acks, `since` replay.
// Server → client acks: Herald has no feature that emits-with-ack to clients, so there is nothing to test here
// (the protocol layer's own tests and the official socket.io-protocol suite cover ACK packets).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  startHerald, connected, subscribe, subscribeOk, publish, Recorder, chan, withTimeout,
} from '../lib/herald.js';

test('subscribe ack: {ok:true, channel, offset, epoch} with the last offset and the channel epoch', async (t) => {
  const h = await startHerald(t);
  const channel = chan('acks');
  let last;
  for (let n = 1; n <= 3; n++) last = await publish(h.url, channel, 'tick', { n });
  assert.equal(last.offset, 3);
  assert.equal(typeof last.epoch, 'string');

  const socket = await connected(t, h.url, { transports: ['websocket'] });
  const ack = await subscribe(socket, channel);
  assert.deepEqual(Object.keys(ack).sort(), ['channel', 'epoch', 'offset', 'ok'], `ack keys: ${JSON.stringify(ack)}`);
  assert.equal(ack.ok, true);
  assert.equal(ack.channel, channel);
  assert.equal(ack.offset, 3, 'offset is the last offset of the channel now');
  assert.equal(ack.epoch, last.epoch, 'epoch matches the one returned by publish');

  // subscribing to a channel that doesn't exist yet is fine
  const fresh = await subscribeOk(socket, chan('fresh'));
  assert.equal(fresh.offset, 0);
  assert.equal(typeof fresh.epoch, 'string');
});

test('subscribe errors: invalid channel names → invalid_channel, malformed payloads → invalid_request', async (t) => {
  const h = await startHerald(t);
  const socket = await connected(t, h.url, { transports: ['websocket'] });
  // (interface.md: 1–200 *bytes* of letters and digits of any script, space and _ - . : @ # + = , ~ !)
  for (const bad of ['a/b', '', ' leading', 'trailing ', 'x'.repeat(201), 'é'.repeat(101), 'tab\there', 'emoji😀', 'new\nline', 'a*b', 'q?']) {
    const ack = await subscribe(socket, bad);
    assert.equal(ack?.ok, false, `subscribe ${JSON.stringify(bad)} should fail: ${JSON.stringify(ack)}`);
    assert.equal(ack.error?.code, 'invalid_channel', `subscribe ${JSON.stringify(bad)}: ${JSON.stringify(ack)}`);
    assert.equal(typeof ack.error.message, 'string');
  }
  // 200 characters and every allowed punctuation character are fine
  for (const good of ['x'.repeat(200), 'é'.repeat(100), 'A-z_0.9:@#+=,~! mid space', 'Ligne Süd 3', '東京:監視']) {
    await subscribeOk(socket, good);
  }

  const malformed = [
    ['no payload', []],
    ['a string', ['just-a-string']],
    ['a number', [42]],
    ['null', [null]],
    ['missing channel', [{}]],
    ['channel not a string', [{ channel: 7 }]],
    ['since not a number', [{ channel: 'ok', since: 'soon' }]],
  ];
  for (const [what, args] of malformed) {
    const ack = await withTimeout(socket.emitWithAck('subscribe', ...args), 10_000, `ack for subscribe with ${what}`);
    assert.equal(ack?.ok, false, `subscribe with ${what} should fail: ${JSON.stringify(ack)}`);
    assert.equal(ack.error?.code, 'invalid_request', `subscribe with ${what}: ${JSON.stringify(ack)}`);
  }
  // The connection survives all that.
  assert.equal(socket.connected, true);
  await subscribeOk(socket, 'still-works');
  h.assertNoPanic();
});

test('subscribe with since replays the events after `since`, then live events follow in order', async (t) => {
  const h = await startHerald(t);
  const channel = chan('since');
  for (let n = 1; n <= 5; n++) await publish(h.url, channel, 'tick', { n });
  const socket = await connected(t, h.url);
  const rec = new Recorder(socket);
  const ack = await subscribeOk(socket, channel, { since: 2 });
  assert.equal(ack.offset, 5);
  for (let n = 6; n <= 8; n++) await publish(h.url, channel, 'tick', { n });
  await rec.until((r) => r.named('tick').length >= 6, 10_000, '6 tick events (3 replayed + 3 live)');
  assert.deepEqual(rec.named('tick').map((e) => e.args[0].n), [3, 4, 5, 6, 7, 8]);
});

test('unsubscribe ack {ok:true, channel}; no more events from that channel', async (t) => {
  const h = await startHerald(t);
  const a = chan('unsub-a');
  const b = chan('unsub-b');
  const socket = await connected(t, h.url);
  const rec = new Recorder(socket);
  await subscribeOk(socket, a);
  await subscribeOk(socket, b);
  await publish(h.url, a, 'ev-a', { n: 1 });
  await rec.until((r) => r.named('ev-a').length === 1, 10_000, 'first ev-a');

  const ack = await withTimeout(socket.emitWithAck('unsubscribe', { channel: a }), 10_000, 'unsubscribe ack');
  assert.deepEqual(ack, { ok: true, channel: a });
  // Publish to the unsubscribed channel, then to the still-subscribed one: once b's event has arrived,
  // a's (published earlier) would have arrived too if the subscription were still there.
  await publish(h.url, a, 'ev-a', { n: 2 });
  await publish(h.url, b, 'ev-b', { n: 1 });
  await rec.until((r) => r.named('ev-b').length === 1, 10_000, 'ev-b');
  assert.equal(rec.named('ev-a').length, 1, 'no event from an unsubscribed channel');
});

test('the epoch from a subscribe ack on an empty channel can be used to resubscribe without a spurious gap', async (t) => {
  // A client stores {epoch, offset} from the ack and later resubscribes with {since: offset, epoch}.
  // Nothing was lost (since = 0), so no herald:gap is expected; the events are replayed.
  const h = await startHerald(t);
  const channel = chan('empty-epoch');
  const first = await connected(t, h.url);
  const ack = await subscribeOk(first, channel);
  first.disconnect();
  await publish(h.url, channel, 'tick', { n: 1 });
  await publish(h.url, channel, 'tick', { n: 2 });
  const socket = await connected(t, h.url);
  const rec = new Recorder(socket);
  await subscribeOk(socket, channel, { since: ack.offset, epoch: ack.epoch });
  await rec.until((r) => r.named('tick').length >= 2, 10_000, 'replayed events');
  assert.deepEqual(rec.named('tick').map((e) => e.args[0].n), [1, 2]);
  assert.deepEqual(rec.named('herald:gap').map((e) => e.args[0]), [],
    `no gap: the subscribe ack said epoch ${JSON.stringify(ack.epoch)}, offset ${ack.offset}`);
});
