// 6. Durability: every acknowledged publish survives kill -9 with its offset and id.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startHerald, publish, fullHistory, request } from '../lib/herald.js';

const N = 200;
const STREAMS = 4;

test(`durability: ${N} acknowledged events (${STREAMS} concurrent streams) survive kill -9`, async (t) => {
  const h = await startHerald(t); // default durability = "full"
  const channel = 'durable';
  const other = 'durable:other';
  const acked = new Map(); // id → result
  const startedAt = Date.now();
  await Promise.all(Array.from({ length: STREAMS }, async (_, s) => {
    for (let i = 0; i < N / STREAMS; i++) {
      const id = `s${s}-${i}`;
      const r = await publish(h.url, channel, 'ev', { s, i, pad: 'x'.repeat(100) }, { id });
      assert.equal(r.id, id, 'the result echoes the idempotency id');
      assert.equal(r.channel, channel);
      acked.set(id, r);
    }
  }));
  const otherResult = await publish(h.url, other, 'ev', { lonely: true });
  const elapsed = Date.now() - startedAt;

  const offsets = [...acked.values()].map((r) => r.offset).sort((a, b) => a - b);
  assert.deepEqual(offsets, Array.from({ length: N }, (_, i) => i + 1), 'offsets are 1..N without gaps or repeats');
  const epoch = acked.get('s0-0').epoch;
  assert.ok([...acked.values()].every((r) => r.epoch === epoch), 'one epoch for the channel');

  await h.kill9();
  await h.restart();

  const hist = await fullHistory(h.url, channel);
  assert.equal(hist.epoch, epoch, 'the epoch survives a restart with intact data');
  assert.equal(hist.first_offset, 1);
  assert.equal(hist.last_offset, N);
  assert.equal(hist.events.length, N);
  for (const ev of hist.events) {
    const r = acked.get(ev.id);
    assert.ok(r, `history event with unknown id ${ev.id}`);
    assert.equal(ev.offset, r.offset, `offset of ${ev.id}`);
    assert.equal(ev.channel, channel);
    assert.equal(ev.event, 'ev');
    assert.equal(ev.epoch, epoch);
    const [, s, i] = /^s(\d+)-(\d+)$/.exec(ev.id);
    assert.deepEqual(ev.data, { s: Number(s), i: Number(i), pad: 'x'.repeat(100) });
    assert.ok(!Number.isNaN(Date.parse(ev.time)), `time is an ISO timestamp: ${ev.time}`);
  }
  assert.deepEqual(hist.events.map((e) => e.offset), Array.from({ length: N }, (_, i) => i + 1), 'oldest first');

  const otherHist = await fullHistory(h.url, other);
  assert.deepEqual(otherHist.events.map((e) => [e.offset, e.id, e.data]), [[1, otherResult.id, { lonely: true }]]);

  // The next publish continues the sequence, and idempotency ids survive the crash.
  const next = await publish(h.url, channel, 'ev', { next: true });
  assert.equal(next.offset, N + 1);
  assert.equal(next.epoch, epoch);
  const dup = await publish(h.url, channel, 'ev', { s: 0, i: 0 }, { id: 's0-0' });
  assert.equal(dup.duplicate, true, `a repeated id after restart is a duplicate: ${JSON.stringify(dup)}`);
  assert.equal(dup.offset, acked.get('s0-0').offset);

  const chans = await request(h.url, '/api/channels');
  assert.equal(chans.status, 200);
  const row = chans.json.channels.find((c) => c.channel === channel);
  assert.deepEqual(row, { channel, epoch, first_offset: 1, last_offset: N + 1 });
  t.diagnostic(`published ${N + 1} events in ${elapsed} ms`);
  h.assertNoPanic();
});

test('idempotency: a repeated id returns the original result with duplicate:true and writes nothing', async (t) => {
  const h = await startHerald(t);
  const first = await publish(h.url, 'idem', 'ev', { v: 1 }, { id: 'abc' });
  assert.equal(first.offset, 1);
  assert.ok(!first.duplicate, 'first publish is not a duplicate');
  const again = await publish(h.url, 'idem', 'ev', { v: 2 }, { id: 'abc' });
  assert.deepEqual(again, { ...first, duplicate: true });
  // the same id on another channel is a different event
  const elsewhere = await publish(h.url, 'idem2', 'ev', { v: 1 }, { id: 'abc' });
  assert.equal(elsewhere.offset, 1);
  assert.ok(!elsewhere.duplicate);
  const hist = await fullHistory(h.url, 'idem');
  assert.deepEqual(hist.events.map((e) => [e.offset, e.id, e.data]), [[1, 'abc', { v: 1 }]]);
});

test('publish forms: one event to many channels, and a batch, results in request order', async (t) => {
  const h = await startHerald(t);
  const multi = await request(h.url, '/api/publish', {
    method: 'POST', body: { channels: ['m1', 'm2', 'm3'], event: 'x', data: { hello: 'world' } },
  });
  assert.equal(multi.status, 200, multi.text);
  assert.deepEqual(multi.json.results.map((r) => [r.channel, r.offset]), [['m1', 1], ['m2', 1], ['m3', 1]]);
  const batch = await request(h.url, '/api/publish', {
    method: 'POST',
    body: { events: [
      { channel: 'm2', event: 'a', data: 1 },
      { channel: 'm1', event: 'b', data: [1, 2] },
      { channel: 'm2', event: 'c', data: null, id: 'batch-id' },
    ] },
  });
  assert.equal(batch.status, 200, batch.text);
  assert.deepEqual(batch.json.results.map((r) => [r.channel, r.offset]), [['m2', 2], ['m1', 2], ['m2', 3]]);
  assert.equal(batch.json.results[2].id, 'batch-id');
  const m2 = await fullHistory(h.url, 'm2');
  assert.deepEqual(m2.events.map((e) => [e.offset, e.event, e.data]), [[1, 'x', { hello: 'world' }], [2, 'a', 1], [3, 'c', null]]);
});
