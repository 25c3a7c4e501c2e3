// 31. Redis outages (issue 14's test 4), on a redis-server each test starts, kills and restarts itself, with two
// Herald nodes on it and clients of every transport (the stock socket.io-client, `ws`, `eventsource`):
// - stopped for 5 s under a steady publish load: every publish is acknowledged or answered 503 engine_unavailable,
//   every client stays connected, hears `herald:status` unavailable then ok, and ends with every committed event
//   exactly once, in order (none acknowledged and lost);
// - restarted with its append-only file: history and sessions survive, clients resume without a gap;
// - restarted without its data: the epoch changes, resuming clients get `herald:gap` and the state snapshot, never
//   reused offsets;
// - seed 003's data-only frontend on direct `/ws/{unit}` URLs: the outage is a typed error it ignores, never data.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EventSource } from 'eventsource';
import {
  connected, subscribeOk, subscribe, Recorder, Waitable, request, publishRetry, fullHistory, chan, pause, waitFor,
  withTimeout,
} from '../lib/herald.js';
import { wsBase, openWs, openSse } from '../lib/plain.js';
import { startRedis, startNodes } from '../lib/cluster.js';
import { useDashboardData } from '../lib/seed003.js';

/** How long Redis stays down in the load test (the fault itself, not a synchronisation). */
const OUTAGE_MS = 5000;
const FAST = { reconnectionDelay: 100, reconnectionDelayMax: 300, transports: ['websocket'] };
const NOTICES = ['tick', 'end', 'herald:status', 'herald:gap'];

/** A real EventSource recording the named events ({name, data, id}) in arrival order, its opens and errors. */
class SseLog extends Waitable {
  constructor(t, url, { headers = {} } = {}) {
    super();
    this.items = [];
    this.opens = 0;
    this.errors = 0;
    this.es = new EventSource(url, {
      fetch: (input, init) => fetch(input, { ...init, headers: { ...init.headers, ...headers } }),
    });
    this.es.onopen = () => { this.opens++; this._check(); };
    this.es.onerror = () => { this.errors++; this._check(); };
    for (const name of NOTICES) {
      this.es.addEventListener(name, (e) => {
        this.items.push({ name, data: JSON.parse(e.data), id: e.lastEventId });
        this._check();
      });
    }
    t.after(() => this.es.close());
  }
  named(name) { return this.items.filter((i) => i.name === name); }
  opened() { return this.until((s) => s.opens >= 1, 10_000, `SSE open ${this.es.url}`); }
  summary() { return `opens=${this.opens} errors=${this.errors} last=${JSON.stringify(this.items.slice(-3))}`; }
}

/** Every outcome of a steady publish load, awaitable. */
class Load extends Waitable {
  constructor() { super(); this.outcomes = []; }
  push(o) { this.outcomes.push(o); this._check(); }
  acked() { return this.outcomes.filter((o) => o.status === 200); }
  refused() { return this.outcomes.filter((o) => o.status === 503); }
  summary() { return `${this.acked().length} acknowledged, ${this.refused().length} refused, last ${JSON.stringify(this.outcomes.at(-1))}`; }
}

/** Publishes `tick {n}` to `channel` on `nodes` in turn until `stop()`; each attempt once (no retry). */
function steadyLoad(nodes, channel) {
  const load = new Load();
  let stopping = false;
  load.done = (async () => {
    for (let n = 1; !stopping; n++) {
      const node = nodes[n % nodes.length];
      try {
        const r = await request(node.url, '/api/publish', {
          method: 'POST', body: { channel, event: 'tick', data: { n }, id: `tick-${n}` }, timeout: 15_000,
        });
        load.push({ n, status: r.status, code: r.json?.error?.code, offset: r.json?.results?.[0]?.offset, text: r.text });
      } catch (e) {
        load.push({ n, status: 'no answer', text: e.message });
      }
      await pause(5); // pacing the load, not a synchronisation
    }
  })();
  load.stop = () => { stopping = true; return load.done; };
  return load;
}

/** The engine field of every status notice a client got: Socket.IO, /ws and SSE shapes. */
const sioStatus = (rec) => rec.named('herald:status').map((e) => e.args[0]);
const wsStatus = (ws) => ws.ofType('status');
const sseStatus = (sse) => sse.named('herald:status').map((i) => i.data);

function assertOutageTold(notices, who) {
  assert.deepEqual(notices.map((s) => s.engine), ['unavailable', 'ok'], `${who}: told once per change: ${JSON.stringify(notices)}`);
  assert.match(notices[0].since, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/, `${who}: since when`);
}

