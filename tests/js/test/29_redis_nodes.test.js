// 29. Several Herald nodes on one Redis (the Redis engine, issue 14's tests 1 and 2) and `/readyz`.
// Each test starts its own redis-server (free loopback port, no persistence) and real Herald nodes on it under a key
// prefix of its own. A publish on any node reaches subscribers of every transport on every node, in one per-channel
// order; a client whose node is killed (`kill -9`) resumes on another node — Socket.IO through a balancer that now
// routes to a surviving node (the stock client's recovery: `socket.recovered === true`), `/ws` by `since`/`epoch`
// and SSE by `Last-Event-ID` — with every acknowledged event exactly once, in order.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  startHerald, connected, subscribeOk, publish, publishRetry, Recorder, waitFor, chan, request, assertApiError,
  withTimeout, pause,
} from '../lib/herald.js';
import { wsBase, openWs, openSse } from '../lib/plain.js';
import { startRedis, startNodes, balancer } from '../lib/cluster.js';

const FAST = { reconnectionDelay: 100, reconnectionDelayMax: 200 };
const sseUrl = (node, channels) =>
  `${node.url}/sse?${channels.map((ch) => `channel=${encodeURIComponent(ch)}`).join('&')}&envelope=1`;
const byChannel = (channels) => Object.fromEntries(channels.map((ch) => [ch, []]));

/** Envelopes named `name` of WsClients `clients`, in arrival order. */
const wsEnvelopes = (clients, name) => clients.flatMap((c) => c.events().filter((m) => m.event === name));
/** Envelopes named `name` of SseStreams `streams` (`envelope=1`), in arrival order. */
const sseEnvelopes = (streams, name) => streams.flatMap((s) => s.named(name).map((e) => JSON.parse(e.data)));

test('publish on node A: Socket.IO, /ws and SSE subscribers on B and C get every event, in one per-channel order',
  { timeout: 30_000 }, async (t) => {
    const redis = await startRedis(t);
    const [a, b, c] = await startNodes(t, redis, 3);
    const channels = [chan('n1'), chan('n2')];
    const N = 40;

    const subscribers = [];
    for (const [label, node] of [['B', b], ['C', c]]) {
      const socket = await connected(t, node.url);
      const rec = new Recorder(socket);
      for (const ch of channels) await subscribeOk(socket, ch);
      const ws = await openWs(t, `${wsBase(node)}/ws`);
      for (const ch of channels) await ws.subscribeOk(ch);
      const sse = await openSse(t, sseUrl(node, channels));
      assert.equal(sse.status, 200, `SSE on ${label}: ${sse.text}`);
      subscribers.push({ label, rec, ws, sse });
    }

    const published = byChannel(channels);
    for (let n = 1; n <= N; n++) {
      const ch = channels[n % 2];
      const r = await publish(a.url, ch, 'tick', { ch, n });
      published[ch].push({ n, offset: r.offset, epoch: r.epoch });
    }
    // A last event per channel: once it is in, everything before it on that channel is too (nothing more may follow).
    for (const ch of channels) await publish(a.url, ch, 'end', { ch });

    for (const { label, rec, ws, sse } of subscribers) {
      await rec.until((r) => r.named('end').length === channels.length, 10_000, `Socket.IO on ${label}: the end events`);
      await ws.until((w) => wsEnvelopes([w], 'end').length === channels.length, 10_000, `/ws on ${label}: the end events`);
      await sse.until((s) => s.named('end').length === channels.length, 10_000, `SSE on ${label}: the end events`);

      const sio = byChannel(channels);
      for (const e of rec.named('tick')) sio[e.args[0].ch].push(e.args[0].n);
      const wsSeen = byChannel(channels);
      for (const m of wsEnvelopes([ws], 'tick')) wsSeen[m.channel].push({ n: m.data.n, offset: m.offset, epoch: m.epoch });
      const sseSeen = byChannel(channels);
      for (const m of sseEnvelopes([sse], 'tick')) sseSeen[m.channel].push({ n: m.data.n, offset: m.offset, epoch: m.epoch });
      for (const ch of channels) {
        assert.deepEqual(sio[ch], published[ch].map((p) => p.n), `Socket.IO on ${label}, ${ch}: every event once, in order`);
        assert.deepEqual(wsSeen[ch], published[ch], `/ws on ${label}, ${ch}: the publisher's offsets and epoch, in order`);
        assert.deepEqual(sseSeen[ch], published[ch], `SSE on ${label}, ${ch}: the publisher's offsets and epoch, in order`);
      }
      assert.deepEqual(rec.named('herald:gap'), [], `Socket.IO on ${label}: no gap`);
      assert.deepEqual(ws.ofType('gap'), [], `/ws on ${label}: no gap`);
    }
  });