test('Redis stopped for 5 s under load on two nodes: 2xx or 503 engine_unavailable, every client stays, is told '
  + 'unavailable then ok, and has every committed event exactly once, in order', { timeout: 60_000 }, async (t) => {
  const redis = await startRedis(t, { aof: true });
  const nodes = await startNodes(t, redis, 2);
  const ch = chan('outage');

  const clients = [];
  // Socket.IO over WebSocket on A, over long-polling on B.
  for (const [label, node, transports] of [['A', nodes[0], ['websocket']], ['B', nodes[1], ['polling']]]) {
    const socket = await connected(t, node.url, { ...FAST, transports });
    const rec = new Recorder(socket);
    const disconnects = [];
    socket.on('disconnect', (reason) => disconnects.push(reason));
    await subscribeOk(socket, ch);
    const ws = await openWs(t, `${wsBase(node)}/ws`);
    await ws.subscribeOk(ch);
    const sse = new SseLog(t, `${node.url}/sse/${encodeURIComponent(ch)}?envelope=1`);
    await sse.opened();
    clients.push({ label, rec, disconnects, ws, sse });
  }
  const allTold = (engine) => Promise.all(clients.flatMap(({ label, rec, ws, sse }) => [
    rec.until((r) => sioStatus(r).some((s) => s.engine === engine), 15_000, `Socket.IO on ${label}: ${engine}`),
    ws.until((w) => wsStatus(w).some((s) => s.engine === engine), 15_000, `/ws on ${label}: ${engine}`),
    sse.until((s) => sseStatus(s).some((x) => x.engine === engine), 15_000, `SSE on ${label}: ${engine}`),
  ]));

  const load = steadyLoad(nodes, ch);
  await load.until((l) => l.acked().length >= 20, 15_000, 'publishes before the outage');
  await Promise.all(clients.flatMap(({ label, rec, ws, sse }) => [
    rec.until((r) => r.named('tick').length >= 1, 10_000, `Socket.IO on ${label}: a first event`),
    ws.until((w) => w.events().length >= 1, 10_000, `/ws on ${label}: a first event`),
    sse.until((s) => s.named('tick').length >= 1, 10_000, `SSE on ${label}: a first event`),
  ]));

  const down = Date.now();
  await redis.stop();
  await allTold('unavailable');
  await load.until((l) => l.refused().length >= 1, 15_000, 'a publish refused during the outage');
  await pause(Math.max(0, OUTAGE_MS - (Date.now() - down))); // the outage itself
  const ackedDuringOutage = load.acked().length;
  await redis.start(); // the append-only file brings the data back
  await allTold('ok');
  await load.until((l) => l.acked().length >= ackedDuringOutage + 20, 15_000, 'publishes after the outage');
  await load.stop();
  await publishRetry(() => nodes[0].url, ch, 'end', {}, 'end');

  for (const { label, rec, ws, sse } of clients) {
    await rec.until((r) => r.named('end').length === 1, 15_000, `Socket.IO on ${label}: the end event`);
    await ws.until((w) => w.events().some((m) => m.event === 'end'), 15_000, `/ws on ${label}: the end event`);
    await sse.until((s) => s.named('end').length === 1, 15_000, `SSE on ${label}: the end event`);
  }

  const wrong = load.outcomes.filter((o) => o.status !== 200 && !(o.status === 503 && o.code === 'engine_unavailable'));
  assert.deepEqual(wrong, [], 'every publish is acknowledged or answered 503 engine_unavailable');
  assert.ok(load.refused().length >= 1, 'publishes were refused while Redis was down');
  // History is the truth: every committed tick (an acknowledged one, or one whose reply was lost), in order.
  const { events: stored, epoch } = await fullHistory(nodes[1].url, ch);
  const committed = stored.filter((e) => e.event === 'tick');
  assert.deepEqual(committed.map((e) => e.offset), committed.map((_, i) => i + 1), 'gapless offsets');
  const committedNs = committed.map((e) => e.data.n);
  const lost = load.acked().filter((o) => !committedNs.includes(o.n));
  assert.deepEqual(lost, [], 'no publish was acknowledged and then lost');

  for (const { label, rec, disconnects, ws, sse } of clients) {
    assert.deepEqual(rec.named('tick').map((e) => e.args[0].n), committedNs, `Socket.IO on ${label}: every event once, in order`);
    const wsTicks = ws.events().filter((m) => m.event === 'tick');
    assert.deepEqual(wsTicks.map((m) => [m.offset, m.data.n]), committed.map((e) => [e.offset, e.data.n]), `/ws on ${label}`);
    assert.ok(wsTicks.every((m) => m.epoch === epoch), `/ws on ${label}: one epoch`);
    const sseTicks = sse.named('tick').map((i) => i.data);
    assert.deepEqual(sseTicks.map((m) => [m.offset, m.data.n]), committed.map((e) => [e.offset, e.data.n]), `SSE on ${label}`);

    assertOutageTold(sioStatus(rec), `Socket.IO on ${label}`);
    assertOutageTold(wsStatus(ws), `/ws on ${label}`);
    assertOutageTold(sseStatus(sse), `SSE on ${label}`);
    assert.deepEqual(disconnects, [], `Socket.IO on ${label} stayed connected`);
    assert.equal(ws.closeInfo, null, `/ws on ${label} stayed open`);
    assert.deepEqual([sse.opens, sse.errors], [1, 0], `SSE on ${label} stayed open`);
    assert.deepEqual(rec.named('herald:gap'), [], `Socket.IO on ${label}: no gap`);
    assert.deepEqual(ws.ofType('gap'), [], `/ws on ${label}: no gap`);
  }
  for (const node of nodes) await node.assertHealthy();
});

test('a /ws client connecting during an outage is told at once, an SSE stream is refused 503; /readyz agrees',
  { timeout: 30_000 }, async (t) => {
    const redis = await startRedis(t, { aof: true });
    const [h] = await startNodes(t, redis, 1);
    const early = await openWs(t, `${wsBase(h)}/ws`);
    await redis.stop();
    await early.until((w) => wsStatus(w).length === 1, 15_000, 'the outage notice');
    const r = await request(h.url, '/readyz');
    assert.equal(r.status, 503, r.text);
    assert.equal(r.json?.error?.code, 'engine_unavailable');
    assert.match(r.json.error.message, new RegExp(wsStatus(early)[0].since.replace(/[.]/g, '\\.')), 'the same outage');

    const late = await openWs(t, `${wsBase(h)}/ws`);
    const first = await late.next(() => true, 10_000, 'a first message');
    assert.deepEqual(first, wsStatus(early)[0], 'the same notice, first thing');
    // An SSE stream subscribes as it opens (and a Socket.IO CONNECT stores its session): refused until Redis is back.
    const sse = await openSse(t, `${h.url}/sse/${encodeURIComponent(chan('during'))}`);
    assert.equal(sse.status, 503, sse.text);
    assert.equal(sse.json?.error?.code, 'unavailable', sse.text);

    await redis.start();
    await late.until((w) => wsStatus(w).length === 2, 15_000, 'the recovery notice');
    assert.deepEqual(wsStatus(late)[1], { type: 'status', engine: 'ok' });
    const ready = await request(h.url, '/readyz');
    assert.equal(ready.status, 200, `ready once clients were told ok: ${ready.text}`);
  });