test('kill -9 of the node under publish load: Socket.IO (recovered), /ws (since/epoch) and SSE (Last-Event-ID) resume '
  + 'on another node with every acknowledged event exactly once, in order', { timeout: 30_000 }, async (t) => {
  const redis = await startRedis(t);
  const [a, b, c] = await startNodes(t, redis, 3);
  const channels = [chan('k1'), chan('k2')];
  const MIN_N = 60; // events per channel at least; publishing goes on until every client has resumed
  const MAX_N = 800; // a bound (under the default history of 1000): a client that never resumes fails the test
  const KILL_AT = 15;

  // Socket.IO through a balancer (the stock client reconnects to the same URL and presents its pid and offset);
  // WebSocket only, so one TCP connection carries the session (polling across nodes is another test's subject).
  const lb = await balancer(t, a.port);
  const socket = await connected(t, lb.url, { ...FAST, transports: ['websocket'] });
  const rec = new Recorder(socket);
  const firstId = socket.id;
  const reconnects = [];
  socket.on('connect', () => reconnects.push({ recovered: socket.recovered, id: socket.id }));
  for (const ch of channels) await subscribeOk(socket, ch);
  const reconnected = waitFor(socket, 'connect', 20_000, 'the Socket.IO client to reconnect through the balancer');

  const ws1 = await openWs(t, `${wsBase(a)}/ws`);
  for (const ch of channels) await ws1.subscribeOk(ch);
  const sse1 = await openSse(t, sseUrl(a, channels));
  assert.equal(sse1.status, 200, sse1.text);
  let ws2;
  let sse2;

  // What a balancer and the clients' own reconnect logic do when A dies: new connections go to B, the /ws client
  // resubscribes on B after the last offset it has, the EventSource reconnects to C with its Last-Event-ID.
  const failOver = async () => {
    const killed = a.kill9();
    lb.route(b.port);
    await killed;
    await withTimeout(ws1.closed, 10_000, '/ws on the killed node to close');
    const last = {};
    for (const m of ws1.events()) last[m.channel] = m;
    ws2 = await openWs(t, `${wsBase(b)}/ws`);
    for (const ch of channels) {
      await ws2.subscribeOk(ch, last[ch] ? { since: last[ch].offset, epoch: last[ch].epoch } : {});
    }
    await sse1.until((s) => s.ended, 10_000, 'SSE on the killed node to end');
    const lastId = sse1.events.at(-1)?.id ?? sse1.bare.at(-1)?.id;
    assert.equal(typeof lastId, 'string', `SSE cursor before the kill: ${sse1.summary()}`);
    sse2 = await openSse(t, sseUrl(c, channels), { headers: { 'last-event-id': lastId } });
    assert.equal(sse2.status, 200, sse2.text);
  };

  const survivors = [b, c];
  let turn = 0;
  let failingOver;
  let resumed = false;
  let N = 0;
  for (let n = 1; n <= MIN_N || !resumed; n++) {
    assert.ok(n <= MAX_N, `every client resumed within ${MAX_N} publishes per channel`);
    N = n;
    for (const ch of channels) {
      const r = await publishRetry(() => survivors[turn++ % 2].url, ch, 'tick', { ch, n }, `${ch}#${n}`);
      assert.equal(r.offset, n, `offset of ${ch}#${n}: ${JSON.stringify(r)}`);
    }
    if (n === 3) {
      // Each client holds a cursor before its node dies (the stock Socket.IO client resumes only then).
      await rec.until((r) => r.named('tick').length >= 1, 10_000, 'a first Socket.IO event');
      await ws1.until((w) => w.events().length >= 1, 10_000, 'a first /ws event');
      await sse1.until((s) => s.named('tick').length >= 1, 10_000, 'a first SSE event');
    }
    // Not awaited: publishing goes on during the outage and the resumes.
    if (n === KILL_AT) failingOver = Promise.all([failOver(), reconnected]).finally(() => { resumed = true; });
  }
  await failingOver;
  for (const ch of channels) await publishRetry(() => b.url, ch, 'end', { ch }, `${ch}#end`);

  await rec.until((r) => r.named('end').length === channels.length, 15_000, 'Socket.IO: the end events');
  await ws2.until((w) => wsEnvelopes([w], 'end').length === channels.length, 15_000, '/ws on B: the end events');
  await sse2.until((s) => s.named('end').length === channels.length, 15_000, 'SSE on C: the end events');

  const expected = Array.from({ length: N }, (_, i) => i + 1);
  const sio = byChannel(channels);
  for (const e of rec.named('tick')) sio[e.args[0].ch].push(e.args[0].n);
  const wsSeen = byChannel(channels);
  for (const m of wsEnvelopes([ws1, ws2], 'tick')) wsSeen[m.channel].push(m.offset);
  const sseSeen = byChannel(channels);
  for (const m of sseEnvelopes([sse1, sse2], 'tick')) sseSeen[m.channel].push(m.offset);
  for (const ch of channels) {
    assert.deepEqual(sio[ch], expected, `Socket.IO, ${ch}: every acknowledged event exactly once, in order`);
    assert.deepEqual(wsSeen[ch], expected, `/ws, ${ch}: every acknowledged event exactly once, in order`);
    assert.deepEqual(sseSeen[ch], expected, `SSE, ${ch}: every acknowledged event exactly once, in order`);
  }
  assert.ok(reconnects.length >= 1 && reconnects.every((r) => r.recovered === true),
    `socket.recovered === true on every reconnect: ${JSON.stringify(reconnects)}`);
  assert.equal(socket.id, firstId, 'a recovered session keeps its socket id');
  assert.deepEqual(rec.named('herald:gap'), [], 'Socket.IO: no gap');
  assert.deepEqual(ws2.ofType('gap'), [], '/ws: no gap');
  assert.deepEqual(sse2.named('herald:gap'), [], 'SSE: no gap');
  assert.deepEqual(a.exits.at(-1), { code: null, signal: 'SIGKILL' });
});

test('two prefixes on one Redis are two clusters: a channel of one is unknown to the other', { timeout: 30_000 },
  async (t) => {
    const redis = await startRedis(t);
    const [blue, blue2] = await startNodes(t, redis, 2);
    const [green] = await startNodes(t, redis, 1);
    const ch = chan('p');
    const r = await publish(blue.url, ch, 'tick', { n: 1 });
    assert.equal(r.offset, 1);
    const same = await request(blue2.url, `/api/channels/${encodeURIComponent(ch)}/history`);
    assert.equal(same.status, 200, same.text);
    assert.deepEqual(same.json.events.map((e) => e.data), [{ n: 1 }], 'a node of the same prefix sees the event');
    const other = await request(green.url, `/api/channels/${encodeURIComponent(ch)}/history`);
    assert.equal(other.status, 404, `a node of another prefix does not know the channel: ${other.text}`);
  });

/** GET /readyz until it answers `status` (the pause is the retry backoff, not a synchronisation). */
async function readyzUntil(h, status, ms) {
  const deadline = Date.now() + ms;
  for (;;) {
    const r = await request(h.url, '/readyz');
    if (r.status === status || Date.now() > deadline) return r;
    await pause(100);
  }
}

test('/readyz: 200 while Redis answers, 503 engine_unavailable while it is down, 200 once it is back; '
  + '/healthz stays 200', { timeout: 30_000 }, async (t) => {
  const redis = await startRedis(t);
  const [h] = await startNodes(t, redis, 1);
  let r = await request(h.url, '/readyz');
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.status, 'ready');
  assert.equal(r.json.parts[0].name, 'engine');

  await redis.stop();
  assertApiError(await request(h.url, '/readyz'), 503, 'engine_unavailable', '/readyz with Redis stopped');
  r = await request(h.url, '/healthz');
  assert.equal(r.status, 200, `/healthz is liveness, whatever the engine: ${r.text}`);
  assert.deepEqual(r.json, { ok: true });

  await redis.start();
  r = await readyzUntil(h, 200, 15_000);
  assert.equal(r.status, 200, `/readyz after Redis is back: ${r.text}`);
  assert.equal(r.json.status, 'ready');
  assert.equal(r.json.parts[0].name, 'engine');
  await h.assertHealthy();
});

test('/readyz on a node of a local engine is 200', async (t) => {
  const h = await startHerald(t);
  const r = await request(h.url, '/readyz');
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.status, 'ready');
  assert.equal(r.json.parts[0].name, 'engine');
});