test('Redis restarted with its append-only file: history and sessions survive, clients resume on either node '
  + 'without a gap', { timeout: 40_000 }, async (t) => {
  const redis = await startRedis(t, { aof: true });
  const [a, b] = await startNodes(t, redis, 2);
  const ch = chan('aof');
  const N = 10;

  const socket = await connected(t, b.url, FAST);
  const rec = new Recorder(socket);
  const connects = [];
  socket.on('connect', () => connects.push(socket.recovered));
  await subscribeOk(socket, ch);
  const ws1 = await openWs(t, `${wsBase(a)}/ws`);
  await ws1.subscribeOk(ch);
  const sse1 = new SseLog(t, `${b.url}/sse/${encodeURIComponent(ch)}?envelope=1`);
  await sse1.opened();
  for (let n = 1; n <= N; n++) await publishRetry(() => a.url, ch, 'tick', { n }, `t${n}`);
  const { epoch } = await fullHistory(a.url, ch);
  await rec.until((r) => r.named('tick').length === N, 10_000, 'Socket.IO: the first events');
  await ws1.until((w) => w.events().length === N, 10_000, '/ws: the first events');
  await sse1.until((s) => s.named('tick').length === N, 10_000, 'SSE: the first events');

  await redis.stop();
  await ws1.until((w) => wsStatus(w).length === 1, 15_000, '/ws: the outage notice');
  // The /ws and SSE clients go away during the outage and come back by their cursors once Redis is back.
  await ws1.close();
  const lastId = sse1.named('tick').at(-1).id;
  sse1.es.close();
  await redis.start();
  await rec.until((r) => sioStatus(r).length === 2, 15_000, 'Socket.IO: told unavailable then ok');

  // The Socket.IO transport drops now: the stock client reconnects with its session, which survived in Redis.
  const reconnected = waitFor(socket, 'connect', 15_000, 'the Socket.IO client to reconnect');
  socket.io.engine.close();
  for (let n = N + 1; n <= 2 * N; n++) await publishRetry(() => b.url, ch, 'tick', { n }, `t${n}`);
  await reconnected;

  const last = ws1.events().at(-1);
  const ws2 = await openWs(t, `${wsBase(b)}/ws`);
  await ws2.subscribeOk(ch, { since: last.offset, epoch: last.epoch });
  const sse2 = new SseLog(t, `${a.url}/sse/${encodeURIComponent(ch)}?envelope=1`, { headers: { 'last-event-id': lastId } });
  await rec.until((r) => r.named('tick').length === 2 * N, 10_000, 'Socket.IO: every event');
  await ws2.until((w) => w.events().length === N, 10_000, '/ws: the rest');
  await sse2.until((s) => s.named('tick').length === N, 10_000, 'SSE: the rest');

  const all = Array.from({ length: 2 * N }, (_, i) => i + 1);
  assert.deepEqual(rec.named('tick').map((e) => e.args[0].n), all, 'Socket.IO: every event once, in order');
  assert.deepEqual(connects, [true], 'the session was recovered');
  assert.deepEqual([...ws1.events(), ...ws2.events()].map((m) => [m.epoch, m.offset]), all.map((o) => [epoch, o]), '/ws');
  assert.deepEqual([...sse1.named('tick'), ...sse2.named('tick')].map((i) => [i.data.epoch, i.data.offset]),
    all.map((o) => [epoch, o]), 'SSE');
  assert.deepEqual(rec.named('herald:gap'), [], 'Socket.IO: no gap');
  assert.deepEqual(ws2.ofType('gap'), [], '/ws: no gap');
  assert.deepEqual(sse2.named('herald:gap'), [], 'SSE: no gap');
  assert.equal((await fullHistory(b.url, ch)).epoch, epoch, 'the epoch stayed');
});

test('Redis restarted without its data: the epoch changes; resuming Socket.IO and /ws clients get herald:gap and '
  + 'the state snapshot, never reused offsets', { timeout: 40_000 }, async (t) => {
  const config = '[[state]]\nchannels = "st-*"\nbulk_event = "bulk"\n';
  const redis = await startRedis(t);
  const [a, b] = await startNodes(t, redis, 2, { config });
  const st = chan('st');
  const pl = chan('pl');
  const put = (key, data) => request(a.url, '/api/publish', { method: 'POST', body: { channel: st, event: 'row', data, key } });
  for (const [k, v] of [['x', 1], ['y', 2]]) assert.equal((await put(k, { k, v })).status, 200);
  for (let n = 1; n <= 3; n++) await publishRetry(() => a.url, pl, 'tick', { n }, `old${n}`);
  const before = (await fullHistory(a.url, pl)).epoch;

  // Socket.IO on B: the snapshot of st, the events of pl with their cursors.
  const socket = await connected(t, b.url, FAST);
  const rec = new Recorder(socket);
  const connects = [];
  socket.on('connect', () => connects.push(socket.recovered));
  await subscribeOk(socket, st);
  await subscribeOk(socket, pl, { since: 0 });
  await rec.until((r) => r.named('bulk').length === 1 && r.named('tick').length === 3, 10_000, 'Socket.IO: snapshot and events');
  assert.deepEqual(rec.named('bulk')[0].args[0], [{ k: 'x', v: 1 }, { k: 'y', v: 2 }]);
  // /ws on A, likewise.
  const ws1 = await openWs(t, `${wsBase(a)}/ws`);
  await ws1.subscribeOk(st);
  await ws1.subscribeOk(pl, { since: 0 });
  await ws1.until((w) => w.events(pl).length === 3 && w.events(st).length === 1, 10_000, '/ws: snapshot and events');
  const wsLast = { st: ws1.events(st).at(-1), pl: ws1.events(pl).at(-1) };

  await redis.stop();
  await redis.start({ fresh: true });
  // Each node finds the channels gone when it reconnects: its clients are closed to resume by their cursors.
  await withTimeout(ws1.closed, 15_000, '/ws to be closed for a resume');
  await rec.until((r) => r.named('herald:gap').length >= 1 && connects.length >= 1, 15_000, 'Socket.IO to reconnect');
  assert.deepEqual(connects, [false], 'Socket.IO: not recovered');
  assert.deepEqual(rec.named('herald:gap').map((e) => e.args[0]), [{ reason: 'session_unknown' }]);

  // New data on the emptied Redis, then the clients resume.
  assert.equal((await put('z', { k: 'z', v: 3 })).status, 200);
  for (let n = 1; n <= 2; n++) await publishRetry(() => b.url, pl, 'tick', { n: 10 + n }, `new${n}`);
  const after = (await fullHistory(a.url, pl)).epoch;
  assert.notEqual(after, before, 'the epoch changed');

  const ws2 = await openWs(t, `${wsBase(b)}/ws`);
  await ws2.subscribeOk(st, { since: wsLast.st.offset, epoch: wsLast.st.epoch });
  await ws2.subscribeOk(pl, { since: wsLast.pl.offset, epoch: wsLast.pl.epoch });
  await ws2.until((w) => w.events(pl).length === 2 && w.events(st).length === 1, 10_000, '/ws: snapshot and new events');
  const gaps = ws2.ofType('gap');
  assert.deepEqual(gaps.map((g) => [g.channel, g.reason]), [[st, 'epoch_changed'], [pl, 'epoch_changed']], '/ws gaps');
  assert.deepEqual(ws2.events(st).map((m) => [m.event, m.data]), [['bulk', [{ k: 'z', v: 3 }]]], '/ws: the snapshot');
  assert.deepEqual(ws2.events(pl).map((m) => [m.epoch, m.offset, m.data.n]), [[after, 1, 11], [after, 2, 12]],
    '/ws: the new epoch\'s events, not taken for old offsets');

  // The stock client's app subscribes again, with the epoch it knew for pl.
  const sioEpoch = (await subscribe(socket, st)).epoch;
  assert.equal(typeof sioEpoch, 'string');
  assert.equal((await subscribe(socket, pl, { since: 3, epoch: before })).ok, true);
  await rec.until((r) => r.named('bulk').length === 2 && r.named('tick').length === 5, 10_000, 'Socket.IO: snapshot and new events');
  assert.deepEqual(rec.named('bulk')[1].args[0], [{ k: 'z', v: 3 }], 'Socket.IO: the new snapshot');
  assert.deepEqual(rec.named('herald:gap').slice(1).map((e) => [e.args[0].channel, e.args[0].reason, e.args[0].epoch]),
    [[pl, 'epoch_changed', after]], 'Socket.IO: the epoch gap');
  assert.deepEqual(rec.named('tick').slice(3).map((e) => e.args[0].n), [11, 12], 'Socket.IO: the new events once');
});

test('seed 003 on a Redis node: an outage never reaches its data (a typed error it ignores, then the last data '
  + 'again), and it updates after', { timeout: 30_000 }, async (t) => {
  const config = '[[state]]\nchannels = "Final *"\n[[websocket.direct]]\npattern = "Final *"\npayload = "data"\n';
  const redis = await startRedis(t, { aof: true });
  const [h] = await startNodes(t, redis, 1, { config });
  const units = ['Final 1A', 'Final 2B'];
  const put = async (unit, models) => {
    const body = { channel: unit, event: 'result', data: { unit, models }, key: 'result' };
    const r = await request(h.url, '/api/publish', { method: 'POST', body });
    assert.equal(r.status, 200, r.text);
  };
  await put(units[0], [1]);
  await put(units[1], [2]);
  const view = useDashboardData(t, `127.0.0.1:${h.port}`, units);
  await view.until((v) => v.state.dataVersion >= 1, 10_000, 'the first render');

  await redis.stop();
  const errorOf = (unit) => view.raw[unit].find((m) => m.type === 'error');
  await view.until((v) => units.every((u) => errorOf(u)), 15_000, 'the outage notice on every unit socket');
  await redis.start();
  // The recovery re-sends each unit's last data: the frontend shows it again as current.
  await view.until((v) => units.every((u) => v.raw[u].length === 3), 15_000, 'the last data again');
  await put(units[0], [1, 3]);
  await view.until((v) => v.state.data[0]?.models.length === 2, 10_000, 'an update after the outage');

  assert.deepEqual(view.state.data, [{ unit: units[0], models: [1, 3] }, { unit: units[1], models: [2] }]);
  for (const [i, unit] of units.entries()) {
    const data = { unit, models: [i + 1] };
    const error = errorOf(unit);
    assert.equal(error.code, 'engine_unavailable', JSON.stringify(error));
    assert.equal(typeof error.since, 'string');
    const expected = [data, error, data, ...(i === 0 ? [{ unit, models: [1, 3] }] : [])];
    assert.deepEqual(view.raw[unit].filter((m) => m.type !== 'heartbeat'), expected, `${unit}: what its socket got`);
  }
});
